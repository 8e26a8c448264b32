"""From the per-unit-log-SNR integrand to a NELBO estimate in time."""

from __future__ import annotations

from torch import Tensor

from discdiff._checks import align_log_snr
from discdiff._typing import FloatLike, PerToken
from discdiff.losses.output import LossOutput
from discdiff.schedules.base import Schedule


def nelbo(output: LossOutput, schedule: Schedule, t: FloatLike) -> PerToken:
    """Per-token NELBO estimate ``|d lambda/dt| w (KL + IS)`` at the times ``t`` that drew
    ``lambda = schedule.log_snr(t)`` (``t`` per sequence or per token, like ``lambda``).

    ``E_t[nelbo]`` with ``t ~ U(0, 1)`` is the NELBO of the clean tokens (docs/math.md, "Loss"):
    ``integral d lambda E_z[w (KL + IS)] = integral dt |d lambda / dt| E_z[w (KL + IS)]``.
    Uses the exact weight (``beta_is = 1``, no clip) whatever the surrogate was trained with.
    """
    integrand = output.integrand
    speed = align_log_snr("t", elbo_weight_in_time(schedule, t), integrand.shape).to(integrand.dtype)
    return speed * integrand


def elbo_weight_in_time(schedule: Schedule, t: FloatLike) -> Tensor:
    """``|d lambda / dt|``: the factor that turns a per-unit-log-SNR loss into a time-form one
    (``1 / (t (1 - t))`` for :class:`~discdiff.schedules.LinearAlpha`)."""
    return schedule.dlog_snr_dt(t).abs()


__all__ = ["nelbo", "elbo_weight_in_time"]
