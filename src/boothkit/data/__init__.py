"""Pretraining data: one record type from several sources, one loader for all of them (issue 15).

Modules: `record` (Record, ScanReport), `captions` (identifier in front of the class noun), `masks` (alpha, mask
file, bbox, Segmenter), `condition` (InstantBooth's condition augmentation on tensors).
"""

from .captions import rewrite_caption
from .condition import ConditionConfig, frame_subject, mask_boxes, subject_condition
from .masks import Segmenter, blank_reason, on_white
from .record import Record, ScanReport, Unusable

__all__ = ["ConditionConfig", "Record", "ScanReport", "Segmenter", "Unusable", "blank_reason", "frame_subject",
           "mask_boxes", "on_white", "rewrite_caption", "subject_condition"]
