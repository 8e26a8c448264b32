"""Kernels whose mixing distribution mixes uniform noise and the mask state.

``pi_lambda = s u + (1 - s) e_m`` with ``s = sigmoid(l(lambda))`` (GIDD; docs/math.md, "The
families"), where ``u`` is uniform over the ``N`` non-mask states (``N = V - 1`` with a mask, ``N = V`` without).
Uniform (``s = 1``), masked (``s = 0``), GIDD's hybrid (``l = a lambda + b``) and GIDD's time
form all belong here.  A family gives only the share logit ``l(lambda)`` and its derivative;
nothing here builds a ``[..., V]`` tensor except :meth:`pi` and :meth:`dpi` themselves.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from discdiff.kernels.base import Kernel, _check_slice
from discdiff.typing import LogSNR, Probs, Tokens


class UniformMaskMixture(Kernel):
    """``pi_lambda = sigmoid(l) u + sigmoid(-l) e_m``; ``pi'_lambda = l' s (1 - s) (u - e_m)``."""

    @abstractmethod
    def share_logit(self, lam: LogSNR) -> Tensor:
        """``l(lambda) = logit(s)``: log-odds of uniform over mask noise (``+inf``: all uniform)."""

    @abstractmethod
    def dshare_logit(self, lam: LogSNR) -> Tensor:
        """``d l / d lambda``."""

    @property
    def num_noise_states(self) -> int:
        """``N``: the states uniform noise can land on (every state but the mask)."""
        return self.vocab_size - (self.mask_id is not None)

    def uniform_share(self, lam: LogSNR) -> Tensor:
        """``s(lambda)``: the share of noise that is uniform (the rest is the mask state)."""
        return torch.sigmoid(self.share_logit(lam))

    def _shares(self, lam: LogSNR) -> tuple[Tensor, Tensor, Tensor]:
        """``s``, ``1 - s`` and ``ds/dlambda``; ``1 - s`` as ``sigmoid(-l)``, since ``1 - sigmoid(l)``
        rounds to 0 for ``l`` above ~17 (float32) or ~37 (float64) while the mask share is not 0."""
        logit = self.share_logit(lam)
        s, not_s = torch.sigmoid(logit), torch.sigmoid(-logit)
        return s, not_s, self.dshare_logit(lam) * s * not_s

    def _basis(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """``u`` and ``e_m`` as ``[V]`` vectors (``e_m`` is zero without a mask)."""
        u = torch.full((self.vocab_size,), 1.0 / self.num_noise_states, dtype=like.dtype, device=like.device)
        e_m = torch.zeros_like(u)
        if self.mask_id is not None:
            u[self.mask_id] = 0.0
            e_m[self.mask_id] = 1.0
        return u, e_m

    def pi(self, lam: LogSNR) -> Probs:
        u, e_m = self._basis(lam)
        s, not_s, _ = self._shares(lam)
        return s.unsqueeze(-1) * u + not_s.unsqueeze(-1) * e_m

    def dpi(self, lam: LogSNR) -> Tensor:
        u, e_m = self._basis(lam)
        return self._shares(lam)[2].unsqueeze(-1) * (u - e_m)

    def pi_slice(self, lam: LogSNR, start: int, stop: int) -> Tensor:
        """``s / N`` as ``[*lam.shape, 1]`` on a slice without the mask state; a
        ``[*lam.shape, stop - start]`` tensor (``1 - s`` at the mask) on the slice that holds it."""
        _check_slice(start, stop, self.vocab_size)
        s, not_s, _ = self._shares(lam)
        on_uniform = (s / self.num_noise_states).unsqueeze(-1)
        m = self.mask_id
        if m is None or not start <= m < stop:
            return on_uniform
        out = on_uniform.expand(*lam.shape, stop - start).clone()
        out[..., m - start] = not_s
        return out

    def pi_at(self, lam: LogSNR, idx: Tokens) -> Tensor:
        s, not_s, _ = self._shares(lam)
        return self._at(idx, s / self.num_noise_states, not_s)

    def dpi_at(self, lam: LogSNR, idx: Tokens) -> Tensor:
        ds = self._shares(lam)[2]
        return self._at(idx, ds / self.num_noise_states, -ds)

    def _at(self, idx: Tokens, on_uniform_state: Tensor, on_mask: Tensor) -> Tensor:
        """Per-element value: ``on_mask`` where ``idx`` is the mask id, else ``on_uniform_state``."""
        if self.mask_id is None:
            return torch.broadcast_to(on_uniform_state, torch.broadcast_shapes(on_uniform_state.shape, idx.shape))
        return torch.where(idx == self.mask_id, on_mask, on_uniform_state)

    def noise_log1p_sum(self, lam: LogSNR, log_x0: Tensor) -> Tensor:
        """``T = c_u sum_{j != m} log1p(alpha x_hat_j / c_u)``, ``c_u = sigmoid(-lambda) s / N``
        (the mask term vanishes because ``x_hat_m = 0``; docs/math.md, "Memory-light form of the KL")."""
        lam = lam.to(log_x0.dtype)
        log_cu = F.logsigmoid(-lam) + F.logsigmoid(self.share_logit(lam)) - math.log(self.num_noise_states)
        positive = torch.isfinite(log_cu)  # pure masked noise: c_u = 0, and 0 * inf must not appear
        log_cu = torch.where(positive, log_cu, torch.zeros_like(log_cu))
        log_ratio = (F.logsigmoid(lam) - log_cu).unsqueeze(-1) + log_x0
        total = torch.logaddexp(log_ratio, torch.zeros((), dtype=log_ratio.dtype, device=log_ratio.device)).sum(-1)
        return torch.where(positive, torch.exp(log_cu) * total, torch.zeros_like(total))

    def sample_pi(self, lam: LogSNR, generator: torch.Generator | None = None) -> Tokens:
        shape = lam.shape
        draw = torch.randint(0, self.num_noise_states, shape, generator=generator, device=lam.device)
        if self.mask_id is None:
            return draw
        draw = draw + (draw >= self.mask_id).long()  # skip over the mask id
        uniform = torch.rand(shape, generator=generator, device=lam.device, dtype=torch.float64)
        uniform = uniform < self.uniform_share(lam.to(torch.float64))
        return torch.where(uniform, draw, torch.full_like(draw, self.mask_id))
