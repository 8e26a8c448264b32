"""sumi.study: the Pareto frontier, unigram entropy, generative perplexity, power-law fits and
isoFLOP minima, each against an independent oracle (brute force, closed forms, float64
recomputation from a judge's full logits, known synthetic laws)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sumi import Sumi
from sumi.configs import tiny
from sumi.study import (GenerativePerplexity, compute_optimal, fit_power_law, generative_perplexity, pareto_front,
                        unigram_entropy)

# --- Pareto frontier -------------------------------------------------------------------------


def _brute_front(points):
    """O(n^2) definition: the points no other point dominates, by cost then input order."""
    def dominates(p, q):
        return p[0] <= q[0] and p[1] <= q[1] and (p[0] < q[0] or p[1] < q[1])

    keep = [i for i, q in enumerate(points) if not any(dominates(p, q) for p in points)]
    return [points[i] for i in sorted(keep, key=lambda i: (points[i][0], i))]


def test_pareto_front_hand_made_points():
    points = [(1, 50), (2, 30), (2, 40), (3, 30), (4, 10), (5, 20), (0.5, 60), (6, 60)]
    # (2, 40): same cost as (2, 30), worse; (3, 30): same quality as (2, 30), costlier;
    # (5, 20) and (6, 60): costlier and worse than (4, 10)
    assert pareto_front(points) == [(0.5, 60), (1, 50), (2, 30), (4, 10)]


def test_pareto_front_keeps_exact_duplicates_in_input_order_and_returns_the_objects():
    rows = [{"name": "a", "passes": 8, "ppl": 40.0}, {"name": "b", "passes": 8, "ppl": 40.0},
            {"name": "c", "passes": 4, "ppl": 90.0}, {"name": "d", "passes": 16, "ppl": 40.0}]
    front = pareto_front(rows, key=lambda r: (r["passes"], r["ppl"]))
    assert [r["name"] for r in front] == ["c", "a", "b"]
    assert front[1] is rows[0]


def test_pareto_front_empty():
    assert pareto_front([]) == []


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=25))
def test_pareto_front_matches_the_brute_force_definition(points):
    # small integer grids make ties in cost, in quality and exact duplicates frequent
    assert pareto_front(points) == _brute_front(points)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_pareto_front_rejects_non_finite_quality(bad):
    with pytest.raises(ValueError, match=r"points\[1\] quality must be a finite number"):
        pareto_front([(1, 10.0), (2, bad)])


def test_pareto_front_rejects_negative_or_non_finite_cost():
    with pytest.raises(ValueError, match=r"points\[0\] cost must be in \[0.0, inf\], got -1"):
        pareto_front([(-1, 10.0)])
    with pytest.raises(ValueError, match=r"points\[0\] cost must be a finite number"):
        pareto_front([(float("nan"), 10.0)])


# --- unigram entropy -------------------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 7, 64])
def test_unigram_entropy_uniform_over_k_ids_is_log_k(k):
    samples = [list(range(k)) * 3, list(range(100, 100 + k)) * 3]
    assert unigram_entropy(samples) == pytest.approx(math.log(k), abs=1e-12)
    assert unigram_entropy(samples, reduction="pooled") == pytest.approx(math.log(2 * k), abs=1e-12)


def test_unigram_entropy_of_one_repeated_id_is_zero():
    assert unigram_entropy([[5] * 40, [9] * 3]) == 0.0
    # every sample degenerate on a different id: the mean shows it, the pooled count hides it
    assert unigram_entropy([[5] * 40, [9] * 40], reduction="pooled") == pytest.approx(math.log(2), abs=1e-12)


def test_unigram_entropy_closed_form_and_tensor_input():
    expected = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert unigram_entropy([torch.tensor([0, 0, 1])]) == pytest.approx(expected, abs=1e-12)
    # mean of per-sample entropies: (H([0,0,1]) + 0) / 2
    assert unigram_entropy([[0, 0, 1], [3, 3]]) == pytest.approx(expected / 2, abs=1e-12)


@pytest.mark.parametrize("samples, kwargs, message", [
    ([], {}, "no samples"),
    ([[1, 2], []], {}, r"samples\[1\] is empty"),
    ([[1, -2]], {}, r"samples\[0\] must hold token ids"),
    ([[1, True]], {}, r"samples\[0\] must hold token ids"),
    ([torch.tensor([1.0, 2.0])], {}, r"samples\[0\] must be a 1-D integer tensor"),
    ([[1]], {"reduction": "sum"}, "reduction must be one of"),
])
def test_unigram_entropy_rejects_bad_input(samples, kwargs, message):
    with pytest.raises(ValueError, match=message):
        unigram_entropy(samples, **kwargs)


# --- generative perplexity -------------------------------------------------------------------


@pytest.fixture(scope="module")
def judge():
    config = tiny(vocab_size=64).for_objective("ar")
    return Sumi.initialized(config, generator=torch.Generator().manual_seed(0))


def _oracle_nats(judge, contexts_and_targets):
    """sum of -log p(target | context) from the judge's full logits, recomputed in float64."""
    model = copy.deepcopy(judge).double().eval()
    total = 0.0
    with torch.no_grad():
        for context, target in contexts_and_targets:
            logits = model(torch.tensor([context]))[0, -1]
            total -= logits.log_softmax(-1)[target].item()
    return total


