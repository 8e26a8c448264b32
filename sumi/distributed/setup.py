"""Process-group setup from the ``torchrun`` environment.

``torchrun`` exports ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`init_distributed` reads them, picks NCCL on CUDA and gloo on CPU, pins this process to its
GPU and starts the default process group.  Without those variables (``python train.py``) it is a
single process: world size 1, no process group, and every collective in :mod:`sumi.distributed`
degrades to a no-op; :func:`single_process_group` gives such a process a group of one rank where
FSDP2 needs one (mixed precision).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "single_process_group", "destroy", "is_distributed", "barrier", "rank",
           "world_size", "broadcast_object", "gather_objects", "on_rank0"]

# A hung collective should fail a job, not hold its GPUs forever; ten minutes covers the slowest
# legitimate collective we issue (a checkpoint's metadata exchange on a busy filesystem).
DEFAULT_TIMEOUT = timedelta(minutes=10)
_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: global ``rank`` of ``world_size``, ``local_rank`` on its node,
    and the ``device`` its tensors live on (``cuda:<local_rank>`` or ``cpu``)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs and writes side files."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun)") from None


def is_distributed() -> bool:
    """True when a default process group exists (``init_distributed`` ran under torchrun)."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """``dist.barrier()`` when a process group exists; nothing in a single process."""
    if is_distributed():
        dist.barrier()


def rank() -> int:
    """This process's global rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` (picklable) on every rank; ``obj`` itself without a process group."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def on_rank0(fn, *args) -> Any:
    """Run ``fn(*args)`` on rank 0 only and return its result on every rank.  An exception there
    is raised on every rank, so no rank waits at a later collective for one that failed (a file
    check, a lock, a write that only rank 0 performs)."""
    result = error = None
    if rank() == 0:
        try:
            result = fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised on every rank below
            error = e
    result, error = broadcast_object((result, error))
    if error is not None:
        raise error
    return result


def init_distributed(backend: str | None = None, *, timeout: timedelta = DEFAULT_TIMEOUT) -> DistInfo:
    """Start the default process group from the torchrun environment, or describe a single process.

    ``backend``: ``"nccl"`` or ``"gloo"``; default NCCL when CUDA is available, gloo otherwise.
    With NCCL the current CUDA device is set to ``LOCAL_RANK`` before the group starts (so each
    rank talks through its own GPU).  ``timeout`` bounds every collective.  Calling it again once
    the group exists returns the same description without re-initializing.
    """
    present = [name for name in _TORCHRUN_VARS if name in os.environ]
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", rank)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"invalid torchrun environment: RANK={rank}, WORLD_SIZE={world_size}")
    if world_size > 1 and len(present) < len(_TORCHRUN_VARS):
        missing = [name for name in _TORCHRUN_VARS if name not in os.environ]
        raise RuntimeError(f"WORLD_SIZE={world_size} but {', '.join(missing)} is not set; launch with torchrun")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl' or 'gloo', got {backend!r}")
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("backend='nccl' needs CUDA; use backend='gloo' on CPU")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices are visible")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")

    # A single process (plain ``python``, or torchrun with one worker but no rendezvous vars)
    # needs no process group: nothing to communicate.
    if len(present) == len(_TORCHRUN_VARS) and not is_distributed():
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timeout,
                                device_id=device if backend == "nccl" else None)
    if is_distributed():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


@contextmanager
def single_process_group(device: torch.device | str) -> Iterator[DistInfo]:
    """A process group of one rank for the ``with`` block, where there is none (no torchrun).

    FSDP2 needs a device mesh, and a mesh a default process group, even on one rank: with it a
    single process shards (trivially) and applies ``MixedPrecisionPolicy`` exactly as ``N`` ranks
    do, so ``mixed_precision=True`` means the same thing in one process as under torchrun.  The
    rendezvous is an in-memory ``HashStore`` (no port, no file); NCCL on a CUDA ``device``, gloo
    on the CPU.  The group is destroyed when the block exits, however it exits.  Under an
    existing group this does nothing and yields :func:`init_distributed`'s description.
    """
    device = torch.device(device)
    if is_distributed():
        yield init_distributed()
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":  # NCCL talks through the current device, as under init_distributed
        device = torch.device("cuda", torch.cuda.current_device() if device.index is None else device.index)
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=DEFAULT_TIMEOUT,
                            device_id=device if backend == "nccl" else None)
    try:
        yield DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    finally:
        dist.destroy_process_group()


def destroy() -> None:
    """Tear the default process group down (after a final barrier); nothing without one."""
    if is_distributed():
        dist.barrier()
        dist.destroy_process_group()
