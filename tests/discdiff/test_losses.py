"""Correctness tests for :mod:`discdiff.losses`.

Every expected value is an oracle computed here, independently of the code under test: the
dense matrix kernel (:class:`discdiff.kernels.Dense`, plain sums and a finite-difference
``pi'``), ``torch.nn.functional.cross_entropy``, the UDLM / Duo closed form written out from
the papers, quadrature of the ELBO integrand against ``-log p0(x)``, plain float64 sums at
vocabulary 100,278.  All randomness goes through explicit seeded ``torch.Generator`` objects.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import discdiff as dd
from discdiff.kernels import GIDD, Dense, Hybrid, Masked, Prior, Uniform
from discdiff.losses import (
    LossOutput,
    elbo_weight_in_time,
    gidd,
    kl_and_is,
    kl_and_log_ratio,
    masked_ce,
    mdlm,
    nelbo_estimate,
    reduce,
)
from discdiff.schedules import Cosine, LinearAlpha

F64 = torch.float64
FAMILIES = ("uniform", "masked", "hybrid", "gidd", "prior", "prior_sparse", "prior_mask")
UNCLAMPED = LinearAlpha(log_snr_min=-math.inf, log_snr_max=math.inf)

seeds = st.integers(min_value=0, max_value=2**31 - 1)
vocab_sizes = st.integers(min_value=2, max_value=12)
families = st.sampled_from(FAMILIES)
lambdas = st.floats(min_value=-9.0, max_value=9.0, allow_nan=False, allow_infinity=False)

try:  # under pytest's jaxtyping hook, a shape/dtype mismatch is caught before the library's own check
    from jaxtyping import TypeCheckError as _HookError
except ImportError:  # pragma: no cover
    _HookError = TypeError


# -- helpers ------------------------------------------------------------------------------
def make_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def uniform_float(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=F64))


def make_kernel(family: str, V: int, g: torch.Generator):
    """A kernel of ``family`` over ``V`` states with parameters drawn from ``g``."""
    m = int(torch.randint(V, (), generator=g))
    if family == "uniform":
        return Uniform(V)
    if family == "masked":
        return Masked(V, m)
    if family == "hybrid":
        return Hybrid(V, m, shift=uniform_float(g, -3.0, 3.0), scale=uniform_float(g, 0.0, 1.0))
    if family == "gidd":
        return GIDD(V, m, p_uniform=uniform_float(g, 0.05, 0.95), gamma=uniform_float(g, 0.2, 1.9))
    probs = torch.softmax(1.5 * torch.randn(V, generator=g, dtype=F64), -1)
    if family == "prior":
        return Prior(probs)
    if family == "prior_sparse":  # some states can never be drawn as noise
        keep = torch.rand(V, generator=g, dtype=F64) < 0.5
        keep[int(torch.randint(V, (), generator=g))] = True
        probs = torch.where(keep, probs, torch.zeros_like(probs))
        return Prior(probs / probs.sum())
    if family == "prior_mask":
        return Prior(probs, mask_id=m)
    raise AssertionError(family)


def clean_states(kernel) -> list[int]:
    return [j for j in range(kernel.vocab_size) if j != kernel.mask_id]


def support_pairs(kernel) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(x, z)`` with ``q(z | x) > 0`` (the support does not depend on a finite lambda)."""
    Q = Dense.of(kernel).matrix(0.0)
    if kernel.mask_id is not None:
        Q[kernel.mask_id] = 0.0  # x is never the mask state
    xs, zs = torch.nonzero(Q > 0, as_tuple=True)
    return xs, zs


def _logaddexp(a: float, b: float) -> float:
    hi, lo = max(a, b), min(a, b)
    return hi + math.log1p(math.exp(lo - hi))


def _log_sigmoid(u: float) -> float:
    return -_logaddexp(0.0, -u)


def gidd_share_logit(kernel: GIDD, lam: float) -> float:
    """``logit(s)`` of GIDD's time form (arXiv 2503.04482, Eq. 9-10) at log-SNR ``lam``, from
    scratch in Python floats: bisection on ``u = logit(t)`` of
    ``lambda(u) = log(1 - t) - log(t + c_t)``, ``c_t = B (t (1 - t))^(g/2)``, then
    ``logit(s) = log c_t - log t``."""
    g = kernel.gamma
    log_b = g * math.log(2.0) + math.log(kernel.p_uniform) - math.log1p(-kernel.p_uniform)

    def parts(u):
        log_t, log_1mt = _log_sigmoid(u), _log_sigmoid(-u)
        return log_t, log_1mt, log_b + 0.5 * g * (log_t + log_1mt)

    lo, hi = -1e4, 1e4  # lambda(u) decreases in u
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        log_t, log_1mt, log_c = parts(mid)
        if log_1mt - _logaddexp(log_t, log_c) > lam:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 4e-16 * max(1.0, abs(mid)):
            break
    log_t, _, log_c = parts(0.5 * (lo + hi))
    return log_c - log_t


def oracle_pi_fn(kernel):
    """``pi_lambda`` of each family written from its definition (docs/math.md), for the dense oracle.
    Mixtures use ``1 - s = sigmoid(-logit(s))`` so that a tiny mask share keeps full relative
    precision (the finite-difference ``pi'`` divides by it in the weight)."""
    V, m = kernel.vocab_size, kernel.mask_id
    if isinstance(kernel, Prior):
        probs = kernel.probs.to(F64).clone()
        return lambda lam: probs
    if isinstance(kernel, Uniform):
        return lambda lam: torch.full((V,), 1.0 / V, dtype=F64)
    if isinstance(kernel, Masked):
        e_m = torch.zeros(V, dtype=F64)
        e_m[m] = 1.0
        return lambda lam: e_m
    if isinstance(kernel, Hybrid):
        logit_s = lambda lam: kernel.scale * float(lam) + kernel.shift  # noqa: E731
    elif isinstance(kernel, GIDD):
        logit_s = lambda lam: gidd_share_logit(kernel, float(lam))  # noqa: E731
    else:
        raise AssertionError(kernel)

    def pi(lam):
        ell = logit_s(lam)
        out = torch.full((V,), math.exp(_log_sigmoid(ell)) / (V - 1), dtype=F64)
        out[m] = math.exp(_log_sigmoid(-ell))
        return out

    return pi


