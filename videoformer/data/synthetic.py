"""Write small videos with PyAV: synthetic test clips and tiny datasets (never committed)."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np

__all__ = ["write_video", "moving_square_frames", "tone"]


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
) -> str:
    """Encode uint8 RGB ``frames`` (T, H, W, 3) to ``path``; optional mono float ``audio`` in [-1, 1].

    The container follows the extension (.mp4, .mkv, .avi, .webm, ...). Even sizes are required by
    4:2:0 codecs. Audio is encoded with AAC (Opus for .webm).
    """
    path = os.fspath(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"{path}: frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    with av.open(path, mode="w") as out:
        vs = out.add_stream(codec, rate=Fraction(fps))
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
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
            frame.pts = i
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
