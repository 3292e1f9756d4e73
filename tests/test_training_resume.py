"""Checkpoints, --resume to the same final weights, NaN handling: on a tiny random SD-shaped model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from boothkit.methods import tune
from boothkit.training.checkpoint import list_checkpoints
from boothkit.training.loop import TrainingError

CFG = {"checkpoint_every": 2, "keep_checkpoints": 2, "validation_images": 0, "batch_size": 2}


class Kill(Exception):
    pass


def _killer(at):
    def on_step(step, loss):
        if step == at:
            raise Kill(step)
    return on_step


def test_resume_after_a_kill_gives_the_same_weights(tmp_path, tiny_model, subject_photos):
    full = tune("lora", subject_photos, "animal", tmp_path / "full", model=tiny_model, steps=5, config=CFG)
    out = tmp_path / "resumed"
    with pytest.raises(Kill):
        tune("lora", subject_photos, "animal", out, model=tiny_model, steps=5, config=CFG, on_step=_killer(3))
    assert not out.exists()  # nothing half-written in --out
    cks = list_checkpoints(tmp_path / ".resumed.train" / "checkpoints")
    assert [c.name for c in cks] == ["checkpoint-2"]
    tune("lora", subject_photos, "animal", out, model=tiny_model, steps=5, config=CFG, resume=True)
    meta = json.loads((out / "concept.json").read_text())
    assert meta["training"]["first_step"] == 2  # it really resumed, it did not start again
    a = load_file(str(full / "pytorch_lora_weights.safetensors"))
    b = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not (tmp_path / ".resumed.train").exists()  # cleaned after success


@pytest.mark.parametrize("method,weights", [("ti", "learned_embeds.safetensors"),
                                            ("custom", "pytorch_custom_diffusion_weights.safetensors")])
def test_resume_of_a_trained_token_gives_the_same_weights(tmp_path, tiny_model, subject_photos, method, weights):
    """Textual Inversion and Custom Diffusion train their token's rows as their own parameter: the rows and their
    optimizer state resume exactly too."""
    cfg = {**CFG, "prior_preservation": False} if method == "custom" else CFG
    full = tune(method, subject_photos, "animal", tmp_path / "full", model=tiny_model, steps=5, config=cfg)
    out = tmp_path / "resumed"
    with pytest.raises(Kill):
        tune(method, subject_photos, "animal", out, model=tiny_model, steps=5, config=cfg, on_step=_killer(3))
    tune(method, subject_photos, "animal", out, model=tiny_model, steps=5, config=cfg, resume=True)
    assert json.loads((out / "concept.json").read_text())["training"]["first_step"] == 2
    for name in {weights, *(p.name for p in full.glob("*.safetensors"))}:
        a, b = load_file(str(full / name)), load_file(str(out / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


#: the diffusers-script options together: a decaying schedule (with diffusers' lr 0 first step), Min-SNR, offset noise
OPTIONS = {**CFG, "lr_scheduler": "cosine", "lr_warmup": 1, "snr_gamma": 5.0, "noise_offset": 0.1}


def test_resume_with_cosine_min_snr_and_offset_noise_gives_the_same_weights(tmp_path, tiny_model, subject_photos):
    full = tune("lora", subject_photos, "animal", tmp_path / "full", model=tiny_model, steps=4, config=OPTIONS)
    out = tmp_path / "resumed"
    with pytest.raises(Kill):
        tune("lora", subject_photos, "animal", out, model=tiny_model, steps=4, config=OPTIONS, on_step=_killer(3))
    tune("lora", subject_photos, "animal", out, model=tiny_model, steps=4, config=OPTIONS, resume=True)
    meta = json.loads((out / "concept.json").read_text())
    assert meta["training"]["first_step"] == 2
    assert {k: meta["config"][k] for k in ("lr_scheduler", "snr_gamma", "noise_offset", "lr_num_cycles",
                                           "lr_power")} == {"lr_scheduler": "cosine", "snr_gamma": 5.0,
                                                            "noise_offset": 0.1, "lr_num_cycles": 1, "lr_power": 1.0}
    a = load_file(str(full / "pytorch_lora_weights.safetensors"))
    b = load_file(str(out / "pytorch_lora_weights.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the loss options reach the training loss: without them (same schedule) the weights differ
    plain = {**OPTIONS, "snr_gamma": 0.0, "noise_offset": 0.0}
    c = load_file(str(tune("lora", subject_photos, "animal", tmp_path / "plain", model=tiny_model, steps=4,
                           config=plain) / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)


PRODIGY = {**CFG, "optimizer": "prodigy", "lr": 1.0}


def test_prodigy_learns_its_step_size_and_resumes_exactly(tmp_path, tiny_model, subject_photos):
    """Prodigy keeps its step-size estimate d in its param groups, not in per-parameter state: the checkpoint
    carries it, so a resumed run ends with the same weights as an uninterrupted one."""
    from boothkit.training.checkpoint import load_checkpoint

    full = tune("lora", subject_photos, "animal", tmp_path / "full", model=tiny_model, steps=5, config=PRODIGY)
    out = tmp_path / "resumed"
    with pytest.raises(Kill):
        tune("lora", subject_photos, "animal", out, model=tiny_model, steps=5, config=PRODIGY, on_step=_killer(3))
    _, groups = load_checkpoint(list_checkpoints(tmp_path / ".resumed.train" / "checkpoints")[-1])
    state = groups["optimizer"]
    assert int(state["param_groups.0.k"]) == 2 and state["param_groups.0.d_numerator"].dtype == torch.float64
    assert float(state["param_groups.0.d_numerator"]) != 0  # what d is estimated from, two steps in
    tune("lora", subject_photos, "animal", out, model=tiny_model, steps=5, config=PRODIGY, resume=True)
    meta = json.loads((out / "concept.json").read_text())
    assert meta["training"]["first_step"] == 2 and meta["config"]["optimizer"] == "prodigy"
    a = load_file(str(full / "pytorch_lora_weights.safetensors"))
    b = load_file(str(out / "pytorch_lora_weights.safetensors"))
    for k in a:
        assert torch.equal(a[k], b[k]), k
    adam = load_file(str(tune("lora", subject_photos, "animal", tmp_path / "adam", model=tiny_model, steps=5,
                              config=CFG) / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(a[k], adam[k]) for k in a)  # the option reaches the optimizer


def test_prodigy_warns_on_an_adam_sized_lr_and_refuses_unequal_groups():
    from types import SimpleNamespace

    from boothkit.inputs import InputError
    from boothkit.training.config import TrainConfig
    from boothkit.training.loop import make_optimizer

    cfg = SimpleNamespace(optimizer="prodigy", lr=1e-4, weight_decay=0.0, use_8bit_adam=False)
    w = torch.nn.Parameter(torch.zeros(3))
    with pytest.warns(UserWarning, match="1.0 is usual"):
        make_optimizer([w], cfg, "cpu")
    cfg.lr = 1.0
    with pytest.raises(TrainingError, match="one learning rate"):
        make_optimizer([{"params": [w], "lr_scale": 1.0},
                        {"params": [torch.nn.Parameter(torch.zeros(2))], "lr_scale": 0.1}], cfg, "cpu")
    with pytest.raises(InputError, match="optimizer must be one of"):
        TrainConfig.from_dict({"optimizer": "lion"})


def test_resume_refuses_other_steps_with_a_decaying_schedule(tmp_path, tiny_model, subject_photos):
    """--steps is not part of a run's identity (a constant-lr run may go on longer), but cosine is spread over it."""
    out = tmp_path / "c"
    cfg = {**CFG, "lr_scheduler": "cosine"}
    with pytest.raises(Kill):
        tune("lora", subject_photos, "animal", out, model=tiny_model, steps=4, config=cfg, on_step=_killer(2))
    with pytest.raises(TrainingError, match=r"lr_scheduler=cosine over 4 steps, this run asks for 6"):
        tune("lora", subject_photos, "animal", out, model=tiny_model, steps=6, config=cfg, resume=True)


