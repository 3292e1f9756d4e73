"""Shared helpers for the data tests (no tests here): one small dataset of real photos plus hostile files, written in
every layout `--data` reads (kohya folder, imagefolder, `datasets` save_to_disk, WebDataset shards), a tiny random
CLIPSeg, and a synthetic glyph atlas for the world source.

The dataset (class noun "pet"): 8 real photos (DreamBench dogs and cats, shrunk to about 100 px, three not square)
and one RGBA cut-out whose alpha is a disc; 4 records that fail only when decoded (truncated JPEG, zero bytes, text
named .png, a flat grey image); 2 that the scan skips (a caption without the class noun, no caption at all).
Annotations (all layouts but kohya's): dog_01 has a mask file (a rectangle), dog_02 a bbox.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
DREAMBENCH = Path("/work/shared/dreambench")
if not DREAMBENCH.is_dir():  # the checkout's shared folder, wherever it is
    DREAMBENCH = ROOT.parent / "shared" / "dreambench"

CLASS = "pet"
GOOD = ["dog_00", "dog_01", "dog_02", "dog_03", "dog_04", "cat_00", "cat_01", "cutout"]
AT_LOAD = {"truncated": "unreadable", "empty": "unreadable", "notimage": "unreadable", "blank": "blank"}
AT_SCAN = {"nonoun": "no_class_noun", "nocaption": "no_caption"}
MASK_BOX = (20, 16, 60, 56)  #: dog_01's mask file: 255 inside this rectangle (x0, y0, x1, y1)
BBOX = [10.0, 12.0, 70.0, 80.0]  #: dog_02's bbox
DISC = (24, 20, 76, 72)  #: the cut-out's opaque disc (ellipse box)


@dataclass
class Item:
    name: str
    ext: str  #: jpg or png
    data: bytes
    caption: str | None
    mask: bytes | None = None
    bbox: list | None = None


def _jpeg(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _photo(subject: str, i: int, size: tuple[int, int]) -> Image.Image:
    """A real photo shrunk (and cropped) to `size`, or a drawn stand-in when DreamBench is not here."""
    f = DREAMBENCH / subject / f"{i:02d}.jpg"
    if f.is_file():
        with Image.open(f) as im:
            im = im.convert("RGB")
            im.draft("RGB", (size[0] * 2, size[1] * 2))
            w, h = size
            s = max(w / im.width, h / im.height)
            im = im.resize((max(w, round(im.width * s)), max(h, round(im.height * s))), Image.Resampling.BICUBIC)
            left, top = (im.width - w) // 2, (im.height - h) // 2
            return im.crop((left, top, left + w, top + h))
    rng = np.random.default_rng(hash((subject, i)) % 2**32)
    a = (rng.random((size[1] // 8, size[0] // 8, 3)) * 255).astype(np.uint8)
    return Image.fromarray(a).resize(size, Image.Resampling.BICUBIC)


def items() -> list[Item]:
    """The dataset, in a fixed order."""
    sizes = {"dog_00": (112, 112), "dog_01": (96, 96), "dog_02": (128, 96), "dog_03": (96, 128),
             "dog_04": (104, 104), "cat_00": (120, 90), "cat_01": (100, 100)}
    out = []
    for name, size in sizes.items():
        subject, i = name.split("_")
        caption = f"a photo of a {'Pet' if i == '00' else 'pet'} {subject} on the floor"
        mask = bbox = None
        if name == "dog_01":
            m = Image.new("L", size, 0)
            m.paste(255, MASK_BOX)
            mask = _png(m)
        if name == "dog_02":
            bbox = BBOX
        out.append(Item(name, "jpg", _jpeg(_photo(subject, int(i), size)), caption, mask, bbox))
    cut = _photo("backpack", 0, (100, 96)).convert("RGBA")
    alpha = Image.new("L", cut.size, 0)
    ImageDraw.Draw(alpha).ellipse(DISC, fill=255)
    cut.putalpha(alpha)
    out.append(Item("cutout", "png", _png(cut), "a pet backpack, cut out"))
    good_jpeg = _jpeg(_photo("dog", 0, (96, 96)))
    out += [Item("truncated", "jpg", good_jpeg[:len(good_jpeg) // 2], "a pet, truncated"),
            Item("empty", "jpg", b"", "an empty pet"),
            Item("notimage", "png", b"this is text, not a picture\n", "a pet that is text"),
            Item("blank", "png", _png(Image.new("RGB", (96, 96), (128, 128, 128))), "a blank pet"),
            Item("nonoun", "jpg", good_jpeg, "a photo of a backpack"),
            Item("nocaption", "jpg", good_jpeg, None)]
    return out


# --- the layouts -------------------------------------------------------------------------------------------------

def write_kohya(root: Path) -> Path:
    """photo.ext + photo.txt (no .txt for the caption-less one); masks and bboxes have no place in this layout."""
    root.mkdir(parents=True, exist_ok=True)
    for it in items():
        (root / f"{it.name}.{it.ext}").write_bytes(it.data)
        if it.caption is not None:
            (root / f"{it.name}.txt").write_text(it.caption + "\n")
    return root


def write_imagefolder(root: Path) -> Path:
    """images/ + masks/ + metadata.jsonl (file_name, text, mask, bbox)."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    lines = []
    for it in items():
        (root / "images" / f"{it.name}.{it.ext}").write_bytes(it.data)
        row = {"file_name": f"images/{it.name}.{it.ext}", "text": it.caption or ""}
        if it.mask is not None:
            (root / "masks" / f"{it.name}.png").write_bytes(it.mask)
            row["mask"] = f"masks/{it.name}.png"
        if it.bbox is not None:
            row["bbox"] = it.bbox
        lines.append(json.dumps(row))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


