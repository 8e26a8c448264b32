"""Classifier guidance (``discdiff.guidance.ClassifierGuided``, D-CBG) against independent oracles.

Oracles: a brute-force loop over every position and token that classifies each one-token change
in float64; a classifier whose ``log p(y | x)`` is affine in the one-hot input (first order is
then exact); the second-order term ``1/2 d^T H d`` of the expansion from autograd's
Hessian-vector product (the first-order error must match it up to third order); the wrapped
rule's own step on the tilted logits computed outside; the binomial closed form of the target
rate under a uniform denoiser.  Every draw uses an explicit seeded ``torch.Generator``.
"""

from __future__ import annotations

import math

import pytest
import torch

import discdiff as dd
from discdiff.guidance import ClassifierGuided, candidate_log_likelihoods
from discdiff.samplers import (
    Adaptive,
    Ancestral,
    Confidence,
    Denoised,
    Greedy,
    TauLeaping,
    linear_alpha_grid,
    sample,
)

F64 = torch.float64
V, MASK, L = 7, 6, 4


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class MLP:
    """A nonlinear token classifier on one-hot input: ``tanh(x W1 + sigmoid(lam) u) W2``."""

    def __init__(self, seed: int, vocab: int = V, seq: int = L, classes: int = 3, hidden: int = 5):
        g = _gen(seed)
        self.w1 = torch.randn(seq * vocab, hidden, generator=g, dtype=F64)
        self.u = torch.randn(hidden, generator=g, dtype=F64)
        self.w2 = torch.randn(hidden, classes, generator=g, dtype=F64)
        self.lams = []

    def __call__(self, x, lam):
        self.lams.append(lam.clone())
        feat = torch.sigmoid(lam).to(x.dtype)
        feat = feat[:, None] if feat.dim() == 1 else feat.mean(-1, keepdim=True)
        h = torch.tanh(x.flatten(1) @ self.w1.to(x.dtype) + feat * self.u.to(x.dtype))
        return h @ self.w2.to(x.dtype)


class AffineLogProb:
    """Two classes with ``log p(0 | x) = f(x) = -sum_l A[l, x_l] - c(lam)``, affine in the one-hot
    ``x`` (``A > 0`` keeps ``f < 0``): the logits ``[f, log(1 - e^f)]`` are already normalized."""

    def __init__(self, seed: int):
        self.a = 0.1 + torch.rand(L, V, generator=_gen(seed), dtype=F64)

    def __call__(self, x, lam):
        f = -(x * self.a.to(x.dtype)).sum((1, 2)) - 0.1 - 0.05 * torch.sigmoid(lam).to(x.dtype)
        return torch.stack([f, torch.log(-torch.expm1(f))], -1)


class Scaled:
    """Class logits ``eps M x + eps^2 (u . x)^2 q``: nonlinear in ``x``, curvature O(eps^2)."""

    def __init__(self, seed: int, eps: float):
        g = _gen(seed)
        self.m = torch.randn(L * V, 3, generator=g, dtype=F64)
        self.u = torch.randn(L * V, generator=g, dtype=F64)
        self.q = torch.randn(3, generator=g, dtype=F64)
        self.eps = eps

    def __call__(self, x, lam):
        flat = x.flatten(1)
        return self.eps * flat @ self.m + (self.eps * flat @ self.u)[:, None] ** 2 * self.q


def _brute_force(classifier, z, lam, target, vocab=V):
    """``log p(y | z with l set to v)`` by looping over every ``(b, l, v)``, in float64."""
    B, S = z.shape
    out = torch.empty(B, S, vocab, dtype=F64)
    for b in range(B):
        for l in range(S):
            for v in range(vocab):
                zz = z[b].clone()
                zz[l] = v
                x = torch.nn.functional.one_hot(zz, vocab).to(F64)[None]
                out[b, l, v] = torch.log_softmax(classifier(x, lam[b:b + 1]), -1)[0, target[b]]
    return out


