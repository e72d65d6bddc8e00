"""``videoformer extract``: MPEG-4 re-encodes for the compressed-domain models, in a cache that keeps the
dataset's layout.

``extract SRC OUT`` writes the cache root ``OUT/<name of SRC>`` (as ``cp -r SRC OUT/`` would), so the same
``data.format`` / split settings read the cache as they read the dataset, with ``data.root`` pointing at it:

- every video under the folder SRC (searched recursively), or listed in the CSV SRC (its folder is then the
  dataset), becomes ``<relative path>.mp4`` (MPEG-4 Part 2, fixed GOP, no B-frames, AAC kept), with
  ``<stem>.logmel.npy`` (the whole track's VGGish log-mel, float16, when there is audio: samples then cut
  their examples without decoding audio) and ``<stem>.extract.json`` (the source, SHA-1 checksums and sizes
  of the video and the log-mel, frame count, parameters, and the command that repairs the entry). The
  annotation readers find ``x.mp4`` for a listed ``x.avi``.
- the dataset's annotation files (``.txt .csv .json .tsv .lst``: split lists, classInd, CSVs) are copied.
- ``extract.json`` records the parameters and the source folder; ``manifest.csv`` (``path,source``) lists
  every cached video and is merged across runs, so ``extract data/train.csv OUT && extract data/val.csv OUT``
  fill one cache ``OUT/data``, and ``extract data/train OUT && extract data/val OUT`` give ``OUT/train`` and
  ``OUT/val`` side by side.

Names come from the relative path, so they are unique and stable per source video. Every file is written
under a temporary name and renamed; an entry is reused only when its source is unchanged (size, mtime) and
the checksums of its files match, so an interrupted or damaged cache is repaired by re-running the same
command. Temporary files of dead extractions are removed by the next run; pool workers die with their
parent, even when it is killed with SIGKILL. Training and evaluation verify the cached files they read
(:func:`verify_cached`: a video on its first read in a process and after any change of its inode, size or
mtime; :func:`cached_logmel`: on every read): a mismatch makes the sample unreadable, skipped and counted,
with the repair command in the message.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import errno
import hashlib
import io
import json
import logging
import multiprocessing
import os
import shlex
import shutil
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from videoformer.data.annotations import VIDEO_EXTENSIONS, read_csv
from videoformer.data.audio import load_audio, log_mel
from videoformer.data.compressed import reencode_mpeg4
from videoformer.data.errors import AnnotationError, CacheError, ExtractError, VideoReadError
from videoformer.data.video import probe
from videoformer.fileio import atomic_write, atomic_write_text, remove_stale_temp, replacing

log = logging.getLogger(__name__)

__all__ = ["PrepareConfig", "PrepareResult", "extract_dataset", "verify_cached", "cached_logmel", "logmel_path",
           "meta_path", "run_extract", "main"]

FORMAT_VERSION = 3  # 3: the dataset's layout kept, SHA-1 of every cached file
ANNOTATION_SUFFIXES = (".txt", ".csv", ".json", ".tsv", ".lst")
MAX_ANNOTATION_BYTES = 256 << 20


@dataclass(frozen=True)
class PrepareConfig:
    width: int = 340
    height: int = 256
    gop: int = 12
    qscale: int = 2

    def args(self) -> list[str]:
        """The ``videoformer extract`` options that give these parameters."""
        return ["--size", f"{self.width}x{self.height}", "--gop", str(self.gop), "--qscale", str(self.qscale)]


@dataclass
class PrepareResult:
    root: Path  # the cache root: use it as data.root
    done: int = 0  # videos encoded (new or repaired)
    reused: int = 0  # verified and kept
    repaired: int = 0  # of ``done``: entries that existed but failed verification or whose source changed
    copied: int = 0  # annotation files copied
    failed: list[tuple[str, str]] = field(default_factory=list)


def sha1_file(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha1").hexdigest()


def logmel_path(video: str | os.PathLike) -> Path:
    """Where :func:`extract_dataset` caches a video's log-mel spectrogram."""
    video = Path(video)
    return video.with_name(video.stem + ".logmel.npy")


