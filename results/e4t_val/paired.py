"""Paired comparison of E4T tuning recipes on the --val subjects: per-subject mean judge-I of each folder here
against a baseline folder (same subjects, same prompts and seeds).

    python results/e4t_val/paired.py s10-b16-lr1e-3
"""
import glob
import json
import os
import statistics as st
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def per_subject(folder: str) -> dict[str, float]:
    out = {}
    for f in glob.glob(os.path.join(folder, "units", "e4t", "*.json")):
        u = json.load(open(f))
        out[u["slug"]] = st.mean(i["judge_i"] for i in u["images"])
    return out


base = per_subject(os.path.join(HERE, sys.argv[1]))
print(f"| recipe | subjects | judge-I | minus {sys.argv[1]} | subjects better |")
print("|---|---|---|---|---|")
for d in sorted(glob.glob(os.path.join(HERE, "s*", ""))):  # the recipe folders (not full-* or encoders-*)
    p = per_subject(d)
    common = sorted(set(p) & set(base))
    if common:
        diffs = [p[s] - base[s] for s in common]
        print(f"| {os.path.basename(d[:-1])} | {len(common)} | {st.mean(p[s] for s in common):.3f} | "
              f"{st.mean(diffs):+.3f} | {sum(x > 0 for x in diffs)}/{len(common)} |")
