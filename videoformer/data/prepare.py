"""Prepare a dataset for the compressed-domain models: parallel MPEG-4 re-encoding into a cache.

Layout: ``OUT/<key>/videos/<id>.mp4`` + ``<id>.logmel.npy`` (the whole track's VGGish log-mel,
float16, when there is audio: samples then cut examples without decoding audio) + ``<id>.json``
(source path / size / mtime, output size and SHA-1, frame count, audio flag) + ``manifest.csv`` (``path,label`` readable by ``read_csv``). ``<key>``
names the extraction parameters (size, GOP, quantiser, format version), so different settings never
mix. Every file is written to a temporary name and renamed (atomic); a video counts as done only
when its JSON exists and matches the file, so an interrupted run resumes where it stopped, and
:func:`load_prepared` verifies entries on read.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import multiprocessing
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from videoformer.data.annotations import Annotations, VideoRecord, read_csv, read_folder
from videoformer.data.audio import load_audio, log_mel
from videoformer.data.compressed import reencode_mpeg4
from videoformer.data.errors import VideoReadError
from videoformer.data.video import probe

log = logging.getLogger(__name__)

__all__ = ["PrepareConfig", "PrepareResult", "prepare", "load_prepared", "main", "add_extract_arguments",
           "logmel_path", "cached_logmel"]

FORMAT_VERSION = 2  # 2: log-mel cache


@dataclass(frozen=True)
class PrepareConfig:
    width: int = 340
    height: int = 256
    gop: int = 12
    qscale: int = 2

    @property
    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": FORMAT_VERSION}, sort_keys=True).encode()
        return f"mpeg4_{self.width}x{self.height}_g{self.gop}_q{self.qscale}_{hashlib.sha1(blob).hexdigest()[:8]}"


@dataclass
class PrepareResult:
    out_dir: Path
    done: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def logmel_path(video: str | os.PathLike) -> Path:
    """Where :func:`prepare` caches a video's log-mel spectrogram."""
    video = Path(video)
    return video.with_name(video.stem + ".logmel.npy")


def cached_logmel(video: str | os.PathLike) -> tuple[np.ndarray, float] | None:
    """(log-mel (F, 64) float32, audio offset s) cached next to a prepared video, or None."""
    lm, meta = logmel_path(video), Path(video).with_suffix(".json")
    if not lm.is_file() or not meta.is_file():
        return None
    try:
        offset = float(json.loads(meta.read_text()).get("audio_offset", 0.0))
        return np.load(lm, allow_pickle=False).astype(np.float32), offset
    except (OSError, ValueError):
        return None


def _safe_id(record: VideoRecord, index: int) -> str:
    base = record.id or Path(record.path).stem
    return f"{index:07d}_{re.sub(r'[^A-Za-z0-9_.-]+', '_', base)[:80]}"


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _entry_ok(video: Path, meta_path: Path, source: str | None = None, full: bool = False) -> bool:
    """True when ``meta_path`` describes ``video`` (size; SHA-1 too with ``full``) and, if given,
    the same unchanged source file."""
    try:
        meta = json.loads(meta_path.read_text())
        if not video.is_file() or video.stat().st_size != meta["size"]:
            return False
        if meta.get("logmel_size") is not None:
            lm = logmel_path(video)
            if not lm.is_file() or lm.stat().st_size != meta["logmel_size"]:
                return False
        if source is not None:
            st = os.stat(source)
            if meta["source"] != os.path.abspath(source) or meta["source_size"] != st.st_size \
                    or meta["source_mtime"] != int(st.st_mtime):
                return False
        return not full or _sha1(video) == meta["sha1"]
    except (OSError, ValueError, KeyError):
        return False


def _convert(source: str, video: str, meta_path: str, cfg: PrepareConfig) -> dict:
    """Worker: re-encode one video atomically and write its JSON. Raises VideoReadError."""
    video_p = Path(video)
    tmp = video_p.with_name(f".{video_p.stem}.tmp{os.getpid()}{video_p.suffix}")
    try:
        reencode_mpeg4(source, tmp, size=(cfg.width, cfg.height), gop=cfg.gop, qscale=cfg.qscale)
        info = probe(tmp)
        os.replace(tmp, video_p)
    finally:
        if tmp.exists():
            tmp.unlink()
    st = os.stat(source)
    logmel_size, offset = None, 0.0
    loaded = load_audio(video_p) if info.has_audio else None
    if loaded is not None:
        wave, offset = loaded
        lm, tmp_lm = logmel_path(video_p), video_p.with_name(f".{video_p.stem}.tmp{os.getpid()}.npy")
        np.save(tmp_lm, log_mel(wave).astype(np.float16))
        os.replace(tmp_lm, lm)
        logmel_size = lm.stat().st_size
    meta = {"source": os.path.abspath(source), "source_size": st.st_size, "source_mtime": int(st.st_mtime),
            "size": video_p.stat().st_size, "sha1": _sha1(video_p), "num_frames": info.num_frames,
            "fps": info.fps, "has_audio": info.has_audio, "logmel_size": logmel_size, "audio_offset": offset,
            "config": asdict(cfg), "version": FORMAT_VERSION}
    _atomic_write_text(Path(meta_path), json.dumps(meta, indent=1))
    return meta


