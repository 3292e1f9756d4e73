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


def model_class_name(model: str) -> str | None:
    """The pipeline class a model's model_index.json names (a local folder, or a hub id in the hub or its cache);
    None when it cannot be read."""
    path = resolve_model(model)
    index = Path(path) / "model_index.json"
    try:
        if index.is_file():
            return json.loads(index.read_text()).get("_class_name")
        from diffusers import DiffusionPipeline

        return DiffusionPipeline.load_config(path).get("_class_name")
    except (OSError, ValueError, EnvironmentError):
        return None


def model_family(model: str):
    """The base-model family (boothkit.families) of a model, from its model_index.json, before loading any weight;
    ModelNotFoundError naming the pipeline class when boothkit does not support it. SD when it cannot be read
    (loading will say why)."""
    from .families import family_named, family_of_class, supported_classes

    name = model_class_name(model)
    if name is None:
        return family_named("sd")
    fam = family_of_class(name)
    if fam is None:
        raise ModelNotFoundError(f"model {model!r} is a {name}; boothkit works with {', '.join(supported_classes())}")
    return fam


def load_pipeline(model: str = WORLD, device: str | None = None, dtype: str | torch.dtype | None = None,
                  progress: bool = True, scheduler: str | None = None, image_encoder: str | None = None):
    """A diffusers pipeline of a supported family (StableDiffusionPipeline, StableDiffusionXLPipeline) for `model`
    on the chosen device and dtype.

    model: "world" (the shipped emoji-world model), a local diffusers folder, or a hub id (needs the hub to be
    reachable, or the model in the local hub cache). Fails with ModelNotFoundError naming the model otherwise.
    scheduler: a sampler name (SCHEDULERS, or a diffusers scheduler class name); None: the model's own.
    image_encoder: a CLIPVisionModelWithProjection folder or hub id to use as the pipeline's image_encoder (the
    encoder methods' vision tower; real SD/SDXL folders ship none); None: the model's own, if any.
    The pipeline records what was asked for: `boothkit_model`, `boothkit_image_encoder`, `boothkit_family`.
    """
    path = resolve_model(model)
    if not progress:
        import diffusers.utils.logging as dlog
        import transformers.utils.logging as tlog

        dlog.disable_progress_bar()
        tlog.disable_progress_bar()
    fam = model_family(model)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    extra = dict(fam.load_kwargs())
    if image_encoder:
        extra.update(load_image_encoder(image_encoder, dt))
    try:
        with PIPELINE_LOCK:
            pipe = fam.pipeline_class().from_pretrained(path, dtype=dt, **extra)
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
    pipe.boothkit_image_encoder = image_encoder
    pipe.boothkit_family = fam.name
    return pipe


def load_image_encoder(source: str, dtype: torch.dtype | None = None) -> dict:
    """A CLIP vision tower (transformers' CLIPVisionModelWithProjection) from a folder or hub id, and its image
    processor when the folder has one -> {"image_encoder": ..., "feature_extractor": ...} for from_pretrained.
    ModelNotFoundError naming the source when it cannot be loaded."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    p = Path(source).expanduser()
    if source.startswith((".", "/", "~")) and not p.exists():
        raise ModelNotFoundError(f"--image-encoder {source!r}: no such folder")
    try:
        with PIPELINE_LOCK:
            enc = CLIPVisionModelWithProjection.from_pretrained(str(p) if p.exists() else source, dtype=dtype)
    except (OSError, ValueError, EnvironmentError) as e:
        raise ModelNotFoundError(f"could not load --image-encoder {source!r} as a CLIPVisionModelWithProjection: "
                                 f"{str(e).splitlines()[0]}") from e
    out = {"image_encoder": enc}
    try:
        out["feature_extractor"] = CLIPImageProcessor.from_pretrained(str(p) if p.exists() else source)
    except (OSError, ValueError, EnvironmentError):
        pass  # no preprocessor config: the encoder methods fall back to CLIP's mean/std at the tower's size
    return out


def image_encoder_hash(source: str) -> str:
    """Content hash of a vision tower's weight files (or of its id when it is not on disk), as model_hash."""
    from .cache import cached_digest

    p = Path(source).expanduser()
    if not p.exists():
        return "id:" + hashlib.sha256(source.encode()).hexdigest()[:16]
    files = sorted(p.glob("*.safetensors")) + sorted(p.glob("*.bin"))
    return cached_digest(files, hash_files)


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
    # text_encoder_2 (SDXL) exists only where it is: SD models keep the hash they always had
    files = [f for sub in ("unet", "text_encoder", "text_encoder_2")
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
