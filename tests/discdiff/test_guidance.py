"""Classifier-free guidance (``discdiff.guidance``) against independent oracles.

Oracles: the normalized formula ``log_softmax((1 + w) log_softmax(c) - w log_softmax(u))``
recomputed densely in float64; ``torch.log_softmax`` itself for ``w = 0`` and ``w = -1`` (bitwise);
the argmax of the likelihood ratio ``log p(x | c) - log p(x)`` for large ``w``; hand-computed
values at infinite entries; sampling with the plain conditional denoiser (scale 0) and with the
guided logits computed outside the loop.  Every draw uses an explicit seeded ``torch.Generator``.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import discdiff as dd
from discdiff.guidance import Guided, cfg, uncond_log_floor
from discdiff.guidance import cfg as guidance_cfg
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
try:  # under pytest's jaxtyping hook a shape mismatch may be caught before the library's own check
    from jaxtyping import TypeCheckError as _HookError
except ImportError:  # pragma: no cover
    _HookError = TypeError
INF = math.inf
V, MASK = 12, 11


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _oracle(cond: torch.Tensor, uncond: torch.Tensor, w: float) -> torch.Tensor:
    """The guided log-probabilities in float64, densely: the test's own formula."""
    a, b = torch.log_softmax(cond.to(F64), -1), torch.log_softmax(uncond.to(F64), -1)
    return torch.log_softmax((1 + w) * a - w * b, -1)


def _pair(seed: int, shape=(3, 5), vocab=V, dtype=torch.float32):
    g = _gen(seed)
    cond = (2.0 * torch.randn(*shape, vocab, generator=g)).to(dtype)
    return cond, (2.0 * torch.randn(*shape, vocab, generator=g)).to(dtype)


# ----------------------------------------------------------------------------- cfg algebra
@pytest.mark.parametrize("w", [-0.75, -0.25, 0.5, 1.0, 3.0, 7.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, F64])
def test_cfg_is_the_renormalized_formula(w, dtype):
    cond, uncond = _pair(1, dtype=dtype)
    out = cfg(cond, uncond, w)
    assert out.dtype == (F64 if dtype == F64 else torch.float32) and out.shape == cond.shape
    tol = 1e-12 if dtype == F64 else 2e-6 * (1 + abs(w))
    torch.testing.assert_close(out.to(F64), _oracle(cond, uncond, w), rtol=0, atol=tol)
    # renormalized: the probabilities sum to 1 at every position
    torch.testing.assert_close(torch.logsumexp(out.to(F64), -1), torch.zeros(cond.shape[:-1], dtype=F64),
                               rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, F64])
