"""tune() and apply_concepts(): the method-independent path from photos to a concept folder and back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

from .. import __version__
from ..inputs import (CONCEPT_FILE, InputError, check_out, load_captioned_images, load_subject_images,
                      read_concept, staged_folder)
from ..training.config import TrainConfig
from ..training.data import ImageSet
from ..training.recipe import Subject


def _spec(method: str):
    from . import METHODS

    if method not in METHODS:
        raise InputError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    return METHODS[method]


def instance_prompt(token: str, class_noun: str) -> str:
    return f"a photo of {token} {class_noun}".strip()


def prior_prompt(class_noun: str) -> str:
    return f"a photo of a {class_noun}"


def work_dir_for(out: Path) -> Path:
    """Checkpoints, validation grids and logs of a run live next to --out until it succeeds."""
    return out.resolve().parent / f".{out.name}.train"


def _photos_hash(images: list) -> str:
    import hashlib

    h = hashlib.sha256()
    for im in images:
        h.update(im.tobytes())
        h.update(str(im.size).encode())
    return h.hexdigest()[:16]


def tune(method: str, images, class_noun: str, out, *, model: str = "world", steps: int | None = None,
         identifier: str | None = None, config: dict | None = None, resume: bool = False,
         progress: Callable[[int, int], None] | None = None, subjects: list[tuple] | None = None,
         on_step: Callable[[int, float], None] | None = None, device: str | None = "cpu",
         captions: bool = False, image_encoder: str | None = None) -> Path:
    """Personalise `model` on the photos in `images`; write a concept folder at `out`; return its path.

    subjects: more (images, class_noun) pairs trained jointly (methods with multi_concept, i.e. Custom Diffusion);
    each gets its own token (<new1>, <new2>, ...). device: where the pipeline is loaded before accelerate moves
    it (accelerate picks the training device). captions: train each photo with the caption file beside it
    (`photo.txt`, naming the subject by its token; inputs.load_captioned_images) instead of DreamBooth's one
    prompt "a photo of <token> <class>"; the class images of prior preservation keep their class prompt, and
    Custom Diffusion's random_resize puts its size word in front of each caption.
    image_encoder: the CLIP vision tower the encoder methods read (a folder or hub id); default: the one their
    pretrained encoder was trained with (MethodSpec.image_encoder), else the base model's own.
    """
    from ..pipeline import load_pipeline, model_hash
    from ..training.loop import cpu_only, train

    spec = _spec(method)
    if not class_noun or not class_noun.strip():
        raise InputError("--class is required (the subject's class noun, e.g. dog)")
    cfg = spec.config.from_dict(config)
    if steps is not None:
        cfg.steps = steps
    cfg.validate()
    out = check_out(out)
    pairs = [(images, class_noun)] + list(subjects or [])
    if len(pairs) > 1 and not spec.multi_concept:
        raise InputError(f"method {method!r} trains one subject at a time (several: --method custom)")
    tokens = _tokens(spec, identifier, len(pairs))
    if captions and spec.encode is not None:
        raise InputError(f"--captions: {method} trains nothing (it encodes the photos), so captions have no use")
    if captions:  # raises InputError before anything is written
        photo_sets, caption_sets = map(list, zip(*(load_captioned_images(imgs, tok)
                                                   for (imgs, _), tok in zip(pairs, tokens))))
    else:
        photo_sets, caption_sets = [load_subject_images(imgs) for imgs, _ in pairs], [None] * len(pairs)

    from accelerate import PartialState

    if image_encoder is None and spec.image_encoder is not None:  # the encoder methods' vision tower
        image_encoder = spec.image_encoder(cfg, model, class_noun)
    state = PartialState(cpu=cpu_only())  # under `accelerate launch`: one of several processes; only the main one writes
    pipe = load_pipeline(model, device=device, dtype="fp32", progress=False, image_encoder=image_encoder)
    base_hash = model_hash(model)
    from ..families import family_of

    family = family_of(pipe)
    size = getattr(cfg, "resolution", None) or family.default_resolution(pipe)
    if spec.encode is not None:  # an encoder method: no training loop, no work dir
        if not state.is_main_process:
            return out
        return _encode_concept(spec, pipe, photo_sets[0], class_noun, tokens, cfg, out, model, base_hash, size,
                               progress, family.name)
    subs = []
    for (imgs, cls), photos, token, caps in zip(pairs, photo_sets, tokens, caption_sets):
        prior = None
        if spec.uses_prior(cfg):
            from .class_images import class_images

            pp = prior_prompt(cls)
            with state.main_process_first():  # the main process fills the cache, the others read it
                imgs_c = class_images(pipe, base_hash, pp, cfg.num_class_images, cfg.class_sample_steps)
            prior = ImageSet.from_images(imgs_c, size, pp)
        subs.append(Subject(ImageSet.from_images(photos, size, instance_prompt(token, cls), caps,
                                                 crop=getattr(cfg, "crop", "center")), cls, token, prior, photos))

    # what decides the weights after step k (so a resume may change --steps or the checkpoint/validation cadence)
    trajectory = {k: v for k, v in cfg.to_dict().items()
                  if k not in _NOT_TRAJECTORY and _ADDED_LATER.get(k, _UNSET) != v}
    run_info = {"method": method, "model_hash": base_hash, "config": trajectory, "tokens": tokens,
                "classes": [c for _, c in pairs], "photos": [_photos_hash(p) for p in photo_sets],
                **({"captions": caption_sets} if captions else {})}
    recipe = spec.recipe(pipe, cfg, subs)  # may refuse (e.g. no E4T encoder for the class): before any folder
    work = work_dir_for(out)
    if state.is_main_process:
        if not resume and work.exists():
            shutil.rmtree(work)
        work.mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()
    classes = [c for _, c in pairs]

    def snapshot(step: int, loss: float) -> None:
        """The concept as it is after `step`: a concept folder under work/snapshots, staged and renamed into place."""
        with staged_folder(work / SNAPSHOTS / f"{out.name}-step-{step:06d}") as tmp:
            saved = recipe.save_artifact(tmp)
            meta = _concept_meta(method, model, base_hash, tokens, class_noun, classes, size, cfg, saved,
                                 {"steps": step, "loss": loss, "snapshot_of": out.name}, family.name)
            (tmp / CONCEPT_FILE).write_text(json.dumps(meta, indent=1))

    stats = train(recipe, cfg, work, resume=resume, run_info=run_info, progress=progress, on_step=on_step,
                  on_save=snapshot)
    if not stats["is_main_process"]:
        return out
    with staged_folder(out) as staged:
        saved = recipe.save_artifact(staged)
        if (work / SNAPSHOTS).is_dir():
            # not the hidden staging folders a run killed mid-snapshot leaves
            shutil.copytree(work / SNAPSHOTS, staged / SNAPSHOTS, ignore=shutil.ignore_patterns(".*"))
        for extra in ("validation", "train_log.jsonl"):
            if (work / extra).exists():
                (shutil.copytree if (work / extra).is_dir() else shutil.copy2)(work / extra, staged / extra)
        training = {"first_step": stats["first_step"], "steps": stats["steps"],
                    "train_seconds": round(stats["train_seconds"], 2),
                    "final_loss": stats["losses"][-1] if stats["losses"] else None}
        meta = _concept_meta(method, model, base_hash, tokens, class_noun, classes, size, cfg, saved, training,
                             family.name)
        if captions:
            meta["captions"] = caption_sets  #: per subject, the caption of each photo in file-name order
        (staged / CONCEPT_FILE).write_text(json.dumps(meta, indent=1))
    if not cfg.keep_training_state:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _concept_meta(method, model, base_hash, tokens, class_noun, classes, size, cfg, saved, training,
                  family: str = "sd") -> dict:
    """concept.json: what every method's concept folder records."""
    return {"method": method, "base_model": model, "model_hash": base_hash, "family": family, "tokens": tokens,
            "class": class_noun,
            "classes": classes, "prompt": instance_prompt(tokens[0], class_noun), "resolution": size,
            "config": cfg.to_dict(), "files": saved.get("files", []), "boothkit_version": __version__,
            "training": training, **{k: v for k, v in saved.items() if k != "files"}}


