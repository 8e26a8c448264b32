"""The fused, memory-light GIDD loss :func:`discdiff.losses.gidd_from_hidden`.

Oracle: the plain :func:`discdiff.losses.gidd` on the materialized logits ``hidden @ W.T``, and
autograd through it, in float64 (agreement to ~1e-10), in float32 (float32 tolerance) and in
bfloat16 (bf16 tolerance); the z-loss against ``torch.logsumexp`` written out; ``gradcheck``
(finite differences) for the custom backward.  Memory is checked without timing anything: a
dispatch mode records every tensor that forward and backward create, and a saved-tensors hook
every tensor the graph keeps.  All randomness goes through seeded ``torch.Generator`` objects.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from discdiff.kernels import GIDD, Hybrid, Masked, Prior, Uniform
from discdiff.losses import FusedLossOutput, LossOutput, gidd, gidd_from_hidden

F64 = torch.float64
FAMILIES = ("uniform", "masked", "hybrid", "gidd", "prior", "prior_sparse", "prior_mask")

try:  # under pytest's jaxtyping hook, a shape/dtype mismatch may be caught before the library's own check
    from jaxtyping import TypeCheckError as _HookError
except ImportError:  # pragma: no cover
    _HookError = TypeError


def make_gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_kernel(family: str, V: int, g: torch.Generator):
    m = int(torch.randint(V, (), generator=g))
    u = lambda lo, hi: lo + (hi - lo) * float(torch.rand((), generator=g, dtype=F64))  # noqa: E731
    if family == "uniform":
        return Uniform(V)
    if family == "masked":
        return Masked(V, m)
    if family == "hybrid":
        return Hybrid(V, m, shift=u(-3.0, 3.0), scale=u(0.0, 1.0))
    if family == "gidd":
        return GIDD(V, m, p_uniform=u(0.05, 0.95), gamma=u(0.3, 1.8))
    probs = torch.softmax(1.5 * torch.randn(V, generator=g, dtype=F64), -1)
    if family == "prior":
        return Prior(probs)
    if family == "prior_sparse":  # states that noise never reaches: c_j = 0 off the support
        probs = torch.where(torch.rand(V, generator=g, dtype=F64) < 0.5, probs, torch.zeros_like(probs))
        probs[m] += 0.1
        return Prior(probs / probs.sum())
    if family == "prior_mask":
        return Prior(probs, mask_id=m)
    raise AssertionError(family)


def make_case(kernel, shape, H, g, *, dtype=F64, lam_kind="token", scale=1.5):
    """Random ``hidden [*shape, H]``, ``W [V, H]``, clean ``x``, ``lam`` (clamp edges included) and
    ``z ~ q_lam(.|x)`` (plus some ``z = x`` and, with a mask, ``z = m``)."""
    V, m = kernel.vocab_size, kernel.mask_id
    x = torch.randint(V, shape, generator=g)
    if m is not None:
        x = torch.where(x == m, (x + 1) % V, x)
    if lam_kind == "token":
        lam = 18 * torch.rand(shape, generator=g, dtype=F64) - 9
        flat = lam.view(-1)
        flat[0], flat[-1] = -9.0, 9.0
    else:  # one lambda per sequence: [batch] or [batch, 1]
        lam = 18 * torch.rand(shape[0], generator=g, dtype=F64) - 9
        lam[0] = -9.0
        if lam.numel() > 1:
            lam[-1] = 9.0
        if lam_kind == "seq_2d":
            lam = lam[:, None]
    lam_tok = lam if lam_kind == "token" else (lam if lam.dim() == len(shape) else lam[:, None]).expand(shape)
    z = kernel.corrupt(x, lam_tok, g)
    z = torch.where(torch.rand(shape, generator=g) < 0.2, x, z)
    if m is not None and kernel.pi_at(torch.zeros(()), torch.tensor(m)) > 0:
        z = torch.where(torch.rand(shape, generator=g) < 0.2, torch.full_like(z, m), z)
    hidden = torch.randn(*shape, H, generator=g, dtype=F64).to(dtype)
    W = (scale / math.sqrt(H) * torch.randn(V, H, generator=g, dtype=F64)).to(dtype)
    return hidden, W, x, z, lam.to(dtype if dtype != torch.bfloat16 else torch.float32)


def parts(out: LossOutput) -> dict[str, torch.Tensor]:
    return {"loss": out.loss, "kl": out.kl, "is_div": out.is_div, "weight": out.weight}


def plain(kernel, hidden, W, x, z, lam, **kw):
    return gidd(kernel, hidden @ W.T, x, z, lam, **kw)


def weighted_sum(out, coef: dict[str, torch.Tensor], lse: torch.Tensor | None = None) -> torch.Tensor:
    """A scalar that reads every differentiable output with its own random per-token weights."""
    total = (coef["loss"] * out.loss).sum() + (coef["kl"] * out.kl).sum() + (coef["is_div"] * out.is_div).sum()
    if lse is not None:
        total = total + (coef["lse"] * lse).sum()
    return total


def grads(scalar, hidden, W):
    return torch.autograd.grad(scalar, (hidden, W))


# -- 1. values and gradients against plain gidd, float64 ---------------------------------------------
CASES = [  # (shape, H, chunk_size, vocab_chunk_size, lambda kind)
    ((3, 7), 6, 4, 5, "token"),       # odd sizes, neither a multiple of the chunks
    ((2, 5), 4, 1, 1, "seq"),          # one token and one state per block
    ((2, 1, 5), 3, 3, 7, "seq_2d"),    # a leading shape of rank 3, lambda [batch, 1]
    ((4, 3), 5, 100, 1000, "token"),   # one block: the single-pass forward
    ((11,), 4, 4, 6, "seq"),           # a flat run of tokens with a scalar-per-"sequence" lambda
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_gidd_values_and_gradients_float64(family, case):
    shape, H, cs, vcs, lam_kind = CASES[case]
    g = make_gen(100 * case + FAMILIES.index(family))
    V = 13 + 4 * case  # 13, 17, 21, 25, 29
    kernel = make_kernel(family, V, g)
    hidden, W, x, z, lam = make_case(kernel, shape, H, g, lam_kind=lam_kind)
    if lam_kind == "seq" and len(shape) == 1:
        lam = lam[0]  # a 0-d lambda broadcasts to every token
    hidden.requires_grad_(True)
    W.requires_grad_(True)
    out = gidd_from_hidden(kernel, hidden, W, x, z, lam, chunk_size=cs, vocab_chunk_size=vcs)
    ref = plain(kernel, hidden, W, x, z, lam)
    assert isinstance(out, FusedLossOutput) and isinstance(out, LossOutput)
    where = f"{kernel!r}, case {case}"
    for name, value in parts(out).items():
        assert value.shape == shape and value.dtype == F64, name
        torch.testing.assert_close(value, parts(ref)[name], rtol=1e-10, atol=1e-12, msg=f"{name}: {where}")
    logits = hidden @ W.T
    torch.testing.assert_close(out.logsumexp, torch.logsumexp(logits, -1), rtol=1e-12, atol=1e-12)
    coef = {k: torch.randn(shape, generator=g, dtype=F64) for k in ("loss", "kl", "is_div", "lse")}
    got = grads(weighted_sum(out, coef, out.logsumexp), hidden, W)
    ref = plain(kernel, hidden, W, x, z, lam)
    want = grads(weighted_sum(ref, coef, torch.logsumexp(hidden @ W.T, -1)), hidden, W)
    for name, a, b in zip(("hidden", "head_weight"), got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11, msg=f"d/d {name}: {where}")


@pytest.mark.parametrize("family", ["uniform", "masked", "gidd", "prior_mask"])
def test_backward_passes_gradcheck(family):
    """The custom backward against finite differences (float64), including the z-loss path."""
    g = make_gen(7)
    kernel = make_kernel(family, 9, g)
    hidden, W, x, z, lam = make_case(kernel, (2, 3), 3, g)
    hidden.requires_grad_(True)
    W.requires_grad_(True)

    def f(h, w):
        out = gidd_from_hidden(kernel, h, w, x, z, lam, 0.7, z_loss=0.05, chunk_size=4, vocab_chunk_size=4)
        return out.loss, out.kl, out.is_div

    assert torch.autograd.gradcheck(f, (hidden, W))


# -- 2. float32 and bfloat16 ------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["uniform", "masked", "hybrid", "gidd", "prior_sparse"])
def test_float32_agrees_with_gidd_to_float32_tolerance(family):
    g = make_gen(31)
    V = 301
    kernel = make_kernel(family, V, g)
    hidden, W, x, z, lam = make_case(kernel, (4, 9), 16, g, scale=4.0)
    h32, w32, lam32 = (t.float().requires_grad_(t is not lam) for t in (hidden, W, lam))
    out = gidd_from_hidden(kernel, h32, w32, x, z, lam32, z_loss=1e-3, chunk_size=5, vocab_chunk_size=64)
    h64, w64 = hidden.clone().requires_grad_(True), W.clone().requires_grad_(True)
    ref = gidd_from_hidden(kernel, h64, w64, x, z, lam32.double(), z_loss=1e-3, chunk_size=5, vocab_chunk_size=64)
    ref_plain = plain(kernel, h64, w64, x, z, lam32.double())
    torch.testing.assert_close(ref.kl, ref_plain.kl, rtol=1e-10, atol=1e-12)  # the float64 oracle itself
    for name, value in parts(out).items():
        assert value.dtype == torch.float32
        scale = parts(ref)[name].abs().max().item()
        torch.testing.assert_close(value.double(), parts(ref)[name], rtol=2e-4, atol=2e-5 * max(scale, 1.0), msg=name)
    # float32 plain gidd is no closer to float64 than the fused form (up to a small slack)
    p32 = plain(kernel, h32.detach(), w32.detach(), x, z, lam32)
    for name in ("kl", "loss"):
        fused_err = (parts(out)[name].double() - parts(ref)[name]).abs().max().item()
        plain_err = (parts(p32)[name].double() - parts(ref)[name]).abs().max().item()
        assert fused_err <= 4 * plain_err + 1e-6, (name, fused_err, plain_err)
    coef = torch.rand(4, 9, generator=g, dtype=F64)
    got = grads((out.loss * coef.float()).sum(), h32, w32)
    want = grads((ref.loss * coef).sum(), h64, w64)
    for a, b in zip(got, want):
        assert (a.double() - b).abs().max() <= 1e-4 * b.abs().max() + 1e-7


def test_bfloat16_inputs_match_bfloat16_logits():
    """bf16 hidden states and head: the same as gidd on the bf16 logits ``h @ W.T`` within bf16
    tolerance; every output in float32; gradients in the inputs' dtype."""
    g = make_gen(5)
    V = 257
    kernel = make_kernel("hybrid", V, g)
    hidden, W, x, z, lam = make_case(kernel, (3, 10), 32, g, dtype=torch.bfloat16, scale=3.0)
    hidden.requires_grad_(True)
    W.requires_grad_(True)
    out = gidd_from_hidden(kernel, hidden, W, x, z, lam, z_loss=1e-4, chunk_size=8, vocab_chunk_size=100)
    logits = hidden @ W.T
    ref = gidd(kernel, logits, x, z, lam)
    lse = torch.logsumexp(logits.float(), -1)
    for name, value in parts(out).items():
        assert value.dtype == torch.float32, name
    torch.testing.assert_close(out.loss, ref.loss + 1e-4 * lse.square(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.kl, ref.kl, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.weight, ref.weight, rtol=0, atol=0)
    torch.testing.assert_close(out.logsumexp, lse, rtol=1e-2, atol=1e-2)
    got = grads(out.loss.sum(), hidden, W)
    want = grads((ref.loss + 1e-4 * lse.square()).sum(), hidden, W)
    for a, b in zip(got, want):
        assert a.dtype == torch.bfloat16
        rel = (a.double() - b.double()).norm() / b.double().norm()
        assert rel < 3e-2, rel.item()
    # bf16 inputs agree with float32 inputs holding the same values (float32 accumulation)
    h32, w32 = hidden.detach().float().requires_grad_(True), W.detach().float().requires_grad_(True)
    out32 = gidd_from_hidden(kernel, h32, w32, x, z, lam, z_loss=1e-4, chunk_size=8, vocab_chunk_size=100)
    torch.testing.assert_close(out.kl, out32.kl, rtol=2e-2, atol=2e-2)


# -- 3. the surrogate's knobs: beta_is, max_weight, mask, reductions, z-loss -----------------------------
@pytest.mark.parametrize("family", ["uniform", "hybrid", "prior_mask"])
def test_beta_is_max_weight_mask_and_reductions(family):
    g = make_gen(11)
    kernel = make_kernel(family, 19, g)
    hidden, W, x, z, lam = make_case(kernel, (3, 6), 5, g)
    hidden.requires_grad_(True)
    W.requires_grad_(True)
    mask = torch.rand(3, 6, generator=g) < 0.6
    kw = dict(chunk_size=4, vocab_chunk_size=7)
    for beta in (0.0, 1.0):
        for clip in (None, 0.5):
            for reduction in ("none", "sum", "mean"):
                for sel in (None, mask):
                    args = dict(reduction=reduction, mask=sel, max_weight=clip)
                    out = gidd_from_hidden(kernel, hidden, W, x, z, lam, beta, **args, **kw)
                    ref = plain(kernel, hidden, W, x, z, lam, beta_is=beta, **args)
                    torch.testing.assert_close(out.loss, ref.loss, rtol=1e-10, atol=1e-12)
                    if reduction != "none":
                        assert out.loss.shape == ()
                        a, b = grads(out.loss, hidden, W), grads(ref.loss, hidden, W)
                        for u, v in zip(a, b):
                            torch.testing.assert_close(u, v, rtol=1e-9, atol=1e-11)
    with pytest.raises((ValueError, _HookError), match="reduction"):
        gidd_from_hidden(kernel, hidden, W, x, z, lam, reduction="avg")


def test_z_loss_matches_a_direct_computation():
    """``loss = surrogate + z_loss * logsumexp(logits)^2`` per token, over ALL logits (the mask
    logit included), masked and reduced like the rest; its gradient ``2 c lse softmax(logits)``."""
    g = make_gen(3)
    for kernel in (Uniform(23), Hybrid(23, 4, shift=0.5)):
        hidden, W, x, z, lam = make_case(kernel, (2, 5), 4, g)
        hidden.requires_grad_(True)
        W.requires_grad_(True)
        mask = torch.rand(2, 5, generator=g) < 0.7
        c = 0.01
        logits = hidden @ W.T
        lse = torch.logsumexp(logits, -1)
        base = gidd(kernel, logits, x, z, lam).loss
        out = gidd_from_hidden(kernel, hidden, W, x, z, lam, z_loss=c, chunk_size=3, vocab_chunk_size=5)
        torch.testing.assert_close(out.loss, base + c * lse.square(), rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out.logsumexp, lse, rtol=1e-12, atol=1e-12)
        summed = gidd_from_hidden(kernel, hidden, W, x, z, lam, z_loss=c, reduction="sum", mask=mask)
        torch.testing.assert_close(summed.loss, ((base + c * lse.square()) * mask).sum(), rtol=1e-10, atol=1e-12)
        no_z = gidd_from_hidden(kernel, hidden, W, x, z, lam, chunk_size=3, vocab_chunk_size=5)
        torch.testing.assert_close(no_z.logsumexp, lse, rtol=1e-12, atol=1e-12)  # reported either way
        (d_with,) = torch.autograd.grad(out.loss.sum(), hidden)
        (d_without,) = torch.autograd.grad(no_z.loss.sum(), hidden)
        softmax = torch.softmax(logits.detach(), -1)
        torch.testing.assert_close(d_with - d_without, (2 * c * lse.detach()[..., None] * softmax) @ W.detach(),
                                   rtol=1e-9, atol=1e-12)


def test_full_sumi_vocabulary_float32():
    """V = 100,278 (Sumi), float32, lambda at both clamp edges: the fused loss against plain
    gidd in float64 on the same float32 logits."""
    V, H = 100_278, 16
    g = make_gen(42)
    kernel = Uniform(V)
    x = torch.randint(V, (2, 3), generator=g)
    z = torch.where(torch.rand(2, 3, generator=g) < 0.5, x, torch.randint(V, (2, 3), generator=g))
    lam = torch.tensor([[-9.0, 0.0, 9.0], [9.0, -9.0, -3.0]])
    hidden = torch.randn(2, 3, H, generator=g)
    W = 0.5 * torch.randn(V, H, generator=g)
    hidden[0, 1] = 6 * W[x[0, 1]]  # a confident, correct position
    out = gidd_from_hidden(kernel, hidden, W, x, z, lam, z_loss=1e-5, chunk_size=4, vocab_chunk_size=8192)
    logits = (hidden @ W.T).double()
    ref = gidd(kernel, logits, x, z, lam.double())
    for name in ("kl", "is_div", "weight"):
        torch.testing.assert_close(parts(out)[name].double(), parts(ref)[name], rtol=2e-4, atol=1e-7, msg=name)
    torch.testing.assert_close(out.loss.double(), ref.loss + 1e-5 * torch.logsumexp(logits, -1) ** 2,
                               rtol=2e-4, atol=1e-7)


def test_empty_batch_and_no_grad():
    kernel = Uniform(7)
    hidden, W = torch.zeros(0, 4, 3), torch.randn(7, 3, generator=make_gen(0))
    x = z = torch.zeros(0, 4, dtype=torch.long)
    out = gidd_from_hidden(kernel, hidden, W, x, z, torch.zeros(0), reduction="mean")
    assert out.loss.shape == () and float(out.loss) == 0.0 and out.kl.shape == (0, 4)
    g = make_gen(1)
    hidden, W, x, z, lam = make_case(kernel, (2, 3), 3, g)
    W.requires_grad_(True)
    with torch.no_grad():
        out = gidd_from_hidden(kernel, hidden, W, x, z, lam)
    assert not out.loss.requires_grad
    # only the head needs a gradient: hidden gets none, and the head's equals the plain one
    out = gidd_from_hidden(kernel, hidden, W, x, z, lam, chunk_size=2, vocab_chunk_size=3)
    (gw,) = torch.autograd.grad(out.loss.sum(), W)
    (ref,) = torch.autograd.grad(plain(kernel, hidden, W, x, z, lam).loss.sum(), W)
    torch.testing.assert_close(gw, ref, rtol=1e-10, atol=1e-12)


# -- 4. memory: nothing of size [tokens, V], counted without timing anything -------------------------
class _Sizes(TorchDispatchMode):
    """Records the shape of every tensor an operator returns."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize("family", ["uniform", "hybrid", "prior"])
def test_no_tensor_holds_the_logits_forward_or_backward(family):
    B, S, H, V, cs, vcs = 4, 16, 8, 1000, 16, 128  # 64 tokens; a block is 16 x 128 = 2048 numbers
    g = make_gen(9)
    kernel = make_kernel(family, V, g)
    hidden, W, x, z, lam = make_case(kernel, (B, S), H, g, dtype=torch.float32)
    hidden.requires_grad_(True)
    W.requires_grad_(True)
    saved: list[tuple[int, ...]] = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    block = cs * vcs
    with _Sizes() as sizes, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = gidd_from_hidden(kernel, hidden, W, x, z, lam, z_loss=1e-4, reduction="mean",
                               chunk_size=cs, vocab_chunk_size=vcs)
    with _Sizes() as backward_sizes:
        out.loss.backward()
    made = sizes.shapes + backward_sizes.shapes
    assert len(backward_sizes.shapes) > 0  # the mode sees the backward pass
    big = [s for s in made if math.prod(s) > block and s != (V, H)]  # (V, H): the head's gradient
    assert not big, big
    assert max(math.prod(s) for s in made if s != (V, H)) > block // 4  # blocks really were that large
    # the graph keeps the inputs and a few numbers per token, nothing with a vocabulary axis
    assert (V, H) in saved and (B * S, H) in saved
    assert all(s == (V, H) or (V not in s and math.prod(s) <= B * S * H) for s in saved), saved
    # the same probe on the plain path does see [tokens, V] tensors (the check can fail)
    with _Sizes() as plain_sizes:
        plain(kernel, hidden, W, x, z, lam).loss.mean().backward()
    assert max(math.prod(s) for s in plain_sizes.shapes) >= B * S * V


# -- 5. bad input ---------------------------------------------------------------------------------------
def _bad_inputs():
    kernel = Masked(5, 4)
    x = torch.tensor([[0, 1, 2], [3, 0, 1]])
    z = torch.tensor([[4, 1, 4], [3, 4, 1]])
    hidden = torch.zeros(2, 3, 6, dtype=F64)
    W = torch.zeros(5, 6, dtype=F64)
    return kernel, hidden, W, x, z, torch.zeros(2, dtype=F64)


@pytest.mark.parametrize(
    ("case", "exc", "match"),
    [
        ("hidden_positions", ValueError, r"hidden"),
        ("hidden_size", ValueError, r"hidden"),
        ("hidden_no_hidden_dim", ValueError, r"hidden"),
        ("head_vocab", ValueError, r"head_weight"),
        ("head_1d", ValueError, r"head_weight"),
        ("hidden_int", TypeError, r"hidden"),
        ("head_int", TypeError, r"head_weight"),
        ("dtype_mismatch", TypeError, r"same dtype"),
        ("x_is_mask", ValueError, r"x contains the mask id"),
        ("z_too_large", ValueError, r"\bz\b"),
        ("lam_inf", ValueError, r"lam.*finite"),
        ("lam_shape", ValueError, r"lam"),
        ("max_weight_zero", ValueError, r"max_weight"),
        ("z_loss_negative", ValueError, r"z_loss"),
        ("z_loss_nan", ValueError, r"z_loss"),
        ("chunk_zero", ValueError, r"chunk_size"),
        ("chunk_float", TypeError, r"chunk_size"),
        ("vocab_chunk_bool", TypeError, r"vocab_chunk_size"),
    ],
)
def test_rejects_bad_input(case, exc, match):
    kernel, hidden, W, x, z, lam = _bad_inputs()
    kw = {}
    if case == "hidden_positions":
        hidden = torch.zeros(2, 4, 6, dtype=F64)
    elif case == "hidden_size":
        hidden = torch.zeros(2, 3, 5, dtype=F64)
    elif case == "hidden_no_hidden_dim":
        hidden = torch.zeros(2, 3, dtype=F64)
    elif case == "head_vocab":
        W = torch.zeros(6, 6, dtype=F64)
    elif case == "head_1d":
        W = torch.zeros(30, dtype=F64)
    elif case == "hidden_int":
        hidden = torch.zeros(2, 3, 6, dtype=torch.long)
    elif case == "head_int":
        W = torch.zeros(5, 6, dtype=torch.long)
    elif case == "dtype_mismatch":
        W = W.float()
    elif case == "x_is_mask":
        x = x.clone(); x[0, 0] = 4
    elif case == "z_too_large":
        z = z.clone(); z[0, 0] = 5
    elif case == "lam_inf":
        lam = torch.tensor([math.inf, 0.0], dtype=F64)
    elif case == "lam_shape":
        lam = torch.zeros(4, dtype=F64)
    elif case == "max_weight_zero":
        kw["max_weight"] = 0.0
    elif case == "z_loss_negative":
        kw["z_loss"] = -1e-5
    elif case == "z_loss_nan":
        kw["z_loss"] = math.nan
    elif case == "chunk_zero":
        kw["chunk_size"] = 0
    elif case == "chunk_float":
        kw["chunk_size"] = 16.0
    elif case == "vocab_chunk_bool":
        kw["vocab_chunk_size"] = True
    with pytest.raises((exc, _HookError), match=match):
        gidd_from_hidden(kernel, hidden, W, x, z, lam, **kw)
