"""InstantBooth's inference cost over plain generation on the world model (CPU), printed as JSON.

    python benchmarks/instantbooth_overhead.py [--refs 1,3,5] [--repeats 5] [--steps 20] [--threads 1]

Per image: the same prompt, sampler steps, guidance and seed, with and without the adapters (and the concept
token). The adapters run in full even with untrained weights (gamma = 0 is multiplied, not skipped), so the cost is
the trained model's. Plain and InstantBooth runs are interleaved and the median is reported, which keeps load from
other processes on a shared machine from favouring either side. One-time costs (loading the artifact, encoding the
reference images) are reported separately: they are paid once per subject, not per image.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--refs", default="1,3,5", help="numbers of reference images to measure")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from boothkit.methods.instantbooth import install_instantbooth
    from boothkit.methods.instantbooth.pretrain import write_untrained
    from boothkit.pipeline import load_pipeline
    from boothkit.world.concepts import heldout_concepts
    from boothkit.world.references import render_references

    pipe = load_pipeline("world", device="cpu", dtype="fp32", progress=False)
    refs, _ = render_references(heldout_concepts("person")[0], n=max(int(n) for n in args.refs.split(",")), seed=0)
    prompt = "a photo of sks person on a red background"

    def image(**kw) -> float:
        g = torch.Generator("cpu").manual_seed(0)
        t = time.perf_counter()
        pipe(num_inference_steps=args.steps, guidance_scale=args.guidance, generator=g, **kw)
        return time.perf_counter() - t

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        art = write_untrained(Path(tmp) / "ib", pipe, cls="person")
        image(prompt=prompt)  # warm-up
        for n in (int(x) for x in args.refs.split(",")):
            t0 = time.perf_counter()
            ib = install_instantbooth(pipe, art)
            ib.set_images(refs[:n])
            setup = time.perf_counter() - t0
            ib.remove()
            plain, instant = [], []
            for _ in range(args.repeats):
                plain.append(image(prompt=prompt))
                ib = install_instantbooth(pipe, art)
                ib.set_images(refs[:n])
                t = time.perf_counter()
                embeds = ib.encode_prompt(prompt)  # per image: the prompt with the concept token
                encode = time.perf_counter() - t
                instant.append(encode + image(prompt_embeds=embeds))
                ib.remove()
            p, i = statistics.median(plain), statistics.median(instant)
            results.append({"reference_images": n, "patch_tokens": n * 65,
                            "plain_seconds_per_image": round(p, 4), "instantbooth_seconds_per_image": round(i, 4),
                            "overhead_percent": round(100 * (i / p - 1), 1),
                            "one_time_setup_seconds": round(setup, 4),
                            "plain_all": [round(x, 4) for x in plain],
                            "instantbooth_all": [round(x, 4) for x in instant]})
    out = {"benchmark": "instantbooth_overhead", "model": "world (64 px, 11 transformer blocks)",
           "steps": args.steps, "guidance": args.guidance, "repeats": args.repeats, "threads": args.threads,
           "device": f"cpu: {platform.processor() or platform.machine()}, torch {torch.__version__}",
           "weights": "untrained (cost only)", "target_overhead_percent": 30, "results": results}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
