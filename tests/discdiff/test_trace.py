"""Generation traces (:class:`discdiff.samplers.Trace`) and the sampling loop
(:func:`discdiff.samplers.sample`).

Oracles: hand-built trajectories whose statistics are counted by hand below (the expected
numbers are literals, not recomputed by the code under test), the loop's own callback
stream, and denoisers whose argmax / confidence order is fixed by construction.  All
randomness goes through explicit seeded ``torch.Generator`` objects.
"""

from __future__ import annotations

import math

import pytest
import torch

from discdiff.kernels import Masked, Uniform
from discdiff.samplers import (
    Adaptive,
    Ancestral,
    Greedy,
    SampleOutput,
    StepInfo,
    Trace,
    linear_alpha_grid,
    sample,
)

F64 = torch.float64

try:  # under pytest's jaxtyping hook a shape/dtype mismatch is caught before the library's check
    from jaxtyping import TypeCheckError as _HookError
except ImportError:  # pragma: no cover
    _HookError = TypeError


# -- a hand-built trajectory ---------------------------------------------------------------
# [steps + 1 = 6, batch = 2, seq = 4]; one history per (batch, position), read top to bottom.
_HISTORIES = {
    (0, 0): [1, 1, 2, 1, 3, 1],  # A A B A C A: runs A B A C A -> round trips A-B-A, A-C-A = 2
    (0, 1): [0, 5, 5, 5, 5, 5],  # one change at step 1
    (0, 2): [7, 7, 7, 7, 7, 7],  # never changes
    (0, 3): [1, 2, 1, 2, 1, 2],  # flips every step: runs 1 2 1 2 1 2 -> 4 round trips
    (1, 0): [4, 4, 4, 9, 9, 9],  # one change at step 3
    (1, 1): [0, 1, 2, 0, 0, 0],  # A B C A: not a round trip (three distinct values)
    (1, 2): [3, 3, 3, 3, 3, 8],  # one change at the last step
    (1, 3): [2, 2, 5, 2, 2, 2],  # A B A: one round trip, net change 0
}


def _hand_trajectory() -> torch.Tensor:
    toks = torch.empty(6, 2, 4, dtype=torch.long)
    for (b, s), history in _HISTORIES.items():
        toks[:, b, s] = torch.tensor(history)
    return toks


def test_from_tokens_shapes_and_selected():
    toks = _hand_trajectory()
    trace = Trace.from_tokens(toks)
    assert trace.num_steps == 5
    assert torch.equal(trace.tokens, toks)
    assert trace.selected.shape == (5, 2, 4) and trace.selected.dtype == torch.bool
    # a hand-built trace "selects" exactly the positions that changed: (0,1) only at step 1
    assert trace.selected[:, 0, 1].tolist() == [True, False, False, False, False]
    assert trace.selected[:, 0, 2].tolist() == [False] * 5


def test_overwrite_rate_by_hand():
    trace = Trace.from_tokens(_hand_trajectory())
    # changed positions per step (of 8): s1 (0,1)(0,3)(1,1); s2 (0,0)(0,3)(1,1)(1,3);
    # s3 (0,0)(0,3)(1,0)(1,1)(1,3); s4 (0,0)(0,3); s5 (0,0)(0,3)(1,2)
    expected = torch.tensor([3, 4, 5, 2, 3], dtype=F64) / 8
    torch.testing.assert_close(trace.overwrite_rate(), expected, rtol=0, atol=1e-15)
    assert trace.overwrite_rate().dtype == F64

    # a per-position mask [seq] (broadcast over the batch): position 1 left out, 6 counted
    keep = torch.tensor([True, False, True, True])
    expected = torch.tensor([1, 3, 4, 2, 3], dtype=F64) / 6
    torch.testing.assert_close(trace.overwrite_rate(keep), expected, rtol=0, atol=1e-15)

    # a full [batch, seq] mask: row 0 all, row 1 only positions 1 and 3 (6 counted)
    keep2 = torch.tensor([[True, True, True, True], [False, True, False, True]])
    expected = torch.tensor([3, 4, 4, 2, 2], dtype=F64) / 6
    torch.testing.assert_close(trace.overwrite_rate(keep2), expected, rtol=0, atol=1e-15)


