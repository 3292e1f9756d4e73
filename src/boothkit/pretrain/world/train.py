"""`boothkit pretrain world`: train every part of the world model from one seed, stage by stage.

Stages (each resumable from its newest complete checkpoint, skipped once finished):
  tokenizer  CLIP's BPE vocabulary (see tokenizer.py)
  vae        AutoencoderKL on scenes: L1 + MSE reconstruction, tiny KL (as SD's VAE, without the GAN)
  clip       text tower + vision tower, symmetric InfoNCE on (scene, caption) pairs (Radford et al. 2021)
  judge      identity network, CosFace loss over every glyph under augmentation (evaluation only)
  unet       UNet2DConditionModel, epsilon loss on VAE latents with the frozen text tower, CFG dropout,
             min-SNR weighting, EMA
  export     a StableDiffusionPipeline folder + world_clip/ + judge/ + world.json
Only train concepts are ever drawn, except by the judge, which (like a face-recognition network) sees all.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...fileio import write_json_atomic
from ...progress import bar as progress_bar
from ...training.checkpoint import (latest_checkpoint, load_checkpoint, load_optimizer_tensors, optimizer_tensors,
                                    save_checkpoint)
from ...world.atlas import load_atlas
from ...world.concepts import all_concepts, concept_index, train_concepts
from ...world.data import SceneStream, batch_of, scene_loader
from ...world.render import SceneRenderer
from . import models
from .config import WorldPretrainConfig, recipe
from .tokenizer import build_tokenizer

DONE = "DONE.json"


def _device(cfg: WorldPretrainConfig) -> torch.device:
    if cfg.device != "auto":
        return torch.device(cfg.device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _workers(cfg: WorldPretrainConfig, device: torch.device) -> int:
    if cfg.workers >= 0:
        return cfg.workers
    return min(8, max(0, (os.cpu_count() or 1) - 1)) if device.type == "cuda" else 0


def _lr_lambda(stage):
    def f(step):
        if step < stage.warmup:
            return (step + 1) / stage.warmup
        t = (step - stage.warmup) / max(1, stage.steps - stage.warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    return f


def _pool(train_only: bool):
    idx = concept_index()
    cs = train_concepts() if train_only else all_concepts()
    return [(idx[c.id], c) for c in cs]


class _Stage:
    """Shared loop: data stream, optimiser, schedule, autocast, checkpoints, resume, progress, log."""

    def __init__(self, name: str, cfg: WorldPretrainConfig, device: torch.device, modules: dict[str, nn.Module],
                 params, tokenizer=None, train_only: bool = True, extra_state: dict | None = None,
                 **sampler_kwargs):
        self.name, self.cfg, self.device = name, cfg, device
        self.stage = getattr(cfg, name)
        self.dir = Path(cfg.work) / name
        self.modules = modules
        self.extra_state = extra_state or {}
        self.params = [p for p in params if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=self.stage.lr, weight_decay=0.01, betas=(0.9, 0.99))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(self.stage))
        self.start = 0
        ck = latest_checkpoint(self.dir) if cfg.resume else None
        if ck is not None:
            meta, groups = load_checkpoint(ck)
            for k, m in modules.items():
                m.load_state_dict(groups[k])
            for k, t in self.extra_state.items():
                t.data.copy_(groups["extra"][k])
            load_optimizer_tensors(self.opt, groups["optimizer"])
            self.start = meta["step"]
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, _lr_lambda(self.stage),
                                                           last_epoch=self.start - 1)
            print(f"[{name}] resuming from {ck} (step {self.start})")
        self.stream = SceneStream(_pool(train_only), self.stage.batch, seed=hash_seed(cfg.seed, name),
                                  start_step=self.start, tokenizer=tokenizer, **sampler_kwargs)
        self.log = open(self.dir.parent / f"{name}.log.jsonl", "a")
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def generator(self, step: int) -> torch.Generator:
        return torch.Generator(self.device).manual_seed(hash_seed(self.cfg.seed, f"{self.name}-noise-{step}"))

    def checkpoint(self, step: int):
        groups = {k: m.state_dict() for k, m in self.modules.items()}
        groups["optimizer"] = optimizer_tensors(self.opt)
        if self.extra_state:
            groups["extra"] = {k: t for k, t in self.extra_state.items()}
        save_checkpoint(self.dir, step, groups, {"stage": self.name}, keep=self.cfg.keep_checkpoints)

    def run(self, loss_fn) -> dict:
        self.dir.mkdir(parents=True, exist_ok=True)
        loader = scene_loader(self.stream, _workers(self.cfg, self.device))
        bar = progress_bar(total=self.stage.steps, initial=self.start, desc=f"pretrain {self.name}",
                           dynamic_ncols=True)
        t0, step, ema_loss = time.time(), self.start, None
        it = iter(loader)
        while step < self.stage.steps:
            item = next(it)
            assert item["step"] == step, (item["step"], step)
            with self.autocast:
                loss, logs = loss_fn(item, self.generator(step))
            if not torch.isfinite(loss):
                raise FloatingPointError(f"[{self.name}] loss is {loss.item()} at step {step}; the last good "
                                         f"checkpoint is {latest_checkpoint(self.dir)}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.opt.step()
            self.sched.step()
            step += 1
            self.after_step(step)
            lv = loss.item() if (step % 25 == 0 or step == self.stage.steps) else None
            if lv is not None:
                ema_loss = lv if ema_loss is None else 0.8 * ema_loss + 0.2 * lv
                bar.set_postfix(loss=f"{ema_loss:.4f}", **{k: f"{v:.3g}" for k, v in logs.items()})
                self.log.write(json.dumps({"step": step, "loss": lv, "lr": self.sched.get_last_lr()[0],
                                           "t": round(time.time() - t0, 2),
                                           **{k: float(v) for k, v in logs.items()}}) + "\n")
                self.log.flush()
            bar.update(1)
            if step % self.cfg.checkpoint_every == 0 and step < self.stage.steps:
                self.checkpoint(step)
        bar.close()
        seconds = time.time() - t0
        steps_run = self.stage.steps - self.start
        return {"steps": self.stage.steps, "batch": self.stage.batch, "first_step_this_run": self.start,
                "seconds_this_run": round(seconds, 1),
                "steps_per_second": round(steps_run / max(seconds, 1e-9), 3), "final_loss": ema_loss}

    def after_step(self, step: int):
        pass


def hash_seed(seed: int, name: str) -> int:
    import hashlib

    return int(hashlib.sha1(f"{seed}:{name}".encode()).hexdigest()[:8], 16)


def _finish(cfg: WorldPretrainConfig, name: str, tensors: dict[str, torch.Tensor], info: dict):
    from safetensors.torch import save_file

    d = Path(cfg.work) / name
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(d / "final.safetensors"))
    write_json_atomic(d / DONE, info)  # the stage's "finished" marker: never a torn one (a killed run resumes)


def _done(cfg: WorldPretrainConfig, name: str) -> bool:
    return (Path(cfg.work) / name / DONE).exists()


def _load_final(cfg: WorldPretrainConfig, name: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(cfg.work) / name / "final.safetensors"))


def _tokenizer(cfg):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(Path(cfg.work) / "tokenizer"))


def _renderer(device):
    return SceneRenderer(load_atlas(), device)


# ---------------------------------------------------------------------------------------------------- stages


def stage_tokenizer(cfg: WorldPretrainConfig, device) -> dict:
    build_tokenizer(Path(cfg.work) / "tokenizer")
    return {}


def stage_vae(cfg: WorldPretrainConfig, device) -> dict:
    torch.manual_seed(hash_seed(cfg.seed, "vae-init"))
    vae = models.vae().to(device).train()
    render = _renderer(device)
    kl_weight = 1e-6

    def loss_fn(item, g):
        x = render.render(batch_of(item)) * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g, device=device)
        rec = vae.decode(z).sample.float()
        l1, l2 = F.l1_loss(rec, x), F.mse_loss(rec, x)
        kl = post.kl().mean()
        return l1 + l2 + kl_weight * kl, {"l1": l1.detach(), "kl": kl.detach()}

    st = _Stage("vae", cfg, device, {"vae": vae}, vae.parameters(), p_two=0.2)
    info = st.run(loss_fn)
    # SD's convention: scale latents to unit variance. Measured on a fixed batch of train scenes.
    vae.eval()
    with torch.no_grad():
        item = SceneStream(_pool(True), 512 if device.type == "cuda" else 64, seed=hash_seed(cfg.seed, "vae-scale")).make(0)
        z = vae.encode(render.render(batch_of(item)) * 2 - 1).latent_dist.mean
    info["scaling_factor"] = float(1.0 / z.float().std())
    info["latent_mean"] = float(z.float().mean())
    _finish(cfg, "vae", vae.state_dict(), info)
    return info


class _ClipHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.text_projection = nn.Linear(models.TEXT_DIM, models.EMBED_DIM, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))


def _preprocess(images: torch.Tensor) -> torch.Tensor:
    """Scenes in [0, 1] -> the vision tower's input (the feature_extractor's mean/std of 0.5)."""
    return (images - 0.5) / 0.5


def stage_clip(cfg: WorldPretrainConfig, device) -> dict:
    torch.manual_seed(hash_seed(cfg.seed, "clip-init"))
    text, vision, heads = models.text_encoder().to(device), models.image_encoder().to(device), _ClipHeads().to(device)
    tok = _tokenizer(cfg)
    render = _renderer(device)

    def loss_fn(item, g):
        img = _preprocess(render.render(batch_of(item)))
        ie = F.normalize(vision(pixel_values=img).image_embeds.float(), dim=-1)
        te = F.normalize(heads.text_projection(text(input_ids=item["input_ids"].to(device)).pooler_output).float(),
                         dim=-1)
        scale = heads.logit_scale.clamp(max=math.log(100)).exp()
        logits = scale * ie @ te.t()
        labels = torch.arange(len(logits), device=device)
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2
        acc = (logits.argmax(1) == labels).float().mean()
        return loss, {"acc": acc.detach(), "scale": scale.detach()}

    params = list(text.parameters()) + list(vision.parameters()) + list(heads.parameters())
    st = _Stage("clip", cfg, device, {"text": text, "vision": vision, "heads": heads}, params, tokenizer=tok)
    info = st.run(loss_fn)
    # Round the text tower to fp16 now: it ships in fp16, and the UNet must train on exactly what ships.
    tensors = {f"text.{k}": v.half() for k, v in text.state_dict().items()}
    tensors |= {f"vision.{k}": v for k, v in vision.state_dict().items()}
    tensors |= {f"heads.{k}": v for k, v in heads.state_dict().items()}
    _finish(cfg, "clip", tensors, info)
    return info


def _augment(images: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Judge augmentations: noise, blur and colour shifts, so generated images are judged by identity alone."""
    b = images.shape[0]
    dev = images.device
    blur = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, 1)
    mix = torch.rand(b, 1, 1, 1, generator=g, device=dev)
    x = images * (1 - mix) + blur * mix
    x = x * (1 + 0.1 * torch.randn(b, 3, 1, 1, generator=g, device=dev))
    x = x + 0.06 * torch.rand(b, 1, 1, 1, generator=g, device=dev) * torch.randn(x.shape, generator=g, device=dev)
    return x.clamp(0, 1)


