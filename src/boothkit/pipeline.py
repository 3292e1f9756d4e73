"""Loading a base model: the shipped world model, a local diffusers folder, or a hub id."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

import torch

WORLD = "world"

#: Held while a pipeline is built or concepts are applied to one. Loading patches process-wide hooks for a moment
#: (accelerate's init_empty_weights and peft's register_empty_parameter replace nn.Module.register_parameter), so
#: two threads doing it at once can leave the patch in place and break every later load (the app's workers and
#: requests run in threads). Re-entrant: apply_concepts may load.
PIPELINE_LOCK = threading.RLock()


class ModelNotFoundError(ValueError):
    """The --model argument names nothing that can be loaded."""


def world_path() -> Path:
    """Folder of the shipped world pipeline (a standard StableDiffusionPipeline folder)."""
    return Path(__file__).resolve().parent / "assets" / "world"


def resolve_model(model: str) -> str:
    """'world' -> the shipped folder; a local folder -> itself; anything else is treated as a hub id."""
    if model == WORLD:
        return str(world_path())
    p = Path(model).expanduser()
    if p.exists():
        if not (p / "model_index.json").is_file():
            raise ModelNotFoundError(f"{model!r} is a path but not a diffusers pipeline folder (no model_index.json)")
        return str(p)
    if model.startswith((".", "/", "~")) or os.sep in model and model.count("/") > 1:
        raise ModelNotFoundError(f"model folder {model!r} does not exist")
    return model


def pick_device(device: str | None = None) -> torch.device:
    """cuda, then mps, then cpu, unless one is named."""
    if device and device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
           "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}


def pick_dtype(device: torch.device, dtype: str | torch.dtype | None = None) -> torch.dtype:
    """fp32 on CPU; bf16 on CUDA where supported, else fp16; fp16 on MPS; or the named one."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype and dtype != "auto":
        if dtype not in _DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(set(_DTYPES))}")
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def load_pipeline(model: str = WORLD, device: str | None = None, dtype: str | torch.dtype | None = None,
                  progress: bool = True, scheduler: str | None = None):
    """A diffusers StableDiffusionPipeline for `model` on the chosen device and dtype.

    model: "world" (the shipped emoji-world model), a local diffusers folder, or a hub id (needs the hub to be
    reachable, or the model in the local hub cache). Fails with ModelNotFoundError naming the model otherwise.
    scheduler: a sampler name (SCHEDULERS, or a diffusers scheduler class name); None: the model's own.
    """
    from diffusers import StableDiffusionPipeline

    path = resolve_model(model)
    if not progress:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    try:
        with PIPELINE_LOCK:
            pipe = StableDiffusionPipeline.from_pretrained(path, dtype=dt, safety_checker=None,
                                                           requires_safety_checker=False)
    except (OSError, ValueError, EnvironmentError) as e:
        if path == model and not Path(model).exists():
            raise ModelNotFoundError(
                f"could not load model {model!r}: not a local folder, and the hub could not provide it "
                f"(offline, or no such repository). Original error: {str(e).splitlines()[0]}") from e
        raise ModelNotFoundError(f"could not load model {model!r}: {str(e).splitlines()[0]}") from e
    set_scheduler(pipe, scheduler)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=not progress, leave=False)
    pipe.boothkit_model = model  # what the user asked for, recorded in artifacts
    return pipe


#: Sampler names (the words kohya and web-UI users know) -> diffusers scheduler class and config overrides. Each is
#: built from the pipeline's own scheduler config (its betas and prediction type), as diffusers' docs swap samplers.
SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),  # as SD-1.5 ships it (PRK steps need many steps)
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": False}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def scheduler_class(name: str) -> tuple[type, dict]:
    """-> (diffusers scheduler class, config overrides) for a SCHEDULERS key or a diffusers scheduler class name;
    InputError listing the choices for anything else (checked before a model is loaded)."""
    import diffusers

    from .inputs import InputError

    cls_name, overrides = SCHEDULERS.get(name, (name, {}))
    cls = getattr(diffusers, cls_name, None) if cls_name.endswith("Scheduler") else None
    if isinstance(cls, type) and getattr(cls, "_backends", None):  # diffusers' stand-in for a missing extra
        raise InputError(f"scheduler {name!r} needs {' and '.join(cls._backends)} installed")
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise InputError(f"unknown scheduler {name!r}; choose from {sorted(SCHEDULERS)} or a diffusers scheduler "
                         "class name (e.g. DDIMScheduler)")
    return cls, overrides


def make_scheduler(config, name: str):
    """The scheduler `name` (see scheduler_class) built from `config`, a pipeline's scheduler config."""
    cls, overrides = scheduler_class(name)
    return cls.from_config(config, **overrides)


def set_scheduler(pipe, name: str | None):
    """Swap pipe's scheduler for the named one (None: keep the model's own); -> pipe."""
    if name:
        pipe.scheduler = make_scheduler(pipe.scheduler.config, name)
    return pipe


def model_hash(model: str) -> str:
    """A content hash of a base model's UNet and text encoder weights (concepts record it; generation checks it).

    For a local folder or the world model it hashes the weight files' bytes (sha256, first 16 hex digits; a
    file-stamp cache spares re-reading gigabytes when nothing changed); for a hub id not on disk it hashes the id.
    """
    from .cache import cached_digest

    path = Path(resolve_model(model))
    if not path.exists():
        return "id:" + hashlib.sha256(model.encode()).hexdigest()[:16]
    files = [f for sub in ("unet", "text_encoder")
             for f in sorted((path / sub).glob("*.safetensors")) + sorted((path / sub).glob("*.bin"))]
    return cached_digest(files, hash_files)  # remembered by the files' stamps (boothkit.cache)


def hash_files(files) -> str:
    """sha256 over the files' bytes, in order (first 16 hex digits)."""
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def world_info() -> dict:
    """world.json of the shipped model: how it was trained, on what, for how long."""
    return json.loads((world_path() / "world.json").read_text())