def test_scale_zero_and_minus_one_are_the_two_distributions_exactly(dtype):
    cond, uncond = _pair(2, shape=(4, 7), dtype=dtype)
    want = F64 if dtype == F64 else torch.float32
    assert torch.equal(cfg(cond, uncond, 0.0), torch.log_softmax(cond.to(want), -1))
    assert torch.equal(cfg(cond, uncond, -1.0), torch.log_softmax(uncond.to(want), -1))
    # the input whose weight is zero is not read: NaN there changes nothing
    nan = torch.full_like(cond, math.nan)
    assert torch.equal(cfg(cond, nan, 0.0), torch.log_softmax(cond.to(want), -1))
    assert torch.equal(cfg(nan, uncond, -1.0), torch.log_softmax(uncond.to(want), -1))
    # chunking does not change a bit: one row at a time equals one call over every row
    assert torch.equal(cfg(cond, uncond, 0.0, rows=1), torch.log_softmax(cond.to(want), -1))
    assert torch.equal(cfg(cond, uncond, 2.0, rows=1), cfg(cond, uncond, 2.0))


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_large_scale_concentrates_on_the_likelihood_ratio_argmax(dtype):
    """As ``w -> inf``, ``log p_w / w -> log p(x | c) - log p(x) + const``: all mass on its argmax,
    even where that is not the conditional argmax."""
    g = _gen(3)
    cond, uncond = torch.randn(64, V, generator=g, dtype=F64), torch.randn(64, V, generator=g, dtype=F64)
    ratio = torch.log_softmax(cond, -1) - torch.log_softmax(uncond, -1)
    best = ratio.argmax(-1)
    gap = ratio.max(-1).values - ratio.topk(2, -1).values[:, 1]
    assert bool((best != cond.argmax(-1)).any())  # the limit is not the conditional argmax
    for w in (1e2, 1e3):
        out = cfg(cond.to(dtype), uncond.to(dtype), w).to(F64)
        p_best = out.gather(-1, best[:, None]).squeeze(-1).exp()
        # all other tokens are below exp(-(w gap - (|a_j| + |a_best|)) each: the dense bound
        bound = (V - 1) * torch.exp(-(w * gap - 2 * torch.log_softmax(cond, -1).abs().max(-1).values))
        assert bool((1 - p_best <= bound.clamp(max=1) + 1e-5).all())
        top = gap > 20 / w  # positions where the limit is already reached at this w
        assert bool((out.argmax(-1)[top] == best[top]).all()) and bool(top.float().mean() > 0.5)
        torch.testing.assert_close(out, _oracle(cond.to(dtype), uncond.to(dtype), w), rtol=0,
                                   atol=1e-9 if dtype == F64 else 2e-7 * w * 10)


def test_infinite_entries_follow_the_documented_rule():
    """``-inf`` in the conditional stays ``-inf``; ``-inf`` in the unconditional is the support
    intersection for ``-1 < w < 0`` and the floor ``log tiny`` for ``w > 0``; never NaN or ``+inf``."""
    cond = torch.tensor([[0.0, 1.0, -INF, 0.5, -INF, 2.0]])
    uncond = torch.tensor([[1.0, -INF, 0.3, -INF, -INF, 0.0]])
    a, b = torch.log_softmax(cond.to(F64), -1), torch.log_softmax(uncond.to(F64), -1)
    floor = math.log(torch.finfo(torch.float32).tiny)
    assert uncond_log_floor(torch.float32) == floor and uncond_log_floor(F64) == math.log(torch.finfo(F64).tiny)
    for w in (-0.5, 0.5, 2.0, 20.0):
        out = cfg(cond, uncond, w)
        assert not bool(torch.isnan(out).any()) and not bool((out == INF).any()), w
        assert bool((out[0, [2, 4]] == -INF).all())  # impossible under p(x | c): stays impossible
        if w < 0:
            want = torch.log_softmax((1 + w) * a - w * b, -1)  # -inf wherever either is -inf
            assert bool((out[0, [1, 3]] == -INF).all())
        else:
            want = torch.log_softmax(torch.where(a == -INF, -INF, (1 + w) * a - w * b.clamp_min(floor)), -1)
            assert bool(torch.isfinite(out[0, [0, 1, 3, 5]]).all())
        torch.testing.assert_close(out.to(F64), want, rtol=0, atol=1e-5 * (1 + w))
    # disjoint supports under a geometric mixture: no support at all, -inf everywhere (not NaN)
    out = cfg(torch.tensor([[0.0, -INF]]), torch.tensor([[-INF, 0.0]]), -0.5)
    assert bool((out == -INF).all())


@pytest.mark.parametrize("mask_logit", ["finite", "-inf", "cond -inf", "uncond -inf"])
@pytest.mark.parametrize("w", [-0.5, 1.5, 4.0])
def test_masked_state_makes_no_difference_to_x_hat(mask_logit, w):
    """Guidance commutes with removing the mask state: the samplers' ``x_hat`` of the guided
    logits equals guidance of the two distributions with the mask state removed first."""
    cond, uncond = _pair(4)
    if mask_logit in ("-inf", "cond -inf"):
        cond[..., MASK] = -INF
    if mask_logit in ("-inf", "uncond -inf"):
        uncond[..., MASK] = -INF
    x_hat = Denoised(cfg(cond, uncond, w), MASK).log_probs.to(F64)
    want = torch.full(cond.shape, -INF, dtype=F64)
    want[..., :MASK] = _oracle(cond[..., :MASK], uncond[..., :MASK], w)
    torch.testing.assert_close(x_hat, want, rtol=0, atol=1e-5 * (1 + w))