def meta_path(video: str | os.PathLike) -> Path:
    """The checksum record written with a cached video."""
    video = Path(video)
    return video.with_name(video.stem + ".extract.json")


def _read_meta(video: Path) -> dict | None:
    """The checksum record of a cached video; None when ``video`` is not a cache entry."""
    try:
        return json.loads(meta_path(video).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise CacheError(meta_path(video), f"unreadable checksum record ({e}); repair by re-running "
                                           "videoformer extract on the dataset") from e


def _mismatch(path: Path, size: int | None, sha1: str | None) -> str:
    """Why ``path`` does not match its recorded size and SHA-1 ('' when it does)."""
    try:
        actual_size = path.stat().st_size
        if actual_size != size:
            return f"size {actual_size} bytes, recorded {size}"
        actual = sha1_file(path)
    except FileNotFoundError:
        return "missing"
    return "" if actual == sha1 else f"SHA-1 {actual[:12]}…, recorded {str(sha1)[:12]}…"


def _repair_hint(meta: dict) -> str:
    return f"repair: {meta['command']}" if meta.get("command") else "repair by re-running videoformer extract"


_VERIFIED: dict[str, tuple[int, int, int]] = {}  # cached videos verified by this process: (inode, size, mtime_ns)


def verify_cached(video: str | os.PathLike) -> None:
    """Raise :class:`CacheError` when ``video`` is a cached video whose bytes do not match the checksum written
    with it; nothing for files that are not cache entries (no checksum record).

    A file is hashed on its first read in a process and again whenever its inode, size or mtime change, so a
    long video sampled many times costs one hash per process, not one per sample."""
    video = Path(video)
    try:
        st = video.stat()
    except OSError:
        return  # missing: the decoder's own error names it
    key, stamp = os.fspath(video), (st.st_ino, st.st_size, st.st_mtime_ns)
    if _VERIFIED.get(key) == stamp:
        return
    meta = _read_meta(video)
    if meta is None:
        return
    why = _mismatch(video, meta.get("size"), meta.get("sha1"))
    if why:
        raise CacheError(video, f"damaged cache file ({why}); {_repair_hint(meta)}")
    if len(_VERIFIED) >= 1 << 18:
        _VERIFIED.clear()
    _VERIFIED[key] = stamp


def cached_logmel(video: str | os.PathLike) -> tuple[np.ndarray, float] | None:
    """(log-mel (F, 64) float32, audio offset s) cached with a video, verified against its checksum; None when
    nothing is cached (not a cache entry, or no audio). A damaged file raises :class:`CacheError`."""
    video = Path(video)
    meta = _read_meta(video)
    if meta is None or not meta.get("logmel_sha1"):
        return None
    lm = logmel_path(video)
    why = _mismatch(lm, meta.get("logmel_size"), meta["logmel_sha1"])
    if why:
        raise CacheError(lm, f"damaged cache file ({why}); {_repair_hint(meta)}")
    try:
        return np.load(lm, allow_pickle=False).astype(np.float32), float(meta.get("audio_offset", 0.0))
    except (OSError, ValueError) as e:
        raise CacheError(lm, f"unreadable log-mel ({e}); {_repair_hint(meta)}") from e


def _entry_state(video: Path, source: str, rel: str, cfg: PrepareConfig) -> str:
    """'new' (never extracted), 'ok' (source unchanged, every checksum matches) or why it must be redone."""
    try:
        meta = _read_meta(video)
    except CacheError as e:
        return e.cause
    if meta is None:
        return "new"
    if meta.get("version") != FORMAT_VERSION or meta.get("config") != asdict(cfg) or meta.get("source_rel") != rel:
        return "made by another version or with other parameters"
    try:
        st = os.stat(source)
    except OSError:
        return "source unreadable"
    if (meta.get("source_size"), meta.get("source_mtime")) != (st.st_size, int(st.st_mtime)):
        return "source changed"
    why = _mismatch(video, meta.get("size"), meta.get("sha1"))
    if not why and meta.get("logmel_sha1"):
        why = _mismatch(logmel_path(video), meta.get("logmel_size"), meta["logmel_sha1"])
    return why or "ok"


@dataclass(frozen=True)
class _Job:
    source: str  # absolute source video
    video: str  # absolute cached video
    rel: str  # source path relative to the dataset folder
    cfg: PrepareConfig
    command: str


def _convert(job: _Job) -> dict:
    """Worker: re-encode one video, cache its log-mel, then write its checksum record (the commit point)."""
    video = Path(job.video)
    video.parent.mkdir(parents=True, exist_ok=True)
    meta_path(video).unlink(missing_ok=True)  # an entry without a record is never reused
    with replacing(video) as tmp:
        reencode_mpeg4(job.source, tmp, size=(job.cfg.width, job.cfg.height), gop=job.cfg.gop, qscale=job.cfg.qscale)
        info = probe(tmp)
    lm, lm_size, lm_sha1, offset = logmel_path(video), None, None, 0.0
    loaded = load_audio(video) if info.has_audio else None
    if loaded is not None:
        wave, offset = loaded
        atomic_write(lm, lambda f: np.save(f, log_mel(wave).astype(np.float16)), sync=False)
        lm_size, lm_sha1 = lm.stat().st_size, sha1_file(lm)
    else:
        lm.unlink(missing_ok=True)
    st = os.stat(job.source)
    meta = {"version": FORMAT_VERSION, "source": job.source, "source_rel": job.rel, "source_size": st.st_size,
            "source_mtime": int(st.st_mtime), "size": video.stat().st_size, "sha1": sha1_file(video),
            "logmel_size": lm_size, "logmel_sha1": lm_sha1, "audio_offset": offset, "num_frames": info.num_frames,
            "fps": info.fps, "has_audio": info.has_audio, "config": asdict(job.cfg), "command": job.command}
    atomic_write_text(meta_path(video), json.dumps(meta, indent=1))
    return meta


def _die_with_parent(parent: int) -> None:
    """Pool-worker initializer: the worker ends when the extracting process dies, even by SIGKILL (Linux:
    PR_SET_PDEATHSIG; elsewhere a thread that polls the parent's pid)."""
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
    if not sys.platform.startswith("linux"):
        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(0.5)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


@contextlib.contextmanager
def _locked(root: Path):
    """One extraction at a time per cache (a second one would race on the manifest)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        yield
        return
    with open(root / ".extract.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ExtractError(root, "another videoformer extract is writing this cache; wait for it to end") from None
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _scan(src: Path, skip: Path) -> tuple[list[str], list[str]]:
    """(relative video paths, relative annotation files) of a dataset folder, or of the videos a CSV lists."""
    if src.is_dir():
        videos, notes, seen = [], [], set()
        for folder, dirs, files in os.walk(src, followlinks=True):  # symlinked class / split folders count
            if os.path.realpath(folder) in seen:  # a link cycle
                dirs[:] = []
                continue
            seen.add(os.path.realpath(folder))
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and Path(folder, d) != skip)
            for name in sorted(files):
                if name.startswith(".") or name.endswith(".extract.json"):
                    continue
                path = os.path.join(folder, name)
                suffix = os.path.splitext(name)[1].lower()
                if suffix in VIDEO_EXTENSIONS:
                    videos.append(os.path.relpath(path, src))
                elif suffix in ANNOTATION_SUFFIXES and os.path.getsize(path) <= MAX_ANNOTATION_BYTES:
                    notes.append(os.path.relpath(path, src))
        if not videos:
            raise ExtractError(src, f"no video files ({', '.join(VIDEO_EXTENSIONS)}) in this folder or below")
        return videos, notes
    if src.is_file():
        base, videos = src.parent, set()
        for r in read_csv(src, check_exists=False).records:
            rel = os.path.relpath(r.path, base)
            if rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
                raise ExtractError(src, f"{r.path} is outside the CSV's folder {base}: the cache keeps the layout "
                                        "of that folder, so every listed video must be inside it")
            videos.add(rel)
        if not videos:
            raise ExtractError(src, "the CSV lists no videos")
        return sorted(videos), [src.name]
    raise ExtractError(src, "not found: expected a dataset folder or a CSV path,label[,start,end]")


def _same(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def _cache_info(root: Path, base: Path, cfg: PrepareConfig) -> None:
    """Check (or write) ``root/extract.json``: one set of parameters and one source folder per cache."""
    info_path = root / "extract.json"
    if info_path.is_file():
        try:
            old = json.loads(info_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ExtractError(info_path, f"unreadable ({e}); delete it to start this cache anew") from e
        if old.get("version") != FORMAT_VERSION or old.get("config") != asdict(cfg):
            made = " ".join(PrepareConfig(**old["config"]).args()) if isinstance(old.get("config"), dict) else "?"
            raise ExtractError(root, f"this cache was made with {made} (format {old.get('version')}); "
                                     "extract into another OUT folder for other parameters")
        prev = Path(old.get("source", ""))
        if prev != base and prev.exists() and not _same(prev, base):
            raise ExtractError(root, f"this cache mirrors {prev}, another dataset with the same folder name; "
                                     "extract into another OUT folder")
    info = {"version": FORMAT_VERSION, "config": asdict(cfg), "source": str(base)}
    atomic_write_text(info_path, json.dumps(info, indent=1))


def _copy_if_changed(src: Path, dst: Path) -> bool:
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes():
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dst) as tmp:
        shutil.copy2(src, tmp)
    return True


def _merge_manifest(root: Path, done: dict[str, str], dropped: set[str]) -> None:
    """``manifest.csv`` (path,source): earlier rows kept unless failed now, this run's rows added."""
    path, rows = root / "manifest.csv", {}
    if path.is_file():
        for r in csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))):
            if r.get("path") and (root / r["path"]).is_file():
                rows[r["path"]] = r.get("source", "")
    for p in dropped:
        rows.pop(p, None)
    rows.update(done)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["path", "source"])
    w.writerows(sorted(rows.items()))
    atomic_write_text(path, out.getvalue())


