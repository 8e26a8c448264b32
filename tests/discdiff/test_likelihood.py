"""NELBO estimation (:func:`discdiff.likelihood.nelbo`).

Oracles: a dense float64 re-derivation of the ELBO integrand for a constant predictor ``p0``
(written out here from docs/math.md, independent of :mod:`discdiff.losses`), integrated by
quadrature (``-log p0(x)`` over all log-SNRs, docs/math.md, "Invariants", 6) and summed exactly over the
noisy token ``z`` for the deterministic time grid; paired runs sharing one seeded generator
(which makes clamped/unclamped and conditional/unconditional comparisons exact); a perfect
predictor (NELBO 0).  Monte-Carlo comparisons use tolerances of 4 standard errors computed
from the samples themselves.  All randomness goes through seeded ``torch.Generator`` objects.
"""

from __future__ import annotations

import math

import pytest
import torch

from discdiff.kernels import Hybrid, Masked, Uniform
from discdiff.errors import NonFiniteError
from discdiff.likelihood import HiddenStates, LikelihoodOutput, nelbo
from discdiff.schedules import LinearAlpha

F64 = torch.float64
UNCLAMPED = LinearAlpha(log_snr_min=-math.inf, log_snr_max=math.inf)
CLAMPED = LinearAlpha()  # [-9, 9], the default
V = 4
KINDS = ("uniform", "masked", "hybrid")

try:  # under pytest's jaxtyping hook a shape/dtype mismatch is caught before the library's check
    from jaxtyping import TypeCheckError as _HookError
except ImportError:  # pragma: no cover
    _HookError = TypeError


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_kernel(kind: str, vocab: int = V):
    if kind == "uniform":
        return Uniform(vocab)
    if kind == "masked":
        return Masked(vocab, vocab - 1)
    return Hybrid(vocab, vocab - 1, shift=0.0, scale=1.0)


def p0_of(vocab: int = V) -> torch.Tensor:
    """A fixed predictor with mass on every state (the mask state too: it must be dropped)."""
    return torch.softmax(torch.randn(vocab, generator=gen(0), dtype=F64), 0)


def clean_p0(kernel) -> torch.Tensor:
    p = p0_of(kernel.vocab_size).clone()
    if kernel.mask_id is not None:
        p[kernel.mask_id] = 0.0
    return p / p.sum()


def constant_denoiser(kernel):
    log_p0 = torch.log(p0_of(kernel.vocab_size))

    def denoiser(z):
        return log_p0.expand(*z.shape, kernel.vocab_size)
    return denoiser


def clean_tokens(kernel, shape, g) -> torch.Tensor:
    n = kernel.vocab_size - (kernel.mask_id is not None)
    return torch.randint(n, shape, generator=g)  # the mask id is the last id: never drawn


# -- the dense oracle ---------------------------------------------------------------------
def _pi_and_dpi(kernel, lam: torch.Tensor):
    """``pi_lambda`` and ``d pi / d lambda`` as [L, V] from docs/math.md (u excludes the mask)."""
    Vk, L = kernel.vocab_size, lam.shape[0]
    if isinstance(kernel, Uniform):
        return torch.full((L, Vk), 1.0 / Vk, dtype=F64), torch.zeros(L, Vk, dtype=F64)
    m = kernel.mask_id
    u = torch.full((Vk,), 1.0 / (Vk - 1), dtype=F64)
    u[m] = 0.0
    e_m = torch.zeros(Vk, dtype=F64)
    e_m[m] = 1.0
    if isinstance(kernel, Masked):
        return e_m.expand(L, Vk), torch.zeros(L, Vk, dtype=F64)
    s = torch.sigmoid(kernel.scale * lam + kernel.shift)[:, None]
    return s * u + (1 - s) * e_m, kernel.scale * s * (1 - s) * (u - e_m)


