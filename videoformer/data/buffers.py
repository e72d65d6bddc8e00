"""Reused, already-mapped memory for the large arrays a sample returns (decoded clips, compressed-domain arrays).

The first write of fresh memory is the kernel's work: on this 2-core VM an 88 MB 720p clip costs ~60 ms of
page faults with ordinary pages (90-120 ms under memory pressure), and asking for transparent huge pages
(numpy does, for arrays >= 4 MB) stalls 230-300 ms on compaction when memory is fragmented. A dataset returns
arrays of the same few sizes sample after sample and drops each one once it is cropped or collated, so a
process keeps the buffers it mapped and hands out a free one again: no page is faulted twice.

A buffer is free when nothing but the pool refers to it (every array and view made from it holds a reference),
so an array a caller keeps is never written under it. ``VIDEOFORMER_BUFFER_POOL_MB`` caps the bytes a process
keeps mapped this way (default 512; 0 turns reuse off); a forked child (a DataLoader worker) starts with an
empty pool.
"""

from __future__ import annotations

import mmap
import os
import sys
import threading

import numpy as np

__all__ = ["empty_array", "BufferPool", "POOL_ENV"]

POOL_ENV = "VIDEOFORMER_BUFFER_POOL_MB"
_MIN_BYTES = 1 << 20  # smaller arrays come from np.empty (a clip of 8 x 224² RGB frames is 1.2 MB)
_FLAGS = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)


def _mapping(nbytes: int) -> mmap.mmap:
    """Anonymous memory with its pages faulted in by one call (``MAP_POPULATE``: ~40 % cheaper than faulting
    them one write at a time), ordinary 4 KB pages (no compaction stall)."""
    return mmap.mmap(-1, nbytes, flags=_FLAGS)


class BufferPool:
    """Mapped buffers of one process, handed out again once every array made from them is gone."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit = limit_bytes
        self._bufs: list[mmap.mmap] = []  # least recently handed out first
        self._free_refs: int | None = None  # sys.getrefcount of a buffer only the pool holds
        self._lock = threading.Lock()

    def _refs(self, i: int) -> int:
        return sys.getrefcount(self._bufs[i])

    def _free(self) -> list[int]:
        return [i for i in range(len(self._bufs)) if self._refs(i) == self._free_refs]

    def clear(self) -> None:
        """Forget every buffer (those still in use stay alive through their arrays)."""
        self._bufs = []
        self._lock = threading.Lock()

    @property
    def mapped_bytes(self) -> int:
        return sum(len(b) for b in self._bufs)

    def _take(self, nbytes: int) -> mmap.mmap | None:
        """A free buffer of ``nbytes`` to ``2 * nbytes`` (the smallest), else a new one kept in the pool after
        unmapping free ones least recently used first to stay under the cap; None when buffers in use fill it."""
        fits = [i for i in self._free() if nbytes <= len(self._bufs[i]) <= 2 * nbytes]
        if fits:
            self._bufs.append(self._bufs.pop(min(fits, key=lambda j: len(self._bufs[j]))))
            return self._bufs[-1]
        room, free = self.limit - nbytes, self._free()
        while free and self.mapped_bytes > room:
            del self._bufs[free.pop(0)]
            free = self._free()
        if self.mapped_bytes > room:
            return None
        self._bufs.append(_mapping(nbytes))
        if self._free_refs is None:  # calibrated while only the pool holds it
            self._free_refs = self._refs(len(self._bufs) - 1)
        return self._bufs[-1]

    def empty(self, shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
        """An uninitialised C-contiguous array (like ``np.empty``) on a pooled buffer (:meth:`_take`), or on a
        one-off mapping when reuse is off or the cap is taken."""
        dtype = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * dtype.itemsize
        if nbytes < _MIN_BYTES:
            return np.empty(shape, dtype)
        with self._lock:  # the array is made before another thread can see the buffer as free
            buf = self._take(nbytes) if self.limit > 0 else None
            return np.frombuffer(_mapping(nbytes) if buf is None else buf, dtype, count).reshape(shape)


def _limit_from_env() -> int:
    raw = os.environ.get(POOL_ENV, "512")
    try:
        mb = float(raw)
    except ValueError as e:
        raise ValueError(f"{POOL_ENV}={raw!r}: expected a number of megabytes (0 turns buffer reuse off)") from e
    return int(mb * (1 << 20))


_POOL = BufferPool(_limit_from_env())
os.register_at_fork(after_in_child=_POOL.clear)


def empty_array(shape: tuple[int, ...], dtype=np.uint8) -> np.ndarray:
    """``np.empty`` for the large arrays a sample returns, on this process's :class:`BufferPool`."""
    return _POOL.empty(shape, dtype)
