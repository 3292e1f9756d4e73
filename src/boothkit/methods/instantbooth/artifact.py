"""The InstantBooth artifact: one safetensors file with prefixed keys and a json beside it (like IP-Adapter's).

    <dir>/instantbooth.safetensors   concept_head.*, patch_head.*, adapters.<block>.*   (safetensors only)
    <dir>/instantbooth.json          method config, sizes, base model + hash, preprocessing, training summary

The json holds everything needed to rebuild the modules without boothkit's training code. The folder is written
into a temporary sibling and renamed into place, so a crash never leaves half an artifact.
"""

from __future__ import annotations

import json
from pathlib import Path

from ...inputs import InputError, save_weights_folder
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
    tensors = model.state_dict()
    assert all(k.startswith(PREFIXES) for k in tensors), sorted(tensors)[:3]
    return save_weights_folder(folder, tensors, meta, model.cfg.to_dict(), model.dims, weights=WEIGHTS,
                               meta_file=META, fmt=FORMAT, kind="an InstantBooth artifact",
                               is_ours=lambda f: (f / META).is_file())


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
    import torch

    with torch.device("meta"):  # shapes only: no random init of weights that are overwritten next (time to image)
        model = InstantBooth(cfg, meta["dims"])
    tensors = load_file(str(folder / WEIGHTS))
    want, have = set(model.state_dict()), set(tensors)
    if want != have:
        raise InputError(f"--instant {folder}: {WEIGHTS} does not match its {META}: missing "
                         f"{sorted(want - have)[:3]}, unexpected {sorted(have - want)[:3]}")
    model.load_state_dict(tensors, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise InputError(f"--instant {folder}: {WEIGHTS} leaves {left[:3]} without values")
    return model.eval().requires_grad_(False), meta
