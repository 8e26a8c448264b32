"""Left-to-right decoding (sumi.decoding) with a causal Sumi.

Oracles: greedy decoding against the argmax of full forwards recomputed without a cache, one
row at a time; the first token's frequencies over many rows against ``softmax(logits / T)``
filtered by a dense float64 sort-based reference written here (5 standard errors per token and
a chi-square bound, via ``assert_frequencies`` of tests/discdiff/test_samplers.py); EOS and the
output layout by hand.  Every draw uses an explicit seeded generator.
"""

from __future__ import annotations

import copy

import pytest
import torch

import sumi
from sumi.configs import tiny
from sumi.decoding import DecodeOutput, decode
from tests.discdiff.test_samplers import assert_frequencies

V, BOS, EOS, PAD = 97, 94, 95, 96
PROMPTS = [[BOS, 5, 17, 33], [BOS, 8, 2, 61, 40, 11, 3, 70], [BOS]]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(config=None, scale: float = 10.0) -> sumi.Sumi:
    """A float64 causal tiny model whose head is scaled so its next-token distributions are far
    from uniform (about 3.7 nats of entropy at scale 10, 77 tokens above 1e-3)."""
    model = sumi.Sumi.initialized(config or tiny(vocab_size=V).for_objective("ar"), generator=_gen(3)).double().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return model


@pytest.fixture(scope="module")
def model():
    return _model()


def _greedy_oracle(model, prompt: list[int], steps: int) -> list[int]:
    """Argmax of a full forward over the whole sequence so far, ``steps`` times (no cache), stopping
    after EOS (kept, like the decoded sequence)."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
            if seq[-1] == model.config.eos_token_id:
                break
    return seq[len(prompt):]


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_greedy_decoding_is_the_argmax_of_full_forwards_and_rows_are_independent(backend):
    """Prompts of lengths 4, 8 and 1 in one batch: each row's greedy tokens equal the argmax
    recomputed by full forwards without a cache, and equal the row decoded alone."""
    model = _model(tiny(vocab_size=V, attention_backend=backend).for_objective("ar"))
    out = decode(model, PROMPTS, 12, generator=_gen(0), temperature=0.0)
    assert isinstance(out, DecodeOutput)
    for b, prompt in enumerate(PROMPTS):
        want = _greedy_oracle(model, prompt, 12)
        assert EOS not in want  # this model never stops within 12 tokens (the EOS test makes one that does)
        assert out.tokens[b] == want, b
        assert decode(model, [prompt], 12, generator=_gen(1), temperature=0.0).tokens == [want]
    assert out.sequences.shape == (3, 8 + 12) and out.sequences.dtype == torch.long
    for b, prompt in enumerate(PROMPTS):
        row = out.sequences[b].tolist()
        assert row == prompt + out.tokens[b] + [PAD] * (8 - len(prompt)), b


def _filtered(logits: torch.Tensor, temperature: float, top_k=None, top_p=None, min_p=None) -> torch.Tensor:
    """The sampling distribution by hand, dense, in float64: softmax(logits / T), then keep the
    tokens at least as likely as the k-th most likely (top-k), those whose strictly more likely
    tokens hold less than p of the mass (top-p), those at least min_p times the most likely
    (min-p), and renormalize."""
    p = torch.softmax(logits.double() / temperature, -1)
    keep = torch.ones_like(p, dtype=torch.bool)
    if top_k is not None:
        keep &= p >= p.sort(descending=True).values[top_k - 1]
    if top_p is not None:
        keep &= torch.stack([p[p > pj].sum() for pj in p]) < top_p
    if min_p is not None:
        keep &= p >= min_p * p.max()
    kept = p * keep
    return kept / kept.sum()


@pytest.mark.parametrize("temperature, filters", [
    (1.0, {}), (0.7, {}), (1.5, {"top_k": 5}), (1.0, {"top_p": 0.5}), (1.0, {"min_p": 0.3}),
    (0.8, {"top_k": 12, "top_p": 0.6, "min_p": 0.1}),
])
def test_the_first_token_is_drawn_from_the_filtered_softmax(model, temperature, filters):
    """8,000 rows of one prompt, one token each: the counts against the dense reference (and no
    token outside the filters ever drawn)."""
    n, prompt = 8_000, PROMPTS[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt]))[0, -1]
    probs = _filtered(logits, temperature, **filters)
    out = decode(model, [prompt] * n, 1, generator=_gen(4), temperature=temperature, **filters)
    first = out.sequences[:, len(prompt)]
    assert_frequencies(torch.bincount(first, minlength=V), probs, n, what=f"T={temperature} {filters}", chi2=True)
    if filters:  # the check has power: the filters really remove mass here
        assert int((probs > 0).sum()) < int((_filtered(logits, temperature) > 1e-4).sum())


def _with_eos(model, eos: int) -> sumi.Sumi:
    """``model``'s weights under a configuration whose EOS is ``eos``."""
    config = model.config.replace(eos_token_id=eos, bos_token_id=BOS, pad_token_id=PAD)
    other = sumi.Sumi(config).double().eval()
    other.load_state_dict(model.state_dict())
    return other


