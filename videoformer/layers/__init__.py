"""Building blocks shared by every model: the token grid, the attention core, embeddings, blocks."""
from .attention import AxisAttention, attend, fused_attention, record_attention
from .block import Block
from .drop import DropPath, drop_path_rates
from .embed import TubeletEmbed, check_video
from .grid import AXES, FrameGrid, Grid, Grouping
from .mlp import Mlp
from .pos_embed import JointPosEmbed, SeparablePosEmbed, resample

__all__ = [
    "AXES", "AxisAttention", "Block", "DropPath", "FrameGrid", "Grid", "Grouping", "JointPosEmbed", "Mlp",
    "SeparablePosEmbed", "TubeletEmbed", "attend", "check_video", "drop_path_rates", "fused_attention",
    "record_attention", "resample",
]