def test_net_change_by_hand():
    trace = Trace.from_tokens(_hand_trajectory())
    # final != canvas at (0,1), (0,3), (1,0), (1,2): 4 of 8
    assert float(trace.net_change()) == pytest.approx(0.5, abs=1e-15)
    keep2 = torch.tensor([[True, True, True, True], [False, True, False, True]])
    # counted: (0,*) and (1,1), (1,3); changed among them: (0,1), (0,3): 2 of 6
    assert float(trace.net_change(keep2)) == pytest.approx(1 / 3, abs=1e-15)


def test_round_trips_by_hand():
    trace = Trace.from_tokens(_hand_trajectory())
    rt = trace.round_trips()
    assert rt.dtype == torch.long and rt.shape == (2, 4)
    assert rt.tolist() == [[2, 0, 0, 4], [0, 0, 0, 1]]


def test_round_trips_run_length_encoding():
    # repeats inside a run do not break a round trip: A A B B B A -> 1; A B B C -> 0
    toks = torch.tensor([[5, 5], [5, 6], [6, 6], [6, 7], [6, 7], [5, 7]]).unsqueeze(1)  # [6, 1, 2]
    assert Trace.from_tokens(toks).round_trips().tolist() == [[1, 0]]


def test_commitment_step_by_hand():
    trace = Trace.from_tokens(_hand_trajectory())
    cs = trace.commitment_step()
    assert cs.dtype == torch.long
    # 1-based index of the last change, 0 if never changed
    assert cs.tolist() == [[5, 1, 0, 5], [3, 3, 5, 3]]


def test_order_correlation_by_hand_with_ties():
    trace = Trace.from_tokens(_hand_trajectory())
    rho = trace.order_correlation()
    assert rho.shape == (2,) and rho.dtype == F64
    # row 0: commitment [5, 1, 0, 5] -> average ranks [2.5, 1, 0, 2.5] against positions
    # [0, 1, 2, 3]: centred products sum to -0.5, sums of squares 5 and 4.5 -> -0.5 / sqrt(22.5)
    # row 1: commitment [3, 3, 5, 3] -> ranks [1, 1, 3, 1]: 1 / sqrt(5 * 3)
    expected = torch.tensor([-0.5 / math.sqrt(22.5), 1 / math.sqrt(15.0)], dtype=F64)
    torch.testing.assert_close(rho, expected, rtol=0, atol=1e-12)

    # positions 0, 1, 3 only: row 0 commitment [5, 1, 5] -> ranks [1.5, 0, 1.5] vs [0, 1, 2]:
    # covariance 0 -> rho 0; row 1 commitment [3, 3, 3]: all tied -> undefined (NaN)
    rho = trace.order_correlation(torch.tensor([True, True, False, True]))
    assert float(rho[0]) == pytest.approx(0.0, abs=1e-15)
    assert math.isnan(float(rho[1]))


@pytest.mark.parametrize(
    "commit, expected",
    [
        ([1, 2, 3, 4, 5], 1.0),     # strictly left to right
        ([5, 4, 3, 2, 1], -1.0),    # strictly right to left
        # ties: average ranks [0.5, 0.5, 2.5, 2.5, 4] vs [0, 1, 2, 3, 4]; centred products sum
        # 3 + 1.5 + 0 + 0.5 + 4 = 9, squares 9 and 10 -> 9 / sqrt(90)
        ([1, 1, 2, 2, 3], 9 / math.sqrt(90)),
        ([2, 2, 2, 2, 2], math.nan),  # all ties: undefined
    ],
)
def test_order_correlation_from_commitment_steps(commit, expected):
    # build a trajectory in which position i changes exactly once, at step commit[i]
    seq, steps = len(commit), max(commit)
    toks = torch.zeros(steps + 1, 1, seq, dtype=torch.long)
    for i, c in enumerate(commit):
        toks[c:, 0, i] = 1
    trace = Trace.from_tokens(toks)
    assert trace.commitment_step().tolist() == [commit]
    rho = float(trace.order_correlation()[0])
    if math.isnan(expected):
        assert math.isnan(rho)
    else:
        assert rho == pytest.approx(expected, abs=1e-12)


