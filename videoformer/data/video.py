"""RGB video decoding with PyAV: a per-file frame index, metadata, sparse clip reading.

**What index ``i`` means.** Frame ``i`` is the *i-th presented frame*: the frame with the i-th smallest
presentation timestamp among the packets of the video stream that the container does not discard (edit
lists). This holds on variable-frame-rate files (indices follow timestamps, not ``time x fps``), on MPEG-4
Part 2 AVI with B-frames (whose timestamps start at 1), on trimmed MP4s (discarded packets are not frames)
and on open GOPs (a frame presented before its GOP's key frame is decoded from the previous key frame).

**The frame index** (:class:`FrameIndex`, :func:`frame_index`) holds those timestamps, the key frames and,
for every frame, the key frame to decode it from. It is read from the container's sample table where that is
complete (MP4 / MOV: no packet is read, so a clip of a 1-hour video reads a few GOPs, not the file) and
otherwise from every packet (demuxing only, no decoding: Matroska / WebM / AVI / MPEG-TS). It is cached per
file (in memory, LRU-bounded; optionally on disk, ``VIDEOFORMER_INDEX_DIR``), so ``probe`` + ``read_clip``
of one sample open the file once. An index read from the sample table is checked against every packet the
decoder sees; any disagreement replaces it by the index read from packets.

**Decoding.** ``read_clip`` seeks to the key frame a wanted frame needs only when that key frame lies ahead of
the packets already read (decoding forward is never cheaper than skipping), checks where each seek landed
(demuxers may land one GOP early or late), and tells the decoder to skip non-reference frames nobody asked
for (``skip_frame="NONREF"``, on codecs where that is bit-exact: nothing depends on them).

**Orientation and size.** Frames come back upright: a display matrix (phone videos filmed in portrait) is
applied by rotating in multiples of 90 degrees, as video players and FFmpeg's ``autorotate`` do, and
:class:`VideoInfo` reports the displayed width and height. A stream whose resolution changes mid-way is
scaled back to its first frame's size (with a warning naming the file), so clips keep one shape.

**Past the end** (a truncated file, a clip longer than the video): the frame is *padded* with the last
decoded frame, with a warning. Samplers (``videoformer.data.sampling``) never ask for such indices.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import threading
import zipfile
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import Iterator, Sequence

import av
import numpy as np

from videoformer.data.buffers import empty_array
from videoformer.data.clock import frame_rate, seconds
from videoformer.data.errors import VideoReadError

log = logging.getLogger(__name__)

__all__ = ["VideoInfo", "FrameIndex", "probe", "frame_index", "read_clip", "read_all_frames", "open_video",
           "select_video_stream", "to_rgb", "clear_index_cache", "INDEX_DIR_ENV", "INDEX_CACHE_ENV"]

INDEX_DIR_ENV = "VIDEOFORMER_INDEX_DIR"  # where frame indices are persisted (unset: memory only)
INDEX_CACHE_ENV = "VIDEOFORMER_INDEX_CACHE"  # how many files' indices one process keeps in memory
_INDEX_VERSION = 2  # 2: reorder_depth
# codecs on which skipping non-reference frames changes no other frame (their decoders skip only frames
# that no other frame references); checked bit-exact by the tests
_SKIP_NONREF = frozenset({"h264", "hevc", "mpeg4", "mpeg1video", "mpeg2video", "vp9"})


@dataclass(frozen=True)
class VideoInfo:
    """Stream metadata of one video file.

    ``num_frames_exact`` is True when the count comes from counting packets rather than from the
    container header (which may be missing or wrong, e.g. Matroska / MPEG-TS / raw streams).
    ``width`` / ``height`` are those of the frames ``read_clip`` returns (after ``rotation``, the
    display matrix's counter-clockwise rotation in degrees). ``fps`` is the average rate
    (``(num_frames - 1) / (last - first timestamp)``); ``vfr`` is True when frame durations vary.
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
    rotation: int = 0
    vfr: bool = False


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


def upright(rgb: np.ndarray, rotation: int) -> np.ndarray:
    """Apply a display rotation (degrees counter-clockwise, multiples of 90) to (H, W, C) pixels."""
    k = int(round(rotation / 90)) % 4
    return rgb if k == 0 else np.rot90(rgb, k)


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


def open_video(path: str | os.PathLike, probe: bool = True) -> av.container.InputContainer:
    """Open ``path`` with PyAV, turning every failure into a :class:`VideoReadError`.

    ``probe=False`` lets ``avformat_find_stream_info`` read headers only, without decoding frames to guess
    parameters (no decoder is allowed while probing): up to 7 frames, 30 ms a file at 720p. The codec
    parameters it leaves unknown (pixel format, reorder depth) are the caller's to restore."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise VideoReadError(path, "file not found")
    if os.path.isdir(path):
        raise VideoReadError(path, "is a directory, not a video file")
    if os.path.getsize(path) == 0:
        raise VideoReadError(path, "empty file (0 bytes)")
    try:
        container = av.open(path, mode="r", options=None if probe else {"codec_whitelist": "none"})
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoReadError(path, f"cannot open container: {e}") from e
    if not container.streams.video:
        container.close()
        raise VideoReadError(path, "container has no video stream")
    return container


def select_video_stream(container: av.container.InputContainer, path: str, only: bool = False
                        ) -> av.video.stream.VideoStream:
    """The stream holding the video: never an attached picture (cover art); among the others, the one
    FFmpeg ranks best (``av_find_best_stream``: most frames seen while probing, then default disposition).
    ``only``: the demuxer skips every other stream's packets instead of reading them (MOV interleaves
    audio; reading it too refills the I/O buffer at every sample: 9x the file for one pass)."""
    attached = av.stream.Disposition.attached_pic
    candidates = [s for s in container.streams.video if not s.disposition & attached]
    if not candidates:
        raise VideoReadError(path, "the only video stream is an attached picture (cover art), not a video")
    try:
        best = container.streams.best("video")
    except (av.FFmpegError, ValueError):
        best = None
    chosen = best if best in candidates else candidates[0]
    for other in container.streams if only else ():
        if other is not chosen:
            other.discard = av.stream.Discard.all
    return chosen


_NONE = np.iinfo(np.int64).min  # stands for a missing timestamp in int64 arrays


class _StaleIndex(Exception):
    """A packet contradicts an index read from the sample table: rebuild it from packets."""


@dataclass(eq=False)
class FrameIndex:
    """Where every presented frame of one video stream is and how to reach it.

    ``pts`` (N,): sorted presentation timestamps (stream time base) of the frames, discarded packets
    excluded; None when the stream carries no timestamps (frames are then counted by decoding from the
    start). ``key_id`` / ``key_seek`` / ``key_pos`` (K,): each key packet's identity (its ``key_by``
    timestamp), the timestamp to seek to, and its ordinal in decode order. ``gop`` (N,): the key frame to
    start decoding frame i from. ``from_packets``: read from every packet (False: from the sample table,
    checked while decoding).
    """

    path: str
    stream: int
    time_base: Fraction
    pts: np.ndarray | None
    num_frames: int
    key_id: np.ndarray
    key_seek: np.ndarray
    key_pos: np.ndarray
    gop: np.ndarray
    key_by: str  # "pts" or "dts"
    width: int
    height: int
    rotation: int
    codec: str
    has_audio: bool
    from_packets: bool
    fallback_fps: float = 0.0
    reorder_depth: int = 0  # the decoder's initial reorder depth after a probing open (see FrameReader)
    seek_offset: int | None = None  # learned: added to key_seek so the demuxer lands on the key itself

    def index_of(self, ts: int | None) -> int:
        """Presentation index of the frame with timestamp ``ts``, or -1."""
        if ts is None or self.pts is None:
            return -1
        i = int(self.pts.searchsorted(ts))  # the method: np.searchsorted's dispatch costs more, per packet
        return i if i < self.num_frames and int(self.pts[i]) == ts else -1

    def key_of(self, ts: int | None) -> int:
        """Which key packet has identity ``ts`` (-1: none)."""
        if ts is None:
            return -1
        k = int(self.key_id.searchsorted(ts))
        return k if k < len(self.key_id) and int(self.key_id[k]) == ts else -1

    @property
    def fps(self) -> float:
        if self.pts is not None and self.num_frames > 1 and self.pts[-1] > self.pts[0]:
            return float(Fraction(self.num_frames - 1) / (int(self.pts[-1] - self.pts[0]) * self.time_base))
        return self.fallback_fps

    @property
    def vfr(self) -> bool:
        if self.pts is None or self.num_frames < 3:
            return False
        d = np.diff(self.pts)
        return bool(d.max() - d.min() > max(1, 0.01 * np.median(d)))

    def times(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Presentation time in seconds of each frame, relative to frame 0 (its own timestamp)."""
        idx = np.clip(np.asarray(indices, dtype=np.int64), 0, self.num_frames - 1)
        if self.pts is None:
            return idx / self.fps
        return (self.pts[idx] - self.pts[0]).astype(np.float64) * float(self.time_base)

    def index_at(self, seconds: float | np.ndarray) -> np.ndarray:
        """Index of the frame whose timestamp is nearest to each time (seconds after frame 0; the later
        frame on a tie), clipped to the video: ``round(t * fps)`` on constant-rate files."""
        t = np.asarray(seconds, dtype=np.float64)
        if self.pts is None:
            return np.clip(np.round(t * self.fps).astype(np.int64), 0, self.num_frames - 1)
        ts = self.pts[0] + t / float(self.time_base)
        hi = np.clip(np.searchsorted(self.pts, ts), 1, max(self.num_frames - 1, 1))
        lo = hi - 1
        nearer_lo = (ts - self.pts[lo]) < (self.pts[np.minimum(hi, self.num_frames - 1)] - ts)
        return np.clip(np.where(nearer_lo, lo, hi), 0, self.num_frames - 1)

    @property
    def start_time(self) -> float:
        """Timestamp of frame 0 in seconds (for aligning other streams)."""
        return 0.0 if self.pts is None else seconds(int(self.pts[0]), self.time_base)

    def info(self) -> VideoInfo:
        fps = self.fps
        if fps <= 0:
            raise VideoReadError(self.path, "cannot determine the frame rate")
        quarter = self.rotation % 180 == 90
        return VideoInfo(
            path=self.path, num_frames=self.num_frames, fps=fps, duration=self.num_frames / fps,
            width=self.height if quarter else self.width, height=self.width if quarter else self.height,
            codec=self.codec, has_audio=self.has_audio, num_frames_exact=self.from_packets,
            rotation=self.rotation, vfr=self.vfr,
        )

    # --- persistence (no pickle: arrays + a JSON header, checked by CRC) ---
    _ARRAYS = ("pts", "key_id", "key_seek", "key_pos", "gop")

    def _header(self) -> dict:
        return {"version": _INDEX_VERSION, "stream": self.stream, "time_base": [self.time_base.numerator,
                self.time_base.denominator], "num_frames": self.num_frames, "key_by": self.key_by,
                "width": self.width, "height": self.height, "rotation": self.rotation, "codec": self.codec,
                "has_audio": self.has_audio, "from_packets": self.from_packets, "fallback_fps": self.fallback_fps,
                "reorder_depth": self.reorder_depth}

    def save(self, file: str | os.PathLike, source_stat: os.stat_result) -> None:
        arrays = {k: getattr(self, k) for k in self._ARRAYS if getattr(self, k) is not None}
        head = {**self._header(), "size": source_stat.st_size, "mtime_ns": source_stat.st_mtime_ns,
                "crc": _crc(arrays)}
        tmp = f"{os.fspath(file)}.tmp{os.getpid()}.npz"
        np.savez(tmp, header=np.frombuffer(json.dumps(head).encode(), dtype=np.uint8), **arrays)
        os.replace(tmp, file)

    @classmethod
    def load(cls, file: str | os.PathLike, path: str, source_stat: os.stat_result) -> "FrameIndex | None":
        """The index saved in ``file`` if it describes ``path`` as it is now and is intact, else None."""
        try:
            with np.load(file, allow_pickle=False) as z:
                head = json.loads(z["header"].tobytes().decode())
                arrays = {k: z[k] for k in cls._ARRAYS if k in z.files}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: rebuild
            return None
        if (head.get("version") != _INDEX_VERSION or head.get("size") != source_stat.st_size
                or head.get("mtime_ns") != source_stat.st_mtime_ns or head.get("crc") != _crc(arrays)):
            return None
        return cls(path=path, stream=head["stream"], time_base=Fraction(*head["time_base"]),
                   pts=arrays.get("pts"), num_frames=head["num_frames"], key_id=arrays["key_id"],
                   key_seek=arrays["key_seek"], key_pos=arrays["key_pos"], gop=arrays["gop"], key_by=head["key_by"],
                   width=head["width"], height=head["height"], rotation=head["rotation"], codec=head["codec"],
                   has_audio=head["has_audio"], from_packets=head["from_packets"], fallback_fps=head["fallback_fps"],
                   reorder_depth=head["reorder_depth"])


