"""Atomic, safetensors-only training checkpoints with resume.

A checkpoint is a folder `checkpoint-<step>/` holding one safetensors file per named group of tensors (model,
EMA, optimizer state...) and `meta.json`. It is written into `checkpoint-<step>.tmp/`, renamed into place, and
only then marked complete by writing `COMPLETE`: a run killed at any moment leaves either a complete checkpoint or
an ignorable temporary folder. Nothing is ever pickled, so loading a checkpoint can never run code.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

MARKER = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def _contiguous(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in tensors.items()}


def save_checkpoint(root: str | Path, step: int, groups: dict[str, dict[str, torch.Tensor]], meta: dict | None = None,
                    keep: int = 2) -> Path:
    """Write checkpoint-<step> under root atomically, then delete all but the newest `keep` complete ones."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"checkpoint-{step}"
    tmp = root / f"checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, tensors in groups.items():
        save_file(_contiguous(tensors), str(tmp / f"{name}.safetensors"))
    (tmp / "meta.json").write_text(json.dumps({"step": step, **(meta or {})}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    with open(final / MARKER, "w") as f:
        f.write("ok\n")
        f.flush()
        os.fsync(f.fileno())
    for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under root, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _NAME.match(p.name)
        if m and (p / MARKER).exists():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_checkpoint(root: str | Path) -> Path | None:
    cks = list_checkpoints(root)
    return cks[-1] if cks else None


def load_checkpoint(path: str | Path) -> tuple[dict, dict[str, dict[str, torch.Tensor]]]:
    """-> (meta, {group: tensors})."""
    path = Path(path)
    if not (path / MARKER).exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    meta = json.loads((path / "meta.json").read_text())
    groups = {p.stem: load_file(str(p)) for p in path.glob("*.safetensors")}
    return meta, groups


GROUP = "param_groups."  #: prefix of the param groups' numbers in optimizer_tensors


def optimizer_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten an optimizer's per-parameter state into named tensors (safetensors can hold them), and the numbers
    of its param groups (`param_groups.<i>.<key>`: what an optimizer like Prodigy learns there, its step size
    estimate d; floats kept in float64 so a resume continues exactly)."""
    sd = opt.state_dict()
    out = {}
    for pid, state in sd["state"].items():
        for k, v in state.items():
            out[f"{pid}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
    for i, group in enumerate(sd["param_groups"]):
        for k, v in group.items():
            if isinstance(v, bool) or k == "params":
                continue
            if isinstance(v, (int, float)) or (isinstance(v, tuple) and v and
                                               all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)):
                out[f"{GROUP}{i}.{k}"] = torch.tensor(v, dtype=torch.float64 if isinstance(v, float) or
                                                      (isinstance(v, tuple) and any(isinstance(x, float) for x in v))
                                                      else torch.int64)
    return out


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor]) -> None:
    """Inverse of optimizer_tensors. Param-group numbers that the checkpoint has replace the constructed ones (a
    checkpoint written before they were saved leaves the optimizer's own)."""
    sd = opt.state_dict()
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        if key.startswith(GROUP):
            i, name = key[len(GROUP):].split(".", 1)
            group = sd["param_groups"][int(i)]
            value = v.tolist()
            group[name] = tuple(value) if isinstance(value, list) else value
            continue
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    sd["state"] = state
    opt.load_state_dict(sd)
