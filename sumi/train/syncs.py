"""Counting host synchronizations: the places where Python waits for a value the device computes.

A training step on an accelerator should queue its work and return: every read of a device
value by the host (a loss printed, a check that ids are in range, ``if tensor.any():``) stalls
the host until the device has caught up, and the device idles while the host then prepares
the next kernels.  On CUDA ``torch.cuda.set_sync_debug_mode("error")`` makes every such wait an
error; on the CPU there is no device to wait for, but the same reads are in the code, and
:func:`count_host_syncs` counts them on any device, so a CPU test catches a sync a GPU run
would pay for.

Counted, on every device (the CPU included):

- reads of a value: ``item()``, ``bool(t)``, ``float(t)``, ``int(t)``, ``t.tolist()``,
  ``t.numpy()`` (and what calls them: ``if t:``, f-strings of tensors, ``np.asarray(t)``);
- operations whose result's size depends on values, which an accelerator must report back
  before the host can continue: ``nonzero``, ``unique``, ``masked_select``, ``repeat_interleave``
  without ``output_size``, indexing with a boolean mask, ``torch.equal``;
- copies from an accelerator to the CPU.
"""

from __future__ import annotations

import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["HostSyncs", "count_host_syncs", "optimizer_step_counters"]

# aten operators (overload packets) that read values back to the host
_READS = {"_local_scalar_dense", "nonzero", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim",
          "masked_select", "equal", "is_nonzero"}
_INDEXING = {"index", "index_put", "index_put_", "_index_put_impl_"}  # syncs with boolean-mask indices
_PYTHON_READS = ("tolist", "numpy")  # read the data directly, below the dispatcher
_ACTIVE: list[HostSyncs] = []
_LOCAL = threading.local()  # inside a Python-level read: its own dispatches are not counted again
_PATCHED: dict[str, object] = {}


class HostSyncs(TorchDispatchMode):
    """The syncs seen while active (use :func:`count_host_syncs`): ``count`` in all, and
    ``sites``, a :class:`collections.Counter` of ``"what at file:line in function"`` (the
    innermost frame outside torch, so the line of the caller's code that asked for the value)."""

    def __init__(self, ignore: Callable[[Tensor], bool] | None = None) -> None:
        super().__init__()
        self.sites: Counter[str] = Counter()
        self._ignore = ignore

    @property
    def count(self) -> int:
        return sum(self.sites.values())

    def record(self, what: str, tensor: Tensor | None) -> None:
        """Note one sync of kind ``what`` (reading ``tensor``, unless ``ignore`` excepts it)."""
        if self._ignore is not None and isinstance(tensor, Tensor) and self._ignore(tensor):
            return
        self.sites[f"{what} at {_caller()}"] += 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not getattr(_LOCAL, "reading", False):
            what = _sync_of(func, args, kwargs)
            if what is not None:
                self.record(what, args[0] if args and isinstance(args[0], Tensor) else None)
        return func(*args, **kwargs)


def _sync_of(func, args, kwargs) -> str | None:
    """The name of the sync ``func(*args, **kwargs)`` performs, or None."""
    name = func.overloadpacket.__name__
    if name in _READS:
        return name
    if name == "repeat_interleave" and isinstance(args[0], Tensor) and kwargs.get("output_size") is None \
            and (len(args) < 2 or isinstance(args[1], Tensor)):
        return name
    if name in _INDEXING and len(args) > 1:
        indices = args[1] if isinstance(args[1], (list, tuple)) else ()
        if any(isinstance(i, Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices):
            return f"{name} with a boolean mask"
    if name in ("_to_copy", "copy_"):
        src = args[0] if name == "_to_copy" else args[1]
        dst = kwargs.get("device") if name == "_to_copy" else args[0].device
        if isinstance(src, Tensor) and src.device.type != "cpu" and dst is not None \
                and torch.device(dst).type == "cpu":
            return "copy to the CPU"
    return None


def _caller() -> str:
    """``file:line in function`` of the innermost frame that is not torch's or this module's."""
    for frame in reversed(traceback.extract_stack()):
        path = frame.filename.replace("\\", "/")
        if "/torch/" not in path and not path.endswith("/sumi/train/syncs.py"):
            return f"{path}:{frame.lineno} in {frame.name}"
    return "?"


def _python_read(name: str, original):
    def read(self, *args, **kwargs):
        if getattr(_LOCAL, "reading", False):
            return original(self, *args, **kwargs)
        for counter in _ACTIVE:
            counter.record(f"Tensor.{name}", self)
        _LOCAL.reading = True
        try:
            return original(self, *args, **kwargs)
        finally:
            _LOCAL.reading = False

    read.__name__ = name
    return read


def optimizer_step_counters(optimizer: torch.optim.Optimizer) -> Callable[[Tensor], bool]:
    """A predicate for ``count_host_syncs(ignore=...)``: true for ``optimizer``'s per-parameter
    ``step`` counters (looked up when asked, so it also knows the ones made by the first step).
    AdamW keeps them on the CPU whatever the parameters' device (unless ``capturable`` or
    ``fused``) and reads them on the host every step: bookkeeping, never a wait for the device."""
    def is_counter(tensor: Tensor) -> bool:
        return any(state.get("step") is tensor for state in optimizer.state.values())

    return is_counter


@contextmanager
def count_host_syncs(ignore: Callable[[Tensor], bool] | None = None) -> Iterator[HostSyncs]:
    """Count the host syncs of the code run inside the ``with`` block (the module docstring
    lists what counts)::

        with count_host_syncs() as syncs:
            train_step(...)
        assert syncs.count == 0, syncs.sites

    ``ignore``: a predicate, true for the tensors whose reads are host bookkeeping rather than
    syncs (:func:`optimizer_step_counters`: AdamW's step counters, CPU tensors on every device).
    Slows the code down (every operator passes through Python): for counting, not for timing.
    """
    counter = HostSyncs(ignore)
    if not _ACTIVE:
        for name in _PYTHON_READS:
            _PATCHED[name] = torch.Tensor.__dict__.get(name)
            setattr(torch.Tensor, name, _python_read(name, getattr(torch.Tensor, name)))
    _ACTIVE.append(counter)
    try:
        with counter:
            yield counter
    finally:
        _ACTIVE.remove(counter)
        if not _ACTIVE:
            for name, original in _PATCHED.items():
                if original is None:
                    delattr(torch.Tensor, name)
                else:
                    setattr(torch.Tensor, name, original)
            _PATCHED.clear()
