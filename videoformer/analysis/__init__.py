"""Model analysis: parameter and MAC counting, attention rollout, the frame-shuffle probe."""
from .flops import (
    FORMULAS, TOP_LEVEL, MacCounter, MacReport, UnitCount, count_macs, count_model, default_units,
)
from .rollout import attention_rollout, save_overlays
from .shuffle import shuffle_frames

__all__ = [
    "FORMULAS", "TOP_LEVEL", "MacCounter", "MacReport", "UnitCount", "attention_rollout", "count_macs",
    "count_model", "default_units", "save_overlays", "shuffle_frames",
]
