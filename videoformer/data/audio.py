"""Audio: decode + resample to 16 kHz mono, VGGish log-mel frontend, 128-d embeddings (MM-ViT §3.2).

The frontend follows the AudioSet VGGish release (``vggish_input`` / ``mel_features``): 25 ms periodic
Hann windows with a 10 ms hop, 512-point FFT magnitude, 64 HTK mel bands over 125-7500 Hz (DC bin
dropped), ``log(mel + 0.01)``; examples are 0.96 s = 96 frames x 64 bands. MM-ViT aligns one audio
segment with each visual time step, so one example is centred on each sampled frame; frames outside
the waveform are filled with ``log(0.01)`` (the log-mel of silence).

Embeddings: :class:`VGGish` loads a local torchvggish-format state dict (``features.*``,
``embeddings.*``, optional PCA ``pproc.*``) and returns the pre-activation 128-d ``fc2`` output of the
TF release. Without weights, :func:`fallback_embed` (per-band mean and standard deviation of the
example, 64 + 64 = 128-d, deterministic) is used; :func:`default_embedder` logs which one.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable

import av
import numpy as np
import torch
from torch import nn

from videoformer.data.clock import seconds, stream_start, timestamp
from videoformer.data.errors import VideoReadError, warn_once

log = logging.getLogger(__name__)

__all__ = [
    "SAMPLE_RATE", "has_audio_stream", "load_audio", "log_mel", "mel_matrix", "examples_at",
    "frame_aligned_logmel", "VGGish", "load_vggish", "fallback_embed", "default_embedder",
]

SAMPLE_RATE = 16000
WINDOW, HOP, NFFT, BANDS, EXAMPLE = 400, 160, 512, 64, 96  # samples, samples, bins, bands, frames
LOG_OFFSET = 0.01
VGGISH_ENV = "VIDEOFORMER_VGGISH"


def has_audio_stream(path: str | os.PathLike) -> bool:
    """True when the container holds at least one audio stream."""
    try:
        with av.open(os.fspath(path)) as c:
            return bool(c.streams.audio)
    except (av.FFmpegError, OSError) as e:
        raise VideoReadError(path, f"cannot open container: {e}") from e


def load_audio(path: str | os.PathLike, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, float] | None:
    """Decode the first audio stream as float32 mono at ``sample_rate``.

    Returns ``(waveform, offset)`` where ``offset`` is the audio start minus the video start in
    seconds (0 for audio-only files), or None when there is no audio stream.
    """
    path = os.fspath(path)
    try:
        with av.open(path) as c:
            if not c.streams.audio:
                return None
            a = c.streams.audio[0]
            offset = stream_start(a) - stream_start(c.streams.video[0] if c.streams.video else None)
            rs = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
            chunks = []
            for frame in c.decode(a):
                frame.pts = None  # let the resampler count samples; avoids gaps from odd timestamps
                chunks.extend(f.to_ndarray().reshape(-1) for f in rs.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in rs.resample(None))
    except av.FFmpegError as e:
        raise VideoReadError(path, f"audio decoding failed: {e}") from e
    wave = np.concatenate(chunks).astype(np.float32) if chunks else np.zeros(0, np.float32)
    return wave, offset


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)  # HTK


def mel_matrix(num_bands: int = BANDS, num_bins: int = NFFT // 2 + 1, sample_rate: int = SAMPLE_RATE,
               low_hz: float = 125.0, high_hz: float = 7500.0) -> np.ndarray:
    """(num_bins, num_bands) triangular HTK mel weights as in VGGish ``spectrogram_to_mel_matrix``."""
    bins_mel = _hz_to_mel(np.linspace(0.0, sample_rate / 2.0, num_bins))
    edges = np.linspace(_hz_to_mel(low_hz), _hz_to_mel(high_hz), num_bands + 2)
    lo, centre, hi = edges[:-2], edges[1:-1], edges[2:]
    up = (bins_mel[:, None] - lo) / (centre - lo)
    down = (hi - bins_mel[:, None]) / (hi - centre)
    weights = np.maximum(0.0, np.minimum(up, down))
    weights[0, :] = 0.0  # the DC bin never contributes
    return weights


_MEL = mel_matrix()
_HANN = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(WINDOW) / WINDOW)  # periodic Hann


def log_mel(wave: np.ndarray) -> np.ndarray:
    """VGGish log-mel spectrogram of a 16 kHz mono waveform: float32 (F, 64), one row per 10 ms."""
    wave = np.asarray(wave, dtype=np.float64).reshape(-1)
    if wave.size < WINDOW:
        return np.zeros((0, BANDS), np.float32)
    n = 1 + (wave.size - WINDOW) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(wave, WINDOW)[::HOP][:n]
    mag = np.abs(np.fft.rfft(frames * _HANN, n=NFFT))
    return np.log(mag @ _MEL + LOG_OFFSET).astype(np.float32)


def examples_at(logmel: np.ndarray, centres_sec: np.ndarray, frames: int = EXAMPLE) -> np.ndarray:
    """Cut one (frames, 64) example centred on each time (seconds); outside rows are log(0.01)."""
    rate = SAMPLE_RATE / HOP  # 100 log-mel rows per second
    pad_val = np.float32(np.log(LOG_OFFSET))
    out = np.full((len(centres_sec), frames, logmel.shape[1] if logmel.ndim == 2 else BANDS), pad_val, np.float32)
    for k, t in enumerate(np.asarray(centres_sec, dtype=np.float64)):
        start = int(round(t * rate)) - frames // 2
        lo, hi = max(start, 0), min(start + frames, len(logmel))
        if hi > lo:
            out[k, lo - start : hi - start] = logmel[lo:hi]
    return out


def frame_aligned_logmel(path: str | os.PathLike, times_sec: np.ndarray, video_start: float | None = None
                         ) -> np.ndarray | None:
    """(T, 96, 64) log-mel examples centred on the given video times, or None without audio.

    ``times_sec`` are seconds after the first video frame, whose own timestamp is ``video_start``
    (None: the video stream's start time). Only the audio around those times is decoded (overlapping
    windows merged), so the cost depends on the clip, not on the length of the file; the examples equal
    those cut from the whole track's log-mel (:func:`load_audio` + :func:`log_mel` + :func:`examples_at`)
    up to the resampler's phase at each window's start.
    """
    path = os.fspath(path)
    times = np.asarray(times_sec, dtype=np.float64).reshape(-1)
    try:
        with av.open(path) as c:
            if not c.streams.audio:
                return None
            a = _only_audio(c)
            audio_start = stream_start(a)
            if video_start is None:
                video_start = stream_start(c.streams.video[0] if c.streams.video else None)
            rel = times + (video_start - audio_start)  # seconds after the first audio sample
            first_row = np.round(rel * (SAMPLE_RATE / HOP)).astype(np.int64) - EXAMPLE // 2
            out = np.empty((len(times), EXAMPLE, BANDS), np.float32)
            for lo, hi, members in _merge_windows(first_row):
                rows = _logmel_rows(c, a, audio_start, max(lo, 0), hi)
                out[members] = examples_at(rows, rel[members] - max(lo, 0) * HOP / SAMPLE_RATE)
    except av.FFmpegError as e:
        raise VideoReadError(path, f"audio decoding failed: {e}") from e
    return out


def _only_audio(c) -> av.audio.stream.AudioStream:
    """The first audio stream; the demuxer skips the other streams' packets instead of reading them."""
    a = c.streams.audio[0]
    for other in c.streams:
        if other is not a:
            other.discard = av.stream.Discard.all
    return a