def extract_dataset(src: str | os.PathLike, out: str | os.PathLike, cfg: PrepareConfig = PrepareConfig(),
                    workers: int = 1, progress: bool = True) -> PrepareResult:
    """Re-encode every video of ``src`` (a folder, or a CSV whose folder is the dataset) into the cache root
    ``out/<name of the dataset folder>`` with ``workers`` processes, keeping the layout; resumable and
    self-repairing. Unreadable sources are logged and listed in ``result.failed``; bad input (no videos,
    colliding names, a cache of other parameters or of another dataset, a full disk) raises ExtractError."""
    src, out = Path(os.path.abspath(src)), Path(os.path.abspath(out))
    base = src if src.is_dir() else src.parent
    if not base.name:
        raise ExtractError(src, "the dataset folder needs a name (the cache is OUT/<name>)")
    root = out / base.name
    if root == base or root in base.parents:
        raise ExtractError(root, f"the cache would overwrite the dataset {base}; choose another OUT folder")
    videos, notes = _scan(src, skip=root)
    targets: dict[Path, str] = {}
    for rel in videos:
        video = (root / rel).with_suffix(".mp4")
        if video in targets:
            raise ExtractError(base / rel, f"and {base / targets[video]} would both be cached as {video}; "
                                           "rename one of them")
        targets[video] = rel
    root.mkdir(parents=True, exist_ok=True)
    command = shlex.join(["videoformer", "extract", str(src), str(out), *cfg.args()])
    result = PrepareResult(root)
    with _locked(root):
        _cache_info(root, base, cfg)
        stale = remove_stale_temp(root, recursive=True)
        if stale:
            log.info("%s: removed %d temporary files of interrupted extractions", root, len(stale))
        result.copied = sum(_copy_if_changed(base / rel, root / rel) for rel in notes)
        jobs, done = [], {}
        for video, rel in targets.items():
            state = _entry_state(video, str(base / rel), rel, cfg)
            if state == "ok":
                result.reused += 1
                done[str(video.relative_to(root))] = str(base / rel)
                continue
            if state != "new":
                result.repaired += 1
                log.info("extract: redoing %s (%s)", video, state)
            jobs.append(_Job(str(base / rel), str(video), rel, cfg, command))
        failed: set[str] = set()
        try:
            for job, err in _run(jobs, workers, progress):
                key = str(Path(job.video).relative_to(root))
                if err is None:
                    result.done += 1
                    done[key] = job.source
                else:
                    result.failed.append((job.source, err))
                    failed.add(key)
        except BaseException:  # interrupted or disk full: record what is done (if the disk lets us)
            with contextlib.suppress(OSError):
                _merge_manifest(root, done, failed)
            raise
        _merge_manifest(root, done, failed)
    return result


