"""Aggregate unit records into results.json, results.md, plots and per-subject grids.

results.json (schema_version 1; docs/bench.md documents every field):
  methods.<name>: per-method means over subjects, each quality metric with `<metric>_ci95` = [lo, hi], a 95%
  percentile-bootstrap interval over subjects (10,000 resamples, fixed seed); the issue's minimum set is
  identity, identity_acc, prompt_fidelity, time_to_first_image_s, seconds_per_image, peak_memory_bytes,
  artifact_bytes.
  per_subject.<name>.<slug>: the same metrics for one subject (cost fields as measured).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from .world_metrics import fidelity_checks

QUALITY = ("identity", "identity_acc", "identity_top5", "prompt_fidelity", "attr_bg", "attr_position", "attr_size",
           "attr_style", "composition", "clip_t", "drift_class_identity", "drift_class_identity_delta",
           "drift_others_top5")
COST = ("personalise_s", "time_to_first_image_s", "seconds_per_image", "peak_memory_bytes", "artifact_bytes")
LABELS = {"floor": "floor (base model, class noun)", "ceiling": "ceiling (exact renders)"}


def _mean(xs) -> float | None:
    xs = [float(x) for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def bootstrap_ci(values, n: int = 10000, seed: int = 0) -> list[float] | None:
    """95% percentile-bootstrap interval of the mean over `values` (one per subject)."""
    v = np.array([x for x in values if x is not None], dtype=float)
    if len(v) == 0:
        return None
    if len(v) == 1:
        return [float(v[0]), float(v[0])]
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(n, len(v)))].mean(1)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def subject_metrics(record: dict, floor_record: dict | None) -> dict:
    """Per-subject means of one unit record."""
    rows = record["images"]
    checks = [c for r in rows for c in fidelity_checks(r)]
    m = {"identity": _mean(r["judge_i"] for r in rows),
         "identity_acc": _mean(r["identity_acc"] for r in rows),
         "identity_top5": _mean(r["identity_top5"] for r in rows),
         "prompt_fidelity": _mean(checks),
         "clip_t": _mean(r.get("clip_t") for r in rows),
         "composition": _mean(r["composition"] for r in rows if "composition" in r)}
    for a in ("bg", "position", "size", "style"):
        m[f"attr_{a}"] = _mean(r[a] for r in rows if a in r)
    d = record.get("drift")
    m["drift_class_identity"] = d["class_judge_i"] if d else None
    m["drift_others_top5"] = d["others_top5"] if d else None
    fd = (floor_record or {}).get("drift")
    m["drift_class_identity_delta"] = (d["class_judge_i"] - fd["class_judge_i"]) if d and fd else None
    resumed = record["cost"].get("resumed")  # a unit continued after a kill: its training time is partial
    for k in COST:
        m[k] = None if resumed and k in ("personalise_s", "time_to_first_image_s", "peak_memory_bytes") \
            else record["cost"].get(k)
    m["by_group"] = {}
    for g in sorted({r["group"] for r in rows}):
        gr = [r for r in rows if r["group"] == g]
        m["by_group"][g] = {"identity": _mean(r["judge_i"] for r in gr),
                            "prompt_fidelity": _mean(c for r in gr for c in fidelity_checks(r))}
    return m


def aggregate(per_subject: dict[str, dict]) -> dict:
    subs = list(per_subject.values())
    out = {"n_subjects": len(subs)}
    for k in QUALITY + COST:
        vals = [s[k] for s in subs]
        out[k] = _mean(vals)
        if k in QUALITY:
            out[k + "_ci95"] = bootstrap_ci(vals)
    groups = sorted({g for s in subs for g in s["by_group"]})
    out["by_group"] = {g: {k: _mean(s["by_group"].get(g, {}).get(k) for s in subs)
                           for k in ("identity", "prompt_fidelity")} for g in groups}
    return out


def _fmt(v, nd=3):
    if v is None:
        return "–"
    if isinstance(v, float) and abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def _pm(m: dict, k: str, nd=3) -> str:
    v, ci = m.get(k), m.get(k + "_ci95")
    if v is None:
        return "–"
    if ci and ci[1] > ci[0]:
        return f"{v:.{nd}f} ± {(ci[1] - ci[0]) / 2:.{nd}f}"
    return f"{v:.{nd}f}"


def markdown(results: dict) -> str:
    head = ("| method | subjects | identity (judge-I) | identity acc | prompt fidelity | CLIP-T (world) | composition | "
            "drift: class→subject Δ | other concepts top-5 | personalise s | time to 1st image s | s / image | "
            "peak memory MB | artifact bytes |")
    lines = [head, "|" + "|".join(["---"] * 14) + "|"]
    for name, m in results["methods"].items():
        mem = m.get("peak_memory_bytes")
        lines.append("| " + " | ".join([
            LABELS.get(name, name), str(m["n_subjects"]), _pm(m, "identity"), _pm(m, "identity_acc"), _pm(m, "prompt_fidelity"),
            _pm(m, "clip_t"), _pm(m, "composition"), _fmt(m.get("drift_class_identity_delta")),
            _fmt(m.get("drift_others_top5")), _fmt(m.get("personalise_s"), 1), _fmt(m.get("time_to_first_image_s"), 1),
            _fmt(m.get("seconds_per_image"), 3), _fmt(mem / 2**20, 0) if mem else "–",
            f"{int(m['artifact_bytes']):,}" if m.get("artifact_bytes") is not None else "–"]) + " |")
    p = results["protocol"]["preset"]
    n_subj = len(results["subjects"])
    classes = sorted({s["class"] for s in results["subjects"]})
    note = (f"\n{n_subj} held-out subjects ({', '.join(classes)}), {len(p['prompts'])} prompts x {len(p['seeds'])} "
            f"seeds, {p['sample_steps']} denoising steps, guidance {p['guidance']}. ± = half the 95% bootstrap "
            f"interval over subjects. Machine: {results['machine'].get('gpu') or results['machine']['processor']}, "
            f"{results['machine']['cpu_count']} cores, {results['machine']['torch_threads']} torch threads.\n"
            f"Command: `{results['command']}`\n")
    earlier = [c for c in results.get("commands", []) if c != results["command"]]
    if earlier:
        note += "Earlier commands into the same folder (their finished units are reused): " + \
            "; ".join(f"`{c}`" for c in earlier) + "\n"
    if results.get("failures"):
        note += f"{len(results['failures'])} units failed and are not in the table: " + "; ".join(
            sorted({f['error'].split(';')[0] if f['error'].startswith(f['method'])
                    else f"{f['method']}: {f['error'].split(';')[0]}" for f in results["failures"]})) + "\n"
    return "\n".join(lines) + "\n" + note


def plots(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = results["methods"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for i, (name, m) in enumerate(ms.items()):
        x, y = m.get("prompt_fidelity"), m.get("identity")
        if x is None or y is None:
            continue
        xe = [[x - m["prompt_fidelity_ci95"][0]], [m["prompt_fidelity_ci95"][1] - x]]
        ye = [[y - m["identity_ci95"][0]], [m["identity_ci95"][1] - y]]
        ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", capsize=3,
                    color="gray" if name in LABELS else None)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 4 + 9 * (i % 3)), fontsize=9)  # stagger
    ax.set_xlabel("prompt fidelity (attribute + composition accuracy)")
    ax.set_ylabel("identity (judge-I: cosine to the references)")
    ax.set_title("boothkit bench: identity vs prompt fidelity (95% CI over subjects)", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "identity_vs_fidelity.png", dpi=120)
    plt.close(fig)

    rows = [(n, m["time_to_first_image_s"]) for n, m in ms.items() if m.get("time_to_first_image_s")]
    if rows:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.45 * len(rows)))
        ax.barh([n for n, _ in rows], [t for _, t in rows], color="tab:blue")
        ax.set_xscale("log")
        ax.set_xlim(left=min(t for _, t in rows) / 3, right=max(t for _, t in rows) * 3)  # bars start well left
        ax.set_xlabel("seconds to the first personalised image (log scale)")
        for i, (_, t) in enumerate(rows):
            ax.text(t, i, f" {t:.1f}s", va="center", fontsize=8)
        ax.invert_yaxis()
        fig.tight_layout()
        fig.savefig(out / "time_to_first_image.png", dpi=120)
        plt.close(fig)


def subject_grid(out: Path, slug: str, methods: list[str], ref_images, prompts, scale: int = 2):
    """references, then one row per method (seed 0 of every prompt), with a label column."""
    from PIL import Image, ImageDraw

    rows = [("references", ref_images)]
    for m in methods:
        p = out / "units" / m / f"{slug}.png"
        if p.exists():
            rows.append((m, [Image.open(p).convert("RGB")]))
    label_w, cell = 110, 64 * scale
    width = label_w + max(sum(im.width * scale for im in ims) if len(ims) == 1 else len(ims) * (cell + 2)
                          for _, ims in rows)
    sheet = Image.new("RGB", (width, len(rows) * (cell + 4) + 18), "white")
    draw = ImageDraw.Draw(sheet)
    pitch = (64 + 1) * scale  # unit strips: 64 px images with 1 px padding, scaled
    for i, p in enumerate(prompts):
        draw.text((label_w + scale + i * pitch, 4), p.key[:20], fill=(80, 80, 80))
    y = 18
    for name, ims in rows:
        draw.text((4, y + cell // 2 - 6), name, fill=(0, 0, 0))
        x = label_w
        for im in ims:
            im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
            sheet.paste(im, (x, y))
            x += im.width + 2
        y += cell + 4
    return sheet


def write_report(out: Path, methods, subjects, prompts, preset, proto, machine: dict, cfg) -> dict:
    from ..world.references import render_references

    records = {m: {} for m in methods}
    failures = []
    for m in methods:
        for s in subjects:
            p = out / "units" / m / f"{s.slug}.json"
            if p.exists():
                rec = json.loads(p.read_text())
                if "error" in rec:
                    failures.append({"method": m, "subject": s.name, "error": rec["error"]})
                else:
                    records[m][s.slug] = rec
    per_subject = {m: {slug: subject_metrics(r, records.get("floor", {}).get(slug)) for slug, r in recs.items()}
                   for m, recs in records.items()}
    results = {
        "schema_version": 1, "schema": "docs/bench.md",
        # the command that ran units (a --report-only rewrite names the last one that did)
        "command": ((cfg.commands[-1] if getattr(cfg, "report_only", False) and getattr(cfg, "commands", None)
                     else getattr(cfg, "command", None)) or " ".join(sys.argv)),
        "commands": getattr(cfg, "commands", None) or [],
        "machine": machine, "protocol": proto,
        "subjects": [{"name": s.name, "slug": s.slug, "class": s.cls} for s in subjects],
        "complete": all(len(records[m]) == len(subjects) for m in methods),
        "methods": {m: aggregate(ps) for m, ps in per_subject.items() if ps},
        "per_subject": per_subject,
        "failures": failures,
    }
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(markdown(results))
    plots(results, out)
    (out / "grids").mkdir(exist_ok=True)
    for s in subjects:
        refs = render_references(s, n=preset.n_references, seed=0)[0]
        subject_grid(out, s.slug, methods, refs, prompts).save(out / "grids" / f"{s.slug}.png")
    return results
