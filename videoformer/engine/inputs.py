"""Video arguments of ``predict`` and ``features``: files, folders, glob patterns and ``-`` (paths on stdin).

:func:`expand_videos` yields paths lazily, so a list piped on stdin is worked on as it arrives (``find ... |
videoformer predict RUN -``). A folder means every video below it (sorted); a pattern that matches nothing and
a missing file are passed through, for the caller to report as not found.
"""
from __future__ import annotations

import glob
import os
import sys
from pathlib import Path
from typing import IO, Iterable, Iterator

from ..data.annotations import VIDEO_EXTENSIONS


def videos_in(folder: str | os.PathLike) -> list[str]:
    """Every video file (by extension) below ``folder``, sorted; hidden files and folders skipped."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in sorted(files)
                  if not f.startswith(".") and os.path.splitext(f)[1].lower() in VIDEO_EXTENSIONS]
    return found


def expand_videos(args: Iterable[str], stdin: IO[str] | None = None) -> Iterator[str]:
    """Paths of the videos ``args`` name (see the module docstring), in order."""
    for arg in args:
        if arg == "-":
            for line in stdin or sys.stdin:
                if line.strip():
                    yield line.strip()
        elif Path(arg).is_dir():
            yield from videos_in(arg)
        elif not Path(arg).exists() and glob.has_magic(arg):
            yield from sorted(glob.glob(arg, recursive=True)) or [arg]
        else:
            yield arg


def known_length(args: Iterable[str]) -> bool:
    """Whether the number of videos is known up front (no ``-``), so a progress bar can show an ETA."""
    return "-" not in args


def stream_predictions(run, videos: Iterable[str], num_clips: int, num_crops: int, topk: int,
                       progress: bool | None = None, stdin: IO[str] | None = None) -> Iterator[dict]:
    """``predict_files`` results one video at a time, as the paths arrive (see :func:`expand_videos`), with a
    tqdm bar of videos/s and, when the count is known, the ETA (``progress`` None: only on a terminal)."""
    from tqdm import tqdm

    from .predict import predict_files

    videos = list(videos)
    paths: Iterable[str] = expand_videos(videos, stdin)
    if known_length(videos):
        paths = list(paths)
    with tqdm(paths, desc="predict", unit="video", disable=None if progress is None else not progress,
              leave=False, dynamic_ncols=True) as bar:
        for path in bar:
            yield from predict_files(run, [path], num_clips, num_crops, topk)
