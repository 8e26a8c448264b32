"""Samplers: every step rule against an independent oracle.

Oracles: ``Dense.of(kernel).posterior`` (Bayes' rule over explicit matrices) for Ancestral;
the exact one-step matrix of the tau-leaping (CTMC Euler) rule built from the reverse rates with
``Dense``'s finite-difference ``pi'``; exact transport of the marginals of a constant predictor;
closed forms for grids and filters; the streamed ``x_hat`` against a dense float64 filter (ties
decided by value), top-p's radix select against a sort, and a dispatch mode that sizes every
tensor a step creates.  Statistical checks compare counts from one batched draw
with the exact probabilities, entry by entry, within 5 standard errors plus a 1.5-count
continuity allowance (``assert_frequencies``), and with a chi-square bound (Wilson-Hilferty
quantile at z = 5).  Every draw uses an explicit seeded ``torch.Generator``.
"""

from __future__ import annotations

import bisect
import math
import random
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

import discdiff as dd
from discdiff.samplers import (
    Adaptive,
    Ancestral,
    Confidence,
    Denoised,
    Filters,
    Greedy,
    TauLeaping,
    check_grid,
    cosine_grid,
    inverse_cdf_draw,
    linear_alpha_grid,
    sample,
    schedule_grid,
)
from discdiff.samplers import categorical
from discdiff.samplers.categorical import ordered_keys, top_p_threshold

F64 = torch.float64
INF = math.inf
ZERO = 1e-12  # an oracle probability below this is an exact zero up to solver round-off


# ----------------------------------------------------------------------------- helpers
def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _unigram(V: int, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(V, generator=_gen(seed), dtype=F64), 0)


def _logits(V: int, seed: int, shape: tuple[int, ...] = (), scale: float = 1.5) -> torch.Tensor:
    return scale * torch.randn(*shape, V, generator=_gen(seed), dtype=F64)


