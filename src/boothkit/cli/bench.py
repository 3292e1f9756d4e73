"""`boothkit bench`: every method side by side on held-out subjects (world), or on DreamBench with real models."""

from __future__ import annotations

import json

import typer

from .common import MODEL


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
    app.command("compare")(compare)


def _ints(text: str | None) -> list[int] | None:
    return [int(x) for x in text.split(",") if x.strip()] if text else None


def _classes(text: str | None) -> dict | None:
    if not text:
        return None
    out = {}
    for part in text.split(","):
        cls, _, k = part.partition("=")
        out[cls.strip()] = int(k or 1)
    return out


def _method_sets(items: list[str] | None) -> dict:
    """--set lora.rank=8 -> {"lora": {"rank": 8}}."""
    out: dict = {}
    for item in items or []:
        key, _, value = item.partition("=")
        method, _, field = key.partition(".")
        if not value or not field:
            raise typer.BadParameter(f"--set {item!r}: expected METHOD.FIELD=VALUE")
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            v = value
        out.setdefault(method.strip(), {})[field.strip()] = v
    return out


def _command(ctx: typer.Context) -> str:
    """The command line that reproduces this run (options that differ from their defaults)."""
    import shlex

    parts = ["boothkit", "bench"]
    defaults = {p.name: p.default for p in ctx.command.params}
    for name, value in ctx.params.items():
        if value in (None, False) or value == defaults.get(name):
            continue
        flag = "--" + ("set" if name == "set_" else name.replace("_", "-"))
        for v in (value if isinstance(value, (list, tuple)) else [value]):
            parts += [flag] if v is True else [flag, str(v)]
    return shlex.join(parts)


def bench(
    ctx: typer.Context,
    out: str = typer.Option(..., "--out", "-o", help="Results folder (resumable: a rerun continues there)."),
    methods: str = typer.Option(None, "--methods",
                                help="Comma list; default: floor, ceiling and every registered method that can run here."),
    quick: bool = typer.Option(False, "--quick", help="Preset: 2 subjects, 4 prompts, 2 seeds (default)."),
    full: bool = typer.Option(False, "--full", help="Preset: 20 subjects over 5 classes, 12 prompts, 2 seeds."),
    val: bool = typer.Option(False, "--val", help="Preset for choosing knobs: 10 other held-out subjects (none of "
                                                  "--full's), 12 prompts, 1 seed."),
    subjects: str = typer.Option(None, "--subjects", help="Override the preset's subjects: CLASS=K,CLASS=K."),
    prompts: str = typer.Option(None, "--prompts", help="Override the preset's prompt keys (comma list)."),
    seeds: str = typer.Option(None, "--seeds", help="Override the preset's seeds (comma list)."),
    sample_steps: int = typer.Option(None, "--sample-steps", help="Denoising steps per image (preset: 20)."),
    steps: int = typer.Option(None, "--steps", help="Override every recipe's training steps (smoke runs only)."),
    set_: list[str] = typer.Option(None, "--set", help="Method config override METHOD.FIELD=VALUE (repeatable)."),
    device: str = typer.Option("auto", "--device", help="cuda, cpu or auto."),
    threads: int = typer.Option(None, "--threads", help="torch CPU threads."),
    keep_concepts: bool = typer.Option(False, "--keep-concepts", help="Keep every concept folder under OUT/work."),
    dreambench: str = typer.Option(None, "--dreambench",
                                   help="Real-model protocol: a DreamBench dataset folder (SUBJECT/*.jpg + "
                                        "prompts_and_classes.txt)."),
    clip: str = typer.Option(None, "--clip", help="DreamBench: CLIP model (folder or hub id) for CLIP-I / CLIP-T."),
    dino: str = typer.Option(None, "--dino", help="DreamBench: DINO ViT (folder or hub id) for DINO similarity."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bars."),
    report_only: bool = typer.Option(False, "--report-only",
                                     help="Rewrite the report from the finished units in --out; run nothing."),
    captions: bool = typer.Option(False, "--captions", help="World protocol: the training methods train each "
                                  "reference photo with its scene caption (tune --captions), the subject named by the "
                                  "method's identifier and class; a separate protocol (its own --out)."),
    model: str = MODEL,
):
    """Benchmark personalisation methods: identity, prompt fidelity, drift and cost, with tables, plots, grids."""
    from ..inputs import InputError
    from ..pipeline import pick_device
    from ..progress import bars

    if quick + full + val > 1:
        raise typer.BadParameter("--quick, --full and --val exclude each other")
    dev = str(pick_device(device))
    try:
        if dreambench and captions:
            raise InputError("--captions is for the world protocol (its references have scene captions)")
        if dreambench:
            from ..bench.dreambench import DreamBenchConfig, run_dreambench

            cfg = DreamBenchConfig(methods=(methods or "floor,lora").split(","), out=out, dataset=dreambench,
                                   model=model, clip=clip, dino=dino, full=full, device=dev, threads=threads,
                                   tune_steps=steps, method_config=_method_sets(set_), subjects=subjects,
                                   seeds=_ints(seeds), sample_steps=sample_steps, progress=not no_progress,
                                   command=_command(ctx))
            with bars(not no_progress):
                results = run_dreambench(cfg)
        else:
            from ..bench.run import BenchConfig, run_world
            from ..bench.runners import known_methods

            if methods:
                names = methods.split(",")
            else:
                from ..methods import METHODS

                names = [m for m in known_methods() if m not in METHODS or not METHODS[m].unavailable_reason()]
            name = "full" if full else "val" if val else "quick"
            cfg = BenchConfig(methods=[m.strip() for m in names], out=out, preset=name,
                              model=model, device=dev, threads=threads, tune_steps=steps,
                              method_config=_method_sets(set_),
                              subjects_per_class=_classes(subjects),
                              prompts=prompts.split(",") if prompts else None, seeds=_ints(seeds),
                              sample_steps=sample_steps, keep_concepts=keep_concepts, progress=not no_progress,
                              report_only=report_only, captions=captions,
                              command=_command(ctx))
            with bars(not no_progress):
                results = run_world(cfg)
    except (InputError, ValueError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)
    from pathlib import Path

    typer.echo((Path(out) / "results.md").read_text())
    if results.get("failures"):
        typer.secho(f"{len(results['failures'])} units failed (results.json 'failures' says why); a rerun retries "
                    "them", fg="yellow")
    elif not results.get("complete", True):
        typer.secho("incomplete: some units are missing (rerun the same command to continue)", fg="yellow")


def compare(
    a: str = typer.Argument(..., help="Run A: a bench --out folder, RUN or RUN:METHOD."),
    b: str = typer.Argument(..., help="Run B, compared against A (B - A)."),
    method: str = typer.Option(None, "--method", help="The method of a side that names none."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON (with per-subject differences) only."),
):
    """Paired comparison of two bench runs, or two methods of one, on their shared subjects (B - A, 95% interval)."""
    from ..bench.compare import compare as paired, markdown, parse_side
    from ..inputs import InputError

    try:
        result = paired(parse_side(a, method), parse_side(b, method))
    except InputError as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        raise typer.Exit(2)
    typer.echo(json.dumps(result, indent=1) if as_json else markdown(result))
