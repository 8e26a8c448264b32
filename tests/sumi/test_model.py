"""The Sumi transformer: presets and counts, the off-by-one attention in every backend against
an independent float64 oracle, bidirectional and causal (values and gradients; flash's segment
layout against an emulated varlen kernel on the CPU), masks and RoPE tables built once per
forward or once per plan, the head on selected positions, RoPE and RMSNorm conventions,
meta-device construction.  The causal model and its KV cache: tests/sumi/test_causal.py."""

from __future__ import annotations

import importlib.util
import math
import re
import sys
import types

import pytest
import torch

import sumi
from sumi.configs import sumi_1b, sumi_7b, sumi_150m, tiny
from sumi.model import (check_backend, eager_attention, flash_attention, flash_available, flops_per_token,
                        num_parameters, sdpa_attention)
from sumi.model.attention import check_torch_version
from sumi.model.layers import RMSNorm, apply_rope, rope_cos_sin

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- presets and counts -----------------------------------------------------------------------
def test_sumi_7b_on_meta_has_the_released_parameter_count():
    model = sumi.Sumi.on_meta(sumi_7b())
    assert model.num_parameters() == 7_767_543_808 == num_parameters(sumi_7b())
    assert all(p.is_meta for p in model.parameters())
    c = sumi_7b()
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim,
            c.intermediate_size, c.vocab_size, c.max_position_embeddings) == (36, 4096, 32, 8, 128, 12288, 100278, 4864)
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id, c.rope_theta, c.rms_norm_eps) == (100256, 100257, 100277, 500000.0, 1e-5)
    keys = set(dict(model.named_parameters()))
    assert {"model.embed_tokens.weight", "lm_head.weight", "model.norm.weight",
            "model.layers.35.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.input_layernorm.weight", "model.layers.0.post_attention_layernorm.weight"} <= keys


@pytest.mark.parametrize("preset, low, high", [(sumi_1b, 0.9e9, 1.2e9), (sumi_150m, 1.2e8, 1.8e8), (tiny, 1e4, 1e6)])
def test_presets_follow_the_shape_rules(preset, low, high):
    c = preset()
    n = sumi.Sumi.on_meta(c).num_parameters()
    assert n == num_parameters(c) and low < n < high
    assert c.num_attention_heads % c.num_key_value_heads == 0
    if preset is not tiny:
        assert c.head_dim == 128 and c.num_key_value_groups == 4 and c.intermediate_size == 3 * c.hidden_size


def test_non_embedding_parameters_by_hand():
    # 36 layers x (q 4096x4096 + k, v 4096x1024 + o 4096x4096 + 3 x 4096x12288 + 2 norms) + final norm + head
    per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 12288 + 2 * 4096
    assert num_parameters(sumi_7b(), embeddings=False) == 36 * per_layer + 4096 + 100_278 * 4096
    assert num_parameters(sumi_7b()) == 7_767_543_808


def test_flops_per_token_counts_forward_backward_and_attention():
    """flops_per_token's convention (training: forward + backward, bidirectional attention
    over the whole sequence included) against the matmul FLOPs torch counts over a real forward
    and backward of tiny(); the hand-derived count is spelled out too."""
    from torch.utils.flop_counter import FlopCounterMode

    c = tiny()  # hidden 64, 2 layers, 4/2 heads of 16, SwiGLU 192, vocab 512
    model = sumi.Sumi.initialized(c, generator=_gen(20))
    batch, seq = 2, 16
    ids = torch.randint(c.vocab_size, (batch, seq), generator=_gen(21))
    with FlopCounterMode(display=False) as counter:
        model(ids, backend="eager").sum().backward()  # eager: the score and value matmuls are plain bmm
    measured = counter.get_total_flops() / (batch * seq)
    matmul_params = 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 192) + 512 * 64  # layers + head
    attention = 2 * 4 * (2 * seq * 16 + 2 * seq * 16)  # layers x heads x (QK^T + AV), per token
    assert measured == 3 * (2 * matmul_params + attention) == 811_008  # backward = 2 x forward
    # 6N counts every non-embedding parameter, the 5 norm weights of 64 (no matmul) included.
    norm_params = (2 * 2 + 1) * 64
    assert flops_per_token(c, seq) == measured + 6 * norm_params


