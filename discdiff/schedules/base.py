"""The schedule interface: a decreasing map from time ``t`` to log-SNR ``lambda``.

Convention (docs/math.md, "Conventions" and "Schedules"): ``t = 0`` is data, ``t = 1`` the
prior; ``alpha = sigmoid(lambda)``.
Every schedule clamps ``lambda`` to ``[log_snr_min, log_snr_max]`` (Sumi and the GIDD scaling
work use ``[-9, 9]``); inside the clamp its derivative is the analytic one, outside it is 0.
Subclasses implement only the unclamped map, its derivative and its inverse.

The public maps check their input's values (``t`` in ``[0, 1]``, ``lambda`` in the clamp range),
which synchronizes with the host; a caller whose input is valid by construction (a training
step's ``t ~ U(0, 1)``) passes ``validate=False`` and the map runs without a sync.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff._checks import as_float_tensor, check_finite_float, check_log_snr
from discdiff.typing import FloatLike, LogSNR, Time


@dataclass(frozen=True, kw_only=True)
class Schedule(ABC):
    """A map ``t -> lambda(t)``, strictly decreasing on ``(0, 1)``, clamped to a log-SNR range."""

    log_snr_min: float = -9.0
    log_snr_max: float = 9.0

    def __post_init__(self) -> None:
        for name in ("log_snr_min", "log_snr_max"):
            check_finite_float(name, getattr(self, name), allow_inf=True)
        if not self.log_snr_min < self.log_snr_max:
            raise ValueError(
                f"log_snr_min ({self.log_snr_min}) must be smaller than log_snr_max ({self.log_snr_max})"
            )

    # -- the unclamped map, implemented by each family ------------------------------------
    @abstractmethod
    def _log_snr(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _dlog_snr_dt(self, t: Tensor) -> Tensor: ...

    @abstractmethod
    def _t_of_log_snr(self, lam: Tensor) -> Tensor: ...

    # -- the public, clamped map ------------------------------------------------------------
    def log_snr(self, t: FloatLike, *, validate: bool = True) -> LogSNR:
        """``lambda(t)``, clamped to ``[log_snr_min, log_snr_max]``.

        Args:
            t: times in ``[0, 1]`` (a float or a floating-point tensor).
            validate: check that ``t`` lies in ``[0, 1]`` (one host sync); ``False`` for a ``t``
                that is valid by construction.
        """
        t = self._check_t(t, validate)
        return self._log_snr(t).clamp(self.log_snr_min, self.log_snr_max)

    def alpha(self, t: FloatLike, *, validate: bool = True) -> Tensor:
        """``alpha(t) = sigmoid(lambda(t))``: the probability that a token is still clean
        (``validate`` as in :meth:`log_snr`)."""
        return torch.sigmoid(self.log_snr(t, validate=validate))

    def dlog_snr_dt(self, t: FloatLike, *, validate: bool = True) -> Tensor:
        """``d lambda / d t`` (negative inside the clamp range, 0 where ``lambda`` is clamped;
        ``validate`` as in :meth:`log_snr`)."""
        t = self._check_t(t, validate)
        raw = self._log_snr(t)
        inside = (raw > self.log_snr_min) & (raw < self.log_snr_max)
        return torch.where(inside, self._dlog_snr_dt(t), torch.zeros_like(raw))

    def t_of_log_snr(self, lam: FloatLike, *, validate: bool = True) -> Time:
        """The inverse map ``t(lambda)`` on ``[log_snr_min, log_snr_max]``; ``validate``: check
        that ``lam`` is not NaN and lies in that range (one host sync)."""
        lam = as_float_tensor("lam", lam)
        check_log_snr("lam", lam, allow_inf=True, validate=validate)
        if validate and not torch.compiler.is_compiling() and \
                bool(((lam < self.log_snr_min) | (lam > self.log_snr_max)).any()):
            raise ValueError(
                f"lam must lie in [{self.log_snr_min}, {self.log_snr_max}] (the schedule's clamp range)"
            )
        return self._t_of_log_snr(lam)

    @property
    def t_range(self) -> tuple[float, float]:
        """``(t(log_snr_max), t(log_snr_min))``: the times between which ``lambda`` is not clamped."""
        ends = torch.tensor([self.log_snr_max, self.log_snr_min], dtype=torch.float64)
        lo, hi = self._t_of_log_snr(ends).tolist()
        return lo, hi

    @staticmethod
    def _check_t(t: FloatLike, validate: bool = True) -> Tensor:
        """``t`` as a floating tensor; with ``validate``, raise unless every value is in ``[0, 1]``."""
        t = as_float_tensor("t", t)
        if validate and not torch.compiler.is_compiling() and bool(((t < 0) | (t > 1) | torch.isnan(t)).any()):
            raise ValueError("t must lie in [0, 1] (t = 0 is data, t = 1 the prior)")
        return t
