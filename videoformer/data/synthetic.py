"""Write small videos with PyAV: synthetic test clips and tiny datasets (never committed)."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

__all__ = ["write_video", "ORDER_PAIRS", "order_clip", "write_order_dataset", "moving_square_frames", "tone", "barcode_frames", "read_barcode", "remux_trimmed",
           "write_with_cover", "write_resolution_change"]


def write_video(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: int | Fraction = 25,
    codec: str = "libx264",
    gop: int = 12,
    max_b_frames: int = 0,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    options: dict[str, str] | None = None,
    bit_rate: int | None = None,
    pts_ms: np.ndarray | None = None,
    rotation: int = 0,
) -> str:
    """Encode uint8 RGB ``frames`` (T, H, W, 3) to ``path``; optional mono float ``audio`` in [-1, 1].

    The container follows the extension (.mp4, .mkv, .avi, .webm, ...). Even sizes are required by
    4:2:0 codecs. Audio is encoded with AAC (Opus for .webm). ``pts_ms``: explicit presentation times in
    milliseconds (variable frame rate); ``rotation``: a display matrix rotating the picture
    counter-clockwise by that many degrees when shown.
    """
    path = os.fspath(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    with av.open(path, mode="w") as out:
        vs = out.add_stream(codec, rate=Fraction(fps))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        if pts_ms is not None:
            vs.codec_context.time_base = Fraction(1, 1000)
        if rotation:
            vs.set_display_rotation(rotation)
        vs.codec_context.gop_size = gop
        vs.codec_context.max_b_frames = max_b_frames
        if bit_rate:
            vs.bit_rate = bit_rate
        if options:
            vs.codec_context.options = dict(options)
        as_ = None
        if audio is not None:
            acodec = "libopus" if path.endswith(".webm") else "aac"
            rate = 48000 if acodec == "libopus" else sample_rate
            as_ = out.add_stream(acodec, rate=rate, layout="mono")
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i if pts_ms is None else int(pts_ms[i])
            if pts_ms is not None:
                frame.time_base = Fraction(1, 1000)
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if as_ is not None:
            _encode_audio(out, as_, np.asarray(audio, dtype=np.float32), sample_rate)
    return path


def _encode_audio(out, stream, audio: np.ndarray, sample_rate: int) -> None:
    src = av.AudioFrame.from_ndarray(audio.reshape(1, -1), format="flt", layout="mono")
    src.sample_rate = sample_rate
    src.pts = 0
    frame_size = stream.codec_context.frame_size or 1024
    resampler = av.AudioResampler(format=stream.codec_context.format.name, layout="mono",
                                  rate=stream.codec_context.sample_rate, frame_size=frame_size)
    for frame in [*resampler.resample(src), *resampler.resample(None)]:
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)


def moving_square_frames(t: int = 24, h: int = 64, w: int = 96, size: int = 16, seed: int = 0) -> np.ndarray:
    """A textured square moving right/down over a textured background: (T, H, W, 3) uint8.

    Every frame also carries its index in the top-left 8x8 block's grey level (``i * 8 % 256``).
    """
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    sq = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    for i in range(t):
        f = bg.copy()
        y, x = (4 + i) % (h - size), (8 + 2 * i) % (w - size)
        f[y : y + size, x : x + size] = sq
        f[:8, :8] = (i * 8) % 256
        out[i] = f
    return out


def tone(seconds: float, sample_rate: int = 16000, freq: float = 440.0) -> np.ndarray:
    """A mono sine tone at 0.5 amplitude, float32."""
    n = int(round(seconds * sample_rate))
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / sample_rate)).astype(np.float32)


def barcode_frames(t: int, h: int = 64, w: int = 96, bits: int = 16, seed: int = 0) -> np.ndarray:
    """Frames that carry their own index ``i``: ``bits`` black / white stripes (bit b of i, least
    significant on the left) across the top third, over a texture moving 3 px right per frame. Survives
    lossy codecs and scaling; :func:`read_barcode` reads it back (upright frames only)."""
    rng = np.random.default_rng(seed)
    tex = rng.integers(40, 216, size=(h, w + 3 * t, 3), dtype=np.uint8)
    out = np.empty((t, h, w, 3), dtype=np.uint8)
    band, stripe = h // 3, w // bits
    for i in range(t):
        out[i] = tex[:, 3 * i : 3 * i + w]
        for b in range(bits):
            out[i, :band, b * stripe : (b + 1) * stripe] = 255 if (i >> b) & 1 else 0
    return out


def read_barcode(frame: np.ndarray, bits: int = 16) -> int:
    """The index :func:`barcode_frames` drew into an (H, W, 3) frame (any size: read at stripe centres)."""
    h, w = frame.shape[:2]
    y, stripe = h // 6, w / bits
    luma = frame[max(y - 1, 0) : y + 2].astype(np.float32).mean(axis=(0, 2))
    return sum(int(luma[int((b + 0.5) * stripe)] > 127) << b for b in range(bits))


def remux_trimmed(src: str | os.PathLike, dst: str | os.PathLike, start: int) -> str:
    """Copy ``src``'s video packets into an MP4 that starts at frame ``start`` without re-encoding, as
    ``ffmpeg -ss T -c copy`` does: the GOP holding ``start`` is kept whole and an edit list hides its
    first frames (the demuxer marks their packets discarded). ``src``: a constant-rate MP4."""
    src, dst = os.fspath(src), os.fspath(dst)
    with av.open(src) as inp, av.open(dst, "w") as out:
        s = inp.streams.video[0]
        o = out.add_stream_from_template(s)
        step = int(round(1 / (s.average_rate * s.time_base)))
        packets = [p for p in inp.demux(s) if p.size]
        keys = [p.pts for p in packets if p.is_keyframe and p.pts <= start * step]
        begin = next(i for i, p in enumerate(packets) if p.is_keyframe and p.pts == max(keys))
        for p in packets[begin:]:
            p.pts -= start * step
            p.dts -= start * step
            p.stream = o
            out.mux(p)
    return dst


def write_with_cover(path: str | os.PathLike, frames: np.ndarray, fps: int = 25, gop: int = 12) -> str:
    """A file whose *first* video stream is a one-frame MJPEG cover picture (grey), then the H.264 video
    of ``frames``. In an MP4 the cover is marked as an attached picture (disposition); Matroska keeps it
    as a one-frame track."""
    path = os.fspath(path)
    _, h, w, _ = np.asarray(frames).shape
    with av.open(path, mode="w") as out:
        cover = out.add_stream("mjpeg", rate=1)
        cover.width, cover.height, cover.pix_fmt = 32, 32, "yuvj420p"
        if path.endswith(".mp4"):
            cover.disposition = av.stream.Disposition.attached_pic
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.codec_context.gop_size = gop
        pic = av.VideoFrame.from_ndarray(np.full((32, 32, 3), 128, np.uint8), format="rgb24")
        pic = pic.reformat(format="yuvj420p")
        pic.pts = 0
        for packet in [*cover.encode(pic), *cover.encode()]:
            out.mux(packet)
        for i, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for packet in vs.encode(frame):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
    return path


def write_resolution_change(path: str | os.PathLike, parts: list[np.ndarray], fps: int = 25, gop: int = 10) -> str:
    """An MPEG-TS H.264 stream whose resolution changes between ``parts`` (each (T, H, W, 3) uint8): one
    encoder per part, packets muxed into one stream (the new size travels in-band, as in broadcast
    captures); the stream header tells the first part's size."""
    path = os.fspath(path)
    with av.open(path, mode="w", format="mpegts") as out:
        stream = None
        offset = 0
        for frames in parts:
            _, h, w, _ = frames.shape
            enc = av.CodecContext.create("libx264", "w")
            enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
            enc.time_base, enc.framerate, enc.gop_size, enc.max_b_frames = Fraction(1, fps), Fraction(fps), gop, 0
            if stream is None:
                stream = out.add_stream("libx264", rate=fps)
                stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            packets = []
            for i, img in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(img, format="rgb24").reformat(format="yuv420p")
                frame.pts, frame.time_base = offset + i, Fraction(1, fps)
                packets += enc.encode(frame)
            packets += enc.encode(None)
            for p in packets:
                p.stream, p.time_base = stream, Fraction(1, fps)
                out.mux(p)
            offset += len(frames)
    return path


