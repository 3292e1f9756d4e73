"""The loader: batch k is a pure function of (seed, step, rank) for map-style sources (fresh loaders, 0 or 2 workers,
resumed), ranks never share a record in a step, unusable records are replaced and counted exactly, crops carry
SDXL's micro-conditioning, held-out records never train; WebDataset streams are split without duplicates and a
resumed stream continues exactly. Workers always exit (DataLoader timeouts; checked)."""

from __future__ import annotations

import multiprocessing
import pickle
import warnings

import numpy as np
import pytest
import torch

from boothkit.data import LoaderConfig, build_loader, open_source, validation_batch
from boothkit.data.loader import MapBatches, StreamBatches, crop_window
from boothkit.inputs import InputError
from test_data_support import AT_LOAD, CLASS, GOOD, layouts, name_of  # noqa: F401

FAST = {"resolution": 32, "batch_size": 3, "workers": 0, "timeout": 60.0}


def _open(spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_source(spec, class_noun=CLASS)


def _take(source, n, quiet=True, **kw):
    """The first n batches of a fresh loader (workers shut down before returning); quiet: no warnings."""
    cfg = LoaderConfig(**{**FAST, **{k: v for k, v in kw.items() if k in LoaderConfig.__dataclass_fields__}})
    other = {k: v for k, v in kw.items() if k not in LoaderConfig.__dataclass_fields__}
    with warnings.catch_warnings():
        if quiet:
            warnings.simplefilter("ignore")
        loader = build_loader(source, cfg, **other)
        it = iter(loader)
        out = [next(it) for _ in range(n)]
    del it
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert torch.equal(a[k], b[k]), k
        else:
            assert a[k] == b[k], k


@pytest.fixture(scope="module")
def folder(layouts):
    return _open(layouts["folder"])


def test_batches_are_a_pure_function_of_the_step(folder):
    first = _take(folder, 4, heldout=0)
    again = _take(folder, 4, heldout=0)
    with_workers = _take(folder, 4, heldout=0, workers=2)
    resumed = _take(folder, 2, heldout=0, start_step=2)
    for a, b, c in zip(first, again, with_workers):
        _same(a, b)
        _same(a, c)
    for a, b in zip(first[2:], resumed):
        _same(a, b)
    assert [b["step"] for b in first] == [0, 1, 2, 3]
    assert not multiprocessing.active_children(), "loader workers still running"
    b = first[0]
    assert b["pixels"].shape == (3, 3, 32, 32) and b["pixels"].dtype == torch.float32
    assert -1 <= b["pixels"].min() and b["pixels"].max() <= 1
    assert b["mask"].shape == (3, 1, 32, 32) and b["has_mask"].shape == (3,)
    assert b["original_size"].shape == (3, 2) and b["crop_top_left"].shape == (3, 2)
    assert all(c.count("sks pet") == 1 or "sks Pet" in c for c in b["captions"]) and b["class_nouns"] == [CLASS] * 3
    # a different seed is a different order
    other = _take(folder, 1, heldout=0, seed=1)[0]
    assert other["keys"] != b["keys"] or not torch.equal(other["pixels"], b["pixels"])


def test_uint8_batches_become_the_float_ones_on_the_device(folder, layouts):
    from boothkit.data import to_device

    floats = _take(folder, 2, heldout=0)
    small = _take(folder, 2, heldout=0, uint8=True)
    for f, u in zip(floats, small):
        assert u["pixels"].dtype == torch.uint8 and u["mask"].dtype == torch.uint8
        moved = to_device(u, "cpu")
        assert moved.keys() == f.keys() and moved["captions"] == f["captions"]
        for k in ("pixels", "mask"):
            assert moved[k].dtype == torch.float32 and torch.allclose(moved[k], f[k], atol=1e-6), k
        assert torch.equal(to_device(f, "cpu")["pixels"], f["pixels"])  # float batches pass through


def test_grad_accum_numbers_micro_steps(folder):
    batches = _take(folder, 4, heldout=0, grad_accum=2)
    assert [(b["step"], b["micro"]) for b in batches] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    resumed = _take(folder, 2, heldout=0, grad_accum=2, start_step=1)
    _same(batches[2], resumed[0])
    _same(batches[3], resumed[1])


def test_one_epoch_replaces_and_counts_unusable_records_exactly(folder):
    """12 usable records, batches of 4: one epoch is 3 batches; each unusable record is counted once, never shows."""
    from boothkit.data import loader

    loader._WARNED.clear()  # warnings are once per file and process: earlier tests saw these files
    with pytest.warns(UserWarning) as caught:
        batches = _take(folder, 3, quiet=False, heldout=0, batch_size=4)
    keys = [name_of(k) for b in batches for k in b["keys"]]
    assert set(keys) == set(GOOD), "every usable record drawn, no unusable one"
    total: dict = {}
    for b in batches:
        for reason, n in b["skipped"].items():
            total[reason] = total.get(reason, 0) + n
    assert total == {"unreadable": 3, "blank": 1}
    text = "\n".join(str(w.message) for w in caught)
    for name in AT_LOAD:
        assert f"{name}." in text, f"no warning names {name}"
    assert "skipped (blank):" in text and "skipped (unreadable):" in text


def test_ranks_never_share_a_record_in_a_step(folder):
    r0 = _take(folder, 4, heldout=0, batch_size=2, rank=0, world_size=2)
    r1 = _take(folder, 4, heldout=0, batch_size=2, rank=1, world_size=2)
    ds = MapBatches(folder, LoaderConfig(**{**FAST, "batch_size": 2, "heldout": 0}), 1, 2)
    for a, b in zip(r0, r1):
        assert not set(a["keys"]) & set(b["keys"]) or a["skipped"] or b["skipped"]
    # by position (before any stand-in for an unusable record): disjoint in every step, and one epoch covers all
    pos = [ds.positions(k) for k in range(ds.batches_per_epoch)]
    other = MapBatches(folder, LoaderConfig(**{**FAST, "batch_size": 2, "heldout": 0}), 0, 2)
    mine = [p for _, ps in pos for p in ps]
    theirs = [p for k in range(other.batches_per_epoch) for p in other.positions(k)[1]]
    assert not set(mine) & set(theirs) and sorted(mine + theirs) == list(range(12))
    with pytest.raises(InputError, match="cannot fill one batch of 8 on each of 2"):
        MapBatches(folder, LoaderConfig(**{**FAST, "batch_size": 8}), 0, 2)
    with pytest.raises(InputError, match="rank 2"):
        build_loader(folder, LoaderConfig(**FAST), rank=2, world_size=2)


def test_heldout_records_never_train_and_make_the_validation_batch(folder):
    cfg = LoaderConfig(**{**FAST, "heldout": 2, "batch_size": 5})
    val = validation_batch(folder, cfg)
    assert val is not None and len(val["keys"]) <= 2 and val["pixels"].shape[1:] == (3, 32, 32)
    held = {folder.key(i) for i in folder.heldout_indices(2)}
    batches = _take(folder, 4, heldout=2, batch_size=5)
    assert not held & {k for b in batches for k in b["keys"]}
    _same(val, validation_batch(folder, cfg))


def test_crops_carry_sdxl_micro_conditioning(folder):
    # a 128x96 photo at S = 32: resized to 43x32 (the short side is S); centre crop at left (43 - 32) / 2 -> 6
    sx, sy, rw, rh, top, left = crop_window(128, 96, 32, "center", 0.0)
    assert (rw, rh, top, left) == (43, 32, 0, 6)
    assert crop_window(128, 96, 32, "random", 0.999)[4:] == (0, 11)
    assert crop_window(96, 128, 32, "random", 0.0)[4:] == (0, 0)
    i = [folder.key(j) for j in range(len(folder))].index("dog_02")
    rec = folder.load(i)
    from boothkit.data.loader import prepare

    cfg = LoaderConfig(**{**FAST, "crop": "center"})
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = prepare(rec, LoaderConfig(**{**FAST, "flip": 0.0}), g())
    flipped = prepare(rec, LoaderConfig(**{**FAST, "flip": 1.0}), g())
    assert plain["original_size"] == (96, 128) and plain["crop_top_left"] == (0, 6)
    assert flipped["crop_top_left"] == (0, 43 - 6 - 32)
    assert np.array_equal(flipped["pixels"], plain["pixels"][:, ::-1])  # [S, S, 3] uint8 arrays
    random = [prepare(rec, LoaderConfig(**{**FAST, "crop": "random", "flip": 0.0}),
                      torch.Generator().manual_seed(s))["crop_top_left"] for s in range(20)]
    assert {t for t, _ in random} == {0} and len({lft for _, lft in random}) > 3
    assert all(0 <= lft <= 43 - 32 for _, lft in random)
    assert cfg.crop == "center"


def test_loaders_pickle_for_spawned_workers(folder, layouts):
    cfg = LoaderConfig(**{**FAST, "heldout": 0})
    ds = pickle.loads(pickle.dumps(MapBatches(folder, cfg)))
    _same(ds.batch(1), MapBatches(folder, cfg).batch(1))
    wds = _open(layouts["wds"])
    assert pickle.loads(pickle.dumps(StreamBatches(wds, LoaderConfig(**{**FAST, "streams": 2})))).n == 2


# --- WebDataset --------------------------------------------------------------------------------------------------

WDS = {"batch_size": 2, "streams": 2, "shuffle_buffer": 4, "heldout": 0}


def test_wds_stream_is_the_same_with_0_or_2_workers_and_resumes_exactly(layouts):
    src = _open(layouts["wds"])
    first = _take(src, 6, **WDS)
    with_workers = _take(src, 6, **WDS, workers=2)
    resumed = _take(src, 3, **WDS, start_step=3)
    resumed_workers = _take(src, 2, **WDS, workers=2, start_step=3)
    for a, b in zip(first, with_workers):
        _same(a, b)
    for a, b in zip(first[3:], resumed):
        assert a["keys"] == b["keys"]
        assert torch.equal(a["pixels"], b["pixels"]) and a["step"] == b["step"]
    for a, b in zip(first[3:], resumed_workers):
        assert a["keys"] == b["keys"] and torch.equal(a["pixels"], b["pixels"])
    assert not multiprocessing.active_children(), "loader workers still running"
    # two streams: batch k from stream k mod 2, and the streams read different shards
    shards = [{k.split("#")[0] for k in b["keys"]} for b in first]
    assert not (shards[0] | shards[2]) & (shards[1] | shards[3])


def test_wds_ranks_read_disjoint_shards(layouts):
    src = _open(layouts["wds"])
    cfg = {**WDS, "streams": 1}
    r0 = _take(src, 5, **cfg, rank=0, world_size=2)
    r1 = _take(src, 5, **cfg, rank=1, world_size=2)
    k0 = {k for b in r0 for k in b["keys"]}
    k1 = {k for b in r1 for k in b["keys"]}
    assert k0 and k1 and not k0 & k1
    assert {name_of(k) for k in k0 | k1} <= set(GOOD)  # stand-ins for unusable samples are usable ones
    with pytest.raises(InputError, match="4 shard\\(s\\) for 2 process\\(es\\) x 4 stream\\(s\\)"):
        build_loader(src, LoaderConfig(**{**FAST, **cfg, "streams": 4}), rank=0, world_size=2)
    with pytest.raises(InputError, match="multiple of workers"):
        LoaderConfig(streams=3, workers=2)


def test_wds_counts_and_heldout(layouts):
    src = _open(layouts["wds"])
    held = {r.key for r in src.heldout(2)}
    assert len(held) == 2
    # no shuffle buffer, one stream: 5 batches of 2 are exactly the 10 usable training samples of one pass
    batches = _take(src, 6, **{**WDS, "heldout": 2, "streams": 1, "shuffle_buffer": 0})
    assert not held & {k for b in batches for k in b["keys"]}

    def total(bs):
        out: dict = {}
        for b in bs:
            for reason, n in b["skipped"].items():
                out[reason] = out.get(reason, 0) + n
        return out

    first_pass = total(batches[:5])
    assert first_pass["unreadable"] == 3 and first_pass["blank"] == 1
    assert first_pass.get("no_caption", 0) <= 1 and first_pass.get("no_class_noun", 0) <= 1
    assert total(batches)["no_caption"] >= 1 and total(batches)["no_class_noun"] >= 1  # read by the 6th batch
    val = validation_batch(src, LoaderConfig(**{**FAST, "heldout": 2}))
    assert val is not None and set(val["keys"]) == held
