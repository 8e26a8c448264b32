"""Noise schedules: decreasing maps from time ``t`` (0 = data, 1 = prior) to log-SNR ``lambda``.

Each has ``log_snr(t)``, ``alpha(t)``, ``dlog_snr_dt(t)`` and ``t_of_log_snr(lam)``.
"""

from discdiff.schedules.base import Schedule
from discdiff.schedules.cosine import Cosine
from discdiff.schedules.gidd_time import GIDDTime
from discdiff.schedules.linear_alpha import LinearAlpha
from discdiff.schedules.linear_log_snr import LinearLogSNR

__all__ = ["Schedule", "LinearAlpha", "Cosine", "LinearLogSNR", "GIDDTime"]
