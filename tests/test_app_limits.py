"""What the app accepts: safe image decoding, concept names, class nouns, loopback detection, method defaults."""

from __future__ import annotations

import io
import struct
import zlib

import pytest
from PIL import Image

from boothkit.app.limits import (Limits, RequestError, check_class_noun, check_concept_name, check_prompt,
                                 decode_image)
from boothkit.app.registry import MethodSpec, default_method, ordered
from boothkit.app.server import AppConfig, is_loopback

LIM = Limits(max_upload_bytes=100_000, max_upload_pixels=512 * 512)


def png(w=64, h=64, mode="RGB", color=(200, 30, 30)) -> bytes:
    b = io.BytesIO()
    Image.new(mode, (w, h), color).save(b, format="PNG")
    return b.getvalue()


def png_claiming(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (a decompression-bomb shape): the IHDR is rewritten, CRC fixed."""
    data = bytearray(png(64, 64))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def test_decode_good_png_and_rgba_to_rgb():
    im = decode_image(png(), "a.png", LIM)
    assert im.size == (64, 64) and im.mode == "RGB" and im.getpixel((0, 0)) == (200, 30, 30)
    assert decode_image(png(mode="RGBA", color=(1, 2, 3, 255)), "b.png", LIM).mode == "RGB"


def test_decode_jpeg_and_webp():
    for fmt in ("JPEG", "WEBP"):
        b = io.BytesIO()
        Image.new("RGB", (80, 70), (0, 128, 0)).save(b, format=fmt)
        assert decode_image(b.getvalue(), "x", LIM).size == (80, 70)


@pytest.mark.parametrize("data, status, words", [
    (b"", 400, "empty"),
    (b"hello, not an image", 400, "not a JPEG, PNG or WebP image (it is text)"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 400, "photo"),
    (b"x" * 100_001, 413, "larger than the limit of 100000 bytes"),
])
def test_decode_refuses_bad_bytes(data, status, words):
    with pytest.raises(RequestError) as e:
        decode_image(data, "f.png", LIM)
    assert e.value.status == status and words in str(e.value) and "'f.png'" in str(e.value)


def test_decode_refuses_truncated_png():
    data = png(200, 200, color=(10, 20, 30))
    noisy = io.BytesIO()
    import random

    rnd = random.Random(0)
    Image.frombytes("RGB", (200, 200), bytes(rnd.randrange(256) for _ in range(200 * 200 * 3))).save(noisy, "PNG")
    for d in (data[: len(data) // 2], noisy.getvalue()[: len(noisy.getvalue()) // 2]):
        with pytest.raises(RequestError) as e:
            decode_image(d, "cut.png", LIM)
        assert e.value.status == 400 and "cut.png" in str(e.value)


def test_decode_refuses_too_many_pixels_before_decoding():
    with pytest.raises(RequestError) as e:
        decode_image(png(600, 600), "big.png", LIM)
    assert e.value.status == 413 and "'big.png': 600x600 pixels (0.36 MP) is over the 0.262 MP limit" in str(e.value)
    # a bomb: a few hundred bytes claiming 100000 x 100000 pixels is refused from its header
    with pytest.raises(RequestError) as e:
        decode_image(png_claiming(100_000, 100_000), "bomb.png", LIM)
    assert e.value.status == 413 and "pixels" in str(e.value)


def test_decode_refuses_small_and_other_formats():
    with pytest.raises(RequestError, match=r"'small.png': 32x32 is too small \(the shorter side must be at least 64 px"):
        decode_image(png(32, 32), "small.png", LIM)
    b = io.BytesIO()
    Image.new("RGB", (64, 64)).save(b, format="GIF")
    with pytest.raises(RequestError, match=r"'anim.gif': not a JPEG, PNG or WebP image \(it is a GIF image"):
        decode_image(b.getvalue(), "anim.gif", LIM)


@pytest.mark.parametrize("name", ["bruno", "my-dog_2", "a", "0x", "a" * 40])
def test_concept_names_ok(name):
    assert check_concept_name(name) == name


@pytest.mark.parametrize("name", ["", "..", "../evil", "a/b", "a\\b", "My Dog", "UPPER", "-lead", "_lead", "a" * 41,
                                  "dog.png", "é", "a\x00b", "<x>"])
def test_concept_names_refused(name):
    with pytest.raises(RequestError, match="is not allowed"):
        check_concept_name(name)


def test_class_noun_and_prompt():
    assert check_class_noun(" teddy bear ", LIM) == "teddy bear"
    for bad in ("", "dog; rm -rf /", "<script>", "x" * 41):
        with pytest.raises(RequestError):
            check_class_noun(bad, LIM)
    with pytest.raises(RequestError, match="1001 characters; the limit is 1000"):
        check_prompt("a" * 1001, "prompt", LIM)


def test_limits_validate():
    with pytest.raises(ValueError):
        Limits(min_images=5, max_images=2)
    with pytest.raises(ValueError):
        Limits(max_steps=0)
    assert Limits().max_body_bytes > 10 * Limits().max_upload_bytes


def test_loopback_and_config():
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.4") and not is_loopback("example.com")
    with pytest.raises(ValueError, match="at least 8"):
        AppConfig(token="short")
    with pytest.raises(ValueError):
        AppConfig(workers=0)


def _spec(name):
    return MethodSpec(name, tune=lambda *a, **k: None, apply=lambda p, d: p)


def test_default_method_prefers_instantbooth_then_fastest():
    assert default_method({}) is None
    assert default_method({n: _spec(n) for n in ("dreambooth", "ti", "lora", "custom")}) == "lora"
    assert default_method({n: _spec(n) for n in ("dreambooth", "instantbooth", "lora")}) == "instantbooth"
    assert default_method({n: _spec(n) for n in ("zzz", "dreambooth")}) == "dreambooth"
    assert ordered({n: _spec(n) for n in ("dreambooth", "ti", "lora")}) == ["lora", "ti", "dreambooth"]
