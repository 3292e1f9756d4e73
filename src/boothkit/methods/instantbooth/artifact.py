"""The InstantBooth artifact: one safetensors file with prefixed keys and a json beside it (like IP-Adapter's).

    <dir>/instantbooth.safetensors   concept_head.*, patch_head.*, adapters.<block>.*   (safetensors only)
    <dir>/instantbooth.json          method config, sizes, base model + hash, preprocessing, training summary

The json holds everything needed to rebuild the modules without boothkit's training code. The folder is written
into a temporary sibling and renamed into place, so a crash never leaves half an artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...inputs import InputError, staged_folder
from .config import InstantBoothConfig
from .modules import InstantBooth

WEIGHTS = "instantbooth.safetensors"
META = "instantbooth.json"
FORMAT = "boothkit-instantbooth"
PREFIXES = ("concept_head.", "patch_head.", "adapters.")


def is_artifact(folder: str | Path) -> bool:
    return (Path(folder) / META).is_file() and (Path(folder) / WEIGHTS).is_file()


def save(model: InstantBooth, folder: str | Path, meta: dict | None = None) -> Path:
    """Write the artifact to `folder` (replacing an older InstantBooth artifact there; refusing anything else)."""
    from safetensors.torch import save_file

    from ... import __version__

    folder = Path(folder)
    if folder.exists() and (folder.is_file() or any(folder.iterdir()) and not (folder / META).is_file()):
        raise InputError(f"--out {folder}: exists and is not an InstantBooth artifact folder; pick a new folder")
    folder.resolve().parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    assert all(k.startswith(PREFIXES) for k in tensors), sorted(tensors)[:3]
    info = {**(meta or {}), "format": FORMAT, "format_version": 1, "config": model.cfg.to_dict(),
            "dims": model.dims, "boothkit_version": __version__}
    with staged_folder(folder) as staged:
        save_file(tensors, str(staged / WEIGHTS), metadata={"format": FORMAT})
        (staged / META).write_text(json.dumps(info, indent=1))
    return folder


def read_meta(folder: str | Path) -> dict:
    folder = Path(folder)
    if not is_artifact(folder):
        raise InputError(f"--instant {folder}: not an InstantBooth artifact (needs {META} and {WEIGHTS})")
    try:
        meta = json.loads((folder / META).read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"--instant {folder}: {META} is not valid JSON ({e})") from e
    if meta.get("format") != FORMAT:
        raise InputError(f"--instant {folder}: {META} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


def load(folder: str | Path, **overrides) -> tuple[InstantBooth, dict]:
    """-> (InstantBooth with the saved weights, in eval mode, on the CPU; the json). overrides: config fields
    (alpha, beta) to change for this use."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta = read_meta(folder)
    cfg = InstantBoothConfig.from_dict({**meta["config"], **{k: v for k, v in overrides.items() if v is not None}})
    model = InstantBooth(cfg, meta["dims"])
    tensors = load_file(str(folder / WEIGHTS))
    want, have = set(model.state_dict()), set(tensors)
    if want != have:
        raise InputError(f"--instant {folder}: {WEIGHTS} does not match its {META}: missing "
                         f"{sorted(want - have)[:3]}, unexpected {sorted(have - want)[:3]}")
    model.load_state_dict(tensors)
    return model.eval().requires_grad_(False), meta
