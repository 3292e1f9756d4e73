"""Pretraining InstantBooth on world scenes of train concepts (Shi et al. 2023, §3.1 data, §3.5 training).

Per step, for a batch of single-object scenes of the chosen class (held-out subjects are never drawn):
  target     the full scene; its caption names the object "sks <class>" (identifier + class noun)
  condition  the same object, rendered in its plain colour style, cut out with the renderer's alpha mask onto
             white, then augmented (random scale, shift, flip, colour jitter). Decisions: the condition is
             re-centred by the crop, so the model cannot copy the position, and it is always the colour style
             (styles such as "grayscale" come from the caption only), so style words stay in the text's control.
  loss       the plain denoising loss (training.loss.denoising_loss) with the concept embedding injected at
             "sks" (alpha = 1) and the adapters on (beta = 1), as in the paper's training. Beyond the paper,
             `object_weight` w weights each latent pixel by 1 + w * (object coverage), from the renderer's own
             mask: in a 64-px scene a small subject covers ~5% of the latent, so the plain loss is mostly
             background, and the identity signal is what a short (CPU) run needs most.
Trainable: the concept head, the patch head and the adapters (AdamW groups with their own learning rates; the
adapters' gates gamma can have their own, `lr_gamma`, since Adam moves a scalar by about lr per step);
the VAE, text encoder, vision tower and UNet are frozen. A step's scenes, augmentation, noise and timesteps are a
pure function of (seed, step), and checkpoints carry the optimizer state, so a resumed run reproduces the
uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ...inputs import InputError
from ...training.checkpoint import load_optimizer_tensors, resume_point
from ...training.steps import pretraining_steps
from . import artifact
from .config import InstantBoothConfig, PretrainConfig
from .modules import (InstantBooth, attach, image_features, inject_concept, model_dims, normalise_pixels,
                      single_token_id)

#: config fields a resumed run may change (everything else must match the checkpoint's run)
_RESUMABLE_CHANGES = {"steps", "checkpoint_every", "keep_checkpoints", "val_every", "val_batches"}
#: InstantBoothConfig fields that only matter at inference (training runs at alpha = beta = 1): the artifact stores
#: them as its defaults, and a resumed run or an export (--resume --steps N) may set them
_INFERENCE_KNOBS = ("alpha", "beta")


def _trained_shape(model_config: dict) -> dict:
    return {k: v for k, v in model_config.items() if k not in _INFERENCE_KNOBS}


def _seed(seed: int, name: str) -> int:
    import hashlib

    return int(hashlib.sha1(f"instantbooth:{seed}:{name}".encode()).hexdigest()[:8], 16)


def preprocessing_of(pipe) -> dict:
    """How images are fed to the vision tower: its input size and the feature extractor's mean/std."""
    fe = getattr(pipe, "feature_extractor", None)
    mean = list(getattr(fe, "image_mean", None) or [0.48145466, 0.4578275, 0.40821073])
    std = list(getattr(fe, "image_std", None) or [0.26862954, 0.26130258, 0.27577711])
    return {"image_size": int(pipe.image_encoder.config.image_size), "mean": mean, "std": std,
            "background": "masked to white",
            "framing": "subject re-centred in a square (pretraining: random cond_scale; inference: 3/4 of the side)"}


