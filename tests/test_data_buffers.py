"""The buffer pool behind decoded clips: a buffer is handed out again only when nothing refers to it."""

import os

import numpy as np
import pytest
import torch

from videoformer.data import buffers
from videoformer.data.buffers import BufferPool

MB = 1 << 20


def address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_a_kept_array_is_never_handed_out_again():
    pool = BufferPool(64 * MB)
    a = pool.empty((8, 1024, 1024), np.uint8)
    a[:] = 7
    b = pool.empty((8, 1024, 1024), np.uint8)
    b[:] = 9
    assert not np.shares_memory(a, b) and (a == 7).all()


def test_a_dropped_array_is_reused_and_a_kept_view_or_tensor_blocks_reuse():
    pool = BufferPool(64 * MB)
    a = pool.empty((5, MB), np.int16)
    first = address(a)
    del a
    b = pool.empty((5, MB), np.int16)
    assert address(b) == first  # reused, no new mapping
    view = b[1:3]
    del b
    assert address(pool.empty((5, MB), np.int16)) != first  # the view still holds the buffer
    t = torch.from_numpy(view)
    del view
    assert address(pool.empty((5, MB), np.int16)) != first  # so does a tensor made from it
    del t
    c = pool.empty((5, MB), np.int16)
    assert address(c) == first and c.shape == (5, MB) and c.dtype == np.int16 and c.flags.c_contiguous


def test_sizes_within_a_factor_two_share_buffers_and_the_cap_holds():
    pool = BufferPool(20 * MB)
    a = pool.empty((8 * MB,), np.uint8)
    first = address(a)
    del a
    assert address(pool.empty((5 * MB,), np.uint8)) == first  # 8 MB buffer serves 5 MB
    assert pool.mapped_bytes == 8 * MB
    big = pool.empty((16 * MB,), np.uint8)  # too big for the free 8 MB one: it is unmapped to stay under 20 MB
    assert pool.mapped_bytes == 16 * MB
    extra = pool.empty((16 * MB,), np.uint8)  # the cap is in use: a one-off mapping, not kept
    assert pool.mapped_bytes == 16 * MB and not np.shares_memory(big, extra)


def test_small_arrays_and_a_zero_cap_bypass_the_pool():
    pool = BufferPool(0)
    a = pool.empty((8 * MB,), np.uint8)
    first = address(a)
    del a
    b = pool.empty((8 * MB,), np.uint8)
    assert pool.mapped_bytes == 0 and b.size == 8 * MB
    small = BufferPool(64 * MB).empty((100, 100), np.float32)
    assert small.shape == (100, 100) and small.dtype == np.float32
    del first


def test_env_cap_is_read_and_checked(monkeypatch):
    monkeypatch.setenv(buffers.POOL_ENV, "1.5")
    assert buffers._limit_from_env() == int(1.5 * MB)
    monkeypatch.setenv(buffers.POOL_ENV, "lots")
    with pytest.raises(ValueError, match=buffers.POOL_ENV):
        buffers._limit_from_env()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_with_an_empty_pool():
    keep = buffers.empty_array((8 * MB,), np.uint8)
    assert buffers._POOL.mapped_bytes >= 8 * MB
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        os._exit(0 if buffers._POOL.mapped_bytes == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    del keep
