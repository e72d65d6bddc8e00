"""Typed errors of the data pipeline: every one names the file and the cause."""

from __future__ import annotations

import logging
import os

_WARNED: set[str] = set()


def warn_once(log: logging.Logger, kind: str, message: str, *args: object) -> None:
    """``log.warning`` the first time ``kind`` is reported in this process (and in the DataLoader workers forked
    after it); later reports of that kind go to the info level (hidden by default). A dataset that finds a problem
    while it is built reports it here once, so its workers do not repeat it for every sample."""
    if kind in _WARNED:
        log.info(message, *args)
        return
    _WARNED.add(kind)
    log.warning(message, *args)


class _PathError(ValueError):
    """``path: cause``; ``path`` is the offending file or folder, ``cause`` a short human-readable reason."""

    def __init__(self, path: str | os.PathLike, cause: str) -> None:
        self.path = os.fspath(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.cause))


class VideoReadError(_PathError):
    """A video (or its audio) could not be opened, demuxed or decoded.

    The original exception (FFmpeg / OS error) is chained as ``__cause__``.
    """


#: Alias kept for readers who look for the decode-specific name.
VideoDecodeError = VideoReadError


class AnnotationError(_PathError):
    """An annotation file (CSV / JSON / split list) is malformed; names the file and the line."""


class CacheError(VideoReadError):
    """A file of the ``videoformer extract`` cache does not match the checksum written with it (or its
    checksum record is unreadable). The message names the file and the command that repairs it; datasets
    skip and count such a sample like any unreadable video."""


class ExtractError(_PathError):
    """``videoformer extract`` cannot run as asked (no videos, a cache made with other parameters or from
    another dataset, colliding names, a full disk); names the file or folder and what to do."""
