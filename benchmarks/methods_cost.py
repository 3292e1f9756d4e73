"""Cost and quality of the personalisation methods' default recipes on the world model (held-out subjects).

For each subject (a held-out world concept; 5 reference renders are its "photos") and each method:
- wall time of `boothkit.methods.tune` with the default recipe (pipeline loading and class-image generation
  included: the class-image cache starts empty, so the first method that needs them pays for them), and its
  training-loop seconds;
- identity: judge cosine between generated "a photo of <token> <class>" images and 8 fresh references of the
  subject (other scenes than the training photos), against the base model's "a photo of a <class>" images; and
  the rank of the subject among all world glyphs of its class (0 = the judge picks it), averaged;
- prompt obedience: "... on a <bg> background" and "... on the left/right" read back from pixels
  (boothkit.world.measure), for the personalised prompt and for the base model's class prompt.

(Superseded by `boothkit bench`, which measures every method on the benchmark protocol; kept because
results/methods_cost.json was made with it.)

Usage: OMP_NUM_THREADS=1 python benchmarks/methods_cost.py [--methods lora,ti,dreambooth,custom] [--subjects 2]
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BG_PROMPTS = ("blue", "yellow", "red")
POS_PROMPTS = ("left", "right")


def to_tensor(images) -> torch.Tensor:
    from boothkit.world.render import from_pil

    return from_pil(images)  # [B, 3, 64, 64] in [0, 1]


@torch.no_grad()
def generate(pipe, prompt: str, n: int, steps: int, seed0: int = 1000):
    gens = [torch.Generator("cpu").manual_seed(seed0 + i) for i in range(n)]
    return pipe([prompt] * n, num_inference_steps=steps, guidance_scale=5.0, generator=gens).images


@torch.no_grad()
def class_prototypes(judge, cls: str) -> tuple[list[int], torch.Tensor]:
    """(atlas rows, unit judge embeddings) of every world glyph of one class (mean over 4 plain renders)."""
    from boothkit.world.concepts import all_concepts, concept_index
    from boothkit.world.references import renderer
    from boothkit.world.render import SceneBatch
    from boothkit.world.scenes import fixed_scene

    idx = concept_index()
    cs = [c for c in all_concepts() if c.cls == cls]
    bgs = ["white", "blue", "yellow", "gray"]
    scenes = [fixed_scene(idx[c.id], c, bg=bg, size="large") for c in cs for bg in bgs]
    embs = torch.cat([judge(renderer().render(SceneBatch.from_scenes(scenes[i:i + 256])))
                      for i in range(0, len(scenes), 256)])
    e = torch.nn.functional.normalize(embs.view(len(cs), len(bgs), -1).mean(1), dim=-1)
    return [idx[c.id] for c in cs], e


@torch.no_grad()
def identity(judge, protos, concept, images, refs) -> dict:
    from boothkit.world.concepts import concept_index

    e = judge(to_tensor(images))  # [n, D] unit
    r = judge(to_tensor(refs))
    cos = float((e @ r.T).mean())
    rows, P = protos
    sims = e @ P.T  # [n, glyphs of the class]
    target = sims[:, rows.index(concept_index()[concept.id])]
    ranks = (sims > target[:, None]).sum(1).float()
    return {"judge_cos": round(cos, 4), "rank_mean": round(float(ranks.mean()), 2),
            "top5": round(float((ranks < 5).float().mean()), 3), "n_glyphs_in_class": len(rows)}


def obedience(pipe, subject_phrase: str, n: int, steps: int) -> dict:
    from boothkit.world.measure import measure

    bg_ok, pos_ok = [], []
    for bg in BG_PROMPTS:
        found = measure(to_tensor(generate(pipe, f"a photo of {subject_phrase} on a {bg} background", n, steps)))
        bg_ok += [m.bg == bg for m in found]
    for pos in POS_PROMPTS:
        found = measure(to_tensor(generate(pipe, f"a photo of {subject_phrase} on the {pos}", n, steps)))
        pos_ok += [m.position == pos for m in found]
    return {"bg_acc": round(float(np.mean(bg_ok)), 3), "position_acc": round(float(np.mean(pos_ok)), 3)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="lora,dreambooth,custom,ti")
    ap.add_argument("--subjects", type=int, default=2, help="held-out subjects (animal, food, ... first of each)")
    ap.add_argument("--n", type=int, default=6, help="images per prompt for the measurements")
    ap.add_argument("--sample-steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=None, help="override every recipe's step count")
    ap.add_argument("--config", default=None, help='JSON object of config overrides for every method, e.g. {"lr": 3e-4}')
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from boothkit.judge import Judge
    from boothkit.methods import apply_concepts, tune
    from boothkit.pipeline import load_pipeline, world_path
    from boothkit.world.concepts import heldout_concepts
    from boothkit.world.references import render_references

    work = Path(tempfile.mkdtemp(prefix="methods-cost-"))
    os.environ["BOOTHKIT_CACHE"] = str(work / "cache")  # cold class-image cache: its cost is counted
    judge = Judge.load(world_path() / "judge")
    subjects = [c for cls in ("animal", "food", "object", "plant", "vehicle") for c in heldout_concepts(cls)[:1]]
    subjects = subjects[: args.subjects]
    result = {"command": "OMP_NUM_THREADS=1 python benchmarks/methods_cost.py " + " ".join(
                  f"--{k.replace('_', '-')} '{v}'" if k == "config" else f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
              "machine": {"cpu_count": os.cpu_count(), "torch_threads": args.threads,
                          "processor": platform.processor() or platform.machine(), "torch": torch.__version__,
                          "load_average_at_start": os.getloadavg()},
              "targets_seconds": {"dreambooth": 180, "lora": 180, "custom": 180, "ti": 300},
              "subjects": [], "runs": []}
    base = load_pipeline("world", device="cpu", dtype="fp32", progress=False)
    for concept in subjects:
        photos = work / "photos" / concept.slug
        photos.mkdir(parents=True)
        for i, im in enumerate(render_references(concept, n=5, seed=0)[0]):
            im.save(photos / f"{i}.png")
        refs = render_references(concept, n=8, seed=1)[0]
        protos = class_prototypes(judge, concept.cls)
        base_imgs = generate(base, f"a photo of a {concept.cls}", args.n, args.sample_steps)
        row = {"subject": concept.name, "class": concept.cls,
               "training_photos_vs_references": identity(judge, protos, concept,
                                                         render_references(concept, n=5, seed=0)[0], refs),
               "base": {**identity(judge, protos, concept, base_imgs, refs),
                        **obedience(base, f"a {concept.cls}", args.n, args.sample_steps)}}
        result["subjects"].append(row)
        print(json.dumps(row), flush=True)
        for method in args.methods.split(","):
            out = work / "concepts" / f"{concept.slug}-{method}"
            t0 = time.perf_counter()
            tune(method, photos, concept.cls, out, steps=args.steps,
                 config={"validation_images": 0, "checkpoint_every": 0, **json.loads(args.config or "{}")})
            wall = time.perf_counter() - t0
            meta = json.loads((out / "concept.json").read_text())
            pipe = apply_concepts(load_pipeline("world", device="cpu", dtype="fp32", progress=False), [out])
            pipe.set_progress_bar_config(disable=True)
            phrase = f"{meta['tokens'][0]} {concept.cls}"
            imgs = generate(pipe, f"a photo of {phrase}", args.n, args.sample_steps)
            run = {"subject": concept.name, "method": method, "steps": meta["config"]["steps"],
                   "batch_size": meta["config"]["batch_size"], "lr": meta["config"]["lr"],
                   "wall_seconds": round(wall, 1), "train_seconds": meta["training"]["train_seconds"],
                   "target_seconds": result["targets_seconds"].get(method),
                   "within_target": (wall <= result["targets_seconds"][method]
                                     if method in result["targets_seconds"] else None),
                   "artifact_bytes": sum(p.stat().st_size for p in out.rglob("*.safetensors")),
                   **identity(judge, protos, concept, imgs, refs), **obedience(pipe, phrase, args.n, args.sample_steps),
                   "identity_gain_vs_base": None}
            run["identity_gain_vs_base"] = round(run["judge_cos"] - row["base"]["judge_cos"], 4)
            result["runs"].append(run)
            print(json.dumps(run), flush=True)
            del pipe
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