def _samples(count, length, vocab, seed):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (length,), generator=generator).tolist() for _ in range(count)]


def test_generative_perplexity_matches_float64_recomputation(judge):
    config = judge.config
    samples = _samples(3, 12, 61, seed=1) + [[4]]
    pairs = []
    for ids in samples:
        stream = [config.bos_token_id, *ids]
        pairs += [(stream[:p], stream[p]) for p in range(1, len(stream))]
    nats = _oracle_nats(judge, pairs)
    result = generative_perplexity(judge, samples, batch_size=2)
    assert isinstance(result, GenerativePerplexity)
    assert result.tokens == 37
    assert result.nats == pytest.approx(nats, rel=1e-5)
    assert result.perplexity == pytest.approx(math.exp(nats / 37), rel=1e-5)
    assert sum(result.per_sample) == pytest.approx(result.nats, rel=1e-12)


def test_generative_perplexity_scores_a_long_sample_in_overlapping_windows(judge):
    # canvas 8 over the stream BOS x_1..x_20 EOS: windows start at 0, 7, 14 (one token of
    # overlap); stream position p is scored once, with the context of its window
    config = judge.config
    ids = _samples(1, 20, 61, seed=2)[0]
    stream = [config.bos_token_id, *ids]
    pairs = []
    for p in range(1, len(stream)):
        start = (p - 1) // 7 * 7
        pairs.append((stream[start:p], stream[p]))
    nats = _oracle_nats(judge, pairs)
    result = generative_perplexity(judge, [ids], canvas_length=8)
    assert result.tokens == 20
    assert result.nats == pytest.approx(nats, rel=1e-5)


def test_generative_perplexity_of_continuations_conditions_on_the_prompts(judge):
    config = judge.config
    prompts = _samples(2, 5, 61, seed=3)
    samples = _samples(2, 6, 61, seed=4)
    pairs = []
    for prompt, ids in zip(prompts, samples):
        stream = [config.bos_token_id, *prompt, *ids]
        pairs += [(stream[:p], stream[p]) for p in range(1 + len(prompt), len(stream))]
    result = generative_perplexity(judge, samples, prompts=prompts)
    assert result.tokens == 12
    assert result.nats == pytest.approx(_oracle_nats(judge, pairs), rel=1e-5)


