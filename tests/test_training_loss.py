"""The denoising loss, the per-step data, and the resize augmentation."""

from __future__ import annotations

import torch

from boothkit.training.data import ImageSet, random_resize, step_generator, with_size_word
from boothkit.training.loss import denoising_loss


class _EchoUNet(torch.nn.Module):
    """Predicts a fixed tensor: lets the test compute the expected loss by hand."""

    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, x, t, cond):
        return type("Out", (), {"sample": self.pred})()


def _scheduler(kind):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                         beta_end=0.012, prediction_type=kind)


def test_loss_targets_by_prediction_type():
    x0 = torch.randn(2, 4, 8, 8)
    pred = torch.zeros(2, 4, 8, 8)
    for kind in ("epsilon", "v_prediction"):
        sched = _scheduler(kind)
        got = denoising_loss(_EchoUNet(pred), sched, x0, torch.zeros(2, 3, 5), step_generator(0, 1))
        g = step_generator(0, 1)
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (2,), generator=g)
        target = noise if kind == "epsilon" else sched.get_velocity(x0, noise, t)
        assert torch.allclose(got, (target ** 2).mean(dim=(1, 2, 3)), atol=1e-6), kind


def test_masked_loss_counts_only_the_mask():
    x0 = torch.zeros(1, 4, 4, 4)
    pred = torch.zeros(1, 4, 4, 4)
    pred[..., :2, :] = 1e3  # huge error outside the mask
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:, :] = 1
    sched = _scheduler("epsilon")
    loss = denoising_loss(_EchoUNet(pred), sched, x0, torch.zeros(1, 3, 5), step_generator(0, 0), mask=mask)
    assert loss.item() < 10


def test_step_generator_is_a_pure_function():
    a = torch.rand(5, generator=step_generator(3, 7, 1, 0))
    b = torch.rand(5, generator=step_generator(3, 7, 1, 0))
    c = torch.rand(5, generator=step_generator(3, 8, 1, 0))
    d = torch.rand(5, generator=step_generator(3, 7, 1, 1))
    assert torch.equal(a, b) and not torch.equal(a, c) and not torch.equal(a, d)


def test_random_resize_masks_the_pasted_region_and_names_its_size():
    x = torch.ones(16, 3, 64, 64)
    y, mask, words = random_resize(x, step_generator(0, 0), latent_factor=8)
    assert y.shape == x.shape and mask.shape == (16, 1, 8, 8)
    for i in range(16):
        frac = mask[i].mean().item()
        if frac < 1:  # pasted smaller: the mask covers exactly the non-grey pixels
            covered = (y[i].abs().sum(0) > 0).float()
            up = mask[i, 0].repeat_interleave(8, 0).repeat_interleave(8, 1)
            assert torch.equal(covered, up)
    assert any(w in ("far away", "very small") for w in words)
    assert with_size_word("a photo of <new1> dog", "very small") == "a photo of very small <new1> dog"


def test_image_set_samples_are_deterministic():
    from PIL import Image

    s = ImageSet.from_images([Image.new("RGB", (100, 80), (i * 40, 0, 0)) for i in range(4)], 64, "p")
    assert s.pixels.shape == (4, 3, 64, 64)
    a = s.sample(3, step_generator(1, 2))
    assert torch.equal(a, s.sample(3, step_generator(1, 2)))