def stage_judge(cfg: WorldPretrainConfig, device) -> dict:
    from ...judge import Judge

    torch.manual_seed(hash_seed(cfg.seed, "judge-init"))
    judge = Judge().to(device)
    n = len(all_concepts())
    classifier = nn.Parameter(torch.randn(n, judge.config["dim"], device=device) * 0.05)
    render = _renderer(device)
    s, m = 30.0, 0.2  # CosFace scale and margin

    def loss_fn(item, g):
        x = _augment(render.render(batch_of(item)), g)
        emb = judge(x).float()
        cos = emb @ F.normalize(classifier, dim=-1).t()
        y = item["label"].to(device)
        logits = s * (cos - m * F.one_hot(y, n))
        loss = F.cross_entropy(logits, y)
        return loss, {"acc": (cos.argmax(1) == y).float().mean().detach()}

    st = _Stage("judge", cfg, device, {"judge": judge}, list(judge.parameters()) + [classifier],
                train_only=False, extra_state={"classifier": classifier}, p_two=0.1, p_styled=0.5)
    info = st.run(loss_fn)
    _finish(cfg, "judge", judge.state_dict(), info)
    return info


def _split(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def stage_unet(cfg: WorldPretrainConfig, device) -> dict:
    torch.manual_seed(hash_seed(cfg.seed, "unet-init"))
    vae = models.vae()
    vae.load_state_dict(_load_final(cfg, "vae"))
    vinfo = json.loads((Path(cfg.work) / "vae" / DONE).read_text())
    scaling = vinfo["scaling_factor"]
    vae = vae.to(device).eval().requires_grad_(False)
    text = models.text_encoder()
    text.load_state_dict(_split(_load_final(cfg, "clip"), "text."))
    text = text.to(device).eval().requires_grad_(False)
    unet = models.unet().to(device).train()
    ema = models.unet().to(device).eval().requires_grad_(False)
    ema.load_state_dict(unet.state_dict())
    if device.type == "cuda":
        unet = unet.to(memory_format=torch.channels_last)
    fwd = torch.compile(unet) if cfg.compile else unet
    tok = _tokenizer(cfg)
    empty = tok([""], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids.to(device)
    sched = models.noise_scheduler()
    alphas = sched.alphas_cumprod.to(device)
    render = _renderer(device)

    def loss_fn(item, g):
        with torch.no_grad():
            x = render.render(batch_of(item)) * 2 - 1
            latents = vae.encode(x).latent_dist.sample(generator=g) * scaling
            ids = item["input_ids"].to(device)
            drop = torch.rand(len(ids), generator=g, device=device) < cfg.cfg_dropout
            ids = torch.where(drop[:, None], empty, ids)
            cond = text(input_ids=ids).last_hidden_state
        return unet_loss(fwd, latents.float(), cond, alphas, g, cfg.snr_gamma)

    st = _Stage("unet", cfg, device, {"unet": unet, "ema": ema}, unet.parameters(), tokenizer=tok)
    ema_params, params = list(ema.parameters()), list(unet.parameters())

    def after_step(step):
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1 - decay)

    st.after_step = after_step
    info = st.run(loss_fn)
    info["ema_decay"] = cfg.ema_decay
    _finish(cfg, "unet", {k: v.half() for k, v in ema.state_dict().items()}, info)
    return info


def unet_loss(unet, latents, cond, alphas_cumprod, g, snr_gamma: float = 5.0):
    """The denoising loss (Ho et al. 2020, eq. 14; Rombach et al. 2022, eq. 2), epsilon target, with min-SNR-gamma
    weighting (Hang et al. 2023) when snr_gamma > 0: w(t) = min(SNR(t), gamma) / SNR(t)."""
    b = latents.shape[0]
    noise = torch.randn(latents.shape, generator=g, device=latents.device)
    t = torch.randint(0, len(alphas_cumprod), (b,), generator=g, device=latents.device)
    a = alphas_cumprod[t].view(b, 1, 1, 1)
    noisy = a.sqrt() * latents + (1 - a).sqrt() * noise  # q(x_t | x_0)
    pred = unet(noisy, t, encoder_hidden_states=cond).sample.float()
    per = F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3))
    if snr_gamma > 0:
        snr = (a / (1 - a)).view(b)
        per = per * torch.clamp(snr, max=snr_gamma) / snr
    return per.mean(), {}