def test_a_row_stops_at_its_eos_and_decoding_stops_when_all_have(model):
    """EOS made the third greedy token of row 0: that row keeps two tokens, its sequence holds
    the EOS then pad; the other rows run on; alone, row 0 makes 1 + 2 model calls (the prompt,
    then a token per call) instead of 1 + 7."""
    row0 = _greedy_oracle(model, PROMPTS[0], 8)
    eos = row0[2]
    assert eos not in row0[:2] and eos not in (BOS, PAD)
    stopper = _with_eos(model, eos)
    out = decode(stopper, PROMPTS, 8, generator=_gen(5), temperature=0.0)
    assert out.tokens[0] == row0[:2]
    assert out.sequences[0].tolist() == PROMPTS[0] + row0[:2] + [eos] + [PAD] * (8 + 8 - len(PROMPTS[0]) - 3)
    for b in (1, 2):
        want = _greedy_oracle(stopper, PROMPTS[b], 8)
        assert out.tokens[b] == [t for t in want if t != eos][:len(out.tokens[b])]
        assert out.tokens[b] == (want[:-1] if want[-1] == eos else want)
    calls = []
    hook = stopper.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape)))
    try:
        alone = decode(stopper, [PROMPTS[0]], 8, generator=_gen(6), temperature=0.0)
    finally:
        hook.remove()
    assert alone.tokens == [row0[:2]]
    assert calls == [(1, 4), (1, 1), (1, 1)]


def test_each_step_feeds_one_token_and_runs_the_head_on_one_position(model):
    """The prompt runs once (the head at its last position only), then every call takes one
    token per row: no step grows with the prefix, and no ``[batch, seq, V]`` logits exist."""
    calls, heads = [], []
    hooks = [model.register_forward_pre_hook(lambda module, args: calls.append(tuple(args[0].shape))),
             model.lm_head.register_forward_pre_hook(lambda module, args: heads.append(tuple(args[0].shape)))]
    try:
        decode(model, PROMPTS, 5, generator=_gen(7))
    finally:
        for hook in hooks:
            hook.remove()
    assert calls == [(3, 8)] + [(3, 1)] * 4
    assert heads == [(3, 1, 64)] * 5


def test_decoding_is_reproducible_and_touches_no_global_state(model):
    state = torch.get_rng_state()
    model.train()
    seen = []
    hook = model.register_forward_pre_hook(lambda module, args: seen.append((module.training,
                                                                             torch.is_grad_enabled())))
    try:
        a = decode(model, PROMPTS, 10, generator=_gen(8), top_p=0.9)
        b = decode(model, PROMPTS, 10, generator=_gen(8), top_p=0.9)
        c = decode(model, PROMPTS, 10, generator=_gen(9), top_p=0.9)
    finally:
        hook.remove()
        assert model.training  # restored
        model.eval()
    assert a.tokens == b.tokens and torch.equal(a.sequences, b.sequences)
    assert a.tokens != c.tokens
    assert set(seen) == {(False, False)}  # eval mode, no autograd graph
    assert torch.equal(state, torch.get_rng_state())


def test_no_new_tokens_and_bad_arguments(model):
    out = decode(model, PROMPTS, 0, generator=_gen(10))
    assert out.tokens == [[], [], []]
    assert out.sequences.tolist() == [p + [PAD] * (8 - len(p)) for p in PROMPTS]
    with pytest.raises(ValueError, match=r"decode needs a causal model \(objective 'ar'\), got objective 'uniform'"):
        decode(sumi.Sumi.initialized(tiny(vocab_size=V)), PROMPTS, 4, generator=_gen(0))
    with pytest.raises(ValueError, match="max_new_tokens must be an int >= 0, got -1"):
        decode(model, PROMPTS, -1, generator=_gen(0))
    with pytest.raises(ValueError, match="temperature"):
        decode(model, PROMPTS, 4, generator=_gen(0), temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        decode(model, PROMPTS, 4, generator=_gen(0), top_p=0.0)
    with pytest.raises(ValueError, match="non-empty list of non-empty lists"):
        decode(model, [[BOS], []], 4, generator=_gen(0))
    with pytest.raises(ValueError, match=r"longest prompt \(8 tokens\) \+ max_new_tokens \(505\) exceeds the model's "
                                         r"max_position_embeddings \(512\)"):
        decode(model, PROMPTS, 505, generator=_gen(0))


def test_a_model_with_nan_weights_is_an_error_not_an_empty_answer(model):
    """NaN weights give NaN logits: decode says so (discdiff's NonFiniteError, once, on the
    prompt's logits), and sumi.generate names the model as the likely cause."""
    from discdiff import NonFiniteError

    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.lm_head.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match="not finite"):
        decode(broken, [[broken.config.bos_token_id, 5]], 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(NonFiniteError, match="the model produced non-finite values"):
        sumi.generate(broken, [broken.config.bos_token_id, 5], 4, seed=0)
