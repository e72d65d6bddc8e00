"""Typed errors of the data pipeline: every one names the file and the cause."""

from __future__ import annotations

import os


class VideoReadError(ValueError):
    """A video (or its audio) could not be opened, demuxed or decoded.

    ``path`` is the offending file and ``cause`` a short human-readable reason; the original
    exception (FFmpeg / OS error) is chained as ``__cause__``.
    """

    def __init__(self, path: str | os.PathLike, cause: str) -> None:
        self.path = os.fspath(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

    def __reduce__(self):  # picklable across worker processes
        return (type(self), (self.path, self.cause))


#: Alias kept for readers who look for the decode-specific name.
VideoDecodeError = VideoReadError


class AnnotationError(ValueError):
    """An annotation file (CSV / JSON / split list) is malformed; names the file and the line."""

    def __init__(self, path: str | os.PathLike, cause: str) -> None:
        self.path = os.fspath(path)
        self.cause = cause
        super().__init__(f"{self.path}: {cause}")

    def __reduce__(self):
        return (type(self), (self.path, self.cause))