def expected_integrand(kernel, p0: torch.Tensor, x: int, lam: torch.Tensor) -> torch.Tensor:
    """``E_{z ~ q_lambda(.|x)}[w (KL + IS)]`` per unit log-SNR, z summed exactly, at every ``lam``."""
    pi, dpi = _pi_and_dpi(kernel, lam)
    a, b = torch.sigmoid(lam)[:, None], torch.sigmoid(-lam)[:, None]
    e_x = torch.zeros(kernel.vocab_size, dtype=F64)
    e_x[x] = 1.0
    q, p = a * e_x + b * pi, a * p0 + b * pi
    live = q > 0
    kl = torch.where(live, q * torch.log(q / p), torch.zeros_like(q)).sum(-1, keepdim=True)
    r = q / p
    w = (pi - dpi) / (pi + torch.exp(lam)[:, None] * e_x)
    return torch.where(live, q * w * (kl + r - torch.log(r) - 1), torch.zeros_like(q)).sum(-1)


def grid_expectation(kernel, p0: torch.Tensor, points: int) -> torch.Tensor:
    """The exact expectation over z of the midpoint-grid estimator (alpha = 1 - t), per clean x."""
    t = (torch.arange(points, dtype=F64) + 0.5) / points
    lam = torch.log1p(-t) - torch.log(t)
    n = kernel.vocab_size - (kernel.mask_id is not None)
    return torch.stack([(expected_integrand(kernel, p0, x, lam) / (t * (1 - t))).mean() for x in range(n)])


def clamped_integral(kernel, p0: torch.Tensor, lo: float = -9.0, hi: float = 9.0) -> torch.Tensor:
    lam = torch.linspace(lo, hi, 3601, dtype=F64)
    n = kernel.vocab_size - (kernel.mask_id is not None)
    return torch.stack([torch.trapezoid(expected_integrand(kernel, p0, x, lam), lam) for x in range(n)])


@pytest.mark.parametrize("kind", KINDS)
def test_oracle_is_tight_and_clamp_falls_short(kind):
    """The oracle itself: over all log-SNRs it integrates to -log p0(x); over [-9, 9] it falls short."""
    kernel = make_kernel(kind)
    p0 = clean_p0(kernel)
    full = clamped_integral(kernel, p0, -60.0, 60.0)
    target = -torch.log(p0[: full.numel()])
    torch.testing.assert_close(full, target, rtol=0, atol=1e-8)
    inner = clamped_integral(kernel, p0)
    assert bool((inner < target - 1e-6).all()) and bool((inner > 0.99 * target).all())


# -- tightness and convergence of the deterministic grid ------------------------------------
def _mean_and_se(values: torch.Tensor) -> tuple[float, float]:
    values = values.flatten()
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_grid_is_tight_and_converges(kind):
    kernel = make_kernel(kind)
    p0 = clean_p0(kernel)
    den = constant_denoiser(kernel)
    g = gen(100)
    neg_log_p0 = -torch.log(p0)
    biases = []
    # same cost per grid size: tokens x points = 2^20; deterministic grid -> tokens are iid
    for points, shape in [(4, (128, 2048)), (16, (64, 1024)), (128, (32, 256))]:
        x = clean_tokens(kernel, shape, g)
        out = nelbo(den, kernel, x, schedule=UNCLAMPED, points=points, generator=g)
        exact = grid_expectation(kernel, p0, points)  # E_z of the estimator, per clean state
        mean, se = _mean_and_se(out.per_token - exact[x])
        assert abs(mean) < 4 * se, (points, mean, se)
        bias_mc, se_mc = _mean_and_se(out.per_token - neg_log_p0[x])
        biases.append((float((exact - neg_log_p0[: exact.numel()]).abs().max()), bias_mc, se_mc))
    (b4, mc4, se4), (b16, _, _), (b128, mc128, se128) = biases
    # at 128 points the estimate equals -log p0(x) within the Monte-Carlo error
    assert abs(mc128) < 4 * se128, (mc128, se128)
    if kind == "masked":
        # alpha = 1 - t makes the masked integrand constant in t: every grid is exact in expectation
        assert b4 < 1e-12 and b16 < 1e-12 and b128 < 1e-12
    else:
        assert b4 > b16 > b128 and b128 < 5e-3  # the quadrature bias shrinks with the grid
        assert mc4 < -4 * se4  # and at 4 points it is large enough for the estimate to see


