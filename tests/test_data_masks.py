"""Masks from alpha / file / bbox / a tiny random CLIPSeg (built here, loaded by path), the blank check, and the
condition augmentation on tensors (the subject cut out on white, re-centred from its mask's box)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from boothkit.data import (ConditionConfig, Segmenter, frame_subject, mask_boxes, on_white,
                           subject_condition)
from boothkit.data.masks import bbox_mask, mask_file, subject_mask
from boothkit.data.record import Unusable
from boothkit.inputs import InputError
from test_data_support import build_tiny_clipseg


def _png(im) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def test_masks_from_alpha_file_and_bbox():
    photo = Image.new("RGB", (80, 60), (10, 200, 30))
    alpha = Image.new("L", (80, 60), 0)
    alpha.paste(255, (5, 6, 25, 30))
    m, how = subject_mask(photo, alpha)
    assert how == "alpha" and np.asarray(m).sum() == 255 * 20 * 24
    # a fully opaque alpha says nothing: the bbox is used
    m, how = subject_mask(photo, Image.new("L", (80, 60), 255), bbox=[10, 20, 30, 40])
    assert how == "bbox" and np.asarray(m)[20:40, 10:30].min() == 255 and np.asarray(m).sum() == 255 * 400
    # a mask file wins; half resolution, same aspect: resized
    small = Image.new("L", (40, 30), 0)
    small.paste(255, (0, 0, 20, 30))
    m, how = subject_mask(photo, alpha, mask=_png(small), bbox=[0, 0, 5, 5])
    a = np.asarray(m)
    assert how == "file" and m.size == (80, 60) and a[:, :38].min() == 255 and a[:, 42:].max() == 0
    # an RGBA cut-out as the mask file: its alpha is the mask
    cut = Image.new("RGBA", (80, 60), (0, 0, 0, 0))
    cut.paste((200, 0, 0, 255), (40, 0, 80, 60))
    assert np.asarray(mask_file(_png(cut), (80, 60), "cut"))[:, 40:].min() == 255
    with pytest.raises(Unusable, match="another aspect ratio"):
        mask_file(_png(Image.new("L", (60, 60), 255)), (80, 60), "m")
    with pytest.raises(Unusable, match="lies outside"):
        bbox_mask((80, 60), [100, 100, 120, 120])
    with pytest.raises(ValueError, match="x0 < x1"):
        bbox_mask((80, 60), [30, 0, 10, 5])
    assert subject_mask(photo, None) == (None, None)


def test_blank_reason():
    """The data layer skips what the subject-photo rule calls blank (boothkit.images.blank_reason)."""
    from boothkit.images import blank_reason

    assert blank_reason(Image.new("RGB", (300, 200), (30, 30, 30))) is not None
    rng = np.random.default_rng(0)
    noisy = Image.fromarray((rng.random((90, 90, 3)) * 255).astype(np.uint8))
    assert blank_reason(noisy) is None
    almost = np.full((64, 64, 3), 100, np.uint8)
    almost[10:20, 10:20] = 140
    assert blank_reason(Image.fromarray(almost)) is None


@pytest.fixture(scope="module")
def segmenters(tmp_path_factory):
    base = tmp_path_factory.mktemp("clipseg")
    return {"random": build_tiny_clipseg(base / "random"), "all": build_tiny_clipseg(base / "all", bias=8.0),
            "none": build_tiny_clipseg(base / "none", bias=-8.0)}


def test_tiny_segmenter_fills_the_rows_without_masks(segmenters):
    b, s = 3, 40
    batch = {"pixels": torch.rand(b, 3, s, s) * 2 - 1, "mask": torch.zeros(b, 1, s, s),
             "has_mask": torch.tensor([True, False, False]), "class_nouns": ["dog"] * b}
    batch["mask"][0, :, :10, :10] = 1.0
    own = batch["mask"][0].clone()
    assert Segmenter(segmenters["all"]).fill(batch) == 2
    assert torch.equal(batch["mask"][0], own), "a row that had a mask keeps it"
    assert (batch["mask"][1:] == 1).all() and batch["has_mask"].all()
    seg = Segmenter(segmenters["random"], threshold=0.5)
    probs = seg.probabilities(torch.rand(2, 3, 50, 30), ["dog", "cat"])
    assert probs.shape == (2, 1, 50, 30) and 0 <= probs.min() and probs.max() <= 1
    m, found = seg.binary(torch.rand(2, 3, 50, 30), ["dog", "dog"])
    assert set(m.unique().tolist()) <= {0.0, 1.0} and found.shape == (2,)


def test_segmenter_masks_photos_and_falls_back_to_the_whole_image(segmenters):
    photos = [Image.new("RGB", (70, 50), (200, 10, 10)), Image.new("RGB", (64, 96), (0, 90, 200))]
    masks = Segmenter(segmenters["all"]).masks(photos, "dog")
    assert [m.size for m in masks] == [(70, 50), (64, 96)] and all(m.mode == "L" for m in masks)
    assert all(np.asarray(m).min() == 255 for m in masks)
    with pytest.warns(UserWarning, match="found no 'dog' in 2 of 2 image"):
        masks = Segmenter(segmenters["none"]).masks(photos, "dog")
    assert all(np.asarray(m).min() == 255 for m in masks)  # nothing found: the whole image
    with pytest.raises(InputError, match="not a CLIPSeg model"):
        Segmenter(segmenters["all"].parent / "missing")


def test_mask_boxes():
    m = torch.zeros(2, 1, 20, 30)
    m[0, :, 3:9, 10:25] = 1.0
    assert mask_boxes(m).tolist() == [[10.0, 3.0, 25.0, 9.0], [0.0, 0.0, 30.0, 20.0]]  # empty: the whole image


def _square_subject(s=64, box=(8, 30, 24, 46), colour=(0.2, 0.4, 0.9)):
    """A coloured square on a grey background, and its mask."""
    img = torch.full((1, 3, s, s), 0.5)
    mask = torch.zeros(1, 1, s, s)
    x0, y0, x1, y1 = box
    img[0, :, y0:y1, x0:x1] = torch.tensor(colour).view(3, 1, 1)
    mask[0, :, y0:y1, x0:x1] = 1.0
    return img, mask


def test_condition_recentres_the_subject_on_white():
    img, mask = _square_subject()  # 16 px subject at the left edge
    cfg = ConditionConfig(scale=(0.5, 0.5), shift=0.0, flip=0.0, jitter=0.0)
    out = subject_condition(img, mask, torch.Generator().manual_seed(0), cfg, size=64)  # [1, 3, 64, 64]
    assert out.shape == (1, 3, 64, 64)
    subject = (out[0] - 1).abs().amax(0) > 0.1  # not white
    ys, xs = subject.nonzero(as_tuple=True)
    assert 15 <= xs.min() <= 17 and 47 <= xs.max() <= 48 and 15 <= ys.min() <= 17 and 47 <= ys.max() <= 48
    assert torch.allclose(out[0, :, 32, 32], torch.tensor([0.2, 0.4, 0.9]), atol=1e-4)
    assert (out[0, :, :8] == 1).all() and (out[0, :, -8:] == 1).all(), "the background is white"
    # the draws come from the generator: same seed, same condition; another seed, another one
    full = ConditionConfig()
    a = subject_condition(img, mask, torch.Generator().manual_seed(3), full)
    b = subject_condition(img, mask, torch.Generator().manual_seed(3), full)
    c = subject_condition(img, mask, torch.Generator().manual_seed(4), full)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(InputError, match="scale"):
        ConditionConfig(scale=(0.9, 0.5))


def test_frame_subject_is_the_deterministic_twin_of_the_augmentation():
    img, mask = _square_subject(box=(30, 6, 50, 22))
    photo = Image.fromarray((img[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    pil_mask = Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8), "L")
    framed = np.asarray(frame_subject(photo, pil_mask, cover=0.75, size=64), dtype=np.float32) / 255
    cfg = ConditionConfig(scale=(0.75, 0.75), shift=0.0, flip=0.0, jitter=0.0)
    aug = subject_condition(img, mask, torch.Generator().manual_seed(0), cfg)[0].permute(1, 2, 0).numpy()
    assert np.abs(framed - aug).mean() < 0.03
    cut = np.asarray(on_white(photo, pil_mask))
    assert cut[0, 0].tolist() == [255, 255, 255] and cut[10, 40].tolist() == np.asarray(photo)[10, 40].tolist()
