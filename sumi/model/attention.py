"""Bidirectional attention with the off-by-one ("sink") softmax, in three backends.

``softmax_1(s)_j = exp(s_j) / (1 + sum_k exp(s_k))`` (Sumi, arXiv 2606.19005; "attention is off
by one"): exactly an extra key whose logit is always 0 and whose value is 0.  Every query row
has one sink, so a row whose keys are all masked outputs 0 instead of NaN.

- ``eager``: the reference, written plainly: float32 scores, a zero logit column, softmax, drop.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention`` with one all-zero key and value
  appended per sequence (``q . 0 = 0`` is the sink's logit; its value adds nothing).
- ``flash``: flash-attn's varlen kernel (CUDA, fp16/bf16) with the same zero key/value appended
  to every segment; padding and packed documents become separate segments.

:func:`check_backend` says up front whether a backend can run on a device (``flash`` needs
CUDA and the flash-attn package): call it where a backend is chosen, before any work.

Masks: ``key_mask`` (bool ``[batch, seq]``, True = real token) and ``document_ids`` (``[batch, seq]``:
a query sees only keys of its own document).  Outputs at padded query positions are not
meaningful and differ between backends (``flash`` writes 0 there).
"""

from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F
from torch import Tensor


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
    """Bool ``[batch, 1, seq_q, seq_k]``: which keys each query may attend to (None: all)."""
    allowed = None
    if key_mask is not None:
        allowed = key_mask[:, None, None, :]
    if document_ids is not None:
        same = (document_ids[:, :, None] == document_ids[:, None, :]).unsqueeze(1)
        allowed = same if allowed is None else allowed & same
    return allowed


def eager_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None,
                    document_ids: Tensor | None = None) -> Tensor:
    """``q``: ``[batch, heads, seq, d]``; ``k``, ``v``: ``[batch, kv_heads, seq, d]``; KV head ``j``
    serves query heads ``j*rep .. j*rep + rep - 1``.  Softmax in float32."""
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1).float()
    v = v.repeat_interleave(rep, dim=1).float()
    scores = q.float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    allowed = allowed_keys(key_mask, document_ids)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, -math.inf)
    sink = torch.zeros(*scores.shape[:-1], 1, dtype=scores.dtype, device=scores.device)
    probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]
    return (probs @ v).to(q.dtype)


def _with_sink(x: Tensor, dim: int) -> Tensor:
    shape = list(x.shape)
    shape[dim] = 1
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def sdpa_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None,
                   document_ids: Tensor | None = None) -> Tensor:
    """The sink as one all-zero key and value appended per sequence; GQA via ``enable_gqa``."""
    k, v = _with_sink(k, 2), _with_sink(v, 2)
    allowed = allowed_keys(key_mask, document_ids)
    if allowed is not None:
        allowed = allowed.expand(q.shape[0], 1, q.shape[2], q.shape[2])
        allowed = torch.cat([allowed, allowed.new_ones(*allowed.shape[:-1], 1)], dim=-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=k.shape[1] != q.shape[1])


def flash_attention(q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None = None,
                    document_ids: Tensor | None = None) -> Tensor:
    """flash-attn varlen: every (sequence, document) segment of real tokens gets its own zero
    key/value at its end.  Needs CUDA and fp16/bf16 inputs; padded query positions return 0."""
    from flash_attn import flash_attn_varlen_func  # optional dependency, imported on use

    batch, heads, seq, d = q.shape
    valid = torch.ones(batch, seq, dtype=torch.bool, device=q.device) if key_mask is None else key_mask.bool()
    doc = torch.zeros(batch, seq, dtype=torch.long, device=q.device) if document_ids is None else document_ids
    # segment id per valid token, in (batch, position) order: a new segment wherever the
    # sequence or the document changes
    b_idx = torch.arange(batch, device=q.device)[:, None].expand(batch, seq)[valid]
    d_idx = doc[valid]
    new = torch.ones_like(b_idx, dtype=torch.bool)
    new[1:] = (b_idx[1:] != b_idx[:-1]) | (d_idx[1:] != d_idx[:-1])
    segment = new.long().cumsum(0) - 1
    lengths = torch.bincount(segment)
    cu_q = F.pad(lengths.cumsum(0), (1, 0)).int()
    cu_k = cu_q + torch.arange(lengths.numel() + 1, device=q.device, dtype=torch.int32)
    q_packed = q.transpose(1, 2)[valid]                        # [tokens, heads, d]
    k_tokens, v_tokens = k.transpose(1, 2)[valid], v.transpose(1, 2)[valid]
    slots = torch.arange(k_tokens.shape[0], device=q.device) + segment  # one sink after each segment
    k_packed = k_tokens.new_zeros(k_tokens.shape[0] + lengths.numel(), *k_tokens.shape[1:])
    v_packed = torch.zeros_like(k_packed)
    k_packed[slots], v_packed[slots] = k_tokens, v_tokens
    max_len = int(lengths.max())
    out = flash_attn_varlen_func(q_packed, k_packed, v_packed, cu_q, cu_k, max_len, max_len + 1,
                                 softmax_scale=1.0 / math.sqrt(d), causal=False)
    full = q.new_zeros(batch, seq, heads, d)
    full[valid] = out
    return full.transpose(1, 2)


BACKENDS = {"eager": eager_attention, "sdpa": sdpa_attention, "flash": flash_attention}
"""Attention implementations by name (``ModelConfig.attention_backend``); all take
``(q, k, v, key_mask, document_ids)`` and compute the same off-by-one softmax attention."""
