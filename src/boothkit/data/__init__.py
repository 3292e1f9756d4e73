"""Pretraining data: one record type from several sources, one loader for all of them (issue 15).

Modules: `record` (Record, ScanReport), `captions` (identifier in front of the class noun), `masks` (alpha, mask
file, bbox, Segmenter), `condition` (InstantBooth's condition augmentation on tensors), one module per source
(`world`, `folder`, `hf`, `wds`), `sources` (open_source). No method imports boothkit.world: the world is the
`world` source here.
"""

from .captions import rewrite_caption
from .condition import ConditionConfig, frame_subject, mask_boxes, subject_condition
from .hf import Columns
from .masks import Segmenter, blank_reason, on_white
from .record import Record, ScanReport, Unusable
from .sources import open_source
from .world import WorldOptions

__all__ = ["Columns", "ConditionConfig", "Record", "ScanReport", "Segmenter", "Unusable", "WorldOptions",
           "blank_reason", "frame_subject", "mask_boxes", "on_white", "open_source", "rewrite_caption",
           "subject_condition"]
