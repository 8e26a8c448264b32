"""Writing whole-tensor values into parameters that may be FSDP2 shards (DTensors).

Initialization and weight loading produce the full tensor of one parameter; each rank keeps its
own slice (no communication: every rank holds the same full tensor).  A plain tensor is copied.
"""

from __future__ import annotations

import sys

import torch
from torch import Tensor


def _is_dtensor(t: Tensor) -> bool:
    # torch.distributed.tensor costs ~0.5 s to import; a DTensor can only exist once it is loaded
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(t, module.DTensor)


@torch.no_grad()
def copy_full_(param: Tensor, full: Tensor) -> None:
    """``param <- full`` in place, where ``full`` has the parameter's global shape."""
    if tuple(full.shape) != tuple(param.shape):
        raise ValueError(f"expected a tensor of shape {list(param.shape)}, got {list(full.shape)}")
    if not _is_dtensor(param):
        param.copy_(full)
        return
    from torch.distributed.tensor import distribute_tensor

    local = param.to_local()
    full = full.to(device=local.device, dtype=local.dtype)
    local.copy_(distribute_tensor(full, param.device_mesh, param.placements, src_data_rank=None).to_local())


@torch.no_grad()
def normal_(param: Tensor, std: float, generator: torch.Generator | None) -> None:
    """Fill ``param`` with Normal(0, std^2) draws from ``generator``, in place.

    A DTensor (an FSDP2 shard) is drawn whole and each rank keeps its slice: every rank consumes
    the generator identically, so the model equals the one a single process builds from the same
    seed, whatever the world size (DTensor's own random ops ignore ``generator``).  The transient
    full tensor is one parameter (at most the embedding: 1.6 GB at 7B in fp32)."""
    if not _is_dtensor(param):
        param.normal_(0.0, std, generator=generator)
        return
    local = param.to_local()
    copy_full_(param, torch.empty(param.shape, dtype=local.dtype, device=local.device)
               .normal_(0.0, std, generator=generator))
