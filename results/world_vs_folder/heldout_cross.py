"""The held-out loss of each encoder on the SAME held-out batch: 32 scenes of the world's held-out animal concepts
(never trained on by either run), fixed noise, with either condition:
- plain: a second render of the same glyph on white (what the world path trains with; the world run's own log),
- cutout: the target cut out by its mask (what the folder path trains with).
The recipe and settings are the runs' own (boothkit.pretrain.encoders.configs_of), so 'plain' at an encoder's last
step reproduces the world run's logged heldout_loss. Usage: python heldout_cross.py NAME=ENCODER_DIR ... (or
NAME=untrained for a fresh recipe: the step-0 value). Then paired differences per scene, with a bootstrap interval.
"""

import json
import sys

import torch

from boothkit.data import LoaderConfig, WorldOptions, open_source, validation_batch
from boothkit.methods.instantbooth import artifact
from boothkit.pipeline import load_pipeline
from boothkit.pretrain.encoders import configs_of

SETTINGS = {"steps": 500, "batch_size": 16, "lr": 3e-4, "lr_adapters": 1e-4, "lr_gamma": 1e-3, "object_weight": 4,
            "heldout": 32, "validate_every": 100, "validation_images": 0, "checkpoint_every": 250, "workers": 1,
            "seed": 0}

torch.set_num_threads(1)
m, cfg, shape, dcfg = configs_of("instantbooth", SETTINGS)
pipe = load_pipeline("world", device="cpu", dtype="fp32", progress=False)
lcfg = LoaderConfig(resolution=64, batch_size=cfg.batch_size, crop=cfg.crop, seed=cfg.seed, heldout=cfg.heldout)
batches = {name: validation_batch(open_source("world", class_noun="animal", identifier="sks",
                                              world=WorldOptions(condition=cond, seed=cfg.seed)), lcfg)
           for name, cond in (("plain", "plain"), ("cutout", "none"))}
recipe = m.recipe(pipe, cfg, shape, class_noun="animal", validation=None)
fresh = {k: v.clone() for k, v in recipe.ib.state_dict().items()}


@torch.no_grad()
def per_example(val: dict) -> torch.Tensor:
    """[32] the losses whose mean recipe.evaluate() reports (the same slices and noise seeds)."""
    from boothkit.data import batch_rows
    from boothkit.methods.instantbooth.pretrain import _seed

    recipe.trainer.eval()
    b, n = cfg.batch_size, len(val["captions"])
    return torch.cat([recipe.per_example_loss(recipe.ib, batch_rows(val, slice(i, i + b)),
                                              torch.Generator("cpu").manual_seed(_seed(cfg.seed, f"val-{i}")))
                      for i in range(0, n, b)])


out, rows = {}, {}
for arg in sys.argv[1:]:
    name, enc = arg.split("=", 1)
    recipe.ib.load_state_dict(fresh if enc == "untrained" else artifact.load(enc)[0].state_dict())
    for cond, val in batches.items():
        recipe.validation = val
        out[f"{name}/{cond}"] = recipe.evaluate()["heldout_loss"]
        rows[f"{name}/{cond}"] = per_example(val)
    print(json.dumps({k: v for k, v in out.items() if k.startswith(name + "/")}), flush=True)
print(json.dumps(out, indent=1))
# paired over the 32 scenes (same scene, same noise): mean difference and a 95% percentile bootstrap interval
names = [a.split("=", 1)[0] for a in sys.argv[1:]]
gen = torch.Generator().manual_seed(0)
for cond in batches:
    for a, b in [(x, y) for i, x in enumerate(names) for y in names[i + 1:]]:
        d = (rows[f"{b}/{cond}"] - rows[f"{a}/{cond}"]).double()  # [32]
        boot = d[torch.randint(len(d), (10_000, len(d)), generator=gen)].mean(1)
        lo, hi = torch.quantile(boot, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
        print(f"{cond}: {b} - {a} = {d.mean():+.5f} [{lo:+.5f}, {hi:+.5f}], {b} lower on {(d < 0).sum()}/{len(d)}")
