"""What pretraining an encoder on real data costs: FLOPs per step, counted, and the GPU-hours they imply.

    python benchmarks/pretrain_cost.py [--families sd15,sdxl] [--batch 8] [--steps 20000] > results/pretrain_cost/cost.json

For InstantBooth and E4T on SD-1.5 (512 px) and SDXL (1024 px) shapes, boothkit.bench.flops.pretrain_step_flops
counts one pretraining step as the recipes run it (the frozen CLIP ViT-L/14 vision tower and VAE encoder on each
image, the text encoders, the heads, the UNet forward and backward with the adapters or the weight offsets), with
and without gradient checkpointing (one more UNet forward). Counted on meta-device models built from
assets/reference_configs/ (no weights, no GPU; matrix products, convolutions and attention; element-wise work,
a few percent, is not counted).

GPU-hours = steps x step FLOPs / (peak x utilisation) / 3600. The peaks are the vendors' published dense bf16
tensor-core figures (A100 SXM 312 TFLOP/s, H100 SXM 989 TFLOP/s); the utilisation (the fraction of the peak a
diffusion training step sustains) is an assumption, not a measurement: no GPU was available to this project. Two
are given, 0.3 and 0.5; a user's own step time on their GPU replaces both (hours = steps x seconds per step / 3600).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import torch

#: published dense bf16 peaks (TFLOP/s) of data-centre GPUs; see the module docstring
PEAKS = {"A100-SXM": 312e12, "H100-SXM": 989e12}
UTILISATION = (0.3, 0.5)
RESOLUTION = {"sd15": 512, "sdxl": 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default="sd15,sdxl")
    ap.add_argument("--batch", type=int, default=8, help="images per optimizer step (the recipe page's: 8)")
    ap.add_argument("--steps", type=int, default=20000, help="optimizer steps (the recipe page's: 20000)")
    args = ap.parse_args()
    from boothkit.bench.flops import PRETRAIN_METHODS, pretrain_step_flops

    t0 = time.perf_counter()
    rows = []
    for family in args.families.split(","):
        for method in PRETRAIN_METHODS:
            for ckpt in (False, True):
                step = pretrain_step_flops(family, method, batch=args.batch, resolution=RESOLUTION.get(family),
                                           gradient_checkpointing=ckpt)
                total = args.steps * step["total"]
                hours = {f"{gpu}@{u}": round(total / (peak * u) / 3600, 2) for gpu, peak in PEAKS.items()
                         for u in UTILISATION}
                rows.append({"family": family, "method": method, "resolution": RESOLUTION.get(family),
                             "batch": args.batch, "gradient_checkpointing": ckpt, "step_flops": step,
                             "steps": args.steps, "run_flops": total, "gpu_hours": hours})
    print(json.dumps({"benchmark": "pretrain_cost", "command": "python benchmarks/pretrain_cost.py " +
                      " ".join(sys.argv[1:]), "peaks_flops_per_s": PEAKS, "utilisation_assumed": UTILISATION,
                      "machine": {"platform": platform.platform(), "torch": torch.__version__,
                                  "note": "the count does not depend on the machine"},
                      "rows": rows, "seconds": round(time.perf_counter() - t0, 1)}, indent=1))


if __name__ == "__main__":
    main()
