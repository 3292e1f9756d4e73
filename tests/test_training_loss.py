"""The denoising loss (and its Min-SNR / offset-noise options), the lr schedules, the per-step data (centre or
random square crops), and the resize augmentation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from boothkit.inputs import InputError
from boothkit.training.config import LR_SCHEDULERS, TrainConfig
from boothkit.training.data import ImageSet, random_resize, step_generator, with_size_word
from boothkit.training.loop import lr_at
from boothkit.training.loss import denoising_loss, min_snr_weights


class _EchoUNet(torch.nn.Module):
    """Predicts a fixed tensor: lets the test compute the expected loss by hand."""

    def __init__(self, pred):
        super().__init__()
        self.pred = pred

    def forward(self, x, t, cond):
        return type("Out", (), {"sample": self.pred})()


class _RecordingUNet(torch.nn.Module):
    """Predicts zeros and keeps the noisy input it was given (what the forward process made)."""

    def forward(self, x, t, cond):
        self.seen_x, self.seen_t = x.clone(), t.clone()
        return type("Out", (), {"sample": torch.zeros_like(x)})()


def _tiny_unet():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8, in_channels=4,
                                out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
                                attention_head_dim=8, norm_num_groups=8).eval()


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


def _tall_photo():
    """100 x 200: red top half, blue bottom half."""
    from PIL import Image

    im = Image.new("RGB", (100, 200), (255, 0, 0))
    im.paste((0, 0, 255), (0, 100, 100, 200))
    return im


def test_center_crop_is_the_default_and_keeps_the_draws():
    """crop="center" (the default) samples exactly what it did before the option: same images, same generator
    state after the draw."""
    from PIL import Image

    photos = [_tall_photo(), Image.new("RGB", (64, 64), (0, 255, 0))]
    a, b = ImageSet.from_images(photos, 32, "p"), ImageSet.from_images(photos, 32, "p", crop="center")
    assert a.originals is None and b.originals is None
    g1, g2, g_ref = step_generator(0, 1), step_generator(0, 1), step_generator(0, 1)
    idx = torch.randint(0, 2, (6,), generator=g_ref)  # the draws before the option existed: index, then flips
    f = torch.rand(6, generator=g_ref) < 0.5
    want = a.pixels[idx].clone()
    want[f] = want[f].flip(-1)
    assert torch.equal(a.sample(6, g1), want) and torch.equal(b.sample(6, g2), want)
    assert torch.equal(g1.get_state(), g_ref.get_state())


def test_random_crop_moves_a_square_window_along_the_long_side():
    s = ImageSet.from_images([_tall_photo()], 32, "p", crop="random")
    assert s.originals is not None and s.originals[0].shape == (3, 64, 32)  # short side resized to 32
    red = torch.tensor([1.0, -1.0, -1.0]).view(3, 1, 1)
    shares = []
    for step in range(40):
        x = s.sample(1, step_generator(0, step), flip=False)[0]
        assert x.shape == (3, 32, 32)
        shares.append(float(((x - red).abs().amax(0) < 0.1).float().mean()))  # share of red pixels
    assert min(shares) < 0.1 and max(shares) > 0.9  # windows near the bottom and near the top both occur
    assert 0.1 < sum(shares) / len(shares) < 0.9
    centre = ImageSet.from_images([_tall_photo()], 32, "p").sample(1, step_generator(0, 0), flip=False)[0]
    assert abs(float(((centre - red).abs().amax(0) < 0.1).float().mean()) - 0.5) < 0.1  # the middle: half red
    x1 = s.sample(4, step_generator(3, 7))
    assert torch.equal(x1, s.sample(4, step_generator(3, 7)))  # still a pure function of the generator
    square = ImageSet.from_images([_tall_photo().crop((0, 0, 100, 100))], 32, "p", crop="random")
    assert square.originals is None  # square photos: nothing to move


def test_crop_option_is_checked_and_reaches_training(tmp_path, tiny_model):
    from boothkit.methods import tune

    with pytest.raises(InputError, match="crop must be one of"):
        TrainConfig.from_dict({"crop": "top"})
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        im = _tall_photo()
        im.paste((0, 200 * i, 0), (40, 40, 60, 60))
        im.save(photos / f"{i}.png")
    cfg = {"validation_images": 0, "checkpoint_every": 0}
    runs = {crop: tune("lora", photos, "animal", tmp_path / crop, model=tiny_model, steps=2,
                       config={**cfg, "crop": crop}) for crop in ("center", "random")}
    metas = {c: json.loads((p / "concept.json").read_text()) for c, p in runs.items()}
    assert metas["random"]["config"]["crop"] == "random" and metas["center"]["config"]["crop"] == "center"
    from safetensors.torch import load_file

    a, b = (load_file(runs[c] / "pytorch_lora_weights.safetensors") for c in ("center", "random"))
    assert any(not torch.equal(a[k], b[k]) for k in a)  # other training images, other weights


# --- Min-SNR-gamma and offset noise ------------------------------------------------------------------------------

def test_defaults_keep_the_draws_and_the_loss():
    """With snr_gamma = noise_offset = 0 (passed or not) the loss is the plain L_simple of a real UNet, bit for bit,
    and the generator is left where noise + timesteps leave it (later draws of the step are unchanged too)."""
    unet, sched = _tiny_unet(), _scheduler("epsilon")
    x0, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    g_ref = step_generator(0, 3)
    noise = torch.randn(x0.shape, generator=g_ref)  # the computation before the options existed
    t = torch.randint(0, 1000, (2,), generator=g_ref)
    with torch.no_grad():
        pred = unet(sched.add_noise(x0, noise, t), t, cond).sample
        want = F.mse_loss(pred.float(), noise.float(), reduction="none").mean(dim=(1, 2, 3))
        for kwargs in ({}, {"snr_gamma": 0.0, "noise_offset": 0.0}):
            g = step_generator(0, 3)
            got = denoising_loss(unet, sched, x0, cond, g, **kwargs)
            assert torch.equal(got, want), kwargs
            assert torch.equal(g.get_state(), g_ref.get_state()), kwargs


def test_min_snr_weights_are_the_papers_for_each_prediction_type():
    t = torch.tensor([0, 10, 250, 500, 999])
    for kind in ("epsilon", "v_prediction", "sample"):
        sched = _scheduler(kind)
        ab = sched.alphas_cumprod[t].double()
        snr = ab / (1 - ab)  # SNR(t) = alpha_bar / (1 - alpha_bar)
        capped = torch.minimum(snr, torch.full_like(snr, 5.0))
        want = {"epsilon": capped / snr, "v_prediction": capped / (snr + 1), "sample": capped}[kind]
        got = min_snr_weights(sched, t, 5.0)
        assert got.shape == (5,) and torch.allclose(got.double(), want, rtol=1e-5), kind
    eps = min_snr_weights(_scheduler("epsilon"), t, 5.0)
    assert eps[0] < 0.01 and eps[-1] == 1.0  # low noise (SNR >> 5) is capped; high noise keeps weight 1


def test_min_snr_multiplies_each_examples_loss_by_its_weight():
    x0 = torch.randn(3, 4, 8, 8)
    for kind in ("epsilon", "v_prediction"):
        sched = _scheduler(kind)
        plain = denoising_loss(_RecordingUNet(), sched, x0, torch.zeros(3, 3, 5), step_generator(1, 2))
        unet = _RecordingUNet()
        weighted = denoising_loss(unet, sched, x0, torch.zeros(3, 3, 5), step_generator(1, 2), snr_gamma=5.0)
        g = step_generator(1, 2)
        torch.randn(x0.shape, generator=g)
        t = torch.randint(0, 1000, (3,), generator=g)
        assert torch.equal(unet.seen_t, t)  # Min-SNR draws nothing: same timesteps
        assert torch.allclose(weighted, plain * min_snr_weights(sched, t, 5.0), rtol=1e-6), kind
        assert not torch.allclose(weighted, plain), kind


def test_noise_offset_adds_one_constant_per_example_and_channel():
    """x0 = 0 makes x_t = sqrt(1 - alpha_bar_t) eps: the offset run's noise minus the plain run's is a drawn
    [B, C, 1, 1] constant times noise_offset, drawn after the timesteps; the offset noise is also the target."""
    sched = _scheduler("epsilon")
    x0, cond = torch.zeros(2, 4, 8, 8), torch.zeros(2, 3, 5)
    plain, offset = _RecordingUNet(), _RecordingUNet()
    denoising_loss(plain, sched, x0, cond, step_generator(0, 5))
    loss = denoising_loss(offset, sched, x0, cond, step_generator(0, 5), noise_offset=0.1)
    assert torch.equal(plain.seen_t, offset.seen_t)
    sigma = (1 - sched.alphas_cumprod[plain.seen_t]).sqrt().view(2, 1, 1, 1)
    diff = (offset.seen_x - plain.seen_x) / sigma  # [2, 4, 8, 8]
    g = step_generator(0, 5)
    noise = torch.randn(x0.shape, generator=g)
    torch.randint(0, 1000, (2,), generator=g)
    drawn = torch.randn(2, 4, 1, 1, generator=g)  # the third draw of the step
    assert torch.allclose(diff, (0.1 * drawn).expand_as(diff), atol=1e-5)
    assert torch.allclose(loss, ((noise + 0.1 * drawn) ** 2).mean(dim=(1, 2, 3)), atol=1e-6)


# --- learning-rate schedules ------------------------------------------------------------------------------------

def test_constant_schedule_is_the_old_warmup_then_constant():
    cfg = TrainConfig(steps=10, lr=1e-3, lr_warmup=4)
    assert [lr_at(cfg, s) for s in range(10)] == [1e-3 * (s + 1) / 4 for s in range(4)] + [1e-3] * 6


@pytest.mark.parametrize("name,extra", [("cosine", {}), ("linear", {}), ("constant_with_warmup", {}),
                                        ("cosine_with_restarts", {"lr_num_cycles": 2}),
                                        ("polynomial", {"lr_power": 2.0})])
def test_lr_at_is_diffusers_schedule_stepping_a_real_optimizer(name, extra):
    from diffusers.optimization import get_scheduler

    cfg = TrainConfig(steps=12, lr=2e-4, lr_warmup=3, lr_scheduler=name, **extra)
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([p], lr=cfg.lr)
    sched = get_scheduler(name, opt, num_warmup_steps=3, num_training_steps=12,
                          num_cycles=cfg.lr_num_cycles, power=cfg.lr_power)
    for step in range(cfg.steps):  # the lr diffusers' scripts train step `step` with
        assert lr_at(cfg, step) == opt.param_groups[0]["lr"], step
        p.grad = torch.ones(2)
        opt.step()
        sched.step()


def test_cosine_warms_up_then_decays_to_about_zero():
    cfg = TrainConfig(steps=20, lr=1e-4, lr_warmup=5, lr_scheduler="cosine")
    lrs = [lr_at(cfg, s) for s in range(cfg.steps)]
    assert lrs[:6] == pytest.approx([0, 2e-5, 4e-5, 6e-5, 8e-5, 1e-4])  # diffusers' warm-up: lr * step / warmup
    assert all(a > b for a, b in zip(lrs[5:], lrs[6:]))  # then strictly decreasing
    assert 0 < lrs[-1] < 0.02 * cfg.lr


def test_lr_scheduler_names_are_diffusers():
    from diffusers.optimization import SchedulerType

    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType} - {"piecewise_constant"}


@pytest.mark.parametrize("bad,match", [
    ({"lr_scheduler": "cosine_annealing"}, "lr_scheduler must be one of .*cosine_with_restarts"),
    ({"lr_scheduler": "piecewise_constant"}, "lr_scheduler must be one of"),
    ({"lr_num_cycles": 0}, "lr_num_cycles"),
    ({"lr_power": 0.0}, "lr_power"),
    ({"lr_scheduler": "polynomial", "lr": 1e-8}, "polynomial"),
    ({"snr_gamma": -1.0}, "snr_gamma must be >= 0"),
    ({"noise_offset": -0.05}, "noise_offset must be >= 0"),
    ({"snr_gamma": "5"}, "snr_gamma must be float"),
])
def test_bad_training_options_are_input_errors(bad, match):
    with pytest.raises(InputError, match=match):
        TrainConfig.from_dict(bad)


def test_min_snr_weight_is_one_at_a_zero_terminal_snr():
    """Zero-terminal-SNR schedules (rescale_betas_zero_snr) have SNR = 0 at t = T - 1: min(0, g) / 0 would be NaN
    for epsilon models; diffusers' scripts use weight 1 there."""
    from diffusers import DDPMScheduler

    from boothkit.training.loss import min_snr_weights

    s = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, rescale_betas_zero_snr=True,
                      prediction_type="epsilon")
    w = min_snr_weights(s, torch.tensor([0, 500, 999]), 5.0)
    assert torch.isfinite(w).all() and float(w[2]) == 1.0 and 0 < float(w[0]) < 1