def _x_hat(logits: torch.Tensor, mask_id: int | None, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(logits / T)`` with the mask state removed: the test's own oracle."""
    lg = logits.to(F64) / temperature
    if mask_id is not None:
        lg = lg.clone()
        lg[..., mask_id] = -INF
    return torch.softmax(lg, -1)


def _argmax_no_mask(logits: torch.Tensor, mask_id: int | None) -> torch.Tensor:
    lg = logits.clone()
    if mask_id is not None:
        lg[..., mask_id] = -INF
    return lg.argmax(-1)


def _chi2_bound(df: int, z: float = 5.0) -> float:
    """Wilson-Hilferty upper quantile of chi-square(df) at a standard-normal z (z=5: p ~ 3e-7)."""
    return df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3


def assert_frequencies(counts: torch.Tensor, probs: torch.Tensor, n: int | torch.Tensor, what: str = "",
                       chi2: bool = False) -> None:
    """``counts[..., K]`` of ``n`` draws (per row) against exact ``probs[..., K]``: no draw where the
    probability is 0; every entry within 5 standard errors (+1.5 counts); optionally each row's
    chi-square statistic under its z = 5 bound."""
    counts = counts.to(F64)
    probs = probs.to(F64).clamp_min(0.0)
    n = torch.as_tensor(n, dtype=F64)
    if n.dim() == 1:
        n = n.unsqueeze(-1)
    never = probs <= ZERO
    assert not bool((counts[never] > 0).any()), f"{what}: drew a state of probability 0\n{counts}\n{probs}"
    freq = counts / n
    tol = 5 * torch.sqrt(probs * (1 - probs) / n) + 1.5 / n
    bad = (freq - probs).abs() > tol
    assert not bool(bad.any()), f"{what}: frequencies off by more than 5 SE\nfreq={freq}\nprobs={probs}"
    if chi2:
        for c, p, m, nn in zip(counts.reshape(-1, counts.shape[-1]), probs.reshape(-1, probs.shape[-1]),
                               (~never).reshape(-1, never.shape[-1]), n.expand(*counts.shape[:-1], 1).reshape(-1)):
            if int(m.sum()) < 2:
                continue
            expected = nn * p[m]
            stat = float(((c[m] - expected) ** 2 / expected).sum())
            assert stat < _chi2_bound(int(m.sum()) - 1), f"{what}: chi-square {stat} too large"


def _counts(tokens: torch.Tensor, V: int) -> torch.Tensor:
    return torch.bincount(tokens.reshape(-1), minlength=V)


def _tau_matrix(kernel, x0: torch.Tensor, lam_t: float, lam_s: float) -> torch.Tensor:
    """The exact one-step matrix ``T[z_t, z_s]`` of the Euler (tau-leaping) step of the reverse CTMC.

    Rate out of ``z`` to ``j != z`` per unit log-SNR: ``R_j = beta_t (pi_t - pi'_t)(z) q_t(j|x_hat) / q_t(z|x_hat)``
    (the ``s -> t`` limit of Bayes' rule, since ``q_{t|s}(z|j) ~ h beta_t (pi - pi')(z)``); the
    step moves with probability ``min(1, h sum_j R_j / (1 - q_t(z)))`` i.e. ``T[z, j] = p q_t(j)``
    off the diagonal with ``p = min(1, h beta_t (pi - pi')(z) / q_t(z))``.  ``pi'`` comes from
    ``Dense``'s finite differences, not the kernel's closed form.
    """
    d = dd.Dense.of(kernel)
    h = lam_s - lam_t
    q_t = d.marginal_of_probs(x0, lam_t)
    out = torch.sigmoid(torch.tensor(-lam_t, dtype=F64)) * (d.pi(lam_t) - d.dpi(lam_t))
    p_move = torch.where(q_t > 0, (h * out / torch.where(q_t > 0, q_t, 1.0)).clamp(0.0, 1.0), torch.zeros_like(q_t))
    T = p_move.unsqueeze(-1) * q_t.unsqueeze(0)
    T.diagonal().copy_(1 - p_move * (1 - q_t))
    return T


def _draw_x(p0: torch.Tensor, shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    return torch.multinomial(p0, math.prod(shape), replacement=True, generator=gen).reshape(shape)


def _constant_denoiser(log_p0: torch.Tensor):
    return lambda z: log_p0.expand(*z.shape, log_p0.shape[-1])


ANCESTRAL_KERNELS = [
    dd.Uniform(5),
    dd.Masked(6, 2),
    dd.Hybrid(6, 5, shift=0.0, scale=1.0),
    dd.Hybrid(7, 3, shift=2.0, scale=0.5),
    dd.Hybrid(5, 0, shift=-1.0, scale=0.0),
    dd.GIDD(6, 5, p_uniform=0.2),
    dd.Prior(_unigram(6)),
    dd.Prior(torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=F64)),
]
LAM_PAIRS = [(-INF, -1.0), (-2.0, 0.5), (0.5, 0.9), (1.0, 4.0)]


# ----------------------------------------------------------------------------- 1. Ancestral step
@pytest.mark.parametrize("lam_t, lam_s", LAM_PAIRS)
@pytest.mark.parametrize("kernel", ANCESTRAL_KERNELS, ids=repr)
def test_ancestral_step_matches_dense_posterior(kernel, lam_t, lam_s):
    V, n = kernel.vocab_size, 20_000
    logits = _logits(V, seed=V * 7 + 1)
    x0 = _x_hat(logits, kernel.mask_id)
    post = dd.Dense.of(kernel).posterior(x0, lam_t, lam_s)  # [z_t, z_s]
    reachable = torch.nonzero(post.sum(-1) > 0.5).squeeze(-1)
    assert reachable.numel() >= 1  # from the all-mask prior only the mask is reachable
    # the closed form agrees with the matrix oracle on every reachable z_t
    closed = kernel.posterior(x0.expand(V, V), torch.arange(V), torch.full((V,), lam_t, dtype=F64),
                              torch.full((V,), lam_s, dtype=F64))
    torch.testing.assert_close(closed[reachable], post[reachable], atol=1e-12, rtol=0)
    # one batched step: row r holds n copies of z_t = reachable[r]
    z_t = reachable.unsqueeze(-1).expand(-1, n).contiguous()
    z_s = Ancestral(kernel).step(logits.expand(*z_t.shape, V), z_t, torch.tensor(lam_t, dtype=F64),
                                 torch.tensor(lam_s, dtype=F64), generator=_gen(11))
    assert z_s.shape == z_t.shape and z_s.dtype == z_t.dtype
    counts = torch.stack([_counts(row, V) for row in z_s])
    assert_frequencies(counts, post[reachable], n, what=f"{kernel!r} {lam_t}->{lam_s}")


@pytest.mark.parametrize("kernel", ANCESTRAL_KERNELS, ids=repr)
def test_ancestral_zero_step_is_identity(kernel):
    V = kernel.vocab_size
    z_t = torch.randint(0, V, (8, 64), generator=_gen(3))
    choices = torch.tensor([-INF, -3.0, 0.0, 2.5, 9.0, INF], dtype=F64)
    lam = choices[torch.randint(0, len(choices), (8, 64), generator=_gen(4))]  # per token, ends included
    out = Ancestral(kernel).step(_logits(V, 5, (8, 64)), z_t, lam, lam.clone(), generator=_gen(6))
    assert torch.equal(out, z_t)


# ----------------------------------------------------------------------------- 2. full ancestral run
FULL_RUN_KERNELS = [
    dd.Uniform(5),
    dd.Masked(6, 2),
    dd.Hybrid(6, 5, shift=0.0, scale=1.0),
    dd.Hybrid(7, 3, shift=2.0, scale=0.5),
    dd.GIDD(6, 5, p_uniform=0.2),
    dd.Prior(_unigram(6, seed=3)),
]


@pytest.mark.parametrize("kernel", FULL_RUN_KERNELS, ids=repr)
def test_ancestral_run_from_prior_transports_constant_predictor(kernel):
    """With ``x_hat = p0`` everywhere the ancestral chain started at the prior has marginal
    ``q_lambda(. | p0)`` after every step (docs/math.md, "Invariants", 4), hence ~p0 at the end."""
    V, shape = kernel.vocab_size, (5, 10_000)
    n = math.prod(shape)
    log_p0 = torch.log(_x_hat(_logits(V, 21), kernel.mask_id))  # -inf at the mask
    p0 = log_p0.exp()
    grid = torch.cat([torch.tensor([-INF], dtype=F64), linear_alpha_grid(8, log_snr_min=-30.0, log_snr_max=30.0)])
    gen = _gen(22)
    canvas = kernel.corrupt(_draw_x(p0, shape, gen), torch.tensor(-INF, dtype=F64), generator=gen)
    dense = dd.Dense.of(kernel)
    assert_frequencies(_counts(canvas, V), dense.pi(-INF), n, what="prior canvas")

    def check(info):
        want = dense.marginal_of_probs(p0, info.lam_s)
        assert_frequencies(_counts(info.after, V), want, n, what=f"after step {info.index}", chi2=True)

    out = sample(_constant_denoiser(log_p0), Ancestral(kernel), canvas, grid, generator=gen, callback=check)
    final = dense.marginal_of_probs(p0, grid[-1])
    assert float((final - p0).abs().max()) < 2e-4  # alpha = 1 - 1e-4 at the end of the grid
    counts = _counts(out.tokens, V)
    assert_frequencies(counts, final, n, what="final", chi2=True)
    # ~p0 itself: a kernel with a mask keeps ~1e-4 of the positions masked at alpha = 1 - 1e-4
    clean = torch.ones(V, dtype=torch.bool) if kernel.mask_id is None else torch.arange(V) != kernel.mask_id
    if kernel.mask_id is not None:
        assert int(counts[kernel.mask_id]) <= n * 1e-4 + 5 * math.sqrt(n * 1e-4) + 2
    assert_frequencies(counts[clean], p0[clean], n, what="final vs p0")


# ----------------------------------------------------------------------------- 3. tau-leaping
TAU_KERNELS = [dd.Uniform(5), dd.Masked(6, 2), dd.Hybrid(6, 5, shift=0.0, scale=1.0), dd.GIDD(6, 5, p_uniform=0.3)]


@pytest.mark.parametrize("lam_t, lam_s", [(0.0, 0.1), (-2.0, 3.0)])  # small step; large step (clamped)
@pytest.mark.parametrize("kernel", TAU_KERNELS, ids=repr)
def test_tau_leaping_step_matches_its_exact_matrix(kernel, lam_t, lam_s):
    V, n = kernel.vocab_size, 20_000
    logits = _logits(V, 31)
    x0 = _x_hat(logits, kernel.mask_id)
    T = _tau_matrix(kernel, x0, lam_t, lam_s)
    reachable = torch.nonzero(dd.Dense.of(kernel).marginal_of_probs(x0, lam_t) > 0).squeeze(-1)
    torch.testing.assert_close(T.sum(-1), torch.ones(V, dtype=F64))
    assert bool((T >= 0).all())
    z_t = reachable.unsqueeze(-1).expand(-1, n).contiguous()
    z_s = TauLeaping(kernel).step(logits.expand(*z_t.shape, V), z_t, torch.tensor(lam_t, dtype=F64),
                                  torch.tensor(lam_s, dtype=F64), generator=_gen(32))
    counts = torch.stack([_counts(row, V) for row in z_s])
    assert_frequencies(counts, T[reachable], n, what=f"tau {kernel!r} {lam_t}->{lam_s}")


@pytest.mark.parametrize("kernel", TAU_KERNELS, ids=repr)
def test_tau_leaping_is_first_order_in_the_step(kernel):
    """``T_tau(h) - P_exact(h) = O(h^2)`` (exact matrices; halving h quarters the error), and the
    off-diagonal ``T_tau(h) / h`` is the reverse rate, the derivative of the exact posterior."""
    V = kernel.vocab_size
    x0 = _x_hat(_logits(V, 33), kernel.mask_id)
    d = dd.Dense.of(kernel)
    reach = d.marginal_of_probs(x0, 0.3) > 0
    errs = []
    for h in (0.08, 0.04, 0.02, 0.01):
        diff = (_tau_matrix(kernel, x0, 0.3, 0.3 + h) - d.posterior(x0, 0.3, 0.3 + h))[reach]
        errs.append(float(diff.abs().max()))
    assert errs[0] > 1e-6
    for a, b in zip(errs, errs[1:]):
        assert 3.0 < a / b < 5.0, errs


def _tau_exact_final(kernel, p0, grid) -> torch.Tensor:
    d = dd.Dense.of(kernel)
    m = d.marginal_of_probs(p0, grid[0])
    for lt, ls in zip(grid[:-1].tolist(), grid[1:].tolist()):
        m = m @ _tau_matrix(kernel, p0, lt, ls)
    return m


@pytest.mark.parametrize("kernel", [dd.Uniform(5), dd.Hybrid(6, 5, shift=0.0, scale=1.0)], ids=repr)
def test_tau_leaping_run_converges_with_more_steps(kernel):
    V, shape = kernel.vocab_size, (4, 8_000)
    n = math.prod(shape)
    log_p0 = torch.log(_x_hat(_logits(V, 41, scale=2.0), kernel.mask_id))
    p0 = log_p0.exp()
    tv_exact, tv_emp = {}, {}
    for steps in (4, 64):
        grid = linear_alpha_grid(steps, log_snr_min=-30.0, log_snr_max=30.0)
        want = _tau_exact_final(kernel, p0, grid)
        target = dd.Dense.of(kernel).marginal_of_probs(p0, grid[-1])
        tv_exact[steps] = 0.5 * float((want - target).abs().sum())
        gen = _gen(42 + steps)
        canvas = kernel.corrupt(_draw_x(p0, shape, gen), grid[0], generator=gen)
        out = sample(_constant_denoiser(log_p0), TauLeaping(kernel), canvas, grid, generator=gen).tokens
        counts = _counts(out, V)
        assert_frequencies(counts, want, n, what=f"tau-leaping {steps} steps", chi2=True)
        tv_emp[steps] = 0.5 * float((counts / n - p0).abs().sum())
    # the exact bias shrinks far more than the sampling noise in TV (~0.005 at n = 32k, V <= 6)
    assert tv_exact[4] > 0.05 and tv_exact[64] < 0.5 * tv_exact[4], tv_exact
    assert tv_emp[64] < tv_emp[4], tv_emp
    # and asymptotically at first order: 4x the steps, ~1/4 of the bias (exact matrices only)
    grid = linear_alpha_grid(256, log_snr_min=-30.0, log_snr_max=30.0)
    tv_256 = 0.5 * float((_tau_exact_final(kernel, p0, grid) - dd.Dense.of(kernel).marginal_of_probs(p0, grid[-1]))
                         .abs().sum())
    assert 3.0 < tv_exact[64] / tv_256 < 5.0, (tv_exact, tv_256)


# ----------------------------------------------------------------------------- 4. frozen, seeds, RNG
MASK_KERNEL = dd.Masked(7, 3)
HYBRID_KERNEL = dd.Hybrid(7, 6, shift=0.0, scale=1.0)
RULES = [
    Ancestral(HYBRID_KERNEL),
    Ancestral(dd.Uniform(7), top_k=3),
    TauLeaping(dd.Uniform(7)),
    TauLeaping(HYBRID_KERNEL),
    Adaptive(dd.Uniform(7), tokens_per_step=3),
    Adaptive(MASK_KERNEL, tokens_per_step=2),
    Greedy(MASK_KERNEL),
    Confidence(MASK_KERNEL, tokens_per_step=2),
    Confidence(MASK_KERNEL),
    Confidence(MASK_KERNEL, by_confidence=False),
]


@given(rule=st.sampled_from(RULES), seed=st.integers(0, 2**31 - 1), p_frozen=st.floats(0.0, 1.0),
       temperature=st.sampled_from([0.0, 0.7, 1.0]))
def test_frozen_positions_never_change(rule, seed, p_frozen, temperature):
    V, shape = 7, (4, 16)
    gen = _gen(seed)
    z_t = torch.randint(0, V, shape, generator=gen)
    frozen = torch.rand(shape, generator=gen) < p_frozen
    logits = 3.0 * torch.randn(*shape, V, generator=gen, dtype=F64)
    out = rule.step_info(logits, z_t, torch.tensor(-1.0, dtype=F64), torch.tensor(2.0, dtype=F64), frozen,
                         temperature, gen)
    assert torch.equal(out.tokens[frozen], z_t[frozen])
    assert not bool((out.selected & frozen).any())
    assert out.tokens.shape == z_t.shape and out.tokens.dtype == z_t.dtype


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_seeded_and_global_rng_untouched(rule):
    V, shape = 7, (6, 32)
    z_t = torch.randint(0, V, shape, generator=_gen(51))
    frozen = torch.rand(shape, generator=_gen(52)) < 0.3
    logits = _logits(V, 53, shape, scale=1.0)
    lam_t, lam_s = torch.tensor(-1.0, dtype=F64), torch.tensor(1.0, dtype=F64)
    state = torch.get_rng_state()
    a = rule.step(logits, z_t, lam_t, lam_s, frozen, generator=_gen(54))
    b = rule.step(logits, z_t, lam_t, lam_s, frozen, generator=_gen(54))
    assert torch.equal(a, b)
    grid = linear_alpha_grid(5)
    out1 = sample(lambda z: _logits(V, 55, tuple(z.shape), scale=1.0), rule, z_t, grid, frozen, generator=_gen(56))
    out2 = sample(lambda z: _logits(V, 55, tuple(z.shape), scale=1.0), rule, z_t, grid, frozen, generator=_gen(56))
    assert torch.equal(out1.tokens, out2.tokens)
    assert torch.equal(out1.tokens[frozen], z_t[frozen])  # frozen through a whole run
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was used"
    if not isinstance(rule, Greedy):  # stochastic rules depend on the seed (overwhelmingly likely here)
        c = rule.step(logits, z_t, lam_t, lam_s, frozen, generator=_gen(57))
        d = rule.step(logits, z_t, lam_t, lam_s, frozen, generator=_gen(58))
        assert not torch.equal(c, d)
        assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- 5. greedy
def test_greedy_is_argmax_without_mask_and_deterministic():
    V, m, shape = 9, 4, (5, 40)
    logits = _logits(V, 61, shape)
    logits[..., m] = logits.max(-1).values + 5.0  # the mask logit is the largest everywhere
    z_t = torch.randint(0, V, shape, generator=_gen(62))
    want = _argmax_no_mask(logits, m)
    assert not bool((want == m).any())
    rule = Greedy(dd.Masked(V, m))
    for T, seed in [(1.0, 1), (0.0, 2), (2.5, 3)]:
        out = rule.step_info(logits, z_t, torch.tensor(-5.0, dtype=F64), torch.tensor(5.0, dtype=F64),
                             temperature=T, generator=_gen(seed))
        assert torch.equal(out.tokens, want)
        assert bool(out.selected.all())
    # without a mask id the plain argmax, mask logit included
    assert torch.equal(Greedy().step(logits, z_t, torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64)),
                       logits.argmax(-1))