def test_order_correlation_single_position_is_nan():
    toks = torch.tensor([[[0, 0]], [[1, 0]], [[1, 1]]])  # [3, 1, 2]
    trace = Trace.from_tokens(toks)
    assert float(trace.order_correlation()[0]) == pytest.approx(1.0)
    assert math.isnan(float(trace.order_correlation(torch.tensor([True, False]))[0]))



# -- left_to_right_fraction ------------------------------------------------------------------
def _pairwise_fraction(commit: list[int]) -> float:
    """The textbook double loop: pairs i < j scored 1 if c_i < c_j, 1/2 if tied, 0 otherwise."""
    n = len(commit)
    if n < 2:
        return math.nan
    score = sum(1.0 if commit[i] < commit[j] else 0.5 if commit[i] == commit[j] else 0.0
                for i in range(n) for j in range(i + 1, n))
    return score / (n * (n - 1) / 2)


def _brute_force_fraction(trace: Trace, keep: torch.Tensor) -> list[float]:
    commit = trace.commitment_step().tolist()
    keep = keep.expand(len(commit), len(commit[0])).tolist()
    return [_pairwise_fraction([c for c, k in zip(row, mask) if k]) for row, mask in zip(commit, keep)]


def _assert_fractions(got: torch.Tensor, expected: list[float]) -> None:
    assert got.dtype == F64 and got.shape == (len(expected),)
    for g, e in zip(got.tolist(), expected):
        assert (math.isnan(g) and math.isnan(e)) or g == pytest.approx(e, abs=1e-12)


@pytest.mark.parametrize(
    "commit, expected",
    [
        ([1, 2, 3, 4, 5], 1.0),          # strictly left to right
        ([5, 4, 3, 2, 1], 0.0),          # strictly right to left
        ([2, 2, 2, 2], 0.5),             # all ties: no order
        # pairs (i<j): 1<1 tie, 1<3, 1<2, 1<3, 1<2, 3>2 -> 0.5 + 1 + 1 + 1 + 1 + 0 = 4.5 of 6
        ([1, 1, 3, 2], 4.5 / 6),
        ([3], math.nan),                 # fewer than 2 positions: undefined
    ],
)
def test_left_to_right_fraction_from_commitment_steps(commit, expected):
    seq, steps = len(commit), max(commit)
    toks = torch.zeros(steps + 1, 1, seq, dtype=torch.long)
    for i, c in enumerate(commit):  # position i changes exactly once, at step c
        toks[c:, 0, i] = 1
    trace = Trace.from_tokens(toks)
    assert trace.commitment_step().tolist() == [commit]
    _assert_fractions(trace.left_to_right_fraction(), [expected])