def test_default_clamped_grid_at_128_points_never_reaches_the_clamp():
    # midpoints t in [1/256, 255/256] give |lambda| <= log 255 < 9: the clamp changes nothing
    kernel = make_kernel("uniform")
    x = clean_tokens(kernel, (4, 16), gen(1))
    a = nelbo(constant_denoiser(kernel), kernel, x, points=128, generator=gen(2))
    b = nelbo(constant_denoiser(kernel), kernel, x, schedule=UNCLAMPED, points=128, generator=gen(2))
    assert torch.equal(a.per_token, b.per_token)


@pytest.mark.parametrize("kind", ["uniform", "masked"])
def test_clamped_schedule_falls_short(kind):
    """Paired runs (one seed): with stratified times some points fall beyond |lambda| = 9; the
    default schedule gives them zero speed, the unclamped one their (non-negative) integrand.
    Everywhere else both see the same z, so clamped <= unclamped token by token."""
    kernel = make_kernel(kind)
    x = clean_tokens(kernel, (1024, 16), gen(3))
    den = constant_denoiser(kernel)
    clamped = nelbo(den, kernel, x, points=32, stratified=True, generator=gen(4))
    unclamped = nelbo(den, kernel, x, schedule=UNCLAMPED, points=32, stratified=True, generator=gen(4))
    diff = unclamped.per_token - clamped.per_token
    assert bool((diff >= -1e-9).all())
    touched = diff.sum(-1) > 1e-9  # sequences with a time point in the clamped region
    # P(a given sequence's first or last stratum lands in the clamp) = 2 * 32 * sigmoid(-9) ~ 0.8%
    assert 2 <= int(touched.sum()) <= 25
    assert bool((clamped.per_sequence < unclamped.per_sequence - 1e-9)[touched].all())
    assert torch.equal(clamped.per_token[~touched], unclamped.per_token[~touched])


# -- stratified times -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["uniform", "masked", "hybrid"])
def test_stratified_is_unbiased(kind):
    kernel = make_kernel(kind)
    p0 = clean_p0(kernel)
    x = clean_tokens(kernel, (256, 64), gen(5))
    out = nelbo(constant_denoiser(kernel), kernel, x, points=32, stratified=True, generator=gen(6))
    target = clamped_integral(kernel, p0)[x]  # the exact NELBO over the schedule's [-9, 9]
    # times are drawn per sequence: sequences are the independent units.  Their means are
    # right-skewed (a first stratum just inside lambda = 9 has speed up to ~8100), so a typical
    # sample sits below the mean with an underestimated SE: 5 SE (4 failed 2 of ~40 seeds tried).
    mean, se = _mean_and_se((out.per_token - target).mean(-1))
    assert abs(mean) < 5 * se, (mean, se)


def test_stratified_is_reproducible_and_random():
    kernel = make_kernel("hybrid")
    x = clean_tokens(kernel, (8, 32), gen(7))
    den = constant_denoiser(kernel)
    a = nelbo(den, kernel, x, points=16, stratified=True, generator=gen(8))
    b = nelbo(den, kernel, x, points=16, stratified=True, generator=gen(8))
    c = nelbo(den, kernel, x, points=16, stratified=True, generator=gen(9))
    d = nelbo(den, kernel, x, points=16, stratified=False, generator=gen(8))
    assert torch.equal(a.per_token, b.per_token)
    assert not torch.equal(a.per_token, c.per_token)
    assert not torch.equal(a.per_token, d.per_token)


# -- effective SNR ----------------------------------------------------------------------------
def _plain_and_effective(kernel, shape, points, seed):
    x = clean_tokens(kernel, shape, gen(seed))
    den = constant_denoiser(kernel)
    plain = nelbo(den, kernel, x, points=points, generator=gen(seed + 1))
    eff = nelbo(den, kernel, x, points=points, effective_snr=True, generator=gen(seed + 2))
    return x, plain, eff


