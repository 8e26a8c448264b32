"""Distributed training: process groups, FSDP2 + activation checkpointing + compile applied to a
plain model, and DCP checkpoints with a consolidated safetensors export.

* :func:`init_distributed` / :func:`destroy` (:mod:`.setup`): the torchrun environment -> a
  :class:`DistInfo` (a single process works without a process group; :func:`single_process_group`
  gives it a one-rank group where FSDP2's mixed precision needs a mesh).
* :func:`parallelize` (:mod:`.parallelize`): AC, then per-block compile, then ``fully_shard``
  per block and on the root; parameter names stay the plain model's.
* :mod:`.checkpoint`: ``save`` / ``load`` / ``latest`` / ``keep_last`` (sharded, atomic,
  resumable) and ``export_safetensors`` (the Hugging Face layout).
"""

from sumi.distributed import checkpoint
from sumi.distributed.checkpoint import export_safetensors, keep_last, latest
from sumi.distributed.parallelism import apply_activation_checkpointing, default_mesh, parallelize
from sumi.distributed.setup import (DistInfo, barrier, broadcast_object, destroy, gather_objects, init_distributed,
                                   is_distributed, on_rank0, single_process_group)

__all__ = ["DistInfo", "init_distributed", "single_process_group", "destroy", "barrier", "is_distributed",
           "broadcast_object", "gather_objects", "on_rank0", "parallelize",
           "apply_activation_checkpointing", "default_mesh", "checkpoint", "latest", "keep_last",
           "export_safetensors"]
