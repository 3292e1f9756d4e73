"""Paired comparison of two benchmark runs (or two methods of one run) on the subjects they share.

Two recipes' means over subjects differ by more than their bootstrap intervals suggest is noise only when the
same subjects are compared: per-subject scores vary far more between subjects than between recipes. So this
takes each shared subject's metric under A and under B (the same prompts and seeds, checked), and reports the
mean of the per-subject differences B - A with a 95% percentile-bootstrap interval over subjects and how many
subjects B wins. An interval that contains 0 means the runs are not told apart on these subjects.

    boothkit compare results/bench-full:ti results/bench-full:e4t       # two methods of one run
    boothkit compare /tmp/val-a /tmp/val-b --method e4t                 # one method, two runs (e.g. two recipes)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..inputs import InputError
from .report import bootstrap_ci, subject_metrics

#: what is compared by default: identity, prompt fidelity, and the time to the first personalised image
METRICS = ("identity", "identity_acc", "prompt_fidelity", "clip_t", "time_to_first_image_s")


def parse_side(text: str, method: str | None) -> tuple[Path, str]:
    """"RUN[:METHOD]" -> (run folder, method); METHOD defaults to `method`."""
    run, m = text, ""
    if ":" in text and not Path(text).exists():
        run, _, m = text.rpartition(":")
    m = m or method
    if not m:
        raise InputError(f"{text!r}: name the method, as RUN:METHOD or with --method")
    return Path(run), m


def load_units(run: Path, method: str) -> dict[str, dict]:
    """The unit records of `method` in a bench folder: {subject slug: record}."""
    folder = run / "units" / method
    if not folder.is_dir():
        have = sorted(p.name for p in (run / "units").iterdir()) if (run / "units").is_dir() else []
        raise InputError(f"{run}: no units for method {method!r} (this run has: {have or 'no units at all'})")
    units = {}
    for f in sorted(folder.glob("*.json")):
        record = json.loads(f.read_text())
        if not ("slug" in record and all("judge_i" in im for im in record.get("images", [{}]))):
            raise InputError(f"{f} is not a world-protocol unit (compare reads `boothkit bench --quick/--full/--val` "
                             "runs; DreamBench runs are not supported yet)")
        units[record["slug"]] = record
    return units


def _protocol(record: dict) -> list[tuple[str, int]]:
    """The (prompt key, seed) of every image of a unit record, sorted."""
    return sorted((r["prompt"], int(r["seed"])) for r in record["images"])


def compare(a: tuple[Path, str], b: tuple[Path, str], metrics=METRICS, seed: int = 0) -> dict:
    """-> JSON-ready paired comparison of B against A (see the module docstring)."""
    ua, ub = load_units(*a), load_units(*b)
    shared = sorted(set(ua) & set(ub))
    if not shared:
        raise InputError(f"{a[0]}:{a[1]} and {b[0]}:{b[1]} share no subject")
    for slug in shared:
        if _protocol(ua[slug]) != _protocol(ub[slug]):
            raise InputError(f"subject {slug!r} was not drawn with the same prompts and seeds in both runs: "
                             "a paired comparison needs the same protocol (preset, --prompts, --seeds)")
    ma = {s: subject_metrics(ua[s], None) for s in shared}
    mb = {s: subject_metrics(ub[s], None) for s in shared}
    out = {"a": f"{a[0]}:{a[1]}", "b": f"{b[0]}:{b[1]}", "subjects": shared,
           "only_a": sorted(set(ua) - set(ub)), "only_b": sorted(set(ub) - set(ua)), "metrics": {}}
    for k in metrics:
        pairs = {s: (ma[s][k], mb[s][k]) for s in shared if ma[s][k] is not None and mb[s][k] is not None}
        if not pairs:
            continue
        diffs = {s: y - x for s, (x, y) in pairs.items()}
        out["metrics"][k] = {"n": len(pairs), "a": float(np.mean([x for x, _ in pairs.values()])),
                             "b": float(np.mean([y for _, y in pairs.values()])),
                             "diff": float(np.mean(list(diffs.values()))),
                             "diff_ci95": bootstrap_ci(list(diffs.values()), seed=seed),
                             "b_higher": sum(d > 0 for d in diffs.values()),
                             "per_subject": {s: round(d, 5) for s, d in diffs.items()}}
    return out


def markdown(result: dict) -> str:
    lines = [f"B = `{result['b']}` minus A = `{result['a']}`, on {len(result['subjects'])} shared subjects "
             f"(per-subject means; 95% bootstrap interval of the mean difference over subjects).", "",
             "| metric | A | B | B - A | 95% interval | subjects where B is higher |", "|---|---|---|---|---|---|"]
    for k, m in result["metrics"].items():
        lo, hi = m["diff_ci95"]
        verdict = "" if lo <= 0 <= hi else " (B higher)" if lo > 0 else " (B lower)"
        lines.append(f"| {k} | {m['a']:.3f} | {m['b']:.3f} | {m['diff']:+.3f}{verdict} | [{lo:+.3f}, {hi:+.3f}] | "
                     f"{m['b_higher']}/{m['n']} |")
    for side in ("only_a", "only_b"):
        if result[side]:
            lines.append(f"\nNot compared ({side.replace('_', ' ')}): {', '.join(result[side])}")
    return "\n".join(lines)
