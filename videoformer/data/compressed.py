"""Compressed-domain representation: I-frames, motion vectors and residuals (MM-ViT §3.1, CoViAR).

Videos are first re-encoded as MPEG-4 Part 2 with GOP 12 and no B-frames (MM-ViT §4.1: "an I-frame is
followed by 11 P-frames"), then FFmpeg's decoder exports each P-frame's motion vectors
(``flags2=+export_mvs``). Vectors are rasterised per block, rounded to integer pels, and - with
``accumulate=True`` - chained back to the GOP's I-frame as CoViAR does, so that for every sampled frame

    decoded[y, x] == iframe[y - dy, x - dx] + residual[y, x]        (exactly, RGB, int)

with ``(dx, dy) = position - source position`` and sources clipped to the frame. The residual is
*defined* by that identity (decoded RGB minus the motion-compensated I-frame). With
``accumulate=False`` the reference is the previous decoded frame instead of the I-frame.
Normalisation (CoViAR clipping / scaling) belongs to ``transforms``, not here.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Sequence

import av
import numba
import numpy as np

from videoformer.data.clock import frame_rate
from videoformer.data.buffers import empty_array
from videoformer.data.errors import VideoReadError, warn_once
from videoformer.data.sampling import uniform_indices
from videoformer.data.video import (FrameReader, _plan, _with_index_retry, frame_index, open_video,
                                    select_video_stream, to_rgb, upright)

log = logging.getLogger(__name__)

__all__ = ["CompressedClip", "reencode_mpeg4", "extract_compressed", "rasterize_motion_vectors"]

_CELL = 4  # every codec FFmpeg exports MVs for uses blocks on a 4-pel grid


@dataclass
class CompressedClip:
    """T sampled frames of one video in the compressed domain (numpy, channels first).

    iframe: uint8 (T, 3, H, W) RGB I-frame of each sampled frame's GOP.
    mv: int16 (T, 2, H, W) ``(dx, dy)`` = position - source position, in pixels.
    residual: int16 (T, 3, H, W) RGB, decoded - motion-compensated reference.
    frame_indices: int64 (T,) presentation index of each sampled frame.
    reference_indices: int64 (T,) index of the frame ``mv`` / ``residual`` refer to (the GOP's I-frame
    with ``accumulate=True``, the previous frame otherwise).
    audio: float32 (T, 128) audio embedding per sampled frame (zeros without an audio stream).
    audio_logmel: float32 (T, 96, 64) VGGish log-mel example centred on each sampled frame, or None.
    """

    iframe: np.ndarray
    mv: np.ndarray
    residual: np.ndarray
    frame_indices: np.ndarray
    reference_indices: np.ndarray
    has_audio: bool
    audio: np.ndarray
    audio_logmel: np.ndarray | None = None
    fps: float = 0.0
    num_frames: int = 0
    accumulate: bool = True
    path: str = ""


def reencode_mpeg4(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    size: tuple[int, int] | None = (340, 256),
    gop: int = 12,
    qscale: int = 2,
    max_frames: int | None = None,
) -> str:
    """Re-encode ``src`` as MPEG-4 Part 2 (GOP ``gop``, no B-frames) with AAC audio kept, as MM-ViT /
    CoViAR prepare data. ``size`` is (width, height), None keeps the source size; ``qscale`` is the
    fixed quantiser (FFmpeg ``-q:v``, 1 best .. 31 worst). Output timestamps are constant-rate at the
    source's average frame rate. Writes ``dst`` (an .mp4 / .avi / .mkv) and returns its path.
    """
    src, dst = os.fspath(src), os.fspath(dst)
    info = frame_index(src).info()  # displayed (upright) size
    with open_video(src) as inp:
        vin = select_video_stream(inp, src)
        ain = inp.streams.audio[0] if inp.streams.audio else None
        rate = frame_rate(vin) or Fraction(25)
        width, height = size if size is not None else (info.width, info.height)
        if width % 2 or height % 2:
            raise ValueError(f"{dst}: MPEG-4 4:2:0 needs an even size, got {width}x{height}")
        try:
            with av.open(dst, mode="w") as out:
                vs = out.add_stream("mpeg4", rate=rate)
                vs.width, vs.height, vs.pix_fmt = width, height, "yuv420p"
                vs.codec_context.gop_size = gop
                vs.codec_context.max_b_frames = 0
                vs.codec_context.options = {"flags": "+qscale", "global_quality": str(118 * qscale),
                                            "sc_threshold": "1000000000"}  # fixed GOPs, no scene cuts
                as_, resampler, a_pts = None, None, 0
                if ain is not None:
                    sr = ain.codec_context.sample_rate or 48000
                    layout = "stereo" if (ain.codec_context.channels or 1) >= 2 else "mono"
                    as_ = out.add_stream("aac", rate=sr, layout=layout)
                    resampler = av.AudioResampler(format="fltp", layout=layout, rate=sr, frame_size=1024)

                def encode_audio(frame: av.AudioFrame | None) -> None:
                    """Resample ``frame`` (None: flush) to AAC frames with contiguous pts and mux them."""
                    nonlocal a_pts
                    for f in resampler.resample(frame):
                        f.pts, a_pts = a_pts, a_pts + f.samples
                        for p in as_.encode(f):
                            out.mux(p)

                n = 0
                streams = [s for s in (vin, ain) if s is not None]
                for packet in inp.demux(*streams):
                    for frame in packet.decode():
                        if packet.stream.type == "video":
                            if max_frames is not None and n >= max_frames:
                                continue
                            if frame.rotation:  # apply the display matrix: the re-encode is upright
                                frame = av.VideoFrame.from_ndarray(
                                    np.ascontiguousarray(upright(to_rgb(frame), frame.rotation)), format="rgb24")
                            g = frame.reformat(width=width, height=height, format="yuv420p", threads=1)
                            g.pts, g.time_base = n, 1 / rate
                            n += 1
                            for p in vs.encode(g):
                                out.mux(p)
                        elif as_ is not None:
                            if max_frames is not None and frame.time is not None and frame.time > max_frames / rate:
                                continue
                            frame.pts = None
                            encode_audio(frame)
                for p in vs.encode():
                    out.mux(p)
                if as_ is not None:
                    encode_audio(None)
                    for p in as_.encode():
                        out.mux(p)
        except av.FFmpegError as e:
            raise VideoReadError(src, f"re-encoding to {dst} failed: {e}") from e
    if n == 0:
        raise VideoReadError(src, "no video frame decoded while re-encoding")
    return dst


def rasterize_motion_vectors(mvs: np.ndarray | None, height: int, width: int) -> np.ndarray:
    """Per-pixel offset to the source in the past reference, int32 (H, W, 2) as (oy, ox).

    ``mvs`` is FFmpeg's AVMotionVector array (PyAV ``side_data["MOTION_VECTORS"].to_ndarray()``).
    Only past references (``source < 0``) are used; the offset is ``motion / motion_scale`` rounded
    to the nearest pel (``src_x`` is truncated by FFmpeg, so it is not used). Pixels of intra blocks
    and of blocks without a vector get offset 0. Block (w, h) is centred on (dst_x, dst_y).
    """
    grid, cell = motion_cells(mvs, height, width)
    return np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)[:height, :width]


def motion_cells(mvs: np.ndarray | None, height: int, width: int) -> tuple[np.ndarray, int]:
    """The offsets of :func:`rasterize_motion_vectors` on their grid of ``cell`` x ``cell`` pixel cells:
    (grid (GH, GW, 2) int32 as (oy, ox), cell); pixel (y, x) takes ``grid[y // cell, x // cell]``. The
    cell is the coarsest power of two every block is made of (16 for MPEG-4 without 4MV); the grid has
    64 pixels of margin beyond the macroblock-aligned frame, where blocks fall outside it."""
    if mvs is None or not len(mvs):
        mvs = np.zeros(0, dtype=[(k, "i4") for k in ("source", "w", "h", "dst_x", "dst_y", "motion_x", "motion_y",
                                                      "motion_scale")])
    grid, cell = _cells(mvs["source"], mvs["w"], mvs["h"], mvs["dst_x"], mvs["dst_y"], mvs["motion_x"],
                        mvs["motion_y"], mvs["motion_scale"], height, width)
    if cell % _CELL:
        raise ValueError("motion-vector blocks not on a 4-pel grid")
    return grid, cell


@numba.njit(cache=True, nogil=True)
def _cells(source, bw, bh, dst_x, dst_y, motion_x, motion_y, scale, height, width):  # pragma: no cover
    """:func:`motion_cells` on the vector fields (past references only, later blocks written last)."""
    bits = 16
    for i in range(source.shape[0]):
        if source[i] < 0:
            bits |= (dst_x[i] - bw[i] // 2) | (dst_y[i] - bh[i] // 2) | bw[i] | bh[i]
    cell = bits & -bits
    gh = (height + 15) // 16 * 16 // cell + 64 // cell
    gw = (width + 15) // 16 * 16 // cell + 64 // cell
    grid = np.zeros((gh, gw, 2), np.int32)
    for i in range(source.shape[0]):
        if source[i] >= 0:
            continue
        oy = np.int32(np.floor(motion_y[i] / np.float64(scale[i]) + 0.5))
        ox = np.int32(np.floor(motion_x[i] / np.float64(scale[i]) + 0.5))
        cy = (dst_y[i] - bh[i] // 2) // cell
        cx = (dst_x[i] - bw[i] // 2) // cell
        for dy in range(bh[i] // cell):
            for dx in range(bw[i] // cell):
                y, x = min(max(cy + dy, 0), gh - 1), min(max(cx + dx, 0), gw - 1)
                grid[y, x, 0] = oy
                grid[y, x, 1] = ox
    return grid, cell


@numba.njit(cache=True, nogil=True)
def _trace(grid, shift, prev, w, out):  # pragma: no cover - compiled
    """One motion-compensation step composed with the source map ``prev``: for pixel (y, x),
    ``out[:, y * w + x] = prev[:, q]`` with q the flat index of ``(y, x) + grid[y >> shift, x >> shift]``
    clipped to the frame. Source maps are (2, H * W) int16: the row and column each pixel comes from."""
    h = prev.shape[1] // w
    cell = 1 << shift
    py, px, qy, qx = prev[0], prev[1], out[0], out[1]
    for y in range(h):
        gy = y >> shift
        row = y * w
        for gx in range(grid.shape[1]):
            x0 = gx * cell
            if x0 >= w:
                break
            sy = min(max(y + grid[gy, gx, 0], 0), h - 1) * w
            ox = grid[gy, gx, 1]
            for x in range(x0, min(x0 + cell, w)):
                q = numba.uint64(sy + min(max(x + ox, 0), w - 1))
                p = numba.uint64(row + x)
                qy[p] = py[q]
                qx[p] = px[q]


@numba.njit(cache=True, nogil=True)
def _compensate(src, ref, rgb, w, mv, res):  # pragma: no cover - compiled
    """For every pixel p = (y, x) with source (sy, sx) = src[:, p]: mv[:, p] = (x - sx, y - sy) and
    res[:, p] = rgb[p] - ref[sy * w + sx] (RGB, int16); ``ref`` / ``rgb`` are (H * W, 3) uint8."""
    ref1, rgb1 = ref.reshape(-1), rgb.reshape(-1)
    sy, sx = src[0], src[1]
    h = src.shape[1] // w
    p = numba.uint64(0)
    for y in range(h):
        for x in range(w):
            a, b = sy[p], sx[p]
            mv[0, p] = x - b
            mv[1, p] = y - a
            q = numba.uint64(a * w + b) * numba.uint64(3)
            r = p * numba.uint64(3)
            res[0, p] = np.int16(rgb1[r]) - np.int16(ref1[q])
            res[1, p] = np.int16(rgb1[r + numba.uint64(1)]) - np.int16(ref1[q + numba.uint64(1)])
            res[2, p] = np.int16(rgb1[r + numba.uint64(2)]) - np.int16(ref1[q + numba.uint64(2)])
            p += numba.uint64(1)


def extract_compressed(
    path: str | os.PathLike,
    num_segments: int = 8,
    accumulate: bool = True,
    indices: Sequence[int] | np.ndarray | None = None,
    train: bool = False,
    rng: np.random.Generator | None = None,
    audio: bool = True,
    audio_embedder=None,
    seek_gap: int | None = None,
) -> CompressedClip:
    """Decode what the sampled frames need and return the :class:`CompressedClip` of ``path``.

    Each sampled frame is decoded from its GOP's key frame, found in the frame index; the reader seeks
    there when that key frame lies ahead of what it has read (with ``seek_gap``: only when the frame is
    also more than ``seek_gap`` frames past the last decoded one), so 8 segments of a long video cost
    about 8 GOPs of decoding.

    Frames are sampled TSN-style (``uniform_indices``: segment centres for test, random for train)
    unless ``indices`` is given. Expects a stream without B-frames (``reencode_mpeg4``); future
    references of any B-frame are ignored with a warning. ``audio_embedder`` maps log-mel examples
    (N, 96, 64) to (N, 128); default :func:`videoformer.data.audio.default_embedder`. The log-mel
    cached by ``videoformer extract`` (:mod:`videoformer.data.prepare`) next to the video is used when present.
    """
    path = os.fspath(path)
    ix = frame_index(path)
    if indices is None:
        idx = uniform_indices(ix.num_frames, num_segments, train=train, rng=rng)
    else:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0 or (idx < 0).any():
            raise ValueError(f"{path}: frame indices must be non-negative and non-empty, got {idx.tolist()}")
    iframe, mv, res, refs = _with_index_retry(path, lambda: _extract_visual(path, idx, accumulate, seek_gap))
    ix = frame_index(path)
    info = ix.info()
    emb, logmel, has_audio = _audio(path, ix.times(idx), ix.start_time, audio and info.has_audio,
                                    audio_embedder, info.has_audio)
    return CompressedClip(
        iframe=iframe, mv=mv, residual=res,
        frame_indices=idx, reference_indices=refs, has_audio=has_audio, audio=emb, audio_logmel=logmel,
        fps=info.fps, num_frames=info.num_frames, accumulate=accumulate, path=path,
    )


class _SourceMaps:
    """Where each pixel of an H x W frame comes from, as (2, H * W) int16 (row, column) maps, with
    reused buffers: ``identity`` and the maps ``trace`` returns (two alternate, so a map can be
    composed with the previous one)."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.identity = np.stack(np.divmod(np.arange(h * w), w)).astype(np.int16)
        self._buffers = [np.empty_like(self.identity) for _ in range(3)]

    def trace(self, mvs: np.ndarray | None, prev: np.ndarray) -> np.ndarray:
        """``prev`` composed with one frame's motion-compensation step (``mvs``: its FFmpeg vectors)."""
        grid, cell = motion_cells(mvs, self.h, self.w)
        out = next(b for b in self._buffers if b is not prev)
        self._buffers.remove(out)
        self._buffers.append(out)  # least recently handed out first
        _trace(grid, cell.bit_length() - 1, prev, self.w, out)
        return out


def _extract_visual(path: str, idx: np.ndarray, accumulate: bool, seek_gap: int | None):
    """(iframe, mv, residual, reference index) of every sampled frame, stacked as ``idx`` asks.

    Frames come from the shared :class:`~videoformer.data.video.FrameReader` (the frame index tells where
    each GOP starts); every frame from a GOP's key frame to a sampled one is decoded, since the motion of
    each one is chained.
    """
    with FrameReader(path, options={"flags2": "+export_mvs"}) as reader:
        ix = reader.index
        h, w = ix.height, ix.width
        if ix.rotation:
            log.warning("%s: display rotation %d ignored in the compressed domain (reencode_mpeg4 applies it)",
                        path, ix.rotation)
        wanted = _plan(path, idx, ix.num_frames)
        need = sorted(set(wanted) | (set() if accumulate else {max(i - 1, 0) for i in wanted}))
        slots: dict[int, list[int]] = {}
        for k, i in enumerate(np.minimum(idx, ix.num_frames - 1).tolist()):
            slots.setdefault(i, []).append(k)
        t = len(idx)
        iframe = empty_array((t, 3, h, w), np.uint8)
        mv = empty_array((t, 2, h, w), np.int16)
        res = empty_array((t, 3, h, w), np.int16)
        refs = np.zeros(t, np.int64)
        done: set[int] = set()
        maps = _SourceMaps(h, w)
        key_rgb = key_planar = None
        key_idx, src, prev_rgb, prev_i, warned_b = -1, maps.identity, None, -1, False
        for i, frame in reader.frames(need, skip_unwanted=False, max_gap=seek_gap):
            if (frame.width, frame.height) != (w, h):
                raise VideoReadError(path, f"resolution changes mid-stream ({frame.width}x{frame.height} at frame "
                                           f"{i}, first frame {w}x{h}); re-encode it with reencode_mpeg4")
            intra = frame.key_frame or frame.pict_type == av.video.frame.PictureType.I
            if not intra and i != prev_i + 1:
                raise VideoReadError(path, f"frame {i}: the frames it references were not decoded (damaged stream?)")
            if frame.pict_type == av.video.frame.PictureType.B and not warned_b:
                warn_once(log, "b-frames", "%s: B-frames found; their future references are ignored. Re-encode the "
                          "dataset with `videoformer extract DATASET OUT` (MPEG-4, no B-frames) and train on "
                          "OUT/<name>; other files with B-frames are not reported", path)
                warned_b = True
            sampled = i in slots
            rgb = to_rgb(frame).reshape(-1, 3) if intra or sampled or (i + 1) in slots else None
            if intra:
                key_rgb, key_planar, key_idx, src, step = rgb, None, i, maps.identity, maps.identity
            else:
                sd = frame.side_data.get("MOTION_VECTORS")
                mvs = sd.to_ndarray() if sd is not None else None
                if accumulate:
                    src = maps.trace(mvs, src)
                else:
                    step = maps.trace(mvs, maps.identity)
            if sampled:
                if key_rgb is None:
                    raise VideoReadError(path, f"frame {i} precedes the first I-frame")
                if accumulate:
                    ref, s_, ref_idx = key_rgb, src, key_idx
                elif prev_rgb is None or prev_i != i - 1:  # the stream's first frame: its own reference
                    ref, s_, ref_idx = rgb, maps.identity, i
                else:
                    ref, s_, ref_idx = prev_rgb, step, i - 1
                if key_planar is None:
                    key_planar = np.ascontiguousarray(key_rgb.T).reshape(3, h, w)
                k0, *more = slots[i]
                iframe[k0] = key_planar
                _compensate(s_, ref, rgb, w, mv[k0].reshape(2, -1), res[k0].reshape(3, -1))
                refs[k0] = ref_idx
                for k in more:
                    iframe[k], mv[k], res[k], refs[k] = iframe[k0], mv[k0], res[k0], ref_idx
                done.add(i)
            prev_rgb, prev_i = rgb, i
    missing = sorted(set(slots) - done)
    if missing:  # the decoder produced no such frame (truncated stream): pad with the nearest earlier one
        if not done:
            raise VideoReadError(path, "no frame could be decoded")
        log.warning("%s: frames %s could not be decoded; padded with the nearest earlier frame", path, missing[:8])
        have = sorted(done)
        for i in missing:
            j = have[max(np.searchsorted(have, i, side="right") - 1, 0)]
            for k in slots[i]:
                k0 = slots[j][0]
                iframe[k], mv[k], res[k], refs[k] = iframe[k0], mv[k0], res[k0], refs[k0]
    return iframe, mv, res, refs


def _audio(path: str, times: np.ndarray, video_start: float, enabled: bool, embedder, has_audio: bool):
    """Audio of each sampled frame; ``times``: the frames' presentation times in seconds after frame 0,
    whose own timestamp is ``video_start``."""
    from videoformer.data import audio as audio_mod
    from videoformer.data.prepare import cached_logmel

    t = len(times)
    if not enabled:
        return np.zeros((t, 128), np.float32), None, has_audio
    cached = cached_logmel(path)  # written by `videoformer extract`: no audio decoding per sample
    if cached is not None:
        feats = audio_mod.examples_at(cached[0], times - cached[1])
    else:
        feats = audio_mod.frame_aligned_logmel(path, times, video_start)
    if feats is None:
        return np.zeros((t, 128), np.float32), None, False
    embedder = embedder or audio_mod.default_embedder()
    return np.asarray(embedder(feats), dtype=np.float32), feats, True
