"""Kernels: every docs/math.md invariant through check_kernel, hypothesis properties over families,
per-token shapes and log-SNRs, cross-family identities, and input validation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import discdiff as dd
from discdiff.kernels.base import Kernel
from discdiff.testing import check_kernel
from discdiff.testing import strategies as dst

F64 = torch.float64
INF = math.inf


def _unigram(V: int, seed: int = 0) -> torch.Tensor:
    return torch.softmax(torch.randn(V, generator=torch.Generator().manual_seed(seed), dtype=F64), 0)


REPRESENTATIVES = [
    dd.Uniform(2),
    dd.Uniform(6),
    dd.Masked(2, 1),
    dd.Masked(6, 0),
    dd.Hybrid(6, 5, shift=0.0, scale=1.0),
    dd.Hybrid(7, 3, shift=2.0, scale=0.5),
    dd.Hybrid(5, 4, shift=-2.0, scale=0.0),
    dd.GIDD(6, 5, p_uniform=0.2),
    dd.GIDD(5, 0, p_uniform=0.7, gamma=1.5),
    dd.Prior(_unigram(6)),
    dd.Prior(torch.tensor([0.5, 0.0, 0.25, 0.25], dtype=F64)),
    dd.Prior(torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=F64), mask_id=3),
]


@pytest.mark.parametrize("kernel", REPRESENTATIVES, ids=repr)
def test_all_invariants(kernel):
    check_kernel(kernel)


@given(kernel=dst.kernels(), data=st.data())
def test_marginal_normalized_per_token_and_per_sequence(kernel, data):
    x = data.draw(dst.token_batches(kernel))
    lam = data.draw(dst.log_snr_for(x))
    q = kernel.marginal(x, lam)
    assert q.shape == (*x.shape, kernel.vocab_size)
    assert bool((q >= 0).all())
    torch.testing.assert_close(q.sum(-1), torch.ones(x.shape, dtype=F64))
    # the same as broadcasting lambda by hand, position by position
    lam_full = (lam.unsqueeze(-1) if lam.dim() == 1 else lam).expand(x.shape)
    oracle = dd.Dense.of(kernel)
    for b in range(x.shape[0]):
        for s in range(x.shape[1]):
            torch.testing.assert_close(q[b, s], oracle.matrix(lam_full[b, s])[x[b, s]])


@given(kernel=dst.kernels(), pair=dst.log_snr_pairs(), data=st.data())
def test_chapman_kolmogorov_and_posterior_transport(kernel, pair, data):
    lam_t, lam_s = (torch.tensor(v, dtype=F64) for v in pair)
    V = kernel.vocab_size
    alpha_ts, noise_ts = kernel.transition(lam_t, lam_s)
    T = alpha_ts * torch.eye(V, dtype=F64) + noise_ts.expand(V, V)
    assert bool((T >= -1e-12).all()), "not a Markov kernel"
    x = data.draw(dst.token_batches(kernel, max_batch=1, max_seq=1))[0, 0]
    q_s = kernel.marginal(x[None], lam_s[None])[0]
    q_t = kernel.marginal(x[None], lam_t[None])[0]
    torch.testing.assert_close(q_s @ T, q_t, atol=1e-12, rtol=0)
    # a constant predictor p0: sum_{z_t} q_t(z_t | p0) p(z_s | z_t) = q_s(. | p0)
    p0 = kernel.x0_log_probs(data.draw(dst.logits((V,)))).exp()
    m_t = kernel.marginal_of_probs(p0[None], lam_t[None])[0]
    post = kernel.posterior(p0.expand(V, V), torch.arange(V), lam_t.expand(V), lam_s.expand(V))
    post = torch.where((m_t > 0).unsqueeze(-1), post, torch.zeros_like(post))
    torch.testing.assert_close(m_t @ post, kernel.marginal_of_probs(p0[None], lam_s[None])[0], atol=1e-12, rtol=0)


@given(kernel=dst.kernels(), lam=dst.log_snrs(-30.0, 30.0), data=st.data())
def test_structured_log1p_sum_matches_the_generic_dense_form(kernel, lam, data):
    """The memory-light T of UniformMaskMixture equals the base class's dense sum."""
    lam = torch.full((3,), lam, dtype=F64)
    log_x0 = kernel.x0_log_probs(data.draw(dst.logits((3, kernel.vocab_size))))
    torch.testing.assert_close(kernel.noise_log1p_sum(lam, log_x0), Kernel.noise_log1p_sum(kernel, lam, log_x0),
                               rtol=1e-12, atol=1e-300)


