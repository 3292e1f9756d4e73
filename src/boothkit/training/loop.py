"""The training loop every personalisation method runs: accelerate, checkpoints, resume, validation, logging."""

from __future__ import annotations

import functools
import hashlib
import os
import json
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

from .. import progress as progress_bars
from .checkpoint import latest_checkpoint, load_checkpoint, load_optimizer_tensors, optimizer_tensors, save_checkpoint
from .data import step_generator
from .trackers import make_trackers


class TrainingError(RuntimeError):
    """Training stopped (diverged, or a resume that does not match); the message says what to do."""


def cpu_only() -> bool:
    """Train on the CPU: asked for (ACCELERATE_USE_CPU), or no GPU. accelerate needs to be told, or several CPU
    processes under `accelerate launch` / torchrun would each train alone instead of joining one gloo group."""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes"):
        return True
    mps = getattr(torch.backends, "mps", None)
    return not (torch.cuda.is_available() or (mps is not None and mps.is_available()))


def mixed_precision(cfg_value: str) -> str:
    """auto -> bf16 on CUDA with bf16 support, fp16 on other CUDA, none on CPU/MPS."""
    if cfg_value != "auto":
        return cfg_value
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def make_optimizer(params, cfg, device_type: str):
    """AdamW (bitsandbytes' 8-bit AdamW when asked for, installed and on CUDA: it has no CPU kernels), or Prodigy
    with the settings of diffusers' advanced DreamBooth-LoRA script."""
    if getattr(cfg, "optimizer", "adamw") == "prodigy":
        import contextlib
        import io
        import warnings

        from prodigyopt import Prodigy

        scales = {g.get("lr_scale", 1.0) for g in params} if params and isinstance(params[0], dict) else {1.0}
        if len(scales) > 1:
            raise TrainingError(f"optimizer=prodigy takes one learning rate for all parameters; this method trains "
                                f"groups at {sorted(scales)} x lr (make their learning rates equal, or use adamw)")
        if cfg.lr < 0.1:
            warnings.warn(f"optimizer=prodigy: lr multiplies the step size Prodigy estimates; 1.0 is usual "
                          f"(got {cfg.lr}: training will barely move)", stacklevel=2)
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a line about its weight decay
            return Prodigy(params, lr=cfg.lr, weight_decay=cfg.weight_decay, decouple=True,
                           use_bias_correction=True, safeguard_warmup=True)
    if cfg.use_8bit_adam and device_type == "cuda":
        try:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        except ImportError:
            pass
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **_fused(params, cfg))


def _fused(params, cfg) -> dict:
    """{"fused": True} when cfg.fused_adamw and torch has a fused AdamW kernel for every parameter's device."""
    if not getattr(cfg, "fused_adamw", False):
        return {}
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else list(params)
    ok = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return {"fused": True} if ok and tensors else {}


def fingerprint(d: dict) -> str:
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:16]


def lr_at(cfg, step: int) -> float:
    """The learning rate of optimizer step `step` (0-based): a pure function of the step, so resume is exact.

    constant: linear warm-up lr * (step + 1) / lr_warmup, then lr. The other cfg.lr_scheduler names are diffusers'
    schedules (diffusers.optimization.get_scheduler) over cfg.steps, read at the step: the lr a diffusers training
    script uses at that step when it calls lr_scheduler.step() after every optimizer step.
    """
    if cfg.lr_scheduler == "constant":
        if cfg.lr_warmup and step < cfg.lr_warmup:
            return cfg.lr * (step + 1) / cfg.lr_warmup
        return cfg.lr
    factor = _diffusers_schedule(cfg.lr_scheduler, cfg.lr, cfg.lr_warmup, cfg.steps, cfg.lr_num_cycles, cfg.lr_power)
    return cfg.lr * factor(step)  # what LambdaLR computes: base lr * lr_lambda(step)


@functools.lru_cache(maxsize=16)
def _diffusers_schedule(name: str, lr: float, warmup: int, steps: int, num_cycles: int, power: float):
    """The multiplier lr_lambda(step) of diffusers' schedule `name`, built once on a throw-away optimizer (the
    polynomial schedule reads its lr from the optimizer, so it gets the run's)."""
    from diffusers.optimization import get_scheduler

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = get_scheduler(name, opt, num_warmup_steps=warmup, num_training_steps=steps, num_cycles=num_cycles,
                          power=power)
    return sched.lr_lambdas[0]


def lr_depends_on_steps(cfg) -> bool:
    """Whether the schedule is spread over cfg.steps (then a resumed run must keep --steps)."""
    return cfg.lr_scheduler not in ("constant", "constant_with_warmup")