class ScenePairs:
    """Batch `step` of (target scene, condition crop, caption): a pure function of (seed, step)."""

    def __init__(self, cfg: PretrainConfig, identifier: str, device, heldout: bool = False):
        from ...world.atlas import load_atlas
        from ...world.concepts import concept_index, heldout_concepts, train_concepts
        from ...world.render import SceneRenderer
        from ...world.scenes import SceneSampler

        idx = concept_index()
        # heldout=True only for the validation loss: held-out subjects are never trained on
        concepts = heldout_concepts() if heldout else train_concepts()
        pool = [(idx[c.id], c) for c in concepts if cfg.cls == "all" or c.cls == cfg.cls]
        if not pool:
            raise InputError(f"no {'held-out' if heldout else 'train'} concepts of class {cfg.cls!r}")
        self.cfg, self.identifier, self.device = cfg, identifier, torch.device(device)
        # single objects only (the paper keeps single-object images); always named, so "sks <class>" can stand in
        self.sampler = SceneSampler(pool, p_two=0.0, p_class_only=0.0)
        self.renderer = SceneRenderer(load_atlas(progress=False), self.device)
        self.n_concepts = len(pool)

    def make(self, step: int) -> dict:
        from ...world.render import SceneBatch
        from ...world.scenes import caption

        rng = random.Random(f"instantbooth:{self.cfg.seed}:{step}")
        scenes = []
        for _ in range(self.cfg.batch_size):
            s = self.sampler.sample(rng)
            obj = s.objects[0]
            obj.name = f"{self.identifier} {obj.cls}"
            s.caption = caption(s, rng)
            scenes.append(s)
        sb = SceneBatch.from_scenes(scenes)
        target, target_masks = self.renderer.render(sb, return_masks=True)  # [B, 3, 64, 64] in [0, 1], [B, K, ..]
        plain = SceneBatch(sb.concept, sb.size_px, sb.cx, sb.cy, torch.zeros_like(sb.style), sb.valid, sb.bg)
        canvas, masks = self.renderer.render(plain, return_masks=True)
        g = torch.Generator("cpu").manual_seed(_seed(self.cfg.seed, f"augment-{step}"))
        cond = self.condition(canvas, masks[:, :1], sb, g)
        return {"target": target, "object_mask": target_masks[:, :1], "condition": cond,
                "captions": [s.caption for s in scenes],
                "concepts": sb.concept[:, 0].tolist()}

    def condition(self, canvas, alpha, sb, g: torch.Generator) -> torch.Tensor:
        """Cut the object out onto white, re-centre it at a random scale/shift, flip, jitter colours.

        canvas [B, 3, S, S] (object over a flat background), alpha [B, 1, S, S] -> [B, 3, S, S] in [0, 1]
        """
        cfg, dev = self.cfg, canvas.device
        b, _, s, _ = canvas.shape
        bg = sb.bg.to(dev).view(b, 3, 1, 1)
        on_white = canvas + (1 - bg) * (1 - alpha)  # un-composite: canvas = bg (1 - a) + rgb a -> white (1 - a) + rgb a
        u = lambda *shape: torch.rand(*shape, generator=g).to(dev)  # noqa: E731
        lo, hi = cfg.cond_scale
        frac = lo + (hi - lo) * u(b)  # object's side in the condition, as a fraction of the image
        scale = (sb.size_px.to(dev)[:, 0] / s) / frac  # source extent per output extent
        flip = torch.where(u(b) < cfg.cond_flip, -1.0, 1.0)
        shift = (u(b, 2) * 2 - 1) * cfg.cond_shift * 2  # in normalised [-1, 1] coordinates
        cx = sb.cx.to(dev)[:, 0] / s * 2 - 1
        cy = sb.cy.to(dev)[:, 0] / s * 2 - 1
        theta = torch.zeros(b, 2, 3, device=dev)
        theta[:, 0, 0] = scale * flip
        theta[:, 0, 2] = cx - scale * shift[:, 0]
        theta[:, 1, 1] = scale
        theta[:, 1, 2] = cy - scale * shift[:, 1]
        grid = F.affine_grid(theta, [b, 4, s, s], align_corners=False)
        warped = F.grid_sample(torch.cat([on_white - 1, alpha], 1), grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)  # outside the scene: white, alpha 0
        rgb, a = warped[:, :3] + 1, warped[:, 3:]
        j = cfg.cond_jitter
        gain = 1 + j * (u(b, 3) * 2 - 1)  # per-channel colour gain
        contrast = 1 + j * (u(b, 1) * 2 - 1)
        bright = j * 0.5 * (u(b, 1) * 2 - 1)
        rgb = ((rgb - 0.5) * contrast.view(b, 1, 1, 1) + 0.5) * gain.view(b, 3, 1, 1) + bright.view(b, 1, 1, 1)
        return (rgb.clamp(0, 1) * a + (1 - a)).clamp(0, 1)  # jitter the object only; background stays white


def base_meta(pipe, model: str, model_cfg: InstantBoothConfig, cls: str) -> dict:
    """What the artifact's json records about the base model and how to use the artifact."""
    from ...pipeline import model_hash

    return {"method": "instantbooth", "base_model": model, "model_hash": model_hash(model),
            "class": None if cls == "all" else cls, "classes": cls, "identifier": model_cfg.identifier,
            "preprocessing": preprocessing_of(pipe),
            "prompt": f"a photo of {model_cfg.identifier} {'person' if cls == 'all' else cls}"}


