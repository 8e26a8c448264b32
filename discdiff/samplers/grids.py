"""Step grids: ascending log-SNRs from noisy to clean (docs/math.md, "Step grids")."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discdiff._checks import check_int
from discdiff.schedules.base import Schedule


def _check_steps(steps: int) -> int:
    return check_int("steps", steps, lo=1)


def _clamped_logit(alpha: Tensor, log_snr_min: float, log_snr_max: float) -> Tensor:
    return torch.logit(alpha).clamp(log_snr_min, log_snr_max)


def linear_alpha_grid(steps: int, *, eps: float = 1e-4, log_snr_min: float = -9.0, log_snr_max: float = 9.0) -> Tensor:
    """Sumi's "linear" grid: ``alpha = linspace(eps, 1 - eps, steps + 1)``, ``lambda = logit(alpha)``
    clamped to ``[log_snr_min, log_snr_max]``; ``steps + 1`` float64 values, ascending."""
    _check_steps(steps)
    if not 0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    return _clamped_logit(torch.linspace(eps, 1 - eps, steps + 1, dtype=torch.float64), log_snr_min, log_snr_max)


def cosine_grid(steps: int, *, tau_start: float = 0.999, tau_end: float = 0.001, log_snr_min: float = -9.0,
                log_snr_max: float = 9.0) -> Tensor:
    """Sumi's "cosine" grid: ``alpha = 1/2 + 1/2 cos(pi tau)`` for ``tau`` from ``tau_start`` down to
    ``tau_end`` (``steps + 1`` points), ``lambda`` clamped; ascending."""
    _check_steps(steps)
    if not 0 <= tau_end < tau_start <= 1:
        raise ValueError(f"need 0 <= tau_end < tau_start <= 1, got {tau_start}, {tau_end}")
    tau = torch.linspace(tau_start, tau_end, steps + 1, dtype=torch.float64)
    return _clamped_logit(0.5 + 0.5 * torch.cos(math.pi * tau), log_snr_min, log_snr_max)


def schedule_grid(schedule: Schedule, steps: int, *, t_start: float = 1.0, t_end: float = 0.0) -> Tensor:
    """``lambda = schedule.log_snr(t)`` for ``t = linspace(t_start, t_end, steps + 1)``: uniform steps in
    time under any schedule (clamped by the schedule); ascending."""
    _check_steps(steps)
    if not 0 <= t_end < t_start <= 1:
        raise ValueError(f"need 0 <= t_end < t_start <= 1, got {t_start}, {t_end}")
    return schedule.log_snr(torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64))


def check_grid(log_snrs: Tensor) -> Tensor:
    """A 1-D, non-decreasing (noisy -> clean), NaN-free grid of at least 2 log-SNRs."""
    if not isinstance(log_snrs, Tensor) or not log_snrs.is_floating_point() or log_snrs.dim() != 1:
        raise TypeError("log_snrs must be a 1-D floating-point tensor")
    if log_snrs.numel() < 2:
        raise ValueError("log_snrs needs at least 2 values (one step)")
    if bool(torch.isnan(log_snrs).any()):
        raise ValueError("log_snrs contains NaN")
    if bool((log_snrs[1:] < log_snrs[:-1]).any()):
        raise ValueError("log_snrs must be ascending (noisy -> clean)")
    return log_snrs
