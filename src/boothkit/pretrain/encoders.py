"""Pretraining the encoder methods' encoders (InstantBooth, E4T) on a dataset and a base model: one path for both.

    from boothkit.pretrain.encoders import pretrain_encoder
    summary = pretrain_encoder("instantbooth", "ib-woman", data="photos/", class_noun="woman",
                               model="runwayml/stable-diffusion-v1-5",
                               image_encoder="openai/clip-vit-large-patch14", settings={"steps": 20000})

A run, each step only after the one before succeeded:
1. checks, before any model loads: the settings (the method's typed configs, `split_settings`), --out and --work
   (nothing is created: inputs.check_creatable), --data (boothkit.data.open_source scans it: a wrong path, an empty
   or caption-less dataset, a class noun in no caption is an InputError; records that cannot train are counted and
   skipped), --resume's newest checkpoint against --steps;
2. the base model with its vision tower (pipeline.load_pipeline(image_encoder=...): real SD/SDXL folders ship none)
   and the segmenter, if one is named;
3. the method's recipe (methods.instantbooth.pretrain.InstantBoothPretrain, methods.e4t.pretrain.E4TPretrain);
4. the shared training loop (training.loop.train: accelerate, mixed precision, gradient accumulation and
   checkpointing, 8-bit Adam, checkpoints and exact resume, held-out losses and grids, JSON-lines logs), fed by
   `data(start)`: this process's batches from boothkit.data's loader, which splits the records by rank itself
   (`accelerate launch` runs one process per GPU; the loader is not passed through accelerate's prepare);
5. the artifact, written by the main process into a staging folder and renamed into place (inputs.save_weights_
   folder), recording what it was trained for (base model and hash, family, vision tower and hash: methods.vision),
   the data and the run's summary, which is also returned.
World pretraining is `--data world` (the default): boothkit.data's world source through the same path (InstantBooth
reads the world's plain-style second render of each glyph, E4T another view of the concept).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable

from ..images import MAX_PIXELS, MIN_SIDE
from ..inputs import InputError
from ..training.config import DictConfig


@dataclass
class DataConfig(DictConfig):
    """How --data is read (boothkit.data): loader processes, dataset columns, the world's options."""

    workers: int = 2  #: DataLoader worker processes per training process (0 = in the training process)
    prefetch: int = 2  #: batches each worker prepares ahead
    timeout: float = 300.0  #: seconds a worker may take for one batch before the run stops with an error
    shuffle_buffer: int = 1000  #: WebDataset: samples in each stream's shuffle buffer
    streams: int = 0  #: WebDataset: streams per process (0 = max(1, workers)); keep it fixed to resume exactly
    uint8: bool = False  #: batches pass between processes as uint8 (4x less), converted on the training device
    min_side: int = MIN_SIDE  #: smaller photos are skipped (counted)
    max_pixels: int = MAX_PIXELS  #: larger photos are skipped (possible decompression bombs)
    image_column: str = "image"  #: datasets: the photo column
    caption_column: str = ""  #: datasets / imagefolder: the caption column ("" = text, else caption)
    mask_column: str = "mask"  #: datasets / imagefolder: an optional subject-mask column
    bbox_column: str = "bbox"  #: datasets / imagefolder: an optional [x0, y0, x1, y1] column
    key_column: str = "key"  #: datasets: an optional record-name column (else the row number)
    split: str = "train"  #: datasets: the split to read
    world_scenes: int = 1_000_000  #: --data world: distinct scenes per epoch
    world_p_styled: float = 0.4  #: --data world: share of targets drawn grayscale, upside-down or outline
    segmenter_threshold: float = 0.5  #: --segmenter: probability above which a pixel is the subject

    def __post_init__(self):
        if self.min_side < 1 or self.max_pixels < 1:
            raise InputError("data config: min_side and max_pixels must be at least 1")
        if not 0 < self.segmenter_threshold < 1:
            raise InputError(f"data config: segmenter_threshold must be in (0, 1) (got {self.segmenter_threshold})")

    def columns(self):
        from ..data import Columns

        return Columns(image=self.image_column, caption=self.caption_column, mask=self.mask_column,
                       bbox=self.bbox_column, key=self.key_column, split=self.split)