def _crc(arrays: dict[str, np.ndarray]) -> int:
    crc = 0
    for k in sorted(arrays):
        crc = zlib.crc32(np.ascontiguousarray(arrays[k]).tobytes(), zlib.crc32(k.encode(), crc))
    return crc


def _gop_of(positions: np.ndarray, key_pos: np.ndarray) -> np.ndarray:
    """For each packet ordinal, the last key packet at or before it in decode order."""
    return np.maximum(np.searchsorted(key_pos, positions, side="right") - 1, 0)


def _increasing(a: np.ndarray) -> bool:
    return bool((a != _NONE).all() and (np.diff(a) > 0).all())


def _index_from_table(container, stream, path: str) -> dict | None:
    """Index fields from an MP4 / MOV sample table (no packet read), or None when the table cannot give
    exact timestamps: fragmented files, variable frame rate with B-frames, no sync sample first."""
    if not {"mov", "mp4"} & set(container.format.name.split(",")):
        return None
    entries = stream.index_entries
    n = len(entries)
    if n < 2 or n != stream.frames or stream.start_time is None:
        return None
    table = np.array([(e.timestamp, e.is_keyframe, e.is_discard) for e in entries], dtype=np.int64)
    dts, key, kept = table[:, 0], table[:, 1].astype(bool), ~table[:, 2].astype(bool)
    if not kept.any() or not key[0] or not _increasing(dts):
        return None
    n_kept = int(kept.sum())
    if stream.codec_context.has_b_frames:  # reordered: exact only on a constant-rate grid
        step = np.diff(dts)
        if (step != step[0]).any():
            return None
        pts = int(stream.start_time) + np.arange(n_kept, dtype=np.int64) * int(step[0])
    else:  # presentation order is decode order
        pts = dts[kept] + (int(stream.start_time) - int(dts[kept][0]))
    key_pos = np.flatnonzero(key)
    first_shown = np.cumsum(kept) - kept  # kept frames before each packet: in closed GOPs, where its GOP starts
    key_index = first_shown[key_pos]
    key_seek = np.where(kept[key_pos], pts[np.minimum(key_index, n_kept - 1)], dts[key_pos])
    gop = np.searchsorted(key_index, np.arange(n_kept), side="right") - 1
    return dict(pts=pts, num_frames=n_kept, key_id=dts[key_pos], key_seek=key_seek, key_pos=key_pos,
                gop=gop.astype(np.int32), key_by="dts", from_packets=False)