def _encode_concept(spec, pipe, photos, class_noun, tokens, cfg, out, model, base_hash, size, progress,
                    family: str) -> Path:
    """tune() for encoder methods: the photos go through the method's encoder into a concept folder."""
    import time

    with staged_folder(out) as staged:
        t0 = time.perf_counter()
        saved = spec.encode(pipe, photos, class_noun, tokens[0], cfg, staged, base_hash)
        seconds = time.perf_counter() - t0
        if progress:
            progress(1, 1)
        training = {"first_step": 0, "steps": 0, "train_seconds": round(seconds, 3), "final_loss": None}
        meta = _concept_meta(spec.name, model, base_hash, tokens, class_noun, [class_noun], size, cfg, saved,
                             training, family)
        (staged / CONCEPT_FILE).write_text(json.dumps(meta, indent=1))
    return out


_NOT_TRAJECTORY = {"steps", "checkpoint_every", "keep_checkpoints", "validate_every", "validation_images",
                   "validation_steps", "validation_prompt", "keep_training_state", "save_every", "cache"}
#: the folder of a concept (and of its run's work folder) that holds its snapshots (TrainConfig.save_every)
SNAPSHOTS = "snapshots"
#: options added after checkpoints existed, with their defaults: left out of the run id while at them, so a
#: checkpoint written before they existed still resumes (the run it continues had them off; fused_adamw's
#: checkpoints from before it continue with the fused kernel: the same update up to float rounding)
_ADDED_LATER = {k: TrainConfig.__dataclass_fields__[k].default
                for k in ("lr_scheduler", "lr_num_cycles", "lr_power", "snr_gamma", "noise_offset", "crop",
                          "optimizer", "fused_adamw")}
