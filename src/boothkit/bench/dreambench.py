"""The original DreamBench protocol on real models (Ruiz et al. 2023): real subjects, 25 prompts, CLIP and DINO.

Dataset: `--dreambench DIR` holds one folder of photos per subject and `prompts_and_classes.txt` (the DreamBooth
dataset's file: a `subject_name,class` table, then "Object Prompts" and "Live Subject Prompts" lists of
`'...{0} {1}...'.format(unique_token, class_token)` lines). Live subjects are the cat and dog classes.

Metrics per generated image (averaged per subject, then over subjects with a 95% bootstrap interval):
- DINO: cosine between the DINO ViT's CLS features of the image and of each real photo of the subject (mean).
- CLIP-I: the same with CLIP image embeddings.
- CLIP-T: cosine between the CLIP image embedding and the prompt's text embedding, with the identifier removed
  ("a dog in the snow").
The ceiling row ("real images") is the mean similarity between different real photos of a subject, as the
DreamBooth paper reports it; the floor is the base model prompted with the class noun. Metric models are named
(path or hub id, and the content hash of a local folder) in results.json.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..inputs import InputError
from .cost import Timer
from .report import bootstrap_ci, _mean
from ..fileio import write_json_atomic
from .run import check_methods, machine
from .runners import RunContext, personalise

LIVE_CLASSES = {"cat", "dog"}


@dataclass
class DreamBenchConfig:
    methods: list[str]
    out: str
    dataset: str
    model: str = "world"
    clip: str | None = None
    dino: str | None = None
    full: bool = False
    device: str = "cpu"
    threads: int | None = None
    tune_steps: int | None = None
    method_config: dict = field(default_factory=dict)
    subjects: str | None = None  #: comma list of subject names (default: quick = first 2, full = all)
    seeds: list[int] | None = None
    sample_steps: int | None = None
    progress: bool = True
    command: str | None = None


def parse_prompts_file(path: str | Path) -> tuple[dict[str, str], list[str], list[str]]:
    """-> (subject -> class, object prompt templates, live prompt templates); templates use {0} {1}."""
    text = Path(path).read_text()
    classes = {}
    for line in text.splitlines():
        m = re.fullmatch(r"\s*([A-Za-z0-9_]+)\s*,\s*([^,]+?)\s*", line)
        if m and m.group(1) != "subject_name":
            classes[m.group(1)] = m.group(2)
    obj_part, _, live_part = text.partition("Live Subject Prompts")
    pat = re.compile(r"'([^']*\{0\}[^']*)'\.format")
    objs, live = pat.findall(obj_part), pat.findall(live_part)
    if not classes or not objs or not live:
        raise InputError(f"{path}: not a DreamBench prompts_and_classes.txt (need the class table and both "
                         f"prompt lists)")
    return classes, objs, live


class SimilarityModels:
    """CLIP (image + text) and DINO (image) feature extractors from local folders or hub ids."""

    def __init__(self, clip: str, dino: str, device="cpu"):
        from transformers import AutoImageProcessor, AutoModel, CLIPModel, CLIPProcessor

        from ..pipeline import ModelNotFoundError

        self.device = torch.device(device)
        try:
            self.clip = CLIPModel.from_pretrained(clip).to(self.device).eval()
            self.clip_proc = CLIPProcessor.from_pretrained(clip)
            self.dino = AutoModel.from_pretrained(dino).to(self.device).eval()
            self.dino_proc = AutoImageProcessor.from_pretrained(dino)
        except OSError as e:
            raise ModelNotFoundError(f"metric model not found ({e}); pass local folders with --clip and --dino "
                                     f"(e.g. openai/clip-vit-base-patch32 and facebook/dino-vits16 downloaded "
                                     f"once)") from e

    @torch.no_grad()
    def clip_image(self, images) -> torch.Tensor:
        px = self.clip_proc(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        out = self.clip.get_image_features(pixel_values=px)
        out = out if torch.is_tensor(out) else out.pooler_output  # transformers 5: an output whose pooler is projected
        return F.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def clip_text(self, texts: list[str]) -> torch.Tensor:
        tok = self.clip_proc.tokenizer(texts, padding=True, truncation=True, return_tensors="pt").to(self.device)
        out = self.clip.get_text_features(**tok)
        out = out if torch.is_tensor(out) else out.pooler_output
        return F.normalize(out.float(), dim=-1)

    @torch.no_grad()
    def dino_image(self, images) -> torch.Tensor:
        px = self.dino_proc(images=images, return_tensors="pt")["pixel_values"].to(self.device)
        return F.normalize(self.dino(pixel_values=px).last_hidden_state[:, 0].float(), dim=-1)


def _name(model: str) -> dict:
    """A metric model's name and, for a local folder, a fingerprint (sha1 over each file's path, size and first
    MiB), so results say exactly which weights measured them."""
    import hashlib

    p = Path(model)
    if not p.is_dir():
        return {"model": model, "hash": None}
    h = hashlib.sha1()
    for f in sorted(x for x in p.rglob("*") if x.is_file()):
        h.update(f"{f.relative_to(p)}:{f.stat().st_size}".encode())
        with open(f, "rb") as fh:
            h.update(fh.read(2**20))
    return {"model": model, "hash": h.hexdigest()[:16]}


def _pairwise_mean(e: torch.Tensor) -> float:
    """Mean cosine between different rows (the real-images ceiling)."""
    n = len(e)
    if n < 2:
        return float("nan")
    s = e @ e.T
    return float((s.sum() - s.diag().sum()) / (n * (n - 1)))


def run_dreambench(cfg: DreamBenchConfig) -> dict:
    from ..inputs import load_subject_images
    from ..pipeline import load_pipeline, model_family, model_hash
    from ..progress import bar as progress_bar
    from ..world.render import to_pil
    from .report import plots

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if not cfg.clip or not cfg.dino:
        raise InputError("--dreambench needs --clip and --dino (metric models: local folders or hub ids)")
    data = Path(cfg.dataset)
    pfile = data / "prompts_and_classes.txt"
    if not pfile.exists():
        raise InputError(f"--dreambench {data}: no prompts_and_classes.txt")
    classes, obj_prompts, live_prompts = parse_prompts_file(pfile)
    found = [d.name for d in sorted(data.iterdir()) if d.is_dir() and d.name in classes]
    if cfg.subjects:
        want = [s.strip() for s in cfg.subjects.split(",")]
        missing = [s for s in want if s not in found]
        if missing:
            raise InputError(f"--subjects {missing}: not in {data} (has {found})")
        found = want
    elif not cfg.full:
        found = found[:2]
    if not found:
        raise InputError(f"--dreambench {data}: no subject folders named in prompts_and_classes.txt")
    n_prompts = None if cfg.full else 4
    seeds = cfg.seeds or ([0, 1, 2, 3] if cfg.full else [0])
    steps = cfg.sample_steps or (50 if cfg.full else 25)
    methods = [m for m in check_methods(cfg.methods) if m != "ceiling"]
    out = Path(cfg.out)
    proto = {"protocol": "dreambench", "dataset": str(data), "subjects": found, "prompts_per_subject": n_prompts or 25,
             "seeds": seeds, "sample_steps": steps, "guidance": 7.5, "model": cfg.model,
             "family": model_family(cfg.model).name, "model_hash": model_hash(cfg.model), "clip": _name(cfg.clip), "dino": _name(cfg.dino),
             "tune_steps": cfg.tune_steps, "method_config": cfg.method_config}
    proto = json.loads(json.dumps(proto))
    state = out / "bench.json"
    if state.exists() and json.loads(state.read_text())["protocol"] != proto:
        raise InputError(f"{out} holds a benchmark with another protocol: use another --out, or delete it")
    out.mkdir(parents=True, exist_ok=True)  # only now: the model and the dataset are known good
    write_json_atomic(state, {"protocol": proto, "methods": methods})
    sim = SimilarityModels(cfg.clip, cfg.dino, cfg.device)
    ctx = RunContext(model=cfg.model, device=cfg.device, steps=steps, guidance=7.5, work=out / "work",
                     tune_steps=cfg.tune_steps, method_config=cfg.method_config)
    base = None
    per_subject: dict[str, dict] = {m: {} for m in ["ceiling", *methods]}
    refs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    bar = progress_bar([(m, s) for s in found for m in methods], desc="dreambench", disable=not cfg.progress)
    for method, subj in bar:
        cls = classes[subj]
        if subj not in refs:  # the real photos' features: once per subject, not once per method
            photos = load_subject_images(data / subj)
            refs[subj] = sim.clip_image(photos), sim.dino_image(photos)
            per_subject["ceiling"][subj] = {"dino": _pairwise_mean(refs[subj][1]),
                                            "clip_i": _pairwise_mean(refs[subj][0]), "clip_t": None}
        ref_clip, ref_dino = refs[subj]
        unit = out / "units" / method / f"{subj}.json"
        if unit.exists():
            per_subject[method][subj] = json.loads(unit.read_text())
            continue
        templates = (live_prompts if cls in LIVE_CLASSES else obj_prompts)[:n_prompts]
        if base is None:
            base = load_pipeline(cfg.model, device=cfg.device, dtype="fp32", progress=False)
        concept = _RealSubject(subj, cls)
        pers = personalise(method, ctx, base, concept, data / subj)
        rows, t_gen, n = [], 0.0, 0
        try:
            token = pers.phrase[: -len(cls)].strip() if method != "floor" else ""
            for tpl in templates:
                text = " ".join(tpl.format(token, cls).split())
                with Timer() as t:
                    images = to_pil(pers.sample([text] * len(seeds), seeds))
                t_gen += t.seconds
                n += len(images)
                ci, di = sim.clip_image(images), sim.dino_image(images)
                ct = sim.clip_text([" ".join(tpl.format("", cls).split())])
                for k in range(len(images)):
                    rows.append({"prompt": text, "seed": seeds[k], "clip_i": float((ci[k] @ ref_clip.T).mean()),
                                 "dino": float((di[k] @ ref_dino.T).mean()), "clip_t": float(ci[k] @ ct[0])})
        finally:
            pers.close()
        rec = {"dino": _mean(r["dino"] for r in rows), "clip_i": _mean(r["clip_i"] for r in rows),
               "clip_t": _mean(r["clip_t"] for r in rows), **pers.cost,
               "seconds_per_image": round(t_gen / max(n, 1), 4), "images": rows}
        write_json_atomic(unit, rec)
        per_subject[method][subj] = rec
    results = {"schema_version": 1, "schema": "docs/bench.md", "command": cfg.command, "protocol": proto, "machine": machine(),
               "subjects": [{"name": s, "class": classes[s]} for s in found], "methods": {}}
    for m, subs in per_subject.items():
        vals = list(subs.values())
        agg = {"n_subjects": len(vals)}
        for k in ("dino", "clip_i", "clip_t"):
            agg[k] = _mean(v[k] for v in vals)
            agg[k + "_ci95"] = bootstrap_ci([v[k] for v in vals])
        # the common columns: identity = DINO, prompt fidelity = CLIP-T
        agg["identity"], agg["identity_ci95"] = agg["dino"], agg["dino_ci95"]
        agg["prompt_fidelity"], agg["prompt_fidelity_ci95"] = agg["clip_t"], agg["clip_t_ci95"]
        agg["identity_acc"] = None
        for k in ("personalise_s", "time_to_first_image_s", "seconds_per_image", "peak_memory_bytes",
                  "artifact_bytes"):
            agg[k] = _mean(v.get(k) for v in vals)
        results["methods"][m] = agg
    results["per_subject"] = {m: {s: {k: v for k, v in r.items() if k != "images"} for s, r in subs.items()}
                              for m, subs in per_subject.items()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    lines = ["| method | DINO | CLIP-I | CLIP-T | personalise s | time to 1st image s | s / image | artifact bytes |",
             "|---|---|---|---|---|---|---|---|"]
    for m, a in results["methods"].items():
        f = lambda v, nd=3: "–" if v is None else f"{v:.{nd}f}"  # noqa: E731
        lines.append(f"| {m} | {f(a['dino'])} | {f(a['clip_i'])} | {f(a['clip_t'])} | {f(a['personalise_s'], 1)} | "
                     f"{f(a['time_to_first_image_s'], 1)} | {f(a['seconds_per_image'])} | "
                     f"{'–' if a['artifact_bytes'] is None else int(a['artifact_bytes'])} |")
    (out / "results.md").write_text("\n".join(lines) + f"\n\nDreamBench: {len(found)} subjects, "
                                    f"{n_prompts or 25} prompts x {len(seeds)} seeds; CLIP {cfg.clip}, DINO {cfg.dino}; "
                                    f"model {cfg.model}.\n")
    plots({"methods": {m: a for m, a in results["methods"].items() if a.get("clip_t") is not None}}, out)
    return results


@dataclass
class _RealSubject:
    """A DreamBench subject where runners expect a world concept (name, slug, class)."""

    name: str
    cls: str

    @property
    def slug(self) -> str:
        return self.name

    id = None
