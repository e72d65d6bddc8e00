"""Video data pipeline: decoding and sampling, compressed domain, audio, datasets, transforms.

Modules: ``video`` (PyAV decode, metadata), ``sampling`` (TSN / dense / multi-view), ``compressed``
(MPEG-4 re-encode, I-frame / motion vectors / residual), ``audio`` (16 kHz log-mel, VGGish),
``annotations`` (dataset formats), ``datasets`` (VideoDataset, CompressedVideoDataset), ``transforms``,
``mixup``, ``batch`` (``InputSpec``: what a model consumes; ``Batch``: what the loaders give it), ``clock``
(timestamps <-> seconds), ``synthetic`` (write small test videos), ``prepare`` (``videoformer extract``: MPEG-4 +
log-mel cache in the dataset's layout, checksummed), ``benchmark`` (``python -m videoformer.data.benchmark``).
"""

from videoformer.data.batch import Batch, InputSpec
from videoformer.data.errors import AnnotationError, CacheError, ExtractError, VideoDecodeError, VideoReadError
from videoformer.data.sampling import (
    View,
    dense_indices,
    multiview_indices,
    spatial_crop_offsets,
    uniform_indices,
)
from videoformer.data.video import VideoInfo, probe, read_all_frames, read_clip
from videoformer.data.compressed import CompressedClip, extract_compressed, reencode_mpeg4
from videoformer.data.annotations import (
    Annotations,
    VideoRecord,
    read_csv,
    read_epic_kitchens,
    read_folder,
    read_hmdb51,
    read_kinetics,
    read_ssv2,
    read_ucf101,
)
from videoformer.data.datasets import CompressedVideoDataset, DatasetFailure, VideoDataset
from videoformer.data.transforms import CompressedTransform, VideoTransform
from videoformer.data.mixup import Mixup, one_hot_smooth
from videoformer.data.prepare import PrepareConfig, extract_dataset, verify_cached

__all__ = [
    "AnnotationError", "CacheError", "ExtractError", "VideoDecodeError", "VideoReadError", "View", "VideoInfo",
    "dense_indices", "multiview_indices", "probe", "read_all_frames", "read_clip", "spatial_crop_offsets", "uniform_indices",
    "CompressedClip", "extract_compressed", "reencode_mpeg4", "Annotations", "VideoRecord", "read_csv",
    "read_epic_kitchens", "read_folder", "read_hmdb51", "read_kinetics", "read_ssv2", "read_ucf101",
    "CompressedVideoDataset", "DatasetFailure", "VideoDataset", "CompressedTransform", "VideoTransform",
    "Mixup", "one_hot_smooth", "PrepareConfig", "extract_dataset", "verify_cached", "Batch", "InputSpec",
]
