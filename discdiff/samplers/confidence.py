"""Confidence-based unmasking for masked diffusion (LLaDA, Nie et al. 2025, arXiv 2502.09992,
Sec. 2.4 / App. B: "low-confidence remasking")."""

from __future__ import annotations

import math

import torch

from discdiff._checks import check_int
from discdiff.kernels.base import Kernel
from discdiff.samplers.base import KernelStepRule, StepOutput
from discdiff.samplers.categorical import Denoised


class Confidence(KernelStepRule):
    """Predict every masked position, keep the ``k`` most confident predictions, leave the
    rest masked.

    ``k`` per sequence is ``tokens_per_step`` when given, else the expected number of masked
    tokens a masked-diffusion step from ``lambda_t`` to ``lambda_s`` unmasks,
    ``round(n_masked (alpha_s - alpha_t) / (1 - alpha_t))`` (MDLM) from the sequence's log-SNR
    (its first position's, if given per token), so a grid ending at ``alpha = 1`` (``lambda =
    +inf``) unmasks everything; Sumi's grids end at ``alpha = 1 - 1e-4`` and may leave about
    ``1e-4`` of positions masked.  Confidence is ``x_hat`` of the predicted token
    (untempered).  ``by_confidence=False`` picks the ``k`` positions at random instead (LLaDA's
    "random remasking").  Needs a kernel with a mask state; clean tokens are never changed.
    """

    def __init__(self, kernel: Kernel, tokens_per_step: int | None = None, *, by_confidence: bool = True,
                 top_k: int | None = None, top_p: float | None = None, min_p: float | None = None) -> None:
        if kernel.mask_id is None:
            raise ValueError(f"Confidence needs a kernel with a mask state, got {kernel!r}")
        if tokens_per_step is not None:
            check_int("tokens_per_step", tokens_per_step, lo=1)
        super().__init__(kernel, top_k=top_k, top_p=top_p, min_p=min_p)
        self.tokens_per_step = tokens_per_step
        self.by_confidence = by_confidence

    def _repr_extra(self) -> str:
        return f"tokens_per_step={self.tokens_per_step}, by_confidence={self.by_confidence}, "

    def _step(self, logits, z_t, lam_t, lam_s, frozen, temperature, generator) -> StepOutput:
        masked = (z_t == self.kernel.mask_id) & ~frozen
        n_masked = masked.sum(-1, keepdim=True)
        if self.tokens_per_step is not None:
            k = torch.clamp(n_masked, max=self.tokens_per_step)
        else:
            a_t, a_s = torch.sigmoid(lam_t[..., :1]), torch.sigmoid(lam_s[..., :1])  # per sequence
            share = torch.where(a_t < 1, (a_s - a_t) / (1 - a_t).clamp_min(1e-300), torch.ones_like(a_t))
            k = torch.round(n_masked * share.clamp(0, 1)).long()
        x0 = Denoised(logits, self.kernel.mask_id, temperature, self.filters)
        if self.by_confidence:  # every masked position needs its candidate to be ranked
            same = temperature == 1.0 and not self.filters.active
            plain = x0 if same else Denoised(logits, self.kernel.mask_id, 1.0)
            drawn = plain.argmax if temperature == 0.0 else x0.sample(generator, where=masked)
            candidate = torch.where(masked, drawn, z_t)
            score = plain.prob_at(candidate).masked_fill(~masked, -math.inf)
            selected = masked & (_rank(score) < k)
        else:  # the positions do not depend on the candidates: draw at the selected ones only
            score = torch.rand(z_t.shape, generator=generator, device=z_t.device, dtype=torch.float64)
            selected = masked & (_rank(score.masked_fill(~masked, -math.inf)) < k)
            candidate = x0.sample(generator, where=selected)
        return StepOutput(tokens=torch.where(selected, candidate, z_t), selected=selected)


def _rank(score: torch.Tensor) -> torch.Tensor:
    """Each position's place in its sequence by descending score (0 = highest)."""
    return score.argsort(-1, descending=True).argsort(-1)