def test_cfg_allocates_nothing_vocabulary_sized_but_the_output():
    """Beyond the output, no tensor larger than one chunk of ``rows`` rows is created."""
    rows, shape, vocab = 4, (8, 16), 1000

    class Sizes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.made = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    self.made.append((t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()))
            return out

    for dtype in (torch.float32, torch.bfloat16):
        cond, uncond = _pair(5, shape=shape, vocab=vocab, dtype=dtype)
        for w in (0.0, -1.0, 2.0, -0.5):
            with Sizes() as mode:
                out = cfg(cond, uncond, w, rows=rows)
            known = {t.untyped_storage().data_ptr() for t in (cond, uncond, out)}
            largest = max(n for ptr, n in mode.made if ptr not in known)
            assert largest <= rows * vocab * 4, (dtype, w, largest)


def test_cfg_rejects_bad_input_with_one_clear_line():
    """The library's own messages, as seen outside pytest (under pytest the jaxtyping hook wraps
    ``cfg`` and may reject a wrong type or shape first: ``inspect.unwrap`` skips it)."""
    cond, uncond = _pair(6)
    cfg = inspect.unwrap(guidance_cfg)
    for bad in (-1.5, math.nan, math.inf):
        with pytest.raises(ValueError, match="scale"):
            cfg(cond, uncond, bad)
    for bad in (True, "2", None, torch.tensor(1.0)):
        with pytest.raises(TypeError, match="scale"):
            cfg(cond, uncond, bad)
    with pytest.raises(ValueError, match="uncond_logits has shape"):
        cfg(cond, uncond[..., :-1], 1.0)
    with pytest.raises(TypeError, match="cond_logits must be floating-point"):
        cfg(cond.long(), uncond, 1.0)
    with pytest.raises(ValueError, match="rows"):
        cfg(cond, uncond, 1.0, rows=0)


def test_cfg_carries_no_gradient():
    cond, uncond = _pair(7)
    cond.requires_grad_(True)
    out = cfg(cond, uncond, 1.0)
    assert not out.requires_grad


# ----------------------------------------------------------------------------- Guided
class _Table:
    """A toy denoiser: logits depend on the token and the position (``[seq, V]`` offsets)."""

    def __init__(self, seed: int, seq: int = 6, mask_logit: float | None = None):
        g = _gen(seed)
        self.table = 1.5 * torch.randn(V, V, generator=g)
        self.offsets = 1.5 * torch.randn(seq, V, generator=g)
        if mask_logit is not None:
            self.table[:, MASK] = mask_logit
        self.calls = 0

    def __call__(self, z):
        self.calls += 1
        return self.table[z] + self.offsets[: z.shape[-1]]


def _rules():
    uniform, masked, hybrid = dd.Uniform(V), dd.Masked(V, MASK), dd.Hybrid(V, MASK)
    cases = []
    for kernel in (uniform, masked, hybrid):
        cases += [Ancestral(kernel), TauLeaping(kernel), Adaptive(kernel, 2), Greedy(kernel)]
        if kernel.mask_id is not None:
            cases.append(Confidence(kernel))
    return cases


def _canvas(rule, batch=4, seq=6, seed=8):
    if rule.mask_id is None:
        return torch.randint(0, V, (batch, seq), generator=_gen(seed))
    return torch.full((batch, seq), MASK, dtype=torch.long)


