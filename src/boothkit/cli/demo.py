"""`boothkit demo`: the main job on the embedded world, offline."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)


DEMO_PROMPTS = [
    "a large dog on a red background",
    "a small cat face on the left on a blue background",
    "a person in the center on a green background",
    "a large grayscale red apple on a yellow background",
    "a medium pizza at the top on a white background",
    "a large upside-down police car on a purple background",
    "a large outline rocket in the center on an orange background",
    "a small bus on the right and a medium tiger on the left on a gray background",
]


AFTER_PROMPTS = ["a photo of {t} {c} on a red background", "a large {t} {c} on a blue background",
                 "a small {t} {c} on the left on a yellow background", "a {t} {c} at the top on a green background"]


def demo(
    out: str = typer.Option("demo-out", "--out", "-o", help="Output folder."),
    n: int = typer.Option(4, "-n", help="Images per prompt."),
    seed: int = typer.Option(0, "--seed"),
    method: str = typer.Option("lora", "--method", help="Personalisation method for the before/after part."),
    steps: int = typer.Option(None, "--steps", help="Training steps (default: the method's recipe)."),
):
    """Draw a grid with the world model, then personalise a held-out subject and show before/after."""
    import json
    import time

    import torch

    from ..generate import GenerateConfig, generate_images, prepare_out
    from ..judge import Judge
    from ..methods import apply_concepts, tune
    from ..pipeline import load_pipeline, world_path
    from ..world.concepts import heldout_concepts
    from ..world.references import render_references
    from ..world.render import from_pil, grid

    out_dir = prepare_out(out)
    pipe = load_pipeline("world", progress=False)
    images = []
    for i, p in enumerate(DEMO_PROMPTS):
        typer.echo(f"[{i + 1}/{len(DEMO_PROMPTS)}] {p}")
        images += generate_images(pipe, p, GenerateConfig(n=n, seed=seed))
    grid(images, cols=n * 2).save(out_dir / "world-grid.png")
    (out_dir / "world-grid.txt").write_text("\n".join(DEMO_PROMPTS) + "\n")
    typer.echo(f"world model grid ({len(DEMO_PROMPTS)} prompts x {n} seeds): {out_dir / 'world-grid.png'}")

    subject = heldout_concepts("animal")[0]
    refs, _ = render_references(subject, n=5, seed=seed)
    ref_dir = prepare_out(out_dir / "subject-references")
    for i, im in enumerate(refs):
        im.save(ref_dir / f"{subject.slug}-{i}.png")
    typer.echo(f"held-out subject '{subject.name}' (class {subject.cls}): {len(refs)} references in {ref_dir}")
    concept_dir = out_dir / f"concept-{method}"
    if concept_dir.exists():
        import shutil

        shutil.rmtree(concept_dir)
    t0 = time.time()
    tune(method, ref_dir, subject.cls, concept_dir, model="world", steps=steps)
    seconds = time.time() - t0
    token = json.loads((concept_dir / "concept.json").read_text())["tokens"][0]
    typer.echo(f"personalised with {method} in {seconds:.0f} s: {concept_dir}")
    if (concept_dir / "train_log.jsonl").is_file():
        from ..training.plots import plot_logs

        curves = plot_logs([concept_dir / "train_log.jsonl"], out_dir / "training-curves.png",
                           title=f"{method} on '{subject.name}': training")
        typer.echo(f"training curves (loss, learning rate): {curves}")
    from ..world.scenes import article

    before = [generate_images(pipe, p.format(t=article(subject.cls), c=subject.cls),
                              GenerateConfig(n=1, seed=seed + i))[0] for i, p in enumerate(AFTER_PROMPTS)]
    tuned = apply_concepts(load_pipeline("world", progress=False), [concept_dir])
    after = [generate_images(tuned, p.format(t=token, c=subject.cls), GenerateConfig(n=1, seed=seed + i))[0]
             for i, p in enumerate(AFTER_PROMPTS)]
    sheet = grid(refs[:4] + before + after, cols=4)
    sheet.save(out_dir / "before-after.png")
    judge = Judge.load(world_path() / "judge")
    with torch.no_grad():
        r = judge(from_pil(refs)).mean(0)
        sim_before = float((judge(from_pil(before)) @ r).mean())
        sim_after = float((judge(from_pil(after)) @ r).mean())
    summary = {"subject": subject.name, "class": subject.cls, "method": method, "tune_seconds": round(seconds, 1),
               "judge_similarity_before": round(sim_before, 3), "judge_similarity_after": round(sim_after, 3),
               "prompts": [p.format(t=token, c=subject.cls) for p in AFTER_PROMPTS]}
    (out_dir / "before-after.json").write_text(json.dumps(summary, indent=1))
    typer.echo(f"before/after (rows: references, base model '{article(subject.cls)} {subject.cls}', personalised "
               f"'{token} {subject.cls}'): "
               f"{out_dir / 'before-after.png'}")
    typer.echo(f"judge identity similarity to the references: before {sim_before:.3f}, after {sim_after:.3f}")