def test_left_to_right_fraction_by_hand_with_a_mask():
    trace = Trace.from_tokens(_hand_trajectory())
    # row 0 commitment [5, 1, 0, 5]: pairs 5>1, 5>0, 5=5, 1>0, 1<5, 0<5 -> 0 + 0 + .5 + 0 + 1 + 1 = 2.5 of 6
    # row 1 commitment [3, 3, 5, 3]: 3=3, 3<5, 3=3, 3<5, 3=3, 5>3 -> .5 + 1 + .5 + 1 + .5 + 0 = 3.5 of 6
    _assert_fractions(trace.left_to_right_fraction(), [2.5 / 6, 3.5 / 6])
    # positions 0 and 3 of row 0 (5 = 5: a tie) and a single position of row 1 (undefined)
    keep = torch.tensor([[True, False, False, True], [False, False, True, False]])
    _assert_fractions(trace.left_to_right_fraction(keep), [0.5, math.nan])
    keep = torch.tensor([True, True, False, True])  # a [seq] mask broadcasts over the batch
    _assert_fractions(trace.left_to_right_fraction(keep), _brute_force_fraction(trace, keep))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_left_to_right_fraction_matches_the_double_loop_on_random_traces(seed):
    g = torch.Generator().manual_seed(seed)
    steps, batch, seq = 7, 3, 11
    # a small vocabulary and sparse changes: many positions share a commitment step (ties),
    # some never change (commitment 0)
    changes = torch.rand(steps, batch, seq, generator=g) < 0.3
    toks = torch.zeros(steps + 1, batch, seq, dtype=torch.long)
    toks[0] = torch.randint(3, (batch, seq), generator=g)
    for s in range(steps):
        toks[s + 1] = torch.where(changes[s], (toks[s] + 1 + torch.randint(2, (batch, seq), generator=g)) % 3, toks[s])
    trace = Trace.from_tokens(toks)
    everything = torch.ones(batch, seq, dtype=torch.bool)
    _assert_fractions(trace.left_to_right_fraction(), _brute_force_fraction(trace, everything))
    keep = torch.rand(batch, seq, generator=g) < 0.6
    keep[0] = False
    keep[0, 4] = True  # row 0 counts one position: NaN
    _assert_fractions(trace.left_to_right_fraction(keep), _brute_force_fraction(trace, keep))
    assert math.isnan(float(trace.left_to_right_fraction(keep)[0]))

def test_empty_trace():
    trace = Trace.from_tokens(torch.tensor([[[3, 1, 2]]]))  # zero steps
    assert trace.num_steps == 0
    assert trace.overwrite_rate().numel() == 0
    assert float(trace.net_change()) == 0.0
    assert trace.commitment_step().tolist() == [[0, 0, 0]]
    assert trace.round_trips().tolist() == [[0, 0, 0]]
    assert trace.selected.shape == (0, 1, 3)
    assert trace.left_to_right_fraction().tolist() == [0.5]  # nothing committed: all tied


# -- the sampling loop ---------------------------------------------------------------------
def _fixed_logits_denoiser(logits: torch.Tensor):
    """A denoiser that ignores its input and returns ``logits`` ([seq, V]) for every sequence."""
    def denoiser(z):
        return logits.expand(z.shape[0], *logits.shape).clone()
    return denoiser