@pytest.mark.parametrize("rule", _rules(), ids=repr)
def test_guided_samples_with_every_step_rule(rule):
    """End to end with every rule: scale 0 reproduces sampling with the conditional denoiser
    (same seed, identical tokens), and a guided run equals sampling with the guided logits
    computed outside the loop."""
    mask_logit = -INF if rule.mask_id is not None else None
    cond, uncond = _Table(10, mask_logit=mask_logit), _Table(11, mask_logit=mask_logit)
    canvas, grid = _canvas(rule), linear_alpha_grid(6)
    plain = sample(cond, rule, canvas, grid, generator=_gen(12)).tokens
    guided0 = Guided(cond, uncond, 0.0)
    calls = uncond.calls
    assert torch.equal(sample(guided0, rule, canvas, grid, generator=_gen(12)).tokens, plain)
    assert uncond.calls == calls  # the zero-weight denoiser is never called

    for w in (-0.5, 2.0):
        out = sample(Guided(cond, uncond, w), rule, canvas, grid, generator=_gen(13)).tokens
        want = sample(lambda z: cfg(cond(z), uncond(z), w), rule, canvas, grid, generator=_gen(13)).tokens
        assert torch.equal(out, want)
        assert out.shape == canvas.shape and bool(((out >= 0) & (out < V)).all())
        if isinstance(rule, Confidence):  # a grid to alpha = 1 - 1e-4 leaves few masks; never a new one
            assert bool(((canvas != MASK) <= (out != MASK)).all())


@pytest.mark.parametrize("kernel", [dd.Uniform(V), dd.Masked(V, MASK), dd.Hybrid(V, MASK)], ids=repr)
def test_guidance_moves_greedy_decoding_to_the_ratio_argmax(kernel):
    """Token 0 is the conditional argmax, token 1 the argmax of ``p(x | c) / p(x)``: greedy
    decoding picks 0 without guidance and 1 with ``w = 3`` ((1 + w) 2 - 3w = -1 < (1 + w) 1.5)."""
    def cond(z):
        logits = torch.zeros(*z.shape, V)
        logits[..., 0], logits[..., 1] = 2.0, 1.5
        return logits

    def uncond(z):
        logits = torch.zeros(*z.shape, V)
        logits[..., 0] = 3.0
        return logits

    rule = Greedy(kernel)
    canvas, grid = _canvas(rule), linear_alpha_grid(3)
    assert bool((sample(Guided(cond, uncond, 0.0), rule, canvas, grid).tokens == 0).all())
    assert bool((sample(Guided(cond, uncond, 3.0), rule, canvas, grid).tokens == 1).all())


