"""RGB video decoding with PyAV: metadata, sparse clip reading.

Frame indices are *presentation* indices: frame ``i`` is the one shown at time
``start + i / fps``. ``read_clip`` seeks to the key frame before each run of wanted frames and
converts to RGB only the frames asked for, so an 8-frame clip of a long video costs a few GOPs of
decoding, not the whole file.

Policy for indices past the real end of the stream (containers that over-report their length, a
truncated file, a clip longer than the video): the frame is *padded* with the last decoded frame.
Samplers (``videoformer.data.sampling``) never ask for such indices given a correct frame count.
"""

from __future__ import annotations

import bisect
import gc
import logging
import math
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Sequence

import av
import numpy as np

from videoformer.data.errors import VideoReadError

log = logging.getLogger(__name__)

__all__ = ["VideoInfo", "probe", "read_clip", "read_all_frames", "open_video", "to_rgb"]


@dataclass(frozen=True)
class VideoInfo:
    """Stream metadata of one video file.

    ``num_frames_exact`` is True when the count comes from counting packets rather than from the
    container header (which may be missing or wrong, e.g. Matroska / MPEG-TS / raw streams).
    """

    path: str
    num_frames: int
    fps: float
    duration: float  # seconds
    width: int
    height: int
    codec: str
    has_audio: bool
    num_frames_exact: bool = False


def to_rgb(frame: av.VideoFrame, size: tuple[int, int] | None = None) -> np.ndarray:
    """uint8 RGB (H, W, 3) of a decoded frame, converted single-threaded; ``size`` = (width, height)
    rescales in the same swscale pass (area filter when shrinking).

    PyAV's default (``threads=0``) gives every frame's swscale context its own slice threads: slow
    for small frames, and a forked DataLoader worker that garbage-collects such a context inherited
    from its parent waits forever to join threads that do not exist in the child.
    """
    if size is None or (size[0] == frame.width and size[1] == frame.height):
        return frame.to_ndarray(format="rgb24", threads=1)
    shrink = size[0] < frame.width
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1], threads=1,
                            interpolation="AREA" if shrink else "BILINEAR")


def short_side_size(width: int, height: int, short_side: int | None) -> tuple[int, int] | None:
    """(width, height) with the shorter side scaled to ``short_side`` (None: keep)."""
    if short_side is None:
        return None
    scale = short_side / min(width, height)
    return max(1, int(round(width * scale))), max(1, int(round(height * scale)))


def _collect_before_fork() -> None:
    gc.collect()  # free cyclic garbage holding FFmpeg contexts in the parent, not in a forked child


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_collect_before_fork)


