"""From the per-unit-log-SNR integrand to a one-sample NELBO estimate in time.

Not to be confused with :func:`discdiff.likelihood.nelbo`, which integrates the NELBO of clean
tokens over a whole time grid with a denoiser.
"""

from __future__ import annotations

import warnings

from torch import Tensor

from discdiff._checks import align_log_snr
from discdiff.losses.output import LossOutput
from discdiff.schedules.base import Schedule
from discdiff.typing import FloatLike, PerToken


def nelbo_estimate(output: LossOutput, schedule: Schedule, t: FloatLike) -> PerToken:
    """Per-token one-sample NELBO estimate ``|d lambda/dt| w (KL + IS)`` at the times ``t`` that
    drew ``lambda = schedule.log_snr(t)`` (``t`` per sequence or per token, like ``lambda``).

    ``E_t[nelbo_estimate]`` with ``t ~ U(0, 1)`` is the NELBO of the clean tokens (docs/math.md,
    "Surrogate and NELBO"):
    ``integral d lambda E_z[w (KL + IS)] = integral dt |d lambda / dt| E_z[w (KL + IS)]``.
    Uses the exact weight (``beta_is = 1``, no clip) whatever the surrogate was trained with.
    For the NELBO of clean tokens over a whole time grid, see :func:`discdiff.likelihood.nelbo`.
    """
    integrand = output.integrand
    speed = align_log_snr("t", elbo_weight_in_time(schedule, t), integrand.shape).to(integrand.dtype)
    return speed * integrand


def nelbo(output: LossOutput, schedule: Schedule, t: FloatLike) -> PerToken:
    """Deprecated alias of :func:`nelbo_estimate` (renamed so that it is not mistaken for
    :func:`discdiff.likelihood.nelbo`, the NELBO over a time grid); warns, then returns
    ``nelbo_estimate(output, schedule, t)``."""
    warnings.warn("discdiff.losses.nelbo (and discdiff.nelbo) is deprecated: use discdiff.losses.nelbo_estimate "
                  "(the one-sample estimate from a LossOutput; discdiff.likelihood.nelbo integrates over a grid)",
                  DeprecationWarning, stacklevel=2)
    return nelbo_estimate(output, schedule, t)


def elbo_weight_in_time(schedule: Schedule, t: FloatLike) -> Tensor:
    """``|d lambda / dt|``: the factor that turns a per-unit-log-SNR loss into a time-form one
    (``1 / (t (1 - t))`` for :class:`~discdiff.schedules.LinearAlpha`)."""
    return schedule.dlog_snr_dt(t).abs()


__all__ = ["nelbo_estimate", "elbo_weight_in_time", "nelbo"]
