"""The causal Sumi (the ``"ar"`` family) and its KV cache.

Oracles: the causal attention itself is checked against a float64 loop in
tests/sumi/test_model.py; here the whole model: position ``i`` never depends on later tokens
(and a bidirectional model's does), eager and sdpa agree on values and parameter gradients
(padding, documents, GQA), the mask is built once per forward, and a cached forward fed in
pieces equals one full causal forward at every position (float64 to 1e-12 with sdpa, float32),
left padding with per-row positions included: each row then equals itself alone.
"""

from __future__ import annotations

import pytest
import torch

import sumi
from sumi.configs import tiny
from sumi.model import KVCache
from sumi.model.attention import CAUSAL, BACKENDS, cached_mask

F64 = torch.float64
V = 97


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(objective: str = "ar", seed: int = 1) -> sumi.Sumi:
    return sumi.Sumi.initialized(tiny(vocab_size=V).for_objective(objective), generator=_gen(seed)).eval()


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def model64():
    return _model().double()


def _masks(batch: int, seq: int):
    mask = torch.ones(batch, seq, dtype=torch.bool)
    mask[1, seq - 3:] = False
    docs = torch.zeros(batch, seq, dtype=torch.long)
    docs[0, seq // 2:] = 1
    return mask, docs


# -- causality ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("masking", ["none", "padding+documents"])
def test_position_i_never_sees_later_tokens(model, backend, masking):
    """Changing token ``j`` changes no output before ``j`` (causal) and changes position ``j``."""
    ids = torch.randint(94, (2, 12), generator=_gen(2))
    mask, docs = _masks(2, 12) if masking != "none" else (None, None)
    base = model(ids, mask, document_ids=docs, backend=backend)
    for j in (3, 7, 8):
        changed = ids.clone()
        changed[:, j] = (changed[:, j] + 1) % 94
        other = model(changed, mask, document_ids=docs, backend=backend)
        assert torch.equal(other[:, :j], base[:, :j]), j
        assert not torch.allclose(other[0, j], base[0, j]), j


def test_a_bidirectional_model_sees_later_tokens():
    """The sanity check of the test above: the same weights, bidirectional, do see token ``j``."""
    causal, bidirectional = _model("ar"), _model("uniform")
    bidirectional.load_state_dict(causal.state_dict())
    ids = torch.randint(94, (1, 10), generator=_gen(3))
    changed = ids.clone()
    changed[0, 6] = (changed[0, 6] + 1) % 94
    assert not torch.allclose(bidirectional(changed)[:, :6], bidirectional(ids)[:, :6])
    assert torch.equal(causal(changed)[:, :6], causal(ids)[:, :6])
    # the first position of a causal model sees only itself (and the sink): a one-token forward
    torch.testing.assert_close(causal(ids)[:, :1], causal(ids[:, :1]), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("masking", ["none", "padding", "documents", "padding+documents"])
def test_eager_and_sdpa_agree_on_values_and_gradients(model, masking):
    """The causal model (4 query heads on 2 KV heads: GQA) through eager and sdpa: the logits at
    real positions and every parameter's gradient of a loss over them."""
    ids = torch.randint(94, (2, 11), generator=_gen(4))
    mask, docs = _masks(2, 11)
    mask = mask if "padding" in masking else None
    docs = docs if "documents" in masking else None
    real = torch.ones(2, 11, dtype=torch.bool) if mask is None else mask
    weights = torch.randn(2, 11, V, generator=_gen(5))
    out = {}
    for backend in ("eager", "sdpa"):
        model.zero_grad()
        logits = model(ids, mask, document_ids=docs, backend=backend)
        (logits[real] * weights[real]).sum().backward()
        out[backend] = (logits.detach()[real], {n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad()
    torch.testing.assert_close(out["sdpa"][0], out["eager"][0], atol=1e-5, rtol=1e-5)
    for name, grad in out["eager"][1].items():
        torch.testing.assert_close(out["sdpa"][1][name], grad, atol=1e-4, rtol=1e-4, msg=name)


def test_the_causal_mask_is_built_once_per_forward(model, mask_and_rope_builds):
    """Once per forward, never per layer; on the CPU without other masks sdpa builds none at all
    (the kernel's own ``is_causal``), eager a lower triangle."""
    counts = mask_and_rope_builds
    ids = torch.randint(94, (2, 9), generator=_gen(6))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    for backend in ("eager", "sdpa"):
        for m in (None, mask):
            counts.update(mask=0, rope=0)
            model(ids, m, backend=backend)
            assert counts == {"mask": 1, "rope": 1}, (backend, m)
    assert model.prepare(ids, backend="sdpa").mask is CAUSAL
    assert torch.equal(model.prepare(ids, backend="eager").mask, torch.ones(9, 9, dtype=torch.bool).tril()[None, None])
    assert BACKENDS["sdpa"].prepare(None, None, 2, 9, torch.device("cpu")) is None  # bidirectional: unchanged


# -- the KV cache ------------------------------------------------------------------------------
def _in_pieces(model, ids, pieces, backend, mask=None, positions=None):
    """Logits of ``ids`` fed through one cache in pieces of the given sizes."""
    cache = KVCache.for_model(model, ids.shape[0], ids.shape[1])
    out, start = [], 0
    for n in pieces:
        stop = start + n
        out.append(model(ids[:, start:stop], None if mask is None else mask[:, start:stop], cache=cache,
                         position_ids=None if positions is None else positions[:, start:stop], backend=backend))
        start = stop
    assert cache.length == ids.shape[1]
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("pieces", [[1] * 10, [4, 1, 1, 1, 3], [10]])
@pytest.mark.parametrize("backend", ["eager", "sdpa"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_the_cache_gives_the_full_forward_logits(model, model64, backend, dtype, pieces):
    """Fed a token at a time (or in pieces), the cached model's logits equal one full causal
    forward's at every position: to 1e-12 in float64 with sdpa (eager computes attention in
    float32: 1e-6), to 1e-5 in float32."""
    net = model64 if dtype == "float64" else model
    ids = torch.randint(94, (3, 10), generator=_gen(7))
    with torch.no_grad():
        want = net(ids, backend=backend)
        got = _in_pieces(net, ids, pieces, backend)
    tol = 1e-12 if dtype == "float64" and backend == "sdpa" else 1e-5
    torch.testing.assert_close(got, want, atol=tol, rtol=tol)


@pytest.mark.parametrize("backend", ["eager", "sdpa"])
def test_a_left_padded_cached_batch_equals_each_row_alone(model64, backend):
    """Rows of lengths 10, 6 and 3 left-padded to 10, their padding masked and their positions
    counted from their first token: every real position's logits equal the row's own full
    forward, whether the batch is fed at once or a token at a time."""
    lengths = [10, 6, 3]
    rows = [torch.randint(94, (1, n), generator=_gen(8 + n)) for n in lengths]
    ids = torch.full((3, 10), 96)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    for b, row in enumerate(rows):
        ids[b, 10 - row.shape[1]:] = row[0]
        mask[b, 10 - row.shape[1]:] = True
    positions = (mask.long().cumsum(1) - 1).clamp_min(0)
    tol = 1e-12 if backend == "sdpa" else 1e-5
    with torch.no_grad():
        for pieces in ([10], [5, 1, 1, 1, 1, 1]):
            got = _in_pieces(model64, ids, pieces, backend, mask, positions)
            for b, row in enumerate(rows):
                alone = model64(row, backend=backend)[0]
                torch.testing.assert_close(got[b, 10 - row.shape[1]:], alone, atol=tol, rtol=tol)


def test_cached_steps_write_their_slots_and_the_head_runs_where_asked(model):
    ids = torch.randint(94, (2, 6), generator=_gen(9))
    cache = KVCache.for_model(model, 2, 8)
    assert cache.length == 0 and not cache.key_mask.any()
    with torch.no_grad():
        last = model(ids, cache=cache, output_index=torch.full((2, 1), 5))
        want = model(ids)[:, 5:]
    torch.testing.assert_close(last, want, atol=1e-6, rtol=1e-6)
    assert cache.length == 6 and cache.key_mask[:, :6].all() and not cache.key_mask[:, 6:].any()
    assert cache.keys[0].shape == (2, 2, 8, 16) and cache.keys[0].dtype == torch.float32
    assert not cache.keys[0][:, :, 6:].any()  # slots not yet written


def test_cache_misuse_fails_clearly(model):
    ids = torch.randint(94, (2, 4), generator=_gen(10))
    with pytest.raises(ValueError, match=r"a KV cache needs a causal model \(objective 'ar'\); objective 'uniform'"):
        KVCache(tiny(vocab_size=V), 2, 8)
    uniform = _model("uniform")
    cache = KVCache.for_model(model, 2, 5)
    with pytest.raises(ValueError, match="cache= needs a causal model"):
        uniform(ids, cache=cache)
    with pytest.raises(ValueError, match="capacity must be an int in"):
        KVCache.for_model(model, 2, 513)
    with pytest.raises(ValueError, match="input_ids have 1 rows but the cache holds 2"):
        model(ids[:1], cache=cache)
    with pytest.raises(ValueError, match="takes no plan= and no document_ids="):
        model(ids, document_ids=torch.zeros(2, 4, dtype=torch.long), cache=cache)
    with torch.no_grad():
        model(ids, cache=cache)
    with pytest.raises(ValueError, match=r"2 more tokens do not fit in the cache: 4 of its 5 slots are used"):
        model(ids[:, :2], cache=cache)
    assert cache.length == 4


def test_flash_runs_cached_steps_through_sdpa():
    """flash-attn's varlen layout does not fit a cache that grows each step: such steps get sdpa's
    mask (here on the CPU: the additive bias), whose last query sees every real key."""
    key_mask = torch.tensor([[False, True, True, True]])
    backend, mask = cached_mask("flash", key_mask, 2)
    assert backend == "sdpa"
    want = torch.tensor([[[[-torch.inf, 0.0, 0.0, -torch.inf], [-torch.inf, 0.0, 0.0, 0.0]]]])
    assert torch.equal(mask, want)
    assert cached_mask("eager", key_mask, 2)[0] == "eager"
