"""``videoformer features RUN DATASET OUT``: one pre-logits embedding per clip window of every video.

Every video of ``DATASET`` (a folder, searched recursively; a CSV ``path,label[,...]`` of videos inside its
folder; or one video file) gets ``OUT/<relative path>.safetensors`` holding ``embedding`` (N, D) float32 (the
model's ``forward_head(..., pre_logits=True)``, averaged over the spatial crops), ``start`` / ``end`` (N,)
seconds, and as metadata the window, stride, fps, duration, model and checkpoint. Windows are those of
``predict --window`` (:mod:`.timeline`: the run's test preprocessing inside each window; default window: one
clip's span, stride: the window), decoded one at a time.

``OUT/index.csv`` lists every video's file, window count, dimension, fps and duration; ``OUT/features.json``
the model, its preprocessing and the settings. Files are written under temporary names and renamed; a re-run
keeps every file whose source video, checkpoint and settings are unchanged and computes the rest, so an
interrupted run resumes. ``workers > 1`` processes videos in parallel (spawned processes, one model each, that
die with the parent, as ``videoformer extract`` does).
"""
from __future__ import annotations

import csv
import io
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save
from tqdm import tqdm

from ..data import VideoReadError
from ..data.batch import Batch
from ..data.prepare import _die_with_parent, _scan
from ..fileio import atomic_write, atomic_write_text, remove_stale_temp
from .evaluate import autocast
from .predict import LoadedRun, load_run
from .timeline import check_window, clip_seconds, sliding_windows, video_duration, window_batches

VERSION = 1


@dataclass(frozen=True)
class Settings:
    window: float | None = None  # seconds (None: one clip's span at the video's fps)
    stride: float | None = None  # seconds (None: the window)
    num_crops: int = 1
    batch_size: int | None = None


@dataclass
class FeaturesResult:
    root: Path
    index: Path
    done: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


@torch.no_grad()
def embed(run: LoadedRun, batch: Batch) -> torch.Tensor:
    """A test :class:`Batch` of ``S`` views per sample -> ``(B, D)`` pre-logits embeddings averaged over S."""
    x = batch.flat_views().to(run.device)
    model = run.model
    with autocast(run.device, run.cfg.train.precision):
        z = model.forward_head(model.forward_features(model.input_spec.select(x.inputs)), pre_logits=True).float()
    return z.unflatten(0, (len(batch), batch.views or 1)).mean(1).cpu()


def video_features(run: LoadedRun, path: str | os.PathLike, settings: Settings = Settings()
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict[str, float]]:
    """``(embedding (N, D), start (N,), end (N,), {"fps", "duration", "window", "stride"})`` of one video;
    an unreadable window raises :class:`VideoReadError` (features keep one row per window, without gaps)."""
    path = os.fspath(path)
    duration, fps = video_duration(path)
    window = settings.window or clip_seconds(run, fps)
    stride = settings.stride or window
    wins = sliding_windows(duration, window, stride)
    rows: dict[int, torch.Tensor] = {}
    for batch, bad in window_batches(run, path, wins, settings.num_crops, settings.batch_size, False):
        if bad:
            i, msg = bad[0]
            raise VideoReadError(path, f"window {wins[i].start:.2f}-{wins[i].end:.2f} s: {msg}")
        rows.update(zip(batch.index, embed(run, batch)))
    z = torch.stack([rows[i] for i in range(len(wins))])
    if not torch.isfinite(z).all():
        raise VideoReadError(path, f"{run.source} gives NaN / inf embeddings")
    start = torch.tensor([w.start for w in wins], dtype=torch.float64)
    end = torch.tensor([w.end for w in wins], dtype=torch.float64)
    return z, start, end, {"fps": fps, "duration": duration, "window": window, "stride": stride}


