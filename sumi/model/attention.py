"""Attention with the off-by-one ("sink") softmax, bidirectional or causal, in three backends.

``softmax_1(s)_j = exp(s_j) / (1 + sum_k exp(s_k))`` (Sumi, arXiv 2606.19005; "attention is off
by one"; docs/math.md, "Sumi recipe facts"): exactly an extra key whose logit is always 0 and
whose value is 0.  Every query row has one sink, so a row whose keys are all masked outputs 0
instead of NaN.  With ``lse = log sum_k exp(s_k)`` over a row's allowed keys the same weights are

    softmax_1(s)_j = softmax(s)_j * sigmoid(lse),

since ``sum_k exp(s_k) / (1 + sum_k exp(s_k)) = sigmoid(lse)``: plain attention scaled per query
row, no extra key.

- ``eager``: the reference, written plainly: float32 scores, a zero logit column, softmax, drop.
- ``sdpa``: on the CPU, torch's flash-attention kernel for the CPU
  (``aten._scaled_dot_product_flash_attention_for_cpu``, which returns ``lse``) scaled by
  ``sigmoid(lse)``, with a backward that is exact for the scaled output (see
  :class:`_ScaledBySigmoidLse`); elsewhere ``torch.nn.functional.scaled_dot_product_attention``
  with one all-zero key and value appended per sequence (``q . 0 = 0`` is the sink's logit; its
  value adds nothing).  Both forms were measured on the CPU (``benchmarks/attention.py``): the
  scaled form is the faster one there; CUDA keeps the appended key (not measured on a GPU yet).
- ``flash``: flash-attn's varlen kernel (CUDA, fp16/bf16) with the same zero key/value appended
  to every segment; padding and packed documents become separate segments.

Each backend is an :class:`AttentionBackend`: ``prepare`` builds what masking needs once per
forward pass (a boolean or additive mask, or flash's segment layout), ``attend`` runs one layer
with it, so no layer rebuilds a mask and the flash layout costs no host sync per layer.  The
functions :func:`eager_attention`, :func:`sdpa_attention` and :func:`flash_attention` do both for
one call.

:func:`check_backend` says up front whether a backend can run on a device (``flash`` needs
CUDA and the flash-attn package): call it where a backend is chosen, before any work.

Masks: ``key_mask`` (bool ``[batch, seq]``, True = real token) and ``document_ids`` (``[batch, seq]``:
a query sees only keys of its own document).  Outputs at padded query positions are not
meaningful and differ between backends (``flash`` writes 0 there).

Causal attention (``causal=True``; the ``"ar"`` family, docs/training.md, "Families"): query ``i``
also sees only keys ``j <= i``, and always the sink, so a row with every key masked still
outputs 0.  The backends build it once per forward in ``prepare``:

- ``eager``: the lower-triangular mask AND the others;
- ``sdpa``: on the CPU, with nothing else masked, the CPU kernel's own ``is_causal`` (forward and
  backward; the ``sigmoid(lse)`` scaling holds for any set of allowed keys), else the triangle
  enters the additive bias; elsewhere a boolean ``[1 or batch, 1, seq, seq + 1]`` mask whose
  last column (the appended sink) is allowed for every query;
- ``flash``: flash-attn's causal mask is aligned to the bottom right when a segment has more
  keys than queries, so the sink goes FIRST in each causal segment: query ``i`` then sees the
  sink and the keys of tokens ``<= i``.

A decoding step with a KV cache (:class:`sumi.model.KVCache`) has queries that are the last
``n`` of its keys: :func:`cached_mask` builds its mask (eager's or sdpa's form; ``flash`` runs
such steps through ``sdpa``, which computes the same attention).
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

MIN_TORCH = (2, 9, 1)


def check_torch_version(version: str = torch.__version__) -> None:
    """Refuse a torch older than :data:`MIN_TORCH` (pyproject's floor) with one clear error.

    Found by running the test suite on older wheels: before 2.9 torch's CPU flash-attention
    kernel, which the sdpa backend calls on the CPU, returns NaN for grouped-query attention
    (2.6.0, 2.8.0) or aborts in its backward (2.5.1); and FSDP2's ``MixedPrecisionPolicy`` is
    public only from 2.6.  The whole suite passes on 2.9.1, 2.11.0 and 2.13.0, the model,
    attention, checkpoint and objective tests on 2.10.0."""
    parts = [int(p) for p in version.split("+")[0].split(".")[:3] if p.isdigit()]
    if tuple(parts) < MIN_TORCH:
        raise ImportError(f"sumi needs torch >= {'.'.join(map(str, MIN_TORCH))}, found {version}: older CPU "
                          "attention kernels return NaN for grouped-query attention (pip install -U torch)")


check_torch_version()


def flash_available() -> bool:
    """flash-attn importable and a CUDA device present (checked at run time, never at import)."""
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def check_backend(name: str, device: str | torch.device | None = None) -> str:
    """``name`` if that attention backend can run on ``device``, else a ``ValueError`` that says
    why and what to use instead (one line, for a command line to print).

    ``"eager"`` and ``"sdpa"`` run anywhere; ``"flash"`` needs the flash-attn package and a CUDA
    ``device`` (``None``: whether CUDA is available at all).  Nothing is imported or allocated.

    Args:
        name: the backend (``ModelConfig.attention_backend``, or a ``backend=`` override).
        device: where the model runs (``"cpu"``, ``"cuda:0"``, a ``torch.device``), or ``None``.
    """
    if name not in BACKENDS:
        raise ValueError(f"attention_backend must be one of {tuple(BACKENDS)}, got {name!r}")
    if name != "flash":
        return name
    fallback = "use attention_backend='sdpa' instead"
    if device is not None and torch.device(device).type != "cuda":
        raise ValueError(f"attention_backend='flash' runs on CUDA only, not on device {str(device)!r}; {fallback}")
    if not torch.cuda.is_available():
        raise ValueError(f"attention_backend='flash' needs CUDA, which is not available here; {fallback}")
    if importlib.util.find_spec("flash_attn") is None:
        raise ValueError("attention_backend='flash' needs the flash-attn package, which is not installed "
                         f"(pip install .[gpu]); {fallback}")
    return name


def allowed_keys(key_mask: Tensor | None, document_ids: Tensor | None) -> Tensor | None:
    """Bool ``[batch, 1, 1, seq]`` (padding only) or ``[batch, 1, seq, seq]`` (documents): which
    keys each query may attend to, broadcastable over heads and queries (None: all)."""
    allowed = None
    if key_mask is not None:
        allowed = key_mask.bool()[:, None, None, :]
    if document_ids is not None:
        same = (document_ids[:, :, None] == document_ids[:, None, :]).unsqueeze(1)
        allowed = same if allowed is None else allowed & same
    return allowed


def causal_allowed(allowed: Tensor | None, queries: int, keys: int, device: torch.device) -> Tensor:
    """``allowed`` (a mask of :func:`allowed_keys`; ``None``: all keys) AND causality, as a bool
    ``[batch or 1, 1, queries, keys]``.

    The queries are the last ``queries`` of the ``keys`` positions (all of them in a forward
    pass; the new tokens of a cached decoding step): query ``i`` sits at key slot
    ``keys - queries + i`` and sees the keys ``j <= keys - queries + i``."""
    causal = torch.ones(queries, keys, dtype=torch.bool, device=device).tril(keys - queries)
    return causal[None, None] if allowed is None else allowed & causal


# -- eager: the reference ----------------------------------------------------------------------
def eager_mask(key_mask: Tensor | None, document_ids: Tensor | None, batch: int, seq: int,
               device: torch.device, causal: bool = False) -> Tensor | None:
    """The eager backend's mask: :func:`allowed_keys`, and with ``causal`` the lower triangle too
    (:func:`causal_allowed`; ``batch``: unused)."""
    allowed = allowed_keys(key_mask, document_ids)
    return causal_allowed(allowed, seq, seq, device) if causal else allowed


def eager_attend(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None) -> Tensor:
    """``softmax_1`` attention with the mask of :func:`eager_mask`, in float32: a zero logit column
    (the sink) before the softmax, dropped after, so a row with every key masked gets all-zero
    weights.  (The ``sigmoid(lse)`` form measured slower here on the CPU: ``benchmarks/attention.py``.)"""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1).float()
    v = v.repeat_interleave(rep, dim=1).float()
    scores = q.float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -math.inf)
    sink = torch.zeros(*scores.shape[:-1], 1, dtype=scores.dtype, device=scores.device)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return (probs @ v).to(q.dtype)


def eager_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None,
                    document_ids: Tensor | None = None, causal: bool = False) -> Tensor:
    """``q``: ``[batch, heads, seq, d]``; ``k``, ``v``: ``[batch, kv_heads, seq, d]``; KV head ``j``
    serves query heads ``j*rep .. j*rep + rep - 1``.  Softmax in float32; ``causal``: query ``i``
    sees keys ``j <= i`` only."""
    return eager_attend(q, k, v, eager_mask(key_mask, document_ids, q.shape[0], q.shape[2], q.device, causal))


# -- sdpa ----------------------------------------------------------------------------------------
_flash_cpu = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
_flash_cpu_backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward


class _ScaledBySigmoidLse(torch.autograd.Function):
    """``out = o * sigmoid(lse)`` with ``o, lse`` from torch's CPU flash-attention kernel.

    The kernel's ``lse`` output has no gradient, so autograd alone would treat the scale as a
    constant.  The exact backward: with ``g = sigmoid(lse)`` and ``dO`` the incoming gradient,
    ``dL/do = g dO`` and ``dL/dlse = g (1 - g) sum_d dO_d o_d``; the kernel's backward computes
    ``dS = P (dP - D)`` with ``D = sum_d grad_d out_d`` taken from the ``out`` it is given, and
    ``D`` of (``g dO``, ``o``) minus the ``lse`` term equals ``sum_d (g dO_d) (g o_d)``: so calling
    it with ``grad = g dO`` and ``out = g o`` (the scaled output) gives exactly the gradient of
    ``out`` (checked against autograd through the eager form in float64).
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, is_causal: bool) -> Tensor:
        o, lse = _flash_cpu(q, k, v, 0.0, is_causal, attn_mask=bias)
        out = (o * torch.sigmoid(lse).unsqueeze(-1)).to(o.dtype)
        ctx.save_for_backward(q, k, v, bias, out, lse)
        ctx.is_causal = is_causal
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k, v, bias, out, lse = ctx.saved_tensors
        scaled = (grad * torch.sigmoid(lse).unsqueeze(-1)).to(q.dtype)
        dq, dk, dv = _flash_cpu_backward(scaled, q, k, v, out, lse, 0.0, ctx.is_causal, attn_mask=bias)
        return dq, dk, dv, None, None


