"""The step loop shared by the encoder pretrainings (InstantBooth, E4T): optimise, log, validate, checkpoint.

Each pretraining builds its own model, data and resume state; this runs steps `start..cfg.steps` of it the same way
for both: one optimizer step per batch (gradient clipping at cfg.max_grad_norm), one line per step in
`work/train_log.jsonl`, the fixed-batch losses before the first step, every cfg.val_every steps and after the last,
and a resumable checkpoint every cfg.checkpoint_every steps and at the end.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from .checkpoint import latest_checkpoint, optimizer_tensors, save_checkpoint


def pretraining_steps(cfg, *, start: int, work: Path, opt: torch.optim.Optimizer, params: list, run: dict,
                      step_loss: Callable[[int], tuple[torch.Tensor, float, dict]],
                      fixed_losses: Callable[[], dict], state: Callable[[], dict], desc: str,
                      after_step: Callable[[], dict] | None = None, progress: bool = True,
                      on_step: Callable[[int, float], None] | None = None) -> tuple[list[float], dict, dict, float]:
    """Run the steps; -> (the tracked loss of each step, fixed losses before the first and after the last step,
    seconds).

    step_loss(step) -> (the loss to minimise, the value to track in the summary, extra fields for the step's log line)
    after_step() -> more log fields, measured after the optimizer step (e.g. the updated gates)
    fixed_losses() -> {name: mean loss} on fixed batches with fixed noise ({}: no validation)
    state() -> the model tensors of a checkpoint (the optimizer's are added here)
    cfg needs: steps, max_grad_norm, val_every, checkpoint_every, keep_checkpoints.
    """
    from ..progress import bar as progress_bar

    with open(work / "train_log.jsonl", "a") as log, \
            progress_bar(total=cfg.steps, initial=start, desc=desc, disable=not progress, dynamic_ncols=True) as bar:
        fixed_first = fixed_losses()
        if fixed_first:
            log.write(json.dumps({"step": start, **fixed_first}) + "\n")
        fixed_last = fixed_first
        t0, losses = time.time(), []
        for step in range(start, cfg.steps):
            loss, tracked, extra = step_loss(step)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at step {step}; "
                                         f"last checkpoint: {latest_checkpoint(work)}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            done = step + 1
            lv = float(loss.detach())
            losses.append(tracked)
            if after_step:
                extra = {**extra, **after_step()}
            log.write(json.dumps({"step": done, "loss": lv, **extra, "t": round(time.time() - t0, 3)}) + "\n")
            log.flush()
            if fixed_first and (done == cfg.steps or (cfg.val_every and done % cfg.val_every == 0)):
                fixed_last = fixed_losses()
                log.write(json.dumps({"step": done, **fixed_last}) + "\n")
                log.flush()
            if on_step:
                on_step(done, lv)
            bar.update(1)
            bar.set_postfix(loss=f"{lv:.4f}")
            if done == cfg.steps or (cfg.checkpoint_every and done % cfg.checkpoint_every == 0):
                save_checkpoint(work, done, {"model": state(), "optimizer": optimizer_tensors(opt)}, {"run": run},
                                keep=cfg.keep_checkpoints)
    return losses, fixed_first, fixed_last, time.time() - t0