def test_endpoints_at_extreme_finite_log_snr():
    for kernel in REPRESENTATIVES:
        x = torch.tensor([1 if kernel.mask_id == 0 else 0])
        q = kernel.marginal(x, torch.tensor([40.0], dtype=F64))[0]
        assert q[x[0]] > 1 - 1e-15
        lam = torch.tensor(-40.0, dtype=F64)
        q = kernel.marginal(x, lam[None])[0]
        torch.testing.assert_close(q, kernel.pi(lam), atol=1e-15, rtol=0)


def test_uniform_and_masked_equal_their_prior_forms():
    V, gen = 6, torch.Generator().manual_seed(0)
    pairs = [(dd.Uniform(V), dd.Prior(torch.full((V,), 1 / V, dtype=F64))),
             (dd.Masked(V, 2), dd.Prior(torch.nn.functional.one_hot(torch.tensor(2), V).to(F64), mask_id=2))]
    for structured, generic in pairs:
        x = torch.tensor([[0, 1, 3, 5]])
        lam = torch.tensor([[-3.0, 0.0, 1.5, 7.0]], dtype=F64)
        torch.testing.assert_close(structured.marginal(x, lam), generic.marginal(x, lam))
        logits = torch.randn(1, 4, V, generator=gen, dtype=F64)
        z = torch.tensor([[2, 1, 2, 5]])  # in the support of both kernels
        a, b = dd.losses.gidd(structured, logits, x, z, lam), dd.losses.gidd(generic, logits, x, z, lam)
        for name in ("kl", "is_div", "weight"):
            torch.testing.assert_close(getattr(a, name), getattr(b, name))
        x0 = structured.x0_log_probs(logits).exp()
        torch.testing.assert_close(structured.posterior(x0, z, lam - 1, lam), generic.posterior(x0, z, lam - 1, lam))


def test_hybrid_limits_and_closed_form_weights():
    V, m = 7, 6
    N = V - 1
    lam = torch.linspace(-5, 5, 11, dtype=F64)
    for shift, scale in [(0.0, 1.0), (2.0, 1.0), (-1.0, 0.5)]:
        k = dd.Hybrid(V, m, shift=shift, scale=scale)
        s = torch.sigmoid(scale * lam + shift)
        x = torch.zeros_like(lam, dtype=torch.long)
        # docs/math.md closed forms: mask 1 + a s; other non-mask 1 - a (1 - s); clean s (1 - a(1-s)) / (s + N e^lam)
        torch.testing.assert_close(k.weight(x, torch.full_like(x, m), lam), 1 + scale * s)
        torch.testing.assert_close(k.weight(x, torch.full_like(x, 3), lam), 1 - scale * (1 - s))
        torch.testing.assert_close(k.weight(x, x, lam), s * (1 - scale * (1 - s)) / (s + N * torch.exp(lam)))
    pure_u = dd.Uniform(V)
    x = torch.zeros(11, dtype=torch.long)
    torch.testing.assert_close(pure_u.weight(x, x, lam), 1 / (1 + V * torch.exp(lam)))
    torch.testing.assert_close(pure_u.weight(x, x + 1, lam), torch.ones_like(lam))
    masked = dd.Masked(V, m)
    torch.testing.assert_close(masked.weight(x, x, lam), torch.zeros_like(lam))
    torch.testing.assert_close(masked.weight(x, x + m, lam), torch.ones_like(lam))
    # a very large shift is uniform noise over the N non-mask states
    k = dd.Hybrid(V, m, shift=60.0, scale=0.0)
    torch.testing.assert_close(k.pi(torch.tensor(0.0, dtype=F64)), torch.tensor([1 / N] * N + [0.0], dtype=F64))