class _CausalOnly:
    """sdpa's prepared mask on the CPU for causal attention with nothing else masked: the CPU
    kernel's own ``is_causal`` (no mask tensor; blocks above the diagonal are skipped)."""

    def __repr__(self) -> str:
        return "CAUSAL"


CAUSAL = _CausalOnly()


def sdpa_mask(key_mask: Tensor | None, document_ids: Tensor | None, batch: int, seq: int,
              device: torch.device, causal: bool = False) -> Tensor | _CausalOnly | None:
    """The sdpa backend's mask, built once per forward: :func:`sdpa_form` of the allowed keys
    (with ``causal``, of :func:`causal_allowed`), except for causal attention with nothing else
    masked on the CPU, which is :data:`CAUSAL` (the kernel's ``is_causal``).  ``batch``: unused."""
    allowed = allowed_keys(key_mask, document_ids)
    if causal:
        if allowed is None and torch.device(device).type == "cpu":
            return CAUSAL
        allowed = causal_allowed(allowed, seq, seq, device)
    return None if allowed is None else sdpa_form(allowed)


def sdpa_form(allowed: Tensor) -> Tensor:
    """A bool ``[batch or 1, 1, queries, keys]`` mask (True: allowed) in the form sdpa takes: on
    the CPU an additive float32 bias (0 allowed, ``-inf`` masked, what the CPU kernel takes); on
    other devices a boolean ``[..., keys + 1]`` whose last column, the appended sink, is always
    allowed."""
    if allowed.device.type == "cpu":
        return torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device).masked_fill_(~allowed, -math.inf)
    return with_sink_column(allowed)


