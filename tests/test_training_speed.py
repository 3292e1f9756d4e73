"""Issue 18's speed-ups of the training loop: the fused AdamW kernel (same weights up to float rounding, bounded
here; resume stays bit-identical: tests/test_training_resume.py runs with it) and no validation grid unless asked."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from boothkit.methods import tune
from boothkit.training.config import TrainConfig
from boothkit.training.loop import make_optimizer

CFG = {"checkpoint_every": 0, "batch_size": 2}


def test_fused_adamw_is_used_where_torch_has_it():
    params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(4))]
    assert make_optimizer(params, TrainConfig(), "cpu").defaults["fused"] is True
    assert not make_optimizer(params, TrainConfig(fused_adamw=False), "cpu").defaults["fused"]
    groups = [{"params": params[:1], "lr_scale": 1.0}, {"params": params[1:], "lr_scale": 0.1}]
    assert make_optimizer(groups, TrainConfig(), "cpu").defaults["fused"] is True


@pytest.mark.parametrize("method", ["lora", "ti"])
def test_fused_adamw_changes_no_weight_beyond_rounding(tmp_path, tiny_model, subject_photos, method):
    """The fused kernel computes AdamW's update in another order of float operations: after 6 steps the trained
    tensors agree to a relative 1e-5."""
    name = {"lora": "pytorch_lora_weights.safetensors", "ti": "learned_embeds.safetensors"}[method]
    weights = {}
    for fused in (True, False):
        out = tune(method, subject_photos, "animal", tmp_path / f"{method}{fused}", model=tiny_model, steps=6,
                   config={**CFG, "fused_adamw": fused})
        weights[fused] = load_file(str(out / name))
    assert weights[True].keys() == weights[False].keys()
    diff = sum(float((weights[True][k] - weights[False][k]).pow(2).sum()) for k in weights[True]) ** 0.5
    norm = sum(float(weights[False][k].pow(2).sum()) for k in weights[False]) ** 0.5
    assert diff / norm < 1e-5, diff / norm
    moved = {k: float((weights[True][k] - weights[False][k]).abs().max()) for k in weights[True]}
    assert max(moved.values()) < 1e-5, moved


def test_no_validation_grid_unless_asked(tmp_path, tiny_model, subject_photos):
    out = tune("lora", subject_photos, "animal", tmp_path / "plain", model=tiny_model, steps=2, config=CFG)
    assert not (out / "validation").exists()
    out = tune("lora", subject_photos, "animal", tmp_path / "grid", model=tiny_model, steps=2,
               config={**CFG, "validation_images": 1, "validation_steps": 2})
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-00002.png", "step-00002.txt"]
    # validate_every alone runs the recipe's evaluation (pretraining's held-out loss) and draws nothing
    out = tune("lora", subject_photos, "animal", tmp_path / "every", model=tiny_model, steps=2,
               config={**CFG, "validate_every": 1})
    assert not (out / "validation").exists()
