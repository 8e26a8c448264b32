"""Greedy decoding: the argmax of ``x_hat`` at every unfrozen position, every step."""

from __future__ import annotations

import warnings

import torch

from discdiff._checks import check_int
from discdiff.kernels.base import Kernel
from discdiff.samplers.base import StepOutput, StepRule
from discdiff.samplers.categorical import Denoised


class Greedy(StepRule):
    """``z_s = argmax_j x_hat_j`` everywhere (deterministic; ignores ``temperature`` and the
    log-SNRs; docs/math.md, "Greedy").

    ``Greedy(kernel)``, like every other rule: the kernel's mask state is excluded from the
    argmax and the logits' vocabulary is checked against the kernel's.  ``Greedy()`` takes the
    plain argmax over any vocabulary.  ``Greedy(mask_id)`` with an int (or ``mask_id=``) is
    deprecated: pass the kernel.
    """

    def __init__(self, kernel: Kernel | int | None = None, *, mask_id: int | None = None) -> None:
        if isinstance(kernel, int) and not isinstance(kernel, bool):
            kernel, mask_id = None, kernel if mask_id is None else mask_id
            deprecated = True
        else:
            deprecated = mask_id is not None
        if deprecated:
            warnings.warn("Greedy(mask_id) is deprecated: pass the kernel, Greedy(kernel), whose mask state "
                          "is excluded", DeprecationWarning, stacklevel=2)
        if kernel is not None and not isinstance(kernel, Kernel):
            raise TypeError(f"Greedy takes a discdiff Kernel (or nothing), got {kernel!r}")
        if kernel is not None and mask_id is not None:
            raise TypeError("give Greedy a kernel or (deprecated) a mask_id, not both")
        self.kernel = kernel
        if kernel is not None:
            self.vocab_size, self.mask_id = kernel.vocab_size, kernel.mask_id
        elif mask_id is not None:
            self.mask_id = check_int("mask_id", mask_id, lo=0)

    def __repr__(self) -> str:
        if self.kernel is not None:
            return f"Greedy({self.kernel!r})"
        return "Greedy()" if self.mask_id is None else f"Greedy(mask_id={self.mask_id})"

    def _step(self, logits, z_t, lam_t, lam_s, frozen, temperature, generator) -> StepOutput:
        return StepOutput(tokens=Denoised(logits, self.mask_id, 0.0).argmax, selected=torch.ones_like(frozen))