def write_untrained(out: str | Path, pipe, model: str = "world", model_cfg: InstantBoothConfig | None = None,
                    seed: int = 0, cls: str = "all") -> Path:
    """An artifact with freshly initialised weights (gamma = 0, so the adapters change nothing): what a trained one
    costs at inference, and a fixture for tests. Marked "trained": false in its json."""
    model_cfg = model_cfg or InstantBoothConfig()
    torch.manual_seed(_seed(seed, "init"))
    ib = InstantBooth(model_cfg, model_dims(pipe))
    return artifact.save(ib, out, {**base_meta(pipe, model, model_cfg, cls), "trained": False})


def _trainable_groups(model: InstantBooth, cfg: PretrainConfig) -> list[dict]:
    heads = list(model.concept_head.parameters()) + list(model.patch_head.parameters())
    groups = [{"params": heads, "lr": cfg.lr_heads, "name": "heads"}]
    if not cfg.lr_gamma:
        return groups + [{"params": list(model.adapters.parameters()), "lr": cfg.lr_adapters, "name": "adapters"}]
    gammas = [a.gamma for a in model.adapters.values()]
    rest = [p for p in model.adapters.parameters() if all(p is not g for g in gammas)]
    return groups + [{"params": rest, "lr": cfg.lr_adapters, "name": "adapters"},
                     {"params": gammas, "lr": cfg.lr_gamma, "weight_decay": 0.0, "name": "gamma"}]


def loss_weights(object_mask: torch.Tensor, latent_hw: tuple[int, int], object_weight: float) -> torch.Tensor | None:
    """[B, 1, H, W] object coverage in [0, 1] -> [B, 1, h, w] latent-pixel weights 1 + w * coverage (None: w = 0)."""
    if not object_weight:
        return None
    return 1.0 + object_weight * F.adaptive_avg_pool2d(object_mask, latent_hw)