def with_sink_column(allowed: Tensor) -> Tensor:
    """``allowed`` (bool ``[..., keys]``) with one more column, always True: the appended sink key
    that ``F.scaled_dot_product_attention`` sees off the CPU."""
    return torch.cat([allowed, allowed.new_ones(*allowed.shape[:-1], 1)], dim=-1)


def append_zero_sink(x: Tensor, dim: int) -> Tensor:
    """``x`` with one all-zero slice appended along ``dim``: the sink's key (score ``q . 0 = 0``,
    the off-by-one softmax's ``+1``) and value (it adds nothing to the output)."""
    shape = list(x.shape)
    shape[dim] = 1
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def sdpa_attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | _CausalOnly | None) -> Tensor:
    """``softmax_1`` attention with the mask of :func:`sdpa_mask` (see the module docstring for the
    two forms); GQA natively (the CPU kernel maps query head ``h`` to KV head ``h // rep``)."""
    if q.device.type == "cpu":
        if mask is CAUSAL:
            return _ScaledBySigmoidLse.apply(q, k, v, None, True)
        bias = mask if mask is None or mask.dtype == q.dtype else mask.to(q.dtype)
        return _ScaledBySigmoidLse.apply(q, k, v, bias, False)
    k, v = append_zero_sink(k, 2), append_zero_sink(v, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None,
                   document_ids: Tensor | None = None, causal: bool = False) -> Tensor:
    """Off-by-one attention through torch's SDPA kernels (shapes and ``causal`` as
    :func:`eager_attention`)."""
    return sdpa_attend(q, k, v, sdpa_mask(key_mask, document_ids, q.shape[0], q.shape[2], q.device, causal))


