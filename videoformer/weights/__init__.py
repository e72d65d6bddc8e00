"""Weights from local files only: Hugging Face video checkpoints, image-ViT initialisation (ViViT §3.4)."""
from .common import CheckpointError, CheckpointMismatchError, read_state_dict
from .hf import config_from_hf, convert_timesformer, convert_vivit, load_pretrained
from .image import read_image_vit
from .inflate import inflate_tubelet, init_from_image

__all__ = [
    "CheckpointError", "CheckpointMismatchError", "config_from_hf", "convert_timesformer", "convert_vivit",
    "inflate_tubelet", "init_from_image", "load_pretrained", "read_image_vit", "read_state_dict",
]
