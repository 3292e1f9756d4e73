"""Two personalised subjects in one prompt: does each identifier get ITS subject? Printed as JSON.

    python benchmarks/two_subjects.py [--methods instantbooth,e4t] [--pairs 10] [--seeds 0,1] [--threads 1]
                                      [--out results/two_subjects.json]

Pairs of held-out subjects of different classes (the `bench --full` subjects: subject i with subject i + 10). A is
tuned with the identifier "sks", B with "olis"; both concepts go into one pipeline, and the prompt is
"a photo of sks <class A> on the left and olis <class B> on the right". The image is cut in two (as the benchmark's
composition prompts are: each half centred on the measured background), and the world judge compares each half
with both subjects' reference photos:
  own      judge-I of the left half to A's references and of the right half to B's (higher: the subject is there)
  swapped  judge-I of the left half to B's and of the right half to A's (higher: the subjects leak or mix)
  correct  share of halves closer to their own subject than to the other one (0.5 = no better than chance)
The same prompt with ONE personalised subject ("... sks <A> on the left and a <B> on the right", and the mirror)
is the single-subject reference, and the base model with both class nouns is the floor.
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
    ap.add_argument("--methods", default="instantbooth,e4t")
    ap.add_argument("--pairs", type=int, default=10)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=20, help="denoising steps per image")
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default="", help="also write the JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from boothkit.bench import protocol as P
    from boothkit.bench.world_metrics import half_crops
    from boothkit.judge import Judge
    from boothkit.methods import METHODS, apply_concepts, tune
    from boothkit.pipeline import load_pipeline, world_path
    from boothkit.world.references import render_references
    from boothkit.world.render import from_pil
    from boothkit.world.scenes import POS_PHRASE, article

    judge = Judge.load(world_path() / "judge")
    seeds = [int(s) for s in args.seeds.split(",")]
    subjects = P.subjects(P.preset("full"))
    half = len(subjects) // 2
    pairs = [(subjects[i], subjects[i + half]) for i in range(min(args.pairs, half))]
    pairs = [(a, b) for a, b in pairs if a.cls != b.cls]

    def phrase(word: str | None, cls: str) -> str:
        return f"{word} {cls}" if word else cls

    def prompt(a: str, b: str) -> str:
        return f"a photo of {article(a)} {a} {POS_PHRASE['left']} and {article(b)} {b} {POS_PHRASE['right']}"

    @torch.no_grad()
    def sample(concepts: list[Path], text: str) -> torch.Tensor:
        pipe = load_pipeline("world", device="cpu", dtype="fp32", progress=False)
        if concepts:
            pipe = apply_concepts(pipe, concepts)
        pipe.set_progress_bar_config(disable=True)
        gens = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        out = pipe([text] * len(seeds), num_inference_steps=args.steps, guidance_scale=args.guidance,
                   generator=gens, output_type="pt")
        return out.images.float().cpu().clamp(0, 1)

    @torch.no_grad()
    def scores(images: torch.Tensor, ref_a: torch.Tensor, ref_b: torch.Tensor) -> dict:
        left, right = half_crops(images, "right")
        el, er = judge(left), judge(right)
        la, lb = (el @ ref_a.T).mean(1), (el @ ref_b.T).mean(1)  # [S]
        rb, ra = (er @ ref_b.T).mean(1), (er @ ref_a.T).mean(1)
        return {"own_left": la.tolist(), "own_right": rb.tolist(), "swapped_left": lb.tolist(),
                "swapped_right": ra.tolist(),
                "correct": ((la > lb).float().tolist() + (rb > ra).float().tolist())}

    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for a, b in pairs:
            refs = {}
            for c in (a, b):
                photos = render_references(c, n=4, seed=0)[0]
                d = Path(tmp) / "photos" / c.slug
                d.mkdir(parents=True)
                for i, im in enumerate(photos):
                    im.save(d / f"{i:02d}.png")
                refs[c.slug] = (d, judge(from_pil(photos)))
            ra, rb = refs[a.slug][1], refs[b.slug][1]
            row = {"a": a.name, "a_class": a.cls, "b": b.name, "b_class": b.cls,
                   "floor": scores(sample([], prompt(a.cls, b.cls)), ra, rb)}
            for m in args.methods.split(","):
                cfg = {"validation_images": 0} if METHODS[m].recipe is not None else {}  # as the benchmark tunes
                ca = tune(m, refs[a.slug][0], a.cls, Path(tmp) / m / a.slug, identifier="sks", config=cfg)
                cb = tune(m, refs[b.slug][0], b.cls, Path(tmp) / m / b.slug, identifier="olis", config=cfg)
                row[m] = {
                    "both": scores(sample([ca, cb], prompt(phrase("sks", a.cls), phrase("olis", b.cls))), ra, rb),
                    "a_only": scores(sample([ca], prompt(phrase("sks", a.cls), b.cls)), ra, rb),
                    "b_only": scores(sample([cb], prompt(a.cls, phrase("olis", b.cls))), ra, rb)}
            rows.append(row)
            print(f"{a.name} + {b.name}: done", flush=True)

    def mean(xs):
        return round(statistics.mean(xs), 4)

    #: the halves that hold a personalised subject: both, or only A's (left) or B's (right)
    halves = {None: ("left", "right"), "both": ("left", "right"), "a_only": ("left",), "b_only": ("right",)}

    def summary(key: str, cond: str | None) -> dict:
        got = [r[key] if cond is None else r[key][cond] for r in rows]
        out = {k: mean([x for g in got for side in halves[cond] for x in g[f"{k}_{side}"]])
               for k in ("own", "swapped")}
        if len(halves[cond]) == 2:
            out["correct"] = mean([x for g in got for x in g["correct"]])
        return out

    methods = args.methods.split(",")
    result = {
        "benchmark": "two_subjects", "model": "world", "pairs": len(rows), "seeds": seeds, "steps": args.steps,
        "guidance": args.guidance, "threads": args.threads, "seconds": round(time.perf_counter() - t0, 1),
        "device": f"cpu: {platform.processor() or platform.machine()}, torch {torch.__version__}",
        "summary": {"floor": summary("floor", None),
                    **{m: {c: summary(m, c) for c in ("both", "a_only", "b_only")} for m in methods}},
        "pairs_detail": rows,
    }
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
