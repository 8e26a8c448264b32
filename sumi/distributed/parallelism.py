"""Parallelism as a function applied to a plain :class:`~sumi.model.Sumi` (the torchtitan recipe).

In this order, per transformer block: activation checkpointing, then ``torch.compile``, then
FSDP2 ``fully_shard``; finally ``fully_shard`` on the root (embeddings, final norm, head).  The
order matters: checkpointing must sit *inside* the compiled region so the compiler sees the
recomputation, and each block must be its own FSDP unit so its parameters are all-gathered just
before it runs and freed just after.

Call it on a model built on the meta device, then allocate and initialize (under torchrun; a
single process wraps this in ``with single_process_group(device):`` for ``mixed_precision``)::

    model = Sumi.on_meta(config)
    parallelize(model, mixed_precision=True, activation_checkpointing=True, compile_blocks=True)
    model.to_empty(device=info.device)
    model.init_weights(generator)

Nothing is wrapped or renamed: checkpointing replaces a block's ``forward`` in place and
compilation uses ``Module.compile`` (no ``_checkpoint_wrapped_module.`` / ``_orig_mod.``
prefixes), so parameter names and state-dict keys stay the Hugging Face keys of the plain model.
"""

from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.utils.checkpoint import checkpoint

__all__ = ["parallelize", "apply_activation_checkpointing", "default_mesh"]


def _checkpointed(forward, *args, **kwargs):
    # Non-reentrant checkpointing: works with keyword arguments, with inputs that need no grad,
    # and under torch.compile and FSDP2 (whose hooks run around the block, outside this call).
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


def apply_activation_checkpointing(block: nn.Module) -> None:
    """Recompute ``block``'s activations in the backward pass instead of storing them.

    Only the block's input is kept; memory per block drops from all intermediate activations to
    one ``[batch, seq, hidden]`` tensor, for one extra forward of compute."""
    if getattr(block, "_sumi_checkpointed", False):
        return
    block.forward = functools.partial(_checkpointed, block.forward)
    block._sumi_checkpointed = True


def default_mesh() -> DeviceMesh | None:
    """A 1-D data-parallel mesh over every rank of the default process group (``None`` without one).
    The device type follows the backend: CUDA under NCCL, CPU under gloo."""
    if not (dist.is_available() and dist.is_initialized()):
        return None
    device_type = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return init_device_mesh(device_type, (dist.get_world_size(),), mesh_dim_names=("dp",))


def parallelize(model: nn.Module, *, mesh: DeviceMesh | None = None, mixed_precision: bool,
                activation_checkpointing: bool, compile_blocks: bool,
                reshard_after_forward: bool = True) -> nn.Module:
    """Apply activation checkpointing, per-block compilation and FSDP2 sharding to ``model`` in place.

    ``model`` must expose its blocks as ``model.model.layers`` (an ``nn.ModuleList``), as
    :class:`~sumi.model.Sumi` does.  ``mesh``: the data-parallel mesh (default: every rank of the
    default process group).  Without a process group (a single process) no sharding is applied:
    the model comes back with only checkpointing/compilation.

    ``mixed_precision``: parameters are all-gathered and computed in bfloat16 while the sharded
    master weights, the gradient reduce-scatter and the optimizer stay in float32.  It needs the
    mesh: without a process group it is a ``ValueError`` (never silently float32); one process
    gets a one-rank group from :func:`sumi.distributed.single_process_group`.
    ``reshard_after_forward``: free each block's gathered parameters after its forward (ZeRO-3;
    less memory) or keep them until the backward (ZeRO-2; one all-gather fewer per block).  The
    root is never resharded after forward: the backward needs the head and embeddings first.

    Gradients are *summed* over ranks: each rank's loss must already be divided by the global
    number of tokens (so a step on N ranks equals a step on the whole batch in one process).

    Returns ``model`` (the same object; FSDP2 changes the class of each wrapped module in place).
    """
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"parallelize expects a model with .model.layers (an nn.ModuleList), "
                        f"got {type(model).__name__}")
    if mesh is None:
        mesh = default_mesh()
    if mesh is None and mixed_precision:  # checked before anything is applied: no half-parallelized model
        raise ValueError("parallelize: mixed_precision=True needs a device mesh (FSDP2 applies the bf16 policy) "
                         "and there is no process group; call it inside sumi.distributed.single_process_group("
                         "device), as `sumi train` does in one process, or under torchrun")
    for block in layers:
        if activation_checkpointing:
            apply_activation_checkpointing(block)
        if compile_blocks:
            # Blocks are identical in structure, so one compiled graph serves all of them.
            block.compile(fullgraph=True)

    if mesh is None:
        return model
    policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
              if mixed_precision else MixedPrecisionPolicy())
    for block in layers:
        fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    # Sum gradients over ranks instead of FSDP's default mean: each rank normalizes its loss by
    # the *global* token count, so the sum is the gradient of the global-batch loss even when
    # ranks hold different numbers of tokens (a mean would only be right for equal counts).
    # A plain SUM collective (no NCCL PreMulSum, which gloo lacks); dividing by 1 is skipped.
    for module in (*layers, model):
        module.set_gradient_divide_factor(1.0)
        module.set_force_sum_reduction_for_comms(True)
    return model