def _index_from_packets(packets: list[tuple[int, int, bool, bool]], path: str) -> dict:
    """Index fields from every packet's (pts, dts, key, kept) in decode order."""
    table = np.array(packets, dtype=np.int64).reshape(-1, 4)
    pts_a, dts_a = table[:, 0], table[:, 1]
    key_a, kept_a = table[:, 2].astype(bool), table[:, 3].astype(bool)
    if not kept_a.any():
        raise VideoReadError(path, "every video packet is marked discarded")
    ts = np.where(pts_a != _NONE, pts_a, dts_a)
    key_a[0] = True  # decoding has to start somewhere; FFmpeg conceals what a missing reference would give
    key_pos, kept_pos = np.flatnonzero(key_a), np.flatnonzero(kept_a)
    ts_kept = ts[kept_pos]
    sorted_ts = np.sort(ts_kept, kind="stable")
    key_by = "pts" if _increasing(pts_a[key_pos]) else "dts" if _increasing(dts_a[key_pos]) else None
    if key_by is None or (ts_kept == _NONE).any() or (np.diff(sorted_ts) == 0).any():
        log.info("%s: frames lack distinct timestamps; frames are counted by decoding from the start", path)
        z = np.zeros(1, np.int64)
        return dict(pts=None, num_frames=len(kept_pos), key_id=z, key_seek=z, key_pos=z,
                    gop=np.zeros(len(kept_pos), np.int32), key_by="pts", from_packets=True)
    gop = _gop_of(kept_pos, key_pos)
    lead = (ts_kept < ts[key_pos][gop]) & (gop > 0)  # open GOP: shown before its key frame, needs the previous GOP
    gop[lead] -= 1
    order = np.argsort(ts_kept, kind="stable")
    return dict(pts=sorted_ts, num_frames=len(kept_pos), key_id=(pts_a if key_by == "pts" else dts_a)[key_pos],
                key_seek=ts[key_pos], key_pos=key_pos, gop=gop[order].astype(np.int32), key_by=key_by,
                from_packets=True)


