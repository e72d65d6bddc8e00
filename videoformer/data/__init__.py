"""Video data pipeline: decoding and sampling, compressed domain, audio, datasets, transforms."""

from videoformer.data.errors import AnnotationError, VideoDecodeError, VideoReadError
from videoformer.data.sampling import (
    View,
    dense_indices,
    multiview_indices,
    spatial_crop_offsets,
    uniform_indices,
)
from videoformer.data.video import VideoInfo, probe, read_all_frames, read_clip

__all__ = [
    "AnnotationError",
    "VideoDecodeError",
    "VideoReadError",
    "View",
    "VideoInfo",
    "dense_indices",
    "multiview_indices",
    "probe",
    "read_all_frames",
    "read_clip",
    "spatial_crop_offsets",
    "uniform_indices",
]