def test_gidd_kernel_matches_the_time_form():
    """At lambda = GIDDTime.log_snr(t): q_t = alpha_t e_x + (t e_m + c_t u) / (1 + c_t) (arXiv 2503.04482)."""
    V, m = 6, 5
    for p_u, gamma in [(0.2, 1.0), (0.6, 1.4), (0.05, 0.6)]:
        sched = dd.GIDDTime(p_uniform=p_u, gamma=gamma, log_snr_min=-INF, log_snr_max=INF)
        kernel = dd.GIDD(V, m, p_uniform=p_u, gamma=gamma)
        t = torch.tensor([1e-4, 0.1, 0.5, 0.8, 0.999], dtype=F64)
        B = 2**gamma * p_u / (1 - p_u)
        c = B * (t * (1 - t)) ** (gamma / 2)
        u = torch.tensor([1 / (V - 1)] * (V - 1) + [0.0], dtype=F64)
        e_m = torch.nn.functional.one_hot(torch.tensor(m), V).to(F64)
        x = torch.full((5,), 2)
        expected = ((1 - t) / (1 + c)).unsqueeze(-1) * torch.nn.functional.one_hot(x, V) + (t.unsqueeze(-1) * e_m + c.unsqueeze(-1) * u) / (1 + c).unsqueeze(-1)
        torch.testing.assert_close(kernel.marginal(x, sched.log_snr(t)), expected, rtol=1e-10, atol=1e-14)
        # p_u is the fraction of tokens that are uniform noise at t = 1/2: the states other than x
        # and the mask hold (N - 1) / N of that mass
        half = kernel.marginal(x[:1], sched.log_snr(torch.tensor([0.5], dtype=F64)))[0]
        others = (torch.arange(V) != m) & (torch.arange(V) != 2)
        assert float(half[others].sum()) == pytest.approx(p_u * (V - 2) / (V - 1), rel=1e-10)


