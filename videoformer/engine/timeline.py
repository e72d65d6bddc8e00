"""Long and untrimmed videos: class scores of sliding windows (``videoformer predict --window SEC --stride SEC``).

A window ``[start, start + window)`` seconds is a segment of the video, read exactly as ``eval`` reads an
annotated segment: a :class:`~videoformer.data.VideoRecord` of the window's frames through the run's test
dataset (:func:`~.data.video_dataset`: the weights' preprocessing, the sampler placing the clip inside the
window, ``S`` spatial crops), so the scores of a window covering a whole clip are ``predict``'s scores of that
clip. Windows are decoded one at a time (``read_clip`` seeks to the frames of that window only) and scored in
batches, so memory does not grow with the video's length; only the per-window scores are kept.

:func:`timeline` scores one video; :func:`write_timeline` writes ``<stem>.timeline.json`` (per window: start,
end and the top-k classes of every head), ``<stem>.timeline.csv`` (one row per window, head and rank) and
``<stem>.timeline.png`` (the scores over time of the classes that rank first somewhere).
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data import VideoReadError, VideoRecord
from ..data.batch import Batch
from ..data.video import frame_index
from ..fileio import atomic_write, atomic_write_text
from .data import EvalItems, video_dataset
from .evaluate import check_scores, predict_scores
from .predict import LoadedRun


@dataclass(frozen=True)
class Window:
    start: float  # seconds after the first frame
    end: float


def video_duration(path: str | os.PathLike) -> tuple[float, float]:
    """``(duration s, fps)`` of a video from its frame index (no frame decoded)."""
    info = frame_index(path).info()
    return info.duration, info.fps


def clip_seconds(run: LoadedRun, fps: float) -> float:
    """The time one clip of the run's preprocessing spans at ``fps`` (dense: ``(T - 1) * stride + 1`` frames)."""
    pre = run.model.preprocessing
    return ((pre.num_frames - 1) * pre.stride + 1) / fps


def check_window(window: float | None, stride: float | None) -> None:
    """``ValueError`` unless each given value is a positive, finite number of seconds."""
    for name, value in (("--window", window), ("--stride", stride)):
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a positive number of seconds, got {value}")


def sliding_windows(duration: float, window: float, stride: float) -> list[Window]:
    """Windows ``[k * stride, k * stride + window)`` that fit in ``duration`` seconds; a video shorter than one
    window gets one window over all of it. The tail after the last window that fits is not scored."""
    check_window(window, stride)
    if duration <= window:
        return [Window(0.0, duration)]
    count = int(math.floor((duration - window) / stride + 1e-9)) + 1
    return [Window(k * stride, k * stride + window) for k in range(count)]


def window_frames(path: str, windows: Sequence[Window]) -> list[tuple[int, int]]:
    """``[first, stop)`` frames of each window: the frames shown at its start and end (by presentation
    timestamps); a window reaching the end of the video keeps the last frame."""
    ix = frame_index(path)
    duration = ix.info().duration
    starts = ix.index_at(np.array([w.start for w in windows]))
    stops = ix.index_at(np.array([w.end for w in windows]))
    stops = np.where(np.array([w.end for w in windows]) >= duration - 1e-6, ix.num_frames, stops)
    return [(int(a), max(int(b), int(a) + 1)) for a, b in zip(starts, stops)]


def window_batches(run: LoadedRun, path: str, windows: Sequence[Window], num_crops: int = 1,
                   batch_size: int | None = None, progress: bool | None = False
                   ) -> Iterator[tuple[Batch | None, list[tuple[int, str]]]]:
    """``(batch, [(index, error)])`` of the run's test views of the windows: a :class:`Batch` of ``S`` views
    per window whose ``index`` are the window indices (None when no window of it is readable); an unreadable
    window is reported, never substituted. ``progress``: a tqdm bar over the windows (None: only on a terminal)."""
    records = [VideoRecord(path, -1, start_frame=a, stop_frame=b) for a, b in window_frames(path, windows)]
    items = EvalItems(video_dataset(run.cfg, records, run.model, train=False, num_clips=1, num_crops=num_crops),
                      num_crops)
    loader = DataLoader(items, batch_size=batch_size or run.cfg.eval.batch_size,
                        num_workers=run.cfg.data.num_workers, collate_fn=items.collate)
    with tqdm(total=len(records), desc=Path(path).name, unit="window", disable=None if progress is None else
              not progress, leave=False, dynamic_ncols=True) as bar:
        for batch, bad in loader:
            yield batch, bad
            bar.update((len(batch) if batch is not None else 0) + len(bad))


