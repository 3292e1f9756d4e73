"""boothkit: teach a text-to-image diffusion model a subject from a few photos, with the field's main methods."""

__version__ = "0.1.0"


def load_pipeline(*args, **kwargs):
    """See boothkit.pipeline.load_pipeline."""
    from .pipeline import load_pipeline as _load

    return _load(*args, **kwargs)


__all__ = ["__version__", "load_pipeline"]