@dataclass(frozen=True)
class EncoderMethod:
    """What the orchestrator needs to know of one encoder method."""

    name: str
    config: type  #: its pretraining config (a TrainConfig)
    shape: type  #: the config stored with the encoder (InstantBoothConfig, EncoderConfig)
    recipe: type  #: its pretraining Recipe
    identifier: Callable  #: shape config -> the word the loader puts in front of the class noun
    world_condition: str  #: what the world source renders as the condition (boothkit.data.WorldOptions)
    is_artifact: Callable  #: folder -> whether an encoder of this method is there (--out may replace it)
    kind: str  #: for messages: "an InstantBooth artifact"
    #: shape fields that only matter at inference: left out of the run's identity (a resumed run may set them)
    inference_knobs: tuple[str, ...] = ()


def encoder_methods() -> dict[str, EncoderMethod]:
    from ..methods.e4t import artifact as e4t_artifact
    from ..methods.e4t.config import EncoderConfig
    from ..methods.e4t.config import PretrainConfig as E4TPretrainConfig
    from ..methods.e4t.pretrain import IDENTIFIER, E4TPretrain
    from ..methods.instantbooth import artifact as ib_artifact
    from ..methods.instantbooth.config import InstantBoothConfig, PretrainConfig
    from ..methods.instantbooth.pretrain import InstantBoothPretrain

    return {
        "instantbooth": EncoderMethod("instantbooth", PretrainConfig, InstantBoothConfig, InstantBoothPretrain,
                                      lambda shape: shape.identifier, "plain", ib_artifact.is_artifact,
                                      "an InstantBooth artifact", ("alpha", "beta")),
        "e4t": EncoderMethod("e4t", E4TPretrainConfig, EncoderConfig, E4TPretrain, lambda shape: IDENTIFIER, "view",
                             e4t_artifact.is_encoder, "an E4T encoder"),
    }


def split_settings(settings: dict | None, configs: list[type]) -> list[dict]:
    """key=value settings -> one dict per config class (each key goes to the first class with that field); an
    unknown key is an InputError that lists the known ones."""
    parts: list[dict] = [{} for _ in configs]
    names = [{f.name for f in fields(c)} for c in configs]
    for k, v in (settings or {}).items():
        for part, known in zip(parts, names):
            if k in known:
                part[k] = v
                break
        else:
            known = sorted(set().union(*names))
            raise InputError(f"--set {k}: unknown setting; known: {', '.join(known)}")
    return parts


def configs_of(method: str, settings: dict | None) -> tuple[EncoderMethod, object, object, DataConfig]:
    """-> (the method, its pretraining config, its shape config, the data config) built from the settings."""
    methods = encoder_methods()
    if method not in methods:
        raise InputError(f"unknown encoder method {method!r}; choose from {sorted(methods)}")
    m = methods[method]
    train_part, shape_part, data_part = split_settings(settings, [m.config, m.shape, DataConfig])
    return m, m.config.from_dict(train_part), m.shape.from_dict(shape_part), DataConfig.from_dict(data_part)


#: pretraining settings that do not change the weights after a given step (a resumed run may change them)
_NOT_TRAJECTORY = {"steps", "checkpoint_every", "keep_checkpoints", "validate_every", "validation_images",
                   "validation_steps", "validation_prompt", "keep_training_state", "save_every", "cache"}
#: data settings that change which records a step draws (the rest: how fast they are read)
_DATA_TRAJECTORY = ("shuffle_buffer", "streams", "min_side", "max_pixels", "image_column", "caption_column",
                    "mask_column", "bbox_column", "key_column", "split", "world_scenes", "world_p_styled")