def test_effective_snr_close_to_plain_on_long_sequences_masked():
    kernel = make_kernel("masked")
    x, plain, eff = _plain_and_effective(kernel, (48, 512), 32, 10)
    m_p, se_p = _mean_and_se(plain.per_token_mean)
    m_e, se_e = _mean_and_se(eff.per_token_mean)
    assert abs(m_p - m_e) < 4 * math.hypot(se_p, se_e), (m_p, m_e, se_p, se_e)
    target = float(-torch.log(clean_p0(kernel))[x].mean())
    assert abs(m_e - target) < 4 * se_e


@pytest.mark.parametrize("family", ["uniform", "hybrid"])
def test_effective_snr_close_to_plain_on_long_sequences_with_uniform_noise(family):
    """Uniform noise can redraw x itself: the match rate must be corrected for it (at V = 4 an
    uncorrected estimate was ~1 nat/token too high)."""
    kernel = make_kernel(family)
    _, plain, eff = _plain_and_effective(kernel, (48, 512), 32, 20)
    m_p, se_p = _mean_and_se(plain.per_token_mean)
    m_e, se_e = _mean_and_se(eff.per_token_mean)
    assert abs(m_p - m_e) < 4 * math.hypot(se_p, se_e), (m_p, m_e, se_p, se_e)


# -- conditional likelihood (frozen context) ---------------------------------------------------
def test_frozen_context_is_never_noised_nor_counted():
    kernel = make_kernel("hybrid")
    g = gen(40)
    B, S = 6, 20
    x = clean_tokens(kernel, (B, S), g)
    frozen = torch.zeros(B, S, dtype=torch.bool)
    frozen[:, :5] = True
    frozen[2, 10:12] = True
    frozen[5] = True  # a fully frozen sequence: nothing counted
    log_p0 = torch.log(p0_of())
    seen_noise = []

    def denoiser(z):
        assert torch.equal(z[frozen], x[frozen]), "frozen context reached the denoiser changed"
        seen_noise.append(bool((z[~frozen] != x[~frozen]).any()))
        return log_p0.expand(*z.shape, V)

    for effective_snr in (False, True):
        out = nelbo(denoiser, kernel, x, points=8, frozen=frozen, effective_snr=effective_snr, generator=g)
        assert bool((out.per_token[frozen] == 0).all())
        assert bool((out.per_token[~frozen] > 0).any())
        assert out.num_tokens.tolist() == (~frozen).sum(-1).tolist()
        torch.testing.assert_close(out.per_sequence, out.per_token.sum(-1), rtol=0, atol=1e-12)
        assert float(out.per_token_mean[5]) == 0.0
    assert any(seen_noise)  # the rest was noised


def test_conditional_equals_unconditional_for_a_context_blind_denoiser():
    """The denoiser ignores context, so conditioning changes nothing but what is counted: with
    one seed (frozen positions still consume their draws) the unfrozen values are identical,
    and with independent seeds they agree in expectation."""
    kernel = make_kernel("uniform")
    x = clean_tokens(kernel, (64, 64), gen(50))
    frozen = torch.zeros_like(x, dtype=torch.bool)
    frozen[:, :16] = True
    den = constant_denoiser(kernel)
    cond = nelbo(den, kernel, x, points=32, frozen=frozen, generator=gen(51))
    uncond = nelbo(den, kernel, x, points=32, generator=gen(51))
    torch.testing.assert_close(cond.per_token[~frozen], uncond.per_token[~frozen], rtol=0, atol=1e-12)
    other = nelbo(den, kernel, x, points=32, generator=gen(52))
    m_c, se_c = _mean_and_se(cond.per_token[~frozen])
    m_u, se_u = _mean_and_se(other.per_token[~frozen])
    assert abs(m_c - m_u) < 4 * math.hypot(se_c, se_u)
    torch.testing.assert_close(cond.per_token_mean, cond.per_token[:, 16:].sum(-1) / 48, rtol=0, atol=1e-12)