def train(recipe, cfg, work_dir: str | Path, *, resume: bool = False, run_info: dict | None = None,
          progress: Callable[[int, int], None] | None = None, on_step: Callable[[int, float], None] | None = None,
          on_save: Callable[[int, float], None] | None = None, accelerator=None,
          data: Callable[[int], Iterator[dict]] | None = None) -> dict:
    """Run cfg.steps optimizer steps of `recipe.loss`, with checkpoints under work_dir/checkpoints.

    run_info: what identifies this run (method, model hash, photos hash, config); a resumed run must match it.
    progress(step, total): called after each step (the app's progress bar); on_step(step, loss): likewise (tests
    use it to kill a run); on_save(step, loss): every cfg.save_every steps before the last, on the main process
    (the concept snapshots).
    data: for recipes that learn from a dataset (the encoder pretrainings): data(start_step) -> this process's
    batches from that step on, one per micro-step, in order; each goes to recipe.loss(g, batch). It must be a
    pure function of the step (boothkit.data's loader is), so a resumed run sees the batches an uninterrupted one
    would. Recipes without data draw their own from g (personalisation).
    Hooks a recipe may define: evaluate() -> {name: value} (fixed held-out losses: logged before the first step,
    every cfg.validate_every steps and after the last); step_log() -> extra fields of each step's log line;
    validation_images(cfg) -> (images, caption) for the validation grids.
    With cfg.keep_training_state the last step is checkpointed too (a later run can go on from it).
    Returns stats: steps run, first step, losses, seconds, the first and last evaluations.
    Raises TrainingError on a NaN/inf loss, naming the step and the last good checkpoint.
    """
    from accelerate import Accelerator

    work_dir = Path(work_dir)
    ck_root = work_dir / "checkpoints"
    run_id = fingerprint(run_info or {})
    if accelerator is None:
        accelerator = Accelerator(cpu=cpu_only(), mixed_precision=mixed_precision(cfg.mixed_precision),
                                  gradient_accumulation_steps=cfg.grad_accum,
                                  log_with=make_trackers(work_dir), project_dir=str(work_dir))
    device = accelerator.device
    _place(recipe, device, accelerator)
    if cfg.gradient_checkpointing:
        for name in recipe.train_modules:
            m = getattr(recipe, name)
            if hasattr(m, "enable_gradient_checkpointing"):
                m.enable_gradient_checkpointing()
            elif hasattr(m, "gradient_checkpointing_enable"):
                m.gradient_checkpointing_enable()
    for name in recipe.train_modules:
        getattr(recipe, name).train()
    params = recipe.trainable_parameters()  # tensors, or param groups {"params": [...], "lr_scale": x}
    groups = params if params and isinstance(params[0], dict) else None
    if groups:
        params = [p for g in groups for p in g["params"]]
    if not params:
        raise TrainingError("nothing to train: the method made no parameter trainable")
    opt = make_optimizer(groups or params, cfg, device.type)
    prepared = accelerator.prepare(*[getattr(recipe, n) for n in recipe.train_modules], opt)
    *wrapped, opt = prepared if isinstance(prepared, (tuple, list)) else (prepared,)
    recipe._wrapped = dict(zip(recipe.train_modules, wrapped))

    # the run id leaves out --steps (a constant-lr run may be resumed with more); a schedule over the steps may not
    schedule_meta = {"lr_schedule_steps": cfg.steps} if lr_depends_on_steps(cfg) else {}
    start = 0
    if resume:
        ck = latest_checkpoint(ck_root)
        if ck is not None:
            meta, groups = load_checkpoint(ck)
            if meta.get("run_id") != run_id:
                raise TrainingError(f"--resume: the checkpoint {ck} is from a different run (other photos, model "
                                    "or config); start again without --resume or use the same arguments")
            if meta.get("lr_schedule_steps") != schedule_meta.get("lr_schedule_steps"):
                raise TrainingError(f"--resume: the checkpoint {ck} follows lr_scheduler={cfg.lr_scheduler} over "
                                    f"{meta.get('lr_schedule_steps')} steps, this run asks for {cfg.steps}; resume "
                                    "with the same --steps or start again without --resume")
            recipe.load_state_tensors(groups["trainable"])
            load_optimizer_tensors(opt.optimizer, groups["optimizer"])
            start = int(meta["step"])
            accelerator.print(f"resuming from {ck} (step {start} of {cfg.steps})")

    if accelerator.is_main_process:
        accelerator.init_trackers("boothkit", config={k: v for k, v in cfg.to_dict().items()
                                                      if isinstance(v, (int, float, str, bool))})
    losses: list[float] = []
    evaluations = []

    def evaluate(step: int) -> None:
        if hasattr(recipe, "evaluate") and accelerator.is_main_process:
            values = recipe.evaluate()
            if values:
                evaluations.append(values)
                accelerator.log(values, step=step)

    evaluate(start)
    batches = data(start) if data is not None and start < cfg.steps else None
    t0 = time.perf_counter()
    last_good = latest_checkpoint(ck_root)
    bar = progress_bars.bar(total=cfg.steps, initial=start, desc="training", unit="step",
                            disable=not accelerator.is_main_process)
    for step in range(start, cfg.steps):
        lr = lr_at(cfg, step)
        for group in opt.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        step_loss = 0.0
        for micro in range(cfg.grad_accum):
            g = step_generator(cfg.seed, step, micro, accelerator.process_index)
            with accelerator.accumulate(*wrapped):
                with accelerator.autocast():
                    loss = recipe.loss(g) if batches is None else recipe.loss(g, next(batches))
                if not torch.isfinite(loss.detach()).all():
                    raise TrainingError(
                        f"loss became {loss.item()} at step {step + 1}: training diverged (try a lower lr or "
                        f"fp32). Last good checkpoint: {last_good or 'none'}")
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
            step_loss += loss.detach().float().item() / cfg.grad_accum
        recipe.after_step()
        done = step + 1
        losses.append(step_loss)
        accelerator.log({"loss": step_loss, "lr": lr, **(recipe.step_log() if hasattr(recipe, "step_log") else {})},
                        step=done)
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")
        validating = bool(cfg.validate_every and done % cfg.validate_every == 0)
        if validating or done == cfg.steps:
            evaluate(done)
        if accelerator.is_main_process:
            if (cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps) or \
                    (done == cfg.steps and cfg.keep_training_state):
                last_good = save_checkpoint(ck_root, done, {"trainable": recipe.state_tensors(),
                                                            "optimizer": optimizer_tensors(opt.optimizer)},
                                            meta={"run_id": run_id, **schedule_meta}, keep=cfg.keep_checkpoints)
            save_every = getattr(cfg, "save_every", 0)
            if on_save is not None and save_every and done % save_every == 0 and done < cfg.steps:
                on_save(done, step_loss)
            if validating and done < cfg.steps and cfg.validation_images:
                validate(recipe, cfg, work_dir / "validation", done)
        if progress is not None:
            progress(done, cfg.steps)
        if on_step is not None:
            on_step(done, step_loss)
    bar.close()
    accelerator.wait_for_everyone()
    seconds = time.perf_counter() - t0
    if accelerator.is_main_process and cfg.validation_images:
        validate(recipe, cfg, work_dir / "validation", cfg.steps)
    accelerator.end_training()
    for name in recipe.train_modules:
        getattr(recipe, name).eval()
    recipe._wrapped = {}
    return {"first_step": start, "steps": cfg.steps, "losses": losses, "train_seconds": seconds,
            "is_main_process": accelerator.is_main_process,
            "evaluation": {"first": evaluations[0] if evaluations else {},
                           "last": evaluations[-1] if evaluations else {}}}


