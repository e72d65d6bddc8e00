"""Building blocks shared by every model: the token grid, sublayer specs, the attention core, embeddings, blocks."""
from .attention import (AttentionModule, AxisAttention, ShiftMerge, attend, build_sublayer, fused_attention,
                        record_attention)
from .block import Block
from .drop import DropPath, drop_path_rates
from .embed import TubeletEmbed, check_video
from .grid import AXES, FrameGrid, Grid, Grouping
from .mlp import Mlp
from .pos_embed import JointPosEmbed, SeparablePosEmbed, resample
from .shift import ClsShift, FrameShift
from .spec import INIT_ROLES, SHIFT_MERGE, OthersOnly, Sublayer, WindowConv, attend_over

__all__ = [
    "AXES", "AttentionModule", "AxisAttention", "Block", "ClsShift", "DropPath", "FrameGrid", "FrameShift", "Grid",
    "Grouping", "INIT_ROLES", "JointPosEmbed", "Mlp", "OthersOnly", "SHIFT_MERGE", "SeparablePosEmbed", "ShiftMerge",
    "Sublayer", "TubeletEmbed", "WindowConv", "attend", "attend_over", "build_sublayer", "check_video", "drop_path_rates",
    "fused_attention", "record_attention", "resample",
]