def _tokens(seed: int, batch: int = 3, vocab: int = V):
    return torch.randint(0, vocab, (batch, L), generator=_gen(seed))


# ----------------------------------------------------------------------------- the classifier term
@pytest.mark.parametrize("rows", [None, 1, 5, 1000])
def test_exact_is_the_brute_force_enumeration(rows):
    clf, z = MLP(1), _tokens(2)
    lam = torch.tensor([-2.0, 0.5, 3.0], dtype=F64)
    target = torch.tensor([0, 2, 1])
    got = candidate_log_likelihoods(clf, z, lam, target, V, approximation="exact", dtype=F64, rows=rows)
    torch.testing.assert_close(got, _brute_force(clf, z, lam, target), rtol=0, atol=1e-12)
    assert not got.requires_grad


@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_taylor_is_exact_for_an_affine_log_probability(dtype):
    clf, z = AffineLogProb(3), _tokens(4)
    lam, target = torch.tensor([-1.0, 0.0, 2.0], dtype=F64), torch.zeros(3, dtype=torch.long)
    want = _brute_force(clf, z, lam, target)
    exact = candidate_log_likelihoods(clf, z, lam, target, V, approximation="exact", dtype=dtype)
    taylor = candidate_log_likelihoods(clf, z, lam, target, V, approximation="taylor", dtype=dtype)
    tol = 1e-12 if dtype == F64 else 1e-5
    assert taylor.dtype == dtype and exact.dtype == dtype
    torch.testing.assert_close(taylor.to(F64), want, rtol=0, atol=tol)
    torch.testing.assert_close(exact.to(F64), want, rtol=0, atol=tol)


def test_taylor_error_is_the_second_order_term():
    """The first-order error ``exact - taylor`` is ``1/2 d^T H d + O(eps^3)`` for the one-hot step
    ``d = e_v - e_{z_l}`` and Hessian ``H`` of ``log p(y | x)``; so ``error / eps^2`` stays bounded
    (and away from 0) as the classifier's weights scale by ``eps -> 0``."""
    z, lam, target = _tokens(5, batch=2), torch.zeros(2, dtype=F64), torch.tensor([0, 2])
    ratios = []
    for eps in (1e-1, 1e-2, 1e-3):
        clf = Scaled(6, eps)
        exact = candidate_log_likelihoods(clf, z, lam, target, V, approximation="exact", dtype=F64)
        taylor = candidate_log_likelihoods(clf, z, lam, target, V, approximation="taylor", dtype=F64)
        err = exact - taylor
        second = torch.zeros_like(err)
        for b in range(2):
            x0 = torch.nn.functional.one_hot(z[b], V).to(F64)[None]

            def log_p(x, b=b):
                return torch.log_softmax(clf(x, lam[b:b + 1]), -1)[0, target[b]]

            for l in range(L):
                for v in range(V):
                    d = torch.zeros_like(x0)
                    d[0, l, v] += 1.0
                    d[0, l, z[b, l]] -= 1.0
                    _, hd = torch.autograd.functional.hvp(log_p, x0, d)
                    second[b, l, v] = 0.5 * (d * hd).sum()
        assert float((err - second).abs().max()) <= 50 * eps ** 3, eps
        ratios.append(float(err.abs().max()) / eps ** 2)
    assert all(0.1 < r < 100 for r in ratios), ratios
    assert max(ratios) / min(ratios) < 1.5, ratios  # the same second-order coefficient at every eps


