"""Pretraining data: one record type from several sources, one loader for all of them (issue 15).

    from boothkit.data import LoaderConfig, build_loader, open_source

    source = open_source("photos/", class_noun="woman", identifier="sks")   # scanned: bad data fails here
    loader = build_loader(source, LoaderConfig(resolution=512, batch_size=8), rank=r, world_size=n, start_step=s)
    for batch in loader: ...                                                 # pixels, mask, captions, ...

Modules: `record` (Record, ScanReport), `captions` (identifier in front of the class noun), `masks` (alpha, mask
file, bbox, Segmenter), `condition` (InstantBooth's condition augmentation on tensors), one module per source
(`world`, `folder`, `hf`, `wds`), `sources` (open_source), `loader` (LoaderConfig, build_loader).
No method imports boothkit.world: the world is the `world` source here.
"""

from .captions import rewrite_caption
from .condition import ConditionConfig, frame_subject, mask_boxes, subject_condition
from .hf import Columns
from .loader import (LoaderConfig, augment_generator, batch_rows, build_loader, count_skipped, micro_conditioning,
                     row_image, to_device, validation_batch)
from .masks import Segmenter, on_white
from .record import Record, ScanReport, Unusable
from .sources import open_source
from .world import WorldOptions

__all__ = ["Columns", "ConditionConfig", "LoaderConfig", "Record", "ScanReport", "Segmenter", "Unusable",
           "WorldOptions", "augment_generator", "batch_rows", "build_loader", "count_skipped", "frame_subject", "mask_boxes",
           "micro_conditioning", "on_white", "open_source", "rewrite_caption", "row_image", "subject_condition",
           "to_device", "validation_batch"]
