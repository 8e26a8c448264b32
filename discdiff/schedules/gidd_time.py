"""GIDD's original time map (von Rütte et al., ICML 2025, arXiv 2503.04482, Eq. 9-10)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff import _gidd_time
from discdiff._checks import check_finite_float
from discdiff.schedules.base import Schedule


@dataclass(frozen=True)
class GIDDTime(Schedule):
    """``alpha_t = (1 - t) / (1 + c_t)``, ``c_t = B (t (1 - t))^(gamma/2)``, ``B = 2^gamma p_u / (1 - p_u)``.

    So ``lambda(t) = log(1 - t) - log(t + c_t)``.  ``p_uniform`` is the fraction of tokens that
    are uniform noise at ``t = 1/2``.  Pair it with :class:`discdiff.kernels.GIDD` (same
    ``p_uniform``, ``gamma``) to recover the paper's forward process exactly.  The inverse
    ``t(lambda)`` is computed by safeguarded Newton in float64.  ``gamma`` in ``(0, 2)``, where
    ``lambda(t)`` is strictly decreasing.  ``GIDDTime(0.2)`` or ``GIDDTime(0.2, 1.0,
    log_snr_min=..., log_snr_max=...)``: the clamp ends are keyword-only.
    """

    p_uniform: float
    gamma: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        check_finite_float("p_uniform", self.p_uniform, lo=0.0, hi=1.0, open_lo=True, open_hi=True)
        check_finite_float("gamma", self.gamma, lo=0.0, hi=2.0, open_lo=True, open_hi=True)

    def _log_snr(self, t: Tensor) -> Tensor:
        return _gidd_time.log_snr(torch.logit(t), self.p_uniform, self.gamma)

    def _dlog_snr_dt(self, t: Tensor) -> Tensor:
        u = torch.logit(t)
        return _gidd_time.dlog_snr_du(u, self.p_uniform, self.gamma) / (t * (1 - t))

    def _t_of_log_snr(self, lam: Tensor) -> Tensor:
        return torch.sigmoid(_gidd_time.logit_t_of_log_snr(lam, self.p_uniform, self.gamma))