def _build_index(path: str, from_packets: bool) -> FrameIndex:
    """Read the index of ``path``: the sample table when it is exact, else every packet. Decodes the first
    frame on the way (its size and display matrix are the stream's)."""
    with open_video(path) as container:
        stream = select_video_stream(container, path, only=True)
        stream.thread_type, stream.thread_count = "SLICE", 1
        cc = stream.codec_context
        reorder_depth = int(cc.reorder_depth)  # as the probe left it, before decoding changes it
        fields = None if from_packets else _index_from_table(container, stream, path)
        first, packets = None, []
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # flush packet
                    if first is None:
                        first = next(iter(_decode_packet(cc, None)), None)
                    continue
                if first is None:
                    first = next(iter(_decode_packet(cc, packet)), None)
                if fields is not None:
                    if first is not None:
                        break
                    continue
                p, d = packet.pts, packet.dts
                packets.append((_NONE if p is None else p, _NONE if d is None else d, packet.is_keyframe,
                                not packet.is_discard))
        except av.FFmpegError as e:
            if fields is None and not packets:
                raise VideoReadError(path, f"demuxing failed while indexing frames: {e}") from e
            log.warning("%s: demuxing stopped (%s); indexing the frames before it", path, e)
        if fields is None:
            if not packets:
                raise VideoReadError(path, "video stream holds no packets")
            fields = _index_from_packets(packets, path)
        fps = frame_rate(stream)
        return FrameIndex(
            path=path, stream=stream.index, time_base=stream.time_base or Fraction(1, 1),
            width=int(first.width if first is not None else cc.width),
            height=int(first.height if first is not None else cc.height),
            rotation=int(first.rotation) if first is not None else 0, codec=cc.name,
            has_audio=bool(container.streams.audio), fallback_fps=float(fps) if fps else 0.0,
            reorder_depth=reorder_depth, **fields)