# ---------------------------------------------------------------------------------------------------- export


def _save_half(model, folder: Path):
    """Save in fp16 (half the bytes) but mark the config so loaders build it in fp32 by default."""
    model.half().save_pretrained(str(folder))
    cfg_path = folder / "config.json"
    c = json.loads(cfg_path.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in c:
            c[key] = "float32"
    cfg_path.write_text(json.dumps(c, indent=2))


def stage_export(cfg: WorldPretrainConfig, device) -> dict:
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    from ... import __version__
    from ...judge import Judge

    out = Path(cfg.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    clip = _load_final(cfg, "clip")
    text, vision = models.text_encoder(), models.image_encoder()
    text.load_state_dict(_split(clip, "text."))
    vision.load_state_dict(_split(clip, "vision."))
    vae = models.vae()
    vae.load_state_dict(_load_final(cfg, "vae"))
    vinfo = json.loads((Path(cfg.work) / "vae" / DONE).read_text())
    vae.register_to_config(scaling_factor=vinfo["scaling_factor"])
    unet = models.unet()
    unet.load_state_dict(_load_final(cfg, "unet"))
    fe = CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], resample=3)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=_tokenizer(cfg), unet=unet,
                                   scheduler=models.sampling_scheduler(), safety_checker=None,
                                   feature_extractor=fe, image_encoder=vision, requires_safety_checker=False)
    pipe.save_pretrained(str(tmp))
    for extra in ("vocab.json", "merges.txt"):  # slow-tokenizer files, for older transformers
        src = Path(cfg.work) / "tokenizer" / extra
        if src.exists():
            shutil.copy(src, tmp / "tokenizer" / extra)
    _save_half(text, tmp / "text_encoder")
    _save_half(unet, tmp / "unet")
    heads = _split(clip, "heads.")
    (tmp / "world_clip").mkdir()
    save_file({"text_projection.weight": heads["text_projection.weight"].contiguous(),
               "logit_scale": heads["logit_scale"].reshape(1)}, str(tmp / "world_clip" / "heads.safetensors"))
    judge = Judge()
    judge.load_state_dict(_load_final(cfg, "judge"))
    judge.save(tmp / "judge")
    stages = {s: json.loads((Path(cfg.work) / s / DONE).read_text()) for s in ("vae", "clip", "judge", "unet")
              if (Path(cfg.work) / s / DONE).exists()}
    meta = {
        "boothkit_version": __version__, "seed": cfg.seed, "recipe": cfg.recipe,
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("out", "work")},
        "stages": stages, "n_concepts": len(all_concepts()), "n_train_concepts": len(train_concepts()),
        "trained_on": stages.get("unet", {}).get("device", ""),
    }
    (tmp / "world.json").write_text(json.dumps(meta, indent=1))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return {"out": str(out)}


