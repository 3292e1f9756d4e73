"""The world as a data source: single-object scenes of TRAIN concepts, captions with the identifier in front of the
class noun, masks from the renderer's alpha, a second render as the condition; held-out concepts only in validation.
A synthetic atlas (flat 64 x 40 rectangles, BOOTHKIT_ATLAS) keeps this fast and makes every box known."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from boothkit.data import (ConditionConfig, LoaderConfig, WorldOptions, build_loader, open_source, subject_condition,
                           validation_batch)
from boothkit.inputs import InputError
from test_data_support import GLYPH_H, synthetic_atlas


@pytest.fixture(scope="module", autouse=True)
def atlas(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BOOTHKIT_ATLAS", str(synthetic_atlas(tmp_path_factory.mktemp("atlas") / "atlas.safetensors")))
        yield


def test_world_records(atlas):
    from boothkit.world.concepts import CLASSES, all_concepts, concept_index
    from boothkit.world.scenes import SIZES

    src = open_source("world", class_noun="animal", identifier="sks", world=WorldOptions(scenes=500))
    assert src.kind == "world" and len(src) == 500 and src.has_condition
    concepts = all_concepts()
    heldout_rows = {concept_index()[c.id] for c in concepts if c.heldout}
    recs = src.load_many(list(range(40)))
    assert [r.key for r in recs] == [f"world:{i}" for i in range(40)]
    for r in recs:
        assert r.meta["class"] == "animal" and r.meta["concept"] not in heldout_rows
        assert "sks animal" in r.caption and r.caption.count("sks") == 1
        assert r.image.size == (64, 64) and r.mask.size == (64, 64) and r.condition.size == (64, 64)
        box = r.mask.point(lambda v: 255 if v > 127 else 0).getbbox()
        w, h = box[2] - box[0], box[3] - box[1]
        assert min(abs(w - s) for s in SIZES.values()) <= 5 and abs(h / w - GLYPH_H / 64) < 0.15, (w, h)
        # plain condition: the same glyph at the same place, in colour, on white
        assert np.asarray(r.condition)[0, 0].tolist() == [255, 255, 255]
        if r.meta["style"] == "color":
            assert np.array_equal(np.asarray(r.condition_mask), np.asarray(r.mask))
    assert recs[3].caption == src.load(3).caption and np.array_equal(np.asarray(recs[3].image),
                                                                      np.asarray(src.load(3).image))
    val = src.validation(6)
    assert len(val) == 6 and all(r.meta["concept"] in heldout_rows and r.key.startswith("world-heldout:") for r in val)
    every = open_source("world", class_noun="all", world=WorldOptions(scenes=50, condition="none"))
    recs = every.load_many(list(range(30)))
    assert len({r.meta["class"] for r in recs}) > 2 and all(r.condition is None for r in recs)
    assert all(f"sks {r.meta['class']}" in r.caption for r in recs) and set(every.report.skipped) == set()
    assert {r.meta["class"] for r in recs} <= set(CLASSES)
    with pytest.raises(InputError, match="no class 'giraffe'"):
        open_source("world", class_noun="giraffe")


def test_world_view_condition_is_another_photo(atlas):
    src = open_source("world", class_noun="person", identifier="<e4t>", world=WorldOptions(condition="view",
                                                                                           scenes=100))
    recs = src.load_many(list(range(12)))
    assert all("<e4t> person" in r.caption for r in recs)
    differs = [not np.array_equal(np.asarray(r.image), np.asarray(r.condition)) for r in recs]
    assert all(differs)
    corner = {tuple(np.asarray(r.condition)[0, 0]) for r in recs}
    assert len(corner) > 2, "the views have random backgrounds"


def test_world_batches_and_the_condition_on_the_device(atlas):
    src = open_source("world", class_noun="animal", world=WorldOptions(scenes=64))
    cfg = LoaderConfig(resolution=64, batch_size=4, workers=0, heldout=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the world has masks everywhere: no whole-image warning
        it = iter(build_loader(src, cfg, start_step=5))
        batch = next(it)
    assert batch["step"] == 5 and batch["pixels"].shape == (4, 3, 64, 64) and batch["has_mask"].all()
    assert batch["condition"].shape == (4, 3, 64, 64) and batch["condition_mask"].shape == (4, 1, 64, 64)
    assert batch["original_size"].tolist() == [[64, 64]] * 4 and batch["crop_top_left"].tolist() == [[0, 0]] * 4
    cond = subject_condition((batch["condition"] + 1) / 2, batch["condition_mask"], torch.Generator().manual_seed(0),
                             ConditionConfig(), size=32)
    assert cond.shape == (4, 3, 32, 32) and (cond[:, :, 0, 0] > 0.99).all()  # subject re-centred, corners white
    val = validation_batch(src, cfg)
    assert len(val["keys"]) == 3 and all(k.startswith("world-heldout:") for k in val["keys"])