def _place(recipe, device, accelerator) -> None:
    """Frozen modules go to the device (the VAE in the half-precision type in mixed precision, unless the family
    needs it in fp32, as SDXL's); trained ones stay fp32."""
    half = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision)
    for name, m in recipe.components().items():
        if name == "vae" and name not in recipe.train_modules and half is not None \
                and not recipe.family.vae_fp32(recipe.pipe):
            m.to(device, dtype=half)
        else:
            m.to(device)


@torch.no_grad()
def validate(recipe, cfg, folder: Path, step: int) -> Path:
    """A grid of validation images with the current weights (the recipe's own, or samples of the validation
    prompt) and its caption."""
    from ..world.render import grid

    folder.mkdir(parents=True, exist_ok=True)
    if hasattr(recipe, "validation_images"):
        images, caption = recipe.validation_images(cfg)
    else:
        images, caption = prompt_samples(recipe, cfg)
    path = folder / f"step-{step:05d}.png"
    grid(images, cols=min(4, len(images))).save(path)
    (folder / f"step-{step:05d}.txt").write_text(caption + "\n")
    return path


@torch.no_grad()
def prompt_samples(recipe, cfg, prompt: str | None = None) -> tuple[list, str]:
    """cfg.validation_images samples of a prompt (the validation prompt, or the recipe's own) with the current
    weights, every model in eval mode and the VAE in fp32 for the call -> (images, prompt)."""
    from ..generate import GenerateConfig, generate_images

    prompt = prompt or cfg.validation_prompt or recipe.display_prompt
    pipe = recipe.pipe
    models = {n: m for n, m in recipe.components().items() if n != "vae"}
    was = {n: m.training for n, m in models.items()}
    for m in models.values():
        m.eval()
    vae_dtype = pipe.vae.dtype
    if vae_dtype != torch.float32:
        pipe.vae.to(torch.float32)
    try:
        images = generate_images(pipe, prompt, GenerateConfig(n=cfg.validation_images, seed=0,
                                                             steps=cfg.validation_steps))
    finally:
        if vae_dtype != torch.float32:
            pipe.vae.to(vae_dtype)
        for n, tr in was.items():
            models[n].train(tr)
    return images, prompt