def test_taylor_runs_under_no_grad_and_inference_mode():
    clf, z = MLP(7), _tokens(8)
    lam, target = torch.zeros(3, dtype=F64), torch.tensor([1, 1, 0])
    want = candidate_log_likelihoods(clf, z, lam, target, V, dtype=F64)
    with torch.no_grad():
        assert torch.equal(candidate_log_likelihoods(clf, z, lam, target, V, dtype=F64), want)
    with torch.inference_mode():
        zi, lami, ti = z.clone(), lam.clone(), target.clone()
        assert torch.equal(candidate_log_likelihoods(clf, zi, lami, ti, V, dtype=F64), want)
    # a classifier whose output has a gradient but not in its input: every candidate is the same
    weight = torch.zeros(4, dtype=F64, requires_grad=True)
    flat = candidate_log_likelihoods(lambda x, lam: weight.expand(x.shape[0], 4), z, lam, target, V, dtype=F64)
    assert torch.equal(flat, torch.full((3, L, V), -math.log(4), dtype=F64))


def test_the_result_is_clamped_to_a_finite_log_probability():
    """A class probability of exactly 0 gives ``log tiny``, a first-order estimate above 0 gives 0."""
    z, lam, target = _tokens(9), torch.zeros(3, dtype=F64), torch.zeros(3, dtype=torch.long)

    def impossible(x, lam):
        return torch.stack([0 * x[:, 0, 0] - math.inf, torch.zeros(x.shape[0], dtype=F64)], -1)

    for approximation in ("exact", "taylor"):
        got = candidate_log_likelihoods(impossible, z, lam, target, V, approximation=approximation, dtype=F64)
        assert bool((got == math.log(torch.finfo(F64).tiny)).all())

    def steep(x, lam):  # log p(0 | x) = log sigmoid(8 x[:, 0, 0] - 1): concave, first order overshoots 0
        return torch.stack([8 * x[:, 0, 0] - 1, torch.zeros(x.shape[0], dtype=F64)], -1)

    z0 = torch.ones(3, L, dtype=torch.long)
    taylor = candidate_log_likelihoods(steep, z0, lam, target, V, dtype=F64)
    assert bool((taylor[:, 0, 0] == 0).all())  # log sigmoid(-1) + 8 sigmoid(1) > 0, clamped
    assert bool((taylor <= 0).all())


# ----------------------------------------------------------------------------- the step rule
def _rules():
    uniform, masked, hybrid = dd.Uniform(V), dd.Masked(V, MASK), dd.Hybrid(V, MASK)
    cases = []
    for kernel in (uniform, masked, hybrid):
        cases += [Ancestral(kernel), TauLeaping(kernel), Adaptive(kernel, 2), Greedy(kernel)]
        if kernel.mask_id is not None:
            cases.append(Confidence(kernel))
    return cases


class Table:
    """A toy denoiser: logits from the token and the position; ``-inf`` at the mask state."""

    def __init__(self, seed: int, masked: bool, dtype=torch.float32):
        g = _gen(seed)
        self.table = (1.5 * torch.randn(V, V, generator=g)).to(dtype)
        self.offsets = (1.5 * torch.randn(L, V, generator=g)).to(dtype)
        if masked:
            self.table[:, MASK] = -math.inf

    def __call__(self, z):
        return self.table[z] + self.offsets[: z.shape[-1]]


def _canvas(rule, batch=3, seed=10):
    if rule.mask_id is None:
        return _tokens(seed, batch)
    return torch.full((batch, L), MASK, dtype=torch.long)


@pytest.mark.parametrize("rule", _rules(), ids=repr)
def test_scale_zero_is_the_wrapped_rule_and_calls_no_classifier(rule):
    denoiser, clf = Table(11, rule.mask_id is not None), MLP(12)
    canvas, grid, target = _canvas(rule), linear_alpha_grid(5), torch.tensor([0, 1, 2])
    frozen = torch.zeros(canvas.shape, dtype=torch.bool)
    frozen[:, 0] = True
    for approximation in ("taylor", "exact"):
        guided = ClassifierGuided(rule, clf, 0.0, target=target, approximation=approximation)
        out = sample(denoiser, guided, canvas, grid, frozen, generator=_gen(13)).tokens
        assert torch.equal(out, sample(denoiser, rule, canvas, grid, frozen, generator=_gen(13)).tokens)
    assert clf.lams == []