def _merge_windows(first_row: np.ndarray, join: int = 100) -> list[tuple[int, int, np.ndarray]]:
    """Group examples (first log-mel row of each) into row windows [lo, hi) closer than ``join`` rows."""
    order = np.argsort(first_row, kind="stable")
    groups: list[list] = []
    for k in order.tolist():
        lo, hi = int(first_row[k]), int(first_row[k]) + EXAMPLE
        if groups and lo - groups[-1][1] <= join:
            groups[-1][1] = max(groups[-1][1], hi)
            groups[-1][2].append(k)
        else:
            groups.append([lo, hi, [k]])
    return [(lo, hi, np.array(ks)) for lo, hi, ks in groups]


def _logmel_rows(c, a, audio_start: float, lo: int, hi: int, preroll: float = 0.5) -> np.ndarray:
    """Log-mel rows [lo, hi) of the audio stream ``a`` of container ``c`` (fewer at the end of the track),
    decoding from ``preroll`` seconds before the window (codecs need the previous frame) to its end. A
    window near the start is decoded from the start of a fresh demuxer (windows come in ascending order, so
    only the first can be): after a seek the decoder would not drop the encoder's priming samples."""
    first, last = lo * HOP, (hi - 1) * HOP + WINDOW  # samples after the first audio sample
    seek = audio_start + first / SAMPLE_RATE - preroll
    span = _decode_span(c, a, audio_start, first, last, seek if seek > audio_start else None)
    if span is None:  # the demuxer landed after the window: decode from the start
        with av.open(c.name) as fresh:
            span = _decode_span(fresh, _only_audio(fresh), audio_start, first, last, None)
    origin, wave = span
    skip = max(first - origin, 0)
    return log_mel(wave[skip : skip + last - first])