_UNSET = object()


def _tokens(spec, identifier: str | None, n: int) -> list[str]:
    base = identifier or spec.default_identifier
    if n == 1:
        return [base]
    if "1" in base:
        return [base.replace("1", str(i + 1)) for i in range(n)]
    return [f"{base}{i + 1}" for i in range(n)]


def pipeline_model_hash(pipe) -> str:
    """The content hash of the base model a pipeline was loaded from (cached on the pipeline)."""
    from ..pipeline import model_hash

    if getattr(pipe, "boothkit_model_hash", None) is None:
        model = getattr(pipe, "boothkit_model", None) or pipe.config.get("_name_or_path")
        pipe.boothkit_model_hash = model_hash(model)
    return pipe.boothkit_model_hash


#: methods whose concepts carry LoRA weights (E4T: its weight offsets), so a weight can scale them
WEIGHTED = ("lora", "e4t")


def apply_concepts(pipe, concept_dirs, weights=None) -> object:
    """Load concept folders into `pipe` (full DreamBooth first, then adapters/embeddings); returns pipe.

    weights: one per concept (default 1.0): the strength of a LoRA concept's adapter, or of an E4T concept's weight
    offsets (diffusers' `set_adapters` weights, kohya's `<lora:name:W>`); other methods take only 1.0. Every
    adapter stays active together, whatever the order (loading a LoRA alone would leave only itself active).
    Refuses (InputError) a concept whose base model hash differs from the pipeline's, and a weight for a concept
    that has no adapter. Thread-safe against other loads (pipeline.PIPELINE_LOCK).
    """
    from ..pipeline import PIPELINE_LOCK

    with PIPELINE_LOCK:
        return _apply_concepts(pipe, concept_dirs, weights)


def check_base_model(pipe, folder: Path, meta: dict) -> None:
    """InputError unless the concept at `folder` (its concept.json `meta`) was made for `pipe`'s base model."""
    from ..families import family_named, family_of

    fam, made_for = family_of(pipe), meta.get("family", "sd")  # concepts before SDXL support are all SD
    if made_for != fam.name:
        raise InputError(f"--concept {folder} was made for a {family_named(made_for).label} base model "
                         f"({meta.get('base_model')!r}); this pipeline is {fam.label}: concepts do not carry over "
                         "between families (train it again on this base model)")
    have = pipeline_model_hash(pipe)
    if meta.get("model_hash") != have:
        raise InputError(
            f"--concept {folder} was trained on base model {meta.get('base_model')!r} (hash {meta.get('model_hash')}), "
            f"but this pipeline's base model has hash {have}: load it with the model it was made for "
            f"(--model {meta.get('base_model')})")


def _apply_concepts(pipe, concept_dirs, weights=None) -> object:
    concept_dirs = list(concept_dirs)
    weights = [1.0] * len(concept_dirs) if weights is None else [float(w) for w in weights]
    if len(weights) != len(concept_dirs):
        raise InputError(f"{len(weights)} weights for {len(concept_dirs)} concepts: give one per concept")
    metas = []
    for d, w in zip(concept_dirs, weights):
        d = Path(d)
        meta = read_concept(d)
        if meta.get("method") not in _registered():
            raise InputError(f"--concept {d}: unknown method {meta.get('method')!r} in {CONCEPT_FILE}")
        if w != 1.0 and meta["method"] not in WEIGHTED:
            raise InputError(f"--concept {d}: a {meta['method']} concept has no adapter to weight (weights are for "
                             f"{' and '.join(WEIGHTED)} concepts); give it 1")
        check_base_model(pipe, d, meta)
        metas.append((d, meta, w))
    # full DreamBooth replaces the UNet: first; InstantBooth wraps attention processors: last
    metas.sort(key=lambda dm: {"dreambooth": 0, "instantbooth": 2}.get(dm[1]["method"], 1))
    if sum(m["method"] == "dreambooth" for _, m, _ in metas) > 1:
        raise InputError("at most one full DreamBooth concept can be applied (each one replaces the UNet)")
    before = pipe.get_active_adapters() if getattr(pipe.unet, "peft_config", None) else []
    adapters: dict[str, float] = {name: 1.0 for name in before}  # active before this call: kept, at 1
    for d, meta, w in metas:
        name = _spec(meta["method"]).load(pipe, d, meta)
        if meta["method"] in WEIGHTED and name:
            adapters[name] = w
    # several E4T concepts share their domain's pretrained offsets: 1/k each, as E4T's loader weights them
    e4t = [n for n in getattr(pipe, "e4t_adapters", []) if n in adapters]
    final = {n: w / len(e4t) if n in e4t else w for n, w in adapters.items()}
    if len(final) > 1 or any(w != 1.0 for w in final.values()):
        pipe.set_adapters(list(final), list(final.values()))
    return pipe


def _registered():
    from . import METHODS

    return METHODS
