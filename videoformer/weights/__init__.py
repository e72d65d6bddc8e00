"""Weights from local files only: official video checkpoints through one ``load_pretrained`` (every format
registers itself on import), ``save_pretrained`` directories, image-ViT initialisation (ViViT §3.4)."""
from . import timesformer, tokshift  # noqa: F401  (register their formats)
from .common import FORMATS, CheckpointError, CheckpointMismatchError, Converted, Format, read_state_dict, register_format
from .hf import config_from_hf, convert_timesformer, convert_vivit
from .image import read_image_vit
from .inflate import inflate_tubelet, init_from_image
from .pretrained import load_pretrained, save_pretrained, transfer

__all__ = [
    "FORMATS", "CheckpointError", "CheckpointMismatchError", "Converted", "Format", "config_from_hf",
    "convert_timesformer", "convert_vivit", "inflate_tubelet", "init_from_image",
    "load_pretrained", "read_image_vit", "read_state_dict", "register_format", "save_pretrained", "transfer",
]
