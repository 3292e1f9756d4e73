"""`boothkit bench` on the world: personalise every method on every held-out subject, generate the prompt suite,
score every image, then aggregate (report.py).

Work is cut into units (one method x one subject). A finished unit is a JSON record under <out>/units/ (plus a
strip of its seed-0 images); a rerun with the same protocol skips finished units, so a killed run continues where
it stopped (inside a unit, fine-tuning methods also resume from their own checkpoints). The protocol (preset,
subjects, prompts, seeds, model hash) and each method's recipe are stored in <out>/bench.json; a rerun with a
different protocol or recipe into the same folder is refused rather than mixed, and a rerun may add methods.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..fileio import write_json_atomic
from ..inputs import InputError
from ..world.concepts import Concept
from . import protocol as P
from .runners import RunContext, known_methods, personalise

SCHEMA_VERSION = 1


@dataclass
class BenchConfig:
    methods: list[str]
    out: str
    preset: str = "quick"
    model: str = "world"
    device: str = "cpu"
    threads: int | None = None
    tune_steps: int | None = None  #: override every recipe's steps (tests); None = default recipes
    method_config: dict = field(default_factory=dict)
    subjects_per_class: dict | None = None  #: override the preset's subjects
    prompts: list[str] | None = None
    seeds: list[int] | None = None
    sample_steps: int | None = None
    keep_concepts: bool = False
    progress: bool = True
    report_only: bool = False  #: write the report from the finished units; run nothing
    captions: bool = False  #: training methods train with the references' scene captions (tune --captions)
    command: str | None = None  #: the command line, written into the results
    commands: list = field(default_factory=list)  #: every command that ran into this --out (from bench.json)


def machine() -> dict:
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "load_average_at_start": [round(x, 2) for x in os.getloadavg()]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def check_methods(methods: list[str]) -> list[str]:
    ok = known_methods()
    bad = [m for m in methods if m not in ok]
    if bad:
        raise InputError(f"unknown method(s) {bad}; choose from {ok}")
    if not methods:
        raise InputError("--methods is empty")
    return list(dict.fromkeys(methods))


def _protocol(cfg: BenchConfig, preset: P.Preset, model_hash: str) -> dict:
    proto = {"preset": preset.to_dict(), "model": cfg.model, "model_hash": model_hash,
             "tune_steps_override": cfg.tune_steps, "schema_version": SCHEMA_VERSION,
             **({"captions": True} if cfg.captions else {})}  # absent when off: older runs keep their protocol
    return json.loads(json.dumps(proto))  # as it reads back from bench.json (tuples -> lists)


def recipes(cfg: BenchConfig) -> dict:
    """What each method runs with: the full config of fine-tuning methods, the artifact of InstantBooth."""
    from ..methods import METHODS
    out = {}
    for m in cfg.methods:
        if m in METHODS:
            out[m] = {**METHODS[m].config().to_dict(), **cfg.method_config.get(m, {}),
                      **({"steps": cfg.tune_steps} if cfg.tune_steps else {})}
    return json.loads(json.dumps(out))


def _trains(method: str) -> bool:
    from ..methods import METHODS

    return method in METHODS and METHODS[method].recipe is not None


def _captioned_photos(out: Path, method: str, concept: Concept, n: int) -> Path:
    """The same reference photos, each with its scene caption naming the subject as the method's prompts do
    ("a large sks animal in the center on a red background")."""
    from ..methods import METHODS
    from ..world.references import render_references

    folder = out / "work" / "photos-captioned" / method / concept.slug
    if folder.exists():
        return folder
    images, scenes = render_references(concept, n=n, seed=0,
                                       caption_name=f"{METHODS[method].default_identifier} {concept.cls}")
    _write_photos(folder, images, [s.caption for s in scenes])
    return folder


def _write_photos(folder: Path, images, captions: list[str] | None = None) -> None:
    """A subject's reference photos (and their captions) as NN.png (NN.txt), written whole or not at all; several
    bench processes may race to write the same (deterministic) files, the first wins."""
    if folder.exists():
        return
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        im.save(tmp / f"{i:02d}.png")
        if captions is not None:
            (tmp / f"{i:02d}.txt").write_text(captions[i] + "\n", encoding="utf-8")
    try:
        tmp.replace(folder)
    except OSError:  # another process wrote the same files first
        shutil.rmtree(tmp, ignore_errors=True)


def unit_path(out: Path, method: str, concept: Concept) -> Path:
    return out / "units" / method / f"{concept.slug}.json"


def run_world(cfg: BenchConfig) -> dict:
    """Run (or continue) a world benchmark; returns the aggregated results (also written to <out>)."""
    from ..eval.world import class_prototypes
    from ..judge import Judge
    from ..pipeline import load_pipeline, model_hash, resolve_model, world_path
    from ..progress import bar as progress_bar
    from ..world.references import render_references
    from ..world.render import from_pil, to_pil
    from .report import write_report
    from .world_metrics import WorldCLIP, WorldScorer

    methods = check_methods(cfg.methods)
    cfg.methods = methods
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    preset = P.preset(cfg.preset, subjects_per_class=cfg.subjects_per_class, prompts=cfg.prompts,
                      seeds=cfg.seeds, sample_steps=cfg.sample_steps)
    subjects = P.subjects(preset)
    out = Path(cfg.out)
    world_dir = Path(resolve_model(cfg.model))
    if not (world_dir / "world_clip").exists() or not (world_dir / "judge").exists():
        world_dir = world_path()  # a model retrained on the world without its judge: use the shipped judge
    proto = _protocol(cfg, preset, model_hash(cfg.model))
    recipe = recipes(cfg)
    state_file = out / "bench.json"
    if state_file.exists():
        old = json.loads(state_file.read_text())
        if old["protocol"] != proto:
            diff = sorted(k for k in set(old["protocol"]) | set(proto) if old["protocol"].get(k) != proto.get(k))
            raise InputError(f"{out} holds a benchmark with another protocol (differs in {diff}): "
                             f"use another --out, or delete {out}")
        # another recipe for a method is refused while units made with the old one exist (deleting them allows it)
        changed = [m for m in recipe if m in old["recipes"] and old["recipes"][m] != recipe[m]
                   and any((out / "units" / m).glob("*.json"))]
        if changed:
            raise InputError(f"{out} holds results of {changed} with another recipe: use another --out, or delete "
                             f"{out}/units/<method>")
        recipe = {**old["recipes"], **recipe}
        methods = old["methods"] + [m for m in methods if m not in old["methods"]]  # a rerun may add methods
        commands = old.get("commands", [])
    else:
        commands = []
    if cfg.command and cfg.command not in commands and not cfg.report_only:
        commands.append(cfg.command)  # every invocation that contributed units
    out.mkdir(parents=True, exist_ok=True)  # only now: the model and the protocol are known good
    write_json_atomic(state_file, {"protocol": proto, "methods": methods, "recipes": recipe, "commands": commands,
                                   "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    cfg.commands = commands
    proto = {**proto, "recipes": recipe}

    judge = Judge.load(world_dir / "judge")
    scorer = WorldScorer(judge, class_prototypes(judge), WorldCLIP(world_dir))
    base = None
    ctx = RunContext(model=cfg.model, device=cfg.device, steps=preset.sample_steps, guidance=preset.guidance,
                     work=out / "work", tune_steps=cfg.tune_steps, method_config=cfg.method_config,
                     keep_concepts=cfg.keep_concepts, captions=cfg.captions)
    prompts = [P.PROMPTS[k] for k in preset.prompts]
    units = [(m, s) for s in subjects for m in cfg.methods]  # this run's methods; the report covers all of them
    if cfg.report_only:
        units = []
    bar = progress_bar(units, desc="bench", disable=not cfg.progress, unit="unit")
    for method, concept in bar:
        bar.set_postfix_str(f"{method} / {concept.name[:24]}")
        path = unit_path(out, method, concept)
        if path.exists() and "error" not in json.loads(path.read_text()):
            continue
        lock = claim(path)
        if lock is None:  # another `boothkit bench` process on the same --out is running this unit
            continue
        photos = render_references(concept, n=preset.n_references, seed=0)[0]
        photos_dir = out / "work" / "photos" / concept.slug
        _write_photos(photos_dir, photos)
        if cfg.captions and _trains(method):
            photos_dir = _captioned_photos(out, method, concept, preset.n_references)
        refs = scorer.refs(concept, from_pil(photos))
        plan = P.SubjectPlan(concept, P.companion(concept), P.others(concept))
        if base is None and method != "ceiling":
            base = load_pipeline(cfg.model, device=cfg.device, dtype="fp32", progress=False)
        try:
            try:
                record = run_unit(method, ctx, base, plan, photos_dir, refs, scorer, prompts, preset)
            except InputError as e:  # e.g. no E4T encoder for this class: recorded, reported, retried by a rerun
                write_json_atomic(path, {"method": method, "subject": concept.name, "slug": concept.slug,
                                         "error": str(e)})
                bar.write(f"{method} / {concept.name}: {e}")
                continue
            strip = record.pop("_strip")
            to_pil_strip(to_pil(torch.stack(strip)), path.with_suffix(".png"))
            write_json_atomic(path, record)
        finally:
            lock.unlink(missing_ok=True)
    bar.close()
    results = write_report(out, methods, subjects, prompts, preset, proto, machine(), cfg)
    return results


def claim(path: Path) -> Path | None:
    """Take a unit for this process (a lock file holding its pid), or None if a live process holds it. Several
    `boothkit bench` processes on one --out thus share the work (e.g. one per CPU core); a lock left by a killed
    process is taken over."""
    lock = path.with_suffix(".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and pid != os.getpid() and _alive(pid):
                return None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return lock
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def to_pil_strip(images, path: Path) -> None:
    from ..world.render import grid

    grid(images, cols=len(images), pad=1).save(path)


def _clip_text(prompt: P.BenchPrompt, cls: str, comp: Concept) -> str:
    if prompt.group == "bare":
        return P.class_prompt(cls)
    return prompt.text(cls, comp.name)


def run_unit(method: str, ctx: RunContext, base, plan: P.SubjectPlan, photos_dir: Path, refs, scorer,
             prompts: list[P.BenchPrompt], preset: P.Preset) -> dict:
    """Personalise, generate the suite, score it: one JSON-ready record (plus `_strip`, the seed-0 images)."""
    from ..world.references import renderer
    from ..world.render import SceneBatch

    concept, comp = plan.concept, plan.companion
    pers = personalise(method, ctx, base, concept, photos_dir)
    seeds = list(preset.seeds)
    rows, strip, gen_seconds, n_images = [], [], 0.0, 0
    try:
        for prompt in prompts:
            if method == "ceiling":
                scene = P.ceiling_scene(prompt, concept, comp)
                images = renderer().render(SceneBatch.from_scenes([scene] * len(seeds))).cpu()
                text = prompt.text(f"[V] {concept.cls}", comp.name)
            else:
                phrase = pers.phrase
                text = (P.class_prompt(phrase) if method == "floor" and prompt.group == "bare"
                        else prompt.text(phrase, comp.name))
                t0 = time.perf_counter()
                images = pers.sample([text] * len(seeds), seeds)
                gen_seconds += time.perf_counter() - t0
                n_images += len(seeds)
            for seed, r in zip(seeds, scorer.score(images, prompt, refs, _clip_text(prompt, concept.cls, comp),
                                                    comp)):
                rows.append({"prompt": prompt.key, "group": prompt.group, "seed": seed, "text": text, **r})
            strip.append(images[0])
        drift = None
        if method != "ceiling":
            cls_text = P.class_prompt(concept.cls)
            dseeds = list(preset.drift_seeds)
            cls_imgs = pers.sample([cls_text] * len(dseeds), dseeds)
            other = []
            for o in plan.others:
                other += scorer.present(pers.sample([P.class_prompt(o.name)] * len(dseeds),
                                                    dseeds), o)
            drift = {"class_judge_i": round(float(torch.tensor(scorer.identity(cls_imgs, refs)["judge_i"]).mean()), 5),
                     "others_top5": round(sum(other) / len(other), 4),
                     "others": [o.name for o in plan.others]}
    finally:
        pers.close()
    cost = dict(pers.cost)
    if n_images:
        cost["seconds_per_image"] = round(gen_seconds / n_images, 4)
    where = {"device": ctx.device, "torch_threads": torch.get_num_threads(), "pid": os.getpid(),
             "load_average": round(os.getloadavg()[0], 2), "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return {"method": method, "subject": concept.name, "slug": concept.slug, "class": concept.cls,
            "companion": comp.name, "phrase": pers.phrase, "cost": cost, "drift": drift, "run": where,
            "images": rows, "_strip": strip}