@given(kernel=dst.kernels(), data=st.data())
def test_corrupt_reproducible_shapes_and_support(kernel, data):
    x = data.draw(dst.token_batches(kernel, max_batch=4, max_seq=8))
    lam = data.draw(dst.log_snr_for(x))
    seed = data.draw(st.integers(0, 2**31 - 1))
    z1 = kernel.corrupt(x, lam, generator=torch.Generator().manual_seed(seed))
    z2 = kernel.corrupt(x, lam, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(z1, z2) and z1.shape == x.shape and z1.dtype == x.dtype
    q = kernel.marginal(x, lam)
    assert bool((q.gather(-1, z1.unsqueeze(-1)) > 0).all()), "a draw outside the support of q"


def test_corrupt_leaves_global_rng_alone_and_follows_per_token_lambda():
    state = torch.get_rng_state()
    k = dd.Hybrid(50, 49, shift=0.0)
    x = torch.zeros(2, 4000, dtype=torch.long)
    lam = torch.cat([torch.full((1, 4000), 9.0), torch.full((1, 4000), -9.0)]).to(F64)
    z = k.corrupt(x, lam, generator=torch.Generator().manual_seed(0))
    assert torch.equal(state, torch.get_rng_state())
    assert (z[0] == 0).double().mean() > 0.99     # alpha(9) = 0.99988
    assert (z[1] == 49).double().mean() > 0.99    # nearly all noise, nearly all mask at lambda = -9


def test_corrupt_at_sumi_vocabulary_without_vocab_sized_tensors():
    V = 100_278
    k = dd.Uniform(V)
    x = torch.randint(V, (2, 512), generator=torch.Generator().manual_seed(0))
    lam = torch.tensor([-9.0, 0.0], dtype=F64)
    z = k.corrupt(x, lam, generator=torch.Generator().manual_seed(1))
    kept = (z == x).double().mean(-1)
    alpha = torch.sigmoid(lam) + (1 - torch.sigmoid(lam)) / V
    assert abs(kept[0] - alpha[0]) < 5 * math.sqrt(alpha[0] * (1 - alpha[0]) / 512) + 1e-3
    assert abs(kept[1] - alpha[1]) < 5 * math.sqrt(alpha[1] * (1 - alpha[1]) / 512)


def test_bad_arguments():
    with pytest.raises(ValueError, match="vocab_size"):
        dd.Uniform(1)
    with pytest.raises(TypeError, match="vocab_size"):
        dd.Uniform(5.0)
    with pytest.raises(ValueError, match="mask_id"):
        dd.Masked(5, 5)
    with pytest.raises(ValueError, match="scale"):
        dd.Hybrid(5, 4, scale=2.0)  # q_{t|s} would have negative entries (docs/math.md)
    with pytest.raises(ValueError, match="shift"):
        dd.Hybrid(5, 4, shift=float("nan"))
    for p in (0.0, 1.0, 1.2):
        with pytest.raises(ValueError, match="p_uniform"):
            dd.GIDD(5, 4, p_uniform=p)
    with pytest.raises(ValueError, match="sum to 1"):
        dd.Prior(torch.tensor([0.5, 0.6], dtype=F64))
    with pytest.raises(ValueError, match="non-negative"):
        dd.Prior(torch.tensor([1.5, -0.5], dtype=F64))
    with pytest.raises(TypeError, match="probs"):
        dd.Prior(torch.tensor([1, 0]))

    k = dd.Masked(5, 4)
    lam = torch.zeros(2)
    with pytest.raises(ValueError, match=r"x holds ids in \[0, 5\]"):
        k.marginal(torch.tensor([0, 5]), lam)
    with pytest.raises(ValueError, match="outside"):
        k.corrupt(torch.tensor([-1, 0]), lam)
    with pytest.raises(ValueError, match="mask id 4"):
        k.corrupt(torch.tensor([4, 0]), lam)
    with pytest.raises(ValueError, match="NaN"):
        k.corrupt(torch.tensor([1, 0]), torch.tensor([0.0, float("nan")]))
    with pytest.raises(ValueError, match="broadcast"):
        k.corrupt(torch.tensor([[1, 0, 2]]), torch.zeros(2, 2))
    # Under pytest the jaxtyping hook (a TypeError subclass naming the parameter) may fire first.
    with pytest.raises(TypeError, match="integer token ids|parameter 'x'"):
        k.corrupt(torch.tensor([1.0, 0.0]), lam)
    with pytest.raises(TypeError, match="log-SNR|parameter 'lam'"):
        k.corrupt(torch.tensor([1, 0]), torch.tensor([1, 0]))
    x0 = torch.full((2, 5), 0.25, dtype=F64)
    x0[:, 4] = 0
    with pytest.raises(ValueError, match="lam_s must be >= lam_t"):
        k.posterior(x0, torch.tensor([4, 4]), torch.tensor([1.0, 1.0]), torch.tensor([0.0, 2.0]))
    with pytest.raises(ValueError, match="x0_probs must have shape"):
        k.posterior(x0[:, :4], torch.tensor([4, 4]), torch.zeros(2), torch.ones(2))


def test_pi_slice_stays_small_and_rejects_bad_slices():
    """``pi_slice`` (read by the chunked loss) never builds ``[..., V]``: a mixture gives one
    value per token off the mask state and a block only on the slice that holds the mask; a
    prior gives its own slice.  The values themselves are checked by ``check_kernel``."""
    V = 100_278
    lam = torch.linspace(-9.0, 9.0, 6, dtype=F64).reshape(2, 3)
    hybrid = dd.Hybrid(V, V - 1, shift=1.0)
    assert dd.Uniform(V).pi_slice(lam, 0, V).shape == (2, 3, 1)
    assert hybrid.pi_slice(lam, 0, 4096).shape == (2, 3, 1)
    block = hybrid.pi_slice(lam, V - 10, V)
    assert block.shape == (2, 3, 10)
    torch.testing.assert_close(block.sum(-1), 1 - torch.sigmoid(lam + 1.0) * (1 - 9 / (V - 1)))  # 9 s / N + (1 - s)
    assert dd.Prior(_unigram(V)).pi_slice(lam, 5, 9).shape == (4,)
    for kernel in (dd.Uniform(5), dd.Masked(5, 4), dd.Prior(_unigram(5))):
        for start, stop in ((0, 6), (-1, 2), (3, 3), (4, 2)):
            with pytest.raises(ValueError, match="start < stop"):
                kernel.pi_slice(lam, start, stop)


# -- a user kernel needs only pi and dpi --------------------------------------------------------------
class Annealed(Kernel):
    """The tutorial's kind of user kernel: pi = s u + (1 - s) p, s = sigmoid(lambda - 1), nothing
    but ``pi`` and ``dpi`` defined (dense ``[..., V]`` tensors)."""

    def __init__(self, probs: torch.Tensor) -> None:
        self.vocab_size, self.mask_id = probs.numel(), None
        self.probs = probs.double() / probs.sum()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(V={self.vocab_size})"

    def _parts(self, lam):
        s = torch.sigmoid(lam - 1.0).unsqueeze(-1)
        p = self.probs.to(lam.dtype)
        return s, p, torch.full_like(p, 1.0 / self.vocab_size)

    def pi(self, lam):
        s, p, u = self._parts(lam)
        return s * u + (1 - s) * p

    def dpi(self, lam):
        s, p, u = self._parts(lam)
        return s * (1 - s) * (u - p)


class Sparse(Kernel):
    """pi = s e_1 + (1 - s) e_3 over 6 states, s = sigmoid(lambda): states 0, 2, 4, 5 (the last
    one included) have probability 0 at every lambda; 4 is an absorbing mask that pi never uses."""

    def __init__(self) -> None:
        self.vocab_size, self.mask_id = 6, 4

    def __repr__(self) -> str:
        return "Sparse()"

    def pi(self, lam):
        s = torch.sigmoid(lam).unsqueeze(-1)
        out = torch.zeros(*lam.shape, 6, dtype=lam.dtype, device=lam.device)
        return out.index_add(-1, torch.tensor([1, 3]), torch.cat([s, 1 - s], -1))

    def dpi(self, lam):
        ds = (torch.sigmoid(lam) * torch.sigmoid(-lam)).unsqueeze(-1)
        out = torch.zeros(*lam.shape, 6, dtype=lam.dtype, device=lam.device)
        return out.index_add(-1, torch.tensor([1, 3]), torch.cat([ds, -ds], -1))


ZIPF = torch.arange(1, 8, dtype=F64) ** -1.2


def _assert_draws_follow(draws: torch.Tensor, probs: torch.Tensor, what: str) -> None:
    """``draws [n]`` against exact ``probs [V]``: no draw of probability 0; every frequency within
    5 standard errors plus a 1.5-count continuity allowance."""
    n, V = draws.numel(), probs.numel()
    freq = torch.bincount(draws, minlength=V).to(F64) / n
    assert not bool(((probs == 0) & (freq > 0)).any()), f"{what}: drew a state of probability 0"
    tol = 5 * torch.sqrt(probs * (1 - probs) / n) + 1.5 / n
    assert bool(((freq - probs).abs() <= tol).all()), f"{what}: {freq.tolist()} vs {probs.tolist()}"


@pytest.mark.parametrize("kernel", [Annealed(ZIPF), Sparse()], ids=["annealed", "sparse"])
def test_default_sample_pi_follows_pi_per_distinct_log_snr(kernel):
    """The default sample_pi (inverse CDF of pi in float64) draws from pi_lambda at every element;
    150 distinct values (three blocks of 64) interleaved per token, and +-inf."""
    values = torch.cat([torch.tensor([-INF, INF], dtype=F64), torch.linspace(-6.0, 6.0, 148, dtype=F64)])
    n = 3000
    lam = values.repeat(n).reshape(n, values.numel())                 # per token, every value n times
    gen = torch.Generator().manual_seed(3)
    state = torch.get_rng_state()
    draws = kernel.sample_pi(lam, gen)
    assert torch.equal(torch.get_rng_state(), state), "the global RNG was used"
    assert draws.shape == lam.shape and draws.dtype == torch.int64
    assert torch.equal(draws, kernel.sample_pi(lam, torch.Generator().manual_seed(3)))
    pis = dd.Dense.of(kernel)
    for j in range(0, values.numel(), 7):
        _assert_draws_follow(draws[:, j], pis.pi(values[j]), f"lambda={values[j].item()}")
    # per sequence (an expanded lambda) and 0-d
    per_seq = kernel.sample_pi(torch.tensor([-1.0, 2.0], dtype=F64).unsqueeze(-1).expand(2, 20_000), gen)
    _assert_draws_follow(per_seq[1], pis.pi(2.0), "per sequence")
    assert kernel.sample_pi(torch.tensor(0.5, dtype=F64), gen).shape == ()


def test_a_kernel_with_only_pi_and_dpi_passes_check_kernel():
    """Before, such a class could not even be instantiated (sample_pi was abstract)."""
    check_kernel(Annealed(ZIPF))
    check_kernel(Sparse(), tightness=False)


@pytest.mark.parametrize("which", ["true_posterior", "posterior"])
def test_the_dense_posterior_is_not_fooled_by_rounding_noise_in_unreachable_columns(monkeypatch, which):
    """``Q_{t|s}`` comes from a linear solve, so the columns of states ``z_t`` that ``x`` cannot
    reach hold rounding noise where some LAPACK builds give exact zeros (the torch 2.9 and 2.10
    wheels: ``check_kernel(Sparse())`` failed there with "probabilities" 6.47 and -5.47).  With
    1e-17 of noise in every entry, Bayes' rule must still give exact 0 rows for unreachable
    ``z_t`` (Sparse: 0, 2, 4, 5 from x = 1) and the noiseless rows elsewhere."""
    dense = dd.Dense.of(Sparse())
    x0 = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=F64)  # x_hat = e_1: the same posterior
    run = (lambda: dense.true_posterior(1, -0.5, 1.0)) if which == "true_posterior" else \
        (lambda: dense.posterior(x0, -0.5, 1.0))
    exact = run()
    solved = dense.transition_matrix
    monkeypatch.setattr(dense, "transition_matrix", lambda t, s: solved(t, s) + 1e-17)
    noisy = run()
    assert torch.equal(noisy[[0, 2, 4, 5]], torch.zeros(4, 6, dtype=F64))
    torch.testing.assert_close(noisy, exact, atol=1e-12, rtol=0)
    torch.testing.assert_close(noisy[[1, 3]].sum(-1), torch.ones(2, dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kernel", REPRESENTATIVES + [Annealed(ZIPF), Sparse()], ids=repr)
def test_sample_prior_draws_pi_at_minus_infinity(kernel):
    gen = torch.Generator().manual_seed(5)
    draws = kernel.sample_prior((4, 5000), generator=gen)
    assert draws.shape == (4, 5000) and draws.dtype == torch.int64
    _assert_draws_follow(draws.flatten(), dd.Dense.of(kernel).pi(-INF), repr(kernel))
    assert kernel.sample_prior(7, generator=gen).shape == (7,)
    assert torch.equal(kernel.sample_prior((3, 4), torch.Generator().manual_seed(9)),
                       kernel.sample_prior((3, 4), torch.Generator().manual_seed(9)))
    with pytest.raises((ValueError, TypeError), match="shape"):
        kernel.sample_prior((2, -1))


class SpyPi(Annealed):
    """Records the shape of every lambda that pi and dpi are evaluated at."""

    def __init__(self, probs):
        super().__init__(probs)
        self.calls = []

    def pi(self, lam):
        self.calls.append(tuple(lam.shape))
        return super().pi(lam)

    def dpi(self, lam):
        self.calls.append(tuple(lam.shape))
        return super().dpi(lam)


@pytest.mark.parametrize("lam_dtype", [torch.float32, F64])
def test_default_forms_evaluate_pi_once_per_sequence(lam_dtype):
    """pi_at, dpi_at, noise_log1p_sum (and so the loss), marginal_of_probs and sample_pi build
    ``[batch, 1, V]`` for a per-sequence lambda, never ``[batch, seq, V]``; the values equal the
    dense per-token forms."""
    B, S = 3, 50
    kernel = SpyPi(ZIPF)
    gen = torch.Generator().manual_seed(7)
    x = torch.randint(0, 7, (B, S), generator=gen)
    lam = torch.tensor([-2.0, 0.5, 3.0], dtype=lam_dtype)
    z = kernel.corrupt(x, lam, gen)
    logits = torch.randn(B, S, 7, generator=gen)
    kernel.calls.clear()
    out = dd.losses.gidd(kernel, logits, x, z, lam)
    kernel.marginal_of_probs(torch.softmax(logits.double(), -1), lam.double().unsqueeze(-1).expand(B, S))
    kernel.sample_pi(lam.unsqueeze(-1).expand(B, S), gen)
    assert kernel.calls and all(math.prod(shape) <= B for shape in kernel.calls), kernel.calls
    # the same numbers as evaluating pi at every token (a contiguous [B, S] lambda)
    dense = dd.losses.gidd(kernel, logits, x, z, lam.unsqueeze(-1).expand(B, S).contiguous())
    for name in ("kl", "is_div", "weight", "loss"):
        torch.testing.assert_close(getattr(out, name), getattr(dense, name), rtol=1e-6, atol=1e-6)


def test_corrupt_and_marginal_accept_a_python_float():
    kernel = dd.Hybrid(6, 5)
    x = torch.randint(0, 5, (2, 9), generator=torch.Generator().manual_seed(1))
    z = kernel.corrupt(x, -INF, generator=torch.Generator().manual_seed(2))
    assert torch.equal(z, kernel.corrupt(x, torch.tensor(-INF, dtype=F64), generator=torch.Generator().manual_seed(2)))
    torch.testing.assert_close(kernel.marginal(x, 0.5), kernel.marginal(x, torch.tensor(0.5, dtype=F64)))
    assert kernel.marginal(x, 0.5).dtype == F64
    with pytest.raises(TypeError, match="lam"):
        kernel.corrupt(x, "0.5")


# -- construction checks for user kernels ---------------------------------------------------------------
class _PiOnly(Kernel):
    def pi(self, lam):
        return torch.full((*lam.shape, 4), 0.25, dtype=lam.dtype)

    def dpi(self, lam):
        return torch.zeros((*lam.shape, 4), dtype=lam.dtype)


def test_a_kernel_that_forgets_or_misstates_vocab_size_or_mask_id_fails_at_construction():
    """Before, these failed deep inside the first call (or silently did something wrong)."""

    class NoVocab(_PiOnly):
        def __init__(self):
            self.mask_id = None

    class NoMask(_PiOnly):
        def __init__(self):
            self.vocab_size = 4

    class Configured(_PiOnly):
        def __init__(self, vocab_size, mask_id=None):
            self.vocab_size, self.mask_id = vocab_size, mask_id

    with pytest.raises(TypeError, match="NoVocab does not set vocab_size"):
        NoVocab()
    with pytest.raises(TypeError, match="NoMask does not set mask_id"):
        NoMask()
    with pytest.raises(ValueError, match="Configured: vocab_size must be an int >= 2, got 1"):
        Configured(1)
    with pytest.raises(TypeError, match="Configured: vocab_size must be an int"):
        Configured(4.0)
    with pytest.raises(ValueError, match=r"Configured: mask_id must be an int in \[0, 3\], got 4"):
        Configured(4, 4)
    assert Configured(4, 3).mask_id == 3


def test_construction_checks_run_after_the_whole_init_chain():
    """A subclass that sets the attributes after super().__init__(), and a dataclass kernel."""
    from dataclasses import dataclass

    class Base(_PiOnly):
        def __init__(self):
            self.ready = True

    class Late(Base):
        def __init__(self):
            super().__init__()
            self.vocab_size, self.mask_id = 4, None

    assert Late().vocab_size == 4

    @dataclass
    class Declared(_PiOnly):
        vocab_size: int
        mask_id: int | None = None

    assert Declared(4).vocab_size == 4
    with pytest.raises(ValueError, match="Declared: mask_id"):
        Declared(4, 7)