class _IndexCache:
    """Frame indices by (path, size, mtime): in memory (LRU) and, with a directory, on disk."""

    def __init__(self) -> None:
        self._items: OrderedDict[tuple, FrameIndex] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str, from_packets: bool = False) -> FrameIndex:
        try:
            st = os.stat(path)
        except OSError:
            open_video(path)  # raises the typed error (missing file, ...)
            raise
        key = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            index = self._items.get(key)
            if index is not None:
                self._items.move_to_end(key)
        if index is not None and (index.from_packets or not from_packets):
            return index
        disk = self._disk_file(key)
        if disk is not None and index is None and os.path.isfile(disk):
            index = FrameIndex.load(disk, path, st)
        if index is None or (from_packets and not index.from_packets):
            index = _build_index(path, from_packets)
            if disk is not None:
                try:
                    os.makedirs(os.path.dirname(disk), exist_ok=True)
                    index.save(disk, st)
                except OSError as e:
                    log.warning("%s: cannot persist the frame index to %s: %s", path, disk, e)
        self.put(key, index)
        return index

    def put(self, key: tuple, index: FrameIndex) -> None:
        limit = max(1, int(os.environ.get(INDEX_CACHE_ENV, "512")))
        with self._lock:
            self._items[key] = index
            self._items.move_to_end(key)
            while len(self._items) > limit:
                self._items.popitem(last=False)

    def replace(self, path: str) -> FrameIndex:
        """Drop a stale index of ``path`` and build it from packets."""
        return self.get(path, from_packets=True)

    @staticmethod
    def _disk_file(key: tuple) -> str | None:
        root = os.environ.get(INDEX_DIR_ENV)
        if not root:
            return None
        name = hashlib.sha1(os.path.realpath(key[0]).encode()).hexdigest()[:20]
        return os.path.join(root, f"{name}.frames.npz")

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_CACHE = _IndexCache()


def frame_index(path: str | os.PathLike, from_packets: bool = False) -> FrameIndex:
    """The (cached) :class:`FrameIndex` of ``path``'s video stream; ``from_packets=True`` insists on one
    read from every packet. Raises :class:`VideoReadError` naming the file when it cannot be indexed."""
    return _CACHE.get(os.fspath(path), from_packets)


def clear_index_cache() -> None:
    """Forget every in-memory frame index (files changed in place keep their size and mtime)."""
    _CACHE.clear()


def probe(path: str | os.PathLike, exact: bool = False) -> VideoInfo:
    """Frame count, average fps, duration, displayed size and rotation of ``path`` from its frame index
    (cached: probing a file a dataset has read before costs nothing). ``exact=True`` counts packets
    even where the container's sample table has the count."""
    return frame_index(path, from_packets=exact).info()


def _decode_packet(cc, packet) -> list:
    """Decode one packet (None drains the decoder); a corrupt packet yields nothing."""
    try:
        return cc.decode(packet)
    except av.FFmpegError as e:
        log.debug("undecodable packet skipped: %s", e)
        return []


