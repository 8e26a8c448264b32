"""Adaptive (confidence-ordered) sampling with a generalized confidence
(von Rütte et al., arXiv 2512.10858, App. A.1; Sumi's recommended sampler for code and math)."""

from __future__ import annotations

import math

import torch

from discdiff.kernels.base import Kernel
from discdiff.samplers.base import KernelStepRule, StepOutput
from discdiff.samplers.categorical import Denoised


class Adaptive(KernelStepRule):
    """Each step commits the ``tokens_per_step`` unfrozen positions with the largest
    ``pi_prior(z) (max_j x_hat_j - x_hat_z)`` on the untempered ``x_hat`` (``pi_prior`` the
    kernel's prior ``pi_{-inf}``), writing the argmax (temperature 0) or a tempered draw.
    Positions may be revisited; positions with confidence 0 are never selected, so fewer than
    ``tokens_per_step`` may change.  With masked noise the confidence is ``max_j x_hat_j`` on masked
    positions and 0 elsewhere (LLaDA's rule); with uniform noise it is how much the model prefers
    its best token over the current one.
    """

    def __init__(self, kernel: Kernel, tokens_per_step: int = 1, *, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None) -> None:
        if isinstance(tokens_per_step, bool) or not isinstance(tokens_per_step, int) or tokens_per_step < 1:
            raise ValueError(f"tokens_per_step must be an int >= 1, got {tokens_per_step!r}")
        super().__init__(kernel, top_k=top_k, top_p=top_p, min_p=min_p)
        self.tokens_per_step = tokens_per_step

    def _repr_extra(self) -> str:
        return f"tokens_per_step={self.tokens_per_step}, "

    def confidence(self, logits, z_t) -> torch.Tensor:
        """``pi_prior(z_t) (max_j x_hat_j - x_hat_{z_t})`` per position, float64, untempered."""
        x0 = Denoised(logits, self.kernel.mask_id, 1.0)
        prior = self.kernel.pi_at(torch.full(z_t.shape, -math.inf, dtype=torch.float64, device=z_t.device), z_t)
        return prior * (x0.max_prob() - x0.prob_at(z_t))

    def _step(self, logits, z_t, lam_t, lam_s, frozen, temperature, generator) -> StepOutput:
        conf = self.confidence(logits, z_t).masked_fill(frozen, -math.inf)
        k = min(self.tokens_per_step, z_t.shape[-1])
        top = conf.topk(k, dim=-1).indices
        # a position with confidence 0 cannot improve (it holds the argmax already, or it is a
        # clean token under masked noise, which is absorbing): never (re)write it
        selected = torch.zeros_like(frozen).scatter(-1, top, True) & (conf > 0)
        new = Denoised(logits, self.kernel.mask_id, temperature, self.filters).sample(generator)
        return StepOutput(tokens=torch.where(selected, new, z_t), selected=selected)
