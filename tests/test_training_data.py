"""The shared training loop with a dataset (the encoder pretrainings' path): batches from data(start_step), one per
micro-step, in order; fixed evaluations logged; exact resume; the last step checkpointed when state is kept."""

from __future__ import annotations

import json

import pytest
import torch

from boothkit.pipeline import load_pipeline
from boothkit.training.config import TrainConfig
from boothkit.training.loop import train
from boothkit.training.recipe import Recipe


class Toy(Recipe):
    """Learns w so that w . x ~ y on batches a data function hands it."""

    train_modules = ("head",)

    def setup(self):
        self.head = torch.nn.Linear(4, 1)
        self.seen: list[int] = []

    def components(self):
        return {"head": self.head}

    def loss(self, g, batch=None):
        self.seen.append(int(batch["id"]))
        noise = torch.randn(1, generator=g)  # the loop's generator still decides the random draws
        pred = self.module("head")(batch["x"]).squeeze(-1)
        return ((pred - batch["y"]) ** 2).mean() + 0 * noise.sum()

    def evaluate(self):
        with torch.no_grad():
            x = torch.ones(1, 4)
            return {"fixed": float(self.head(x))}

    def step_log(self):
        return {"weight_norm": float(self.head.weight.detach().norm())}

    def state_tensors(self):
        return {k: v.detach() for k, v in self.head.state_dict().items()}

    def load_state_tensors(self, t):
        self.head.load_state_dict(t)


def batches(start_step, grad_accum=2):
    """Batch (step, micro) as a pure function of them."""
    def gen():
        step = start_step
        while True:
            for micro in range(grad_accum):
                g = torch.Generator().manual_seed(1000 * step + micro)
                x = torch.randn(3, 4, generator=g)
                yield {"id": 10 * step + micro, "x": x, "y": x.sum(-1)}
            step += 1
    return gen()


@pytest.fixture(scope="module")
def pipe(tiny_model):
    return load_pipeline(tiny_model, device="cpu", dtype="fp32", progress=False)


def _cfg(**kw):
    return TrainConfig(**{"steps": 6, "lr": 1e-2, "grad_accum": 2, "checkpoint_every": 2, "validation_images": 0,
                          "validate_every": 3, **kw})


def test_batches_follow_the_steps_and_resume_exactly(tmp_path, pipe):
    full = Toy(pipe, _cfg(), [])
    stats = train(full, _cfg(), tmp_path / "a", data=batches)
    assert full.seen == [10 * s + m for s in range(6) for m in range(2)]
    assert stats["evaluation"]["first"]["fixed"] != stats["evaluation"]["last"]["fixed"]
    log = [json.loads(line) for line in (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "fixed" in r] == [0, 3, 6] and all("weight_norm" in r for r in log
                                                                         if "loss" in r)

    class Stop(Exception):
        pass

    def stop_at_4(step, loss):
        if step == 4:
            raise Stop

    first = Toy(pipe, _cfg(), [])
    with pytest.raises(Stop):
        train(first, _cfg(), tmp_path / "b", data=batches, on_step=stop_at_4)
    again = Toy(pipe, _cfg(), [])
    stats = train(again, _cfg(), tmp_path / "b", data=batches, resume=True)
    assert stats["first_step"] == 4 and again.seen == [40, 41, 50, 51]
    for k, v in full.state_tensors().items():
        assert torch.equal(v, again.state_tensors()[k]), k


def test_kept_state_checkpoints_the_last_step_and_a_finished_run_needs_no_data(tmp_path, pipe):
    from boothkit.training.checkpoint import list_checkpoints

    train(Toy(pipe, _cfg(keep_training_state=True), []), _cfg(keep_training_state=True), tmp_path / "w",
          data=batches)
    assert [c.name for c in list_checkpoints(tmp_path / "w" / "checkpoints")][-1] == "checkpoint-6"
    calls = []
    done = Toy(pipe, _cfg(keep_training_state=True), [])
    stats = train(done, _cfg(keep_training_state=True), tmp_path / "w", resume=True,
                  data=lambda s: calls.append(s) or batches(s))
    assert stats["first_step"] == 6 and calls == [] and done.seen == []  # at its end: loaded, nothing drawn