# -- flash -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FlashLayout:
    """Where flash-attn's varlen call finds each segment, for one forward pass.

    The ``tokens`` real tokens (all ``batch * seq`` of them, or those selected by ``token_index``,
    flat indices into ``batch * seq``) are packed in (batch, position) order into the queries;
    each segment's keys are its tokens and one zero key (the sink): after them, or with
    ``causal`` before them (flash-attn aligns its causal mask to the bottom right, so query ``i``
    of a segment then sees the sink and the keys of tokens ``<= i``).  Token ``i`` lands at key
    slot ``key_slot[i]``.  ``cu_q`` / ``cu_k`` (int32, ``segments + 1``) are the segment
    offsets, ``max_len`` the longest segment."""

    token_index: Tensor | None
    key_slot: Tensor
    cu_q: Tensor
    cu_k: Tensor
    keys: int
    max_len: int
    causal: bool = False


def flash_layout(key_mask: Tensor | None, document_ids: Tensor | None, batch: int, seq: int,
                 device: torch.device, causal: bool = False) -> FlashLayout:
    """The segment layout of :class:`FlashLayout`: one segment per sequence, split wherever the
    document changes; padding (``key_mask`` False) is left out; ``causal``: the sink first in
    each segment.  Without masks it is static (no host sync); with masks the token and segment
    counts and the longest segment are read here, once per forward, never per layer."""
    first = int(causal)  # the sink's place: key slot 0 of a causal segment, after its tokens otherwise
    if key_mask is None and document_ids is None:
        rows = torch.arange(batch + 1, device=device, dtype=torch.int32)
        flat = torch.arange(batch * seq, device=device)
        return FlashLayout(token_index=None, key_slot=flat + flat // seq + first, cu_q=rows * seq,
                           cu_k=rows * (seq + 1), keys=batch * (seq + 1), max_len=seq, causal=causal)
    valid = (torch.ones(batch, seq, dtype=torch.bool, device=device) if key_mask is None
             else key_mask.bool()).reshape(-1)
    token_index = torch.nonzero(valid).squeeze(1)                      # syncs: the token count
    row = token_index // seq
    doc = (torch.zeros(batch * seq, dtype=torch.long, device=device) if document_ids is None
           else document_ids.reshape(-1))[token_index]
    new = torch.ones_like(row, dtype=torch.bool)
    new[1:] = (row[1:] != row[:-1]) | (doc[1:] != doc[:-1])
    segment = new.long().cumsum(0) - 1
    lengths = torch.bincount(segment)                                  # syncs: the segment count
    segments, tokens = lengths.numel(), token_index.numel()
    cu_q = F.pad(lengths.cumsum(0), (1, 0)).int()
    cu_k = cu_q + torch.arange(segments + 1, device=device, dtype=torch.int32)
    return FlashLayout(token_index=token_index, key_slot=torch.arange(tokens, device=device) + segment + first,
                       cu_q=cu_q, cu_k=cu_k, keys=tokens + segments, max_len=int(lengths.max()), causal=causal)