# -- bookkeeping --------------------------------------------------------------------------------
def test_output_bookkeeping_and_callback():
    kernel = make_kernel("masked")
    x = clean_tokens(kernel, (3, 7), gen(60))
    calls = []
    out = nelbo(constant_denoiser(kernel), kernel, x, points=5, generator=gen(61),
                callback=lambda i, n: calls.append((i, n)))
    assert isinstance(out, LikelihoodOutput)
    assert calls == [(i, 5) for i in range(1, 6)]
    assert out.per_token.shape == (3, 7) and out.per_token.dtype == F64
    torch.testing.assert_close(out.per_sequence, out.per_token.sum(-1), rtol=0, atol=1e-12)
    assert out.num_tokens.tolist() == [7, 7, 7]
    torch.testing.assert_close(out.per_token_mean, out.per_sequence / 7, rtol=0, atol=1e-12)
    one = []
    nelbo(constant_denoiser(kernel), kernel, x, points=1, generator=gen(62), callback=lambda i, n: one.append((i, n)))
    assert one == [(1, 1)]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["grid", "stratified", "effective"])
def test_perfect_predictor_gives_zero(kind, mode):
    kernel = make_kernel(kind)
    x = clean_tokens(kernel, (4, 32), gen(70))
    logits = torch.full((*x.shape, V), -math.inf, dtype=F64)
    logits.scatter_(-1, x.unsqueeze(-1), 0.0)

    def denoiser(z):  # closes over x: it always knows the answer
        return logits

    out = nelbo(denoiser, kernel, x, schedule=UNCLAMPED if mode == "grid" else CLAMPED, points=16,
                stratified=mode == "stratified", effective_snr=mode == "effective", generator=gen(71))
    assert bool(torch.isfinite(out.per_token).all())
    assert float(out.per_token.abs().max()) < 1e-12


# -- bad input -----------------------------------------------------------------------------------
def _call(x, **kw):
    kernel = kw.pop("kernel", Masked(V, V - 1))
    return nelbo(constant_denoiser(kernel), kernel, x, generator=gen(0), **kw)


GOOD = torch.zeros(2, 3, dtype=torch.long)


@pytest.mark.parametrize(
    "x, kw, exc, match",
    [
        (torch.zeros(6, dtype=torch.long), {}, ValueError, "x must be"),
        (torch.zeros(1, 2, 3, dtype=torch.long), {}, ValueError, "x must be"),
        (torch.tensor([[0, 4]]), {}, ValueError, "x"),
        (torch.tensor([[0, -1]]), {}, ValueError, "x"),
        (torch.tensor([[0, 3]]), {}, ValueError, "mask id"),  # Masked(4, 3): the mask id
        (torch.zeros(2, 3), {}, (TypeError,), "x"),
        (GOOD, {"points": 0}, ValueError, "points"),
        (GOOD, {"points": -2}, ValueError, "points"),
        (GOOD, {"points": 2.0}, (ValueError, TypeError), "points"),
        (GOOD, {"points": True}, (ValueError, TypeError), "points"),
        (GOOD, {"frozen": torch.zeros(2, 4, dtype=torch.bool)}, (ValueError, _HookError), "frozen"),
        (GOOD, {"frozen": torch.zeros(3, dtype=torch.bool)}, (ValueError, _HookError), "frozen"),
        (GOOD, {"frozen": torch.zeros(2, 3, dtype=torch.long)}, (ValueError, TypeError), "frozen"),
    ],
    ids=["1d", "3d", "id-too-big", "negative-id", "mask-id", "float-x", "points-0", "points-neg",
         "points-float", "points-bool", "frozen-shape", "frozen-1d", "frozen-dtype"],
)
def test_nelbo_rejects_bad_input(x, kw, exc, match):
    with pytest.raises(exc, match=match):
        _call(x, **kw)


def test_uniform_kernel_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="x"):
        _call(torch.tensor([[0, V]]), kernel=Uniform(V))
    _call(torch.tensor([[0, V - 1]]), kernel=Uniform(V), points=2)  # every id is clean without a mask


