"""Distributed data parallel from the environment ``torchrun`` sets (RANK, WORLD_SIZE, LOCAL_RANK):
NCCL on GPUs, gloo on CPU. A single process is world size 1 with no process group."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def available_devices() -> list[str]:
    """The devices this machine has: ``cpu``, ``cuda:0`` ..., ``mps``."""
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count() if torch.cuda.is_available() else 0)]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    return names


def check_device(name: str, where: str = "train.device") -> None:
    """``auto``, ``cuda`` (with LOCAL_RANK) or a device of :func:`available_devices`; otherwise a
    :class:`~videoformer.engine.config.ConfigError` listing what this machine has."""
    from .config import ConfigError

    if name == "auto":
        return
    available = available_devices()
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        dev = None
    if dev is not None and dev.type in ("cpu", "mps") and dev.index in (None, 0) and dev.type in available:
        return
    if dev is not None and dev.type == "cuda" and f"cuda:{dev.index or 0}" in available:
        return
    raise ConfigError(f"{where}={name}: {'no such device on this machine' if dev is not None else 'not a device name'}"
                      f"; available: auto, {', '.join(available)}")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank)
    return torch.device(name)


def init_distributed(device: str = "auto") -> DistInfo:
    """Join the process group when launched by ``torchrun`` (WORLD_SIZE > 1); otherwise a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local, dev)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum a float64 tensor of counters over all processes (no-op for one process)."""
    if info.distributed:
        values = values.to(info.device)
        dist.all_reduce(values)
    return values.cpu()


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