def _decode_from(container, stream, path: str) -> Iterator[av.VideoFrame]:
    try:
        yield from container.decode(stream)
    except av.FFmpegError as e:
        raise VideoReadError(path, f"decoding failed: {e}") from e


class FrameReader:
    """An open video with its frame index: yields the decoded frames that reach a set of wanted indices.

    Used by :func:`read_clip` (RGB) and the compressed-domain extraction alike. ``skip_unwanted`` lets the
    decoder skip non-reference frames that are not wanted (exact: nothing references them).
    """

    def __init__(self, path: str, threads: int = 1, options: dict[str, str] | None = None) -> None:
        self.path = path
        self.index = frame_index(path)
        self.threads, self.options = threads, options
        self.container = None
        self._open()

    def _open(self) -> None:
        if self.container is not None:
            self.container.close()
        # without probe decoding (the index holds what it learns); a container whose header does not
        # name the indexed stream and codec (MPEG-TS, raw streams) is opened with it
        for probe in (False, True):
            self.container = open_video(self.path, probe=probe)
            self.stream = select_video_stream(self.container, self.path, only=True)
            if self.stream.index == self.index.stream and self.stream.codec_context.name == self.index.codec:
                break
            self.container.close()
        else:
            raise VideoReadError(self.path, f"video stream {self.stream.index}, indexed {self.index.stream}")
        # the reorder depth a probing open would have set: the decoder then outputs frames exactly as then
        self.stream.codec_context.reorder_depth = self.index.reorder_depth
        self.stream.thread_type = "AUTO" if self.threads != 1 else "SLICE"
        self.stream.thread_count = self.threads
        if self.options:
            self.stream.codec_context.options = dict(self.options)
        self.cc = self.stream.codec_context
        self._packets: Iterator | None = None  # positioned demuxer (None: before the first seek)
        self._pending = None  # a packet read while checking where a seek landed, not yet decoded
        self._pos = 0  # decode-order ordinal of the next packet
        self._skipping = False

    def close(self) -> None:
        if self.container is not None:
            self.container.close()
            self.container = None

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _packet_id(self, packet) -> int | None:
        return packet.pts if self.index.key_by == "pts" else packet.dts

    def _land(self, ts: int) -> tuple[int, object] | None:
        """Seek to ``ts``; return (key landed on, its packet), or None when nothing identifiable follows."""
        try:
            self.container.seek(int(ts), backward=True, any_frame=False, stream=self.stream)
        except av.FFmpegError:
            return None
        self._packets = iter(self.container.demux(self.stream))
        for packet in self._packets:
            if packet.size == 0:
                return None
            k = self.index.key_of(self._packet_id(packet))
            if k >= 0:
                return k, packet
        return None

    def _seek_key(self, k: int) -> None:
        """Position the demuxer on key packet ``k`` (checked); an early landing skips packets without
        decoding them, a late one retries earlier, ending with a fresh demuxer at the start."""
        ix = self.index
        tries = [int(ix.key_seek[k]) + (ix.seek_offset or 0), int(ix.key_seek[k])]
        if ix.key_by == "dts" or ix.key_seek[k] != ix.key_id[k]:
            tries.append(int(ix.key_id[k]))
        for ts in dict.fromkeys(tries):
            landed = self._land(ts)
            if landed is None or landed[0] > k:
                continue
            if landed[0] < k and ix.seek_offset is None:
                ix.seek_offset = self._calibrate(k)
                landed = self._land(int(ix.key_seek[k]) + ix.seek_offset)
                if landed is None or landed[0] > k:
                    continue
            if self._skip_to(k, *landed):
                return
        self._open()  # from the start (no seek)
        self._packets = iter(self.container.demux(self.stream))
        if not self._skip_to(k, -1, None):
            raise VideoReadError(self.path, f"key frame {k} not found while demuxing")

    def _skip_to(self, k: int, landed: int, packet) -> bool:
        """Read packets without decoding until key packet ``k``; keep it pending."""
        while landed != k:
            packet = next(self._packets, None)
            if packet is None or packet.size == 0:
                return False
            landed = self.index.key_of(self._packet_id(packet))
            if landed > k:
                return False
        self._pending, self._pos = packet, int(self.index.key_pos[k])
        return True

    def _calibrate(self, k: int) -> int:
        """Smallest offset to ``key_seek`` that lands on key ``k`` itself (demuxers such as MOV with
        edit lists compare seek targets against shifted timestamps); learned once per file."""
        ix = self.index
        lo, hi = 0, (int(ix.key_seek[k + 1]) - int(ix.key_seek[k])) if k + 1 < len(ix.key_seek) else 0
        if hi <= 0:
            return 0
        landed = self._land(int(ix.key_seek[k]) + hi - 1)
        if landed is None or landed[0] != k:
            return 0
        hi -= 1
        while lo < hi:  # invariant: key_seek + hi lands on k, key_seek + lo - 1 does not (or lo == 0)
            mid = (lo + hi) // 2
            landed = self._land(int(ix.key_seek[k]) + mid)
            if landed is not None and landed[0] == k:
                hi = mid
            else:
                lo = mid + 1
        return hi

    def _next_packet(self):
        if self._pending is not None:
            packet, self._pending = self._pending, None
            return packet
        return next(self._packets, None)

    def frames(self, wanted: Sequence[int], skip_unwanted: bool = True, max_gap: int | None = None
               ) -> Iterator[tuple[int, av.VideoFrame]]:
        """Yield ``(index, frame)`` in presentation order for every frame decoded on the way to each of
        the sorted, in-range ``wanted`` indices (the wanted ones included; a frame the decoder drops is
        missing). A seek happens only when the next wanted frame's key frame has not been read yet (and,
        with ``max_gap``, the frame is more than ``max_gap`` past the last one decoded).

        Raises ``_StaleIndex`` when a packet contradicts an index read from the sample table (see
        :func:`_with_index_retry`)."""
        ix = self.index
        if ix.pts is None:
            yield from self._counted(wanted)
            return
        skip_ok = skip_unwanted and ix.codec in _SKIP_NONREF
        wanted_set = set(wanted)
        done, cur_key = -1, -1
        for target in wanted:
            if target <= done:
                continue
            g = int(ix.gop[target])
            if self._packets is None or (int(ix.key_pos[g]) > self._pos
                                         and (max_gap is None or done < 0 or target - done > max_gap)):
                self._seek_key(g)
            while done < target:  # feed packets until the target comes out
                packet = self._next_packet()
                if packet is None:
                    return
                if packet.size == 0:  # end of stream: drain the decoder
                    self._packets = iter(())
                    frames = _decode_packet(self.cc, None)
                else:
                    self._pos += 1
                    i = ix.index_of(packet.pts)
                    k = ix.key_of(self._packet_id(packet))
                    if k >= 0:
                        cur_key, self._pos = k, int(ix.key_pos[k]) + 1
                    if not ix.from_packets and not packet.is_discard and (i < 0 or int(ix.gop[i]) != cur_key):
                        raise _StaleIndex()
                    if skip_ok and (i not in wanted_set) != self._skipping:
                        self._skipping = not self._skipping
                        self.cc.skip_frame = "NONREF" if self._skipping else "DEFAULT"
                    frames = _decode_packet(self.cc, packet)
                for frame in frames:
                    j = ix.index_of(frame.pts)
                    if j > done:
                        done = j
                        yield j, frame
                if packet.size == 0:
                    return

    def _counted(self, wanted) -> Iterator[tuple[int, av.VideoFrame]]:
        """Streams without timestamps: decode from the start, frame i is the i-th one out."""
        self._open()
        end = wanted[-1]
        for i, frame in enumerate(_decode_from(self.container, self.stream, self.path)):
            yield i, frame
            if i >= end:
                return


