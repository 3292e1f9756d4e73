"""What one training step of `boothkit tune` spends its time on: the model's work against the loop's bookkeeping.

    python benchmarks/step_overhead.py [--method lora] [--steps 40] [--set key=value ...]

Runs `boothkit.methods.tune` on the world model or another pipeline folder (1 torch thread, checkpoints and validation off so that every
step is alike) with timers wrapped around the parts of a step: the recipe's loss (data draw, VAE and text encoding
or their cache, UNet forward), backward, gradient clipping, the optimizer step and zero_grad, the per-step
generator, the learning-rate schedule, the log line (accelerate's tracker: the JSON-lines file), the progress bar
(update and postfix) and the rest of the loop (what no timer covers). Prints one JSON object: milliseconds per step
for each part (mean over the steps after the first), and the step's median. A timer costs about a microsecond.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--method", default="lora")
    ap.add_argument("--model", default="world", help="world, or a diffusers pipeline folder")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(tempfile.mkdtemp(prefix="step-overhead-"))
    os.environ["BOOTHKIT_CACHE"] = str(work / "cache")

    import torch
    from accelerate import Accelerator
    from tqdm.std import tqdm

    import boothkit.training.loop as loop
    import boothkit.training.recipe as recipe_mod
    from boothkit.methods import tune
    from boothkit.world.concepts import heldout_concepts
    from boothkit.world.references import render_references

    torch.set_num_threads(args.threads)
    spent: dict[str, float] = {}
    counting = [False]

    def timed(owner, name: str, label: str) -> None:
        fn = getattr(owner, name)

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            if not counting[0]:
                return fn(*a, **kw)
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                spent[label] = spent.get(label, 0.0) + time.perf_counter() - t
        setattr(owner, name, wrapper)

    timed(recipe_mod.Recipe, "loss", "loss (draw, encode or cache, UNet forward)")
    timed(Accelerator, "backward", "backward")
    timed(Accelerator, "clip_grad_norm_", "clip_grad_norm_")
    timed(torch.optim.AdamW, "step", "optimizer step")
    timed(torch.optim.Optimizer, "zero_grad", "zero_grad")
    timed(loop, "step_generator", "step generator (SeedSequence)")
    timed(loop, "lr_at", "learning rate")
    timed(Accelerator, "log", "log line (JSON-lines tracker)")
    timed(tqdm, "update", "progress bar update")
    timed(tqdm, "set_postfix", "progress bar postfix")

    photos = work / "photos"
    photos.mkdir()
    for i, im in enumerate(render_references(heldout_concepts("animal")[0], n=4, seed=0)[0]):
        im.save(photos / f"{i}.png")
    stamps: list[float] = []

    def on_step(step, loss):
        stamps.append(time.perf_counter())
        counting[0] = step >= 1  # the first step (one-time costs, caches filling) is not counted

    overrides = {"checkpoint_every": 0, "validation_images": 0}
    for s in args.set:
        k, v = s.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    tune(args.method, photos, "animal", work / "concept", model=args.model, steps=args.steps, config=overrides,
         on_step=on_step)
    steps = len(stamps) - 1
    step_times = [b - a for a, b in zip(stamps, stamps[1:])]
    total = stamps[-1] - stamps[0]
    parts = {k: round(1000 * v / steps, 3) for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}
    parts["rest of the loop (untimed)"] = round(1000 * total / steps - sum(parts.values()), 3)
    print(json.dumps({"benchmark": "step_overhead", "command": "python benchmarks/step_overhead.py " + " ".join(
        sys.argv[1:]), "method": args.method, "config": overrides, "torch_threads": args.threads,
        "load_average": os.getloadavg(), "steps_counted": steps,
        "step_ms_median": round(1000 * statistics.median(step_times), 2),
        "step_ms_mean": round(1000 * total / steps, 2), "ms_per_step": parts}, indent=1))


if __name__ == "__main__":
    main()
