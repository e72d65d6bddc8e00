"""CPU threads of a run (``train.threads``): by default one per *physical* core this process may use.

Torch's default (one thread per logical CPU of the machine) oversubscribes a container or a shared machine:
on a busy 2-core host it made training 4x slower (issue 12). Hyper-threads share one core's vector units, so
a second thread per core adds contention, not speed; DataLoader workers (one thread each, set by torch) and the
other processes of a CPU DDP run take their cores out of the main process's share.
"""
from __future__ import annotations

import math
import os
from pathlib import Path


def _cgroup_limit() -> int | None:
    """CPUs the cgroup quota allows (``cpu.max`` v2 / ``cpu.cfs_quota_us`` v1), None when unlimited."""
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            if period_file is None:
                quota, period = Path(quota_file).read_text().split()[:2]
            else:
                quota, period = Path(quota_file).read_text().strip(), Path(period_file).read_text().strip()
            if quota not in ("max", "-1") and int(period) > 0:
                return max(1, math.ceil(int(quota) / int(period)))
        except (OSError, ValueError):
            continue
    return None


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (``sched_getaffinity``, hyper-threads counted once
    via sysfs topology), capped by the cgroup CPU quota."""
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology")
        try:
            cores.add((topo / "physical_package_id").read_text().strip() + ":" + (topo / "core_id").read_text().strip())
        except OSError:
            cores.add(str(cpu))  # no topology (macOS, some containers): count logical CPUs
    n, limit = len(cores), _cgroup_limit()
    return max(1, min(n, limit) if limit else n)


def default_threads(num_workers: int = 0, local_processes: int = 1) -> int:
    """Intra-op threads of the main process: the physical cores, shared by the processes of this machine, less
    one per DataLoader worker (which decode on their own core) -- at least one."""
    share = physical_cores() // max(1, local_processes)
    return max(1, share - num_workers)


def set_threads(threads: int | None, num_workers: int = 0, local_processes: int = 1) -> int:
    """``torch.set_num_threads`` to ``threads`` (None: :func:`default_threads`); returns the number set."""
    import torch

    n = threads or default_threads(num_workers, local_processes)
    torch.set_num_threads(n)
    return n
