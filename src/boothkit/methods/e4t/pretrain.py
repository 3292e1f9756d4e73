"""E4T domain pretraining on world scenes of one class's TRAIN concepts (Gal et al. 2023, §3.1-3.2, §4).

Per step, for a batch of single-object scenes of the class (held-out subjects are never drawn):
  target     a scene of one train concept; its caption names the object "<e4t> <class>"
  condition  ANOTHER photo of the same concept, drawn the way reference photos are (world.references: plain colour
             style, random background, medium/large, centred or at an edge). Decision: the paper encodes the target
             image itself (FFHQ has one photo per person); the world can draw a second view, and using it keeps the
             encoder from copying the target's background, position or style into the word, which the caption
             already names. It is also what the encoder sees at tuning time: a reference photo, unmasked.
  loss       L_simple (training.loss.denoising_loss) with the predicted word at "<e4t>" and the weight offsets on,
             + reg_embedding * ||s E(x)||^2 + reg_weights * sum ||Delta W||_F^2 (the paper's two L2 penalties).
Trainable: the encoder head and the low-rank weight offsets (two AdamW groups with their own learning rates); the
VAE, text encoder, vision tower and UNet are frozen. A step's scenes, noise and timesteps are a pure function of
(seed, step) and checkpoints carry the optimizer state, so a resumed run reproduces the uninterrupted one exactly.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Callable

import torch

from ...inputs import InputError
from ...training.checkpoint import load_optimizer_tensors, resume_point
from ...training.steps import pretraining_steps
from . import artifact
from .config import EncoderConfig, PretrainConfig
from .modules import (DomainEncoder, WordInjector, add_weight_offsets, clip_features, embedding_l2, encoder_dims,
                      frame_photos, offset_parameters, preprocessing_of, weight_offset_l2)

#: the placeholder pretraining writes in captions (tuning uses the user's identifier; only the word matters)
IDENTIFIER = "<e4t>"
#: config fields a resumed run may change (everything else must match the checkpoint's run)
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "val_every", "val_batches"}


def _seed(seed: int, name: str) -> int:
    return int(hashlib.sha1(f"e4t:{seed}:{name}".encode()).hexdigest()[:8], 16)


class ScenePairs:
    """Batch `step` of (target scene, condition photo of the same concept, caption): a pure function of
    (seed, step)."""

    def __init__(self, cls: str, batch_size: int, seed: int, device="cpu", heldout: bool = False):
        from ...world.atlas import load_atlas
        from ...world.concepts import concept_index, heldout_concepts, train_concepts
        from ...world.render import SceneRenderer
        from ...world.scenes import SceneSampler

        idx = concept_index()
        # heldout=True only for the validation loss: held-out subjects are evaluated, never trained on
        concepts = heldout_concepts(cls) if heldout else [c for c in train_concepts() if c.cls == cls]
        self.pool = [(idx[c.id], c) for c in concepts]
        if not self.pool:
            raise InputError(f"no {'held-out' if heldout else 'train'} concepts of class {cls!r}")
        self.cls, self.batch_size, self.seed = cls, batch_size, seed
        self.sampler = SceneSampler(self.pool, p_two=0.0, p_class_only=0.0)  # one named object per scene
        self.renderer = SceneRenderer(load_atlas(progress=False), torch.device(device))

    def make(self, step: int) -> dict:
        from ...world.render import SceneBatch
        from ...world.scenes import BACKGROUNDS, POSITIONS, caption, fixed_scene

        rng = random.Random(f"e4t:{self.seed}:{step}")
        by_row = dict(self.pool)
        targets, conditions = [], []
        for _ in range(self.batch_size):
            s = self.sampler.sample(rng)
            obj = s.objects[0]
            obj.name = f"{IDENTIFIER} {self.cls}"
            s.caption = caption(s, rng)
            targets.append(s)
            size = rng.choice(["medium", "large", "large"])  # as world.references.render_references draws them
            pos = "center" if size == "large" else rng.choice(POSITIONS)
            conditions.append(fixed_scene(obj.concept, by_row[obj.concept], bg=rng.choice(list(BACKGROUNDS)),
                                          size=size, position=pos))
        images = self.renderer.render(SceneBatch.from_scenes(targets + conditions))  # [2B, 3, 64, 64] in [0, 1]
        b = self.batch_size
        return {"target": images[:b], "condition": images[b:], "captions": [s.caption for s in targets],
                "concepts": [s.objects[0].concept for s in targets]}


def base_meta(pipe, model: str, cls: str, frame: bool = False) -> dict:
    from ...pipeline import model_hash

    return {"method": "e4t", "base_model": model, "model_hash": model_hash(model), "class": cls, "class_word": cls,
            "identifier": IDENTIFIER, "preprocessing": preprocessing_of(pipe, frame)}


def pretrain_e4t(out: str | Path, cfg: PretrainConfig, enc_cfg: EncoderConfig | None = None, *,
                 model: str = "world", work: str | Path | None = None, resume: bool = False,
                 device: str | None = "cpu", progress: bool = True,
                 on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train the encoder head and the weight offsets; write the encoder folder to `out`; return a summary.

    work: checkpoints and train_log.jsonl (default: `<out>.work` next to out). resume: continue from the newest
    complete checkpoint in work (refused if the run's settings differ, except steps and the checkpoint and
    validation cadence). train_log.jsonl gets the loss per step and, every cfg.val_every steps, the denoising loss
    on fixed batches of HELD-OUT concepts with fixed noise (evaluated only, never trained on).
    """
    from peft.utils import get_peft_model_state_dict

    from ...pipeline import load_pipeline, model_hash, pick_device
    from ...training.loss import denoising_loss, training_scheduler
    from ..ti.model import add_tokens

    enc_cfg = enc_cfg or EncoderConfig()
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir()) and not artifact.is_encoder(out)):
        raise InputError(f"--out {out}: exists and is not an E4T encoder folder; pick a new folder")
    work = Path(work) if work else out.resolve().parent / f"{out.name}.work"
    dev = pick_device(device)
    pipe = load_pipeline(model, device=str(dev), dtype="fp32", progress=False)
    dims = encoder_dims(pipe)  # raises for a pipeline without an image encoder
    for m in (pipe.vae, pipe.text_encoder, pipe.unet, pipe.image_encoder):
        m.requires_grad_(False).eval()
    tok, text_encoder = pipe.tokenizer, pipe.text_encoder
    (token_id,) = add_tokens(tok, text_encoder, [IDENTIFIER], cfg.cls)
    class_embedding = text_encoder.get_input_embeddings().weight.detach()[
        tok.encode(cfg.cls, add_special_tokens=False)[0]].clone()  # [D]
    pre = preprocessing_of(pipe, frame=cfg.frame)
    torch.manual_seed(_seed(cfg.seed, "init"))
    encoder = DomainEncoder(enc_cfg, dims).to(dev).train()
    add_weight_offsets(pipe.unet, enc_cfg)
    offsets = offset_parameters(pipe.unet)
    for p in offsets.values():
        p.requires_grad_(True)
    injector = WordInjector(text_encoder, token_id)
    opt = torch.optim.AdamW([{"params": list(encoder.parameters()), "lr": cfg.lr, "name": "encoder"},
                             {"params": list(offsets.values()), "lr": cfg.lr_offsets, "name": "offsets"}],
                            weight_decay=cfg.weight_decay)
    sched = training_scheduler(pipe)
    scaling = float(pipe.vae.config.scaling_factor)
    run = json.loads(json.dumps({"config": cfg.to_dict(), "encoder_config": enc_cfg.to_dict(), "base_model": model,
                                 "model_hash": model_hash(model)}))  # as the checkpoint's meta.json reads back

    def model_tensors() -> dict[str, torch.Tensor]:
        t = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
        t.update({f"unet.{n}": p.detach() for n, p in offsets.items()})
        return t

    start, ck, groups = resume_point(work, resume, run, _RESUMABLE_CHANGES, ("encoder_config", "model_hash"))
    if groups:
        saved = groups["model"]
        encoder.load_state_dict({k[len("encoder."):]: v for k, v in saved.items() if k.startswith("encoder.")})
        with torch.no_grad():
            for n, p in offsets.items():
                p.copy_(saved[f"unet.{n}"])
        load_optimizer_tensors(opt, groups["optimizer"])
    if start >= cfg.steps:
        raise InputError(f"--resume: {ck} is already at step {start} >= --steps {cfg.steps}")

    def batch_loss(batch: dict, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (per-example denoising loss [B], embedding offsets s E(x) [B, D])."""
        with torch.no_grad():
            x = batch["target"].to(dev) * 2 - 1
            latents = pipe.vae.encode(x).latent_dist.sample(generator=g) * scaling  # [B, 4, h, w]
            cond = frame_photos(batch["condition"]) if cfg.frame else batch["condition"]
            feats = clip_features(pipe.image_encoder, cond, pre["mean"], pre["std"])  # [B, F]
            ids = tok(batch["captions"], padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(dev)
        offset = encoder(feats)  # [B, D]
        injector.set(class_embedding.to(dev) + offset)  # one word per scene
        hidden = text_encoder(ids)[0]  # [B, 77, D]: gradients flow to the injected words only
        return denoising_loss(pipe.unet, sched, latents, hidden, g), offset

    data = ScenePairs(cfg.cls, cfg.batch_size, cfg.seed, dev)
    val_data = ScenePairs(cfg.cls, cfg.batch_size, cfg.seed, dev, heldout=True) if cfg.val_batches else None
    # fixed batches from steps training never reaches: held-out subjects, and train concepts for comparison
    val_sets = {"heldout_loss": [val_data.make(10**9 + i) for i in range(cfg.val_batches)] if val_data else [],
                "train_fixed_loss": [data.make(10**9 + i) for i in range(cfg.val_batches)]}

    @torch.no_grad()
    def fixed_losses() -> dict:
        """Mean denoising loss on the fixed batches with fixed noise: comparable across steps and runs."""
        out = {}
        for name, batches in val_sets.items():
            if batches:
                vals = [batch_loss(b, torch.Generator("cpu").manual_seed(_seed(cfg.seed, f"val-{i}")))[0].mean()
                        .item() for i, b in enumerate(batches)]
                out[name] = sum(vals) / len(vals)
        return out

    def step_loss(step: int) -> tuple[torch.Tensor, float, dict]:
        batch = data.make(step)
        g = torch.Generator("cpu").manual_seed(_seed(cfg.seed, f"noise-{step}"))
        per_example, offset = batch_loss(batch, g)
        denoise = per_example.mean()
        reg_e, reg_w = embedding_l2(offset), weight_offset_l2(pipe.unet)
        loss = denoise + cfg.reg_embedding * reg_e + cfg.reg_weights * reg_w
        return loss, float(denoise.detach()), {"denoise": float(denoise.detach()), "offset_sq": float(reg_e.detach()),
                                               "weight_offset_sq": float(reg_w.detach())}

    losses, val_first, val_last, seconds = pretraining_steps(
        cfg, start=start, work=work, opt=opt, params=list(encoder.parameters()) + list(offsets.values()), run=run,
        step_loss=step_loss, fixed_losses=fixed_losses, state=model_tensors, desc="pretrain e4t", progress=progress,
        on_step=on_step)
    injector.remove()
    tail = losses[-50:]
    summary = {"steps": cfg.steps, "first_step": start, "batch_size": cfg.batch_size,
               "train_seconds": round(seconds, 2), "final_loss": losses[-1] if losses else None,
               "train_loss_last50": sum(tail) / len(tail) if tail else None,
               "n_train_concepts": len(data.pool), "device": str(dev),
               "heldout_loss": {"first": val_first.get("heldout_loss"), "last": val_last.get("heldout_loss"),
                                "batches": cfg.val_batches,
                                "n_heldout_concepts": len(val_data.pool) if val_data else 0},
               "train_fixed_loss": {"first": val_first.get("train_fixed_loss"),
                                    "last": val_last.get("train_fixed_loss")}}
    artifact.save_encoder(encoder, get_peft_model_state_dict(pipe.unet), out,
                          {**base_meta(pipe, model, cfg.cls, cfg.frame), "trained": True,
                           "pretrain": {"config": cfg.to_dict(), **summary}})
    return {"out": str(out), "work": str(work), **summary}
