"""Where the wall time of `boothkit tune` goes, from process start to the saved concept and the command's exit.

    python benchmarks/tune_phases.py [--method lora] [--steps 60] [--repeats 3] [--set key=value ...]

Each repeat runs the real command (`python -m boothkit.cli.main tune ...`, the world model, 1 torch thread) in a
fresh process, with timers wrapped around the functions that make up a run: module imports, pipeline loading, the
base model's hash, class images, the recipe's set-up, the training loop (before the first step, the steps, after
the last step: the end-of-run validation grid), saving the concept and drawing its training plot. A first run with
empty caches (model hash, class images) is reported apart as `cold_first_run`; the repeats run with them warm.
Prints one JSON object: per phase, the median and range over the repeats (seconds). The timers cost microseconds;
the phases are measured, not sampled. --src measures another checkout's boothkit.
"""

from __future__ import annotations

import time

T_START = time.time()  # this process's first line (a child's interpreter start ends here)

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]


def child(argv: list[str], result: str, t_spawn: float, t0: float) -> None:
    """Run the CLI in this process with timers on its phases; write them to `result`. t_spawn: the parent's clock
    when it started this process; t0: this process's first line."""
    marks: dict[str, float] = {"interpreter_start": t0 - t_spawn}
    t = time.time()
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # what the user's environment asks for
    marks["import_torch"] = time.time() - t
    totals: dict[str, float] = {}

    def timed(module, name, label):
        fn = getattr(module, name)

        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t = time.time()
            try:
                return fn(*a, **kw)
            finally:
                totals[label] = totals.get(label, 0.0) + time.time() - t
        setattr(module, name, wrapper)

    t = time.time()
    import boothkit.cli.main as cli  # registers every command: what `boothkit` imports before parsing
    marks["import_cli"] = time.time() - t
    t = time.time()
    import boothkit.cache
    import boothkit.methods
    import boothkit.methods.class_images as class_images
    import boothkit.methods.core as core
    import boothkit.pipeline as pipeline
    import boothkit.training.loop as loop
    import boothkit.training.plots as plots
    marks["import_methods_and_training"] = time.time() - t
    t = time.time()  # what load_pipeline and the recipe would import first: counted here, apart from loading
    import accelerate  # noqa: F401
    import peft  # noqa: F401
    from diffusers import StableDiffusionPipeline  # noqa: F401
    marks["import_diffusers_peft"] = time.time() - t

    timed(pipeline, "load_pipeline", "load_pipeline")
    timed(pipeline, "model_hash", "model_hash")
    timed(class_images, "class_images", "class_images")
    timed(loop, "validate", "validation_grids")
    timed(plots, "plot_logs", "training_plot")
    stamps: list[float] = []
    train = loop.train

    @functools.wraps(train)
    def train_timed(recipe, cfg, work_dir, **kw):
        on_step = kw.get("on_step")

        def stamp(step, loss):
            stamps.append(time.time())
            if on_step:
                on_step(step, loss)
        kw["on_step"] = stamp
        t = time.time()
        marks["recipe_ready"] = t - t0
        try:
            return train(recipe, cfg, work_dir, **kw)
        finally:
            marks["train_returned"] = time.time() - t0
            marks["train_entered"] = t - t0
    loop.train = train_timed
    tune = core.tune

    @functools.wraps(tune)
    def tune_timed(*a, **kw):
        marks["tune_entered"] = time.time() - t0
        try:
            return tune(*a, **kw)
        finally:
            marks["tune_returned"] = time.time() - t0
    core.tune = tune_timed
    boothkit.methods.tune = tune_timed

    sys.argv = ["boothkit", *argv]
    try:
        cli.main()
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    marks["command_done"] = time.time() - t0
    Path(result).write_text(json.dumps({"marks": marks, "totals": totals, "stamps": [s - t0 for s in stamps]}))