def open_video(path: str | os.PathLike) -> av.container.InputContainer:
    """Open ``path`` with PyAV, turning every failure into a :class:`VideoReadError`."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoReadError(path, "file not found")
    if os.path.isdir(path):
        raise VideoReadError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    try:
        container = av.open(path, mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoReadError(path, f"cannot open container: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "container has no video stream")
    return container


def _stream_fps(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    return None


def _start_pts(stream: av.video.stream.VideoStream) -> int:
    return int(stream.start_time) if stream.start_time is not None else 0


def _count_packets(container: av.container.InputContainer, path: str) -> tuple[int, int | None]:
    """Count video packets by demuxing only (no decoding); returns (count, largest pts)."""
    stream = container.streams.video[0]
    count, last_pts = 0, None
    try:
        container.seek(0)
    except av.FFmpegError:
        pass
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # flush packet
                continue
            count += 1
            if packet.pts is not None:
                last_pts = packet.pts if last_pts is None else max(last_pts, packet.pts)
    except av.FFmpegError as e:
        raise VideoReadError(path, f"demuxing failed while counting frames: {e}") from e
    return count, last_pts


def probe(path: str | os.PathLike, exact: bool = False) -> VideoInfo:
    """Read frame count, fps and duration from the container.

    The header count is used when present and consistent with ``duration * fps`` (within 2 frames
    or 2 %); otherwise, or with ``exact=True``, the packets are counted by demuxing (no decoding).
    """
    path = os.fspath(path)
    with open_video(path) as container:
        stream = container.streams.video[0]
        cc = stream.codec_context
        fps = _stream_fps(stream)
        tb = stream.time_base
        duration = None
        if stream.duration is not None and tb is not None:
            duration = float(stream.duration * tb)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        header_frames = int(stream.frames or 0)
        expected = duration * float(fps) if (duration and fps) else None
        consistent = (
            header_frames > 0
            and (expected is None or abs(header_frames - expected) <= max(2.0, 0.02 * expected))
        )
        num_frames, counted = header_frames, False
        if exact or not consistent:
            num_frames, last_pts = _count_packets(container, path)
            counted = True
            if num_frames == 0:
                raise VideoReadError(path, "video stream holds no packets")
            if fps is None and last_pts is not None and tb is not None and last_pts > _start_pts(stream):
                fps = Fraction(num_frames - 1) / ((last_pts - _start_pts(stream)) * tb)
        if fps is None:
            raise VideoReadError(path, "cannot determine the frame rate")
        if duration is None or counted:
            duration = num_frames / float(fps)
        return VideoInfo(
            path=path,
            num_frames=num_frames,
            fps=float(fps),
            duration=float(duration),
            width=int(cc.width),
            height=int(cc.height),
            codec=cc.name,
            has_audio=bool(container.streams.audio),
            num_frames_exact=counted,
        )


def _runs(sorted_idx: Sequence[int], max_gap: int) -> list[tuple[int, int]]:
    """Group sorted indices into (first, last) runs whose consecutive gaps are <= max_gap."""
    runs: list[tuple[int, int]] = []
    for i in sorted_idx:
        if runs and i - runs[-1][1] <= max_gap:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def _decode_from(container, stream, path: str) -> Iterator[av.VideoFrame]:
    try:
        yield from container.decode(stream)
    except av.FFmpegError as e:
        raise VideoReadError(path, f"decoding failed: {e}") from e


def read_clip(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray,
    max_gap: int | None = None,
    threads: int = 1,
    short_side: int | None = None,
) -> np.ndarray:
    """Decode the frames at presentation ``indices`` (any order, repeats allowed).

    ``short_side`` rescales frames while converting to RGB (one swscale pass, cheaper than decoding
    HD frames to full-size RGB and resizing later).

    Returns uint8 RGB of shape (T, H, W, 3) with ``T == len(indices)``, in the order asked.
    The key frames around the wanted range are found by demuxing packets (no decoding); the decoder
    then seeks to the key frame before a wanted frame only when that skips frames, and otherwise
    decodes on. With ``max_gap`` set (or without packet timestamps), a new seek happens instead
    whenever the next wanted frame is more than ``max_gap`` frames ahead. Indices past the real end
    are padded with the last decoded frame (see module docstring).

    Raises :class:`VideoReadError` naming ``path`` for unreadable files and ``ValueError`` for
    negative indices.
    """
    path = os.fspath(path)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError(f"{path}: read_clip needs at least one frame index")
    if (idx < 0).any():
        raise ValueError(f"{path}: negative frame indices {idx[idx < 0].tolist()}")
    wanted = sorted(set(idx.tolist()))
    gap = max_gap
    got: dict[int, np.ndarray] = {}
    last: list = []  # [index, frame] of the latest decoded frame
    with open_video(path) as container:
        stream, fps, tb, start = _prepare(container, path, threads)
        size = short_side_size(stream.codec_context.width, stream.codec_context.height, short_side)
        keys = None if max_gap is not None else _keyframes_between(container, stream, fps, tb, start, wanted)
        if keys:
            runs = _keyframe_runs(wanted, keys)
        else:
            runs = _runs(wanted, max_gap if max_gap is not None else max(1, int(round(float(fps)))))
        for first, final in runs:
            target = start + int(math.floor(first / fps / tb))
            try:
                container.seek(target, backward=True, any_frame=False, stream=stream)
            except av.FFmpegError:
                landed = None  # cannot seek: decode sequentially below
            else:
                landed = _decode_run(container, stream, path, fps, tb, start, first, final, wanted, got, last, size)
            if landed is None or landed > first:
                break  # imprecise seek (e.g. MPEG-TS) or no index: one sequential pass instead
        else:
            landed = 0
    if landed is None or landed > wanted[0] or any(i not in got for i in wanted if i <= (last[0] if last else -1)):
        with open_video(path) as container:  # fresh demuxer, no seek: decode from the start
            stream, fps, tb, start = _prepare(container, path, threads)
            _decode_run(container, stream, path, fps, tb, start, 0, wanted[-1], wanted, got, last, size)
    if not got and not last:
        raise VideoReadError(path, "no frame could be decoded")
    return _assemble(path, idx, got, last, size)


def _keyframes_between(container, stream, fps, tb, start, wanted: list[int]) -> list[int] | None:
    """Presentation indices of the key frames from the one before ``wanted[0]`` to ``wanted[-1]``,
    read by demuxing packets only (no decoding, and not the whole file). None if unavailable."""
    try:
        container.seek(start + int(math.floor(wanted[0] / fps / tb)), backward=True, any_frame=False, stream=stream)
        keys = []
        for packet in container.demux(stream):
            if packet.size == 0 or packet.pts is None:
                continue
            i = int(round(float((packet.pts - start) * tb * fps)))
            if packet.is_keyframe:
                keys.append(i)
            ts = packet.dts if packet.dts is not None else packet.pts
            if int(round(float((ts - start) * tb * fps))) > wanted[-1]:
                break
    except av.FFmpegError:
        return None
    return sorted(keys) or None


def _keyframe_runs(wanted: list[int], keys: list[int]) -> list[tuple[int, int]]:
    """Group wanted frames into decode runs: seek only when the key frame before the next wanted
    frame lies beyond the current run (seeking then decodes strictly fewer frames)."""
    runs: list[tuple[int, int]] = []
    for t in wanted:
        pos = bisect.bisect_right(keys, t) - 1
        key = keys[pos] if pos >= 0 else 0
        if runs and key <= runs[-1][1]:
            runs[-1] = (runs[-1][0], t)
        else:
            runs.append((t, t))
    return runs


def _prepare(container, path: str, threads: int):
    stream = container.streams.video[0]
    stream.thread_type = "AUTO" if threads != 1 else "SLICE"
    stream.thread_count = threads
    fps, tb = _stream_fps(stream), stream.time_base
    if fps is None or tb is None:
        raise VideoReadError(path, "stream has no frame rate / time base; cannot index frames")
    return stream, fps, tb, _start_pts(stream)


def _decode_run(container, stream, path, fps, tb, start, first, final, wanted, got, last, size=None) -> int | None:
    """Decode from the current position until index ``final``; collect wanted frames into ``got``.

    Returns the index of the first decoded frame (None if nothing decoded). Stops at once, collecting
    nothing, when that first frame is already past ``first`` (the seek overshot).
    """
    first_seen: int | None = None
    counter = 0
    wanted_set = set(wanted)
    for frame in _decode_from(container, stream, path):
        i = counter if frame.pts is None else int(round(float((frame.pts - start) * tb * fps)))
        counter = i + 1
        if first_seen is None:
            first_seen = i
            if i > first:
                return i
        if i in wanted_set and i not in got:
            got[i] = to_rgb(frame, size)
        if not last or i >= last[0]:
            last[:] = [i, frame]
        if i >= final:
            break
    return first_seen


def _assemble(path: str, idx: np.ndarray, got: dict[int, np.ndarray], last, size=None) -> np.ndarray:
    """Order frames as asked; pad missing indices with the nearest earlier decoded frame."""
    if last and last[0] not in got:
        got[last[0]] = to_rgb(last[1], size)
    keys = np.array(sorted(got))
    missing = sorted({int(i) for i in idx.tolist()} - set(got))
    if missing:
        log.warning("%s: frames %s not in the stream; padded with the nearest earlier frame",
                    path, missing[:8])
    out = []
    for i in idx.tolist():
        if i in got:
            out.append(got[i])
        else:
            pos = np.searchsorted(keys, i, side="right") - 1
            out.append(got[int(keys[max(pos, 0)])])
    return np.stack(out)


def read_all_frames(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame in order (uint8 RGB, (N, H, W, 3)); a reference for tests, not for training."""
    path = os.fspath(path)
    with open_video(path) as container:
        stream = container.streams.video[0]
        frames = [to_rgb(f) for f in _decode_from(container, stream, path)]
    if not frames:
        raise VideoReadError(path, "no frame could be decoded")
    return np.stack(frames)
