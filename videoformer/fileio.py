"""Crash-safe file writing shared by training runs and the extraction cache.

Every file is written to a temporary name beside it (``.<name>.<host>.<pid>.tmp<suffix>``), flushed and fsynced,
then renamed over the target, so a kill at any moment leaves the previous or the new file, never a torn one. A
failed write removes its temp file and raises :class:`WriteError` naming the file. Temp files of processes that
died are removed by the next run (:func:`remove_stale_temp`): a dead pid on this host, or older than a day when
another host (shared storage) wrote it.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import time
from pathlib import Path
from typing import IO, Callable, Iterator

HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
STALE_SECONDS = 24 * 3600  # temp files of another host are removed after a day
TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_]+)\.(?P<pid>\d+)\.tmp(\.\w+)?$")


class WriteError(OSError):
    """A file could not be written (disk full, no permission); the previous file, if any, is untouched and no
    temp file is left behind. The message names the file."""


def temp_path(path: Path, pid: int | None = None) -> Path:
    """The temporary name of ``path`` while it is written (keeps the suffix: writers that pick a container by
    suffix, such as FFmpeg muxers, still work)."""
    return path.with_name(f".{path.name}.{HOST}.{os.getpid() if pid is None else pid}.tmp{path.suffix}")


def _write_error(path: Path, err: OSError) -> WriteError:
    reason = os.strerror(err.errno) if err.errno else str(err)
    hint = " (disk full: free space or write elsewhere)" if err.errno == errno.ENOSPC else ""
    failure = WriteError(f"cannot write {path}: {reason}{hint}; the previous {path.name}, if any, is unchanged")
    failure.errno = err.errno
    return failure


@contextlib.contextmanager
def replacing(path: Path, sync: bool = False) -> Iterator[Path]:
    """Yield the temp path of ``path``; when the block succeeds, rename it over ``path`` (after an fsync of the
    file and its folder with ``sync``). On any failure the temp file is removed and the error propagates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        if sync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    if sync:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], object], sync: bool = True) -> None:
    """Call ``write(file)`` on a temp file next to ``path``, then rename it over ``path`` (see :func:`replacing`);
    an ``OSError`` becomes a :class:`WriteError` naming ``path``."""
    path = Path(path)
    try:
        with replacing(path, sync) as tmp, open(tmp, "wb") as f:
            write(f)
    except OSError as err:
        if isinstance(err, WriteError):
            raise
        raise _write_error(path, err) from err


def atomic_write_text(path: Path, text: str, sync: bool = False) -> None:
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), sync)


def pid_alive(pid: int) -> bool:
    """True while ``pid`` runs on this host (a zombie, killed but not yet reaped, counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):  # no /proc (not Linux)
        return True


def remove_stale_temp(*folders: Path, recursive: bool = False) -> list[Path]:
    """Remove the temp files of writers that died from ``folders`` (and their subfolders with ``recursive``);
    a live writer's file is left alone. Returns the removed paths."""
    removed, now = [], time.time()
    for folder in folders:
        walk = os.walk(folder) if recursive else [(str(folder), [], os.listdir(folder) if Path(folder).is_dir() else [])]
        for root, _, files in walk:
            for name in files:
                m = TEMP.match(name)
                path = Path(root) / name
                if not m or int(m["pid"]) == os.getpid() and m["host"] == HOST:
                    continue
                try:
                    dead = m["host"] == HOST and not pid_alive(int(m["pid"]))
                    if dead or now - path.stat().st_mtime > STALE_SECONDS:
                        path.unlink()
                        removed.append(path)
                except FileNotFoundError:
                    pass
    return removed