# -- a denoiser that returns NaN, and one conditioned on the log-SNR --------------------------------------
@pytest.mark.parametrize("bad", [math.nan, math.inf, "all -inf"])
def test_unusable_logits_raise_naming_the_denoiser(bad):
    """A NaN-returning denoiser gave a NaN NELBO silently; now one check at the end names the cause."""
    kernel = make_kernel("hybrid")
    x = torch.zeros(2, 3, dtype=torch.long)
    good = constant_denoiser(kernel)

    def denoiser(z):
        logits = good(z).clone()
        if bad == "all -inf":
            logits[1, 2, :] = -math.inf
            logits[1, 2, kernel.mask_id] = 0.0  # the mask logit is ignored: x_hat is still undefined
        else:
            logits[1, 2, 0] = bad
        return logits

    with pytest.raises(ValueError, match="denoiser's logits are not usable.*first at time point 0 of 4"):
        nelbo(denoiser, kernel, x, points=4, generator=gen(0))
    # at a frozen (context, not counted) position they do not matter
    frozen = torch.zeros(2, 3, dtype=torch.bool)
    frozen[1, 2] = True
    out = nelbo(denoiser, kernel, x, points=4, frozen=frozen, generator=gen(0))
    assert bool(torch.isfinite(out.per_token).all())


def test_nan_from_the_kernel_is_named_as_such():
    class NaNWeight(Uniform):
        def weight(self, x, z, lam):
            return torch.full_like(super().weight(x, z, lam), math.nan)

    kernel = NaNWeight(V)
    with pytest.raises(ValueError, match="NELBO is NaN at 6 tokens although the denoiser's logits were finite"):
        nelbo(constant_denoiser(kernel), kernel, torch.zeros(2, 3, dtype=torch.long), points=2, generator=gen(0))