def test_greedy_takes_a_kernel_like_every_other_rule():
    """Greedy(kernel) failed at the first step with an unrelated message; it now excludes the
    kernel's mask and checks the vocabulary.  Greedy(int) still works, with a DeprecationWarning."""
    V, m, shape = 9, 4, (5, 40)
    logits = _logits(V, 63, shape)
    logits[..., m] = logits.max(-1).values + 5.0
    z_t = torch.randint(0, V, shape, generator=_gen(64))
    lt, ls = torch.tensor(-5.0, dtype=F64), torch.tensor(5.0, dtype=F64)
    rule = Greedy(dd.Hybrid(V, m))
    assert torch.equal(rule.step(logits, z_t, lt, ls), _argmax_no_mask(logits, m))
    assert repr(rule) == f"Greedy({dd.Hybrid(V, m)!r})"
    assert torch.equal(Greedy(dd.Uniform(V)).step(logits, z_t, lt, ls), logits.argmax(-1))
    with pytest.raises(ValueError, match="vocabulary 9 but the kernel has 10 states"):
        Greedy(dd.Masked(10, m)).step(logits, z_t, lt, ls)
    with pytest.warns(DeprecationWarning, match="Greedy\\(kernel\\)"):
        old = Greedy(m)
    assert torch.equal(old.step(logits, z_t, lt, ls), _argmax_no_mask(logits, m))
    with pytest.warns(DeprecationWarning, match="Greedy\\(kernel\\)"):
        assert Greedy(mask_id=m).mask_id == m
    with pytest.raises(TypeError, match="Kernel"):
        Greedy("masked")


# ----------------------------------------------------------------------------- 6. adaptive
ADAPTIVE_KERNELS = [
    dd.Uniform(6),
    dd.Masked(6, 0),
    dd.Hybrid(6, 5, shift=1.0, scale=0.0),   # a fixed mix: the prior has mask and uniform mass
    dd.Hybrid(6, 5, shift=0.0, scale=1.0),   # all-mask prior
    dd.GIDD(6, 5, p_uniform=0.3),
    dd.Prior(_unigram(6, seed=9)),
]


def _adaptive_case(kernel, seed):
    V, B, S = kernel.vocab_size, 12, 10
    gen = _gen(seed)
    z_t = torch.randint(0, V, (B, S), generator=gen)
    frozen = torch.rand(B, S, generator=gen) < 0.35
    frozen[0] = True                       # nothing to select
    frozen[1] = True
    frozen[1, 3] = False                   # one unfrozen position < k
    frozen[2] = False                      # everything open
    logits = 2.0 * torch.randn(B, S, V, generator=gen, dtype=F64)
    return z_t, frozen, logits


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("kernel", ADAPTIVE_KERNELS, ids=repr)
def test_adaptive_selects_top_k_generalized_confidence(kernel, k):
    z_t, frozen, logits = _adaptive_case(kernel, seed=70 + k)
    # the oracle confidence pi_prior(z) (max x_hat - x_hat_z), pi_prior = pi at lambda = -inf
    pi_prior = dd.Dense.of(kernel).pi(-INF)
    x0 = _x_hat(logits, kernel.mask_id)
    conf = pi_prior[z_t] * (x0.max(-1).values - x0.gather(-1, z_t.unsqueeze(-1)).squeeze(-1))
    rule = Adaptive(kernel, tokens_per_step=k)
    torch.testing.assert_close(rule.confidence(logits, z_t), conf, atol=1e-12, rtol=0)
    lam_t, lam_s = torch.tensor(-1.0, dtype=F64), torch.tensor(0.0, dtype=F64)
    out = rule.step_info(logits, z_t, lam_t, lam_s, frozen, temperature=0.0, generator=_gen(1))
    again = rule.step_info(logits, z_t, lam_t, lam_s, frozen, temperature=0.0, generator=_gen(2))
    assert torch.equal(out.tokens, again.tokens) and torch.equal(out.selected, again.selected)
    sel = out.selected
    open_ = ~frozen
    # exactly min(k, #unfrozen positions that can improve): confidence 0 is never selected
    assert torch.equal(sel.sum(-1), torch.clamp((open_ & (conf > 0)).sum(-1), max=k))
    assert not bool((sel & frozen).any()) and bool((conf[sel] > 0).all())
    for row in range(z_t.shape[0]):
        chosen, rest = conf[row][sel[row]], conf[row][open_[row] & ~sel[row]]
        if chosen.numel() and rest.numel():
            assert float(chosen.min()) >= float(rest.max()) - 1e-12, f"row {row}: not the top-{k}"
    argmax = _argmax_no_mask(logits, kernel.mask_id)
    assert torch.equal(out.tokens[sel], argmax[sel])
    assert torch.equal(out.tokens[~sel], z_t[~sel])
    # tempered: same selection (untempered confidence), selected positions get non-mask draws
    hot = rule.step_info(logits, z_t, lam_t, lam_s, frozen, temperature=1.0, generator=_gen(3))
    assert torch.equal(hot.selected, sel)
    assert torch.equal(hot.tokens[~sel], z_t[~sel])
    if kernel.mask_id is not None:
        assert not bool((hot.tokens[sel] == kernel.mask_id).any())


def test_adaptive_exact_top_k_without_ties():
    """Uniform noise, distinct confidences: the selected set is exactly the top-k, and a position
    already at its argmax (confidence 0) is picked only after every positive one."""
    kernel, k = dd.Uniform(6), 3
    logits = _logits(6, 81, (4, 9), scale=2.0)
    z_t = torch.randint(0, 6, (4, 9), generator=_gen(82))
    x0 = _x_hat(logits, None)
    conf = (x0.max(-1).values - x0.gather(-1, z_t.unsqueeze(-1)).squeeze(-1)) / 6
    out = Adaptive(kernel, k).step_info(logits, z_t, torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64),
                                        temperature=0.0)
    want = torch.zeros_like(out.selected).scatter(-1, conf.topk(k, -1).indices, True)
    assert torch.equal(out.selected, want)


def test_adaptive_masked_confidence_only_on_masked_positions():
    kernel = dd.Masked(6, 0)
    z_t = torch.randint(0, 6, (8, 20), generator=_gen(91))
    logits = _logits(6, 92, (8, 20))
    conf = Adaptive(kernel, 2).confidence(logits, z_t)
    masked = z_t == 0
    assert bool(masked.any()) and bool((~masked).any())
    assert bool((conf[~masked] == 0).all())
    torch.testing.assert_close(conf[masked], _x_hat(logits, 0).max(-1).values[masked], atol=1e-12, rtol=0)
    # k no larger than the masked count in every row: only masked positions are written
    k = int(masked.sum(-1).min())
    out = Adaptive(kernel, k).step_info(logits, z_t, torch.tensor(0.0, dtype=F64), torch.tensor(1.0, dtype=F64),
                                        temperature=0.0)
    assert bool((out.selected <= masked).all())


# ----------------------------------------------------------------------------- 7. confidence (masked)
def _masked_case(m=3, V=7, B=6, S=20, seed=100):
    gen = _gen(seed)
    z_t = torch.randint(0, V - 1, (B, S), generator=gen)
    z_t = z_t + (z_t >= m).long()  # clean tokens, never the mask
    n_masked = [0, 1, 3, 8, 15, 20][:B]
    for row, nm in enumerate(n_masked):
        pos = torch.randperm(S, generator=gen)[:nm]
        z_t[row, pos] = m
    logits = 2.0 * torch.randn(B, S, V, generator=gen, dtype=F64)
    logits[..., m] = 10.0  # the mask logit is the largest: it must be excluded
    return z_t, logits