def test_resume_refuses_a_different_run(tmp_path, tiny_model, subject_photos):
    out = tmp_path / "c"
    with pytest.raises(Kill):
        tune("lora", subject_photos, "animal", out, model=tiny_model, steps=4, config=CFG, on_step=_killer(2))
    with pytest.raises(TrainingError, match="different run"):
        tune("lora", subject_photos, "animal", out, model=tiny_model, steps=4, config={**CFG, "lr": 0.5},
             resume=True)


def test_nan_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, tiny_model, subject_photos,
                                                                  monkeypatch):
    import boothkit.training.recipe as recipe_mod

    real = recipe_mod.denoising_loss
    calls = {"n": 0}

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(recipe_mod, "denoising_loss", poisoned)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3.*checkpoint-2"):
        tune("lora", subject_photos, "animal", tmp_path / "c", model=tiny_model, steps=4, config=CFG)
    assert not (tmp_path / "c").exists()
    assert [c.name for c in list_checkpoints(tmp_path / ".c.train" / "checkpoints")] == ["checkpoint-2"]


def test_keeps_only_the_last_k_checkpoints(tmp_path, tiny_model, subject_photos):
    cfg = {**CFG, "checkpoint_every": 1, "keep_checkpoints": 2, "keep_training_state": True}
    tune("ti", subject_photos, "animal", tmp_path / "c", model=tiny_model, steps=4, config=cfg)
    names = [c.name for c in list_checkpoints(tmp_path / ".c.train" / "checkpoints")]
    assert names == ["checkpoint-3", "checkpoint-4"]  # kept training state: the last step too
    log = [json.loads(line) for line in (tmp_path / "c" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3, 4]
    # ... so a finished run goes on from its last step
    out = tune("ti", subject_photos, "animal", tmp_path / "c", model=tiny_model, steps=5, config=cfg, resume=True)
    assert json.loads((out / "concept.json").read_text())["training"]["first_step"] == 4


def test_gradient_checkpointing_and_accumulation_run(tmp_path, tiny_model, subject_photos):
    cfg = {**CFG, "checkpoint_every": 0, "gradient_checkpointing": True, "grad_accum": 2, "batch_size": 1,
           "train_text_encoder": False, "prior_preservation": False}
    out = tune("dreambooth", subject_photos, "animal", tmp_path / "c", model=tiny_model, steps=2, config=cfg)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]