STAGE_FNS = {"tokenizer": stage_tokenizer, "vae": stage_vae, "clip": stage_clip, "judge": stage_judge,
             "unet": stage_unet, "export": stage_export}


def pretrain_world(cfg: WorldPretrainConfig) -> dict:
    """Run the configured stages in order; finished stages are skipped. Returns a summary per stage."""
    device = _device(cfg)
    if cfg.recipe == "auto":
        from dataclasses import replace

        cfg = replace(recipe("gpu" if device.type == "cuda" else "cpu", out=cfg.out), work=cfg.work, seed=cfg.seed,
                      stages=cfg.stages, device=cfg.device, workers=cfg.workers, resume=cfg.resume,
                      compile=cfg.compile)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    Path(cfg.work).mkdir(parents=True, exist_ok=True)
    (Path(cfg.work) / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    summary = {}
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    for name in cfg.stages:
        if name not in ("tokenizer", "export") and _done(cfg, name):
            print(f"[{name}] already finished, skipping")
            continue
        if name == "tokenizer" and (Path(cfg.work) / "tokenizer" / "tokenizer.json").exists():
            continue
        t0 = time.time()
        info = STAGE_FNS[name](cfg, device) or {}
        info["seconds"] = round(time.time() - t0, 1)
        info["device"] = f"{device.type}: {dev_name}, torch {torch.__version__}, {torch.get_num_threads()} threads"
        if name not in ("tokenizer", "export"):
            p = Path(cfg.work) / name / DONE
            stored = json.loads(p.read_text())
            stored.update({"seconds": info["seconds"], "device": info["device"]})
            write_json_atomic(p, stored)
        summary[name] = info
        print(f"[{name}] done in {info['seconds']} s")
    return summary