class _TimeDenoiser(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, []

    def forward(self, input_ids, lam):
        self.seen.append(lam)
        return self.inner(input_ids)


@pytest.mark.parametrize("effective_snr", [False, True])
def test_time_conditioned_denoisers_receive_the_log_snr_of_the_integrand(effective_snr):
    """The denoiser never received lambda; now denoiser(z, lam) gets lambda(t_i) (or the effective
    lambda) per sequence, float64, and the NELBO is the same as a plain denoiser's."""
    kernel = make_kernel("uniform")
    x = torch.tensor([[0, 1, 2, 3, 1], [3, 3, 0, 1, 2]])
    seen = []

    def time_denoiser(z, lam):
        seen.append(lam)
        return constant_denoiser(kernel)(z)

    kw = dict(points=6, stratified=True, effective_snr=effective_snr)
    got = nelbo(time_denoiser, kernel, x, generator=gen(5), **kw)
    plain = nelbo(constant_denoiser(kernel), kernel, x, generator=gen(5), **kw)
    torch.testing.assert_close(got.per_token, plain.per_token, rtol=0, atol=0)
    assert len(seen) == 6 and all(lam.dtype == F64 and lam.shape == (2,) for lam in seen)
    if not effective_snr:  # the same stratified times, redrawn from the same seed
        g = gen(5)
        for i, lam in enumerate(seen):
            t = (i + torch.rand(2, generator=g, dtype=F64)) / 6
            torch.testing.assert_close(lam, CLAMPED.log_snr(t), rtol=0, atol=0)
            kernel.corrupt(x, lam, g, validate=False)  # keep the generator in step with nelbo's draws
    module = _TimeDenoiser(constant_denoiser(kernel))
    again = nelbo(module, kernel, x, generator=gen(5), **kw)
    torch.testing.assert_close(again.per_token, plain.per_token, rtol=0, atol=0)
    assert [lam.tolist() for lam in module.seen] == [lam.tolist() for lam in seen]


# -- several time points per denoiser call, and hidden states instead of logits ------------------------
def context_denoiser(kernel, seen: list):
    """Logits that depend on the whole noisy sequence (a token's own embedding plus the mean of
    its row's), so stacked rows from several time points must each keep to themselves; records
    every ``z`` it is called on."""
    table = torch.randn(kernel.vocab_size, kernel.vocab_size, generator=gen(80), dtype=F64)

    def denoiser(z):
        seen.append(z)
        own = table[z]
        return own + 0.5 * own.mean(-2, keepdim=True)
    return denoiser


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["grid", "stratified", "effective"])
def test_points_per_call_draws_the_same_noise_and_gives_the_same_estimate(kind, mode):
    """Stacking k time points into one call ([k * batch, seq], point-major) changes nothing: the
    noise is drawn point by point in the same order and each row's logits depend on that row only."""
    kernel = make_kernel(kind)
    x = clean_tokens(kernel, (3, 9), gen(81))
    frozen = torch.zeros_like(x, dtype=torch.bool)
    frozen[:, :2] = True
    kw = dict(points=7, stratified=mode == "stratified", effective_snr=mode == "effective", frozen=frozen)
    results, seen, calls = {}, {}, {}
    for k in (1, 3, 7, 50):
        seen[k], calls[k] = [], []
        results[k] = nelbo(context_denoiser(kernel, seen[k]), kernel, x, generator=gen(82), points_per_call=k,
                           callback=lambda i, n, k=k: calls[k].append((i, n)), **kw)
    for k in (3, 7, 50):
        assert torch.equal(torch.cat(seen[k]), torch.cat(seen[1]))  # the same noise, in the same order
        # the same per-token values (float64 vectorized over more rows: rounding only)
        torch.testing.assert_close(results[k].per_token, results[1].per_token, rtol=1e-14, atol=1e-14)
    shapes = {k: ([tuple(z.shape) for z in seen[k]], calls[k]) for k in seen}
    assert shapes[1] == ([(3, 9)] * 7, [(i, 7) for i in range(1, 8)])
    assert shapes[3] == ([(9, 9), (9, 9), (3, 9)], [(3, 7), (6, 7), (7, 7)])
    assert shapes[7] == shapes[50] == ([(21, 9)], [(7, 7)])