@pytest.mark.parametrize("bad, match", [
    (dict(hidden_size=100, num_attention_heads=3), "divisible"),
    (dict(num_attention_heads=6, num_key_value_heads=4, hidden_size=96), "multiple"),
    (dict(vocab_size=0), "vocab_size"),
    (dict(bos_token_id=600), "bos_token_id"),
    (dict(pad_token_id=-1), "pad_token_id"),
    (dict(rope_theta=0.0), "rope_theta"),
    (dict(attention_backend="xformers"), "attention_backend"),
    (dict(head_dim=15), "even"),
])
def test_invalid_configs_fail_clearly(bad, match):
    with pytest.raises(ValueError, match=match):
        tiny(**bad)


def test_a_vocab_too_small_for_the_special_ids_says_so():
    """``--set model.vocab_size=300`` on tiny (special ids 509..511): the message blames the
    vocabulary size and says both ways out."""
    with pytest.raises(ValueError) as e:
        tiny().replace(vocab_size=300)
    message = str(e.value)
    assert "vocab_size=300 is too small for the special token ids" in message
    assert "bos_token_id=509" in message and "pad_token_id=511" in message
    assert "at least 512" in message and "below vocab_size as well" in message
    assert tiny().replace(vocab_size=300, bos_token_id=0, eos_token_id=1, pad_token_id=2).vocab_size == 300


# -- attention: an independent float64 oracle --------------------------------------------------
def _oracle_attention(q, k, v, allowed):
    """Loops over batch, head and query: softmax_1(s)_j = exp(s_j) / (1 + sum_k exp(s_k)), KV head
    j serving query heads j*rep .. j*rep + rep - 1."""
    B, H, S, D = q.shape
    rep = H // k.shape[1]
    out = torch.zeros(B, H, S, D, dtype=F64)
    for b in range(B):
        for h in range(H):
            kv = h // rep
            for i in range(S):
                keys = [j for j in range(S) if allowed[b][i][j]]
                if not keys:
                    continue
                s = torch.stack([q[b, h, i].double() @ k[b, kv, j].double() / math.sqrt(D) for j in keys])
                w = torch.exp(s) / (1 + torch.exp(s).sum())
                out[b, h, i] = sum(wj * v[b, kv, j].double() for wj, j in zip(w, keys))
    return out


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("masking", ["none", "padding", "documents", "both"])
@pytest.mark.parametrize("backend", [eager_attention, sdpa_attention], ids=["eager", "sdpa"])
def test_attention_matches_the_off_by_one_oracle(backend, masking, causal):
    g = _gen(0)
    B, H, KV, S, D = 2, 4, 2, 6, 8
    q, k, v = (3 * torch.randn(B, n, S, D, generator=g) for n in (H, KV, KV))
    key_mask = torch.ones(B, S, dtype=torch.bool)
    docs = torch.zeros(B, S, dtype=torch.long)
    if masking in ("padding", "both"):
        key_mask[1, 4:] = False
    if masking in ("documents", "both"):
        docs[0, 3:] = 1
        docs[1, 2:] = 1
    allowed = [[[bool(key_mask[b, j]) and bool(docs[b, i] == docs[b, j]) and (j <= i or not causal)
                 for j in range(S)] for i in range(S)] for b in range(B)]
    got = backend(q, k, v, key_mask if masking in ("padding", "both") else None,
                  docs if masking in ("documents", "both") else None, causal=causal)
    want = _oracle_attention(q, k, v, allowed)
    valid = key_mask[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got.double()[valid], want[valid], atol=2e-6, rtol=1e-5)


def test_sink_gives_zero_output_for_a_fully_masked_row_and_attenuates():
    q = torch.zeros(1, 1, 2, 4)
    k = torch.zeros(1, 1, 2, 4)
    v = torch.ones(1, 1, 2, 4)
    # all logits 0: each of the 2 keys gets exp(0) / (1 + 2) = 1/3, so the output is 2/3 (not 1)
    for fn in (eager_attention, sdpa_attention):
        torch.testing.assert_close(fn(q, k, v), torch.full((1, 1, 2, 4), 2 / 3))
        out = fn(q, k, v, torch.zeros(1, 2, dtype=torch.bool))
        assert torch.equal(out, torch.zeros_like(out))  # only the sink: no NaN


