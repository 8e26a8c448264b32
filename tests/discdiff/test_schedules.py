"""Schedules: closed forms, analytic derivatives against autograd, inverses, clamping, and the
``validate=False`` path that skips the value checks (host syncs)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import discdiff as dd
from discdiff.testing import check_schedule
from discdiff.testing import strategies as dst

F64 = torch.float64
INF = math.inf


@given(schedule=dst.schedules())
def test_every_schedule_passes_check_schedule(schedule):
    check_schedule(schedule)


@given(schedule=dst.schedules(clamped=False), t=st.floats(0.02, 0.98))
def test_derivative_matches_autograd(schedule, t):
    t = torch.tensor(t, dtype=F64, requires_grad=True)
    (grad,) = torch.autograd.grad(schedule.log_snr(t), t)
    torch.testing.assert_close(schedule.dlog_snr_dt(t.detach()), grad, rtol=1e-10, atol=1e-10)


def test_closed_forms():
    """Each family's alpha(t) written independently of the implementation."""
    t = torch.linspace(0.01, 0.99, 17, dtype=F64)
    free = dict(log_snr_min=-INF, log_snr_max=INF)
    torch.testing.assert_close(dd.LinearAlpha(**free).alpha(t), 1 - t)
    torch.testing.assert_close(dd.Cosine(**free).alpha(t), 0.5 + 0.5 * torch.cos(math.pi * t))
    s = dd.LinearLogSNR(log_snr_min=-5.0, log_snr_max=7.0)
    torch.testing.assert_close(s.log_snr(t), 7.0 - 12.0 * t)
    for p_u, gamma in [(0.2, 1.0), (0.5, 1.5), (0.05, 0.7)]:
        B = 2**gamma * p_u / (1 - p_u)
        c = B * (t * (1 - t)) ** (gamma / 2)
        torch.testing.assert_close(dd.GIDDTime(p_uniform=p_u, gamma=gamma, **free).alpha(t), (1 - t) / (1 + c))


def test_clamp_and_zero_derivative_outside():
    s = dd.LinearAlpha()  # [-9, 9] by default
    t = torch.tensor([0.0, 1e-6, 0.5, 1 - 1e-6, 1.0], dtype=F64)
    lam = s.log_snr(t)
    assert lam[0] == 9.0 and lam[1] == 9.0 and lam[-1] == -9.0 and lam[-2] == -9.0
    d = s.dlog_snr_dt(t)
    assert d[0] == 0 and d[1] == 0 and d[-1] == 0
    torch.testing.assert_close(d[2], torch.tensor(-4.0, dtype=F64))
    lo, hi = s.t_range
    assert lo == pytest.approx(1 / (1 + math.exp(9))) and hi == pytest.approx(1 / (1 + math.exp(-9)))


def test_schedule_invariance_of_the_time_integral():
    """``integral |dlambda/dt| f(lambda(t)) dt`` depends only on the lambda endpoints."""
    f = lambda lam: torch.exp(-0.1 * lam**2) * (2 + torch.sin(lam))  # noqa: E731
    nodes, weights = _gauss_legendre(200)
    values = []
    for s in [dd.LinearAlpha(log_snr_min=-4.0, log_snr_max=6.0), dd.Cosine(log_snr_min=-4.0, log_snr_max=6.0),
              dd.LinearLogSNR(log_snr_min=-4.0, log_snr_max=6.0), dd.GIDDTime(p_uniform=0.3, log_snr_min=-4.0, log_snr_max=6.0)]:
        a, b = s.t_range
        if 0 < a and b < 1:  # in u = logit(t), dt = t (1 - t) du: GIDDTime has |dlambda/dt| ~ 1/(2t) near 0
            a, b = math.log(a / (1 - a)), math.log(b / (1 - b))
            t = torch.sigmoid(a + (b - a) * nodes)
            jac = (b - a) * t * (1 - t)
        else:
            t, jac = a + (b - a) * nodes, torch.full_like(nodes, b - a)
        values.append((weights * jac * s.dlog_snr_dt(t).abs() * f(s.log_snr(t))).sum())
    lam = -4.0 + 10.0 * nodes
    exact = (10.0 * weights * f(lam)).sum()
    for v in values:
        torch.testing.assert_close(v, exact, rtol=1e-9, atol=0)