def _run(jobs: list[_Job], workers: int, progress: bool):
    """Yield ``(job, None)`` or ``(job, error message)`` as conversions finish; a full disk stops everything."""
    bar = tqdm(total=len(jobs), desc="extract", disable=not progress, unit="video")

    def outcome(job: _Job, call):
        try:
            call()
            return job, None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise ExtractError(job.video, "disk full: free space (or choose another OUT) and re-run; the "
                                              "videos done so far are kept") from None
            log.warning("extract: skipping %s: %s", job.source, e)
            return job, str(e)
        except (VideoReadError, ValueError) as e:
            log.warning("extract: skipping %s: %s", job.source, e)
            return job, str(e)
        finally:
            bar.update()

    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                yield outcome(job, lambda job=job: _convert(job))
            return
        # spawn, not fork: FFmpeg's threads and state do not survive a fork of a process that used them
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_die_with_parent, initargs=(os.getpid(),)) as pool:
            futures = {pool.submit(_convert, job): job for job in jobs}
            try:
                for fut in as_completed(futures):
                    yield outcome(futures[fut], fut.result)
            except BrokenProcessPool:
                raise ExtractError(Path(jobs[0].video).parent, "a worker process died (crashed or killed, e.g. out "
                                   "of memory); re-run to resume, with --workers 1 to see which video fails") from None
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        bar.close()