def test_sample_trace_and_callback_agree():
    g = torch.Generator().manual_seed(7)
    V, B, S, steps = 5, 3, 9, 8
    kernel = Uniform(V)
    weights = torch.randn(V, V, generator=g, dtype=F64)

    def denoiser(z):  # depends on z, so the trajectory is not trivial
        return 2.0 * weights[z]

    canvas = torch.randint(V, (B, S), generator=g)
    frozen = torch.rand(B, S, generator=g) < 0.3
    frozen[0, 0] = True
    frozen[0, 1] = False
    grid = linear_alpha_grid(steps)
    infos: list[StepInfo] = []
    out = sample(denoiser, Ancestral(kernel), canvas, grid, frozen,
                 generator=torch.Generator().manual_seed(11), callback=infos.append, trace=True)
    assert isinstance(out, SampleOutput)
    trace = out.trace
    assert isinstance(trace, Trace) and trace.num_steps == steps
    toks = trace.tokens
    assert toks.shape == (steps + 1, B, S)
    assert torch.equal(toks[0], canvas) and torch.equal(toks[-1], out.tokens)

    assert [info.index for info in infos] == list(range(steps))
    for i, info in enumerate(infos):
        assert info.lam_t.dim() == 0 and info.lam_s.dim() == 0
        assert float(info.lam_t) == float(grid[i]) and float(info.lam_s) == float(grid[i + 1])
        assert torch.equal(info.before, toks[i]) and torch.equal(info.after, toks[i + 1])
        assert torch.equal(info.changed, info.after != info.before)
        assert info.selected.dtype == torch.bool and info.selected.shape == (B, S)
        assert torch.equal(info.selected, ~frozen)  # ancestral rewrites every unfrozen position
        assert not bool(info.changed[frozen].any())
    assert torch.equal(trace.selected, torch.stack([info.selected for info in infos]))
    assert bool((toks[:, frozen] == canvas[frozen]).all())  # frozen positions never change
    assert bool((toks[1:] != toks[:-1]).any())  # something did happen

    # statistics over ~frozen, counted from the callback stream by hand
    n_free = int((~frozen).sum())
    by_hand = torch.tensor([float((info.changed & ~frozen).sum()) / n_free for info in infos], dtype=F64)
    torch.testing.assert_close(trace.overwrite_rate(~frozen), by_hand, rtol=0, atol=1e-15)
    # frozen positions never change, so the all-position rate is diluted by exactly n_free / (B S)
    torch.testing.assert_close(trace.overwrite_rate(), by_hand * n_free / (B * S), rtol=0, atol=1e-15)
    net = float(((out.tokens != canvas) & ~frozen).sum()) / n_free
    assert float(trace.net_change(~frozen)) == pytest.approx(net, abs=1e-15)
    assert bool((trace.commitment_step()[frozen] == 0).all())
    assert bool((trace.round_trips()[frozen] == 0).all())
    # a position's commitment step is the last step at which the callback saw it change
    last = torch.zeros(B, S, dtype=torch.long)
    for info in infos:
        last = torch.where(info.changed, torch.full_like(last, info.index + 1), last)
    assert torch.equal(trace.commitment_step(), last)

    # recording does not perturb the random stream
    plain = sample(denoiser, Ancestral(kernel), canvas, grid, frozen, generator=torch.Generator().manual_seed(11))
    assert plain.trace is None and torch.equal(plain.tokens, out.tokens)


def test_greedy_constant_denoiser_changes_everything_at_step_one():
    g = torch.Generator().manual_seed(3)
    V, B, S, steps = 6, 4, 10, 5
    logits = torch.randn(S, V, generator=g, dtype=F64)
    argmax = logits.argmax(-1)
    canvas = torch.randint(V, (B, S), generator=g)
    canvas[0] = argmax  # one sequence already at the argmax: nothing to do there
    out = sample(_fixed_logits_denoiser(logits), Greedy(), canvas, linear_alpha_grid(steps), trace=True)
    differs = canvas != argmax
    assert torch.equal(out.tokens, argmax.expand(B, S))
    rate = out.trace.overwrite_rate()
    expected = torch.zeros(steps, dtype=F64)
    expected[0] = float(differs.sum()) / (B * S)
    assert 0 < expected[0] < 1
    torch.testing.assert_close(rate, expected, rtol=0, atol=1e-15)
    assert torch.equal(out.trace.commitment_step(), differs.long())
    assert out.trace.round_trips().sum() == 0
    assert float(out.trace.net_change()) == pytest.approx(float(expected[0]), abs=1e-15)

    # with a frozen prompt: frozen positions keep the canvas and are left out via ~frozen
    frozen = torch.zeros(B, S, dtype=torch.bool)
    frozen[:, :3] = True
    out = sample(_fixed_logits_denoiser(logits), Greedy(), canvas, linear_alpha_grid(steps), frozen, trace=True)
    assert torch.equal(out.tokens[:, :3], canvas[:, :3])
    assert torch.equal(out.tokens[:, 3:], argmax[3:].expand(B, S - 3))
    rate = out.trace.overwrite_rate(~frozen)
    assert float(rate[0]) == pytest.approx(float(differs[:, 3:].sum()) / (B * (S - 3)), abs=1e-15)
    assert rate[1:].abs().sum() == 0
    assert torch.equal(out.trace.commitment_step(), (differs & ~frozen).long())