@pytest.mark.parametrize("rule", _rules(), ids=repr)
@pytest.mark.parametrize("approximation", ["taylor", "exact"])
def test_a_step_is_the_rule_on_the_tilted_logits(rule, approximation):
    """``logits' = log_softmax(logits) + gamma g`` with ``g`` at ``lam_s`` (checked against the
    brute-force oracle, the mask column included: finite, no NaN), and the step is the wrapped
    rule's step on ``logits'`` with the same generator; frozen positions are kept."""
    masked = rule.mask_id is not None
    denoiser, clf = Table(14, masked, dtype=F64), MLP(15)
    z = _canvas(rule)
    if masked:  # some positions already written
        z[:, 1] = torch.tensor([0, 3, 5])
    target, gamma = torch.tensor([2, 0, 1]), 2.5
    lam_t, lam_s = torch.tensor(-0.5, dtype=F64), torch.tensor(1.25, dtype=F64)
    guided = ClassifierGuided(rule, clf, gamma, target=target, approximation=approximation)
    logits = denoiser(z)
    tilted = guided.tilted_logits(logits, z, lam_s)
    assert tilted.dtype == F64 and not bool(torch.isnan(tilted).any())
    assert all(torch.equal(lam, torch.full((lam.shape[0],), 1.25, dtype=F64)) for lam in clf.lams)
    g = _brute_force(clf, z, torch.full((3,), 1.25, dtype=F64), target)
    if approximation == "exact":
        want = torch.log_softmax(logits, -1) + gamma * g
        torch.testing.assert_close(tilted, want, rtol=0, atol=1e-12)
    if masked:  # x_hat of the tilted logits: the mask state excluded, the rest renormalized
        x_hat = Denoised(tilted, MASK).log_probs
        assert bool((x_hat[..., MASK] == -math.inf).all()) and bool(torch.isfinite(x_hat[..., :MASK]).all())
    frozen = torch.zeros(z.shape, dtype=torch.bool)
    frozen[:, 2] = True
    out = guided.step_info(logits, z, lam_t, lam_s, frozen, generator=_gen(16))
    want_out = rule.step_info(tilted, z, lam_t, lam_s, frozen, generator=_gen(16))
    assert torch.equal(out.tokens, want_out.tokens) and torch.equal(out.selected, want_out.selected)
    assert torch.equal(out.tokens[:, 2], z[:, 2])
    assert torch.equal(guided.step(logits, z, lam_t, lam_s, frozen, generator=_gen(16)), want_out.tokens)


def test_a_per_token_log_snr_reaches_the_classifier_per_token():
    rule, clf = Ancestral(dd.Uniform(V)), MLP(17)
    z, target = _tokens(18), torch.tensor([0, 1, 2])
    lam_s = torch.linspace(-1, 1, 3 * L, dtype=F64).view(3, L)
    guided = ClassifierGuided(rule, clf, 1.0, target=target, approximation="exact", rows=L * V)
    tilted = guided.tilted_logits(Table(19, False)(z), z, lam_s)
    assert not bool(torch.isnan(tilted).any())
    assert len(clf.lams) == 3 and all(torch.equal(lam, lam_s[i].expand(L * V, L)) for i, lam in enumerate(clf.lams))


def _count_rate(z, threshold):
    return ((z == 0).sum(-1) >= threshold).double()


