"""GIDD's original time-form mixing, expressed as a function of log-SNR
(von Rütte et al., ICML 2025, arXiv 2503.04482, Eq. 9-10)."""

from __future__ import annotations

import torch
from torch import Tensor

from discdiff import _gidd_time
from discdiff._checks import check_finite_float, check_mask_id, check_vocab_size
from discdiff.kernels.mixture import UniformMaskMixture
from discdiff.typing import LogSNR


class GIDD(UniformMaskMixture):
    """``beta_t pi_t = (t e_m + c_t u) / (1 + c_t)``, so ``pi = s u + (1 - s) e_m`` with
    ``s = c_t / (t + c_t)`` at the time ``t(lambda)`` of :class:`discdiff.schedules.GIDDTime`
    (same ``p_uniform`` and ``gamma``).  The prior at ``lambda = -inf`` is all-mask; uniform
    noise dominates near the data end.  ``t(lambda)`` is found by safeguarded Newton in float64.
    """

    def __init__(self, vocab_size: int, mask_id: int, p_uniform: float, gamma: float = 1.0) -> None:
        self.vocab_size = check_vocab_size(vocab_size)
        self.mask_id = check_mask_id(mask_id, self.vocab_size)
        self.p_uniform = check_finite_float("p_uniform", p_uniform, lo=0.0, hi=1.0, open_lo=True, open_hi=True)
        self.gamma = check_finite_float("gamma", gamma, lo=0.0, hi=2.0, open_lo=True, open_hi=True)

    def __repr__(self) -> str:
        return (f"GIDD(vocab_size={self.vocab_size}, mask_id={self.mask_id}, "
                f"p_uniform={self.p_uniform}, gamma={self.gamma})")

    def _logit_t(self, lam: LogSNR) -> Tensor:
        return _gidd_time.logit_t_of_log_snr(lam.to(torch.float64), self.p_uniform, self.gamma)

    def share_logit(self, lam: LogSNR) -> Tensor:
        u = self._logit_t(lam)
        return _gidd_time.share_logit(u, self.p_uniform, self.gamma).to(lam.dtype)

    def dshare_logit(self, lam: LogSNR) -> Tensor:
        return self._share_logit_and_slope(self._logit_t(lam))[1].to(lam.dtype)

    def _share_logit_and_slope(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """``l = g_u`` and ``dl/dlambda = (dg/du) / (dlambda/du)`` at the logit of time ``u``."""
        slope = _gidd_time.dshare_logit_du(u, self.gamma) / _gidd_time.dlog_snr_du(u, self.p_uniform, self.gamma)
        return _gidd_time.share_logit(u, self.p_uniform, self.gamma), slope

    def _shares(self, lam: LogSNR) -> tuple[Tensor, Tensor, Tensor]:
        # one inversion of t(lambda) for the share and its slope together
        logit, slope = (v.to(lam.dtype) for v in self._share_logit_and_slope(self._logit_t(lam)))
        s, not_s = torch.sigmoid(logit), torch.sigmoid(-logit)
        return s, not_s, slope * s * not_s