def dense_oracle(kernel) -> Dense:
    """The dense matrix oracle over this kernel family's ``pi`` (memoized per lambda value)."""
    cache: dict[float, torch.Tensor] = {}
    pi_fn = oracle_pi_fn(kernel)

    def cached(lam: torch.Tensor) -> torch.Tensor:
        key = float(lam)
        if key not in cache:
            cache[key] = pi_fn(lam)
        return cache[key]

    return Dense(kernel.vocab_size, cached, kernel.mask_id)


def random_pairs(kernel, shape, g) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(x, z)`` in the support, ``x`` and ``z`` of ``shape``; about half with ``z = x``."""
    xs, zs = support_pairs(kernel)
    idx = torch.randint(len(xs), shape, generator=g)
    x, z = xs[idx], zs[idx]
    stay = torch.rand(shape, generator=g) < 0.4
    return x, torch.where(stay, x, z)


def x0_probs(logits: torch.Tensor, mask_id) -> torch.Tensor:
    """``softmax(logits)`` with the mask state removed, in float64."""
    logits = logits.to(F64).clone()
    if mask_id is not None:
        logits[..., mask_id] = -math.inf
    return torch.softmax(logits, -1)


def sigmoid(lam: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + torch.exp(-lam))


def close(actual, expected, rtol=1e-8, atol=1e-10, msg=""):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol, msg=msg or None)


def raises(exc, match):
    """``pytest.raises`` that also accepts the jaxtyping import hook's TypeCheckError (it may fire
    first when pytest runs with ``--jaxtyping-packages``)."""
    return pytest.raises((exc, _HookError), match=match)


# -- 1. agreement with the dense oracle ---------------------------------------------------------
@given(seed=seeds, V=vocab_sizes, family=families,
       lams=st.lists(lambdas, min_size=1, max_size=3), per_seq_2d=st.booleans())
@settings(deadline=None)
def test_gidd_matches_dense_oracle_per_sequence(seed, V, family, lams, per_seq_2d):
    g = make_gen(seed)
    kernel = make_kernel(family, V, g)
    dense = dense_oracle(kernel)
    xs, zs = support_pairs(kernel)
    B, P = len(lams), len(xs)
    lam = torch.tensor(lams, dtype=F64)
    base = 2.0 * torch.randn(B, V, V, generator=g, dtype=F64)  # logits per (sequence, clean token)
    logits = base[:, xs]  # [B, P, V]
    x, z = xs.expand(B, P), zs.expand(B, P)
    out = gidd(kernel, logits, x, z, lam[:, None] if per_seq_2d else lam)
    assert out.kl.shape == out.is_div.shape == out.weight.shape == out.loss.shape == (B, P)
    # kl_and_is is public too: feed it log x_hat computed here
    log_x0 = torch.log(x0_probs(logits, kernel.mask_id))
    kl2, is2 = kl_and_is(kernel, log_x0, x, z, lam[:, None].expand(B, P))
    kl3, log_ratio = kl_and_log_ratio(kernel, log_x0, x, z, lam[:, None].expand(B, P))
    exp_kl, exp_is, exp_w, exp_r = (torch.empty(B, P, dtype=F64) for _ in range(4))
    for b in range(B):
        probs = x0_probs(base[b], kernel.mask_id)
        for xv in clean_states(kernel):
            terms = dense.loss_terms(xv, probs[xv], lam[b])
            sel = xs == xv
            assert bool((terms.q[zs[sel]] > 0).all())
            exp_kl[b, sel], exp_is[b, sel], exp_w[b, sel] = (v[zs[sel]] for v in (terms.kl, terms.is_div, terms.weight))
            exp_r[b, sel] = (terms.q / dense.marginal_of_probs(probs[xv], lam[b]))[zs[sel]]
    where = f"{kernel!r}, lams={lams}"
    close(out.kl, exp_kl, msg=f"kl: {where}")
    close(out.is_div, exp_is, msg=f"is: {where}")
    close(out.weight, exp_w, msg=f"weight: {where}")
    close(out.loss, exp_w * (exp_kl + exp_is), msg=f"loss: {where}")
    close(kl2, exp_kl, msg=f"kl_and_is kl: {where}")
    close(is2, exp_is, msg=f"kl_and_is is: {where}")
    close(kl3, exp_kl, msg=f"kl_and_log_ratio kl: {where}")
    close(log_ratio, torch.log(exp_r), msg=f"kl_and_log_ratio d: {where}")


@given(seed=seeds, V=vocab_sizes, family=families)
@settings(deadline=None)
def test_gidd_matches_dense_oracle_per_token(seed, V, family):
    g = make_gen(seed)
    kernel = make_kernel(family, V, g)
    dense = dense_oracle(kernel)
    B, S = 2, 4
    x, z = random_pairs(kernel, (B, S), g)
    lam = torch.rand(B, S, generator=g, dtype=F64) * 18 - 9
    lam[0, 0], lam[-1, -1] = -9.0, 9.0
    logits = 3.0 * torch.randn(B, S, V, generator=g, dtype=F64)
    out = gidd(kernel, logits, x, z, lam)
    probs = x0_probs(logits, kernel.mask_id)
    exp_kl, exp_is, exp_w = (torch.empty(B, S, dtype=F64) for _ in range(3))
    for b in range(B):
        for s in range(S):
            terms = dense.loss_terms(int(x[b, s]), probs[b, s], lam[b, s])
            zi = int(z[b, s])
            assert float(terms.q[zi]) > 0
            exp_kl[b, s], exp_is[b, s], exp_w[b, s] = terms.kl[zi], terms.is_div[zi], terms.weight[zi]
    where = f"{kernel!r}, lam={lam.tolist()}, x={x.tolist()}, z={z.tolist()}"
    close(out.kl, exp_kl, msg=f"kl: {where}")
    close(out.is_div, exp_is, msg=f"is: {where}")
    close(out.weight, exp_w, msg=f"weight: {where}")


@pytest.mark.parametrize("case", ["gidd_small_gamma_f64", "hybrid_large_shift_f32"])
def test_mask_share_does_not_underflow(case):
    """Regression: the mask share ``1 - s`` must be computed as ``sigmoid(-logit(s))``; as
    ``1 - sigmoid(logit(s))`` it rounds to 0 once ``logit(s) > ~37`` (float64) or ``~17``
    (float32) although ``q(m | x) > 0``, and ``w`` and ``IS`` at ``z = m`` became NaN."""
    if case == "gidd_small_gamma_f64":
        kernel, dtype, lam_value = GIDD(4, 0, p_uniform=0.5, gamma=0.3), F64, 9.0  # logit(s) = 52.4
    else:
        kernel, dtype, lam_value = Hybrid(4, 0, shift=12.0, scale=1.0), torch.float32, 9.0  # logit(s) = 21
    x, z = torch.tensor([[1]]), torch.tensor([[0]])  # z = mask: q(z | x) = sigmoid(-lam) (1 - s) > 0
    logits = torch.zeros(1, 1, 4, dtype=dtype)
    out = gidd(kernel, logits, x, z, torch.tensor([lam_value], dtype=dtype))
    terms = dense_oracle(kernel).loss_terms(1, x0_probs(logits[0, 0], 0), lam_value)
    assert float(terms.q[0]) > 0 and math.isfinite(float(terms.weight[0]))
    assert bool(torch.isfinite(out.loss).all()), out
    close(out.weight[0, 0].double(), terms.weight[0], rtol=1e-5)
    close(out.is_div[0, 0].double(), terms.is_div[0], atol=1e-6)  # q_m = p_m: IS = 0


# -- 2. perfect prediction, non-negativity ----------------------------------------------------------
@given(seed=seeds, V=vocab_sizes, family=families, lam=lambdas)
@settings(deadline=None)
def test_perfect_prediction_gives_zero_kl_and_is(seed, V, family, lam):
    g = make_gen(seed)
    kernel = make_kernel(family, V, g)
    xs, zs = support_pairs(kernel)  # every (x, z) in the support
    logits = torch.full((len(xs), V), -math.inf, dtype=F64)
    logits[torch.arange(len(xs)), xs] = 5.0 * torch.randn(len(xs), generator=g, dtype=F64)
    if kernel.mask_id is not None:  # a huge mask logit must be ignored
        logits[:, kernel.mask_id] = 50.0
    out = gidd(kernel, logits, xs, zs, torch.tensor(lam, dtype=F64))
    assert bool(torch.isfinite(out.loss).all())
    close(out.kl, torch.zeros_like(out.kl), atol=1e-12)
    close(out.is_div, torch.zeros_like(out.is_div), atol=1e-12)
    close(out.loss, torch.zeros_like(out.loss), atol=1e-12)


@given(seed=seeds, V=vocab_sizes, family=families)
@settings(deadline=None)
def test_loss_nonnegative_where_weight_nonnegative(seed, V, family):
    g = make_gen(seed)
    kernel = make_kernel(family, V, g)
    x, z = random_pairs(kernel, (4, 8), g)
    lam = torch.rand(4, 8, generator=g, dtype=F64) * 18 - 9
    logits = 4.0 * torch.randn(4, 8, V, generator=g, dtype=F64)
    out = gidd(kernel, logits, x, z, lam)
    assert bool((out.kl >= -1e-13).all()) and bool((out.is_div >= -1e-13).all())
    if family != "gidd":  # uniform/mask mixtures with scale <= 1 and fixed priors: w >= 0 always
        assert bool((out.weight >= 0).all())
    ok = out.weight >= 0
    assert bool((out.loss[ok] >= -1e-13).all())


# -- 3. ELBO tightness for a constant predictor -------------------------------------------------------
def _elbo_integrands(kernel, log_p0: torch.Tensor, xs: list[int], lam: torch.Tensor) -> torch.Tensor:
    """``E_{z ~ q_lambda(.|x)}[w (KL + IS)]`` at every ``lam`` (rows) and ``x`` in ``xs`` (columns),
    with ``z`` enumerated exactly over the support."""
    V = kernel.vocab_size
    Q = Dense.of(kernel).matrix(0.0)
    pairs = [(x, z) for x in xs for z in range(V) if Q[x, z] > 0]
    px = torch.tensor([p[0] for p in pairs])
    pz = torch.tensor([p[1] for p in pairs])
    L, P = len(lam), len(pairs)
    out = gidd(kernel, log_p0.expand(L, P, V), px.expand(L, P), pz.expand(L, P), lam)
    q = sigmoid(lam)[:, None] * (pz == px).to(F64) + sigmoid(-lam)[:, None] * kernel.pi(lam)[:, pz]
    q_ok = q > 0
    integrand = out.integrand
    assert bool(torch.isfinite(integrand[q_ok]).all())
    close(integrand[q_ok], (out.weight * (out.kl + out.is_div))[q_ok])
    per_pair = torch.where(q_ok, q * integrand, torch.zeros_like(q))
    return torch.stack([per_pair[:, px == x].sum(-1) for x in xs], -1)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("seed", [0, 1])
def test_elbo_is_tight_for_constant_predictor(family, seed):
    g = make_gen(1000 + seed)
    V = 3 + seed * 3
    kernel = make_kernel(family, V, g)
    p0 = torch.softmax(torch.randn(V, generator=g, dtype=F64), -1)  # mass on the mask state too
    log_p0 = torch.log(p0)
    p0_clean = p0.clone()
    if kernel.mask_id is not None:
        p0_clean[kernel.mask_id] = 0.0
    p0_clean = p0_clean / p0_clean.sum()
    lam = torch.linspace(-60.0, 60.0, 6001, dtype=F64)  # step 0.02
    xs = clean_states(kernel)[:2]
    dens = _elbo_integrands(kernel, log_p0, xs, lam)  # [L, len(xs)]
    assert bool((dens[0].abs() < 1e-15).all()) and bool((dens[-1].abs() < 1e-15).all())  # decayed at both ends
    total = torch.trapezoid(dens, lam, dim=0)
    expected = -torch.log(p0_clean[xs])
    close(total, expected, rtol=0, atol=1e-10, msg=f"{kernel!r}: {total.tolist()} vs {expected.tolist()}")
    inner = lam.abs() <= 9.0 + 1e-9
    assert int(inner.sum()) == 901
    clamped = torch.trapezoid(dens[inner], lam[inner], dim=0)
    assert bool((clamped > 0).all()) and bool((clamped < expected - 1e-8).all()), (kernel, clamped, expected)


# -- 4. reductions: MDLM, simple CE, UDLM / Duo ---------------------------------------------------------
def _masked_setup(seed, V, dtype=F64):
    g = make_gen(seed)
    m = int(torch.randint(V, (), generator=g))
    kernel = Masked(V, m)
    B, S = 3, 7
    x = torch.randint(V - 1, (B, S), generator=g)
    x = x + (x >= m).long()  # never the mask id
    masked_pos = torch.rand(B, S, generator=g) < 0.5
    z = torch.where(masked_pos, torch.full_like(x, m), x)
    logits = (3.0 * torch.randn(B, S, V, generator=g, dtype=F64)).to(dtype)
    # CE computed by torch on the logits with the mask column dropped
    keep = [j for j in range(V) if j != m]
    target = x - (x > m).long()
    ce = F.cross_entropy(logits.to(F64)[..., keep].reshape(-1, V - 1), target.reshape(-1),
                         reduction="none").reshape(B, S)
    return g, kernel, x, z, masked_pos, logits, ce


@given(seed=seeds, V=vocab_sizes)
@settings(deadline=None)
def test_masked_kernel_reduces_to_mdlm(seed, V):
    g, kernel, x, z, masked_pos, logits, ce = _masked_setup(seed, V)
    t = 0.01 + 0.98 * torch.rand(3, 7, generator=g, dtype=F64)
    lam = torch.log1p(-t) - torch.log(t)  # alpha = 1 - t
    alpha = 1.0 - t
    expected = torch.where(masked_pos, alpha * ce, torch.zeros_like(ce))
    out_g = gidd(kernel, logits, x, z, lam)
    out_m = mdlm(kernel, logits, x, z, lam)
    close(out_g.loss, expected)
    close(out_m.loss, expected)
    close(out_m.kl, alpha * ce)
    close(out_m.is_div, torch.zeros_like(ce), atol=0)
    close(out_m.weight, masked_pos.to(F64), atol=0)
    close(out_g.weight, masked_pos.to(F64), atol=1e-15)
    # MDLM's time form: CE / t on masked tokens, 0 on clean ones
    time_form = torch.where(masked_pos, ce / t, torch.zeros_like(ce))
    close(nelbo_estimate(out_m, UNCLAMPED, t), time_form)
    close(nelbo_estimate(out_g, UNCLAMPED, t), time_form)
    # per-sequence lambda too
    t1 = t[:, 0]
    out_m1 = mdlm(kernel, logits, x, z, torch.log1p(-t1) - torch.log(t1))
    close(nelbo_estimate(out_m1, UNCLAMPED, t1), torch.where(masked_pos, ce / t1[:, None], torch.zeros_like(ce)))
    # reductions of mdlm
    sel = torch.rand(3, 7, generator=g) < 0.6
    close(mdlm(kernel, logits, x, z, lam, reduction="sum").loss, expected.sum())
    close(mdlm(kernel, logits, x, z, lam, reduction="mean", mask=sel).loss,
          expected[sel].sum() / max(int(sel.sum()), 1))


@given(seed=seeds, V=vocab_sizes)
@settings(deadline=None)
def test_masked_ce_is_plain_ce_on_masked_tokens(seed, V):
    g, kernel, x, z, masked_pos, logits, ce = _masked_setup(seed, V)
    per_token = torch.where(masked_pos, ce, torch.zeros_like(ce))
    close(masked_ce(kernel, logits, x, z, reduction="none"), per_token)
    close(masked_ce(kernel, logits, x, z, reduction="sum"), per_token.sum())
    close(masked_ce(kernel, logits, x, z), per_token.sum() / per_token.numel())  # default "mean"
    close(masked_ce(kernel, logits, x, z, reduction="mean"), per_token.mean())
    sel = torch.rand(3, 7, generator=g) < 0.5
    n = int(sel.sum())
    close(masked_ce(kernel, logits, x, z, reduction="sum", mask=sel), per_token[sel].sum())
    close(masked_ce(kernel, logits, x, z, reduction="mean", mask=sel), per_token[sel].sum() / max(n, 1))
    close(masked_ce(kernel, logits, x, z, reduction="none", mask=sel),
          torch.where(sel, per_token, torch.zeros_like(per_token)))
    # and it is the weight-free version of MDLM: weight = 1 on masked tokens
    lam = torch.zeros(3, dtype=F64)
    close(mdlm(kernel, logits, x, z, lam).loss, 0.5 * per_token)


def udlm_nelbo_density(x: torch.Tensor, z: torch.Tensor, logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """UDLM's continuous-time NELBO per token (Schiff et al. 2024, arXiv 2412.10193), alpha = 1 - t.

    ``f = (alpha' / (N alpha)) [N / xbar_i - N / xbar_theta_i
           - sum_j (xbar_j / xbar_i) log((xbar_theta_i xbar_j) / (xbar_theta_j xbar_i))]``
    with ``xbar = N alpha x + (1 - alpha) 1``, ``i = z_t``.
    """
    N = logits.shape[-1]
    alpha = (1.0 - t).unsqueeze(-1)
    dalpha = -1.0
    x_onehot = F.one_hot(x, N).to(F64)
    x_theta = torch.softmax(logits.to(F64), -1)
    xbar = N * alpha * x_onehot + (1 - alpha)
    xbar_theta = N * alpha * x_theta + (1 - alpha)
    i = z.unsqueeze(-1)
    xbar_i = xbar.gather(-1, i)
    xbar_theta_i = xbar_theta.gather(-1, i)
    s = ((xbar / xbar_i) * torch.log((xbar_theta_i * xbar) / (xbar_theta * xbar_i))).sum(-1, keepdim=True)
    f = (dalpha / (N * alpha)) * (N / xbar_i - N / xbar_theta_i - s)
    return f.squeeze(-1)


def udlm_case_split(x, z, logits, t):
    """The same density with the sum written out case by case (a check on the function above):
    ``a = alpha``, ``b = 1 - a``, ``xbar_x = N a + b``, ``xbar_j = b`` otherwise, ``y = xbar_theta``.
    ``z = x``: ``sum = (b / (N a + b)) sum_{j != x} log(y_x b / (y_j (N a + b)))``;
    ``z = i != x``: ``sum = ((N a + b) / b) log(y_i (N a + b) / (y_x b)) + sum_{j != x, i} log(y_i / y_j)``.
    """
    N = logits.shape[-1]
    a = 1.0 - t
    b = 1.0 - a
    y = N * a.unsqueeze(-1) * torch.softmax(logits.to(F64), -1) + b.unsqueeze(-1)
    out = torch.empty_like(t)
    for idx in itertools.product(*(range(n) for n in t.shape)):
        xi, zi, ai, bi, yi = int(x[idx]), int(z[idx]), a[idx], b[idx], y[idx]
        top = N * ai + bi
        if zi == xi:
            s = sum((bi / top) * torch.log(yi[xi] * bi / (yi[j] * top)) for j in range(N) if j != xi)
            bracket = N / top - N / yi[xi] - s
        else:
            s = (top / bi) * torch.log(yi[zi] * top / (yi[xi] * bi))
            s = s + sum(torch.log(yi[zi] / yi[j]) for j in range(N) if j not in (xi, zi))
            bracket = N / bi - N / yi[zi] - s
        out[idx] = (-1.0 / (N * ai)) * bracket
    return out


@given(seed=seeds, V=vocab_sizes, per_token=st.booleans())
@settings(deadline=None)
def test_uniform_kernel_is_udlm_duo_elbo(seed, V, per_token):
    g = make_gen(seed)
    B, S = 3, 8
    kernel = Uniform(V)
    x = torch.randint(V, (B, S), generator=g)
    other = (x + torch.randint(1, V, (B, S), generator=g)) % V  # z != x
    z = torch.where(torch.arange(S) % 2 == 0, x, other)  # both cases in every sequence
    t = 0.01 + 0.98 * torch.rand((B, S) if per_token else (B,), generator=g, dtype=F64)
    t_tok = t if per_token else t[:, None].expand(B, S)
    lam = torch.log(1 - t) - torch.log(t)
    logits = 2.5 * torch.randn(B, S, V, generator=g, dtype=F64)
    got = nelbo_estimate(gidd(kernel, logits, x, z, lam), UNCLAMPED, t)
    f = udlm_nelbo_density(x, z, logits, t_tok)
    assert bool((f >= -1e-12).all())
    close(got, f, rtol=1e-9, atol=1e-11)
    close(udlm_case_split(x, z, logits, t_tok), f, rtol=1e-9, atol=1e-11)


# -- 5. gradients ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_gradcheck_wrt_logits(family):
    g = make_gen(FAMILIES.index(family))
    V = 4
    kernel = make_kernel(family, V, g)
    x, z = random_pairs(kernel, (1, 4), g)
    lam = torch.rand(1, 4, generator=g, dtype=F64) * 16 - 8
    logits = (2.0 * torch.randn(1, 4, V, generator=g, dtype=F64)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda lg: gidd(kernel, lg, x, z, lam, beta_is=0.7, max_weight=0.9).loss,
                                    (logits,), eps=1e-6, atol=1e-7, rtol=1e-5)
    if kernel.mask_id is not None:
        gidd(kernel, logits, x, z, lam).loss.sum().backward()
        assert bool((logits.grad[..., kernel.mask_id] == 0).all())
        assert bool(torch.isfinite(logits.grad).all())


def test_mdlm_mask_logit_gets_no_gradient():
    _, kernel, x, z, _, logits, _ = _masked_setup(7, 6)
    logits.requires_grad_(True)
    lam = torch.zeros(3, dtype=F64)
    (mdlm(kernel, logits, x, z, lam).loss.sum() + masked_ce(kernel, logits, x, z)).backward()
    assert bool((logits.grad[..., kernel.mask_id] == 0).all())
    assert torch.autograd.gradcheck(lambda lg: mdlm(kernel, lg, x, z, lam).loss, (logits,))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_zero_weight_tokens_stay_finite_when_x_hat_underflows(dtype):
    """Clean tokens under masked noise have w = 0; a predictor that puts (numerically) zero mass
    on x there makes r = q_x / p_x overflow, which must not turn the loss or its gradient into NaN."""
    kernel = Masked(5, 4)
    x = torch.tensor([[0, 1, 2, 3]])
    z = torch.tensor([[0, 4, 2, 4]])  # clean, masked, clean, masked
    logits = torch.zeros(1, 4, 5, dtype=dtype)
    logits[0, :, 3] = 1000.0  # x_hat_x = e^-1000 at positions 0-2; x = 3 at position 3 is confident
    logits.requires_grad_(True)
    lam = torch.tensor([2.0], dtype=dtype)
    out = gidd(kernel, logits, x, z, lam)
    alpha = sigmoid(torch.tensor(2.0, dtype=F64))
    expected = torch.tensor([[0.0, 1000.0 * float(alpha), 0.0, 0.0]], dtype=F64)
    close(out.loss.double(), expected, rtol=1e-6, atol=1e-6)
    out.loss.sum().backward()
    assert bool(torch.isfinite(logits.grad).all())
    close(logits.grad[0, 0].double(), torch.zeros(5, dtype=F64), atol=0, rtol=0)  # w = 0: no gradient
    close(logits.grad[0, 2].double(), torch.zeros(5, dtype=F64), atol=0, rtol=0)


# -- 6. dtypes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_output_dtypes(family):
    g = make_gen(11)
    V = 7
    kernel = make_kernel(family, V, g)
    x, z = random_pairs(kernel, (2, 5), g)
    lam = torch.rand(2, generator=g, dtype=F64) * 18 - 9
    logits = 2.0 * torch.randn(2, 5, V, generator=g, dtype=F64)

    def parts(out: LossOutput):
        return (out.loss, out.kl, out.is_div, out.weight)

    for dt in (F64, torch.float32):
        out = gidd(kernel, logits.to(dt), x, z, lam.to(dt))
        assert all(p.dtype == dt for p in parts(out)), (dt, [p.dtype for p in parts(out)])
    bf = logits.to(torch.bfloat16)
    out_bf = gidd(kernel, bf, x, z, lam.float())
    assert all(p.dtype == torch.float32 for p in parts(out_bf))
    out_32 = gidd(kernel, bf.float(), x, z, lam.float())
    for a, b in zip(parts(out_bf), parts(out_32)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # and float32 agrees with float64 on the same logits
    out_64 = gidd(kernel, bf.double(), x, z, lam.float().double())
    for a, b in zip(parts(out_32), parts(out_64)):
        torch.testing.assert_close(a.double(), b, rtol=2e-4, atol=2e-5)


def test_masked_losses_dtypes():
    _, kernel, x, z, _, logits, _ = _masked_setup(3, 5)
    lam = torch.zeros(3, dtype=torch.float32)
    for dt, want in ((F64, F64), (torch.float32, torch.float32), (torch.bfloat16, torch.float32)):
        out = mdlm(kernel, logits.to(dt), x, z, lam.to(F64) if dt == F64 else lam)
        assert out.loss.dtype == out.kl.dtype == out.is_div.dtype == out.weight.dtype == want
        assert masked_ce(kernel, logits.to(dt), x, z).dtype == want


# -- 7. numerics at vocabulary 100,278 --------------------------------------------------------------
@pytest.mark.parametrize("lam_value", [-9.0, 9.0])
def test_uniform_kl_at_full_vocab(lam_value):
    V = 100_278
    g = make_gen(42)
    kernel = Uniform(V)
    x = torch.randint(V, (1, 4), generator=g)
    z = torch.stack([x[0, 0], torch.randint(V, (), generator=g), x[0, 2], torch.randint(V, (), generator=g)])[None]
    logits = 3.0 * torch.randn(1, 4, V, generator=g, dtype=torch.float32)
    logits[0, 1, x[0, 1]] += 12.0  # one confident, correct position
    logits[0, 3, z[0, 3]] += 12.0  # one confident, wrong position
    lam = torch.tensor([lam_value], dtype=torch.float32)
    out = gidd(kernel, logits, x, z, lam)
    for part in (out.loss, out.kl, out.is_div, out.weight):
        assert part.dtype == torch.float32 and bool(torch.isfinite(part).all())
    # independent float64 dense computation
    lam64 = torch.tensor(lam_value, dtype=F64)
    alpha, beta = sigmoid(lam64), sigmoid(-lam64)
    p = alpha * torch.softmax(logits.double(), -1) + beta / V
    q = torch.full_like(p, float(beta) / V)
    q.scatter_add_(-1, x[..., None], torch.full_like(p[..., :1], float(alpha)))
    kl = (q * torch.log(q / p)).sum(-1)
    assert bool((kl > 0).all())
    torch.testing.assert_close(out.kl.double(), kl, rtol=1e-4, atol=0)
    r = q.gather(-1, z[..., None]).squeeze(-1) / p.gather(-1, z[..., None]).squeeze(-1)
    is_div = r - torch.log(r) - 1
    torch.testing.assert_close(out.is_div.double(), is_div, rtol=1e-3, atol=1e-9)
    w = torch.where(z == x, 1.0 / (1.0 + V * torch.exp(lam64)), torch.ones((), dtype=F64))
    torch.testing.assert_close(out.weight.double(), w, rtol=1e-5, atol=0)


# -- 8. reduce() ----------------------------------------------------------------------------------------
def test_reduce_semantics():
    g = make_gen(5)
    v = torch.randn(3, 5, generator=g, dtype=F64)
    close(reduce(v, "none"), v, atol=0, rtol=0)
    close(reduce(v, "sum"), torch.tensor(sum(float(a) for a in v.flatten()), dtype=F64))
    close(reduce(v, "mean"), torch.tensor(sum(float(a) for a in v.flatten()) / 15, dtype=F64))
    close(reduce(v), v.sum() / 15)  # default is "mean"
    mask = torch.rand(3, 5, generator=g) < 0.5
    mask[0, 0], mask[0, 1] = True, False
    picked = [float(a) for a, k in zip(v.flatten(), mask.flatten()) if k]
    close(reduce(v, "none", mask), torch.where(mask, v, torch.zeros_like(v)), atol=0, rtol=0)
    close(reduce(v, "sum", mask), torch.tensor(sum(picked), dtype=F64))
    close(reduce(v, "mean", mask), torch.tensor(sum(picked) / len(picked), dtype=F64))
    empty = torch.zeros(3, 5, dtype=torch.bool)
    for red in ("mean", "sum"):
        r = reduce(v, red, empty)
        assert r.shape == () and float(r) == 0.0 and not torch.isnan(r)
    assert bool((reduce(v, "none", empty) == 0).all())
    # masked positions holding inf/nan must not leak into the reduction
    bad = v.clone()
    bad[0, 1] = math.nan
    close(reduce(bad, "mean", mask), torch.tensor(sum(picked) / len(picked), dtype=F64))
    assert reduce(v.float(), "mean").dtype == torch.float32


def test_reduce_rejects_bad_arguments():
    v = torch.zeros(2, 3)
    with raises(ValueError, match="reduction"):
        reduce(v, "average")
    with raises(TypeError, match="mask"):
        reduce(v, "mean", torch.ones(2, 3))
    with raises(TypeError, match="mask"):
        reduce(v, "mean", torch.ones(2, 3, dtype=torch.long))
    with raises(ValueError, match="mask"):
        reduce(v, "mean", torch.ones(3, 2, dtype=torch.bool))


@given(seed=seeds, family=families)
@settings(deadline=None)
def test_gidd_reduction_argument(seed, family):
    g = make_gen(seed)
    kernel = make_kernel(family, 6, g)
    x, z = random_pairs(kernel, (3, 4), g)
    lam = torch.rand(3, generator=g, dtype=F64) * 18 - 9
    logits = torch.randn(3, 4, 6, generator=g, dtype=F64)
    per = gidd(kernel, logits, x, z, lam).loss
    mask = torch.rand(3, 4, generator=g) < 0.5
    close(gidd(kernel, logits, x, z, lam, reduction="sum").loss, per.sum())
    close(gidd(kernel, logits, x, z, lam, reduction="mean").loss, per.mean())
    close(gidd(kernel, logits, x, z, lam, reduction="mean", mask=mask).loss,
          per[mask].sum() / max(int(mask.sum()), 1))
    close(gidd(kernel, logits, x, z, lam, reduction="none", mask=mask).loss,
          torch.where(mask, per, torch.zeros_like(per)))


# -- 9. max_weight and beta_is ----------------------------------------------------------------------------
@given(seed=seeds, family=families, beta=st.floats(0.0, 3.0), clip=st.floats(0.05, 2.0))
@settings(deadline=None)
def test_max_weight_and_beta_is(seed, family, beta, clip):
    g = make_gen(seed)
    kernel = make_kernel(family, 6, g)
    x, z = random_pairs(kernel, (3, 6), g)
    lam = torch.rand(3, 6, generator=g, dtype=F64) * 18 - 9
    logits = 2.0 * torch.randn(3, 6, 6, generator=g, dtype=F64)
    ref = gidd(kernel, logits, x, z, lam)
    out = gidd(kernel, logits, x, z, lam, beta_is=beta, max_weight=clip)
    # the parts do not depend on beta_is or on the clip
    close(out.kl, ref.kl, atol=0, rtol=0)
    close(out.is_div, ref.is_div, atol=0, rtol=0)
    close(out.weight, ref.weight, atol=0, rtol=0)
    close(out.integrand, ref.weight * (ref.kl + ref.is_div))
    w_clip = torch.minimum(ref.weight, torch.full_like(ref.weight, clip))
    close(out.loss, w_clip * ref.kl + beta * w_clip * ref.is_div)
    # beta_is alone: loss = w kl + beta w is
    only_beta = gidd(kernel, logits, x, z, lam, beta_is=beta)
    close(only_beta.loss, ref.weight * ref.kl + beta * ref.weight * ref.is_div)
    close(gidd(kernel, logits, x, z, lam, beta_is=0.0).loss, ref.weight * ref.kl)
    # a clip above every weight changes nothing
    big = float(ref.weight.abs().max()) + 1.0
    close(gidd(kernel, logits, x, z, lam, max_weight=big).loss, ref.loss, atol=0, rtol=0)


def test_max_weight_actually_clips():
    kernel = Hybrid(5, 0, shift=0.0, scale=1.0)  # w = 1 + s on the mask state
    x = torch.tensor([[1, 2]])
    z = torch.tensor([[0, 0]])
    lam = torch.tensor([0.0], dtype=F64)  # s = 1/2: w = 1.5
    logits = torch.zeros(1, 2, 5, dtype=F64)
    out = gidd(kernel, logits, x, z, lam, max_weight=1.2)
    close(out.weight, torch.full((1, 2), 1.5, dtype=F64))
    close(out.loss, 1.2 * (out.kl + out.is_div))
    assert bool((out.loss > 0).all())


# -- 10. bad input ----------------------------------------------------------------------------------------
def _bad_case_inputs():
    kernel = Masked(5, 4)
    x = torch.tensor([[0, 1, 2], [3, 0, 1]])
    z = torch.tensor([[4, 1, 4], [3, 4, 1]])
    logits = torch.zeros(2, 3, 5, dtype=F64)
    lam = torch.zeros(2, dtype=F64)
    return kernel, x, z, logits, lam


@pytest.mark.parametrize(
    ("case", "exc", "match"),
    [
        ("x_negative", ValueError, r"\bx\b"),
        ("x_too_large", ValueError, r"\bx\b"),
        ("z_too_large", ValueError, r"\bz\b"),
        ("z_negative", ValueError, r"\bz\b"),
        ("x_is_mask", ValueError, r"x contains the mask id"),
        ("x_float", TypeError, r"\bx\b"),
        ("xz_shape", ValueError, r"shape"),
        ("lam_nan", ValueError, r"lam.*NaN"),
        ("lam_inf", ValueError, r"lam.*finite"),
        ("lam_neg_inf", ValueError, r"lam.*finite"),
        ("lam_int", TypeError, r"lam"),
        ("lam_shape", ValueError, r"lam"),
        ("logits_vocab", ValueError, r"logits"),
        ("logits_positions", ValueError, r"logits"),
        ("logits_no_vocab_dim", ValueError, r"logits"),
        ("max_weight_zero", ValueError, r"max_weight"),
        ("max_weight_negative", ValueError, r"max_weight"),
        ("max_weight_nan", ValueError, r"max_weight"),
    ],
)
def test_gidd_rejects_bad_input(case, exc, match):
    kernel, x, z, logits, lam = _bad_case_inputs()
    kw = {}
    if case == "x_negative":
        x = x.clone(); x[0, 0] = -1
    elif case == "x_too_large":
        x = x.clone(); x[1, 2] = 5
    elif case == "z_too_large":
        z = z.clone(); z[0, 1] = 5
    elif case == "z_negative":
        z = z.clone(); z[0, 1] = -3
    elif case == "x_is_mask":
        x = x.clone(); x[0, 1] = 4
    elif case == "x_float":
        x = x.double()
    elif case == "xz_shape":
        z = z[:, :2]
    elif case == "lam_nan":
        lam = torch.tensor([0.0, math.nan], dtype=F64)
    elif case == "lam_inf":
        lam = torch.tensor([math.inf, 0.0], dtype=F64)
    elif case == "lam_neg_inf":
        lam = torch.full((2, 3), -math.inf, dtype=F64)
    elif case == "lam_int":
        lam = torch.zeros(2, dtype=torch.long)
    elif case == "lam_shape":
        lam = torch.zeros(4, dtype=F64)
    elif case == "logits_vocab":
        logits = torch.zeros(2, 3, 6, dtype=F64)
    elif case == "logits_positions":
        logits = torch.zeros(2, 4, 5, dtype=F64)
    elif case == "logits_no_vocab_dim":
        logits = torch.zeros(2, 3, dtype=F64)
    elif case == "max_weight_zero":
        kw["max_weight"] = 0.0
    elif case == "max_weight_negative":
        kw["max_weight"] = -1.0
    elif case == "max_weight_nan":
        kw["max_weight"] = math.nan
    with raises(exc, match=match):
        gidd(kernel, logits, x, z, lam, **kw)


def test_uniform_kernel_bad_ids():
    kernel = Uniform(4)
    logits = torch.zeros(1, 2, 4, dtype=F64)
    lam = torch.zeros(1, dtype=F64)
    with raises(ValueError, match=r"\bx\b"):
        gidd(kernel, logits, torch.tensor([[0, 4]]), torch.tensor([[0, 1]]), lam)
    with raises(ValueError, match=r"\bz\b"):
        gidd(kernel, logits, torch.tensor([[0, 3]]), torch.tensor([[0, 4]]), lam)


@pytest.mark.parametrize("kernel", [Uniform(5), Hybrid(5, 4), Prior(torch.full((5,), 0.2)),
                                    Prior(torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0]), mask_id=4)],
                         ids=["uniform", "hybrid", "prior", "prior_mask"])
def test_masked_losses_need_masked_kernel(kernel):
    _, x, z, logits, lam = _bad_case_inputs()
    with pytest.raises(TypeError, match="Masked"):
        mdlm(kernel, logits, x, z, lam)
    with pytest.raises(TypeError, match="Masked"):
        masked_ce(kernel, logits, x, z)


def test_masked_losses_reject_bad_input():
    kernel, x, z, logits, lam = _bad_case_inputs()
    with raises(ValueError, match=r"x contains the mask id"):
        mdlm(kernel, logits, torch.where(x == 0, 4, x), z, lam)
    with raises(ValueError, match=r"\bz\b"):
        masked_ce(kernel, logits, x, z + 1)
    with raises(ValueError, match=r"lam.*NaN"):
        mdlm(kernel, logits, x, z, torch.tensor([math.nan, 0.0], dtype=F64))
    with raises(ValueError, match=r"lam.*finite"):
        mdlm(kernel, logits, x, z, torch.tensor([math.inf, 0.0], dtype=F64))
    with raises(ValueError, match=r"logits"):
        masked_ce(kernel, torch.zeros(2, 3, 4, dtype=F64), x, z)
    with raises(ValueError, match="reduction"):
        masked_ce(kernel, logits, x, z, reduction="avg")


# -- 11. nelbo_estimate() and elbo_weight_in_time() ---------------------------------------------------------------
@given(seed=seeds, family=families, per_token=st.booleans(), cosine=st.booleans())
@settings(deadline=None)
def test_nelbo_is_speed_times_integrand(seed, family, per_token, cosine):
    g = make_gen(seed)
    V = 6
    kernel = make_kernel(family, V, g)
    B, S = 3, 5
    x, z = random_pairs(kernel, (B, S), g)
    t = 0.02 + 0.96 * torch.rand((B, S) if per_token else (B,), generator=g, dtype=F64)
    if cosine:
        schedule = Cosine(log_snr_min=-math.inf, log_snr_max=math.inf)
        lam = 2.0 * torch.log(1.0 / torch.tan(0.5 * math.pi * t))
        speed = 2.0 * math.pi / torch.sin(math.pi * t)
    else:
        schedule = UNCLAMPED
        lam = torch.log(1.0 - t) - torch.log(t)
        speed = 1.0 / (t * (1.0 - t))
    close(schedule.log_snr(t), lam)
    logits = 2.0 * torch.randn(B, S, V, generator=g, dtype=F64)
    out = gidd(kernel, logits, x, z, lam, beta_is=0.3, max_weight=0.7)  # nelbo ignores the surrogate
    exact = gidd(kernel, logits, x, z, lam)
    integrand = exact.weight * (exact.kl + exact.is_div)
    speed_tok = speed if per_token else speed[:, None]
    close(nelbo_estimate(out, schedule, t), speed_tok * integrand)
    close(elbo_weight_in_time(schedule, t), speed)


def test_nelbo_is_zero_where_schedule_clamps():
    kernel = Uniform(4)
    schedule = LinearAlpha()  # lambda clamped to [-9, 9]
    t = torch.tensor([1e-5, 0.3, 1 - 1e-5], dtype=F64)  # lambda(t) = 11.5, 0.85, -11.5
    lam = schedule.log_snr(t)
    x = torch.tensor([[0, 1], [2, 3], [1, 1]])
    z = torch.tensor([[1, 1], [2, 0], [0, 1]])
    out = gidd(kernel, torch.randn(3, 2, 4, generator=make_gen(0), dtype=F64), x, z, lam)
    got = nelbo_estimate(out, schedule, t)
    assert bool((got[0] == 0).all()) and bool((got[2] == 0).all())
    close(got[1], out.integrand[1] / (0.3 * 0.7))
    close(elbo_weight_in_time(schedule, t), torch.tensor([0.0, 1 / (0.3 * 0.7), 0.0], dtype=F64))


@given(t=st.floats(min_value=1e-6, max_value=1 - 1e-6))
def test_elbo_weight_in_time_linear_alpha(t):
    tt = torch.tensor([t, 0.5 * t, 1 - 0.5 * t], dtype=F64)
    close(elbo_weight_in_time(UNCLAMPED, tt), 1.0 / (tt * (1.0 - tt)), rtol=1e-12)
    close(elbo_weight_in_time(UNCLAMPED, 0.25), torch.tensor(1 / (0.25 * 0.75), dtype=F64), rtol=1e-12)


def test_nelbo_is_a_deprecated_alias_of_nelbo_estimate():
    """dd.nelbo / dd.losses.nelbo (a one-sample estimate) sat next to dd.likelihood.nelbo (the
    integral over a grid): renamed nelbo_estimate; the old names warn and still work."""
    kernel = Uniform(4)
    t = torch.tensor([0.3, 0.6], dtype=F64)
    x = torch.tensor([[0, 1], [2, 3]])
    z = torch.tensor([[1, 1], [2, 0]])
    out = gidd(kernel, torch.randn(2, 2, 4, generator=make_gen(1), dtype=F64), x, z, UNCLAMPED.log_snr(t))
    want = nelbo_estimate(out, UNCLAMPED, t)
    for alias in (dd.nelbo, dd.losses.nelbo):
        with pytest.warns(DeprecationWarning, match="nelbo_estimate"):
            got = alias(out, UNCLAMPED, t)
        assert torch.equal(got, want)