@pytest.mark.parametrize("approximation", ["taylor", "exact"])
def test_guidance_raises_the_target_class_rate(approximation):
    """A uniform denoiser with uniform noise samples i.i.d. uniform tokens, so without guidance
    the rate of class 1 = "at least 2 of the 4 tokens are 0" is the binomial tail
    ``P(Bin(4, 1/7) >= 2)``; guidance toward class 1 raises it by many standard errors."""
    batch = 256

    def zeros(x, lam):  # logits [0, 3 (count of token 0) - 4.5]: class 1 iff count >= 2, roughly
        count = x[..., 0].sum(-1)
        return torch.stack([torch.zeros_like(count), 3 * count - 4.5], -1)

    def uniform(z):
        return torch.zeros(*z.shape, V)

    rule, grid = Ancestral(dd.Uniform(V)), linear_alpha_grid(8)
    canvas = torch.randint(0, V, (batch, L), generator=_gen(20))
    target = torch.ones(batch, dtype=torch.long)
    p = 1 / V
    tail = 1 - sum(math.comb(L, k) * p ** k * (1 - p) ** (L - k) for k in range(2))
    se = math.sqrt(tail * (1 - tail) / batch)
    plain = sample(uniform, ClassifierGuided(rule, zeros, 0.0, target=target, approximation=approximation),
                   canvas, grid, generator=_gen(21)).tokens
    assert abs(float(_count_rate(plain, 2).mean()) - tail) < 4 * se
    guided = sample(uniform, ClassifierGuided(rule, zeros, 4.0, target=target, approximation=approximation),
                    canvas, grid, generator=_gen(21)).tokens
    rate = float(_count_rate(guided, 2).mean())
    assert rate > tail + 10 * se + 10 * math.sqrt(0.25 / batch), (rate, tail)


def test_bad_input_is_rejected_with_one_clear_line():
    rule, clf, target = Ancestral(dd.Uniform(V)), MLP(22), torch.tensor([0, 1, 2])
    with pytest.raises(ValueError, match="approximation must be 'taylor' or 'exact', got 'second'"):
        ClassifierGuided(rule, clf, 1.0, target=target, approximation="second")
    for bad in (-0.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="scale"):
            ClassifierGuided(rule, clf, bad, target=target)
    with pytest.raises(TypeError, match="scale"):
        ClassifierGuided(rule, clf, True, target=target)
    with pytest.raises(TypeError, match="target must be an integer tensor"):
        ClassifierGuided(rule, clf, 1.0, target=torch.zeros(3))
    # our checks, or the jaxtyping/beartype hook's under pytest: both name the argument
    with pytest.raises(TypeError, match="rule"):
        ClassifierGuided("ancestral", clf, 1.0, target=target)
    with pytest.raises(TypeError, match="classifier"):
        ClassifierGuided(rule, "clf", 1.0, target=target)
    with pytest.raises(ValueError, match="rows"):
        ClassifierGuided(rule, clf, 1.0, target=target, rows=0)

    z, lam = _tokens(23, batch=4), torch.tensor(0.0, dtype=F64)
    logits = Table(24, False)(z)
    with pytest.raises(ValueError, match="target has 3 class ids but the batch has 4 sequences"):
        ClassifierGuided(rule, clf, 1.0, target=target).step(logits, z, lam, lam)
    with pytest.raises(ValueError, match="target holds class ids in \\[0, 5\\], outside \\[0, 3\\)"):
        ClassifierGuided(rule, clf, 1.0, target=torch.tensor([0, 1, 2, 5])).step(logits, z, lam, lam)
    four = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="class logits \\[4, n_classes\\]"):
        ClassifierGuided(rule, lambda x, lam: clf(x, lam)[0], 1.0, target=four).step(logits, z, lam, lam)
    with pytest.raises(ValueError, match="NaN"):
        ClassifierGuided(rule, lambda x, lam: clf(x, lam) * math.nan, 1.0, target=four).step(logits, z, lam, lam)
    with pytest.raises(ValueError, match="differentiable"):
        ClassifierGuided(rule, lambda x, lam: clf(x.detach(), lam), 1.0, target=four).step(logits, z, lam, lam)
    with pytest.raises(ValueError, match="tokens \\[batch, seq\\]"):
        ClassifierGuided(rule, clf, 1.0, target=four[:1]).step(logits[0], z[0], lam, lam)
