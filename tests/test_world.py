"""The emoji world: concepts, split, captions, rendering and pixel measurement."""

import collections
import random

import pytest
import torch

from boothkit.world.atlas import load_atlas
from boothkit.world.concepts import (CLASSES, SKIN_TONES, all_concepts, concept_index, get, heldout_concepts,
                                     readable_name, train_concepts)
from boothkit.world.data import SceneStream
from boothkit.world.measure import measure, measure_style
from boothkit.world.references import render_references, renderer
from boothkit.world.render import SceneBatch
from boothkit.world.scenes import BACKGROUNDS, POSITIONS, SIZES, STYLES, SceneSampler, fixed_scene


def test_classes_and_split_sizes():
    cs = all_concepts()
    assert len(CLASSES) >= 5 and set(c.cls for c in cs) == set(CLASSES)
    held = heldout_concepts()
    assert len(held) >= 100
    per_class = collections.Counter(c.cls for c in held)
    assert len(per_class) >= 4 and per_class["person"] >= 10 and per_class["animal"] >= 10
    assert len({c.name for c in cs}) == len(cs), "names must be unique: captions use them"


def test_split_is_by_base_emoji_and_disjoint():
    train_bases = {c.base for c in train_concepts()}
    held_bases = {c.base for c in heldout_concepts()}
    assert not train_bases & held_bases, "a skin-tone variant must share its base emoji's side"
    assert not {c.id for c in train_concepts()} & {c.id for c in heldout_concepts()}


def test_readable_names():
    assert readable_name(":woman_firefighter_dark_skin_tone:") == "woman firefighter, dark skin tone"
    assert readable_name(":man_dark_skin_tone_bald:") == "man bald, dark skin tone"
    assert readable_name(":dog_face:") == "dog face"
    toned = [c for c in all_concepts() if any(t in c.name for t in SKIN_TONES.values())]
    assert toned and all(c.name.endswith("skin tone") and ", " in c.name for c in toned)
    assert get("dog face").cls == "animal"


def test_atlas_has_one_distinct_glyph_per_concept():
    atlas = load_atlas(progress=False)
    assert atlas.shape == (len(all_concepts()), 4, 64, 64) and atlas.dtype == torch.uint8
    flat = atlas.reshape(len(atlas), -1)
    assert len(torch.unique(flat, dim=0)) == len(atlas), "two concepts draw the same glyph"
    assert (atlas[:, 3].flatten(1).amax(1) > 200).all(), "every glyph has opaque pixels"


def _pool():
    idx = concept_index()
    return [(idx[c.id], c) for c in train_concepts()]


def test_captions_name_attributes_and_use_class_nouns():
    rng = random.Random(0)
    sampler = SceneSampler(_pool())
    scenes = [sampler.sample(rng) for _ in range(400)]
    class_only = [s for s in scenes if any(o.name in CLASSES for o in s.objects)]
    assert class_only, "some captions must name only the class noun (the class prior)"
    assert any(len(s.objects) == 2 for s in scenes)
    for s in scenes:
        if s.named["bg"]:
            assert s.bg in s.caption
        for o in s.objects:
            assert o.name in s.caption
            if o.style != "color":
                assert o.style in s.caption
            if s.named["size"]:
                assert o.size in s.caption
    # templates vary
    assert len({s.caption.split(" ")[0] for s in scenes}) >= 3


def test_render_matches_metadata_from_pixels():
    idx = concept_index()
    rng = random.Random(1)
    scenes = []
    for _ in range(60):
        c = rng.choice(train_concepts())
        size = rng.choice(list(SIZES))
        scenes.append(fixed_scene(idx[c.id], c, bg=rng.choice(list(BACKGROUNDS)), size=size,
                                  position=rng.choice(POSITIONS), style=rng.choice(STYLES)))
    images, masks = renderer().render(SceneBatch.from_scenes(scenes), return_masks=True)
    assert images.shape == (60, 3, 64, 64) and masks.shape == (60, 2, 64, 64)
    assert masks[:, 1].sum() == 0 and (masks[:, 0].flatten(1).sum(1) > 10).all()
    found = measure(images)
    assert sum(m.bg == s.bg for m, s in zip(found, scenes)) == 60
    assert sum(m.size == s.objects[0].size for m, s in zip(found, scenes)) >= 58
    assert sum(m.position == s.objects[0].position for m, s in zip(found, scenes)) >= 58
    styles = measure_style(images, [s.objects[0].concept for s in scenes], found, renderer())
    assert sum(st == s.objects[0].style for st, s in zip(styles, scenes)) >= 55


def test_measurement_is_not_fooled_by_a_wrong_background():
    idx = concept_index()
    c = train_concepts()[0]
    red = renderer().render(SceneBatch.from_scenes([fixed_scene(idx[c.id], c, bg="red")]))
    assert measure(red)[0].bg == "red"
    blank = torch.ones(1, 3, 64, 64) * torch.tensor([40, 100, 220]).view(1, 3, 1, 1) / 255
    m = measure(blank)[0]
    assert m.bg == "blue" and m.box is None and m.size is None


def test_upside_down_is_a_vertical_flip():
    idx = concept_index()
    c = get("dog face")
    up, down = renderer().render(SceneBatch.from_scenes([
        fixed_scene(idx[c.id], c, size="large"), fixed_scene(idx[c.id], c, size="large", style="upside-down")]))
    assert torch.allclose(up.flip(-2), down, atol=0.05)
    assert not torch.allclose(up, down, atol=0.05)


def test_scene_stream_is_a_function_of_seed_and_step():
    pool = _pool()
    a = SceneStream(pool, 8, seed=3).make(5)
    b = SceneStream(pool, 8, seed=3, start_step=5).make(5)
    c = SceneStream(pool, 8, seed=3).make(6)
    assert torch.equal(a["concept"], b["concept"]) and torch.equal(a["cx"], b["cx"])
    assert not torch.equal(a["concept"], c["concept"])


def test_references_vary_context_but_not_subject():
    subject = heldout_concepts("animal")[0]
    images, scenes = render_references(subject, n=5, seed=0)
    assert len(images) == 5 and len({s.bg for s in scenes}) == 5
    assert all(s.objects[0].concept == concept_index()[subject.id] for s in scenes)
    again, _ = render_references(subject, n=5, seed=0)
    assert [im.tobytes() for im in images] == [im.tobytes() for im in again]


@pytest.mark.parametrize("workers", [2])
def test_loader_with_workers_yields_the_same_stream(workers):
    from boothkit.world.data import scene_loader

    pool = _pool()
    it = iter(scene_loader(SceneStream(pool, 4, seed=9), workers))
    got = [next(it) for _ in range(4)]
    ref = SceneStream(pool, 4, seed=9)
    for k, item in enumerate(got):
        assert item["step"] == k
        assert torch.equal(item["concept"], ref.make(k)["concept"])
