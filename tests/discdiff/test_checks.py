"""The shared validators of ``discdiff._checks``: one line naming the argument, the value and what
is accepted; ``TypeError`` for a wrong type, ``ValueError`` for a value out of range."""

from __future__ import annotations

import math

import pytest
import torch

from discdiff._checks import broadcast_base, check_finite_float, check_int, check_logits, top_logit


def test_check_int():
    assert check_int("steps", 3, lo=1) == 3
    assert check_int("n", -5) == -5
    with pytest.raises(ValueError, match=r"^steps must be an int >= 1, got 0$"):
        check_int("steps", 0, lo=1)
    with pytest.raises(ValueError, match=r"^k must be an int in \[1, 4\], got 5$"):
        check_int("k", 5, lo=1, hi=4)
    with pytest.raises(ValueError, match=r"^k must be an int <= 4, got 5$"):
        check_int("k", 5, hi=4)
    for bad in (True, 2.0, "2", None):
        with pytest.raises(TypeError, match=rf"^k must be an int >= 1, got {bad!r} \({type(bad).__name__}\)$"):
            check_int("k", bad, lo=1)


def test_check_finite_float():
    assert check_finite_float("p", 1, lo=0.0) == 1.0
    assert check_finite_float("end", -math.inf, allow_inf=True) == -math.inf
    with pytest.raises(ValueError, match="p must be finite, got inf"):
        check_finite_float("p", math.inf)
    with pytest.raises(ValueError, match="end must be a number, not NaN"):
        check_finite_float("end", math.nan, allow_inf=True)
    with pytest.raises(ValueError, match=r"p must be in \(0.0, 1.0\], got 0.0"):
        check_finite_float("p", 0.0, lo=0.0, hi=1.0, open_lo=True)
    with pytest.raises(TypeError, match="p must be a number, got True"):
        check_finite_float("p", True)


def test_broadcast_base_undoes_expand_only():
    lam = torch.arange(3.0).unsqueeze(-1).expand(3, 5)
    assert broadcast_base(lam).shape == (3, 1)
    assert torch.equal(broadcast_base(lam).expand(3, 5), lam)
    assert broadcast_base(torch.tensor(2.0).expand(4, 6)).shape == (1, 1)
    assert broadcast_base(torch.randn(3, 5)).shape == (3, 5)  # a materialized tensor stays whole


def test_top_logit_and_check_logits_ignore_the_mask_state():
    logits = torch.randn(2, 3, 5, generator=torch.Generator().manual_seed(0))
    for mask in (None, 0, 2, 4):
        keep = [j for j in range(5) if j != mask]
        torch.testing.assert_close(top_logit(logits, mask), logits[..., keep].amax(-1))
        check_logits("logits", logits, mask)
    bad = logits.clone()
    bad[1, 0, 2] = math.nan
    check_logits("logits", bad, 2)  # the mask logit is never used
    with pytest.raises(ValueError, match=r"logits are not finite: 1 values are NaN or \+inf \(first at batch 1, position 0\)"):
        check_logits("logits", bad, None)
    check_logits("logits", bad, None, validate=False)
    with pytest.raises(ValueError, match=r"first at index \(1, 0, 0\)"):
        check_logits("logits", bad[..., None, :].expand(2, 3, 1, 5), None)