def test_generative_perplexity_refuses_a_bidirectional_judge_and_self_judging(judge):
    diffusion = Sumi.initialized(tiny(vocab_size=64), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"judge must be an autoregressive model .* got objective 'uniform'"):
        generative_perplexity(diffusion, [[1, 2]])
    with pytest.raises(ValueError, match="a model is never its own judge"):
        generative_perplexity(judge, [[1, 2]], model=judge)
    generative_perplexity(judge, [[1, 2]], model=diffusion)  # another model's samples are fine


@pytest.mark.parametrize("samples, kwargs, message", [
    ([[], []], {}, "the samples hold no tokens"),
    ([[1, 2]], {"prompts": [[1], [2]]}, "one prompt per sample: 2 prompts for 1 samples"),
    ([[1, 64]], {}, r"outside \[0, 64\)"),
    ([[1, 2]], {"canvas_length": 2}, "canvas_length must be an int >= 3"),
])
def test_generative_perplexity_rejects_bad_input(judge, samples, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generative_perplexity(judge, samples, **kwargs)


# --- power-law fit ---------------------------------------------------------------------------

COMPUTE = [1e15 * 2.0 ** k for k in range(10)]
A, B = 7.5, 0.07


def _noisy_losses(sigma, seed):
    noise = np.random.default_rng(seed).normal(0.0, sigma, len(COMPUTE))
    return [A * c ** -B * math.exp(e) for c, e in zip(COMPUTE, noise)]


def test_fit_power_law_recovers_an_exact_law():
    fit = fit_power_law(COMPUTE, [A * c ** -B for c in COMPUTE])
    assert fit.a == pytest.approx(A, rel=1e-9)
    assert fit.b == pytest.approx(B, rel=1e-9)
    assert fit.b_stderr < 1e-9 and fit.a_stderr < 1e-6 * A and fit.points == 10
    loss, se = fit.predict(1e20)
    assert loss == pytest.approx(A * 1e20 ** -B, rel=1e-9)
    assert se < 1e-8


def test_fit_power_law_uncertainty_matches_ordinary_least_squares():
    # oracle: numpy least squares with the textbook covariance s^2 (X^T X)^-1, X = [1, -ln C]
    losses = _noisy_losses(0.03, seed=0)
    x = np.stack([np.ones(len(COMPUTE)), -np.log(COMPUTE)], axis=1)
    y = np.log(losses)
    beta, rss, _, _ = np.linalg.lstsq(x, y, rcond=None)
    covariance = rss[0] / (len(y) - 2) * np.linalg.inv(x.T @ x)
    fit = fit_power_law(COMPUTE, losses)
    assert math.log(fit.a) == pytest.approx(beta[0], rel=1e-9)
    assert fit.b == pytest.approx(beta[1], rel=1e-9)
    np.testing.assert_allclose(np.array(fit.covariance), covariance, rtol=1e-8)
    assert fit.b_stderr == pytest.approx(math.sqrt(covariance[1, 1]), rel=1e-8)
    assert fit.a_stderr == pytest.approx(fit.a * math.sqrt(covariance[0, 0]), rel=1e-8)
    v = np.array([1.0, -math.log(3e17)])
    loss, se = fit.predict(3e17)
    assert loss == pytest.approx(math.exp(v @ beta), rel=1e-9)
    assert se == pytest.approx(math.sqrt(v @ covariance @ v), rel=1e-8)
    _, se_new = fit.predict(3e17, observation=True)
    assert se_new == pytest.approx(math.sqrt(v @ covariance @ v + rss[0] / (len(y) - 2)), rel=1e-8)
    assert abs(fit.b - B) < 3 * fit.b_stderr


def test_fit_power_law_stated_uncertainty_matches_the_spread_over_seeds():
    sigma = 0.03
    fits = [fit_power_law(COMPUTE, _noisy_losses(sigma, seed)) for seed in range(200)]
    b = np.array([f.b for f in fits])
    stated = np.mean([f.b_stderr for f in fits])
    logs = np.log(COMPUTE)
    exact = sigma / math.sqrt(((logs - logs.mean()) ** 2).sum())  # the true standard error of the slope
    assert 1 / 1.5 < b.std(ddof=1) / stated < 1.5
    assert 1 / 1.2 < b.std(ddof=1) / exact < 1.2
    assert abs(b.mean() - B) < 3 * exact / math.sqrt(len(b))  # unbiased
    covered = np.mean([abs(f.b - B) < 3 * f.b_stderr for f in fits])
    assert covered >= 0.97  # Student t with 8 degrees of freedom: P(|t| < 3) = 0.983


@pytest.mark.parametrize("compute, loss, message", [
    ([1, 2], [3, 2], "compute must hold at least 3 distinct values"),
    ([1, 2, 2, 1], [3, 2, 2, 3], "compute must hold at least 3 distinct values"),
    ([1, 2, 3], [3, 2], "same length, got 3 and 2"),
    ([1, 0, 3], [3, 2, 1], r"compute\[1\] must be in \(0.0, inf\]"),
    ([1, 2, 3], [3, float("nan"), 1], r"loss\[1\] must be a finite number"),
])
def test_fit_power_law_rejects_bad_input(compute, loss, message):
    with pytest.raises(ValueError, match=message):
        fit_power_law(compute, loss)


# --- isoFLOP minimum -------------------------------------------------------------------------


def _parabola(sizes, best, curvature=0.1, floor=2.5):
    return [floor + curvature * (math.log(n) - math.log(best)) ** 2 for n in sizes]


def test_compute_optimal_recovers_a_known_parabola():
    sizes = [1e7, 3e7, 1e8, 2e8, 1e9]
    result = compute_optimal(sizes, _parabola(sizes, 1.4e8))
    assert result.size == pytest.approx(1.4e8, rel=1e-8)
    assert result.loss == pytest.approx(2.5, rel=1e-10)
    assert result.inside
    log_best = math.log(1.4e8)
    np.testing.assert_allclose(result.coefficients, [2.5 + 0.1 * log_best ** 2, -0.2 * log_best, 0.1], rtol=1e-8)


def test_compute_optimal_flags_a_minimum_outside_the_sampled_sizes():
    sizes = [1e7, 3e7, 1e8, 3e8]
    result = compute_optimal(sizes, _parabola(sizes, 5e9))
    assert result.size == pytest.approx(5e9, rel=1e-7)
    assert not result.inside
    below = compute_optimal(sizes, _parabola(sizes, 2e6))
    assert below.size == pytest.approx(2e6, rel=1e-7) and not below.inside


def test_compute_optimal_is_the_least_squares_parabola():
    # noisy losses: the fit is the least-squares parabola in ln N
    # (oracle: numpy least squares on the raw design matrix)
    sizes = [1e6, 1e7, 1e8, 1e9, 1e10, 1e11]
    losses = [v + e for v, e in zip(_parabola(sizes, 3e8), [0.01, -0.02, 0.015, 0.0, -0.01, 0.02])]
    x = np.log(sizes)
    design = np.stack([np.ones_like(x), x, x ** 2], axis=1)
    c = np.linalg.lstsq(design, np.array(losses), rcond=None)[0]
    result = compute_optimal(sizes, losses)
    np.testing.assert_allclose(result.coefficients, c, rtol=1e-7)
    assert result.size == pytest.approx(math.exp(-c[1] / (2 * c[2])), rel=1e-7)


def test_compute_optimal_rejects_no_minimum_and_too_few_sizes():
    sizes = [1e7, 1e8, 1e9]
    with pytest.raises(ValueError, match="do not curve upward"):
        compute_optimal(sizes, [3.0 - v + 2.5 for v in _parabola(sizes, 1e8)])
    with pytest.raises(ValueError, match="do not curve upward"):
        compute_optimal(sizes, [3.0, 2.9, 2.8])  # linear: no minimum
    with pytest.raises(ValueError, match="sizes must hold at least 3 distinct values"):
        compute_optimal([1e7, 1e8, 1e8], [3.0, 2.0, 2.1])
