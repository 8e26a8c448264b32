"""Adaptive (confidence-ordered) sampling with a generalized confidence
(von Rütte et al., arXiv 2512.10858, App. A.1; Sumi's recommended sampler for code and math)."""

from __future__ import annotations

import math

import torch

from discdiff._checks import check_int
from discdiff.kernels.base import Kernel
from discdiff.samplers.base import KernelStepRule, StepOutput
from discdiff.samplers.categorical import Denoised

WEIGHTS = ("prior", "rate")


class Adaptive(KernelStepRule):
    """Each step commits the ``tokens_per_step`` unfrozen positions with the largest generalized
    confidence ``c = w(z_t) (max_j x_hat_j - x_hat_{z_t})`` on the untempered ``x_hat``, writing
    the argmax (temperature 0) or a tempered draw (docs/math.md, "Adaptive").

    ``weight`` chooses ``w``:

    - ``"prior"`` (default; arXiv 2512.10858, App. A.1): ``w = pi_{-inf}(z_t)``, the kernel's
      prior.  With masked noise ``c`` is ``max_j x_hat_j`` on masked positions and 0 elsewhere
      (LLaDA's rule); with uniform noise it is how much the model prefers its best token over the
      current one.  With a prior that is all mask (:class:`~discdiff.kernels.Hybrid` with
      ``scale > 0``, :class:`~discdiff.kernels.GIDD`) every non-mask token has ``w = 0``: a
      position, once unmasked, is never revisited, whatever the model later predicts there.
    - ``"rate"``: ``w = (pi_{lambda_t} - pi'_{lambda_t})(z_t)``, the factor by which the
      reverse-time chain leaves ``z_t`` (its rate per unit log-SNR is
      ``beta_t (pi_t - pi'_t)(z_t) q_t(j | x_hat) / q_t(z_t | x_hat)``; docs/math.md,
      "Tau-leaping"; Campbell et al. 2022).  It is the prior weight at ``lambda_t = -inf`` and
      equals it at every step for kernels whose ``pi`` does not depend on ``lambda``
      (:class:`~discdiff.kernels.Uniform`, as in Sumi; :class:`~discdiff.kernels.Masked`;
      :class:`~discdiff.kernels.Prior`); for hybrid and GIDD noise it gives unmasked tokens a
      positive weight, so they are revisited.

    Positions may be revisited; positions with confidence 0 are never selected, so fewer than
    ``tokens_per_step`` may change.  One pass over the logits gives the confidence; the tempered,
    filtered ``x_hat`` is drawn at the selected positions only.
    """

    def __init__(self, kernel: Kernel, tokens_per_step: int = 1, *, weight: str = "prior",
                 top_k: int | None = None, top_p: float | None = None, min_p: float | None = None) -> None:
        check_int("tokens_per_step", tokens_per_step, lo=1)
        if weight not in WEIGHTS:
            raise ValueError(f"weight must be one of {WEIGHTS}, got {weight!r}")
        super().__init__(kernel, top_k=top_k, top_p=top_p, min_p=min_p)
        self.tokens_per_step = tokens_per_step
        self.weight = weight

    def _repr_extra(self) -> str:
        extra = "" if self.weight == "prior" else f"weight={self.weight!r}, "
        return f"tokens_per_step={self.tokens_per_step}, {extra}"

    def confidence(self, logits, z_t, lam_t=None) -> torch.Tensor:
        """``w(z_t) (max_j x_hat_j - x_hat_{z_t})`` per position, float64, untempered; ``lam_t``
        (the current log-SNR, broadcast to ``z_t``) is needed for ``weight="rate"`` only."""
        return self._confidence(Denoised(logits, self.kernel.mask_id, 1.0), z_t, lam_t)

    def _confidence(self, plain: Denoised, z_t, lam_t) -> torch.Tensor:
        if self.weight == "prior":
            w = self.kernel.pi_at(torch.full(z_t.shape, -math.inf, dtype=torch.float64, device=z_t.device), z_t)
        else:
            if lam_t is None:
                raise ValueError('weight="rate" needs lam_t, the log-SNR of z_t')
            lam_t = torch.as_tensor(lam_t, dtype=torch.float64, device=z_t.device)
            w = self.kernel.pi_at(lam_t, z_t) - self.kernel.dpi_at(lam_t, z_t)
        return w.to(torch.float64) * (plain.max_prob() - plain.prob_at(z_t))

    def _step(self, logits, z_t, lam_t, lam_s, frozen, temperature, generator) -> StepOutput:
        plain = Denoised(logits, self.kernel.mask_id, 1.0)  # the confidence is untempered, unfiltered
        conf = self._confidence(plain, z_t, lam_t).masked_fill(frozen, -math.inf)
        k = min(self.tokens_per_step, z_t.shape[-1])
        top = conf.topk(k, dim=-1).indices
        # a position with confidence 0 cannot improve (it holds the argmax already, or its token
        # has weight 0: a clean token under masked noise, which is absorbing): never (re)write it
        selected = torch.zeros_like(frozen).scatter(-1, top, True) & (conf > 0)
        if temperature == 0.0:
            new = plain.argmax
        else:  # drawn at the selected positions only
            same = temperature == 1.0 and not self.filters.active
            x0 = plain if same else Denoised(logits, self.kernel.mask_id, temperature, self.filters)
            new = x0.sample(generator, where=selected)
        return StepOutput(tokens=torch.where(selected, new, z_t), selected=selected)