def _plan(path: str, idx: np.ndarray, n: int) -> list[int]:
    """Sorted wanted indices, those past the end replaced by the last frame (with a warning)."""
    over = idx >= n
    if over.any():
        log.warning("%s: frames %s past the end of the stream (%d frames); padded with the last frame",
                    path, sorted(set(idx[over].tolist()))[:8], n)
    return sorted(set(np.minimum(idx, n - 1).tolist()))


def read_clip(
    path: str | os.PathLike,
    indices: Sequence[int] | np.ndarray,
    max_gap: int | None = None,
    threads: int = 1,
    short_side: int | None = None,
) -> np.ndarray:
    """Decode the frames at presentation ``indices`` (any order, repeats allowed).

    Returns uint8 RGB of shape (T, H, W, 3) with ``T == len(indices)``, in the order asked, upright
    (display matrix applied). ``short_side`` rescales frames while converting to RGB (one swscale pass,
    cheaper than decoding HD frames to full-size RGB and resizing later). Seeks are planned from the
    frame index (see the module docstring); ``max_gap`` additionally keeps decoding forward, instead of
    seeking, while the next wanted frame is at most ``max_gap`` frames ahead. Indices past the real end
    are padded with the last decoded frame.

    Raises :class:`VideoReadError` naming ``path`` for unreadable files and ``ValueError`` for
    negative indices.
    """
    path = os.fspath(path)
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError(f"{path}: read_clip needs at least one frame index")
    if (idx < 0).any():
        raise ValueError(f"{path}: negative frame indices {idx[idx < 0].tolist()}")
    return _with_index_retry(path, lambda: _read_clip(path, idx, max_gap, threads, short_side))


