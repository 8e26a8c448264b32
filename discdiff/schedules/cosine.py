"""Cosine schedule: ``alpha_t = 1/2 + 1/2 cos(pi t) = cos^2(pi t / 2)`` (Sumi's cosine step grid)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff.schedules.base import Schedule


@dataclass(frozen=True, kw_only=True)
class Cosine(Schedule):
    """``alpha_t = cos^2(pi t / 2)``: ``lambda(t) = 2 log cot(pi t / 2)``,
    ``d lambda/dt = -2 pi / sin(pi t)``, ``t(lambda) = (2/pi) atan(exp(-lambda / 2))``
    (docs/math.md, "Schedules").

    Computed in the symmetric form ``lambda(t) = -lambda(1 - t)``: with ``a = min(t, 1 - t)``
    (exact in floating point: ``1 - t`` has no rounding error for ``t >= 1/2``),
    ``lambda = +-2 (log cos(pi a / 2) - log sin(pi a / 2))`` and ``sin(pi t) = sin(pi a)``, with
    ``sin(pi a / 2) = (pi a / 2) sinc(a / 2)`` so that ``log a`` keeps tiny (even subnormal)
    ``a`` exact.  So ``cos`` never rounds below 0 near ``t = 1``, and ``lambda(0) = +inf``,
    ``lambda(1) = -inf`` exactly in float32 and float64 (the naive ``cos(pi t / 2)`` is
    ``-4.4e-8`` at ``t = 1`` in float32: a NaN).  The inverse is split the same way at
    ``lambda = 0``, so ``t(+inf) = 0`` and ``t(-inf) = 1`` exactly.
    """

    @staticmethod
    def _fold(t: Tensor) -> tuple[Tensor, Tensor]:
        """``a = min(t, 1 - t)`` and the sign ``+1`` (``t <= 1/2``) or ``-1``."""
        upper = t > 0.5
        return torch.where(upper, 1 - t, t), torch.where(upper, -1.0, 1.0).to(t.dtype)

    def _log_snr(self, t: Tensor) -> Tensor:
        a, sign = self._fold(t)
        log_sin = torch.log(a) + math.log(0.5 * math.pi) + torch.log(torch.sinc(0.5 * a))  # log sin(pi a / 2)
        return sign * 2.0 * (torch.log(torch.cos((0.5 * math.pi) * a)) - log_sin)

    def _dlog_snr_dt(self, t: Tensor) -> Tensor:
        a, _ = self._fold(t)
        return -2.0 / (a * torch.sinc(a))  # -2 pi / sin(pi a)

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        # t = (2/pi) atan(exp(-lam/2)) for lam >= 0, and 1 minus its mirror image for lam < 0
        near_zero = (2.0 / math.pi) * torch.atan(torch.exp(-0.5 * lam.abs()))
        return torch.where(lam >= 0, near_zero, 1 - near_zero)
