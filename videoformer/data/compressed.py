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
import numpy as np

from videoformer.data.errors import VideoReadError
from videoformer.data.sampling import uniform_indices
from videoformer.data.video import _decode_from, open_video, probe, to_rgb

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
    with open_video(src) as inp:
        vin = inp.streams.video[0]
        ain = inp.streams.audio[0] if inp.streams.audio else None
        rate = Fraction(vin.average_rate or vin.guessed_rate or 25)
        width, height = size if size is not None else (vin.codec_context.width, vin.codec_context.height)
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
    cell = 16
    if mvs is not None and len(mvs):
        mvs = mvs[mvs["source"] < 0]
    if mvs is not None and len(mvs):
        bw, bh = mvs["w"].astype(np.int64), mvs["h"].astype(np.int64)
        scale = mvs["motion_scale"].astype(np.float64)
        oy = np.floor(mvs["motion_y"] / scale + 0.5).astype(np.int32)
        ox = np.floor(mvs["motion_x"] / scale + 0.5).astype(np.int32)
        x0 = mvs["dst_x"].astype(np.int64) - bw // 2
        y0 = mvs["dst_y"].astype(np.int64) - bh // 2
        # the coarsest power-of-two cell every block is made of (16 for MPEG-4 without 4MV)
        bits = int(np.bitwise_or.reduce(x0 | y0 | bw | bh)) | 16
        cell = bits & -bits
        if cell % _CELL:
            raise ValueError("motion-vector blocks not on a 4-pel grid")
    gh, gw = -(-height // 16) * 16 // cell + 64 // cell, -(-width // 16) * 16 // cell + 64 // cell
    grid = np.zeros((gh, gw, 2), dtype=np.int32)
    if mvs is not None and len(mvs):
        cx, cy = x0 // cell, y0 // cell
        if (bw == cell).all() and (bh == cell).all():  # one cell per block: a single scatter
            grid[np.clip(cy, 0, gh - 1), np.clip(cx, 0, gw - 1)] = np.stack([oy, ox], axis=1)
        else:
            for w_, h_ in set(zip(bw.tolist(), bh.tolist())):
                sel = (bw == w_) & (bh == h_)
                val = np.stack([oy[sel], ox[sel]], axis=1)
                for dy in range(h_ // cell):
                    for dx in range(w_ // cell):
                        grid[np.clip(cy[sel] + dy, 0, gh - 1), np.clip(cx[sel] + dx, 0, gw - 1)] = val
    return np.repeat(np.repeat(grid, cell, axis=0), cell, axis=1)[:height, :width]


def extract_compressed(
    path: str | os.PathLike,
    num_segments: int = 8,
    accumulate: bool = True,
    indices: Sequence[int] | np.ndarray | None = None,
    train: bool = False,
    rng: np.random.Generator | None = None,
    audio: bool = True,
    audio_embedder=None,
    seek_gap: int = 12,
) -> CompressedClip:
    """Decode what the sampled frames need and return the :class:`CompressedClip` of ``path``.

    Each run of sampled frames is decoded from the key frame before it (a seek when the next sampled
    frame lies more than ``seek_gap`` frames past the last decoded one), so 8 segments of a long
    video cost about 8 GOPs of decoding.

    Frames are sampled TSN-style (``uniform_indices``: segment centres for test, random for train)
    unless ``indices`` is given. Expects a stream without B-frames (``reencode_mpeg4``); future
    references of any B-frame are ignored with a warning. ``audio_embedder`` maps log-mel examples
    (N, 96, 64) to (N, 128); default :func:`videoformer.data.audio.default_embedder`. The log-mel
    cached by ``videoformer extract`` (:mod:`videoformer.data.prepare`) next to the video is used when present.
    """
    path = os.fspath(path)
    info = probe(path)
    if indices is None:
        idx = uniform_indices(info.num_frames, num_segments, train=train, rng=rng)
    else:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size == 0 or (idx < 0).any():
            raise ValueError(f"{path}: frame indices must be non-negative and non-empty, got {idx.tolist()}")
    out, end = _extract_visual(path, sorted(set(idx.tolist())), accumulate, info.height, info.width, seek_gap)
    missing = sorted(set(idx.tolist()) - set(out))
    if missing:  # past the real end (over-reported length, clip longer than the video): pad
        log.warning("%s: frames %s past the end of the stream (%d frames); padded with the last frame",
                    path, missing[:8], end + 1)
        if end not in out:
            out.update(_extract_visual(path, [end], accumulate, info.height, info.width, seek_gap)[0])
        for m in missing:
            out[m] = out[end]
    iframe = np.stack([out[k][0] for k in idx.tolist()])
    mv = np.stack([out[k][1] for k in idx.tolist()])
    res = np.stack([out[k][2] for k in idx.tolist()])
    refs = np.array([out[k][3] for k in idx.tolist()], dtype=np.int64)
    emb, logmel, has_audio = _audio(path, idx, info.fps, audio and info.has_audio, audio_embedder, info.has_audio)
    return CompressedClip(
        iframe=iframe, mv=mv, residual=res,
        frame_indices=idx, reference_indices=refs, has_audio=has_audio, audio=emb, audio_logmel=logmel,
        fps=info.fps, num_frames=info.num_frames, accumulate=accumulate, path=path,
    )


def _runs(wanted: list[int], gap: int, accumulate: bool) -> list[tuple[int, int]]:
    """(first frame needed, last wanted) per run; without accumulation a frame also needs its predecessor."""
    runs: list[tuple[int, int]] = []
    for i in wanted:
        first = i if accumulate else max(i - 1, 0)
        if runs and first - runs[-1][1] <= gap:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((first, i))
    return runs


class _Grid:
    """Flat pixel bookkeeping: index = y * W + x."""

    def __init__(self, h: int, w: int) -> None:
        self.h, self.w = h, w
        self.flat = np.arange(h * w, dtype=np.int32)
        self.ys, self.xs = self.flat // w, self.flat % w

    def sources(self, step: np.ndarray) -> np.ndarray:
        """Flat source index of every pixel for per-pixel offsets ``step`` (H, W, 2) = (oy, ox), clipped."""
        sy = np.clip(self.ys + step[..., 0].reshape(-1), 0, self.h - 1)
        sx = np.clip(self.xs + step[..., 1].reshape(-1), 0, self.w - 1)
        return sy * self.w + sx

    def mv(self, src: np.ndarray) -> np.ndarray:
        """(2, H, W) int16 (dx, dy) = position - source."""
        sy, sx = np.divmod(src, self.w)
        out = np.empty((2, self.h * self.w), dtype=np.int16)
        np.subtract(self.xs, sx, out=out[0], casting="unsafe")
        np.subtract(self.ys, sy, out=out[1], casting="unsafe")
        return out.reshape(2, self.h, self.w)

    def residual(self, rgb: np.ndarray, ref: np.ndarray, src: np.ndarray) -> np.ndarray:
        """(3, H, W) int16 rgb - ref[source], both given planar (3, H * W) uint8."""
        out = np.subtract(rgb, np.take(ref, src, axis=1), dtype=np.int16)
        return out.reshape(3, self.h, self.w)


def _planar(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> contiguous (3, H * W)."""
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)).reshape(3, -1)


def _extract_visual(path: str, wanted: list[int], accumulate: bool, h: int, w: int, seek_gap: int,
                    use_seek: bool = True):
    """Per wanted index: (iframe (3, H, W) uint8, mv (2, H, W), residual (3, H, W), reference index).

    Returns that dict and the largest frame index decoded. Falls back to one pass from the start
    when a seek lands after the wanted frame or off a key frame (imprecise demuxers).
    """
    if use_seek:
        try:
            return _extract_visual(path, wanted, accumulate, h, w, seek_gap, use_seek=None)
        except _Reseek:
            log.info("%s: imprecise seek; decoding from the start", path)
            return _extract_visual(path, wanted, accumulate, h, w, seek_gap, use_seek=False)
    seeking = use_seek is None
    grid = _Grid(h, w)
    out: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, int]] = {}
    wanted_set = set(wanted)
    end = -1
    warned_b = False
    with open_video(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.options = {"flags2": "+export_mvs"}
        fps, tb = stream.average_rate or stream.guessed_rate, stream.time_base
        start = stream.start_time or 0
        by_count = fps is None or tb is None  # no timestamps: index frames by counting
        runs = _runs(wanted, seek_gap, accumulate) if seeking and not by_count else [(0, wanted[-1])]
        for first, last in runs:
            if seeking and first > 0:
                try:
                    container.seek(start + int(first / fps / tb), backward=True, any_frame=False, stream=stream)
                except av.FFmpegError as e:
                    raise _Reseek() from e
            iframe, iframe_idx, src, prev, counter, started = None, -1, grid.flat, None, 0, False
            for frame in _decode_from(container, stream, path):
                i = counter if (by_count or frame.pts is None) else int(round(float((frame.pts - start) * tb * fps)))
                counter = i + 1
                intra = frame.key_frame or frame.pict_type == av.video.frame.PictureType.I
                if not started:
                    if seeking and (i > first or not intra):  # imprecise seek: redo from the start
                        raise _Reseek()
                    started = True
                end = max(end, i)
                if i > last:
                    break
                if frame.pict_type == av.video.frame.PictureType.B and not warned_b:
                    log.warning("%s: B-frames found; future references ignored (re-encode with reencode_mpeg4)", path)
                    warned_b = True
                need_rgb = intra or i in wanted_set or (i + 1) in wanted_set
                rgb = _planar(to_rgb(frame)) if need_rgb else None
                if intra:
                    iframe, iframe_idx, step_src = rgb, i, grid.flat
                    src = grid.flat
                else:
                    sd = frame.side_data.get("MOTION_VECTORS")
                    step_src = grid.sources(rasterize_motion_vectors(sd.to_ndarray() if sd is not None else None, h, w))
                    if accumulate:
                        src = src[step_src]
                if i in wanted_set and i not in out:
                    if iframe is None:
                        raise VideoReadError(path, f"frame {i} precedes the first I-frame")
                    if accumulate:
                        ref, s_, ref_idx = iframe, src, iframe_idx
                    elif prev is None:  # the stream's first frame: its own reference
                        ref, s_, ref_idx = rgb, grid.flat, i
                    else:
                        ref, s_, ref_idx = prev, step_src, i - 1
                    out[i] = (iframe.reshape(3, h, w), grid.mv(s_),
                              grid.residual(rgb, ref, s_), ref_idx)
                prev = rgb
    return out, end


class _Reseek(Exception):
    """The seek landed after the wanted frame or not on a key frame."""


def _audio(path: str, idx: np.ndarray, fps: float, enabled: bool, embedder, has_audio: bool):
    from videoformer.data import audio as audio_mod
    from videoformer.data.prepare import cached_logmel

    t = len(idx)
    if not enabled:
        return np.zeros((t, 128), np.float32), None, has_audio
    cached = cached_logmel(path)  # written by `videoformer extract`: no audio decoding per sample
    if cached is not None:
        feats = audio_mod.examples_at(cached[0], idx / fps - cached[1])
    else:
        feats = audio_mod.frame_aligned_logmel(path, idx / fps)
    if feats is None:
        return np.zeros((t, 128), np.float32), None, False
    embedder = embedder or audio_mod.default_embedder()
    return np.asarray(embedder(feats), dtype=np.float32), feats, True