def test_points_per_call_passes_one_log_snr_per_stacked_row():
    kernel = make_kernel("uniform")
    x = clean_tokens(kernel, (2, 5), gen(83))
    seen = []

    def time_denoiser(z, lam):
        seen.append(lam)
        return constant_denoiser(kernel)(z)

    nelbo(time_denoiser, kernel, x, points=4, points_per_call=3, generator=gen(84))
    t = (torch.arange(4, dtype=F64) + 0.5) / 4
    lam = CLAMPED.log_snr(t).repeat_interleave(2)  # point-major: point 0's rows, then point 1's, ...
    assert [s.shape for s in seen] == [(6,), (2,)]
    torch.testing.assert_close(torch.cat(seen), lam, rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("mode", ["grid", "stratified", "effective"])
def test_hidden_states_give_the_estimate_of_their_logits(kind, mode):
    """A denoiser returning HiddenStates(h, W) is scored by the fused loss; with the same noise
    the estimate equals that of the logits h @ W.T (float64: to 1e-12), for any points_per_call."""
    kernel = make_kernel(kind, vocab=11)
    x = clean_tokens(kernel, (4, 13), gen(85))
    frozen = torch.zeros_like(x, dtype=torch.bool)
    frozen[1, 5:] = True
    head = torch.randn(11, 6, generator=gen(86), dtype=F64)
    table = torch.randn(11, 6, generator=gen(87), dtype=F64)

    def hidden(z):
        own = table[z]
        return own + own.mean(-2, keepdim=True)

    kw = dict(points=12, stratified=mode == "stratified", effective_snr=mode == "effective", frozen=frozen)
    want = nelbo(lambda z: hidden(z) @ head.T, kernel, x, generator=gen(88), **kw)
    for k in (1, 5, 12):
        got = nelbo(lambda z: HiddenStates(hidden(z), head), kernel, x, generator=gen(88), points_per_call=k, **kw)
        torch.testing.assert_close(got.per_token, want.per_token, rtol=1e-12, atol=1e-12)
    assert float(want.per_sequence.min()) > 0


def test_hidden_states_of_a_constant_predictor_match_the_dense_oracle():
    """The fused path against the float64 oracle: a constant predictor p0 written as hidden
    states (ones) times a one-column head (log p0); the exact expectation of the grid estimator
    per clean token, within 4 standard errors."""
    kernel = make_kernel("hybrid")
    p0 = clean_p0(kernel)
    head = torch.log(p0_of(kernel.vocab_size)).unsqueeze(-1)  # [V, 1]

    def denoiser(z):
        return HiddenStates(torch.ones(*z.shape, 1, dtype=F64), head)

    x = clean_tokens(kernel, (64, 256), gen(89))
    out = nelbo(denoiser, kernel, x, schedule=UNCLAMPED, points=16, points_per_call=4, generator=gen(90))
    exact = grid_expectation(kernel, p0, 16)
    mean, se = _mean_and_se(out.per_token - exact[x])
    assert abs(mean) < 4 * se, (mean, se)


@pytest.mark.parametrize("hidden_states", [False, True])
@pytest.mark.parametrize("points_per_call", [1, 3, 8])
def test_first_unusable_point_is_named_when_points_share_a_call(hidden_states, points_per_call):
    """Logits turn NaN from time point 5 on (lambda decreases along the grid): the error names
    point 5 whichever call holds it; at a frozen position it does not matter."""
    kernel = make_kernel("uniform")
    x = clean_tokens(kernel, (2, 4), gen(91))
    lam_5 = float(CLAMPED.log_snr(torch.tensor(5.5 / 8, dtype=F64)))
    head = torch.eye(V, dtype=F64)

    def denoiser(z, lam):
        out = torch.log(p0_of()).expand(*z.shape, V).clone()
        out[lam <= lam_5 + 1e-9, 3] = math.nan  # position 3 of every row from point 5 on
        return HiddenStates(out, head) if hidden_states else out

    with pytest.raises(NonFiniteError, match="first at time point 5 of 8"):
        nelbo(denoiser, kernel, x, points=8, points_per_call=points_per_call, generator=gen(92))
    frozen = torch.zeros_like(x, dtype=torch.bool)
    frozen[:, 3] = True
    out = nelbo(denoiser, kernel, x, points=8, points_per_call=points_per_call, frozen=frozen, generator=gen(92))
    assert bool(torch.isfinite(out.per_token).all())


@pytest.mark.parametrize(
    "kw, exc, match",
    [
        ({"points_per_call": 0}, ValueError, "points_per_call"),
        ({"points_per_call": 1.5}, (ValueError, TypeError), "points_per_call"),
        ({"denoiser": lambda z: HiddenStates(torch.zeros(*z.shape, 3), torch.zeros(V + 1, 3))}, ValueError,
         "head_weight must have shape"),
        ({"denoiser": lambda z: HiddenStates(torch.zeros(z.shape[0], 3), torch.zeros(V, 3))}, (ValueError, _HookError),
         "hidden"),
        ({"denoiser": lambda z: HiddenStates(torch.zeros(*z.shape, 3), torch.zeros(V, 3, dtype=F64))}, TypeError,
         "same dtype"),
        ({"denoiser": lambda z: torch.zeros(*z.shape, V + 1)}, (ValueError, _HookError), "shape"),
        ({"denoiser": lambda z: z}, TypeError, "floating-point logits"),
    ],
    ids=["ppc-0", "ppc-float", "head-vocab", "hidden-shape", "dtypes", "logits-shape", "int-logits"],
)
def test_bad_calls_and_outputs_are_named(kw, exc, match):
    kernel = Uniform(V)
    denoiser = kw.pop("denoiser", constant_denoiser(kernel))
    with pytest.raises(exc, match=match):
        nelbo(denoiser, kernel, GOOD, points=2, generator=gen(0), **kw)