def _with_index_retry(path: str, fn):
    """Run ``fn``; if a packet contradicted the sample-table index, index ``path`` from packets and rerun."""
    try:
        return fn()
    except _StaleIndex:
        log.info("%s: the sample table disagrees with the packets; indexing from packets", path)
        _CACHE.replace(path)
        return fn()


def _read_clip(path: str, idx: np.ndarray, max_gap: int | None, threads: int, short_side: int | None) -> np.ndarray:
    """Each wanted frame is converted straight into its slots of the output (no per-frame arrays held, no
    final stack: for HD clips the page faults of those copies cost as much as a third of the decoding)."""
    out: np.ndarray | None = None
    done: list[int] = []  # wanted indices written to ``out``, in decode (= presentation) order
    last: list = []  # [index, frame] of the latest decoded frame
    with FrameReader(path, threads) as reader:
        ix = reader.index
        wanted = _plan(path, idx, ix.num_frames)
        idx = np.minimum(idx, ix.num_frames - 1)
        slots: dict[int, list[int]] = {}
        for pos, i in enumerate(idx.tolist()):
            slots.setdefault(i, []).append(pos)
        size = short_side_size(ix.width, ix.height, short_side) or (ix.width, ix.height)
        resized = False
        for i, frame in reader.frames(wanted, max_gap=max_gap):
            if i in slots:
                if not resized and (frame.width, frame.height) != (ix.width, ix.height):
                    log.warning("%s: resolution changes mid-stream (%dx%d at frame %d, first frame %dx%d); "
                                "scaled to the first frame's size", path, frame.width, frame.height, i,
                                ix.width, ix.height)
                    resized = True
                rgb = upright(to_rgb(frame, size), frame.rotation)
                if out is None:
                    out = empty_array((len(idx), *rgb.shape), rgb.dtype)
                for pos in slots[i]:
                    out[pos] = rgb
                done.append(i)
            last[:] = [i, frame]
        if not done and not last:
            raise VideoReadError(path, "no frame could be decoded")
        extra = None  # the last decoded frame when it was not wanted: a padding source
        if last and last[0] not in slots:
            extra = upright(to_rgb(last[1], size), last[1].rotation)
    if len(done) < len(slots):
        out = _pad_missing(path, idx, out, slots, done, extra if extra is None else (last[0], extra))
    return out


def _pad_missing(path: str, idx: np.ndarray, out: np.ndarray | None, slots: dict[int, list[int]], done: list[int],
                 extra: tuple[int, np.ndarray] | None) -> np.ndarray:
    """Fill the frames the decoder never produced with the nearest earlier decoded one (the last decoded
    frame counts even when not wanted; before every decoded frame: the first one)."""
    source = {i: out[slots[i][0]] for i in done}
    if extra is not None:
        source[extra[0]] = extra[1]
    keys = np.array(sorted(source))
    missing = sorted(set(slots) - set(done))
    log.warning("%s: frames %s could not be decoded; padded with the nearest earlier frame", path, missing[:8])
    if out is None:
        out = empty_array((len(idx), *extra[1].shape), extra[1].dtype)
    for i in missing:
        src = source[int(keys[max(int(np.searchsorted(keys, i, side="right")) - 1, 0)])]
        for pos in slots[i]:
            out[pos] = src
    return out


def read_all_frames(path: str | os.PathLike) -> np.ndarray:
    """Decode every frame in order (uint8 RGB, (N, H, W, 3), upright, at the first frame's size);
    a reference for tests, not for training."""
    path = os.fspath(path)
    with open_video(path) as container:
        stream = select_video_stream(container, path, only=True)
        stream.thread_type, stream.thread_count = "SLICE", 1
        frames, size = [], None
        for f in _decode_from(container, stream, path):
            size = size or (f.width, f.height)
            frames.append(upright(to_rgb(f, size), f.rotation))
    if not frames:
        raise VideoReadError(path, "no frame could be decoded")
    return np.stack(frames)