def phases(r: dict) -> dict:
    """One run's marks -> named phases (seconds), in the order they happen."""
    m, tot, st = r["marks"], r["totals"], r["stamps"]
    out = {"interpreter_start": m["interpreter_start"], "import_torch": m["import_torch"],
           "import_cli": m["import_cli"],
           "import_methods_and_training": m["import_methods_and_training"],
           "import_diffusers_peft": m["import_diffusers_peft"],
           "cli_to_tune": m["tune_entered"] - m["import_torch"] - m["import_cli"] - m["import_methods_and_training"]
           - m["import_diffusers_peft"],
           "load_pipeline": tot.get("load_pipeline", 0.0), "model_hash": tot.get("model_hash", 0.0),
           "class_images": tot.get("class_images", 0.0)}
    out["other_before_train"] = (m["train_entered"] - m["tune_entered"] - out["load_pipeline"] - out["model_hash"]
                                 - out["class_images"])
    out["train_to_first_step_end"] = st[0] - m["train_entered"]
    out["steps_after_the_first"] = st[-1] - st[0]
    out["step_median"] = statistics.median(b - a for a, b in zip(st, st[1:])) if len(st) > 1 else None
    out["validation_grid"] = tot.get("validation_grids", 0.0)
    out["train_end_other"] = m["train_returned"] - st[-1] - out["validation_grid"]
    out["save_concept"] = m["tune_returned"] - m["train_returned"]
    out["training_plot"] = tot.get("training_plot", 0.0)
    out["cli_after_tune_other"] = m["command_done"] - m["tune_returned"] - out["training_plot"]
    out["to_saved_concept"] = m["interpreter_start"] + m["tune_returned"]
    out["to_first_step_end"] = m["interpreter_start"] + st[0]
    out["command_to_exit"] = m["interpreter_start"] + m["command_done"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--method", default="lora")
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--src", default=str(REPO / "src"))
    args, rest = ap.parse_known_args()
    if args.child:
        return child(json.loads(args.child[0]), args.child[1], float(args.child[2]), T_START)

    work = Path(tempfile.mkdtemp(prefix="tune-phases-"))
    sys.path.insert(0, str(REPO / "src"))
    from boothkit.world.concepts import heldout_concepts
    from boothkit.world.references import render_references

    photos = work / "photos"
    photos.mkdir()
    for i, im in enumerate(render_references(heldout_concepts("animal")[0], n=4, seed=0)[0]):
        im.save(photos / f"{i}.png")
    env = {**os.environ, "PYTHONPATH": args.src, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads), "BOOTHKIT_CACHE": str(work / "cache")}
    argv = ["tune", "--method", args.method, "--images", str(photos), "--class", "animal", "--out",
            str(work / "concept"), "--steps", str(args.steps)] + [x for s in args.set for x in ("--set", s)]
    runs, cold = [], None
    load = [os.getloadavg()[0]]
    for r in range(args.repeats + 1):  # the first run fills the caches (hashes, class images): reported apart
        subprocess.run(["rm", "-rf", str(work / "concept")], check=True)
        t = time.time()
        subprocess.run([sys.executable, str(HERE), "--child", json.dumps(argv), str(work / "r.json"), repr(t)],
                       env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wall = time.time() - t
        row = {**phases(json.loads((work / "r.json").read_text())), "command_wall": wall}
        if r:
            runs.append(row)
        else:
            cold = row
        load.append(os.getloadavg()[0])
    keys = list(runs[0])
    summary = {k: {"median": round(statistics.median(x[k] for x in runs), 3),
                   "min": round(min(x[k] for x in runs), 3), "max": round(max(x[k] for x in runs), 3)}
               for k in keys if all(x[k] is not None for x in runs)}
    shown = ["boothkit"] + [a if not a.startswith(str(work)) else a.replace(str(work), "WORK") for a in argv]
    rounded = lambda x: {k: round(v, 3) if v is not None else None for k, v in x.items()}  # noqa: E731
    print(json.dumps({"benchmark": "tune_phases", "command": "python benchmarks/tune_phases.py " + " ".join(
        sys.argv[1:]), "tune_argv": shown, "boothkit_src": args.src,
        "machine": {"cpu_count": os.cpu_count(), "threads": args.threads, "load_average_1min": load},
        "phases_seconds": summary, "cold_first_run": rounded(cold), "runs": [rounded(x) for x in runs]}, indent=1))
    subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