def load_features(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (``embedding``, ``start``, ``end``) and metadata of one features file."""
    with safe_open(os.fspath(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _stamp(path: str | os.PathLike) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _checkpoint_stamp(source: str) -> str:
    """Identity of the weights: the checkpoint file's (or directory's newest file's) size and mtime."""
    p = Path(source)
    if p.is_dir():
        return ";".join(f"{f.name}={_stamp(f)}" for f in sorted(p.iterdir()) if f.is_file())
    return _stamp(p)


@dataclass(frozen=True)
class _Job:
    source: str  # the video
    rel: str  # its path relative to the dataset
    target: str  # the features file
    key: str  # what the file must record to be reused (video, checkpoint, settings)


def _key(video: str, checkpoint: str, settings: Settings) -> str:
    return json.dumps({"version": VERSION, "video": _stamp(video), "checkpoint": checkpoint,
                       "window": settings.window, "stride": settings.stride, "num_crops": settings.num_crops},
                      sort_keys=True)


def _reusable(job: _Job) -> dict[str, str] | None:
    try:
        _, meta = load_features(job.target)
    except Exception:  # missing, torn or foreign: compute again
        return None
    return meta if meta.get("key") == job.key else None


_WORKER: dict[str, Any] = {}


def _compute(job: _Job, run: LoadedRun, settings: Settings) -> dict[str, str]:
    """One video's features file (written atomically); returns its metadata."""
    z, start, end, info = video_features(run, job.source, settings)
    meta = {"key": job.key, "video": job.rel, "source": job.source, "model": str(run.model.registry_name),
            "checkpoint": run.source, "num_windows": str(len(z)), "dim": str(z.shape[1]),
            "num_crops": str(settings.num_crops), **{k: repr(float(v)) for k, v in info.items()}}
    data = save({"embedding": z.contiguous(), "start": start, "end": end}, metadata=meta)
    atomic_write(Path(job.target), lambda f: f.write(data), sync=False)
    return meta


def _init_worker(parent: int, source: str, settings: Settings) -> None:
    """Pool worker: dies with the parent, one thread, the model loaded once."""
    _die_with_parent(parent)
    torch.set_num_threads(1)
    _WORKER["run"], _WORKER["settings"] = load_run(source), settings


def _compute_in_worker(job: _Job) -> dict[str, str]:
    return _compute(job, _WORKER["run"], _WORKER["settings"])


def _index(root: Path, metas: list[dict[str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    cols = ["video", "file", "num_windows", "dim", "fps", "duration", "window", "stride"]
    writer.writerow(cols)
    for m in sorted(metas, key=lambda m: m["video"]):
        writer.writerow([m["video"], f"{m['video']}.safetensors", *(m[c] for c in cols[2:])])
    return buf.getvalue()


def extract_features(source: str | os.PathLike, dataset: str | os.PathLike, out: str | os.PathLike,
                     window: float | None = None, stride: float | None = None, num_crops: int = 1,
                     workers: int = 1, batch_size: int | None = None, progress: bool | None = None) -> FeaturesResult:
    """Features of every video of ``dataset`` with the model of ``source`` (a run, a checkpoint, or anything
    ``load_pretrained`` reads) into ``out`` (see the module docstring). Unreadable videos are listed in
    ``result.failed``; an unusable dataset or source raises (``ExtractError``, ``CheckpointError``, ...)."""
    settings = Settings(window, stride, num_crops, batch_size)
    check_window(window, stride)  # bad values fail before any work
    run = load_run(source)
    dataset = Path(os.path.abspath(dataset))
    if dataset.is_file() and dataset.suffix.lower() != ".csv":
        base, videos = dataset.parent, [dataset.name]
    else:
        base = dataset if dataset.is_dir() else dataset.parent
        videos, _ = _scan(dataset, skip=Path(os.path.abspath(out)))
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(root, recursive=True)
    checkpoint = f"{os.path.abspath(run.source)}@{_checkpoint_stamp(run.source)}"
    result = FeaturesResult(root, root / "index.csv")
    metas, jobs = [], []
    for rel in videos:
        video = str(base / rel)
        try:
            job = _Job(video, rel, str(root / f"{rel}.safetensors"), _key(video, checkpoint, settings))
        except OSError as err:
            result.failed.append((video, str(err)))
            continue
        meta = _reusable(job)
        if meta is not None:
            result.reused += 1
            metas.append(meta)
        else:
            jobs.append(job)
    bar = tqdm(total=len(jobs), desc="features", unit="video", disable=None if progress is None else not progress,
               dynamic_ncols=True)
    try:
        for job, meta, err in _run(jobs, run, settings, source, workers):
            bar.update()
            if err is None:
                result.done += 1
                metas.append(meta)
            else:
                result.failed.append((job.source, err))
    finally:
        bar.close()
        atomic_write_text(result.index, _index(root, metas))
        summary = {"version": VERSION, "model": run.model.registry_name, "checkpoint": run.source,
                   "dataset": str(dataset), "preprocessing": run.model.preprocessing.to_dict(),
                   "dim": run.model.num_features, "window": window, "stride": stride, "num_crops": num_crops,
                   "videos": len(metas), "failed": [list(f) for f in result.failed]}
        atomic_write_text(root / "features.json", json.dumps(summary, indent=1) + "\n")
    return result


def _run(jobs: list[_Job], run: LoadedRun, settings: Settings, source: str | os.PathLike, workers: int):
    """Yield ``(job, metadata, None)`` or ``(job, None, error)`` as videos finish."""
    expected = (VideoReadError, ValueError, OSError)
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            try:
                yield job, _compute(job, run, settings), None
            except expected as err:
                yield job, None, str(err)
        return
    # spawn, not fork: FFmpeg and torch threads do not survive a fork
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                             initargs=(os.getpid(), os.fspath(source), settings)) as pool:
        futures = {pool.submit(_compute_in_worker, job): job for job in jobs}
        try:
            for fut in as_completed(futures):
                try:
                    yield futures[fut], fut.result(), None
                except expected as err:
                    yield futures[fut], None, str(err)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise

