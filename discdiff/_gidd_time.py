"""GIDD's original time form (von Rütte et al., ICML 2025, arXiv 2503.04482, Sec. 3-4),
written in the logit of time ``u = log(t / (1 - t))`` so that both ends stay precise.

``c_t = B (t (1 - t))^(g/2)``, ``B = 2^g p_u / (1 - p_u)``, ``alpha_t = (1 - t) / (1 + c_t)``,
``beta_t pi_t = (t e_m + c_t u) / (1 + c_t)``.  Hence

- ``lambda(t) = logit(alpha_t) = log(1 - t) - log(t + c_t)``,
- the uniform share of the mixing distribution ``s = c_t / (t + c_t) = sigmoid(g_u)`` with
  ``g_u = log B + (g/2 - 1) log t + (g/2) log(1 - t)``.

The schedule :class:`discdiff.schedules.GIDDTime` and the kernel :class:`discdiff.kernels.GIDD`
share these functions, so the two stay consistent by construction.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_NEWTON_STEPS = 16
_U_BOUND = 1000.0


def log_b(p_uniform: float, gamma: float) -> float:
    """``log B`` with ``B = 2^gamma p_u / (1 - p_u)``."""
    return gamma * math.log(2.0) + math.log(p_uniform) - math.log1p(-p_uniform)


def _log_t_parts(u: Tensor) -> tuple[Tensor, Tensor]:
    return F.logsigmoid(u), F.logsigmoid(-u)


def share_logit(u: Tensor, p_uniform: float, gamma: float) -> Tensor:
    """``g_u = logit(s)``: the log-odds of uniform noise over mask noise at time ``sigmoid(u)``."""
    log_t, log_1mt = _log_t_parts(u)
    return log_b(p_uniform, gamma) + (gamma / 2 - 1) * log_t + (gamma / 2) * log_1mt


def log_snr(u: Tensor, p_uniform: float, gamma: float) -> Tensor:
    """``lambda = log(1 - t) - log(t + c_t)`` at ``t = sigmoid(u)``."""
    return log_snr_and_slope(u, p_uniform, gamma)[0]


def dlog_snr_du(u: Tensor, p_uniform: float, gamma: float) -> Tensor:
    """``d lambda / d u``; with ``r = t / c_t = exp(-g_u)``:
    ``-t - (r (1 - t) + (g/2)(1 - 2t)) / (1 + r)``."""
    return log_snr_and_slope(u, p_uniform, gamma)[1]


def log_snr_and_slope(u: Tensor, p_uniform: float, gamma: float) -> tuple[Tensor, Tensor]:
    """``lambda(u)`` and ``d lambda / d u`` together (one pass: the Newton loop's only call)."""
    log_t, log_1mt = _log_t_parts(u)
    lb = log_b(p_uniform, gamma)
    log_c = lb + (gamma / 2) * (log_t + log_1mt)
    lam = log_1mt - torch.logaddexp(log_t, log_c)
    g = log_c - log_t  # = share_logit(u)
    t = torch.exp(log_t)
    # (r (1-t) + k) / (1 + r) = sigmoid(-g) (1 - t) + sigmoid(g) k, with r = exp(-g)
    slope = -t - (torch.sigmoid(-g) * (1 - t) + torch.sigmoid(g) * (gamma / 2) * (1 - 2 * t))
    return lam, slope


def dshare_logit_du(u: Tensor, gamma: float) -> Tensor:
    """``d g_u / d u = (g/2 - 1)(1 - t) - (g/2) t``."""
    t = torch.sigmoid(u)
    return (gamma / 2 - 1) * (1 - t) - (gamma / 2) * t


def logit_t_of_log_snr(lam: Tensor, p_uniform: float, gamma: float) -> Tensor:
    """Invert ``lambda(u)`` by safeguarded Newton on ``u`` (float64, fixed step count, no host sync).

    ``lambda`` decreases in ``u`` with slope between ``-1`` and about ``-gamma/2`` at the ends, so
    the asymptotes ``u ~ -(2/gamma)(lambda + log B)`` (clean end) and ``u ~ -lambda`` (noisy end)
    start Newton close; a bracket ``[lo, hi]`` falls back to bisection whenever a step would
    leave it.  ``+inf`` maps to ``u -> -1000`` (t = 0 in float64), ``-inf`` to ``u -> 1000``.
    """
    target = lam.to(torch.float64)
    finite = torch.isfinite(target)
    safe = torch.where(finite, target, torch.zeros_like(target))
    guess = torch.where(safe > 0, -(2.0 / gamma) * (safe + log_b(p_uniform, gamma)), -safe)
    u = torch.where(finite, guess, -torch.sign(target) * _U_BOUND).clamp(-_U_BOUND, _U_BOUND)
    lo = torch.full_like(target, -_U_BOUND)
    hi = torch.full_like(target, _U_BOUND)
    for _ in range(_NEWTON_STEPS):
        lam_u, slope = log_snr_and_slope(u, p_uniform, gamma)
        f = lam_u - target
        right = f > 0  # still too clean: the root lies right of u
        lo = torch.where(right, u, lo)
        hi = torch.where(right, hi, u)
        newton = u - f / slope
        inside = (newton >= lo) & (newton <= hi)  # closed: f = 0 gives newton = u = hi
        u = torch.where(inside, newton, 0.5 * (lo + hi))
    u = torch.where(finite, u, -torch.sign(target) * math.inf)
    return u.to(lam.dtype)
