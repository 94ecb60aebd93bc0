"""Several processes, one training run: torchrun setup, rank-0 discipline and the few collectives we use.

`torchrun` starts one process per device and tells each its place through environment
variables (RANK, LOCAL_RANK, WORLD_SIZE). Every process runs the same program; only rank 0
talks to the person and writes files, so output and checkpoints are never duplicated.
Without torchrun there is one process of rank 0 and every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .common import TinyGPTError, autodetect_device


@dataclass(frozen=True)
class Dist:
    """Where this process stands: its rank among world_size processes and its device."""

    rank: int = 0
    local_rank: int = 0  # rank within this machine: picks the GPU
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(requested_device: str = "auto") -> Dist:
    """Join the process group when started by torchrun (NCCL on CUDA, gloo on CPU); pick the device."""
    device = autodetect_device(requested_device)
    if not launched_by_torchrun():
        return Dist(device=device)
    rank, local_rank, world_size = (int(os.environ[k]) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():
            raise TinyGPTError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device == "cpu":
        backend = "gloo"
    else:
        raise TinyGPTError(f"torchrun runs on CUDA or CPU, not {device!r}")
    dist.init_process_group(backend=backend)
    return Dist(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over all processes, in place (and return it)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_from_main(value: float, device: str) -> float:
    """Rank 0's value on every rank: for decisions that must agree, like a measured step budget."""
    if not _active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return float(t.item())


def gather_to_main(obj) -> list | None:
    """Every rank's `obj` as a list on rank 0 (None elsewhere).

    Objects travel pickled between our own processes only; nothing read from disk is unpickled.
    """
    if not _active():
        return [obj]
    out = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    if _active():
        dist.barrier()
