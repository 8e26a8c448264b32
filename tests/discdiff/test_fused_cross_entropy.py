"""The fused, chunked cross-entropy :func:`discdiff.losses.cross_entropy_from_hidden`.

Oracle: ``torch.nn.functional.cross_entropy`` (and ``torch.logsumexp``) of the materialized logits
``hidden @ W.T`` in float64, with the excluded state's logit set to ``-inf`` for the masked
form; gradients from autograd through that oracle, and ``gradcheck`` (finite differences) for the
custom backward.  Chunk sizes that do not divide the token count or the vocabulary; bfloat16
inputs against float32 arithmetic on the same bfloat16 logits.  Memory: a dispatch mode records
every tensor forward and backward create (nothing of ``[tokens, V]``).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import discdiff
from discdiff.losses import CrossEntropyOutput, cross_entropy_from_hidden
from tests.discdiff.test_fused_loss import _HookError, _Sizes

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _case(shape, H, V, g, *, dtype=F64, exclude_id=None, scale=2.0):
    hidden = torch.randn(*shape, H, generator=g, dtype=F64).to(dtype)
    W = (scale / math.sqrt(H) * torch.randn(V, H, generator=g, dtype=F64)).to(dtype)
    targets = torch.randint(V, shape, generator=g)
    if exclude_id is not None:
        targets = torch.where(targets == exclude_id, (targets + 1) % V, targets)
    return hidden, W, targets


def _dense(logits, targets, exclude_id=None):
    """Per-token CE (the excluded state's logit at ``-inf``) and logsumexp over all V logits."""
    kept = logits if exclude_id is None else logits.index_fill(-1, torch.tensor([exclude_id]), -math.inf)
    ce = F.cross_entropy(kept.flatten(0, -2), targets.flatten(), reduction="none").view(targets.shape)
    return ce, torch.logsumexp(logits, -1)


def _oracle(hidden, W, targets, exclude_id=None, z_loss=0.0):
    """Per-token CE, logsumexp, and CE + z-loss of the dense logits ``hidden @ W.T`` (autograd)."""
    ce, lse = _dense(hidden @ W.T, targets, exclude_id)
    return ce, lse, ce + z_loss * lse.square()


CASES = [  # (shape, H, V, chunk_size, vocab_chunk_size)
    ((3, 7), 6, 13, 4, 5),        # neither size a multiple of the chunks
    ((2, 5), 4, 11, 1, 1),        # one token and one state per block
    ((2, 1, 5), 3, 17, 3, 7),     # a leading shape of rank 3
    ((4, 3), 5, 19, 100, 1000),   # one block: the single-pass forward
    ((11,), 4, 23, 4, 6),         # a flat run of tokens
]


@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("exclude", [False, True])
def test_matches_dense_cross_entropy_values_and_gradients_float64(case, exclude):
    shape, H, V, cs, vcs = CASES[case]
    g = _gen(10 * case + exclude)
    m = int(torch.randint(V, (), generator=g)) if exclude else None
    hidden, W, targets = _case(shape, H, V, g, exclude_id=m)
    hidden.requires_grad_(True)
    W.requires_grad_(True)
    out = cross_entropy_from_hidden(hidden, W, targets, exclude_id=m, z_loss=0.03, chunk_size=cs, vocab_chunk_size=vcs)
    ce, lse, per_token = _oracle(hidden, W, targets, m, 0.03)
    assert isinstance(out, CrossEntropyOutput)
    for name, got, want in (("loss", out.loss, per_token), ("cross_entropy", out.cross_entropy, ce),
                            ("logsumexp", out.logsumexp, lse)):
        assert got.shape == shape and got.dtype == F64, name
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=name)
    coef = {k: torch.randn(shape, generator=g, dtype=F64) for k in ("loss", "ce", "lse")}
    got = torch.autograd.grad((coef["loss"] * out.loss + coef["ce"] * out.cross_entropy
                               + coef["lse"] * out.logsumexp).sum(), (hidden, W))
    want = torch.autograd.grad((coef["loss"] * per_token + coef["ce"] * ce + coef["lse"] * lse).sum(), (hidden, W))
    for name, a, b in zip(("hidden", "head_weight"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"d/d {name}")


@pytest.mark.parametrize("exclude_id", [None, 3])
def test_backward_passes_gradcheck(exclude_id):
    g = _gen(7)
    hidden, W, targets = _case((2, 3), 3, 9, g, exclude_id=exclude_id)
    hidden.requires_grad_(True)
    W.requires_grad_(True)

    def f(h, w):
        out = cross_entropy_from_hidden(h, w, targets, exclude_id=exclude_id, z_loss=0.05, chunk_size=4,
                                        vocab_chunk_size=4)
        return out.loss, out.cross_entropy, out.logsumexp

    assert torch.autograd.gradcheck(f, (hidden, W))


def test_mask_reductions_and_no_z_loss():
    g = _gen(3)
    hidden, W, targets = _case((3, 6), 5, 21, g, exclude_id=20)
    hidden.requires_grad_(True)
    W.requires_grad_(True)
    mask = torch.rand(3, 6, generator=g) < 0.6
    ce, lse, _ = _oracle(hidden, W, targets, 20)
    kw = dict(exclude_id=20, chunk_size=4, vocab_chunk_size=8)
    none = cross_entropy_from_hidden(hidden, W, targets, mask=mask, **kw)
    torch.testing.assert_close(none.loss, torch.where(mask, ce, 0.0), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(none.cross_entropy, ce, rtol=1e-10, atol=1e-12)  # never reduced or masked
    total = cross_entropy_from_hidden(hidden, W, targets, mask=mask, reduction="sum", **kw)
    torch.testing.assert_close(total.loss, ce[mask].sum(), rtol=1e-10, atol=1e-12)
    mean = cross_entropy_from_hidden(hidden, W, targets, mask=mask, reduction="mean", **kw)
    torch.testing.assert_close(mean.loss, ce[mask].mean(), rtol=1e-10, atol=1e-12)
    a = torch.autograd.grad(mean.loss, (hidden, W))
    b = torch.autograd.grad(ce[mask].mean(), (hidden, W))
    for u, v in zip(a, b):
        torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-11)
    with pytest.raises((ValueError, _HookError), match="reduction"):
        cross_entropy_from_hidden(hidden, W, targets, reduction="avg")


def test_the_excluded_state_is_never_predicted_but_counts_in_the_log_normalizer():
    """``exclude_id``: the softmax skips that state, however large its logit; the logsumexp the
    z-loss squares still covers all ``V`` logits (as Sumi's z-loss over the whole head)."""
    g = _gen(5)
    V, m = 12, 4
    hidden, W, targets = _case((2, 4), 6, V, g, exclude_id=m)
    W[m] = 10 * hidden.reshape(-1, 6).mean(0)  # a large mask logit everywhere
    out = cross_entropy_from_hidden(hidden, W, targets, exclude_id=m, chunk_size=3, vocab_chunk_size=5)
    plain = cross_entropy_from_hidden(hidden, W, targets, chunk_size=3, vocab_chunk_size=5)
    logits = hidden @ W.T
    without = torch.cat([logits[..., :m], logits[..., m + 1:]], -1)
    shifted = torch.where(targets > m, targets - 1, targets)
    want = -torch.log_softmax(without, -1).gather(-1, shifted.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(out.cross_entropy, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(out.logsumexp, torch.logsumexp(logits, -1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain.logsumexp, out.logsumexp, rtol=1e-12, atol=1e-12)
    assert bool((plain.cross_entropy > out.cross_entropy).all())  # the mask took probability mass


def test_bfloat16_inputs_accumulate_in_float32():
    """bf16 hidden states and head: every output float32, equal within float32 rounding to the
    float32 cross-entropy of the bf16 logits ``h @ W.T`` (as the plain path computes them);
    gradients in bf16, close to the float32 ones."""
    g = _gen(9)
    V = 257
    hidden, W, targets = _case((3, 10), 32, V, g, dtype=torch.bfloat16, exclude_id=V - 1, scale=3.0)
    hidden.requires_grad_(True)
    W.requires_grad_(True)
    out = cross_entropy_from_hidden(hidden, W, targets, exclude_id=V - 1, z_loss=1e-3, chunk_size=8,
                                    vocab_chunk_size=100)
    for name in ("loss", "cross_entropy", "logsumexp"):
        assert getattr(out, name).dtype == torch.float32, name
    with torch.no_grad():
        ce, lse = _dense((hidden @ W.T).float(), targets, V - 1)  # the bf16 matmul, read in float32
    torch.testing.assert_close(out.cross_entropy, ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logsumexp, lse, rtol=1e-5, atol=1e-5)
    _, _, per_token = _oracle(hidden.float(), W.float(), targets, V - 1, 1e-3)
    got = torch.autograd.grad(out.loss.sum(), (hidden, W))
    want = torch.autograd.grad(per_token.sum(), (hidden, W))
    for a, b in zip(got, want):
        assert a.dtype == torch.bfloat16
        assert float((a.double() - b.double()).norm() / b.double().norm()) < 3e-2


def test_no_tensor_holds_the_logits_forward_or_backward():
    B, S, H, V, cs, vcs = 4, 16, 8, 1000, 16, 128
    g = _gen(1)
    hidden, W, targets = _case((B, S), H, V, g, dtype=torch.float32, exclude_id=V - 1)
    hidden.requires_grad_(True)
    W.requires_grad_(True)
    with _Sizes() as forward:
        out = cross_entropy_from_hidden(hidden, W, targets, exclude_id=V - 1, z_loss=1e-4, reduction="mean",
                                        chunk_size=cs, vocab_chunk_size=vcs)
    with _Sizes() as backward:
        out.loss.backward()
    made = forward.shapes + backward.shapes
    assert backward.shapes
    assert not [s for s in made if math.prod(s) > cs * vcs and s != (V, H)]


def test_empty_input_and_integer_targets_of_any_width():
    W = torch.randn(7, 3, generator=_gen(0))
    out = cross_entropy_from_hidden(torch.zeros(0, 4, 3), W, torch.zeros(0, 4, dtype=torch.long), reduction="mean")
    assert out.loss.shape == () and float(out.loss) == 0.0 and out.cross_entropy.shape == (0, 4)
    hidden, W, targets = _case((2, 3), 3, 7, _gen(1))
    a = cross_entropy_from_hidden(hidden, W, targets)
    b = cross_entropy_from_hidden(hidden, W, targets.int())
    assert torch.equal(a.cross_entropy, b.cross_entropy)


def test_exported_from_the_package():
    assert discdiff.cross_entropy_from_hidden is cross_entropy_from_hidden
    assert "cross_entropy_from_hidden" in discdiff.losses.__all__ and "CrossEntropyOutput" in discdiff.losses.__all__


@pytest.mark.parametrize(("case", "exc", "match"), [
    ("target_excluded", ValueError, r"targets contain exclude_id=4"),
    ("target_too_large", ValueError, r"targets holds ids in \[\d+, 5\], outside \[0, 5\)"),
    ("targets_float", TypeError, r"targets"),
    ("targets_list", TypeError, r"targets"),
    ("exclude_out_of_range", ValueError, r"exclude_id"),
    ("exclude_float", TypeError, r"exclude_id"),
    ("hidden_positions", ValueError, r"hidden"),
    ("head_1d", ValueError, r"head_weight"),
    ("dtype_mismatch", TypeError, r"same dtype"),
    ("z_loss_negative", ValueError, r"z_loss"),
    ("chunk_zero", ValueError, r"chunk_size"),
    ("vocab_chunk_bool", TypeError, r"vocab_chunk_size"),
])
def test_rejects_bad_input(case, exc, match):
    hidden, W = torch.zeros(2, 3, 6, dtype=F64), torch.zeros(5, 6, dtype=F64)
    targets = torch.tensor([[0, 1, 2], [3, 0, 1]])
    kw = dict(exclude_id=4)
    if case == "target_excluded":
        targets = targets.clone(); targets[1, 2] = 4
    elif case == "target_too_large":
        targets = targets.clone(); targets[0, 0] = 5
    elif case == "targets_float":
        targets = targets.double()
    elif case == "targets_list":
        targets = [[0, 1, 2], [3, 0, 1]]
    elif case == "exclude_out_of_range":
        kw["exclude_id"] = 5
    elif case == "exclude_float":
        kw["exclude_id"] = 4.0
    elif case == "hidden_positions":
        hidden = torch.zeros(2, 4, 6, dtype=F64)
    elif case == "head_1d":
        W = torch.zeros(30, dtype=F64)
    elif case == "dtype_mismatch":
        W = W.float()
    elif case == "z_loss_negative":
        kw["z_loss"] = -1e-5
    elif case == "chunk_zero":
        kw["chunk_size"] = 0
    elif case == "vocab_chunk_bool":
        kw["vocab_chunk_size"] = True
    with pytest.raises((exc, _HookError), match=match):
        cross_entropy_from_hidden(hidden, W, targets, **kw)