def _gauss_legendre(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nodes and weights on [0, 1] (Golub-Welsch)."""
    k = torch.arange(1, n, dtype=F64)
    off = k / torch.sqrt(4 * k**2 - 1)
    nodes, vecs = torch.linalg.eigh(torch.diag(off, 1) + torch.diag(off, -1))
    return (nodes + 1) / 2, vecs[0] ** 2


def test_gidd_time_inverse_matches_the_original_parameterization():
    s = dd.GIDDTime(p_uniform=0.25, log_snr_min=-INF, log_snr_max=INF)
    t = torch.tensor([1e-12, 1e-6, 0.1, 0.5, 0.9, 1 - 1e-9], dtype=F64)
    torch.testing.assert_close(s.t_of_log_snr(s.log_snr(t)), t, rtol=1e-7, atol=0)
    ends = s.t_of_log_snr(torch.tensor([INF, -INF], dtype=F64))
    assert ends[0] == 0.0 and ends[1] == 1.0


@pytest.mark.parametrize("bad", [
    dict(log_snr_min=5.0, log_snr_max=1.0),
    dict(log_snr_min=float("nan")),
])
def test_bad_clamp_rejected(bad):
    with pytest.raises(ValueError, match="log_snr"):
        dd.LinearAlpha(**bad)


def test_bad_arguments():
    with pytest.raises(ValueError, match="finite"):
        dd.LinearLogSNR(log_snr_min=-INF, log_snr_max=9.0)
    for p in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="p_uniform"):
            dd.GIDDTime(p_uniform=p)
    with pytest.raises(ValueError, match="gamma"):
        dd.GIDDTime(p_uniform=0.2, gamma=2.5)
    s = dd.LinearAlpha()
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        s.log_snr(torch.tensor([1.5]))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        s.log_snr(torch.tensor([float("nan")]))
    with pytest.raises(TypeError, match="t must be"):
        s.log_snr(torch.tensor([1]))
    with pytest.raises(ValueError, match="clamp range"):
        s.t_of_log_snr(torch.tensor([10.0]))
    with pytest.raises(ValueError, match="NaN"):
        s.t_of_log_snr(torch.tensor([float("nan")]))


class _ValueReads(TorchDispatchMode):
    """Counts reads of tensor values by the host (``item``/``bool``: host syncs on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func.overloadpacket.__name__ == "_local_scalar_dense"
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("schedule", [dd.LinearAlpha(), dd.Cosine(), dd.LinearLogSNR(), dd.GIDDTime(0.2)])
def test_validate_false_skips_the_value_checks_and_their_syncs(schedule):
    """``validate=False`` (a caller whose ``t`` is valid by construction) reads no value on the
    host and computes the same numbers; the default still checks."""
    t = torch.tensor([0.1, 0.5, 0.9], dtype=F64)
    lam = schedule.log_snr(t)
    for name, arg, want in [("log_snr", t, lam), ("alpha", t, schedule.alpha(t)),
                            ("dlog_snr_dt", t, schedule.dlog_snr_dt(t)), ("t_of_log_snr", lam, t)]:
        with _ValueReads() as reads:
            got = getattr(schedule, name)(arg, validate=False)
        assert reads.count == 0, name
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        with _ValueReads() as reads:
            getattr(schedule, name)(arg)
        assert reads.count > 0, name  # the checks are real host reads
    bad = torch.tensor([1.5], dtype=F64)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        schedule.log_snr(bad)
    assert schedule.log_snr(bad, validate=False).shape == (1,)  # unchecked: whatever the formula gives


def test_float_inputs_and_dtypes():
    s = dd.Cosine()
    assert s.log_snr(0.5).dtype == F64
    assert s.log_snr(torch.tensor([0.5], dtype=torch.float32)).dtype == torch.float32


# -- the ends of time in float32 and float64 -------------------------------------------------------------
def _cosine_oracle(t: float) -> float:
    """``2 log cot(pi t / 2)`` in Python float64, for a float ``t``: ``cot(pi t / 2) = tan(pi (1 - t) / 2)``
    and ``1 - t`` is exact for ``t >= 1/2`` (Sterbenz), so ``lambda(t) = -lambda(1 - t)`` there; below
    ``t = 1e-8``, ``tan x = x (1 + O(x^2))`` (and ``pi t / 2`` would round as a subnormal)."""
    if t > 0.5:
        return -_cosine_oracle(1.0 - t)
    if t < 1e-8:
        return INF if t == 0.0 else -2.0 * (math.log(t) + math.log(0.5 * math.pi))
    return -2.0 * math.log(math.tan(0.5 * math.pi * t))


def _probes(dtype: torch.dtype) -> torch.Tensor:
    zero, one = torch.zeros((), dtype=dtype), torch.ones((), dtype=dtype)
    return torch.stack([zero, torch.nextafter(zero, one), torch.tensor(torch.finfo(dtype).tiny, dtype=dtype),
                        torch.tensor(0.25, dtype=dtype), torch.tensor(0.5, dtype=dtype),
                        torch.nextafter(one, zero), one])


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_cosine_is_exact_at_both_ends(dtype):
    """t = 1.0 occurs in float32 draws; cos(pi / 2) rounds below 0 there and gave NaN."""
    free = dd.Cosine(log_snr_min=-INF, log_snr_max=INF)
    t = _probes(dtype)
    lam = free.log_snr(t)
    assert lam.dtype == dtype and not bool(torch.isnan(lam).any()), lam
    assert lam[0] == INF and lam[-1] == -INF
    want = torch.tensor([_cosine_oracle(v) for v in t.tolist()], dtype=F64)
    rtol = 4 * torch.finfo(dtype).eps
    torch.testing.assert_close(lam[1:-1].to(F64), want[1:-1], rtol=rtol, atol=rtol)
    # the clamped schedule, alpha and the slope at the very ends
    clamped = dd.Cosine()
    assert clamped.log_snr(t)[0] == 9.0 and clamped.log_snr(t)[-1] == -9.0
    alpha = clamped.alpha(t)
    assert not bool(torch.isnan(alpha).any()) and bool(((alpha > 0) & (alpha < 1)).all())
    slope = free.dlog_snr_dt(t)
    assert not bool(torch.isnan(slope).any()) and bool((slope <= 0).all())
    inner = t[3:-2].to(F64)
    torch.testing.assert_close(slope[3:-2].to(F64), -2 * math.pi / torch.sin(math.pi * inner), rtol=rtol, atol=0)
    # the inverse: exact at +-inf and consistent with the map near both ends
    ends = free.t_of_log_snr(torch.tensor([INF, -INF], dtype=dtype))
    assert ends.tolist() == [0.0, 1.0]
    near = t[[3, 4, -2]]  # (near t = 0, t(lambda) needs exp(-lambda / 2) below the normal range)
    torch.testing.assert_close(free.t_of_log_snr(free.log_snr(near)), near, rtol=rtol, atol=0)


@dataclass(frozen=True, kw_only=True)
class NaiveCosine(dd.Cosine):
    """The cosine schedule as it was: cos(pi t / 2) and sin(pi t) straight from t."""

    def _log_snr(self, t):
        half = 0.5 * math.pi * t
        return 2.0 * (torch.log(torch.cos(half)) - torch.log(torch.sin(half)))

    def _dlog_snr_dt(self, t):
        return -2.0 * math.pi / torch.sin(math.pi * t)

    def _t_of_log_snr(self, lam):
        return (2.0 / math.pi) * torch.atan(torch.exp(-0.5 * lam))


@pytest.mark.parametrize("ends", [{}, dict(log_snr_min=-INF, log_snr_max=INF)], ids=["clamped", "unclamped"])
def test_check_schedule_probes_the_float_ends(ends):
    """check_schedule gives users' schedules the same end checks: the naive form fails them
    (float32 NaN at t = 1; unclamped, lambda(1) = -74.7 instead of -inf in float64)."""
    check_schedule(dd.Cosine(**ends))
    with pytest.raises(AssertionError, match="NaN|log_snr_min|float32"):
        check_schedule(NaiveCosine(**ends))