@pytest.mark.parametrize("k", [1, 4, 50])
def test_confidence_unmasks_min_k_most_confident(k):
    m = 3
    kernel = dd.Masked(7, m)
    z_t, logits = _masked_case(m)
    masked = z_t == m
    out = Confidence(kernel, tokens_per_step=k).step_info(logits, z_t, torch.tensor(-1.0, dtype=F64),
                                                          torch.tensor(0.0, dtype=F64), temperature=0.0)
    changed = out.tokens != z_t
    assert torch.equal(out.selected, changed)  # argmax is never the mask: every selected position changes
    assert bool((changed <= masked).all()), "a clean token changed"
    assert not bool((out.tokens[changed] == m).any())
    assert torch.equal(changed.sum(-1), torch.clamp(masked.sum(-1), max=k))
    argmax = _argmax_no_mask(logits, m)
    assert torch.equal(out.tokens[changed], argmax[changed])
    conf = _x_hat(logits, m).max(-1).values
    for row in range(z_t.shape[0]):
        chosen, rest = conf[row][changed[row]], conf[row][masked[row] & ~changed[row]]
        if chosen.numel() and rest.numel():
            assert float(chosen.min()) > float(rest.max())
    # tempered draws: still only masked positions, never to the mask, same counts
    hot = Confidence(kernel, tokens_per_step=k).step_info(logits, z_t, torch.tensor(-1.0, dtype=F64),
                                                          torch.tensor(0.0, dtype=F64), temperature=1.0,
                                                          generator=_gen(5))
    assert bool((hot.selected <= masked).all())
    assert torch.equal(hot.tokens[~hot.selected], z_t[~hot.selected])
    assert not bool((hot.tokens[hot.selected] == m).any())
    assert torch.equal(hot.selected.sum(-1), torch.clamp(masked.sum(-1), max=k))


def test_confidence_default_count_follows_mdlm_share():
    """Without tokens_per_step a step unmasks round(n_masked (alpha_s - alpha_t) / (1 - alpha_t)),
    per sequence (each row its own log-SNRs)."""
    m = 3
    kernel = dd.Masked(7, m)
    z_t, logits = _masked_case(m)
    masked = z_t == m
    a_t = [0.2, 0.05, 0.5, 0.31, 0.1, 0.0]
    a_s = [0.45, 0.9, 0.52, 0.77, 0.6, 0.33]
    lam_t = torch.tensor([math.log(a / (1 - a)) if a > 0 else -INF for a in a_t], dtype=F64)
    lam_s = torch.tensor([math.log(a / (1 - a)) for a in a_s], dtype=F64)
    out = Confidence(kernel).step_info(logits, z_t, lam_t, lam_s, temperature=0.0)
    want = []
    for nm, at, as_ in zip(masked.sum(-1).tolist(), a_t, a_s):
        x = nm * (as_ - at) / (1 - at)
        assert abs(x - math.floor(x) - 0.5) > 1e-6  # no rounding tie in the oracle
        want.append(round(x))
    assert out.selected.sum(-1).tolist() == want
    assert bool((out.selected <= masked).all())


def _remaining_after_grid(n: int, lams: list[float]) -> int:
    """The MDLM count recurrence n <- n - round(n (a_s - a_t) / (1 - a_t)), in plain Python."""
    sig = lambda x: 1.0 / (1.0 + math.exp(-x)) if x != INF else 1.0  # noqa: E731
    for lt, ls in zip(lams[:-1], lams[1:]):
        at, as_ = sig(lt), sig(ls)
        n -= round(n * (as_ - at) / (1 - at)) if at < 1 else n
    return n


def test_confidence_full_run_and_what_stays_masked():
    """A full run from an all-mask canvas.  The default linear grid ends at alpha = 1 - 1e-4, clamped
    to lambda = 9 (alpha = sigmoid(9) = 1 - 1.23e-4), so the last step unmasks only a share
    ``1 - 1.23e-4 / (1 - alpha_{N-1})`` of what is left: a small canvas ends fully unmasked, but a
    large one stepped coarsely keeps ~n * 1.2e-4 masks (1 of 10,000 and 2 of 20,000 in one step).  Appending
    lambda = +inf to the grid (alpha_s = 1) unmasks everything."""
    m = 3
    kernel = dd.Masked(7, m)
    rule = Confidence(kernel)
    den = lambda z: _logits(7, 111, tuple(z.shape))  # noqa: E731
    # independent grid: alpha = linspace(1e-4, 1 - 1e-4), lambda clamped to [-9, 9]
    for (B, S), steps, leftover in [((4, 64), 16, 0), ((1, 10_000), 1, 1), ((1, 20_000), 1, 2)]:
        lams = [min(9.0, max(-9.0, math.log(a / (1 - a))))
                for a in np.linspace(1e-4, 1 - 1e-4, steps + 1).tolist()]
        assert _remaining_after_grid(S, lams) == leftover
        canvas = torch.full((B, S), m, dtype=torch.long)
        out = sample(den, rule, canvas, linear_alpha_grid(steps), temperature=0.0).tokens
        assert ((out == m).sum(-1) == leftover).all()
        full = torch.cat([linear_alpha_grid(steps), torch.tensor([INF], dtype=F64)])
        out = sample(den, rule, canvas, full, temperature=0.0).tokens
        assert not bool((out == m).any())
        assert torch.equal(out, _argmax_no_mask(_logits(7, 111, (B, S)), m))


def test_confidence_random_positions():
    """``by_confidence=False``: the k unmasked positions are uniform among the masked ones
    (each with probability k / n_masked), whatever the confidences, and depend on the seed."""
    m, V, B, S, k = 3, 7, 20_000, 8, 2
    kernel = dd.Masked(V, m)
    z_t = torch.full((B, S), m, dtype=torch.long)
    z_t[:, 5] = 0  # one clean position per row
    logits = _logits(V, 121, (S,), scale=3.0).expand(B, S, V)  # the same confidence order in every row
    rule = Confidence(kernel, tokens_per_step=k, by_confidence=False)
    lam_t, lam_s = torch.tensor(-1.0, dtype=F64), torch.tensor(0.0, dtype=F64)
    sel = rule.step_info(logits, z_t, lam_t, lam_s, temperature=0.0, generator=_gen(122)).selected
    assert torch.equal(sel.sum(-1), torch.full((B,), k))
    assert not bool(sel[:, 5].any())
    probs = torch.full((S,), k / (S - 1), dtype=F64)
    probs[5] = 0.0
    counts = sel.sum(0)
    assert_frequencies(torch.stack([counts, B - counts], -1), torch.stack([probs, 1 - probs], -1), B,
                       what="random positions")
    again = rule.step_info(logits[:4], z_t[:4], lam_t, lam_s, temperature=0.0, generator=_gen(123)).selected
    other = rule.step_info(logits[:4], z_t[:4], lam_t, lam_s, temperature=0.0, generator=_gen(124)).selected
    same = rule.step_info(logits[:4], z_t[:4], lam_t, lam_s, temperature=0.0, generator=_gen(123)).selected
    assert torch.equal(again, same) and not torch.equal(again, other)


def test_confidence_needs_a_mask():
    with pytest.raises(ValueError, match="mask"):
        Confidence(dd.Uniform(5))
    with pytest.raises(ValueError, match="mask"):
        Confidence(dd.Prior(_unigram(5)))


# ----------------------------------------------------------------------------- 8. filters, draws
def _oracle_filter(probs: np.ndarray, top_k=None, top_p=None, min_p=None) -> np.ndarray:
    """Per row: the kept support by the textbook definitions, renormalized (float64 numpy)."""
    out = np.zeros_like(probs)
    for i, p in enumerate(probs):
        keep = p > 0
        order = np.argsort(-p, kind="stable")
        if top_k is not None:
            k_keep = np.zeros_like(keep)
            k_keep[order[:top_k]] = True
            keep &= k_keep
        if min_p is not None:
            keep &= p >= min_p * p.max()
        if top_p is not None:
            csum = np.cumsum(p[order])
            n_keep = int(np.searchsorted(csum, top_p - 1e-12, side="left")) + 1  # smallest prefix reaching p
            p_keep = np.zeros_like(keep)
            p_keep[order[:n_keep]] = True
            keep &= p_keep
        out[i] = np.where(keep, p, 0.0) / p[keep].sum()
    return out


@pytest.mark.parametrize("filters", [
    dict(top_k=1), dict(top_k=3), dict(top_k=11), dict(top_k=40),
    dict(top_p=0.05), dict(top_p=0.5), dict(top_p=0.9), dict(top_p=1.0),
    dict(min_p=0.0), dict(min_p=0.1), dict(min_p=0.5), dict(min_p=1.0),
    dict(top_k=5, min_p=0.2),
], ids=str)
@pytest.mark.parametrize("mask_id", [None, 4])
def test_filters_match_their_definitions(filters, mask_id):
    V = 20
    logits = _logits(V, 131, (64,), scale=2.0)
    x0 = Denoised(logits, mask_id, 1.0, Filters(**filters))
    got = x0.log_probs.exp()
    want = _oracle_filter(_x_hat(logits, mask_id).numpy(), **filters)
    torch.testing.assert_close(got, torch.from_numpy(want), atol=1e-12, rtol=0)
    if "top_k" in filters and "min_p" not in filters:
        n_support = (got > 0).sum(-1)
        assert bool((n_support == min(filters["top_k"], V - (mask_id is not None))).all())
    if mask_id is not None:
        assert bool((got[..., mask_id] == 0).all())


@pytest.mark.parametrize("T", [0.3, 1.0, 2.5])
def test_temperature_scaling(T):
    logits = _logits(9, 141, (16,), scale=2.0)
    for m in (None, 2):
        got = Denoised(logits, m, T).log_probs.exp()
        torch.testing.assert_close(got, _x_hat(logits, m, T), atol=1e-12, rtol=0)
        z = torch.randint(0, 9, (16,), generator=_gen(1))
        torch.testing.assert_close(Denoised(logits, m, T).prob_at(z), _x_hat(logits, m, T).gather(-1, z[:, None])[:, 0],
                                   atol=1e-12, rtol=0)


def test_temperature_zero_is_argmax():
    logits = _logits(9, 151, (16,), scale=2.0)
    logits[:, 2] = 50.0
    x0 = Denoised(logits, 2, 0.0)
    want = _argmax_no_mask(logits, 2)
    assert torch.equal(x0.sample(_gen(1)), want) and torch.equal(x0.sample(_gen(2)), want)
    assert torch.equal(x0.prob_at(want), torch.ones(16, dtype=F64))
    assert torch.equal(x0.max_prob(), torch.ones(16, dtype=F64))
    z = (want + 1) % 9
    assert torch.equal(x0.prob_at(z), torch.zeros(16, dtype=F64))


