"""discdiff.testing: the checks accept every shipped family and reject broken ones, naming the
invariant; the strategies build valid objects."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import discdiff as dd
from discdiff.testing import check_kernel, check_schedule
from discdiff.testing import strategies as dst


class WrongDerivative(dd.Hybrid):
    """pi' off by a factor 2: the ELBO weight is wrong, everything else right."""

    def dshare_logit(self, lam):
        return 2 * super().dshare_logit(lam)


class WrongTransition(dd.Uniform):
    """alpha_{t|s} computed as alpha_t * alpha_s."""

    def transition(self, lam_t, lam_s):
        alpha_ts, noise = super().transition(lam_t, lam_s)
        return alpha_ts * torch.sigmoid(lam_s) ** 2, noise


class LeakyNoise(dd.Masked):
    """Claims pure masking but corrupts into a clean state 1% of the time."""

    def sample_pi(self, lam, generator=None):
        draw = super().sample_pi(lam, generator)
        leak = torch.rand(lam.shape, generator=generator, dtype=torch.float64) < 0.01
        return torch.where(leak, torch.zeros_like(draw), draw)


class UnnormalizedPi(dd.Uniform):
    def pi(self, lam):
        return 1.01 * super().pi(lam)


@pytest.mark.parametrize(
    "kernel, invariant",
    [
        (WrongDerivative(5, 4, shift=0.5, scale=1.0), "dpi matches finite differences"),
        (WrongTransition(4), "transition matches the oracle"),
        (LeakyNoise(5, 4), "corrupt matches the marginal"),
        (UnnormalizedPi(4), "marginal sums to 1"),
    ],
    ids=["derivative", "transition", "corrupt", "normalization"],
)
def test_check_kernel_names_the_broken_invariant(kernel, invariant):
    with pytest.raises(AssertionError, match=invariant):
        check_kernel(kernel, tightness=False)


def test_check_kernel_catches_a_weight_wrong_only_on_clean_tokens():
    """A weight wrong only where z = x (the rarest case in a corrupt batch) is still caught."""

    class WrongCleanWeight(dd.Uniform):
        def weight(self, x, z, lam):
            w = super().weight(x, z, lam)
            return torch.where(z == x, 2 * w, w)

    with pytest.raises(AssertionError, match="weight matches the oracle"):
        check_kernel(WrongCleanWeight(4))


@dataclass(frozen=True, kw_only=True)
class WrongSlope(dd.LinearAlpha):
    def _dlog_snr_dt(self, t):
        return -1.0 / t


@dataclass(frozen=True, kw_only=True)
class WrongInverse(dd.Cosine):
    def _t_of_log_snr(self, lam):
        return torch.sigmoid(-lam)


@dataclass(frozen=True, kw_only=True)
class Increasing(dd.LinearLogSNR):
    def _log_snr(self, t):
        return self.log_snr_min + (self.log_snr_max - self.log_snr_min) * t


@pytest.mark.parametrize(
    "schedule, invariant",
    [
        (WrongSlope(), "dlog_snr_dt matches finite differences"),
        (WrongInverse(), "t_of_log_snr inverts log_snr"),
        (Increasing(), "non-increasing"),
    ],
    ids=["slope", "inverse", "monotone"],
)
def test_check_schedule_names_the_broken_invariant(schedule, invariant):
    with pytest.raises(AssertionError, match=invariant):
        check_schedule(schedule)


def test_check_kernel_refuses_large_vocabularies():
    with pytest.raises(ValueError, match="small vocabulary"):
        check_kernel(dd.Uniform(1000))


@given(kernel=dst.kernels(), data=st.data())
def test_strategies_build_valid_objects(kernel, data):
    x = data.draw(dst.token_batches(kernel))
    assert x.dtype == torch.int64 and x.dim() == 2
    if kernel.mask_id is not None:
        assert not bool((x == kernel.mask_id).any())
    assert bool(((x >= 0) & (x < kernel.vocab_size)).all())
    lam = data.draw(dst.log_snr_for(x))
    assert lam.dtype == torch.float64 and bool(((lam >= -9) & (lam <= 9)).all())
    lam_t, lam_s = data.draw(dst.log_snr_pairs())
    assert lam_t <= lam_s
    assert isinstance(data.draw(dst.schedules()), dd.Schedule)


# -- schedules with a finite natural range -------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Narrow(dd.Schedule):
    """A user schedule whose unclamped lambda(t) = 5 - 10 t only spans [-5, 5], with an inverse that
    refuses anything outside that range (as a user's might)."""

    def _log_snr(self, t):
        return 5.0 - 10.0 * t

    def _dlog_snr_dt(self, t):
        return torch.full_like(t, -10.0)

    def _t_of_log_snr(self, lam):
        if bool(((lam < -5.0) | (lam > 5.0)).any()):
            raise ValueError("lambda outside [-5, 5]")
        return (5.0 - lam) / 10.0


