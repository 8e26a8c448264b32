"""Linear-in-log-SNR schedule: ``lambda(t) = lambda_max + (lambda_min - lambda_max) t``."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff.schedules.base import Schedule


@dataclass(frozen=True, kw_only=True)
class LinearLogSNR(Schedule):
    """``lambda`` falls linearly from ``log_snr_max`` at ``t = 0`` to ``log_snr_min`` at ``t = 1``.

    ``d lambda/dt = log_snr_min - log_snr_max`` everywhere; both ends must be finite.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (math.isfinite(self.log_snr_min) and math.isfinite(self.log_snr_max)):
            raise ValueError("LinearLogSNR needs finite log_snr_min and log_snr_max")

    def _log_snr(self, t: Tensor) -> Tensor:
        return self.log_snr_max + (self.log_snr_min - self.log_snr_max) * t

    def _dlog_snr_dt(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self.log_snr_min - self.log_snr_max)

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        return (self.log_snr_max - lam) / (self.log_snr_max - self.log_snr_min)

    def dlog_snr_dt(self, t, *, validate: bool = True):  # the clamp never binds inside [0, 1]: keep the ends' slope
        t = self._check_t(t, validate)
        return self._dlog_snr_dt(t)
