"""Subject photo loading and validation: every bad-input case gives a clear error or a named warning."""

from __future__ import annotations


import numpy as np
import pytest
from PIL import Image, ImageDraw

from boothkit.inputs import InputError, check_out, load_image, load_subject_images, publish, staging_dir


def _photo(path, size=(80, 70), color=(200, 30, 30), mode="RGB", **save):
    """A photo of something: a `color` ground with a dark square on it (a one-colour image is blank)."""
    im = Image.new(mode, size, color)
    dark = {"L": 0, "CMYK": (0, 0, 0, 255)}.get(mode, (0, 0, 0))
    ImageDraw.Draw(im).rectangle([size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2], fill=dark)
    im.save(path, **save)
    return path


def test_formats_are_converted_to_rgb(tmp_path):
    _photo(tmp_path / "a.jpg")
    _photo(tmp_path / "b.png", mode="L", color=128)
    _photo(tmp_path / "c.webp")
    _photo(tmp_path / "d.jpg", mode="CMYK", color=(0, 255, 255, 0))
    grey16 = np.full((70, 90), 40000, dtype=np.uint16)
    grey16[40:, 50:] = 1000  # something in the picture (a flat image is blank)
    Image.fromarray(grey16).save(tmp_path / "e.png")  # 16-bit grey
    images = load_subject_images(tmp_path)
    assert len(images) == 5 and all(im.mode == "RGB" for im in images)
    grey16 = np.asarray(images[4])
    assert abs(int(grey16[0, 0, 0]) - round(40000 / 65535 * 255)) <= 1  # rescaled, not clipped to 255


def test_rgba_is_composited_on_white(tmp_path):
    im = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    im.putpixel((0, 0), (0, 0, 255, 255))
    im.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.mode == "RGB" and out.getpixel((5, 5)) == (255, 255, 255) and out.getpixel((0, 0)) == (0, 0, 255)


