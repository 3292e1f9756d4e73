"""`boothkit eval world`: how faithfully a world model draws what captions say, over train concepts.

A fixed caption set (deterministic concepts, backgrounds, sizes, positions and styles; seed i for image i) is
generated, then measured from pixels (boothkit.world.measure) and by the judge (identity). The same measurement
is run on ground-truth renders of the same scenes: those `reference_*` numbers show how exact the measurement
itself is (the ceiling).
"""

from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..world.concepts import CLASSES, all_concepts, concept_index, train_concepts
from ..world.references import renderer
from ..world.render import SceneBatch
from ..world.scenes import BACKGROUNDS, POSITIONS, SIZES, STYLES, Scene, fixed_scene
from ..world.measure import measure, measure_style

EVAL_SEED = "eval-world-v1"


def eval_scenes(n: int) -> list[Scene]:
    """The fixed caption set: n single-object scenes of train concepts (60% colour style, 40% the others)."""
    rng = random.Random(EVAL_SEED)
    idx = concept_index()
    pool = list(train_concepts())
    scenes = []
    for _ in range(n):
        c = rng.choice(pool)
        style = rng.choice(STYLES[1:]) if rng.random() < 0.4 else "color"
        size = rng.choice(list(SIZES))
        scenes.append(fixed_scene(idx[c.id], c, bg=rng.choice(list(BACKGROUNDS)), size=size,
                                  position=rng.choice(POSITIONS), style=style))
    return scenes


class _Prototypes(dict):
    """class -> (atlas rows, unit judge embeddings [N, D]); each class is computed (or read from the disk cache)
    the first time it is asked for."""

    def __init__(self, judge, device):
        super().__init__()
        self.judge, self.device = judge, device
        import hashlib

        self.key = hashlib.sha1(b"".join(v.cpu().numpy().tobytes() for v in judge.state_dict().values())).hexdigest()[:12]

    def __missing__(self, cls: str):
        if cls not in CLASSES:
            raise KeyError(cls)
        self[cls] = value = self._load(cls)
        return value

    def __iter__(self):
        return iter(CLASSES)

    def __len__(self):
        return len(CLASSES)

    def items(self):
        return [(c, self[c]) for c in CLASSES]

    @torch.no_grad()
    def _load(self, cls: str):
        from safetensors.torch import load_file, save_file

        from ..cache import cache_dir
        from ..world.atlas import _atlas_key

        path = cache_dir() / f"judge-prototypes-{self.key}-{_atlas_key()}-{cls}.safetensors"
        if path.exists():
            stored = load_file(str(path))
            return stored["rows"].tolist(), stored["emb"]
        idx = concept_index()
        bgs = ["white", "gray"]
        cs = [c for c in all_concepts() if c.cls == cls]
        rows = [idx[c.id] for c in cs]
        scenes = [fixed_scene(r, c, bg=bg, size="large") for r, c in zip(rows, cs) for bg in bgs]
        embs = []
        for i in range(0, len(scenes), 256):
            embs.append(self.judge(renderer().render(SceneBatch.from_scenes(scenes[i:i + 256])).to(self.device)).cpu())
        e = torch.nn.functional.normalize(torch.cat(embs).view(len(cs), len(bgs), -1).mean(1), dim=-1)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")  # several processes may fill the cache at once
        save_file({"rows": torch.tensor(rows), "emb": e.contiguous()}, str(tmp))
        tmp.replace(path)
        return rows, e


def class_prototypes(judge, device="cpu") -> dict[str, tuple[list[int], torch.Tensor]]:
    """Per class: (atlas rows, unit judge embeddings [N, D]) of every glyph, each the mean over 2 plain renders.

    Lazy (a class is computed when first used) and cached on disk (boothkit's cache dir), keyed by the judge's
    weights, the atlas and the class."""
    return _Prototypes(judge, device)


