"""How faithful `boothkit export` is: images from the exported webui files (read by diffusers' own kohya LoRA and
A1111 embedding loaders) against images from the concept itself (`apply_concepts`), on world held-out subjects.

For each subject (the `--val` preset's, first N) and method, with the method's default recipe: tune on the
subject's reference renders, export, then draw the same prompts and seeds both ways and score them with the
benchmark's metrics (judge-I identity, prompt fidelity). Also: the mean absolute pixel difference between the two
images of each prompt and seed, the export's own numbers (LoRA fit error, share of the weight change a LoRA cannot
carry), the export's seconds and file bytes.

Usage: OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/export_fidelity.py --methods dreambooth,custom \\
           --subjects 3 --out results/export_fidelity.json
Prints one JSON object (also written to --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _sample(pipe, texts, seeds, steps, guidance):
    gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
    out = pipe(list(texts), num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt")
    return out.images.float().cpu().clamp(0, 1)


def _webui_pipeline(model: str, webui: Path, record: dict):
    """The base model with the exported files, loaded by diffusers alone (as a webui would load them)."""
    from diffusers import StableDiffusionPipeline

    from boothkit.pipeline import resolve_model

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model(model), safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    for rel in record["files"]:
        kind, name = rel.split("/")
        if kind == "embeddings":
            pipe.load_textual_inversion(str(webui / rel), token=name[: -len(".safetensors")])
        elif kind == "lora":
            pipe.load_lora_weights(str(webui / kind), weight_name=name)
    return pipe


def _phrase(record: dict, meta: dict) -> tuple[str, str]:
    """(the concept's subject phrase, the exported files' phrase): TI/Custom tokens become embedding names."""
    token, cls = meta["tokens"][0], meta["class"]
    names = [r.split("/")[1][: -len(".safetensors")] for r in record["files"] if r.startswith("embeddings/")]
    return f"{token} {cls}", f"{record['name'] if names else token} {cls}"


def run(args) -> dict:
    from boothkit.bench import protocol as P
    from boothkit.bench.world_metrics import WorldCLIP, WorldScorer, fidelity_checks
    from boothkit.eval.world import class_prototypes
    from boothkit.judge import Judge
    from boothkit.methods import apply_concepts, tune
    from boothkit.methods.webui import export_concept
    from boothkit.pipeline import load_pipeline, world_path
    from boothkit.world.references import render_references
    from boothkit.world.render import from_pil

    torch.set_num_threads(args.threads)
    judge = Judge.load(world_path() / "judge")
    scorer = WorldScorer(judge, class_prototypes(judge), WorldCLIP(world_path()))
    subjects = P.subjects(P.preset("val"))[: args.subjects]
    prompts = [P.PROMPTS[k] for k in args.prompts.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for si, concept in enumerate(subjects):
            photos = render_references(concept, n=P.preset("val").n_references, seed=0)[0]
            pdir = tmp / f"photos-{si}"
            pdir.mkdir()
            for i, im in enumerate(photos):
                im.save(pdir / f"{i:02d}.png")
            refs = scorer.refs(concept, from_pil(photos))
            comp = P.companion(concept)
            for method in args.methods.split(","):
                folder = tune(method, pdir, concept.cls, tmp / f"{method}-{si}", model=args.model,
                              steps=args.tune_steps, config={"validation_images": 0})
                meta = json.loads((folder / "concept.json").read_text())
                t0 = time.perf_counter()
                record = export_concept(folder, tmp / f"webui-{method}-{si}", name=f"bkx{si}")
                export_s = time.perf_counter() - t0
                ours = apply_concepts(load_pipeline(args.model, device="cpu", dtype="fp32", progress=False),
                                      [folder])
                ours.set_progress_bar_config(disable=True)
                theirs = _webui_pipeline(args.model, tmp / f"webui-{method}-{si}", record)
                ph_ours, ph_theirs = _phrase(record, meta)
                scores = {"concept": [], "webui": []}
                mae = []
                for prompt in prompts:
                    a = _sample(ours, [prompt.text(ph_ours, comp.name)] * len(seeds), seeds, args.steps, 5.0)
                    b = _sample(theirs, [prompt.text(ph_theirs, comp.name)] * len(seeds), seeds, args.steps, 5.0)
                    mae.append(float((a - b).abs().mean()) * 255)
                    clip_text = P.class_prompt(concept.cls) if prompt.group == "bare" else prompt.text(
                        concept.cls, comp.name)
                    for key, imgs in (("concept", a), ("webui", b)):
                        for r in scorer.score(imgs, prompt, refs, clip_text, comp):
                            scores[key].append((r["judge_i"], fidelity_checks(r)))
                size = sum(p.stat().st_size for p in (tmp / f"webui-{method}-{si}").rglob("*.safetensors"))
                row = {"subject": concept.name, "class": concept.cls, "method": method,
                       "export_seconds": round(export_s, 2), "export_bytes": size,
                       "lora_relative_error": record.get("lora_relative_error"),
                       "change_outside_the_lora": record.get("change_outside_the_lora"),
                       "pixel_mae_0_255": round(float(np.mean(mae)), 3)}
                for key, vals in scores.items():
                    row[f"judge_i_{key}"] = round(float(np.mean([v for v, _ in vals])), 4)
                    checks = [c for _, cs in vals for c in cs]
                    row[f"prompt_fidelity_{key}"] = round(float(np.mean(checks)), 4) if checks else None
                rows.append(row)
                print(json.dumps(row), flush=True)
                del ours, theirs
    by_method = {}
    for m in args.methods.split(","):
        mine = [r for r in rows if r["method"] == m]
        by_method[m] = {k: round(float(np.mean([r[k] for r in mine if r[k] is not None])), 4)
                        for k in ("judge_i_concept", "judge_i_webui", "prompt_fidelity_concept",
                                  "prompt_fidelity_webui", "pixel_mae_0_255", "export_seconds", "export_bytes")}
        outside = [r["change_outside_the_lora"] for r in mine if r["change_outside_the_lora"] is not None]
        if outside:
            by_method[m]["change_outside_the_lora"] = round(float(np.mean(outside)), 4)
    return {"command": "OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 python benchmarks/export_fidelity.py " + " ".join(
                f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out" and v is not None),
            "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": args.threads},
            "subjects": [s.name for s in subjects], "prompts": args.prompts.split(","), "seeds": seeds,
            "by_method": by_method, "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default="dreambooth,custom,lora,ti")
    ap.add_argument("--subjects", type=int, default=3)
    ap.add_argument("--prompts", default="bare,bg-red,bg-blue-left,large-green,upside-down")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--model", default="world")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--tune-steps", type=int, default=None, help="smoke runs only (default: each method's recipe)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    res = run(args)
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