def _decode_span(c, a, audio_start: float, first: int, last: int, seek: float | None
                 ) -> tuple[int, np.ndarray] | None:
    """(sample index of the first decoded sample, 16 kHz mono samples up to ``last``), decoding from the
    frame before time ``seek`` (None: from where the fresh demuxer ``c`` stands, the start); None when that
    frame starts after sample ``first``."""
    if seek is not None:
        c.seek(timestamp(seek, a.time_base), stream=a, backward=True)
    rs = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    chunks, origin, n = [], None, 0
    for frame in c.decode(a):
        if origin is None:
            t0 = seconds(frame.pts, frame.time_base) if frame.pts is not None else audio_start
            origin = int(round((t0 - audio_start) * SAMPLE_RATE)) if seek is not None else 0
            if origin > first:
                return None
        frame.pts = None  # let the resampler count samples, as load_audio does
        for f in rs.resample(frame):
            chunks.append(f.to_ndarray().reshape(-1))
            n += len(chunks[-1])
        if origin + n >= last:
            break
    else:
        chunks.extend(f.to_ndarray().reshape(-1) for f in rs.resample(None))
    return origin or 0, (np.concatenate(chunks) if chunks else np.zeros(0, np.float32))


class VGGish(nn.Module):
    """VGGish (Hershey et al. 2017) with torchvggish parameter names; input (N, 96, 64) log-mel.

    Output: the 128-d ``fc2`` embedding *before* its ReLU (the TF release's output), optionally
    PCA-whitened, clipped to [-2, 2] and 8-bit quantised like the released AudioSet features.
    ``hidden`` (fc1 width) is 4096 in the release; :func:`load_vggish` reads it from the weights.
    """

    def __init__(self, postprocess: bool = False, hidden: int = 4096) -> None:
        super().__init__()
        cfg = [64, "M", 128, "M", 256, 256, "M", 512, 512, "M"]
        layers: list[nn.Module] = []
        cin = 1
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(cin, v, 3, padding=1), nn.ReLU(inplace=True)]
                cin = v
        self.features = nn.Sequential(*layers)
        self.embeddings = nn.Sequential(
            nn.Linear(512 * 6 * 4, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, 128),
        )
        self.postprocess = postprocess
        self.register_buffer("pca_eigen_vectors", torch.eye(128), persistent=False)
        self.register_buffer("pca_means", torch.zeros(128, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x[:, None]  # (N, 1, 96, 64)
        x = self.features(x)  # (N, 512, 6, 4)
        x = x.permute(0, 2, 3, 1).flatten(1)  # TF (NHWC) flatten order
        x = self.embeddings(x)  # (N, 128)
        if self.postprocess:
            x = (self.pca_eigen_vectors @ (x.T - self.pca_means)).T
            x = torch.round((x.clamp(-2.0, 2.0) + 2.0) * (255.0 / 4.0))
        return x


def _load_tensors(path: str) -> dict:
    """Tensors from .safetensors, .npz or a torch file, through the library's one pickle-free reader."""
    from ..weights.common import read_state_dict

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: VGGish weights / PCA parameters not found")
    return read_state_dict(path)


def load_vggish(path: str | os.PathLike, postprocess: bool = False, pca_params: str | os.PathLike | None = None
                ) -> VGGish:
    """Build :class:`VGGish` from a local torchvggish-format state dict (.pth / .pt via ``weights_only``,
    .safetensors or .npz). PCA parameters (``pca_eigen_vectors`` (128, 128), ``pca_means`` (128,)) come
    from ``pproc.*`` / ``pca_*`` keys of that file or from ``pca_params`` (e.g. the TF release's
    ``vggish_pca_params.npz``)."""
    path = os.fspath(path)
    sd = _load_tensors(path)
    if pca_params is not None:
        sd.update({f"pproc.{k}": v for k, v in _load_tensors(os.fspath(pca_params)).items()})
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    fc1 = sd.get("embeddings.0.weight")
    model = VGGish(postprocess=postprocess, hidden=int(fc1.shape[0]) if fc1 is not None and fc1.dim() == 2 else 4096)
    pca = {k.split(".")[-1].lstrip("_"): v for k, v in sd.items() if "pca" in k}
    net = {k: v for k, v in sd.items() if "pca" not in k}
    try:
        missing, unexpected = model.load_state_dict(net, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path}: not a torchvggish state dict: {e}") from e
    if missing or unexpected:
        raise ValueError(f"{path}: not a torchvggish state dict (missing {missing[:4]}, unexpected {unexpected[:4]})")
    if postprocess:
        vec = pca.get("pca_eigen_vectors", pca.get("pca_matrix"))
        if vec is None or "pca_means" not in pca:
            raise ValueError(f"{path}: postprocess=True needs PCA parameters (pca_eigen_vectors, pca_means)")
        model.pca_eigen_vectors = torch.as_tensor(vec, dtype=torch.float32)
        model.pca_means = torch.as_tensor(pca["pca_means"], dtype=torch.float32).reshape(-1, 1)
    return model.eval()


def fallback_embed(examples: np.ndarray) -> np.ndarray:
    """Deterministic 128-d summary of (N, 96, 64) log-mel examples: per-band mean then std over time."""
    ex = np.asarray(examples, dtype=np.float32)
    return np.concatenate([ex.mean(axis=1), ex.std(axis=1)], axis=1).astype(np.float32)


def default_embedder(weights: str | os.PathLike | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """VGGish from ``weights`` (or the ``VIDEOFORMER_VGGISH`` environment variable) if given, else the
    fallback; logs which one is in use (once per process and weights file)."""
    weights = weights or os.environ.get(VGGISH_ENV)
    return _embedder(os.fspath(weights) if weights else None)


@functools.lru_cache(maxsize=4)
def _embedder(weights: str | None) -> Callable[[np.ndarray], np.ndarray]:
    if weights:
        model = load_vggish(weights)
        log.info("audio embeddings: VGGish weights from %s", weights)

        def embed(examples: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                return model(torch.as_tensor(np.asarray(examples), dtype=torch.float32)).numpy()

        return embed
    warn_once(log, "vggish", "audio embeddings: no VGGish weights (data.audio_weights and %s unset); using the "
              "fallback, the per-band mean / std of the log-mel, instead of VGGish (MM-ViT §3.2): set data.audio_weights=FILE "
              "(a torchvggish state dict) for the paper's audio features", VGGISH_ENV)
    return fallback_embed
