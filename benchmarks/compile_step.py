"""Does torch.compile pay for a LoRA training step on this machine? Eager against compiled, the same step.

    python benchmarks/compile_step.py [--model world] [--steps 30] [--mode default]

One process, 1 torch thread: the model's UNet with LoRA (rank 8 on to_q/to_k/to_v/to_out.0, as boothkit's recipe),
a batch of 2 latents and cached text conditioning, forward + MSE + backward + clip + fused AdamW, first eagerly,
then with `torch.compile(unet)`. Prints JSON: the compile time (the first compiled steps, which trace and build),
the median step after it, eager's median step, and the number of steps after which compiling has paid for itself.
Only the UNet is compiled (what the training step spends its time in); boothkit has no compile option yet: this is
the measurement that would justify one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="world")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--mode", default="default", help="torch.compile mode")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    import torch
    from peft import LoraConfig

    from boothkit.pipeline import load_pipeline

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pipe = load_pipeline(args.model, device="cpu", dtype="fp32", progress=False)
    unet = pipe.unet
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=8, lora_alpha=8, init_lora_weights="gaussian",
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    unet.train()
    params = [p for p in unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2, fused=True)
    side = int(unet.config.sample_size)
    x = torch.randn(2, unet.config.in_channels, side, side)
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim)
    t = torch.tensor([10, 500])

    def step(model) -> float:
        t0 = time.perf_counter()
        out = model(x, t, ctx).sample
        out.float().pow(2).mean().backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    eager = [step(unet) for _ in range(args.steps)][2:]
    compiled_model = torch.compile(unet, mode=args.mode)
    t0 = time.perf_counter()
    first = [step(compiled_model) for _ in range(3)]  # tracing and code generation happen here
    compile_seconds = time.perf_counter() - t0
    compiled = [step(compiled_model) for _ in range(args.steps)]
    e, c = statistics.median(eager), statistics.median(compiled)
    pays_after = (compile_seconds - 3 * c) / (e - c) if e > c else None
    print(json.dumps({"benchmark": "compile_step", "command": "python benchmarks/compile_step.py " + " ".join(
        sys.argv[1:]), "model": args.model, "torch": torch.__version__, "threads": args.threads,
        "load_average": os.getloadavg(), "eager_step_median": round(e, 4), "compiled_step_median": round(c, 4),
        "speedup": round(e / c, 3), "first_three_compiled_steps_seconds": round(compile_seconds, 1),
        "first_three": [round(v, 2) for v in first],
        "steps_until_compile_pays": round(pays_after) if pays_after else None}, indent=1))


if __name__ == "__main__":
    main()
