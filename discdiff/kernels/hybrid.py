"""GIDD's hybrid noise in log-SNR form (von Rütte et al., arXiv 2512.10858, Sec. 2 / Eq. 2)."""

from __future__ import annotations

import torch
from torch import Tensor

from discdiff._checks import check_finite_float, check_mask_id, check_vocab_size
from discdiff.kernels.mixture import UniformMaskMixture
from discdiff.typing import LogSNR


class Hybrid(UniformMaskMixture):
    """``pi_lambda = s u + (1 - s) e_m``, ``s = sigmoid(scale * lambda + shift)``,
    ``pi'_lambda = scale s (1 - s) (u - e_m)``.

    ``shift`` moves the balance: large positive is nearly uniform, large negative nearly masked;
    ``shift in {-2, 0, 2}`` are the papers' mixes.  With ``scale > 0`` uniform noise dominates
    near the data end.  ``scale`` must lie in ``[0, 1]``: above 1 the transition
    ``q_{t|s}`` has negative entries and is not a Markov kernel (docs/math.md,
    "Transition").
    """

    def __init__(self, vocab_size: int, mask_id: int, shift: float = 0.0, scale: float = 1.0) -> None:
        self.vocab_size = check_vocab_size(vocab_size)
        self.mask_id = check_mask_id(mask_id, self.vocab_size)
        self.shift = check_finite_float("shift", shift)
        self.scale = check_finite_float("scale", scale, lo=0.0, hi=1.0)

    def __repr__(self) -> str:
        return f"Hybrid(vocab_size={self.vocab_size}, mask_id={self.mask_id}, shift={self.shift}, scale={self.scale})"

    def share_logit(self, lam: LogSNR) -> Tensor:
        if self.scale == 0.0:  # a fixed mixture; 0 * inf must not appear at the endpoints
            return torch.full_like(lam, self.shift)
        return self.scale * lam + self.shift

    def dshare_logit(self, lam: LogSNR) -> Tensor:
        return torch.full_like(lam, self.scale)