@pytest.mark.parametrize("ends, invariant", [
    ({}, r"log_snr\(0\) = log_snr_max"),                                     # clamp [-9, 9] never reached
    (dict(log_snr_min=-math.inf, log_snr_max=math.inf), r"log_snr\(0\) = log_snr_max"),
    (dict(log_snr_min=-5.0, log_snr_max=6.0), r"log_snr\(0\) = log_snr_max"),
], ids=["default-clamp", "unclamped", "wider-above"])
def test_check_schedule_reports_a_finite_natural_range_as_an_invariant(ends, invariant):
    """It raised the schedule's own ValueError (from the inverse on [-9, 9]) instead of naming what failed."""
    with pytest.raises(AssertionError, match=invariant):
        check_schedule(Narrow(**ends))


def test_check_schedule_accepts_a_natural_range_that_is_its_clamp():
    check_schedule(Narrow(log_snr_min=-5.0, log_snr_max=5.0))


def test_check_schedule_reports_errors_raised_by_the_schedule():
    @dataclass(frozen=True, kw_only=True)
    class RaisingInverse(dd.LinearAlpha):
        def _t_of_log_snr(self, lam):
            raise RuntimeError("not implemented yet")

    with pytest.raises(AssertionError, match="t_of_log_snr is defined.*RuntimeError: not implemented yet"):
        check_schedule(RaisingInverse())


# -- kernels: what a family defines is checked first ------------------------------------------------------
class Float32Pi(dd.Hybrid):
    """pi (and so everything) computed in float32 even for float64 lambda."""

    def pi(self, lam):
        return super().pi(lam.float())


class WrongShapePi(dd.Uniform):
    def pi(self, lam):
        return super().pi(lam).reshape(-1, self.vocab_size)


@pytest.mark.parametrize("kernel, invariant", [
    (Float32Pi(5, 4), "pi returns lambda's dtype.*pi returned torch.float32 for float64 lambda"),
    (WrongShapePi(4), r"pi has shape \[\*lam.shape, V\]"),
], ids=["dtype", "shape"])
def test_check_kernel_checks_the_definition_first(kernel, invariant):
    """A float32 pi was reported as 'marginal sums to 1' (off by ~1e-8)."""
    with pytest.raises(AssertionError, match=invariant):
        check_kernel(kernel, tightness=False)


# -- strategies: user families, every public strategy documented ------------------------------------------
class Annealed(dd.Kernel):
    """A user family with only pi and dpi: s u + (1 - s) e_0 with s = sigmoid(lambda), no mask."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size, self.mask_id = vocab_size, None

    def _parts(self, lam):
        s = torch.sigmoid(lam).unsqueeze(-1)
        u = torch.full((self.vocab_size,), 1.0 / self.vocab_size, dtype=lam.dtype, device=lam.device)
        e0 = torch.zeros_like(u)
        e0[0] = 1.0
        return s, u, e0

    def pi(self, lam):
        s, u, e0 = self._parts(lam)
        return s * u + (1 - s) * e0

    def dpi(self, lam):
        s, u, e0 = self._parts(lam)
        return s * (1 - s) * (u - e0)


@given(data=st.data())
def test_kernels_strategy_accepts_user_families(data):
    """Only built-in names were accepted (anything else silently became a Prior kernel)."""
    family, kind = data.draw(st.sampled_from([
        (Annealed, Annealed),                                                           # V -> Kernel
        (st.builds(Annealed, st.integers(2, 6)), Annealed),                             # a strategy
        (lambda V: st.builds(dd.Masked, st.just(V), st.integers(0, V - 1)), dd.Masked),  # V -> strategy
    ]))
    kernel = data.draw(dst.kernels(families=(family,)))
    assert type(kernel) is kind
    mixed = data.draw(dst.kernels(vocab_size=5, families=("masked", Annealed)))
    assert type(mixed) in (dd.Masked, Annealed) and mixed.vocab_size == 5


def test_kernels_strategy_rejects_bad_families():
    from hypothesis import find

    with pytest.raises(ValueError, match="unknown kernel family 'uniformm'"):
        find(dst.kernels(families=("uniformm",)), lambda k: True)
    with pytest.raises(TypeError, match="not a discdiff Kernel"):
        find(dst.kernels(families=(lambda V: "a kernel",)), lambda k: True)
    with pytest.raises(ValueError, match="vocab_size=5"):
        find(dst.kernels(vocab_size=5, families=(lambda V: dd.Uniform(3),)), lambda k: True)


def test_every_public_strategy_is_documented():
    for name in dst.__all__:
        doc = getattr(dst, name).__doc__ or ""
        assert len(doc.split()) >= 8, f"discdiff.testing.strategies.{name} has no real docstring"


@given(data=st.data())
def test_documented_strategies_draw_what_they_say(data):
    V = data.draw(dst.vocab_sizes())
    p = data.draw(dst.prior_probs(V))
    assert p.dtype == torch.float64 and p.shape == (V,) and bool((p >= 0).all())
    torch.testing.assert_close(p.sum(), torch.ones((), dtype=torch.float64))
    logits = data.draw(dst.logits((2, 3, V), scale=2.0))
    assert logits.shape == (2, 3, V) and logits.dtype == torch.float64 and bool(torch.isfinite(logits).all())