def prepare(records: list[VideoRecord], out_root: str | os.PathLike, cfg: PrepareConfig = PrepareConfig(),
            workers: int = 1, progress: bool = True, classes: list[str] | None = None) -> PrepareResult:
    """Re-encode every record into ``out_root/<cfg.key>/`` with ``workers`` processes; resumable.

    Unreadable sources are logged and listed in ``result.failed`` (the manifest leaves them out).
    """
    out_dir = Path(out_root) / cfg.key
    vids = out_dir / "videos"
    vids.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(out_dir / "config.json", json.dumps({**asdict(cfg), "version": FORMAT_VERSION}))
    result = PrepareResult(out_dir)
    jobs, rows = {}, {}
    for i, r in enumerate(records):
        sid = _safe_id(r, i)
        video, meta = vids / f"{sid}.mp4", vids / f"{sid}.json"
        rows[i] = (video, r)
        if _entry_ok(video, meta, r.path if os.path.exists(r.path) else None):
            result.reused += 1
        else:
            jobs[i] = (r.path, str(video), str(meta), cfg)
    bar = tqdm(total=len(jobs), desc=f"extract -> {cfg.key}", disable=not progress, unit="video")
    ok = set(rows) - set(jobs)
    if workers <= 1:
        for i, args in jobs.items():
            ok |= _run_one(i, args, result)
            bar.update()
    else:
        # spawn, not fork: FFmpeg's threads and state do not survive a fork of a process that used them
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(_convert, *args): i for i, args in jobs.items()}
            for fut in as_completed(futures):
                i = futures[fut]
                try:
                    fut.result()
                    result.done += 1
                    ok.add(i)
                except (VideoReadError, OSError, ValueError) as e:
                    result.failed.append((jobs[i][0], str(e)))
                    log.warning("extract: skipping %s: %s", jobs[i][0], e)
                bar.update()
    bar.close()
    lines = ["path,label"] + [f"videos/{rows[i][0].name},{_label_str(rows[i][1])}" for i in sorted(ok)
                              if rows[i][1].label != -1 and isinstance(rows[i][1].label, int)]
    _atomic_write_text(out_dir / "manifest.csv", "\n".join(lines) + "\n")
    if classes is not None:
        _atomic_write_text(out_dir / "classes.json", json.dumps(list(classes)))
    return result


def _label_str(r: VideoRecord) -> str:
    return str(r.label)


def _run_one(i: int, args, result: PrepareResult) -> set[int]:
    try:
        _convert(*args)
        result.done += 1
        return {i}
    except (VideoReadError, OSError, ValueError) as e:
        result.failed.append((args[0], str(e)))
        log.warning("extract: skipping %s: %s", args[0], e)
        return set()


def load_prepared(out_dir: str | os.PathLike, verify: str = "size") -> Annotations:
    """Records of a prepared cache, each entry verified (``"size"``, ``"sha1"`` or ``"none"``);
    entries that fail verification are dropped, logged and counted in ``missing``."""
    out_dir = Path(out_dir)
    ann = read_csv(out_dir / "manifest.csv", root=out_dir, check_exists=False)
    if (out_dir / "classes.json").is_file():
        ann.classes = json.loads((out_dir / "classes.json").read_text())
    if verify == "none":
        return ann
    good = [r for r in ann.records
            if _entry_ok(Path(r.path), Path(r.path).with_suffix(".json"), full=verify == "sha1")]
    bad = len(ann.records) - len(good)
    if bad:
        log.warning("%s: %d cached videos failed verification; skipped (re-run extract to repair)", out_dir, bad)
    return Annotations(good, ann.classes, bad, str(out_dir))


def add_extract_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``videoformer extract`` (for the top-level CLI to mount as a sub-command)."""
    p.add_argument("dataset", help="a folder root/<class>/<video> or a CSV path,label[,start,end]")
    p.add_argument("out", help="output root; a sub-folder is named after the extraction parameters")
    p.add_argument("--size", default="340x256", help="WIDTHxHEIGHT (MM-ViT / CoViAR: 340x256)")
    p.add_argument("--gop", type=int, default=12)
    p.add_argument("--qscale", type=int, default=2)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    return p


def main(argv: list[str] | None = None) -> int:
    """``videoformer extract DATASET OUT``: prints the output folder and a summary; exit 1 if any failed."""
    return run_extract(add_extract_arguments(argparse.ArgumentParser(prog="videoformer extract")).parse_args(argv))


def run_extract(args: argparse.Namespace) -> int:
    """Run ``extract`` on parsed arguments (the ``videoformer`` command mounts :func:`add_extract_arguments`)."""
    w, h = (int(v) for v in args.size.lower().split("x"))
    ds = Path(args.dataset)
    ann = read_folder(ds) if ds.is_dir() else read_csv(ds)
    res = prepare(ann.records, args.out, PrepareConfig(w, h, args.gop, args.qscale), workers=args.workers,
                  classes=ann.classes if isinstance(ann.classes, list) else None)
    print(f"{res.out_dir}: {res.done} encoded, {res.reused} reused, {len(res.failed)} failed")
    for path, err in res.failed[:20]:
        print(f"  failed: {path}: {err}", file=sys.stderr)
    return 1 if res.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