def identity_ranks(judge, images: torch.Tensor, scenes: list[Scene], protos) -> list[int]:
    """Rank (0 = nearest) of each scene's target glyph among all glyphs of its class, by judge cosine."""
    emb = judge(images).cpu()
    ranks = []
    for e, s in zip(emb, scenes):
        rows, P = protos[s.objects[0].cls]
        sims = P @ e
        target = sims[rows.index(s.objects[0].concept)]
        ranks.append(int((sims > target).sum()))
    return ranks


def score(images: torch.Tensor, scenes: list[Scene], judge, protos) -> dict:
    """Attribute accuracies and identity over a batch of single-object images [B, 3, 64, 64] in [0, 1]."""
    found = measure(images)
    styles = measure_style(images, [s.objects[0].concept for s in scenes], found, renderer())
    ranks = identity_ranks(judge, images, scenes, protos)
    rows = []
    for s, m, st, r in zip(scenes, found, styles, ranks):
        o = s.objects[0]
        rows.append({"bg": m.bg == s.bg, "size": m.size == o.size, "position": m.position == o.position,
                     "style": st == o.style, "top1": r == 0, "top5": r < 5, "found": m.box is not None})
    return rows


def summarise(rows: list[dict], prefix: str = "") -> dict:
    keys = {"bg": "bg_color_acc", "size": "size_acc", "position": "position_acc", "style": "style_acc",
            "top1": "identity_top1", "top5": "identity_top5", "found": "object_found"}
    return {prefix + v: round(float(np.mean([r[k] for r in rows])), 4) for k, v in keys.items()}


def evaluate_world(model: str = "world", n: int = 240, steps: int = 20, guidance: float = 5.0, batch: int = 16,
                   out: str | None = None, device: str = "auto", progress: bool = True,
                   scheduler: str | None = None) -> dict:
    """Generate the fixed caption set with `model` (and `scheduler`, None: the model's own) and measure it.
    Returns the JSON-ready result."""
    from ..progress import bar as progress_bar

    from ..judge import Judge
    from ..pipeline import load_pipeline, world_path

    t0 = time.time()
    pipe = load_pipeline(model, device=device, progress=False, scheduler=scheduler)
    judge = Judge.load(world_path() / "judge")
    protos = class_prototypes(judge)
    scenes = eval_scenes(n)
    truth = renderer().render(SceneBatch.from_scenes(scenes))
    generated = []
    for i in progress_bar(range(0, n, batch), desc="eval world", disable=not progress):
        chunk = scenes[i:i + batch]
        gens = [torch.Generator("cpu").manual_seed(i + j) for j in range(len(chunk))]
        out_imgs = pipe([s.caption for s in chunk], num_inference_steps=steps, guidance_scale=guidance,
                        generator=gens, output_type="pt").images
        generated.append(out_imgs.float().cpu().clamp(0, 1))
    generated = torch.cat(generated)
    gen_seconds = time.time() - t0
    rows = score(generated, scenes, judge, protos)
    ref_rows = score(truth, scenes, judge, protos)
    per_style = {st: summarise([r for r, s in zip(rows, scenes) if s.objects[0].style == st])
                 for st in STYLES if any(s.objects[0].style == st for s in scenes)}
    result = {
        **summarise(rows), "n_images": n, "seconds": round(time.time() - t0, 1),
        "generation_seconds": round(gen_seconds, 1), "model": model, "steps": steps, "guidance": guidance,
        "scheduler": type(pipe.scheduler).__name__, "scheduler_name": scheduler or "the model's own",
        "seeds": f"image i uses seed i (0..{n - 1})", "captions": "boothkit.eval.world.eval_scenes",
        "device": str(pipe.device), "torch_threads": torch.get_num_threads(),
        "reference": summarise(ref_rows), "by_style": per_style,
    }
    if out:
        from ..world.render import grid, to_pil

        o = Path(out)
        o.mkdir(parents=True, exist_ok=True)
        (o / "world_fidelity.json").write_text(json.dumps(result, indent=1))
        pil = to_pil(torch.stack([x for pair in zip(truth[:32], generated[:32]) for x in pair]))
        grid(pil, cols=16).save(o / "world_fidelity_samples.png")
        (o / "world_fidelity_captions.txt").write_text("\n".join(s.caption for s in scenes[:32]) + "\n")
    return result
