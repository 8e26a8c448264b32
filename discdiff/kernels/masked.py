"""Absorbing (masked) noise: every noised token becomes the mask state (D3PM absorbing, MDLM)."""

from __future__ import annotations

import torch
from torch import Tensor

from discdiff._checks import check_mask_id, check_vocab_size
from discdiff.kernels.mixture import UniformMaskMixture
from discdiff.typing import LogSNR, Probs


class Masked(UniformMaskMixture):
    """``pi = e_m``.  The ELBO weight is ``1`` on masked tokens and ``0`` on clean ones, and the
    GIDD loss reduces to MDLM (``alpha * CE`` per unit log-SNR on masked tokens;
    docs/math.md, "Reductions to known objectives")."""

    def __init__(self, vocab_size: int, mask_id: int) -> None:
        self.vocab_size = check_vocab_size(vocab_size)
        self.mask_id = check_mask_id(mask_id, self.vocab_size)

    def __repr__(self) -> str:
        return f"Masked(vocab_size={self.vocab_size}, mask_id={self.mask_id})"

    def share_logit(self, lam: LogSNR) -> Tensor:
        return torch.full_like(lam, float("-inf"))

    def dshare_logit(self, lam: LogSNR) -> Tensor:
        return torch.zeros_like(lam)

    def pi(self, lam: LogSNR) -> Probs:
        e_m = torch.zeros(self.vocab_size, dtype=lam.dtype, device=lam.device)
        e_m[self.mask_id] = 1.0
        return e_m.expand(*lam.shape, self.vocab_size)

    def dpi(self, lam: LogSNR) -> Tensor:
        return torch.zeros((), dtype=lam.dtype, device=lam.device).expand(*lam.shape, self.vocab_size)

    def noise_log1p_sum(self, lam: LogSNR, log_x0: Tensor) -> Tensor:
        """``T = 0``: no noise mass sits on a clean state (and no ``[..., V]`` work is needed)."""
        return torch.zeros(log_x0.shape[:-1], dtype=log_x0.dtype, device=log_x0.device)

    def sample_pi(self, lam: LogSNR, generator: torch.Generator | None = None):
        return torch.full(lam.shape, self.mask_id, dtype=torch.long, device=lam.device)
