"""Model analysis: parameter and MAC counting (more tools join here: attention rollout, shuffle test)."""
from .flops import (
    FORMULAS, TOP_LEVEL, MacCounter, MacReport, UnitCount, count_macs, count_model, default_units,
)

__all__ = [
    "FORMULAS", "TOP_LEVEL", "MacCounter", "MacReport", "UnitCount", "count_macs", "count_model", "default_units",
]
