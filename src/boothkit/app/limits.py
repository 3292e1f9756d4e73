"""What the app accepts: size limits, safe image decoding and concept-name checks.

Everything here raises `RequestError` (an HTTP status + a sentence naming what is wrong); nothing is silently
fixed. Photos are decoded by boothkit.images.decode, as on the command line (an allow-list of formats, a pixel
limit checked from the header before any pixel is decoded, a full decode); the app only ever stores its own PNG
re-encoding of the decoded pixels.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from ..images import FORMATS


class RequestError(ValueError):
    """A request the app refuses: `status` is the HTTP status (4xx), the message says what to change."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Per-request limits (a request over one gets a 4xx naming the limit)."""

    min_images: int = 1  #: reference photos per concept, at least
    max_images: int = 10  #: reference photos per concept, at most
    max_upload_bytes: int = 8 * 1024 * 1024  #: bytes per uploaded photo
    max_upload_pixels: int = 4096 * 4096  #: width x height per uploaded photo (checked before decoding)
    min_upload_side: int = 64  #: smallest accepted width or height of a photo (as boothkit.inputs.MIN_SIDE)
    max_prompt_chars: int = 1000  #: characters in a prompt or negative prompt
    max_steps: int = 100  #: denoising steps per generate request
    max_images_per_request: int = 8  #: images per generate request
    max_size: int = 1024  #: width or height of a generated image
    max_tune_steps: int = 5000  #: training steps of a concept job
    max_class_noun_chars: int = 40  #: characters in a class noun
    max_config_chars: int = 4000  #: characters of a method config (JSON)

    def __post_init__(self):
        if not 1 <= self.min_images <= self.max_images:
            raise ValueError(f"need 1 <= min_images <= max_images (got {self.min_images}, {self.max_images})")
        for name in ("max_upload_bytes", "max_upload_pixels", "max_prompt_chars", "max_steps",
                     "max_images_per_request", "max_size", "max_tune_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1 (got {getattr(self, name)})")

    @property
    def max_body_bytes(self) -> int:
        """Largest request body accepted at all: every photo at its limit plus room for the form fields."""
        return self.max_images * self.max_upload_bytes + 1024 * 1024


#: Formats a photo may be in (boothkit.images.FORMATS: the one decoder's allow-list).
IMAGE_FORMATS = FORMATS


def decode_image(data: bytes, filename: str, limits: Limits, *, with_alpha: bool = False):
    """Bytes of an uploaded photo -> a fully decoded RGB image (with_alpha: (RGB, alpha mask or None)), or
    RequestError naming the file and the problem.

    The decoding is boothkit.images.decode, the one decoder the command line uses too (same rules: EXIF
    orientation, transparency on white, 16-bit rescaled; same messages), under the app's own byte and pixel
    limits: over a limit is 413, anything else wrong 400.
    """
    from ..images import decode
    from ..inputs import InputError

    label = f"photo {filename or 'upload'!r}"
    if len(data) > limits.max_upload_bytes:
        raise RequestError(f"{label}: larger than the limit of {limits.max_upload_bytes} bytes", 413)
    try:
        return decode(data, label, min_side=limits.min_upload_side, max_pixels=limits.max_upload_pixels,
                      with_alpha=with_alpha)
    except InputError as e:
        raise RequestError(str(e), 413 if getattr(e, "reason", None) == "too_large" else 400) from e


_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def check_concept_name(name: str) -> str:
    """A concept name is a folder name and a prompt token: 1-40 of a-z 0-9 _ -, starting with a letter or digit.

    Refused, not rewritten: '../x', 'a/b', 'My Dog' and '' are errors that say what is allowed.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise RequestError(f"concept name {name!r} is not allowed: use 1-40 characters of a-z, 0-9, '_' and '-', "
                           f"starting with a letter or digit")
    return name


_NOUN = re.compile(r"^[A-Za-z][A-Za-z \-]*$")


def check_class_noun(noun: str, limits: Limits) -> str:
    """The class noun ('dog', 'teddy bear'): letters, spaces and hyphens."""
    noun = (noun or "").strip()
    if not noun:
        raise RequestError("class_noun is required (what the subject is, e.g. 'dog')")
    if len(noun) > limits.max_class_noun_chars or not _NOUN.match(noun):
        raise RequestError(f"class_noun {noun!r} is not allowed: use up to {limits.max_class_noun_chars} letters, "
                           f"spaces and hyphens")
    return noun


def check_prompt(prompt: str, field: str, limits: Limits) -> str:
    if len(prompt) > limits.max_prompt_chars:
        raise RequestError(f"{field} is {len(prompt)} characters; the limit is {limits.max_prompt_chars}")
    if "\x00" in prompt:
        raise RequestError(f"{field} contains a NUL character")
    return prompt


def parse_method_config(text: str | None, limits: Limits) -> dict | None:
    """The optional `config` form field: a JSON object of method settings (e.g. {"rank": 4}); JSON only, never
    anything that could run code. Whether the keys and values suit the method is checked by the method."""
    if text is None or not text.strip():
        return None
    if len(text) > limits.max_config_chars:
        raise RequestError(f"config is {len(text)} characters; the limit is {limits.max_config_chars}")
    try:
        value = json.loads(text)
    except ValueError as e:
        raise RequestError(f"config is not valid JSON: {e}") from e
    if not isinstance(value, dict):
        raise RequestError(f"config must be a JSON object like {{\"steps\": 100}} (got {type(value).__name__})")
    return value or None


_IDENT = re.compile(r"^<?[A-Za-z0-9][A-Za-z0-9_-]{0,29}>?$")


def check_identifier(ident: str | None) -> str | None:
    """The optional token a concept is trained under (e.g. 'sks', '<bruno>'); None: the method's default."""
    if ident is None or not ident.strip():
        return None
    ident = ident.strip()
    if not _IDENT.match(ident):
        raise RequestError(f"identifier {ident!r} is not allowed: one word of 1-30 letters, digits, '_' or '-', "
                           f"optionally in <angle brackets>")
    return ident