def test_guided_is_time_conditioned_when_a_denoiser_is():
    """The log-SNR reaches exactly the denoisers that take it; ``sample`` reads the guided
    denoiser's signature, so nothing needs to be passed."""
    table, seen = _Table(14), []

    def timed(z, lam):
        seen.append(lam)
        return table(z) * torch.sigmoid(lam).view(-1, 1, 1).float()

    class TimedModule(torch.nn.Module):
        def forward(self, input_ids, lam):
            seen.append(lam)
            return table(input_ids) + lam.view(-1, 1, 1).float()

    rule, grid = Ancestral(dd.Uniform(V)), linear_alpha_grid(4)
    canvas = _canvas(rule)
    for cond, uncond in ((timed, table), (table, TimedModule()), (timed, TimedModule())):
        seen.clear()
        guided = Guided(cond, uncond, 1.5)
        assert guided.time_conditioned
        out = sample(guided, rule, canvas, grid, generator=_gen(15)).tokens

        def direct(z, lam):
            c = cond(z, lam) if cond is not table else cond(z)
            u = uncond(z, lam) if uncond is not table else uncond(z)
            return cfg(c, u, 1.5)

        per_step = 2 if cond is not table and uncond is not table else 1
        assert len(seen) == per_step * (len(grid) - 1)
        for i, lam in enumerate(seen):
            assert lam.dtype == F64 and lam.shape == (canvas.shape[0],) and bool((lam == grid[i // per_step]).all())
        assert torch.equal(out, sample(direct, rule, canvas, grid, generator=_gen(15)).tokens)
        with pytest.raises(TypeError, match="time-conditioned"):
            sample(guided, rule, canvas, grid, time_conditioned=False)

    plain = Guided(table, table, 1.0)
    assert not plain.time_conditioned
    sample(plain, rule, canvas, grid, generator=_gen(16))  # called as guided(z)
    forced = Guided(lambda *args: table(args[0]), table, 1.0, time_conditioned=True)
    assert forced.time_conditioned
    with pytest.raises(TypeError):  # the plain table does not take lam when forced to
        sample(forced, rule, canvas, grid)


@pytest.mark.parametrize("w", [2.0, 0.0, -1.0, -0.5])
@pytest.mark.parametrize("timed", [False, True])
def test_batched_makes_one_call_per_step_and_equals_two_calls(w, timed):
    cond_table, uncond_table = _Table(17, mask_logit=-INF), _Table(18, mask_logit=-INF)
    calls = []

    def record(z, conditional):
        calls.append((z.shape[0], conditional.clone()))
        return torch.where(conditional[:, None, None], cond_table(z), uncond_table(z))

    if timed:
        def model(z, lam, *, conditional):
            assert lam.dtype == F64 and lam.shape == (z.shape[0],)
            return record(z, conditional) * torch.sigmoid(lam).view(-1, 1, 1).float()

        def cond(z, lam):
            return cond_table(z) * torch.sigmoid(lam).view(-1, 1, 1).float()

        def uncond(z, lam):
            return uncond_table(z) * torch.sigmoid(lam).view(-1, 1, 1).float()
    else:
        def model(z, *, conditional):
            return record(z, conditional)

        cond, uncond = cond_table, uncond_table

    rule = Ancestral(dd.Hybrid(V, MASK))
    canvas, grid = _canvas(rule, batch=3), linear_alpha_grid(5)
    batched = Guided.batched(model, w)
    assert batched.time_conditioned == timed
    out = sample(batched, rule, canvas, grid, generator=_gen(19)).tokens
    assert len(calls) == len(grid) - 1  # one denoiser call per step
    halves = 1 if w in (0.0, -1.0) else 2
    want_flags = torch.tensor([True] * 3 + [False] * 3)[:3 * halves] if w != -1 else torch.zeros(3, dtype=torch.bool)
    assert all(n == 3 * halves and torch.equal(flags, want_flags) for n, flags in calls)
    assert torch.equal(out, sample(Guided(cond, uncond, w), rule, canvas, grid, generator=_gen(19)).tokens)


def test_guided_rejects_bad_input():
    table = _Table(20)
    with pytest.raises(TypeError, match="denoiser"):  # our check, or beartype's under pytest
        Guided(table, "not a denoiser", 1.0)
    with pytest.raises(ValueError, match="scale"):
        Guided(table, table, -2.0)
    with pytest.raises(TypeError, match="time_conditioned"):
        Guided(table, table, 1.0, time_conditioned="yes")
    with pytest.raises(ValueError, match="batch"):
        Guided.batched(lambda z, *, conditional: table(z), 1.0)(torch.zeros(6, dtype=torch.long))
    with pytest.raises(ValueError, match="the denoiser returned shape"):
        Guided(table, lambda z: table(z)[:, :-1], 1.0)(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises((ValueError, _HookError), match="uncond_logits"):  # another vocabulary
        Guided(table, lambda z: table(z)[..., :-1], 1.0)(torch.zeros(2, 6, dtype=torch.long))
    with pytest.raises(TypeError, match="guided\\(z, lam\\)"):
        Guided(lambda z, lam: table(z), table, 1.0)(torch.zeros(2, 6, dtype=torch.long))