def _ordered_logits(S: int, V: int, target: int, left_to_right: bool) -> torch.Tensor:
    """[S, V] logits with argmax ``target`` everywhere and a sharper peak where the position
    should be committed earlier (confidence ``max x_hat - x_hat_z`` then orders positions)."""
    peak = torch.arange(S, 0, -1, dtype=F64) if left_to_right else torch.arange(1, S + 1, dtype=F64)
    logits = torch.zeros(S, V, dtype=F64)
    logits[:, target] = 2.0 + peak
    return logits


@pytest.mark.parametrize("family", ["uniform", "masked"])
def test_adaptive_commits_in_confidence_order(family):
    V, S = 6, 7
    if family == "uniform":
        kernel, start, target = Uniform(V), 0, 2
    else:
        kernel, start, target = Masked(V, 5), 5, 2  # canvas all mask
    rows = torch.stack([_ordered_logits(S, V, target, True), _ordered_logits(S, V, target, False)])

    def denoiser(z):
        return rows.clone()

    canvas = torch.full((2, S), start, dtype=torch.long)
    steps = S + 2  # two spare steps: nothing is left to change
    out = sample(denoiser, Adaptive(kernel, tokens_per_step=1), canvas, linear_alpha_grid(steps),
                 temperature=0.0, generator=torch.Generator().manual_seed(0), trace=True)
    assert torch.equal(out.tokens, torch.full((2, S), target))
    cs = out.trace.commitment_step()
    assert cs[0].tolist() == list(range(1, S + 1))        # position i committed at step i + 1
    assert cs[1].tolist() == list(range(S, 0, -1))        # the last position first
    torch.testing.assert_close(out.trace.order_correlation(), torch.tensor([1.0, -1.0], dtype=F64))
    sel = out.trace.selected
    # one position per sequence per step, then nothing: a committed argmax has confidence 0
    assert bool((sel[:S].sum(-1) == 1).all()) and not bool(sel[S:].any())
    expected = torch.tensor([1.0 / S] * S + [0.0, 0.0], dtype=F64)
    torch.testing.assert_close(out.trace.overwrite_rate(), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "grid, match",
    [
        (torch.tensor([0.0, -1.0, 2.0], dtype=F64), "ascending"),
        (torch.tensor([-1.0, float("nan"), 2.0], dtype=F64), "NaN"),
        (torch.tensor([1.0], dtype=F64), "at least 2"),
    ],
)
def test_sample_rejects_bad_grid(grid, match):
    logits = torch.zeros(3, 4, dtype=F64)
    with pytest.raises(ValueError, match=match):
        sample(_fixed_logits_denoiser(logits), Greedy(), torch.zeros(2, 3, dtype=torch.long), grid)


def test_sample_rejects_integer_grid():
    with pytest.raises(TypeError, match="log_snrs"):
        sample(_fixed_logits_denoiser(torch.zeros(3, 4)), Greedy(), torch.zeros(2, 3, dtype=torch.long),
               torch.tensor([0, 1]))


@pytest.mark.parametrize(
    "frozen",
    [torch.zeros(2, 4, dtype=torch.bool), torch.zeros(3, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.long)],
    ids=["wrong-seq", "1-d", "not-bool"],
)
def test_sample_rejects_bad_frozen(frozen):
    logits = torch.zeros(3, 4, dtype=F64)
    with pytest.raises((ValueError, _HookError), match="frozen"):
        sample(_fixed_logits_denoiser(logits), Greedy(), torch.zeros(2, 3, dtype=torch.long),
               linear_alpha_grid(2), frozen)