def test_ancestral_with_filters_draws_the_filtered_distribution():
    """From lambda = -inf to +inf an ancestral step is one draw from the filtered, tempered x_hat.
    30,000 draws over 10 ids: a bin's standard error is at most sqrt(0.25 / 30000) = 0.29
    percentage points, small against what a wrong filter does (a kept id dropped, a removed one
    drawn)."""
    V, n = 10, 30_000
    logits = _logits(V, 161, scale=2.0)
    kernel = dd.Hybrid(V, 7, shift=0.0, scale=1.0)
    probs = _x_hat(logits, 7, 0.7).numpy()[None]
    for kw in (dict(top_k=3), dict(top_p=0.8), dict(min_p=0.15)):
        want = torch.from_numpy(_oracle_filter(probs, **kw)[0])
        z_t = torch.full((4, n // 4), 7, dtype=torch.long)
        out = Ancestral(kernel, **kw).step(logits.expand(4, n // 4, V), z_t, torch.tensor(-INF, dtype=F64),
                                           torch.tensor(INF, dtype=F64), temperature=0.7, generator=_gen(162))
        assert_frequencies(_counts(out, V), want, n, what=str(kw), chi2=True)


def test_inverse_cdf_draw_frequencies_small_vocab():
    V, n = 7, 100_000
    probs = torch.tensor([0.3, 0.0, 0.25, 1e-3, 0.2, 0.149, 0.1], dtype=F64)
    out = inverse_cdf_draw(probs.log().expand(n, V), _gen(171), chunk=997)  # chunk boundaries exercised
    assert out.shape == (n,) and out.dtype == torch.long
    assert_frequencies(_counts(out, V), probs, n, what="inverse cdf", chi2=True)
    # float32 log-probs, batched shape
    out32 = inverse_cdf_draw(probs.log().float().expand(10, n // 10, V), _gen(172))
    assert out32.shape == (10, n // 10)
    assert_frequencies(_counts(out32, V), probs, n, what="inverse cdf float32")


VOCAB = 100_278


def test_inverse_cdf_draw_large_vocab_frequencies():
    """At V = 100,278: frequencies of a few heavy ids spread over the vocabulary (ends included),
    and no zero-probability id (a block around each heavy id, and id 0) is ever drawn."""
    n = 512
    probs = torch.zeros(VOCAB, dtype=F64)
    heavy = {7: 0.2, 50_001: 0.25, VOCAB - 1: 0.15, VOCAB - 3: 0.1}
    spread = torch.rand(VOCAB, generator=_gen(181), dtype=F64)
    spread[0] = 0.0
    for j in heavy:
        spread[j - 1:j + 2] = 0.0
    probs += 0.3 * spread / spread.sum()
    for j, p in heavy.items():
        probs[j] = p
    out = inverse_cdf_draw(probs.log().expand(n, VOCAB), _gen(182))
    assert not bool((probs[out] == 0).any())
    ids = torch.tensor(list(heavy))
    counts = torch.stack([(out == j).sum() for j in ids] + [(~torch.isin(out, ids)).sum()])
    want = torch.cat([probs[ids], (1 - probs[ids].sum()).reshape(1)])
    assert_frequencies(counts, want, n, what="V=100278", chi2=True)


def test_inverse_cdf_draw_is_exact_for_a_rare_token_at_full_vocab():
    """White-box (pins the convention: one float64 uniform per row, drawn first, mapped through the
    CDF with ``searchsorted(right=True)``): replaying the generator gives every row's ``u``, so each
    draw must equal the inverse CDF computed exactly (rational arithmetic).  The distribution is
    built around the first ``u`` so that it falls inside the interval of a token of mass 1e-6 at
    id 70,001 (after ~70k other tokens, where a float32 CDF has drifted by more than 1e-6): the
    float64 draw must return exactly that rare id.  Zero-probability ids are never returned."""
    n, rare, width = 128, 70_001, 1e-6
    state = _gen(191).get_state()
    u = torch.rand(n, generator=torch.Generator().set_state(state), dtype=F64)
    u0 = float(u[0])
    assert 0.1 < u0 < 0.9
    w = torch.rand(VOCAB, generator=_gen(192), dtype=F64) + 0.5
    w[::5] = 0.0                      # every fifth id impossible
    w[[rare - 1, rare + 1]] = 0.0     # the rare id's neighbours too
    before, after = w[:rare].sum(), w[rare + 1:].sum()
    probs = torch.cat([w[:rare] / before * (u0 - width / 2), torch.tensor([width], dtype=F64),
                       w[rare + 1:] / after * (1 - u0 - width / 2)])
    log_probs = probs.log()
    out = inverse_cdf_draw(log_probs.expand(n, VOCAB), torch.Generator().set_state(state))
    assert int(out[0]) == rare
    assert not bool((probs[out] == 0).any())
    # the exact CDF of exp(log_probs), in rationals; each u maps to the first id whose CDF exceeds u * total
    p_exact = [Fraction(v) for v in log_probs.exp().tolist()]
    cdf, acc = [], Fraction(0)
    for v in p_exact:
        acc += v
        cdf.append(acc)
    for i in range(n):
        target = Fraction(float(u[i])) * acc
        j = bisect.bisect_right(cdf, target)
        # skip a u within 1e-12 of a boundary (float64 CDF round-off; never happens at this seed)
        near = any(abs(float(cdf[k] - target)) < 1e-12 for k in (j - 1, j) if 0 <= k < VOCAB)
        if not near:
            assert int(out[i]) == min(j, VOCAB - 1), f"row {i}"


# ----------------------------------------------------------------------------- 9. grids
@pytest.mark.parametrize("steps", [1, 2, 16, 128])
def test_linear_alpha_grid_closed_form(steps):
    g = linear_alpha_grid(steps)
    assert g.shape == (steps + 1,) and g.dtype == F64
    assert bool((g[1:] >= g[:-1]).all())
    alpha = [1e-4 + i * (1 - 2e-4) / steps for i in range(steps + 1)]
    want = torch.tensor([min(9.0, max(-9.0, math.log(a / (1 - a)))) for a in alpha], dtype=F64)
    torch.testing.assert_close(g, want, atol=1e-12, rtol=0)
    assert float(g[0]) == -9.0 and float(g[-1]) == 9.0  # logit(1e-4) = -9.21 is clamped
    wide = linear_alpha_grid(steps, log_snr_min=-30.0, log_snr_max=30.0)
    torch.testing.assert_close(torch.sigmoid(wide), torch.tensor(alpha, dtype=F64), atol=1e-12, rtol=0)
    check_grid(g)


@pytest.mark.parametrize("steps", [1, 3, 64])
def test_cosine_grid_closed_form(steps):
    g = cosine_grid(steps)
    assert g.shape == (steps + 1,) and bool((g[1:] > g[:-1]).all())
    tau = [0.999 + i * (0.001 - 0.999) / steps for i in range(steps + 1)]
    alpha = [0.5 + 0.5 * math.cos(math.pi * t) for t in tau]
    want = torch.tensor([min(9.0, max(-9.0, math.log(a / (1 - a)))) for a in alpha], dtype=F64)
    torch.testing.assert_close(g, want, atol=1e-9, rtol=0)
    assert float(g.min()) >= -9.0 and float(g.max()) <= 9.0
    check_grid(g)


@pytest.mark.parametrize("schedule", [dd.LinearAlpha(), dd.Cosine(), dd.LinearAlpha(log_snr_min=-4.0, log_snr_max=6.0)],
                         ids=repr)
def test_schedule_grid_closed_form(schedule):
    steps = 10
    g = schedule_grid(schedule, steps)
    assert g.shape == (steps + 1,) and bool((g[1:] >= g[:-1]).all())
    ts = [1 - i / steps for i in range(steps + 1)]
    if isinstance(schedule, dd.Cosine):
        raw = [2 * math.log(1 / math.tan(math.pi * t / 2)) if 0 < t < 1 else (-INF if t == 1 else INF) for t in ts]
    else:
        raw = [math.log((1 - t) / t) if 0 < t < 1 else (-INF if t == 1 else INF) for t in ts]
    want = torch.tensor([min(schedule.log_snr_max, max(schedule.log_snr_min, r)) for r in raw], dtype=F64)
    torch.testing.assert_close(g, want, atol=1e-9, rtol=0)
    check_grid(g)


def test_check_grid_rejects_bad_grids():
    with pytest.raises(ValueError, match="ascending"):
        check_grid(torch.tensor([0.0, 1.0, 0.5], dtype=F64))
    with pytest.raises(ValueError, match="NaN"):
        check_grid(torch.tensor([0.0, math.nan, 1.0], dtype=F64))
    with pytest.raises(TypeError):
        check_grid(torch.zeros(2, 2, dtype=F64))
    with pytest.raises(ValueError, match="2"):
        check_grid(torch.tensor([0.0], dtype=F64))
    with pytest.raises(TypeError):
        check_grid(torch.tensor([0, 1]))
    # ties and infinite ends are fine
    check_grid(torch.tensor([-INF, 0.0, 0.0, INF], dtype=F64))
    for bad in (0, -1, 2.0, True):  # a non-int may be caught by the type checker first
        with pytest.raises((ValueError, TypeError)):
            linear_alpha_grid(bad)
        with pytest.raises((ValueError, TypeError)):
            cosine_grid(bad)


# ----------------------------------------------------------------------------- 10. bad input
def _bad_input_case():
    V = 7
    z_t = torch.randint(0, V, (2, 5), generator=_gen(201))
    logits = _logits(V, 202, (2, 5))
    return z_t, logits, torch.tensor(-1.0, dtype=F64), torch.tensor(1.0, dtype=F64)


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_bad_inputs_raise(rule):
    z_t, logits, lt, ls = _bad_input_case()
    with pytest.raises(ValueError, match="temperature"):
        rule.step(logits, z_t, lt, ls, temperature=-0.5)
    with pytest.raises(ValueError, match="temperature"):
        rule.step(logits, z_t, lt, ls, temperature=math.nan)
    with pytest.raises(TypeError, match="temperature"):
        rule.step(logits, z_t, lt, ls, temperature="hot")
    with pytest.raises((ValueError, TypeError)):
        rule.step(logits, z_t, lt, ls, frozen=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises((ValueError, TypeError)):
        rule.step(logits, z_t, lt, ls, frozen=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="lam_s"):
        rule.step(logits, z_t, ls, lt)
    with pytest.raises((ValueError, TypeError)):
        rule.step(logits[:, :4], z_t, lt, ls)
    with pytest.raises((ValueError, TypeError)):
        rule.step(logits, z_t + 7, lt, ls)  # ids outside the vocabulary
    with pytest.raises(ValueError, match="NaN"):
        rule.step(logits, z_t, torch.tensor(math.nan, dtype=F64), ls)
    with pytest.raises(ValueError, match="ascending"):
        sample(lambda z: _logits(7, 1, tuple(z.shape)), rule, z_t, torch.tensor([1.0, 0.0], dtype=F64))


def test_bad_constructor_arguments():
    for bad in (0, -2):
        with pytest.raises(ValueError, match="tokens_per_step must be an int >= 1"):
            Adaptive(dd.Uniform(5), tokens_per_step=bad)
        with pytest.raises(ValueError, match="tokens_per_step must be an int >= 1"):
            Confidence(dd.Masked(5, 0), tokens_per_step=bad)
    for bad in (True, 1.5, None, "2"):  # wrong type: TypeError (from the check, or the type checker)
        with pytest.raises(TypeError):
            Adaptive(dd.Uniform(5), tokens_per_step=bad)
    with pytest.raises(TypeError):
        Confidence(dd.Masked(5, 0), tokens_per_step=2.0)
    with pytest.raises(ValueError, match="weight must be one of"):
        Adaptive(dd.Uniform(5), weight="current")
    for kw in (dict(top_k=0), dict(top_p=0.0), dict(top_p=1.5), dict(min_p=-0.1), dict(min_p=1.1)):
        with pytest.raises(ValueError):
            Filters(**kw)
        with pytest.raises(ValueError):
            Ancestral(dd.Uniform(5), **kw)
    with pytest.raises(TypeError, match="top_k"):
        Filters(top_k=True)
    with pytest.raises(ValueError, match="temperature"):
        Denoised(_logits(5, 1), None, -1.0)


# ----------------------------------------------------------------------------- 11. unusable logits
def _first_step_case():
    V, shape = 7, (2, 5)
    z_t = torch.randint(0, V, shape, generator=_gen(211))
    logits = _logits(V, 212, shape)
    return z_t, logits, torch.tensor(-1.0, dtype=F64), torch.tensor(1.0, dtype=F64)


@pytest.mark.parametrize("bad", [math.nan, math.inf], ids=["nan", "+inf"])
@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_non_finite_logits_are_rejected_at_the_first_step(rule, bad):
    """NaN or +inf logits silently returned the canvas (Greedy: all zeros); now the validated
    first step names them, counted, with the first position."""
    z_t, logits, lt, ls = _first_step_case()
    logits = logits.clone()
    logits[1, 2, 0] = bad
    logits[1, 4, 5] = bad
    message = r"logits are not finite: 2 values are NaN or \+inf \(first at batch 1, position 2\)"
    with pytest.raises(ValueError, match=message):
        rule.step(logits, z_t, lt, ls)
    with pytest.raises(ValueError, match="not finite"):
        sample(lambda z: logits, rule, z_t, linear_alpha_grid(3))
    rule.step(logits, z_t, lt, ls, validate=False)  # unchecked when asked (a hot loop's later steps)


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_a_position_with_every_logit_minus_inf_is_rejected(rule):
    z_t, logits, lt, ls = _first_step_case()
    logits = logits.clone()
    mask = getattr(rule, "mask_id", None)
    logits[0, 3] = -math.inf
    if mask is not None:
        logits[0, 3, mask] = 10.0  # only the mask logit is finite: x_hat is still undefined
    with pytest.raises(ValueError, match=r"-inf at every state.* at 1 positions \(first at batch 0, position 3\)"):
        rule.step(logits, z_t, lt, ls)


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_minus_inf_logits_forbid_tokens(rule):
    """-inf on some states of a position is legitimate (forbidden tokens): no error, and rules that
    write draws of x_hat never write them (the others may still land there by noise from pi)."""
    z_t, logits, lt, ls = _first_step_case()
    logits = logits.clone()
    logits[..., 1] = -math.inf
    logits[..., 2] = -math.inf
    out = rule.step_info(logits, z_t, lt, ls, generator=_gen(213))
    assert bool(((out.tokens >= 0) & (out.tokens < 7)).all())
    if isinstance(rule, (Greedy, Adaptive, Confidence)):
        written = out.tokens[out.selected & (out.tokens != z_t)]
        assert not bool(((written == 1) | (written == 2)).any())


def test_later_steps_are_not_checked():
    """Only the first step validates (one host sync); the loop then runs unchecked."""
    z_t, logits, _, _ = _first_step_case()
    calls = []

    def denoiser(z):
        calls.append(1)
        return logits if len(calls) == 1 else torch.full_like(logits, math.nan)

    sample(denoiser, Ancestral(dd.Uniform(7)), z_t, linear_alpha_grid(3), generator=_gen(1))
    assert len(calls) == 3


# ----------------------------------------------------------------------------- 12. messages name the real problem
@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_a_smaller_vocabulary_is_reported_as_such(rule):
    """It reported 'z_t holds ids ... outside [0, V)' for logits with a vocabulary of 5 < 7."""
    z_t, logits, lt, ls = _first_step_case()
    z_t = z_t.clone()
    z_t[0, 0] = 6
    with pytest.raises(ValueError, match="logits have vocabulary 5 but the kernel has 7 states"):
        rule.step(logits[..., :5], z_t, lt, ls)


@pytest.mark.parametrize("rule", RULES + [Greedy()], ids=repr)
def test_a_denoiser_without_the_vocabulary_dimension_is_reported_as_such(rule):
    """A denoiser returning [B, S] was reported as 'z_t holds ids ... outside [0, S)'."""
    z_t, logits, lt, ls = _first_step_case()
    z_t = z_t.clone()
    z_t[0, 0] = 6
    with pytest.raises(ValueError, match=r"the denoiser returned shape \(2, 5\); expected \(2, 5\) \+ \(vocab,\)"):
        sample(lambda z: logits[..., 0], rule, z_t, linear_alpha_grid(2))


# ----------------------------------------------------------------------------- 13. time-conditioned denoisers
class _TableModel(torch.nn.Module):
    """An nn.Module denoiser with an optional second argument: NOT time-conditioned."""

    def __init__(self, V):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(V, V, generator=_gen(221)))
        self.calls = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(attention_mask)
        return self.table[input_ids]


class _TimeModel(_TableModel):
    """An nn.Module denoiser with a required log-SNR argument."""

    def forward(self, input_ids, lam):
        self.calls.append(lam)
        return self.table[input_ids] * torch.sigmoid(lam).view(-1, 1, 1).float()


def test_sample_passes_the_log_snr_to_time_conditioned_denoisers():
    """Before, the denoiser never received lambda (a two-argument denoiser was a TypeError)."""
    V = 7
    z_t = torch.randint(0, V, (3, 5), generator=_gen(222))
    grid = linear_alpha_grid(4)
    seen = []

    def denoiser(z, lam):
        seen.append(lam)
        return _logits(V, 223, tuple(z.shape))

    sample(denoiser, Ancestral(dd.Uniform(V)), z_t, grid, generator=_gen(1))
    assert len(seen) == 4
    for lam, want in zip(seen, grid[:-1]):
        assert lam.dtype == F64 and lam.shape == (3,) and bool((lam == want).all())

    module = _TimeModel(V)
    with torch.no_grad():
        sample(module, Ancestral(dd.Uniform(V)), z_t, grid, generator=_gen(1))
    assert [float(lam[0]) for lam in module.calls] == grid[:-1].tolist()


def test_plain_denoisers_and_modules_with_optional_arguments_get_tokens_only():
    V = 7
    z_t = torch.randint(0, V, (3, 5), generator=_gen(224))
    grid = linear_alpha_grid(3)
    module = _TableModel(V)
    with torch.no_grad():
        out = sample(module, Ancestral(dd.Uniform(V)), z_t, grid, generator=_gen(2))
    assert module.calls == [None, None, None]  # forward(input_ids, attention_mask=None): one required
    with torch.no_grad():
        same = sample(lambda z: module.table[z], Ancestral(dd.Uniform(V)), z_t, grid, generator=_gen(2))
    assert torch.equal(out.tokens, same.tokens)


def test_time_conditioned_can_be_given_explicitly():
    V = 7
    z_t = torch.randint(0, V, (3, 5), generator=_gen(225))
    seen = []

    def star(*args):  # the signature says nothing: the keyword decides
        seen.append(len(args))
        return _logits(V, 226, tuple(args[0].shape))

    sample(star, Greedy(), z_t, linear_alpha_grid(2))
    sample(star, Greedy(), z_t, linear_alpha_grid(2), time_conditioned=True)
    assert seen == [1, 1, 2, 2]

    def two(z, extra):
        assert extra is not None
        return _logits(V, 227, tuple(z.shape))

    with pytest.raises(TypeError):
        sample(two, Greedy(), z_t, linear_alpha_grid(2), time_conditioned=False)
    with pytest.raises(TypeError, match="time_conditioned"):
        sample(two, Greedy(), z_t, linear_alpha_grid(2), time_conditioned="yes")


# ----------------------------------------------------------------------------- 14. adaptive that revisits
def _adaptive_toy(kernel, rule, steps=64, batch=64, length=16, seed=1):
    """A known-answer denoiser that, like a trained model, is unsure at high noise: it prefers the
    target by ``8 alpha_t`` nats.  Returns the share of positions that end on the target."""
    V, mask = kernel.vocab_size, kernel.mask_id
    target = torch.randint(0, V - 1, (batch, length), generator=_gen(0))
    target = target + (target >= mask).long() if mask is not None else target

    def denoiser(z, lam):
        boost = (8.0 * torch.sigmoid(lam)).view(-1, 1, 1).expand(*z.shape, 1)
        return torch.zeros(*z.shape, V, dtype=F64).scatter(-1, target.unsqueeze(-1), boost)

    g = _gen(seed)
    canvas = kernel.sample_prior((batch, length), generator=g)
    out = sample(denoiser, rule, canvas, linear_alpha_grid(steps), generator=g)
    return float((out.tokens == target).double().mean())


@pytest.mark.parametrize("kernel", [dd.Hybrid(9, 8), dd.GIDD(9, 8, p_uniform=0.2)], ids=repr)
def test_adaptive_rate_weight_revisits_and_recovers_what_ancestral_recovers(kernel):
    """With an all-mask prior the published weight pi_{-inf}(z_t) is 0 on every unmasked token,
    so early (wrong) commits are final; the reverse-rate weight revisits them."""
    ancestral = _adaptive_toy(kernel, Ancestral(kernel))
    prior = _adaptive_toy(kernel, Adaptive(kernel, 1))
    rate = _adaptive_toy(kernel, Adaptive(kernel, 1, weight="rate"))
    assert ancestral > 0.97, ancestral
    assert abs(rate - ancestral) < 0.03, (rate, ancestral)
    assert prior < ancestral - 0.5, (prior, ancestral)


@pytest.mark.parametrize("kernel", [dd.Uniform(6), dd.Masked(6, 0), dd.Prior(_unigram(6, seed=9))], ids=repr)
def test_adaptive_weights_agree_where_pi_does_not_depend_on_lambda(kernel):
    """Uniform (Sumi), masked and fixed-prior kernels: both weights, hence both rules, are the same."""
    z_t, frozen, logits = _adaptive_case(kernel, seed=231)
    lam = torch.tensor([-INF, -3.0, 0.0, 4.0], dtype=F64)[torch.randint(0, 4, z_t.shape, generator=_gen(232))]
    prior, rate = Adaptive(kernel, 3), Adaptive(kernel, 3, weight="rate")
    torch.testing.assert_close(rate.confidence(logits, z_t, lam), prior.confidence(logits, z_t), atol=1e-15, rtol=0)
    a = prior.step(logits, z_t, lam, lam + 1.0, frozen, generator=_gen(233))
    b = rate.step(logits, z_t, lam, lam + 1.0, frozen, generator=_gen(233))
    assert torch.equal(a, b)


@pytest.mark.parametrize("kernel", ADAPTIVE_KERNELS, ids=repr)
def test_adaptive_rate_weight_is_the_dense_reverse_rate_factor(kernel):
    """w = (pi - pi')(z_t) at lambda_t, against Dense's pi and finite-difference pi'; it is the
    prior weight at lambda_t = -inf."""
    z_t, frozen, logits = _adaptive_case(kernel, seed=241)
    d = dd.Dense.of(kernel)
    x0 = _x_hat(logits, kernel.mask_id)
    gap = x0.max(-1).values - x0.gather(-1, z_t.unsqueeze(-1)).squeeze(-1)
    rule = Adaptive(kernel, 2, weight="rate")
    for lam in (-2.0, 0.5, 3.0):
        w = d.pi(lam) - d.dpi(lam)
        torch.testing.assert_close(rule.confidence(logits, z_t, torch.tensor(lam, dtype=F64)), w[z_t] * gap,
                                   atol=1e-9, rtol=1e-7)
    at_prior = rule.confidence(logits, z_t, torch.tensor(-INF, dtype=F64))
    torch.testing.assert_close(at_prior, Adaptive(kernel, 2).confidence(logits, z_t), atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------- 15. streaming x_hat
def _dense_filtered(logits: torch.Tensor, mask_id: int | None, T: float, top_k=None, top_p=None,
                    min_p=None) -> torch.Tensor:
    """The filtered x_hat by the textbook rules on a dense float64 softmax, ties decided by value:
    top-k keeps p_j >= the k-th largest; min-p keeps p_j >= min_p max p; top-p keeps j iff the
    tokens strictly more likely than j hold less than top_p of the mass (all tokens tied with the
    last one needed are kept).  An O(V^2) pairwise sum, no sort: independent of the code."""
    x = _x_hat(logits.to(F64), mask_id, T)
    keep = x > 0
    if top_k is not None and top_k < x.shape[-1]:
        keep &= x >= x.topk(top_k, dim=-1).values[..., -1:]
    if min_p:
        keep &= x >= min_p * x.amax(-1, keepdim=True)
    if top_p is not None and top_p < 1.0:
        keep &= _mass_strictly_above(x) < top_p
    kept = torch.where(keep, x, torch.zeros_like(x))
    return kept / kept.sum(-1, keepdim=True)


def _mass_strictly_above(x: torch.Tensor) -> torch.Tensor:
    """``[..., V]``: the mass of the tokens strictly more likely than each token."""
    return (x.unsqueeze(-2) * (x.unsqueeze(-2) > x.unsqueeze(-1))).sum(-1)


def _assert_well_posed(x: torch.Tensor, top_p=None, min_p=None, margin: float = 1e-4) -> None:
    """No token within ``margin`` of a filter's boundary, so float32 and float64 must agree."""
    if top_p is not None:
        assert float((_mass_strictly_above(x) - top_p).abs().min()) > margin
    if min_p:
        assert float((x - min_p * x.amax(-1, keepdim=True)).abs().min()) > margin * 1e-2


def _all_probs(x0: Denoised) -> torch.Tensor:
    """``x0.prob_at`` at every state: ``[*shape, V]`` from V gathers (the test's dense view)."""
    V = x0.vocab_size
    return torch.stack([x0.prob_at(torch.full(x0.shape, j, dtype=torch.long)) for j in range(V)], -1)


def _grid_logits(shape: tuple[int, ...], V: int, seed: int, levels: int = 24) -> torch.Tensor:
    """Logits on a grid of multiples of 1/8: exact in float32 and bf16, with many exact ties."""
    return torch.randint(-levels, 1, (*shape, V), generator=_gen(seed)).to(F64) / 8


FILTER_CASES = [dict(), dict(top_k=4), dict(top_p=0.37), dict(top_p=0.8), dict(min_p=0.3),
                dict(top_k=9, top_p=0.8, min_p=0.05)]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("T", [1.0, 0.7, 2.0])
@pytest.mark.parametrize("mask_id", [None, 3])
@pytest.mark.parametrize("filters", FILTER_CASES, ids=str)
def test_denoised_matches_a_dense_float64_reference(filters, mask_id, T, dtype):
    """prob_at, max_prob, argmax, log_probs and the top-p tie rule against the dense float64
    filter (grid logits: many exact ties, some at every filter's boundary), for float64, float32
    and bf16 logits (computed in float32), tempered, with and without a mask state, chunked by 3
    rows and in one chunk."""
    V, shape = 23, (4, 5)
    logits = _grid_logits(shape, V, seed=301)
    want = _dense_filtered(logits, mask_id, T, **filters)
    _assert_well_posed(_x_hat(logits, mask_id, T), filters.get("top_p"), filters.get("min_p"))
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for rows in (3, None):
        x0 = Denoised(logits.to(dtype), mask_id, T, Filters(**filters), rows=rows)
        got = _all_probs(x0)
        assert torch.equal(got > 0, want > 0), "kept sets differ"
        torch.testing.assert_close(got, want, atol=tol, rtol=0)
        torch.testing.assert_close(x0.log_probs.exp().to(F64), want, atol=tol, rtol=0)
        torch.testing.assert_close(x0.max_prob(), want.amax(-1), atol=tol, rtol=0)
        assert torch.equal(x0.argmax, _argmax_no_mask(logits, mask_id))  # the first on ties


def test_top_p_keeps_a_whole_tie_group_at_the_boundary():
    """Four tokens share the logit where the mass reaches p: all four are kept (the sort-based
    rule kept the first one or two in sort order, which is not defined for ties)."""
    logits = torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0, 0.0, -1.0], dtype=F64)
    x = torch.softmax(logits, 0)
    p = float(x[0] + 1.5 * x[1])  # the boundary falls inside the tie group 1..4
    got = _all_probs(Denoised(logits, None, 1.0, Filters(top_p=p)))
    assert torch.equal(got > 0, torch.tensor([True] * 5 + [False] * 2))
    torch.testing.assert_close(got, torch.where(got > 0, x, 0.0) / x[:5].sum(), atol=1e-15, rtol=0)
    # a permutation of the vocabulary permutes the kept set (no dependence on token ids)
    perm = torch.randperm(7, generator=_gen(302))
    permuted = _all_probs(Denoised(logits[perm], None, 1.0, Filters(top_p=p)))
    assert torch.equal(permuted, got[perm])


@given(seed=st.integers(0, 2**31 - 1), V=st.integers(1, 400), levels=st.integers(1, 60),
       p=st.floats(0.001, 0.999), f64=st.booleans())
def test_top_p_threshold_is_exact(seed, V, levels, p, f64):
    """The radix select returns exactly ``max{s_j : mass(s >= s_j) >= p mass}`` (a sort of the
    same ``s`` and float64 sums of the same ``e``), with ties, ``-inf`` states, masses that
    underflow to 0 and values spread over many exponents."""
    dtype = F64 if f64 else torch.float32
    g = _gen(seed)
    lg = torch.randint(0, levels, (3, V), generator=g).to(dtype) * torch.rand(1, generator=g, dtype=F64).item() * 5
    lg[1] = torch.randn(V, generator=g, dtype=F64).to(dtype) * 40.0  # wide: tiny and zero masses
    lg[2, torch.rand(V, generator=g) < 0.2] = -math.inf
    lg[2, 0] = 1.0
    s = lg - lg.amax(-1, keepdim=True)
    e = torch.exp(s)
    got = top_p_threshold(ordered_keys(s), e, p, dtype)
    for row in range(3):
        values = torch.unique(s[row])  # ascending
        mass = torch.stack([e[row].to(F64)[s[row] >= v].sum() for v in values])
        target = p * e[row].to(F64).sum()
        assume(bool(((mass - target).abs() > 1e-9 * target).all()))  # no decision within round-off
        want = values[mass >= target].max()
        assert float(got[row]) == float(want), (row, float(got[row]), float(want))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_denoised_draws_the_filtered_tempered_distribution(dtype):
    """Draw frequencies of Denoised.sample (bf16 and float32 logits, T = 0.7, mask state, top-k,
    top-p and min-p at once) against the dense float64 reference; ``where`` leaves -1 elsewhere."""
    V, n = 12, 60_000
    logits = _grid_logits((), V, seed=311, levels=16)
    want = _dense_filtered(logits, 5, 0.7, top_k=8, top_p=0.9, min_p=0.02)
    _assert_well_posed(_x_hat(logits, 5, 0.7), 0.9, 0.02)
    where = torch.arange(2 * n).reshape(2, n) % 2 == 0
    x0 = Denoised(logits.to(dtype).expand(2, n, V), 5, 0.7, Filters(top_k=8, top_p=0.9, min_p=0.02))
    out = x0.sample(_gen(312), where=where)
    assert bool((out[~where] == -1).all())
    assert_frequencies(_counts(out[where], V), want, n, what=str(dtype), chi2=True)


def test_gathered_and_static_draws_give_the_same_ids(monkeypatch):
    """The CPU path gathers the rows it draws; accelerators and torch.compile draw every row and
    mask.  Both use the generator identically, so each rule returns the same tokens."""
    V, shape = 11, (3, 40)
    logits = _logits(V, 321, shape, scale=2.0).float()
    z_t = torch.randint(0, V, shape, generator=_gen(322))
    z_t[:, ::3] = 10
    frozen = torch.rand(shape, generator=_gen(323)) < 0.2
    rules = [Ancestral(dd.Hybrid(V, 10)), Ancestral(dd.Uniform(V), top_p=0.7, top_k=5), TauLeaping(dd.Uniform(V)),
             Adaptive(dd.Uniform(V), 4), Adaptive(dd.Hybrid(V, 10), 3, weight="rate", min_p=0.1),
             Confidence(dd.Masked(V, 10), 2), Confidence(dd.Masked(V, 10), 2, by_confidence=False)]
    lam_t, lam_s = torch.tensor(-0.5, dtype=F64), torch.tensor(1.5, dtype=F64)

    def run():
        return [rule.step(logits, z_t, lam_t, lam_s, frozen, temperature=T, generator=_gen(324))
                for rule in rules for T in (0.0, 0.8, 1.0)]

    gathered = run()
    monkeypatch.setattr(categorical, "gathers_rows", lambda device: False)
    for a, b in zip(gathered, run()):
        assert torch.equal(a, b)


def test_draws_happen_only_where_a_token_may_move(monkeypatch):
    """Ancestral draws x_hat only at positions that move (none on a zero step, every unfrozen one
    from lambda = -inf to +inf); Adaptive only at the selected positions; Confidence at the
    masked ones (by_confidence=False: at the selected ones)."""
    drawn = []
    original = Denoised._draw_rows

    def counting(self, u, index):
        drawn.append(u.shape[0])
        return original(self, u, index)

    monkeypatch.setattr(Denoised, "_draw_rows", counting)
    V, shape = 9, (4, 50)
    logits = _logits(V, 331, shape)
    z_t = torch.randint(0, V, shape, generator=_gen(332))
    frozen = torch.zeros(shape, dtype=torch.bool)
    frozen[:, :10] = True
    lam = torch.tensor(0.3, dtype=F64)
    Ancestral(dd.Uniform(V)).step(logits, z_t, lam, lam, frozen, generator=_gen(1))
    assert drawn == [0]
    drawn.clear()
    Ancestral(dd.Uniform(V)).step(logits, z_t, torch.tensor(-INF, dtype=F64), torch.tensor(INF, dtype=F64), frozen,
                                  generator=_gen(2))
    assert drawn == [int((~frozen).sum())]
    drawn.clear()
    out = Adaptive(dd.Uniform(V), 3).step_info(logits, z_t, lam, lam + 1, frozen, generator=_gen(4))
    assert drawn == [int(out.selected.sum())] == [12]
    drawn.clear()
    m = 8
    z_m = z_t.masked_fill(torch.rand(shape, generator=_gen(5)) < 0.5, m)
    masked = int(((z_m == m) & ~frozen).sum())
    # masked noise: a move leaves the mask for a draw of x_hat (never the mask): drawn = changed
    mid = Ancestral(dd.Masked(V, m)).step(logits, z_m, torch.tensor(-1.0, dtype=F64), torch.tensor(-0.5, dtype=F64),
                                          frozen, generator=_gen(3))
    assert drawn == [int((mid != z_m).sum())] and 0 < drawn[0] < masked // 2  # a short step moves few
    drawn.clear()
    Confidence(dd.Masked(V, m), 2).step(logits, z_m, lam, lam + 1, frozen, generator=_gen(6))
    assert drawn == [masked]
    drawn.clear()
    out = Confidence(dd.Masked(V, m), 2, by_confidence=False).step_info(logits, z_m, lam, lam + 1, frozen,
                                                                          generator=_gen(7))
    assert drawn == [int(out.selected.sum())] == [8]


def test_no_vocabulary_sized_tensor_besides_the_logits():
    """Every tensor any step rule creates (every aten op's output, seen by a dispatch mode) holds at
    most ``rows x V`` elements, one chunk, unless it views the logits: nothing the size of the
    logits (64 positions here, so 1/16 of them), for every rule, bf16 logits, temperatures,
    filters and a mask state."""
    V, shape = 40_000, (2, 32)

    class Largest(TorchDispatchMode):
        def __init__(self, logits):
            super().__init__()
            self.storage, self.largest = logits.untyped_storage().data_ptr(), 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() != self.storage:
                    self.largest = max(self.largest, t.numel())
            return out

    rows = categorical.default_chunk_rows(V, torch.device("cpu"))
    assert rows == 26
    g = _gen(341)
    z_t = torch.randint(0, V - 1, shape, generator=g)
    z_t[:, ::2] = V - 1
    lam_t, lam_s = torch.tensor(-0.5, dtype=F64), torch.tensor(0.5, dtype=F64)
    hybrid, masked = dd.Hybrid(V, V - 1), dd.Masked(V, V - 1)
    cases = [(Ancestral(dd.Uniform(V)), 1.0), (Ancestral(hybrid), 0.7), (Ancestral(hybrid, top_p=0.9), 1.0),
             (Ancestral(dd.Uniform(V), top_k=50, min_p=0.01), 1.3), (TauLeaping(hybrid), 1.0),
             (Adaptive(dd.Uniform(V), 16), 1.0), (Adaptive(hybrid, 16, top_p=0.9), 0.7), (Greedy(hybrid), 0.0),
             (Confidence(masked, 8), 1.0), (Confidence(masked, 8, by_confidence=False, top_p=0.5), 0.0)]
    for dtype in (torch.float32, torch.bfloat16):
        logits = torch.randn(*shape, V, generator=g).to(dtype)
        for rule, T in cases:
            with Largest(logits) as mode:
                rule.step(logits, z_t, lam_t, lam_s, temperature=T, generator=g, validate=False)
            assert mode.largest <= rows * V, (rule, T, dtype, mode.largest)


def test_logits_that_require_grad_are_accepted():
    """A denoiser called without torch.no_grad() returns logits that require grad: the chunked
    statistics (which write into reused buffers) failed on them; x_hat is read detached."""
    V = 7
    logits = _logits(V, 351, (2, 5)).float().requires_grad_()
    z_t = torch.randint(0, V, (2, 5), generator=_gen(352))
    for rule in RULES:
        out = rule.step(logits, z_t, torch.tensor(-1.0, dtype=F64), torch.tensor(1.0, dtype=F64), generator=_gen(353))
        assert out.shape == z_t.shape
    assert torch.equal(Denoised(logits, None, 0.7, Filters(top_p=0.8)).log_probs,
                       Denoised(logits.detach(), None, 0.7, Filters(top_p=0.8)).log_probs)


def test_python_random_is_untouched():
    """Python's global ``random`` is left alone by every rule, filters and draws included (under
    pytest beartype checks ``list[...]`` annotations by sampling an item with it: a chunk list
    annotated that way advanced it inside sumi.generate)."""
    V, shape = 7, (3, 12)
    z_t = torch.randint(0, V, shape, generator=_gen(361))
    logits = _logits(V, 362, shape).float()
    state = random.getstate()
    for rule in RULES + [Ancestral(dd.Uniform(V), top_k=3, top_p=0.8, min_p=0.05)]:
        for T in (0.0, 0.7, 1.0):
            rule.step(logits, z_t, torch.tensor(-1.0, dtype=F64), torch.tensor(1.0, dtype=F64), temperature=T,
                      generator=_gen(363))
    Denoised(logits, 3, 0.7, Filters(top_p=0.8)).sample(_gen(364), where=z_t > 2)
    assert random.getstate() == state
