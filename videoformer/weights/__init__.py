"""Weights from local files only: Hugging Face video checkpoints, Scenic ViViT (flax msgpack), PySlowFast / torchvision
MViT, image-ViT initialisation (ViViT §3.4)."""
from .common import CheckpointError, CheckpointMismatchError, read_state_dict
from .hf import config_from_hf, convert_timesformer, convert_vivit, load_pretrained
from .image import read_image_vit
from .inflate import inflate_tubelet, init_from_image

__all__ = [
    "CheckpointError", "CheckpointMismatchError", "config_from_hf", "convert_timesformer", "convert_vivit",
    "inflate_tubelet", "init_from_image", "load_pretrained", "read_image_vit", "read_state_dict",
]
from .mvit import load_mvit  # noqa: E402  (registers the PySlowFast / torchvision MViT formats)
from .scenic import load_scenic_vivit  # noqa: E402  (registers the Scenic ViViT format)

__all__ += ["load_mvit", "load_scenic_vivit"]