def test_exif_orientation_is_applied(tmp_path):
    im = Image.new("RGB", (120, 80), (0, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    im.save(tmp_path / "a.jpg", exif=exif)
    assert load_image(tmp_path / "a.jpg").size == (80, 120)


def test_empty_folder(tmp_path):
    with pytest.raises(InputError, match="empty"):
        load_subject_images(tmp_path)


def test_missing_folder(tmp_path):
    with pytest.raises(InputError, match="nope: no such file or folder"):
        load_subject_images(tmp_path / "nope")


def test_only_non_images(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(InputError, match=r"notes.md: not a JPEG, PNG or WebP image \(it is text\)"):
        load_subject_images(tmp_path)
    (tmp_path / "notes.md").unlink()
    (tmp_path / "a.txt").write_text("sks dog")  # a caption file is not a photo either
    with pytest.raises(InputError, match="only 1 caption file"):
        load_subject_images(tmp_path)


def test_corrupt_image(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    with pytest.raises(InputError, match="bad.png.*not a readable image"):
        load_subject_images(tmp_path)


def test_truncated_image(tmp_path):
    arr = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "t.jpg", quality=95)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="t.jpg.*corrupt or truncated"):
        load_subject_images(tmp_path)


def test_too_small(tmp_path):
    _photo(tmp_path / "s.png", size=(63, 200))
    with pytest.raises(InputError, match="s.png.*63x200 is too small"):
        load_subject_images(tmp_path)


def test_decompression_bomb(tmp_path):
    Image.new("1", (8000, 7000)).save(tmp_path / "bomb.png")  # 56 MP, a few kB on disk
    with pytest.raises(InputError, match="bomb.png.*56 MP.*decompression bomb"):
        load_subject_images(tmp_path)


def test_bad_files_skipped_with_a_warning_naming_each(tmp_path):
    _photo(tmp_path / "good1.png")
    _photo(tmp_path / "good2.jpg")
    (tmp_path / "readme.md").write_text("x")
    _photo(tmp_path / "tiny.png", size=(10, 10))
    with pytest.warns(UserWarning, match="skipped") as rec:
        images = load_subject_images(tmp_path)
    assert len(images) == 2
    msgs = [str(w.message) for w in rec if "skipped" in str(w.message)]
    assert len(msgs) == 2 and all("\n" not in m for m in msgs)  # one line per file: the file and the reason
    assert any("readme.md: not a JPEG, PNG or WebP image" in m for m in msgs)
    assert any("tiny.png: 10x10 is too small" in m for m in msgs)


def test_too_many_photos(tmp_path):
    for i in range(21):
        _photo(tmp_path / f"{i}.png")
    with pytest.raises(InputError, match="at most 20"):
        load_subject_images(tmp_path)


def test_out_exists_and_is_not_a_concept(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(InputError, match="not a boothkit concept folder"):
        check_out(out)
    assert (out / "precious.txt").read_text() == "keep me"


def test_out_that_is_a_concept_or_empty_is_accepted(tmp_path):
    (tmp_path / "empty").mkdir()
    check_out(tmp_path / "empty")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "concept.json").write_text("{}")
    check_out(tmp_path / "c")


def test_staging_then_publish_replaces_atomically(tmp_path):
    out = tmp_path / "concept"
    out.mkdir()
    (out / "concept.json").write_text('{"old": 1}')
    staged = staging_dir(out)
    (staged / "concept.json").write_text('{"new": 1}')
    publish(staged, out)
    assert (out / "concept.json").read_text() == '{"new": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["concept"]


def test_tune_with_bad_photos_writes_nothing(tmp_path):
    from boothkit.methods import tune

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "x.txt").write_text("x")
    with pytest.raises(InputError):
        tune("lora", photos, "dog", tmp_path / "concepts" / "rat", steps=2)
    assert not (tmp_path / "concepts").exists()  # not even --out's parent: nothing is created before the checks


def test_unknown_method_and_bad_config(tmp_path):
    from boothkit.methods import tune

    with pytest.raises(InputError, match="unknown method"):
        tune("nope", tmp_path, "dog", tmp_path / "o")
    with pytest.raises(InputError, match="unknown key"):
        tune("lora", tmp_path, "dog", tmp_path / "o", config={"rnak": 4})
    with pytest.raises(InputError, match="rank must be at least 1"):
        tune("lora", tmp_path, "dog", tmp_path / "o", config={"rank": 0})
    with pytest.raises(InputError, match="steps must be at least 1"):
        tune("lora", tmp_path, "dog", tmp_path / "o", steps=0)


def test_images_may_be_one_photo_or_a_list_of_photos_and_folders(tmp_path):
    folder = tmp_path / "set"
    folder.mkdir()
    _photo(folder / "b.png", color=(0, 200, 0))
    _photo(folder / "a.png", color=(0, 0, 200))
    one = _photo(tmp_path / "one.jpg")
    assert len(load_subject_images(one)) == 1  # a photo file on purpose, not only a folder
    images = load_subject_images([one, folder])  # list order, then each folder's photos by file name
    assert [im.getpixel((1, 1)) for im in images][1:] == [(0, 0, 200), (0, 200, 0)]
    assert np.abs(np.asarray(images[0], dtype=int)[1, 1] - (200, 30, 30)).max() <= 3  # the JPEG
    with pytest.raises(InputError, match=r"--images .*nope.png: no such file or folder"):
        load_subject_images([one, tmp_path / "nope.png"])


def test_a_text_file_given_as_images_is_named_as_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("sks dog")
    with pytest.raises(InputError) as e:
        load_subject_images(tmp_path / "notes.txt")
    assert "notes.txt: a caption file (.txt), not a photo" in str(e.value) and "folder is empty" not in str(e.value)
    (tmp_path / "photo.png").write_bytes(b"")
    with pytest.raises(InputError) as e:
        load_subject_images(tmp_path / "photo.png")  # one file, one line: no folder wording, no list
    assert str(e.value) == f"--images {tmp_path / 'photo.png'}: the file is empty (0 bytes)"


def test_blank_photos_are_skipped_among_good_ones_and_refused_alone(tmp_path):
    _photo(tmp_path / "good.png")
    Image.new("RGBA", (80, 70), (255, 0, 0, 0)).save(tmp_path / "clear.png")
    Image.new("RGB", (80, 70), (40, 120, 200)).save(tmp_path / "flat.jpg")
    with pytest.warns(UserWarning) as rec:
        images = load_subject_images(tmp_path)
    assert len(images) == 1
    msgs = sorted(str(w.message) for w in rec)
    assert msgs[0] == f"skipped {tmp_path / 'clear.png'}: blank: every pixel is transparent (nothing to learn from)"
    assert msgs[1].startswith(f"skipped {tmp_path / 'flat.jpg'}: blank: a single colour (")
    (tmp_path / "good.png").unlink()
    with pytest.raises(InputError, match="every photo is blank") as e:
        load_subject_images(tmp_path)
    assert "clear.png" in str(e.value) and "flat.jpg" in str(e.value)


def test_check_out_creates_nothing(tmp_path):
    out = tmp_path / "new" / "deep" / "concept"
    assert check_out(out) == out
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is not writable: .*file is a file"):
        check_out(tmp_path / "file" / "sub" / "concept")