def main(argv: list[str] | None = None) -> int:
    """``videoformer extract DATASET OUT``: prints the cache root and a summary; exit 1 if any failed."""
    from ..cli import add_extract_arguments

    return run_extract(add_extract_arguments(argparse.ArgumentParser(prog="videoformer extract")).parse_args(argv))


def run_extract(args: argparse.Namespace) -> int:
    """Run ``extract`` on parsed arguments (the ``videoformer`` command mounts :func:`add_extract_arguments`).
    Exit 0 when every video is cached, 1 when some failed, 2 when the input is unusable."""
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        print(f"videoformer extract: --size {args.size!r}: expected WIDTHxHEIGHT, e.g. 340x256", file=sys.stderr)
        return 2
    try:
        res = extract_dataset(args.dataset, args.out, PrepareConfig(w, h, args.gop, args.qscale),
                              workers=args.workers)
    except (ExtractError, AnnotationError, OSError) as err:  # OSError: e.g. OUT not writable
        print(f"videoformer extract: {err}", file=sys.stderr)
        return 2
    repaired = f" ({res.repaired} re-extracted: damaged or source changed)" if res.repaired else ""
    print(f"{res.root}: {res.done} encoded{repaired}, {res.reused} reused, {res.copied} annotation files copied, "
          f"{len(res.failed)} failed")
    print(f"use data.root={res.root} with the dataset's data.format and splits")
    for path, err in res.failed[:20]:
        print(f"  failed: {path}: {err}", file=sys.stderr)
    return 1 if res.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