# Pairs of classes that differ only in the order of their frames: the second class of a pair is the first one
# with its frames reversed ("turn_back": with its two halves swapped, i.e. up-then-down against down-then-up from a
# random height, so that neither a frame nor a frame's motion tells the class, only which motion comes first).
# Not the demo's motions (left / right, rotation), and none is a left / right mirror: horizontal flips keep labels.
# In the compressed domain, motion vectors accumulate from the GOP's I-frame, so a segment's vectors carry its
# displacement since the GOP started: write "turn_back" with 24 frames and GOP 12 (one direction per GOP) for a
# pair that no segment tells apart (with 16 frames, the accumulated vectors of the first GOP give it away).
ORDER_PAIRS = {"vertical": ("move_down", "move_up"), "size": ("grow", "shrink"),
               "presence": ("appear", "disappear"), "turn_back": ("down_then_up", "up_then_down")}


def order_clip(kind: str, second: bool, rng: np.random.Generator, frames: int = 16, size: int = 32) -> np.ndarray:
    """``(T, H, W, 3)`` uint8 frames of one clip of the pair ``kind`` (:data:`ORDER_PAIRS`), of its second class
    when ``second``. Colours, texture and positions are random and independent of the class."""
    if kind not in ORDER_PAIRS:
        raise ValueError(f"unknown order pair {kind!r}; choose from {sorted(ORDER_PAIRS)}")
    bg = np.clip(rng.uniform(0, 110, 3) + rng.normal(0, 8, (size, size, 3)), 0, 255)
    fg = np.clip(rng.uniform(150, 255, 3) + rng.normal(0, 8, (size, size, 3)), 0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    cx, cy = rng.uniform(0.3 * size, 0.7 * size, 2)
    half = 0.16 * size  # half side of the square
    out = np.empty((frames, size, size, 3), dtype=np.uint8)
    for t in range(frames):
        f = t / (frames - 1)
        if kind == "vertical":
            y = 0.2 * size + 0.6 * size * f
            mask = (np.abs(xx - cx) < half) & (np.abs(yy - y) < half)
        elif kind == "size":
            r = size * (0.06 + 0.3 * f)
            mask = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        elif kind == "presence":
            mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < (0.2 * size) ** 2) & (f > 0.5)
        else:  # turn_back: down and back up, from a random height
            y = cy - 0.2 * size + 0.4 * size * (1 - abs(2 * f - 1))
            mask = (np.abs(xx - cx) < half) & (np.abs(yy - y) < half)
        out[t] = np.where(mask[..., None], fg, bg).astype(np.uint8)
    if second:
        out = np.concatenate([out[frames // 2 :], out[: frames // 2]]) if kind == "turn_back" else out[::-1]
    return np.ascontiguousarray(out)


def write_order_dataset(root: str | os.PathLike, kinds: tuple[str, ...] = ("vertical", "size", "presence"),
                        per_class: tuple[int, int] = (40, 12), frames: int = 16, size: int = 32, seed: int = 0,
                        codec: str = "libx264", fps: int = 12) -> str:
    """``root/{train,val}/<class>/<i>.mp4`` for every class of the pairs ``kinds`` (``per_class`` train / val
    clips each; ``codec="mpeg4"`` for the compressed domain: MPEG-4 without B-frames, GOP 12); returns root."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "val"), per_class):
        for kind in kinds:
            for second, name in enumerate(ORDER_PAIRS[kind]):
                folder = os.path.join(root, split, name)
                os.makedirs(folder, exist_ok=True)
                for i in range(n):
                    clip = order_clip(kind, bool(second), rng, frames, size)
                    write_video(os.path.join(folder, f"{i:03d}.mp4"), clip, fps=fps, codec=codec,
                                **({"bit_rate": 400_000} if codec == "mpeg4" else {}))
    return os.fspath(root)
