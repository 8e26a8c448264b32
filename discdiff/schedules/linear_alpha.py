"""Linear-in-alpha schedule: ``alpha_t = 1 - t`` (MDLM/GIDD/Sumi default; docs/math.md, "Schedules")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff.schedules.base import Schedule


@dataclass(frozen=True, kw_only=True)
class LinearAlpha(Schedule):
    """``alpha_t = 1 - t``: ``lambda(t) = log(1 - t) - log t``,
    ``d lambda/dt = -1 / (t (1 - t))``, ``t(lambda) = sigmoid(-lambda)``.

    Sumi trains with this schedule clamped to ``lambda in [-9, 9]`` (arXiv 2606.19005).
    """

    def _log_snr(self, t: Tensor) -> Tensor:
        return torch.log1p(-t) - torch.log(t)

    def _dlog_snr_dt(self, t: Tensor) -> Tensor:
        return -1.0 / (t * (1 - t))

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(-lam)
