"""Time draws: ranges, reproducibility, and the defining structure of each variant."""

from __future__ import annotations

import pytest
import torch

from discdiff import time_sampling as ts


@pytest.mark.parametrize("draw", [ts.uniform, ts.stratified, ts.antithetic])
def test_range_shape_dtype_and_seed(draw):
    a = draw((4, 7), t_min=0.1, t_max=0.6, generator=torch.Generator().manual_seed(3))
    b = draw((4, 7), t_min=0.1, t_max=0.6, generator=torch.Generator().manual_seed(3))
    assert a.shape == (4, 7) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert bool(((a >= 0.1) & (a <= 0.6)).all())
    assert draw(5, dtype=torch.float64, generator=torch.Generator()).dtype == torch.float64


def test_global_rng_untouched():
    state = torch.get_rng_state()
    for draw in (ts.uniform, ts.stratified, ts.antithetic):
        draw(10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())


def test_stratified_has_one_draw_per_stratum():
    n = 64
    t = ts.stratified(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    strata = torch.sort((t * n).floor().long()).values
    assert torch.equal(strata, torch.arange(n))
    assert not torch.equal((t * n).floor().long(), torch.arange(n))  # permuted, not in order


def test_antithetic_pairs_mirror():
    t = ts.antithetic(9, t_min=0.2, t_max=0.8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(t[:4] + t[4:8], torch.full((4,), 1.0, dtype=torch.float64))


@pytest.mark.parametrize("draw", [ts.uniform, ts.stratified, ts.antithetic])
def test_mean_is_unbiased(draw):
    t = draw(20_000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert abs(t.mean().item() - 0.5) < 5 * (1 / 12) ** 0.5 / 20_000**0.5


def test_bad_ranges():
    with pytest.raises(ValueError, match="t_min"):
        ts.uniform(3, t_min=0.7, t_max=0.2)
    with pytest.raises(ValueError, match="t_max"):
        ts.uniform(3, t_max=1.5)
    with pytest.raises(ValueError, match="shape"):
        ts.stratified((-1, 2))