def write_hf(root: Path) -> Path:
    """A `datasets` save_to_disk folder: image (Image feature, bytes), text, mask (Image), bbox, key."""
    from datasets import Dataset, Features, Image as ImageFeature, List, Value

    its = items()
    features = Features({"image": ImageFeature(), "text": Value("string"), "mask": ImageFeature(),
                         "bbox": List(Value("float32")), "key": Value("string")})
    ds = Dataset.from_dict({"image": [{"bytes": it.data, "path": None} for it in its],
                            "text": [it.caption for it in its],
                            "mask": [{"bytes": it.mask, "path": None} if it.mask else None for it in its],
                            "bbox": [it.bbox for it in its], "key": [it.name for it in its]}, features=features)
    ds.save_to_disk(str(root))
    return root


def write_wds(root: Path, shards: int = 4) -> str:
    """`shards` .tar files (samples dealt round-robin), written with webdataset.TarWriter; -> a brace pattern."""
    import webdataset as wds

    root.mkdir(parents=True, exist_ok=True)
    writers = [wds.TarWriter(str(root / f"shard-{i:03d}.tar"), encoder=False) for i in range(shards)]
    for n, it in enumerate(items()):
        sample = {"__key__": it.name, it.ext: it.data}
        if it.caption is not None:
            sample["txt"] = it.caption.encode()
        if it.mask is not None:
            sample["mask.png"] = it.mask
        if it.bbox is not None:
            sample["json"] = json.dumps({"bbox": it.bbox}).encode()
        writers[n % shards].write(sample)
    for w in writers:
        w.close()
    return str(root / f"shard-{{000..{shards - 1:03d}}}.tar")


def name_of(key: str) -> str:
    """A record's key -> the item name (keys are shard#name for shards, images/name for the imagefolder)."""
    return key.split("#")[-1].split("/")[-1]


@pytest.fixture(scope="session")
def layouts(tmp_path_factory) -> dict[str, str]:
    """The dataset in every layout: {kind: --data value}."""
    base = tmp_path_factory.mktemp("data-layouts")
    return {"folder": str(write_kohya(base / "kohya")), "imagefolder": str(write_imagefolder(base / "imagefolder")),
            "hf": str(write_hf(base / "hf")), "wds": write_wds(base / "wds")}


# --- a tiny random CLIPSeg -----------------------------------------------------------------------------------------

def build_tiny_clipseg(folder: Path, bias: float | None = None) -> Path:
    """A random CLIPSegForImageSegmentation with tiny widths (32 px input, 8 px patches) and its processor (the
    world's CLIP tokenizer + a ViT image processor), saved with save_pretrained. bias: when given, the decoder's last
    layer outputs exactly this logit everywhere (a model whose answer is known)."""
    import torch
    from transformers import (CLIPSegConfig, CLIPSegForImageSegmentation, CLIPSegProcessor, CLIPTokenizer,
                              ViTImageProcessor)

    from boothkit.pipeline import world_path

    tok = CLIPTokenizer.from_pretrained(str(world_path() / "tokenizer"))
    cfg = CLIPSegConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16, extract_layers=[1, 2], reduce_dim=8, decoder_num_attention_heads=2,
        decoder_intermediate_size=16)
    torch.manual_seed(0)
    model = CLIPSegForImageSegmentation(cfg)
    if bias is not None:
        with torch.no_grad():
            model.decoder.transposed_convolution.weight.zero_()
            model.decoder.transposed_convolution.bias.fill_(bias)
    processor = CLIPSegProcessor(image_processor=ViTImageProcessor(size={"height": 32, "width": 32},
                                                                   image_mean=[0.5] * 3, image_std=[0.5] * 3),
                                 tokenizer=tok)
    model.save_pretrained(str(folder))
    processor.save_pretrained(str(folder))
    return folder


# --- a synthetic glyph atlas ---------------------------------------------------------------------------------------

GLYPH_H = 40  #: synthetic glyphs are 64 wide, 40 high (centred in the 64 px cell): a known box


def synthetic_atlas(path: Path) -> Path:
    """Every world concept as a flat-coloured 64 x 40 rectangle (its own colour) with a black 2 px contour (what the
    outline style keeps), saved where BOOTHKIT_ATLAS points: the world source then renders in milliseconds with
    masks whose boxes are known."""
    import torch
    from safetensors.torch import save_file

    from boothkit.world.concepts import all_concepts

    n = len(all_concepts())
    rows = torch.arange(n)
    atlas = torch.zeros(n, 4, 64, 64, dtype=torch.uint8)
    top = (64 - GLYPH_H) // 2
    for c, mult in enumerate((37, 91, 53)):
        atlas[:, c, top:top + GLYPH_H, :] = ((rows * mult) % 200 + 30).view(n, 1, 1).to(torch.uint8)
    atlas[:, :3, top:top + 2, :] = atlas[:, :3, top + GLYPH_H - 2:top + GLYPH_H, :] = 0
    atlas[:, :3, top:top + GLYPH_H, :2] = atlas[:, :3, top:top + GLYPH_H, -2:] = 0
    atlas[:, 3, top:top + GLYPH_H, :] = 255
    save_file({"atlas": atlas}, str(path))
    return path
