"""glibc ``malloc`` settings of a videoformer process: a forward pass's activations reuse heap memory.

PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its mmap threshold (128 KB at start,
raised as mapped blocks are freed, never above 32 MB) with a fresh mapping and returns heap memory to the kernel
once more than the trim threshold is free at its top, so the activations of a forward pass (the same 1-10 MB
sizes, allocated and freed in every layer) are page-faulted again and again: ~44,500 minor faults and 50-130 ms
of system time per TimeSformer-B bf16 forward on a 2-core EPYC VM; tuned, 1-2 ms and a 4-5 % faster forward
(``benchmarks/README.md``).
:func:`tune_malloc` keeps blocks below 64 MB on the heap and lets up to 128 MB stay free at its top; the peak
resident memory of that forward did not change. The ``videoformer`` command applies it at start (DataLoader
workers forked from it inherit it); library users may call it themselves.
"""
from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["tune_malloc", "TUNE_ENV"]

TUNE_ENV = "VIDEOFORMER_TUNE_MALLOC"  # "0": leave malloc as it is
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 128 << 20
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD")


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds (:data:`MMAP_THRESHOLD`, :data:`TRIM_THRESHOLD`); True if set.

    Does nothing off glibc, with ``VIDEOFORMER_TUNE_MALLOC=0``, or where the user chose allocator settings
    (``MALLOC_*_THRESHOLD_``, ``GLIBC_TUNABLES``, or another allocator through ``LD_PRELOAD``)."""
    if os.environ.get(TUNE_ENV, "1") == "0" or any(os.environ.get(k) for k in _USER_SETTINGS):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
