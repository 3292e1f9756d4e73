"""The vision tower the encoder methods read (InstantBooth, E4T): what a pretrained encoder was trained for, the
check that a pipeline fits it, and reference photos prepared the way pretraining showed the encoder its inputs.

A pretrained encoder fits one base model (its content hash), one family and one image encoder (the weights' hash):
`trained_for(pipe)` is what its json records, `check_fits` refuses a pipeline that differs and says why, and
`tower_source(meta)` names the vision tower to load beside a base model that has none (real SD-1.5/2.1/SDXL folders
ship no `image_encoder`): the one the encoder was trained with. Encoders written before these records existed (the
shipped world encoders) record only the base model, and are checked on that.
"""

from __future__ import annotations

from pathlib import Path

from ..inputs import InputError

#: CLIP's image normalisation: used when a vision tower comes without an image processor config
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def tower_preprocessing(pipe) -> dict:
    """How images are fed to the pipeline's vision tower: its input size and its image processor's mean/std (a
    separate tower folder without an image processor config: CLIP's, not the base model's own processor, which
    belongs to its own tower or its safety checker)."""
    fe = getattr(pipe, "feature_extractor", None)
    source = getattr(pipe, "boothkit_image_encoder", None)
    if source and Path(source).expanduser().is_dir() and not (Path(source).expanduser() /
                                                              "preprocessor_config.json").is_file():
        fe = None
    return {"image_size": int(pipe.image_encoder.config.image_size),
            "mean": list(getattr(fe, "image_mean", None) or CLIP_MEAN),
            "std": list(getattr(fe, "image_std", None) or CLIP_STD)}


def pipeline_image_encoder(pipe) -> tuple[str | None, str]:
    """-> (where the pipeline's vision tower came from: a folder (absolute) or hub id given as --image-encoder, or
    None for the base model's own `image_encoder`; the content hash of its weights). Cached on the pipeline."""
    from ..pipeline import image_encoder_hash, resolve_model

    cached = getattr(pipe, "boothkit_image_encoder_record", None)
    if cached is not None:
        return cached
    source = getattr(pipe, "boothkit_image_encoder", None)
    if source:
        p = Path(source).expanduser()
        source = str(p.resolve()) if p.exists() else source
        record = (source, image_encoder_hash(source))
    else:
        model = getattr(pipe, "boothkit_model", None) or pipe.config.get("_name_or_path") or ""
        try:
            own = Path(resolve_model(model)) / "image_encoder"
        except ValueError:
            own = Path(f"{model}/image_encoder")
        record = (None, image_encoder_hash(str(own)))
    pipe.boothkit_image_encoder_record = record
    return record


def trained_for(pipe) -> dict:
    """What an encoder trained on `pipe` records: the base model (as asked for, and its hash), the family and the
    vision tower (source, hash, class)."""
    from ..families import family_of
    from .core import pipeline_model_hash

    source, digest = pipeline_image_encoder(pipe)
    return {"base_model": getattr(pipe, "boothkit_model", None), "model_hash": pipeline_model_hash(pipe),
            "family": family_of(pipe).name,
            "image_encoder": {"source": source, "hash": digest, "class": type(pipe.image_encoder).__name__}}


def tower_source(meta: dict) -> str | None:
    """The vision tower an encoder (its json) was trained with when it was not the base model's own, else None."""
    return ((meta.get("image_encoder") or {}).get("source")) or None


def check_fits(pipe, meta: dict, where: str) -> None:
    """InputError, naming the reason, unless the encoder whose json is `meta` was trained for this pipeline: the same
    family, the same base model (hash) and the same vision tower (hash)."""
    from ..families import family_named, family_of
    from .core import pipeline_model_hash

    fam, made_for = family_of(pipe), meta.get("family", "sd")  # encoders from before SDXL support are SD
    if made_for != fam.name:
        raise InputError(f"{where} was trained for a {family_named(made_for).label} base model "
                         f"({meta.get('base_model')!r}); this pipeline is {fam.label}: train one on this base model "
                         "(boothkit pretrain)")
    have = pipeline_model_hash(pipe)
    if meta.get("model_hash") and meta["model_hash"] != have:
        raise InputError(f"{where} was trained on base model {meta.get('base_model')!r} (hash {meta['model_hash']}), "
                         f"but this pipeline's base model has hash {have}: use --model {meta.get('base_model')}")
    tower = meta.get("image_encoder") or {}
    if tower.get("hash"):
        source, digest = pipeline_image_encoder(pipe)
        if digest != tower["hash"]:
            want = tower.get("source") or f"the image_encoder of {meta.get('base_model')!r}"
            have_name = source or "the base model's own image_encoder"
            raise InputError(f"{where} was trained with the image encoder {want} (hash {tower['hash']}), but this "
                             f"pipeline's is {have_name} (hash {digest}): pass --image-encoder {want}")


def require_tower(pipe, what: str) -> None:
    """InputError when the pipeline has no vision tower (the encoder methods read one)."""
    if getattr(pipe, "image_encoder", None) is None:
        raise InputError(f"{what} needs a CLIP vision tower: this base model has no image_encoder; pass "
                         "--image-encoder DIR_OR_ID (a CLIPVisionModelWithProjection, e.g. the one its encoder was "
                         "trained with)")


def framed_references(photos: list, class_noun: str, *, segmenter: str = "", device=None,
                      where: str = "--images") -> list:
    """Reference photos as the encoders saw their conditions in pretraining: each subject cut out on white
    (boothkit.data.masks.reference_masks: alpha, the segmenter, a flat background, else the whole photo) and framed
    square around it at 3/4 of the side (boothkit.data.frame_subject). segmenter: a CLIPSeg folder or hub id."""
    from ..data import Segmenter, frame_subject
    from ..data.masks import reference_masks

    seg = Segmenter(segmenter, device=device or "cpu") if segmenter else None
    return [frame_subject(p, m) for p, m in zip(photos, reference_masks(photos, class_noun, seg, where=where))]
