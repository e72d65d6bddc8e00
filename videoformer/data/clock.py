"""One clock for the data module: a stream's timestamps <-> seconds, its start and its frame rate.

Frame index <-> time goes through a video's frame index (:meth:`~videoformer.data.video.FrameIndex.times` and
:meth:`~videoformer.data.video.FrameIndex.index_at`: by presentation timestamps, so variable-rate files map
right); the frame rate below is the container's declared rate, used only where a file has no timestamps to
count from and to time a re-encode.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any

__all__ = ["seconds", "timestamp", "stream_start", "frame_rate"]


def seconds(ts: int, time_base: Fraction) -> float:
    """Timestamp ``ts`` in units of ``time_base`` -> seconds (exact product, then rounded once)."""
    return float(ts * time_base)


def timestamp(t: float, time_base: Fraction) -> int:
    """Seconds -> a timestamp in units of ``time_base`` (truncated, for seeking)."""
    return int(t / time_base)


def stream_start(stream: Any) -> float:
    """A PyAV stream's first timestamp in seconds; 0 when the stream is missing or declares none."""
    if stream is None or stream.start_time is None or not stream.time_base:
        return 0.0
    return seconds(stream.start_time, stream.time_base)


def frame_rate(stream: Any) -> Fraction | None:
    """A video stream's declared frame rate: the average rate, else FFmpeg's guess, else the base rate."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None
