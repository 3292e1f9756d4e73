"""Options shared by several commands."""

from __future__ import annotations

import typer

MODEL = typer.Option("world", "--model", "-m",
                     help="Base model: 'world' (shipped, offline), a local diffusers folder, or a hub id.")
DEVICE = typer.Option("auto", "--device", help="cuda, mps, cpu or auto.")
DTYPE = typer.Option("auto", "--dtype", help="fp32, fp16, bf16 or auto (fp32 on CPU, bf16/fp16 on GPU).")
SCHEDULER = typer.Option(None, "--scheduler",
                         help="Sampler: ddim, ddpm, pndm, euler, euler_a, heun, dpm++, dpm++_karras, unipc, or a "
                              "diffusers scheduler class name (default: the model's own).")

#: what --images accepts (tune, generate --instant): the loaders' rules, boothkit.inputs.load_subject_images
IMAGES_HELP = ("Photos of the subject: a folder of 1-20 photos, or photo files (jpg, png, webp; any size from 64 px "
               "to 50 MP); repeat --images to combine several. Unreadable and blank photos are skipped with a "
               "warning; a set with none left is refused.")


def images_arg(images: list[str] | None):
    """--images as the loaders take it: one path as it is, several as a list (None when not given)."""
    if not images:
        return None
    return images[0] if len(images) == 1 else list(images)


def warn_subject(images, class_noun: str | None, model: str, photos: list | None = None) -> None:
    """Print the warnings of boothkit.domain for this subject (the world model only: a class noun it never read,
    photos far from its scenes). `photos`: the decoded photos when the caller has them; else they are decoded here
    quietly (a bad set is reported by the command itself)."""
    from ..domain import is_world_model, subject_warnings
    from ..log import warn

    if not is_world_model(model):
        return
    if photos is None and images is not None:
        import warnings

        from ..inputs import InputError, load_subject_images

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the command's own loading prints them once
                photos = load_subject_images(images)
        except InputError:
            return  # the command's own loading raises it
    for message in subject_warnings(photos or [], class_noun, model):
        warn(message)


def parse_set(items: list[str] | None) -> dict:
    """--set key=value (value parsed as JSON when it can be: numbers, true/false, strings otherwise)."""
    import json

    out = {}
    for item in items or []:
        if "=" not in item:
            raise typer.BadParameter(f"--set {item!r}: expected key=value")
        k, v = item.split("=", 1)
        try:
            out[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip()] = v
    return out


def read_settings(config: str | None, set_: list[str] | None) -> dict:
    """--config (a JSON file holding an object), then --set key=value on top; InputError naming the file."""
    import json
    from pathlib import Path

    from ..inputs import InputError

    settings = {}
    if config:
        try:
            settings = json.loads(Path(config).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"--config {config}: cannot read a JSON object ({e})") from e
        if not isinstance(settings, dict):
            raise InputError(f"--config {config}: must hold a JSON object")
    settings.update(parse_set(set_))
    return settings
