"""discdiff.testing: the checks accept every shipped family and reject broken ones, naming the
invariant; the strategies build valid objects."""

from __future__ import annotations

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
