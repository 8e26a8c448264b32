"""Scaling-law fits: a power law of loss against compute (Kaplan et al. 2020, arXiv 2001.08361)
and the compute-optimal model size of an isoFLOP profile (Hoffmann et al. 2022, arXiv
2203.15556, Section 3.2, "Approach 2").

Both are ordinary least squares in float64: the data are a few dozen points at most.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from numpy.polynomial.polynomial import polyfit

from sumi._checks import check_number

__all__ = ["IsoFlopMinimum", "PowerLaw", "compute_optimal", "fit_power_law"]


def _positive(name: str, values: Sequence[float]) -> list[float]:
    return [check_number(f"{name}[{i}]", v, 0.0, open_lo=True) for i, v in enumerate(values)]


def _paired(xs_name: str, xs: Sequence[float], ys_name: str, ys: Sequence[float], minimum: int):
    xs, ys = _positive(xs_name, xs), _positive(ys_name, ys)
    if len(xs) != len(ys):
        raise ValueError(f"{xs_name} and {ys_name} must have the same length, got {len(xs)} and {len(ys)}")
    if len(set(xs)) < minimum:
        raise ValueError(f"{xs_name} must hold at least {minimum} distinct values, got {sorted(set(xs))}")
    return xs, ys


@dataclass(frozen=True)
class PowerLaw:
    """``loss = a * compute^(-b)``, fitted as the line ``ln loss = ln a - b ln compute``.

    Attributes:
        a: the coefficient.
        b: the exponent (positive when the loss falls with compute).
        a_stderr: the standard error of ``a`` (delta method: ``a * log_a_stderr``).
        b_stderr: the standard error of ``b``.
        log_a_stderr: the standard error of ``ln a``.
        covariance: the covariance matrix of ``(ln a, b)``, ``s^2 (X^T X)^-1`` with
            ``X = [1, -ln compute]``.
        sigma: ``s``, the residual standard deviation of ``ln loss`` (``n - 2`` degrees of freedom).
        points: the number of points fitted.
    """

    a: float
    b: float
    a_stderr: float
    b_stderr: float
    log_a_stderr: float
    covariance: tuple[tuple[float, float], tuple[float, float]]
    sigma: float
    points: int

    def predict(self, compute: float, *, observation: bool = False) -> tuple[float, float]:
        """The fitted loss at ``compute`` and the standard error of its logarithm.

        Args:
            compute: a compute budget (> 0), in the units of the fit.
            observation: add the residual variance ``sigma^2``: the uncertainty of one new
                measured loss (a prediction interval) rather than of the fitted law (a
                confidence interval).

        Returns:
            ``(a * compute^(-b), se)``, ``se^2 = v^T C v (+ sigma^2)`` with ``v = (1, -ln compute)``
            and ``C`` :attr:`covariance`; ``exp(ln loss +- z se)`` is the band.
        """
        x = -math.log(check_number("compute", compute, 0.0, open_lo=True))
        (caa, cab), (_, cbb) = self.covariance
        variance = caa + 2 * x * cab + x * x * cbb + (self.sigma ** 2 if observation else 0.0)
        return self.a * math.exp(self.b * x), math.sqrt(max(variance, 0.0))


def fit_power_law(compute: Sequence[float], loss: Sequence[float]) -> PowerLaw:
    """Least-squares fit of ``loss = a * compute^(-b)`` in log-log space (Kaplan et al. 2020,
    arXiv 2001.08361, the form of Eq. 1.3, ``L = (C_c / C)^alpha_C``: ``a = C_c^b``).

    With ``x = ln compute`` and ``y = ln loss``: ``slope = S_xy / S_xx``, ``b = -slope``,
    ``ln a = mean(y) - slope mean(x)``; residual variance ``s^2 = RSS / (n - 2)``; covariance of
    ``(ln a, slope)`` ``s^2 (X^T X)^-1`` = ``s^2 [[1/n + mean(x)^2/S_xx, -mean(x)/S_xx],
    [-mean(x)/S_xx, 1/S_xx]]`` (the sign of the off-diagonal flips for ``b``).  The standard
    errors assume independent noise of constant variance on ``ln loss`` (lognormal noise on the
    loss).  Any positive ``y`` works the same way, e.g. the compute-optimal sizes of
    :func:`compute_optimal` against compute.

    Args:
        compute: compute budgets (> 0).
        loss: the loss at each budget (> 0).

    Returns:
        The fitted :class:`PowerLaw`.

    Raises:
        ValueError: a value that is not a finite number > 0, lengths that differ, or fewer
            than 3 distinct budgets (2 points leave no degree of freedom for the uncertainty).
    """
    compute, loss = _paired("compute", compute, "loss", loss, 3)
    n = len(compute)
    xs = [math.log(c) for c in compute]
    ys = [math.log(v) for v in loss]
    x_mean, y_mean = math.fsum(xs) / n, math.fsum(ys) / n
    sxx = math.fsum((x - x_mean) ** 2 for x in xs)
    sxy = math.fsum((x - x_mean) * (y - y_mean) for x, y in zip(xs, ys))
    slope = sxy / sxx
    intercept = y_mean - slope * x_mean
    rss = math.fsum((y - intercept - slope * x) ** 2 for x, y in zip(xs, ys))
    s2 = rss / (n - 2)
    var_intercept = s2 * (1.0 / n + x_mean ** 2 / sxx)
    var_slope = s2 / sxx
    cov_intercept_b = s2 * x_mean / sxx  # cov(ln a, -slope) = -cov(ln a, slope) = s^2 mean(x) / S_xx
    a = math.exp(intercept)
    return PowerLaw(a=a, b=-slope, a_stderr=a * math.sqrt(var_intercept), b_stderr=math.sqrt(var_slope),
                    log_a_stderr=math.sqrt(var_intercept),
                    covariance=((var_intercept, cov_intercept_b), (cov_intercept_b, var_slope)),
                    sigma=math.sqrt(s2), points=n)


@dataclass(frozen=True)
class IsoFlopMinimum:
    """The minimum of one isoFLOP profile (a fixed compute budget).

    Attributes:
        size: the compute-optimal model size ``exp(-c1 / (2 c2))``.
        loss: the fitted loss at that size, ``c0 - c1^2 / (4 c2)``.
        inside: whether ``size`` lies within the sampled sizes (``False``: an extrapolation;
            sample sizes on both sides of the optimum before trusting it).
        coefficients: ``(c0, c1, c2)`` of ``loss = c0 + c1 ln size + c2 (ln size)^2``.
    """

    size: float
    loss: float
    inside: bool
    coefficients: tuple[float, float, float]


def compute_optimal(sizes: Sequence[float], losses: Sequence[float]) -> IsoFlopMinimum:
    """The compute-optimal size of one compute budget: the minimum of the parabola
    ``loss = c0 + c1 ln N + c2 (ln N)^2`` fitted by least squares to the final losses of models
    of sizes ``N`` all trained with that budget (Hoffmann et al. 2022, arXiv 2203.15556,
    Section 3.2, "Approach 2: IsoFLOP profiles").  ``N* = exp(-c1 / (2 c2))``.  Fitting the
    ``N*`` of several budgets with :func:`fit_power_law` gives ``N_opt`` against compute.

    Args:
        sizes: model sizes (parameters, > 0), at least 3 distinct.
        losses: the loss of each size (> 0).

    Returns:
        The :class:`IsoFlopMinimum` (with ``inside`` ``False`` when the minimum lies outside the
        sampled sizes).

    Raises:
        ValueError: a value that is not a finite number > 0, lengths that differ, fewer than 3
            distinct sizes, or a fit that does not curve upward (``c2 <= 0``: no minimum; the
            sizes do not bracket the optimum or the losses are too noisy).
    """
    sizes, losses = _paired("sizes", sizes, "losses", losses, 3)
    n = len(sizes)
    logs = [math.log(s) for s in sizes]
    # centred and scaled abscissa t = (ln N - m) / h so the fit is well conditioned at any scale of N
    m = math.fsum(logs) / n
    h = max(abs(v - m) for v in logs)
    ts = [(v - m) / h for v in logs]
    d0, d1, d2 = (float(c) for c in polyfit(ts, losses, 2))  # loss = d0 + d1 t + d2 t^2
    if not d2 > 0:
        raise ValueError(f"the losses do not curve upward against log size (curvature {d2 / h ** 2:.3g} <= 0): "
                         "no minimum; sample sizes on both sides of the optimum")
    # back to ln N: t = (ln N - m) / h
    c2 = d2 / h ** 2
    c1 = d1 / h - 2 * d2 * m / h ** 2
    c0 = d0 - d1 * m / h + d2 * m ** 2 / h ** 2
    t_star = -d1 / (2 * d2)
    log_size = m + h * t_star
    return IsoFlopMinimum(size=math.exp(log_size), loss=d0 - d1 ** 2 / (4 * d2),
                          inside=min(logs) <= log_size <= max(logs), coefficients=(c0, c1, c2))