def pretrain_instantbooth(out: str | Path, cfg: PretrainConfig, model_cfg: InstantBoothConfig | None = None, *,
                          model: str = "world", work: str | Path | None = None, resume: bool = False,
                          device: str | None = "cpu", progress: bool = True,
                          on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train the heads and adapters; write the artifact to `out`; return a summary.

    work: checkpoints and train_log.jsonl (default: `<out>.work` next to out). resume: continue from the newest
    complete checkpoint in work (refused if the run's settings differ, except steps and the checkpoint and
    validation cadence); with cfg.steps equal to that checkpoint's step, only write its artifact (a run that was
    stopped early). train_log.jsonl gets the loss per step and, every cfg.val_every steps, the loss on fixed
    batches of HELD-OUT concepts (evaluated only, never trained on).
    """
    from ...pipeline import load_pipeline, model_hash, pick_device
    from ...training.loss import denoising_loss, training_scheduler

    model_cfg = model_cfg or InstantBoothConfig()
    out = Path(out)
    if out.exists() and (out.is_file() or any(out.iterdir()) and not artifact.is_artifact(out)):
        raise InputError(f"--out {out}: exists and is not an InstantBooth artifact folder; pick a new folder")
    work = Path(work) if work else out.resolve().parent / f"{out.name}.work"
    dev = pick_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    pipe = load_pipeline(model, device=str(dev), dtype="fp32", progress=False)
    for m in (pipe.vae, pipe.text_encoder, pipe.unet, pipe.image_encoder):
        m.requires_grad_(False).eval()
    tok = pipe.tokenizer
    token_id = single_token_id(tok, model_cfg.identifier)
    dims = model_dims(pipe)
    pre = preprocessing_of(pipe)
    torch.manual_seed(_seed(cfg.seed, "init"))
    ib = InstantBooth(model_cfg, dims).to(dev).train()
    attached = attach(pipe.unet, ib, beta=1.0)
    opt = torch.optim.AdamW(_trainable_groups(ib, cfg), weight_decay=cfg.weight_decay)
    sched = training_scheduler(pipe)
    scaling = float(pipe.vae.config.scaling_factor)
    run = json.loads(json.dumps({"config": cfg.to_dict(), "model_config": _trained_shape(model_cfg.to_dict()),
                                 "base_model": model,
                                 "model_hash": model_hash(model)}))  # as the checkpoint's meta.json will read back

    start, ck, groups = resume_point(
        work, resume, run, _RESUMABLE_CHANGES, ("model_config", "model_hash"),
        saved_run=lambda r: {**r, "model_config": _trained_shape(r.get("model_config", {}))})
    if groups:
        ib.load_state_dict(groups["model"])
        load_optimizer_tensors(opt, groups["optimizer"])
    if start > cfg.steps:
        raise InputError(f"--resume: {ck} is already at step {start} > --steps {cfg.steps}; pass --steps {start} to "
                         f"write the artifact from it, or more to train on")
    # start == cfg.steps: nothing to train; the artifact is written from the checkpoint (a run stopped early)

    def batch_loss(batch: dict, g: torch.Generator) -> torch.Tensor:
        """Per-example denoising loss of one batch with the concept token and the adapters on (alpha = beta = 1)."""
        with torch.no_grad():
            x = batch["target"] * 2 - 1
            latents = pipe.vae.encode(x).latent_dist.sample(generator=g) * scaling  # [B, 4, h, w]
            input_ids = tok(batch["captions"], padding="max_length", max_length=tok.model_max_length,
                            truncation=True, return_tensors="pt").input_ids
            hidden = pipe.text_encoder(input_ids.to(dev))[0]  # [B, 77, text_dim]
            pix = normalise_pixels(batch["condition"], pre["image_size"], pre["mean"], pre["std"])
            embeds, tokens = image_features(pipe.image_encoder, pix)  # [B, E], [B, T, H]
        concept, patches = ib.encode(embeds[:, None], tokens[:, None])  # one condition image per scene (N = 1)
        cond = inject_concept(hidden, input_ids, token_id, concept, alpha=1.0)
        attached.set_patches(patches, beta=1.0)
        weights = loss_weights(batch["object_mask"], tuple(latents.shape[-2:]), cfg.object_weight)
        return denoising_loss(pipe.unet, sched, latents, cond, g, mask=weights)  # [B]

    val_data = ScenePairs(cfg, model_cfg.identifier, dev, heldout=True) if cfg.val_batches else None
    val_set = [val_data.make(10**9 + i) for i in range(cfg.val_batches)] if val_data else []

    @torch.no_grad()
    def heldout_loss() -> dict:
        """Mean loss on fixed batches of held-out subjects, fixed noise: comparable across steps and runs."""
        if not val_set:
            return {}
        ib.eval()
        out = [batch_loss(b, torch.Generator("cpu").manual_seed(_seed(cfg.seed, f"val-{i}"))).mean().item()
               for i, b in enumerate(val_set)]
        ib.train()
        return {"heldout_loss": sum(out) / len(out)}

    data = ScenePairs(cfg, model_cfg.identifier, dev)

    def step_loss(step: int) -> tuple[torch.Tensor, float, dict]:
        batch = data.make(step)
        g = torch.Generator("cpu").manual_seed(_seed(cfg.seed, f"noise-{step}"))
        loss = batch_loss(batch, g).mean()
        return loss, float(loss.detach()), {}

    def gates() -> dict:
        gammas = torch.stack([a.gamma.detach() for a in ib.adapters.values()])
        return {"mean_abs_tanh_gamma": float(gammas.tanh().abs().mean())}

    losses, val_first, val_last, seconds = pretraining_steps(
        cfg, start=start, work=work, opt=opt, params=[p for grp in opt.param_groups for p in grp["params"]], run=run,
        step_loss=step_loss, fixed_losses=heldout_loss, state=ib.state_dict, desc="pretrain instantbooth",
        after_step=gates, progress=progress, on_step=on_step)
    attached.detach()
    summary = {"steps": cfg.steps, "first_step": start, "batch_size": cfg.batch_size,
               "train_seconds": round(seconds, 2), "final_loss": losses[-1] if losses else None,
               "n_train_concepts": data.n_concepts, "device": str(dev),
               "heldout_loss": {"first": val_first.get("heldout_loss"), "last": val_last.get("heldout_loss"),
                                "batches": cfg.val_batches,
                                "n_heldout_concepts": val_data.n_concepts if val_data else 0}}
    artifact.save(ib, out, {**base_meta(pipe, model, model_cfg, cfg.cls), "trained": True,
                            "pretrain": {"config": cfg.to_dict(), **summary}})
    return {"out": str(out), "work": str(work), **summary}
