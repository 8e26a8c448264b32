"""Pure uniform noise over all ``V`` states (UDLM, Duo, Sumi)."""

from __future__ import annotations

import torch
from torch import Tensor

from discdiff._checks import check_vocab_size
from discdiff.kernels.mixture import UniformMaskMixture
from discdiff.typing import LogSNR, Probs


class Uniform(UniformMaskMixture):
    """``pi = u``, uniform over all ``V`` states (``N = V``, no mask state).

    Every id, special tokens included, can be drawn as noise (Sumi, arXiv 2606.19005).  The
    ELBO weight is ``1`` for ``z != x`` and ``1 / (1 + N e^lambda)`` for ``z = x``
    (docs/math.md, "Closed forms of the weight").
    """

    mask_id = None

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = check_vocab_size(vocab_size)

    def __repr__(self) -> str:
        return f"Uniform(vocab_size={self.vocab_size})"

    def share_logit(self, lam: LogSNR) -> Tensor:
        return torch.full_like(lam, float("inf"))

    def dshare_logit(self, lam: LogSNR) -> Tensor:
        return torch.zeros_like(lam)

    def pi(self, lam: LogSNR) -> Probs:
        u = torch.full((self.vocab_size,), 1.0 / self.vocab_size, dtype=lam.dtype, device=lam.device)
        return u.expand(*lam.shape, self.vocab_size)

    def dpi(self, lam: LogSNR) -> Tensor:
        return torch.zeros((), dtype=lam.dtype, device=lam.device).expand(*lam.shape, self.vocab_size)
