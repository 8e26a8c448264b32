"""Greedy decoding: the argmax of ``x_hat`` at every unfrozen position, every step."""

from __future__ import annotations

import torch

from discdiff.samplers.base import StepOutput, StepRule
from discdiff.samplers.categorical import Denoised


class Greedy(StepRule):
    """``z_s = argmax_j x_hat_j`` everywhere (deterministic; ignores ``temperature`` and the
    log-SNRs).  ``mask_id``: a state the denoiser must never output (the kernel's mask)."""

    def __init__(self, mask_id: int | None = None) -> None:
        self.mask_id = mask_id

    def __repr__(self) -> str:
        return f"Greedy(mask_id={self.mask_id})"

    def _step(self, logits, z_t, lam_t, lam_s, frozen, temperature, generator) -> StepOutput:
        return StepOutput(tokens=Denoised(logits, self.mask_id, 0.0).argmax, selected=torch.ones_like(frozen))
