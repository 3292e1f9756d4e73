"""`boothkit bench`: methods side by side on held-out subjects.

- protocol.py: presets, subjects, reference photos, the prompt suite (four DreamBench-style groups), seeds.
- runners.py: how each entry gets its images (fine-tuning methods, InstantBooth, floor and ceiling baselines).
- world_metrics.py: per-image identity, attribute, composition and CLIP-T metrics on the world.
- cost.py: seconds, peak memory, artifact bytes.
- run.py: the resumable loop over (method, subject) units; report.py: results.json, results.md, plots, grids.
- dreambench.py: the same on real models (DreamBench subjects and prompts; CLIP-I, CLIP-T, DINO).
"""