def _masks(B, S, masking):
    key_mask = torch.ones(B, S, dtype=torch.bool)
    docs = torch.zeros(B, S, dtype=torch.long)
    if masking in ("padding", "both"):
        key_mask[1, S - 2:] = False
    if masking in ("documents", "both"):
        docs[0, S // 2:] = 1
        docs[1, 2:] = 1
        docs[1, 4:] = 2
    return (key_mask if masking in ("padding", "both") else None,
            docs if masking in ("documents", "both") else None)


def _dense_oracle(q, k, v, key_mask, docs, causal=False):
    """Vectorized float64 ``softmax_1`` (scores with a zero column appended), differentiable: the
    gradient oracle for the backends' backward passes (``causal``: key ``j`` only for query ``i >= j``)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = torch.ones(s.shape, dtype=torch.bool)
    if key_mask is not None:
        allowed &= key_mask[:, None, None, :]
    if docs is not None:
        allowed &= (docs[:, :, None] == docs[:, None, :])[:, None]
    if causal:
        allowed &= torch.arange(s.shape[-1])[None, :] <= torch.arange(s.shape[-2])[:, None]
    s = s.masked_fill(~allowed, -math.inf)
    return torch.softmax(torch.cat([s, torch.zeros(*s.shape[:-1], 1, dtype=s.dtype)], -1), -1)[..., :-1] @ v


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("masking", ["none", "padding", "documents", "both"])
def test_sdpa_gradients_match_the_oracle(masking, causal):
    """sdpa on the CPU is plain attention scaled by sigmoid(lse), with a hand-written backward
    (the kernel's lse has no gradient): its gradients against autograd through the dense float64
    oracle, and against finite differences (gradcheck), padding, documents and a row with
    every key masked included.  Causal without other masks runs the kernel's own ``is_causal``
    (forward and backward), with masks the triangle in the bias."""
    g = _gen(11)
    B, H, KV, S, D = 2, 4, 2, 7, 8
    key_mask, docs = _masks(B, S, masking)
    if key_mask is not None:
        key_mask[0] = False  # row 0: every key masked, the output is 0 and so is its gradient
    leaves = [torch.randn(B, n, S, D, generator=g, dtype=F64, requires_grad=True) for n in (H, KV, KV)]
    weights = torch.randn(B, H, S, D, generator=g, dtype=F64)
    got = sdpa_attention(*leaves, key_mask, docs, causal=causal)
    grads = torch.autograd.grad((got * weights).sum(), leaves)
    want = _dense_oracle(*leaves, key_mask, docs, causal)
    want_grads = torch.autograd.grad((want * weights).sum(), leaves)
    valid = (torch.ones(B, S, dtype=torch.bool) if key_mask is None else key_mask)[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[valid], want[valid], atol=1e-12, rtol=1e-12)
    if key_mask is not None:
        assert torch.equal(got[0], torch.zeros_like(got[0]))
    for a, b in zip(grads, want_grads):
        torch.testing.assert_close(a, b.nan_to_num(0.0), atol=1e-12, rtol=1e-12)
    assert torch.autograd.gradcheck(lambda q, k, v: sdpa_attention(q, k, v, key_mask, docs, causal), leaves)


def _emulated_flash_attn(calls):
    """A CPU stand-in for ``flash_attn.flash_attn_varlen_func``: plain softmax attention of each
    query segment ``cu_q[i]:cu_q[i+1]`` over its key segment ``cu_k[i]:cu_k[i+1]`` (GQA by head
    groups), float64 inside; it records the arguments.  ``causal`` as flash-attn documents it
    (>= 2.1): aligned to the bottom right, so with ``n_q`` queries and ``n_k`` keys query ``i``
    sees keys ``j <= i + n_k - n_q``."""

    def flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, causal):
        calls.append(dict(cu_q=cu_q.tolist(), cu_k=cu_k.tolist(), max_q=max_q, max_k=max_k, keys=k.shape[0],
                          causal=causal))
        assert cu_q.dtype == cu_k.dtype == torch.int32
        rep = q.shape[1] // k.shape[1]
        out = torch.zeros_like(q)
        for i in range(cu_q.numel() - 1):
            qs = q[cu_q[i]:cu_q[i + 1]].double().transpose(0, 1)        # [heads, n, d]
            ks = k[cu_k[i]:cu_k[i + 1]].double().transpose(0, 1).repeat_interleave(rep, 0)
            vs = v[cu_k[i]:cu_k[i + 1]].double().transpose(0, 1).repeat_interleave(rep, 0)
            assert qs.shape[1] <= max_q and ks.shape[1] <= max_k
            s = qs @ ks.transpose(1, 2) * softmax_scale
            if causal:
                n_q, n_k = qs.shape[1], ks.shape[1]
                s = s.masked_fill(torch.arange(n_k)[None, :] > torch.arange(n_q)[:, None] + (n_k - n_q), -math.inf)
            out[cu_q[i]:cu_q[i + 1]] = (torch.softmax(s, -1) @ vs).transpose(0, 1).to(q.dtype)
        return out

    return types.SimpleNamespace(flash_attn_varlen_func=flash_attn_varlen_func)


@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
@pytest.mark.parametrize("masking", ["none", "padding", "documents", "both"])
def test_flash_layout_on_an_emulated_kernel(monkeypatch, masking, causal):
    """The flash path's packing, sinks and unpacking, on the CPU: with the varlen kernel emulated
    exactly, flash_attention equals the eager reference on real query positions and writes 0 at
    padded ones.  Without masks the layout is static (one segment per sequence).  Causal: the
    sink first in each segment, so the kernel's bottom-right causal mask gives query ``i`` the
    sink and keys ``<= i`` (with the sink last it would also see key ``i + 1``)."""
    calls = []
    monkeypatch.setitem(sys.modules, "flash_attn", _emulated_flash_attn(calls))
    g = _gen(12)
    B, H, KV, S, D = 2, 4, 2, 8, 8
    q, k, v = (torch.randn(B, n, S, D, generator=g) for n in (H, KV, KV))
    key_mask, docs = _masks(B, S, masking)
    got = flash_attention(q, k, v, key_mask, docs, causal)
    want = eager_attention(q, k, v, key_mask, docs, causal)
    valid = (torch.ones(B, S, dtype=torch.bool) if key_mask is None else key_mask)[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[valid], want[valid], atol=1e-6, rtol=1e-5)
    assert torch.equal(got[~valid], torch.zeros_like(got[~valid]))
    # segments by hand: (row, document) runs of real tokens, each followed by one sink key
    runs = []
    for b in range(B):
        ids = [(int(docs[b, i]) if docs is not None else 0) for i in range(S) if key_mask is None or key_mask[b, i]]
        for i, d in enumerate(ids):
            if i == 0 or d != ids[i - 1]:
                runs.append(0)
            runs[-1] += 1
    cu_q = [sum(runs[:i]) for i in range(len(runs) + 1)]
    assert calls == [dict(cu_q=cu_q, cu_k=[c + i for i, c in enumerate(cu_q)], max_q=max(runs), max_k=max(runs) + 1,
                          keys=cu_q[-1] + len(runs), causal=causal)]


def test_model_builds_the_mask_and_rope_tables_once_per_forward(model, mask_and_rope_builds):
    """Once per forward, never per layer (the model has 2); with ``plan=`` not at all."""
    counts = mask_and_rope_builds
    ids = torch.randint(97, (2, 9), generator=_gen(13))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[1, 6:] = False
    for backend in ("eager", "sdpa"):
        counts.update(mask=0, rope=0)
        model(ids, mask, backend=backend)
        assert counts == {"mask": 1, "rope": 1}, backend
        plan = model.prepare(ids, mask, backend=backend)
        want = model(ids, mask, backend=backend)
        counts.update(mask=0, rope=0)
        for _ in range(3):
            assert torch.equal(model(ids, plan=plan), want)
        assert counts == {"mask": 0, "rope": 0}


def test_a_plan_is_checked(model):
    ids = torch.randint(97, (2, 9), generator=_gen(14))
    plan = model.prepare(ids)
    with pytest.raises(ValueError, match=r"prepared for \(2, 9\)"):
        model(ids[:, :8], plan=plan)
    with pytest.raises(ValueError, match="give the attention mask, documents, positions and backend to Sumi.prepare"):
        model(ids, torch.ones(2, 9), plan=plan)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model.prepare(ids, torch.ones(2, 8))


@pytest.mark.parametrize("return_hidden", [False, True])
def test_output_index_runs_the_head_on_the_selected_positions_only(model, return_hidden):
    ids = torch.randint(97, (2, 11), generator=_gen(15))
    mask = torch.ones(2, 11, dtype=torch.bool)
    mask[0, 8:] = False
    index = torch.tensor([[1, 2, 7, 0], [3, 4, 9, 10]])
    seen = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: seen.append(tuple(args[0].shape)))
    try:
        got = model(ids, mask, output_index=index, return_hidden=return_hidden)
        full = model(ids, mask, return_hidden=return_hidden)
    finally:
        hook.remove()
    want = full.gather(1, index.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert seen == ([] if return_hidden else [(2, 4, 64), (2, 11, 64)])


@pytest.mark.gpu
@pytest.mark.skipif(not flash_available(), reason="flash-attn with CUDA not available")
@pytest.mark.parametrize("causal", [False, True], ids=["bidirectional", "causal"])
def test_flash_backend_matches_eager_on_cuda(causal):
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H, KV, S, D = 2, 8, 2, 64, 64
    q, k, v = (torch.randn(B, n, S, D, generator=g, device="cuda", dtype=torch.bfloat16) for n in (H, KV, KV))
    key_mask = torch.ones(B, S, dtype=torch.bool, device="cuda")
    key_mask[1, 40:] = False
    docs = torch.zeros(B, S, dtype=torch.long, device="cuda")
    docs[0, 20:] = 1
    got = flash_attention(q, k, v, key_mask, docs, causal).float()
    want = eager_attention(q.float(), k.float(), v.float(), key_mask, docs, causal)
    valid = key_mask[:, None, :, None].expand_as(got)
    torch.testing.assert_close(got[valid], want[valid], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("objective", ["uniform", "ar"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_sdpa_bf16_matches_eager_fp32(device, objective):
    """The whole model in bf16 with SDPA against float32 eager, bidirectional and causal (on CUDA
    the causal mask allows the appended sink column): within bf16 rounding (2^-8 relative)
    accumulated over 2 layers (measured on the CPU: 4.4e-3 at logits up to 0.67)."""
    config = tiny().for_objective(objective)
    model = sumi.Sumi.initialized(config, generator=_gen(0)).to(device)
    ids = torch.randint(config.vocab_size, (2, 64), generator=_gen(1)).to(device)
    with torch.no_grad():
        want = model(ids, backend="eager")
        got = model.to(torch.bfloat16)(ids, backend="sdpa").float()
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)


# -- the whole model ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model():
    return sumi.Sumi.initialized(tiny(vocab_size=97), generator=_gen(1)).eval()


def test_backends_agree_on_the_model(model):
    ids = torch.randint(97, (3, 12), generator=_gen(2))
    mask = torch.ones(3, 12, dtype=torch.bool)
    mask[2, 9:] = False
    docs = torch.zeros(3, 12, dtype=torch.long)
    docs[1, 6:] = 1
    a = model(ids, mask, document_ids=docs, backend="eager")
    b = model(ids, mask, document_ids=docs, backend="sdpa")
    torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=1e-5)


def test_padding_does_not_change_real_positions(model):
    ids = torch.randint(97, (1, 8), generator=_gen(3))
    alone = model(ids)
    padded = torch.cat([ids, torch.full((1, 5), 96)], dim=1)
    mask = torch.tensor([[True] * 8 + [False] * 5])
    for backend in ("eager", "sdpa"):
        torch.testing.assert_close(model(padded, mask, backend=backend)[:, :8], alone, atol=1e-5, rtol=1e-5)


def test_documents_are_isolated_and_attention_is_bidirectional(model):
    ids = torch.randint(97, (1, 10), generator=_gen(4))
    docs = torch.tensor([[0] * 5 + [1] * 5])
    base = model(ids, document_ids=docs)
    changed = ids.clone()
    changed[0, 7] = (changed[0, 7] + 1) % 97
    other = model(changed, document_ids=docs)
    torch.testing.assert_close(other[:, :5], base[:, :5])        # doc 0 does not see doc 1
    assert not torch.allclose(other[:, 5:7], base[:, 5:7])       # earlier positions see a later token
    free = model(changed)
    assert not torch.allclose(free[:, :5], model(ids)[:, :5])    # without documents everyone sees it


def test_return_hidden_and_head(model):
    ids = torch.randint(97, (2, 5), generator=_gen(5))
    hidden = model(ids, return_hidden=True)
    assert hidden.shape == (2, 5, 64)
    torch.testing.assert_close(model.lm_head(hidden), model(ids))


def test_no_time_input_and_deterministic(model):
    ids = torch.randint(97, (2, 5), generator=_gen(6))
    assert torch.equal(model(ids), model(ids))


def test_init_weights_statistics_and_seed():
    config = tiny(vocab_size=2000)
    a = sumi.Sumi.initialized(config, generator=_gen(7))
    b = sumi.Sumi.initialized(config, generator=_gen(7))
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    w = a.model.embed_tokens.weight
    assert abs(w.std().item() - config.initializer_range) < 0.02 * config.initializer_range * 10
    assert torch.equal(a.model.norm.weight, torch.ones(64))
    state = torch.get_rng_state()
    sumi.Sumi.initialized(config, generator=_gen(8))
    assert torch.equal(state, torch.get_rng_state())


def test_rmsnorm_convention():
    norm = RMSNorm(8, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2.0, 8))
    x = torch.randn(3, 8, generator=_gen(9), dtype=torch.bfloat16)
    h = x.double()
    want = (h / torch.sqrt(h.pow(2).mean(-1, keepdim=True) + 1e-5)).float().to(torch.bfloat16) * norm.weight.to(torch.bfloat16)
    got = norm.to(torch.bfloat16)(x)
    torch.testing.assert_close(got, want)


def test_rope_scores_depend_only_on_relative_position():
    g = _gen(10)
    q, k = torch.randn(1, 1, 1, 16, generator=g), torch.randn(1, 1, 1, 16, generator=g)
    def score(i, j):
        ci, si = rope_cos_sin(torch.tensor([i]), 16, 500_000.0)
        cj, sj = rope_cos_sin(torch.tensor([j]), 16, 500_000.0)
        return float((apply_rope(q, ci, si) * apply_rope(k, cj, sj)).sum())
    assert score(3, 7) == pytest.approx(score(103, 107), rel=1e-4, abs=1e-5)
    assert score(3, 7) != pytest.approx(score(3, 8), rel=1e-3)
    # rotate-half layout: position 0 is the identity
    c0, s0 = rope_cos_sin(torch.tensor([0]), 16, 500_000.0)
    torch.testing.assert_close(apply_rope(q, c0, s0), q)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.zeros(1, 513, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.ones(1, 5))
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="backend"):
        model(torch.zeros(1, 4, dtype=torch.long), backend="xformers")
    with pytest.raises(ValueError, match="attention_backend='flash' runs on CUDA only"):
        model(torch.zeros(1, 4, dtype=torch.long), backend="flash")  # CPU inputs, wherever flash-attn is


def test_token_ids_are_checked_with_a_clear_error(model):
    ids = torch.randint(97, (2, 6), generator=_gen(30))
    with pytest.raises(ValueError, match=r"input_ids must hold integer token ids .*got torch\.float32"):
        model(ids.float())
    with pytest.raises(ValueError, match=r"torch\.int16"):
        model(ids.to(torch.int16))
    torch.testing.assert_close(model(ids.int()), model(ids), rtol=0, atol=0)  # int32 is accepted
    for bad in (97, 1000, -1):
        wrong = ids.clone()
        wrong[1, 3] = bad
        with pytest.raises(ValueError, match=rf"1 id\(s\) outside \[0, vocab_size=97\), e\.g\. {bad}:"):
            model(wrong)


def test_check_backend_says_whether_a_backend_can_run(monkeypatch):
    for name in ("eager", "sdpa"):
        assert check_backend(name, "cpu") == name and check_backend(name) == name
    with pytest.raises(ValueError, match=r"must be one of \('eager', 'sdpa', 'flash'\), got 'xformers'"):
        check_backend("xformers")
    with pytest.raises(ValueError, match=r"runs on CUDA only, not on device 'cpu'; use attention_backend='sdpa'"):
        check_backend("flash", torch.device("cpu"))
    # Without CUDA, and with CUDA but no flash-attn (both simulated, whatever this machine has).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="needs CUDA, which is not available"):
        check_backend("flash")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match=r"needs the flash-attn package.*pip install \.\[gpu\]"):
        check_backend("flash", "cuda:0")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object())
    assert check_backend("flash", "cuda") == "flash"


def test_a_torch_older_than_the_floor_is_one_clear_error():
    """pyproject's floor, 2.9.1: the suite fails on 2.6.0 and 2.8.0 (NaN from the CPU kernel with
    GQA) and 2.5.1 (aborts), and passes on 2.9.1, 2.11.0 and 2.13.0."""
    for version in ("2.9.1", "2.10.0+cu128", "2.11.0a0+git1234", "2.13.0+cpu", "3.0.0"):
        check_torch_version(version)
    for version in ("2.5.1+cu124", "2.8.0", "2.9.0", "2.9.1a0"):
        with pytest.raises(ImportError, match=rf"sumi needs torch >= 2\.9\.1, found {re.escape(version)}: .*pip install -U torch"):
            check_torch_version(version)