def test_options_added_later_leave_the_run_id_of_older_checkpoints_unchanged(tmp_path, tiny_model, subject_photos,
                                                                             monkeypatch):
    """A checkpoint written before lr_scheduler, snr_gamma, ... existed must still resume: at their defaults they
    are not part of the run id; set, they are (another run)."""
    import boothkit.training.loop as loop
    from boothkit.methods import tune

    seen = []

    def capture(recipe, cfg, work, *, run_info, **kw):
        seen.append(run_info["config"])
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train", capture)
    later = ("lr_scheduler", "lr_num_cycles", "lr_power", "snr_gamma", "noise_offset")
    for i, extra in enumerate(({}, {"snr_gamma": 5, "lr_scheduler": "cosine"})):
        with pytest.raises(KeyboardInterrupt):
            tune("lora", subject_photos, "animal", tmp_path / f"c{i}", model=tiny_model, steps=2,
                 config={"validation_images": 0, **extra})
    assert not set(later) & set(seen[0]) and "lr" in seen[0]
    assert seen[1]["snr_gamma"] == 5.0 and seen[1]["lr_scheduler"] == "cosine" and "noise_offset" not in seen[1]


def test_progress_switch_silences_the_training_bar(tmp_path, tiny_model, subject_photos, capsys):
    from boothkit.progress import bars, enabled

    cfg = {**CFG, "checkpoint_every": 0}
    tune("lora", subject_photos, "animal", tmp_path / "a", model=tiny_model, steps=2, config=cfg)
    assert "training:" in capsys.readouterr().err
    with bars(False):
        tune("lora", subject_photos, "animal", tmp_path / "b", model=tiny_model, steps=2, config=cfg)
    assert "training:" not in capsys.readouterr().err
    assert enabled()  # back on after the block


def test_save_every_keeps_loadable_snapshots_equal_to_shorter_runs(tmp_path, tiny_model, subject_photos):
    """save_every=2 over 4 steps keeps the concept after step 2 (not after 4: that is the concept itself); the
    data and noise are a function of the step, so it holds a 2-step run's weights exactly, and loads like any
    concept. It was written before the kill (the resumed run starts after step 2): it survives a resume."""
    from boothkit.methods import apply_concepts
    from boothkit.pipeline import load_pipeline

    cfg = {**CFG, "save_every": 2}
    out = tmp_path / "rat"
    with pytest.raises(Kill):
        tune("lora", subject_photos, "animal", out, model=tiny_model, steps=4, config=cfg, on_step=_killer(3))
    tune("lora", subject_photos, "animal", out, model=tiny_model, steps=4, config=cfg, resume=True)
    snaps = sorted(p.name for p in (out / "snapshots").iterdir())
    assert snaps == ["rat-step-000002"]
    snap = out / "snapshots" / snaps[0]
    meta = json.loads((snap / "concept.json").read_text())
    assert meta["training"]["steps"] == 2 and meta["training"]["snapshot_of"] == "rat" and meta["method"] == "lora"
    short = tune("lora", subject_photos, "animal", tmp_path / "short", model=tiny_model, steps=2, config=CFG)
    a = load_file(str(snap / "pytorch_lora_weights.safetensors"))
    b = load_file(str(short / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = load_file(str(out / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(a[k], final[k]) for k in a)
    pipe = apply_concepts(load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False), [snap])
    assert pipe.get_active_adapters() == ["rat_step_000002"]