@dataclass
class Timeline:
    path: str
    fps: float
    duration: float
    window: float
    stride: float
    windows: list[Window]
    scores: list[torch.Tensor]  # per head (N windows, classes): softmax averaged over the views
    head_names: list[str]
    class_lists: list[list[str]]
    errors: list[str] = field(default_factory=list)

    def top(self, k: int) -> list[dict[str, list[dict[str, Any]]]]:
        """Per window ``{head: [{"class", "score"}, ...]}`` (top ``k``)."""
        out = []
        for i in range(len(self.windows)):
            preds = {}
            for name, names, sc in zip(self.head_names, self.class_lists, self.scores):
                top = sc[i].topk(min(k, len(names)))
                preds[name] = [{"class": names[j], "score": float(v)} for v, j in zip(top.values, top.indices.tolist())]
            out.append(preds)
        return out

    def to_dict(self, topk: int = 5) -> dict[str, Any]:
        return {"path": self.path, "fps": self.fps, "duration": self.duration, "window": self.window,
                "stride": self.stride, "errors": self.errors,
                "windows": [{"start": w.start, "end": w.end, "predictions": p}
                            for w, p in zip(self.windows, self.top(topk))]}


def timeline(run: LoadedRun, path: str | os.PathLike, window: float | None = None, stride: float | None = None,
             num_crops: int = 1, batch_size: int | None = None, progress: bool | None = None) -> Timeline:
    """Scores of sliding windows over ``path`` (see the module docstring). ``window`` defaults to the time one
    clip spans, ``stride`` to ``window``. Windows that cannot be decoded are left out and listed in ``errors``;
    a video with no readable window raises :class:`VideoReadError`."""
    path = os.fspath(path)
    duration, fps = video_duration(path)
    window = window or clip_seconds(run, fps)
    stride = stride or window
    wins = sliding_windows(duration, window, stride)
    kept: list[int] = []
    scores: list[list[torch.Tensor]] = [[] for _ in run.heads]
    errors: list[str] = []
    for batch, bad in window_batches(run, path, wins, num_crops, batch_size, progress):
        errors += [f"window {wins[i].start:.2f}-{wins[i].end:.2f} s: {msg}" for i, msg in bad]
        if batch is None:
            continue
        batch_scores = predict_scores(run.model, batch, run.heads, run.device, run.cfg.train.precision)
        check_scores(batch_scores, [f"{path} at {wins[i].start:.2f} s" for i in batch.index], run.source)
        kept += batch.index
        for k, s in enumerate(batch_scores):
            scores[k].append(s)
    if not kept:
        raise VideoReadError(path, f"no window could be decoded ({errors[0] if errors else 'no window'})")
    return Timeline(path, fps, duration, window, stride, [wins[i] for i in kept], [torch.cat(s) for s in scores],
                    run.head_names, run.class_lists, errors)


def _csv(tl: Timeline, topk: int) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["start", "end", "head", "rank", "class", "score"])
    for w, preds in zip(tl.windows, tl.top(topk)):
        for head, ranked in preds.items():
            for rank, p in enumerate(ranked, 1):
                writer.writerow([f"{w.start:.3f}", f"{w.end:.3f}", head, rank, p["class"], f"{p['score']:.6f}"])
    return buf.getvalue()


def _plot(tl: Timeline, lines: int = 8) -> bytes:
    """PNG of the scores over time (window centres) of the classes that rank first in some window (at most
    ``lines`` per head, highest peak first), one panel per head."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = np.array([(w.start + w.end) / 2 for w in tl.windows])
    fig, axes = plt.subplots(len(tl.scores), 1, figsize=(10, 2.8 * len(tl.scores)), squeeze=False)
    for ax, name, names, sc in zip(axes[:, 0], tl.head_names, tl.class_lists, tl.scores):
        winners = sorted(set(sc.argmax(1).tolist()), key=lambda c: -float(sc[:, c].max()))[:lines]
        for c in winners:
            ax.plot(centres, sc[:, c].numpy(), marker="." if len(centres) < 60 else None, label=names[c])
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{name} score")
        ax.legend(loc="upper right", fontsize=7, ncol=2)
    axes[-1, 0].set_xlabel(f"time (s): windows of {tl.window:g} s every {tl.stride:g} s")
    fig.suptitle(Path(tl.path).name, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return buf.getvalue()


def write_timeline(tl: Timeline, out: str | os.PathLike, topk: int = 5, stem: str | None = None) -> list[Path]:
    """Write ``OUT/<stem>.timeline.{json,csv,png}`` atomically; returns the three paths."""
    out = Path(out)
    base = f"{stem or Path(tl.path).stem}.timeline"
    paths = [out / f"{base}.{ext}" for ext in ("json", "csv", "png")]
    atomic_write_text(paths[0], json.dumps(tl.to_dict(topk), indent=1, allow_nan=False) + "\n")
    atomic_write_text(paths[1], _csv(tl, topk))
    png = _plot(tl)
    atomic_write(paths[2], lambda f: f.write(png), sync=False)
    return paths