def flash_attend(q: Tensor, k: Tensor, v: Tensor, layout: FlashLayout) -> Tensor:
    """flash-attn varlen on the segments of ``layout`` (no host sync); padded query positions
    return 0.  Needs CUDA and fp16/bf16 inputs."""
    from flash_attn import flash_attn_varlen_func  # optional dependency, imported on use

    batch, heads, seq, d = q.shape
    q_tokens = q.transpose(1, 2).reshape(batch * seq, heads, d)
    kv_heads = k.shape[1]
    k_tokens = k.transpose(1, 2).reshape(batch * seq, kv_heads, d)
    v_tokens = v.transpose(1, 2).reshape(batch * seq, kv_heads, d)
    if layout.token_index is not None:
        q_tokens, k_tokens, v_tokens = (t.index_select(0, layout.token_index) for t in (q_tokens, k_tokens, v_tokens))
    k_packed = k_tokens.new_zeros(layout.keys, *k_tokens.shape[1:]).index_copy_(0, layout.key_slot, k_tokens)
    v_packed = v_tokens.new_zeros(layout.keys, *v_tokens.shape[1:]).index_copy_(0, layout.key_slot, v_tokens)
    out = flash_attn_varlen_func(q_tokens.contiguous(), k_packed, v_packed, layout.cu_q, layout.cu_k, layout.max_len,
                                 layout.max_len + 1, softmax_scale=1.0 / math.sqrt(d), causal=layout.causal)
    if layout.token_index is not None:
        out = out.new_zeros(batch * seq, heads, d).index_copy_(0, layout.token_index, out)
    return out.reshape(batch, seq, heads, d).transpose(1, 2)


def flash_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None,
                    document_ids: Tensor | None = None, causal: bool = False) -> Tensor:
    """flash-attn varlen: every (sequence, document) segment of real tokens gets its own zero
    key/value (at its end; with ``causal`` at its start).  Needs CUDA and fp16/bf16 inputs;
    padded query positions return 0."""
    return flash_attend(q, k, v, flash_layout(key_mask, document_ids, q.shape[0], q.shape[2], q.device, causal))


class AttentionBackend(NamedTuple):
    """One attention implementation.  ``prepare(key_mask, document_ids, batch, seq, device, causal)``
    builds its mask once per forward pass (``None`` when nothing is masked, for eager and sdpa);
    ``attend(q, k, v, mask)`` runs one layer with it."""

    prepare: Callable[[Tensor | None, Tensor | None, int, int, torch.device, bool], Any]
    attend: Callable[[Tensor, Tensor, Tensor, Any], Tensor]


BACKENDS = {"eager": AttentionBackend(eager_mask, eager_attend), "sdpa": AttentionBackend(sdpa_mask, sdpa_attend),
            "flash": AttentionBackend(flash_layout, flash_attend)}
"""Attention implementations by name (``ModelConfig.attention_backend``); all compute the same
off-by-one softmax attention."""


def cached_mask(backend: str, key_mask: Tensor, queries: int) -> tuple[str, Tensor]:
    """The backend that runs a cached decoding step, and its mask.

    The step's ``queries`` new tokens are the last ``queries`` of the keys ``key_mask`` (bool
    ``[batch, keys]``: the cached tokens and the new ones, True = real) describes; query ``i``
    sees the real keys ``j <= keys - queries + i`` (:func:`causal_allowed`), and the sink.
    ``"eager"`` gets its boolean mask, ``"sdpa"`` :func:`sdpa_form`'s; ``"flash"`` runs the step
    through ``"sdpa"`` (the same attention: flash-attn's varlen layout would be rebuilt for a
    cache that grows every step)."""
    allowed = causal_allowed(key_mask.bool()[:, None, None, :], queries, key_mask.shape[1], key_mask.device)
    if backend == "eager":
        return backend, allowed
    return "sdpa", sdpa_form(allowed)
