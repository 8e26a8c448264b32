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
    ``d lambda/dt = -2 pi / sin(pi t)``, ``t(lambda) = (2/pi) atan(exp(-lambda / 2))``.
    """

    def _log_snr(self, t: Tensor) -> Tensor:
        half = 0.5 * math.pi * t
        return 2.0 * (torch.log(torch.cos(half)) - torch.log(torch.sin(half)))

    def _dlog_snr_dt(self, t: Tensor) -> Tensor:
        return -2.0 * math.pi / torch.sin(math.pi * t)

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        return (2.0 / math.pi) * torch.atan(torch.exp(-0.5 * lam))
