"""Noise drawn from any fixed distribution over the vocabulary (for example a unigram prior)."""

from __future__ import annotations

import torch
from torch import Tensor

from discdiff._checks import check_mask_id, check_vocab_size
from discdiff.kernels.base import Kernel, _check_slice
from discdiff.typing import LogSNR, Probs, Tokens


class Prior(Kernel):
    """``pi_lambda = p`` for a fixed ``p`` (independent of ``lambda``, so ``pi' = 0`` and the
    ELBO weight is ``w = p_z / (p_z + e^lambda [z = x])``).

    ``Prior(torch.full((V,), 1 / V))`` is :class:`Uniform`; ``Prior(e_m, mask_id=m)`` is
    :class:`Masked`.  Give ``mask_id`` when one state is an absorbing mask that clean data never
    takes (the denoiser's mask logit is then ignored).  ``probs`` is stored in float64.
    """

    def __init__(self, probs: Tensor, mask_id: int | None = None) -> None:
        if not isinstance(probs, Tensor) or not probs.is_floating_point() or probs.dim() != 1:
            raise TypeError("probs must be a 1-D floating-point tensor over the vocabulary")
        self.vocab_size = check_vocab_size(probs.shape[0])
        probs = probs.detach().to(torch.float64)
        if not bool(torch.isfinite(probs).all()) or bool((probs < 0).any()):
            raise ValueError("probs must be finite and non-negative")
        if abs(float(probs.sum()) - 1.0) > 1e-6:
            raise ValueError(f"probs must sum to 1, got {float(probs.sum())}")
        self.probs = probs / probs.sum()
        self.mask_id = None if mask_id is None else check_mask_id(mask_id, self.vocab_size)

    def __repr__(self) -> str:
        return f"Prior(vocab_size={self.vocab_size}, mask_id={self.mask_id})"

    def pi(self, lam: LogSNR) -> Probs:
        return self.probs.to(device=lam.device, dtype=lam.dtype).expand(*lam.shape, self.vocab_size)

    def dpi(self, lam: LogSNR) -> Tensor:
        return torch.zeros((), dtype=lam.dtype, device=lam.device).expand(*lam.shape, self.vocab_size)

    def pi_slice(self, lam: LogSNR, start: int, stop: int) -> Tensor:
        """``p[start:stop]`` as a ``[stop - start]`` vector (it does not depend on ``lambda``)."""
        _check_slice(start, stop, self.vocab_size)
        return self.probs[start:stop].to(device=lam.device, dtype=lam.dtype)

    def pi_at(self, lam: LogSNR, idx: Tokens) -> Tensor:
        values = self.probs.to(device=idx.device, dtype=lam.dtype)[idx.long()]
        return torch.broadcast_to(values, torch.broadcast_shapes(values.shape, lam.shape))

    def dpi_at(self, lam: LogSNR, idx: Tokens) -> Tensor:
        return torch.zeros(torch.broadcast_shapes(lam.shape, idx.shape), dtype=lam.dtype, device=lam.device)

    def sample_pi(self, lam: LogSNR, generator: torch.Generator | None = None) -> Tokens:
        n = lam.numel()
        if n == 0:
            return torch.zeros(lam.shape, dtype=torch.long, device=lam.device)
        draws = torch.multinomial(self.probs.to(lam.device), n, replacement=True, generator=generator)
        return draws.reshape(lam.shape)