def _checkpoint_step(ck: Path) -> int:
    try:
        return int(json.loads((ck / "meta.json").read_text())["step"])
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"--resume: {ck} has no readable meta.json ({e})") from e


def pretrain_encoder(method: str, out: str | Path, *, data: str = "world", class_noun: str, model: str = "world",
                     image_encoder: str | None = None, segmenter: str | None = None, settings: dict | None = None,
                     resume: bool = False, work: str | Path | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     on_step: Callable[[int, float], None] | None = None) -> dict:
    """Pretrain `method`'s encoder ("instantbooth" or "e4t") on `data` for `model`; write it to `out`; -> summary.

    data: a caption folder (kohya .txt / imagefolder metadata.jsonl), a `datasets` folder or name, WebDataset
    shards, or "world" (boothkit.data.open_source). class_noun: what every caption names (the identifier goes in
    front of it; "all" for the world's every class, InstantBooth only). model: a diffusers SD-1.x/2.x or SDXL folder
    or hub id (or "world"). image_encoder: a CLIPVisionModelWithProjection folder or hub id (None: the model's own
    image_encoder). segmenter: a CLIPSeg folder or id that cuts the subject out of records with no mask.
    settings: fields of the method's PretrainConfig, of its shape config and of DataConfig (`split_settings`).
    work: checkpoints, validation grids and train_log.jsonl (default: `<out>.work` beside out); resume: continue from
    its newest checkpoint (a run with other settings is refused; --steps may grow; with --steps at that checkpoint's
    step the artifact is written from it). Every process of an `accelerate launch` runs this; the main one writes.
    progress(step, total) / on_step(step, loss): called after each optimizer step (on_step may raise to stop).
    """
    from dataclasses import replace

    from ..data import LoaderConfig, WorldOptions, open_source
    from ..inputs import check_creatable
    from ..training.checkpoint import latest_checkpoint

    m, cfg, shape, dcfg = configs_of(method, settings)
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir()) and not m.is_artifact(out)):
        raise InputError(f"--out {out}: exists and is not {m.kind} folder; pick a new folder")
    check_creatable(out)
    work = Path(work) if work else out.resolve().parent / f"{out.name}.work"
    check_creatable(work, "--work")
    class_noun = " ".join((class_noun or "").split())
    if method == "e4t" and class_noun == "all":
        raise InputError("--class all: E4T pretrains one domain; name one class noun (e.g. person, cat)")
    if cfg.validation_images and not cfg.heldout:
        raise InputError(f"validation_images={cfg.validation_images} draws held-out records: set heldout too (or "
                         "validation_images=0)")
    identifier = m.identifier(shape)
    loader_cfg = LoaderConfig(resolution=cfg.resolution or 64, batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                              crop=cfg.crop, flip=0.5 if cfg.flip else 0.0, seed=cfg.seed, heldout=cfg.heldout,
                              workers=dcfg.workers, prefetch=dcfg.prefetch, timeout=dcfg.timeout,
                              min_side=dcfg.min_side, max_pixels=dcfg.max_pixels, shuffle_buffer=dcfg.shuffle_buffer,
                              streams=dcfg.streams, uint8=dcfg.uint8)
    source = open_source(data, class_noun=class_noun, identifier=identifier, columns=dcfg.columns(),
                         world=WorldOptions(condition=m.world_condition, scenes=dcfg.world_scenes,
                                            p_styled=dcfg.world_p_styled, seed=cfg.seed))
    ck = latest_checkpoint(work / "checkpoints") if resume else None
    if ck is not None and _checkpoint_step(ck) > cfg.steps:
        step = _checkpoint_step(ck)
        raise InputError(f"--resume: {ck} is already at step {step} > --steps {cfg.steps}; pass --steps {step} to "
                         "write the artifact from it, or more to train on")

    from accelerate import PartialState

    from ..data import Segmenter, build_loader, validation_batch
    from ..families import family_of
    from ..pipeline import load_pipeline
    from ..training.loop import cpu_only, train

    state = PartialState(cpu=cpu_only())  # under `accelerate launch`: one of several processes
    pipe = load_pipeline(model, device="cpu", dtype="fp32", progress=False, image_encoder=image_encoder)
    seg = Segmenter(segmenter, device=state.device, threshold=dcfg.segmenter_threshold) if segmenter else None
    loader_cfg = replace(loader_cfg, resolution=cfg.resolution or family_of(pipe).default_resolution(pipe))
    validation = validation_batch(source, loader_cfg) if cfg.heldout else None  # every process: the same checks
    if validation is None and cfg.validation_images:
        raise InputError(f"--data {data}: none of the {cfg.heldout} held-out records can be read, so there is nothing "
                         "to draw validation grids from (set validation_images=0, or more heldout)")
    recipe = m.recipe(pipe, cfg, shape, class_noun=class_noun, validation=validation, segmenter=seg)
    trained_for = recipe.artifact_meta()
    run_info = {"method": method, "model_hash": trained_for["model_hash"], "family": trained_for["family"],
                "image_encoder": trained_for["image_encoder"]["hash"], "data": data, "class": class_noun,
                "config": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_TRAJECTORY},
                "shape": {k: v for k, v in shape.to_dict().items() if k not in m.inference_knobs},
                "data_config": {k: getattr(dcfg, k) for k in _DATA_TRAJECTORY}}
    if state.is_main_process and not resume and work.exists():
        shutil.rmtree(work)  # a new run: the old one's checkpoints would be taken for this one's
    state.wait_for_everyone()

    opened = []

    def batches(start: int):
        """This process's batches from optimizer step `start` on, one per micro-step (a pure function of the step:
        boothkit.data's loader)."""
        it = iter(build_loader(source, loader_cfg, rank=state.process_index, world_size=state.num_processes,
                               start_step=start, expect_segmenter=seg is not None))
        try:
            while True:
                yield next(it)
        finally:
            del it  # the loader's worker processes end with their iterator

    def data_from(start: int):
        gen = batches(start)
        opened.append(gen)
        return gen

    def snapshot(step: int, loss: float) -> None:
        """cfg.save_every: the artifact as it is after `step`, under work/snapshots (each one usable as it is)."""
        recipe.save_artifact(work / "snapshots" / f"{out.name}-step-{step:06d}",
                             {"trained": True, "pretrain": {"steps": step, "loss": loss, "snapshot_of": out.name}})

    try:
        stats = train(recipe, cfg, work, resume=resume, run_info=run_info, progress=progress, on_step=on_step,
                      on_save=snapshot, data=data_from)
    finally:
        for gen in opened:  # also when training stops with an error: no worker outlives the run
            gen.close()
    losses = stats["losses"]
    summary = {"method": method, "out": str(out), "work": str(work), "class": class_noun, "base_model": model,
               "image_encoder": image_encoder, "family": trained_for["family"], "processes": state.num_processes,
               "steps": cfg.steps, "first_step": stats["first_step"], "batch_size": cfg.batch_size,
               "grad_accum": cfg.grad_accum, "resolution": loader_cfg.resolution,
               "train_seconds": round(stats["train_seconds"], 2), "final_loss": losses[-1] if losses else None,
               "heldout_loss": {"first": stats["evaluation"]["first"].get("heldout_loss"),
                                "last": stats["evaluation"]["last"].get("heldout_loss"),
                                "records": len(validation["captions"]) if validation else 0},
               "data": {"spec": data, "kind": source.report.kind, "read": source.report.read,
                        "usable": source.report.usable, "skipped_at_scan": dict(source.report.skipped),
                        "skipped_in_training": dict(recipe.skipped)}}
    if stats["is_main_process"]:
        recipe.save_artifact(out, {"trained": True, "pretrain": {"config": cfg.to_dict(), "data_config": dcfg.to_dict(),
                                                                  **summary}})
    return {**summary, "is_main_process": stats["is_main_process"]}
