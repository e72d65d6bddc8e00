"""Weights from local files only: official video checkpoints (official TimeSformer, TokShift / MSCA, Scenic ViViT,
PySlowFast / torchvision MViT, Hugging Face) through one ``load_pretrained`` (every format registers itself on
import), ``save_pretrained`` directories, image-ViT initialisation (ViViT §3.4)."""
from . import mvit, scenic, timesformer, tokshift  # noqa: F401  (register their formats)
from .common import FORMATS, CheckpointError, CheckpointMismatchError, Converted, Format, read_state_dict, register_format
from .hf import config_from_hf, convert_timesformer, convert_vivit
from .image import read_image_vit
from .inflate import inflate_tubelet, init_from_image, init_mmvit_from_image
from .mvit import load_mvit
from .pretrained import load_pretrained, save_pretrained, transfer
from .scenic import load_scenic_vivit

__all__ = [
    "FORMATS", "CheckpointError", "CheckpointMismatchError", "Converted", "Format", "config_from_hf",
    "convert_timesformer", "convert_vivit", "inflate_tubelet", "init_from_image", "init_mmvit_from_image",
    "load_mvit", "load_pretrained", "load_scenic_vivit", "read_image_vit", "read_state_dict", "register_format", "save_pretrained", "transfer",
]
