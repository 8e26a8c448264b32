"""Input validation at the public boundary, and the broadcasting rule for log-SNR.

Value checks (ranges, NaNs) synchronize with the host, so every public function that runs
them takes ``validate: bool = True``; hot loops pass ``validate=False`` after checking once.
They are skipped automatically while ``torch.compile`` traces.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discdiff.errors import NonFiniteError


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def as_float_tensor(name: str, value: float | Tensor, like: Tensor | None = None) -> Tensor:
    """A floating tensor from a float or tensor; floats become float64 (or ``like``'s dtype) on
    ``like``'s device."""
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a floating-point tensor, got {type(value).__name__}")
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float64
    device = like.device if like is not None else None
    return torch.tensor(float(value), dtype=dtype, device=device)


def as_log_snr(name: str, lam: float | Tensor, like: Tensor) -> Tensor:
    """``lam`` as a tensor on ``like``'s device: a Python number becomes a 0-d float64 tensor (a
    tensor is returned unchanged, so a wrong dtype still fails :func:`check_log_snr`)."""
    if isinstance(lam, Tensor):
        return lam
    if isinstance(lam, bool) or not isinstance(lam, (int, float)):
        raise TypeError(f"{name} (log-SNR) must be a float or a floating-point tensor, got {type(lam).__name__}")
    return torch.tensor(float(lam), dtype=torch.float64, device=like.device)


def compute_dtype(*tensors: Tensor) -> torch.dtype:
    """The dtype to compute in: the widest floating input, never below float32."""
    dtype = torch.float32
    for t in tensors:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def check_tokens(
    name: str,
    tokens: Tensor,
    vocab_size: int,
    *,
    forbid: int | None = None,
    validate: bool = True,
) -> None:
    """Token ids must be integer and in ``[0, vocab_size)``; ``forbid`` (the mask id) excluded."""
    if not isinstance(tokens, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if not validate or _tracing() or tokens.numel() == 0:
        return
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= vocab_size:
        raise ValueError(f"{name} holds ids in [{lo}, {hi}], outside [0, {vocab_size}) of the vocabulary")
    if forbid is not None and bool((tokens == forbid).any()):
        raise ValueError(f"{name} contains the mask id {forbid}; clean tokens can never be the mask state")


def check_log_snr(name: str, lam: Tensor, *, allow_inf: bool, validate: bool = True) -> None:
    """Log-SNR must be floating, not NaN, and finite unless ``allow_inf``."""
    if not isinstance(lam, Tensor) or not lam.is_floating_point():
        raise TypeError(f"{name} (log-SNR) must be a floating-point tensor")
    if not validate or _tracing():
        return
    if bool(torch.isnan(lam).any()):
        raise ValueError(f"{name} (log-SNR) contains NaN")
    if not allow_inf and bool(torch.isinf(lam).any()):
        raise ValueError(f"{name} (log-SNR) must be finite here, got +-inf")


def align_log_snr(name: str, lam: Tensor, shape: torch.Size) -> Tensor:
    """Broadcast ``lam`` against token positions of ``shape``.

    A ``lam`` with one dimension fewer than the tokens is per sequence (``[batch]`` against
    ``[batch, seq]``) and gets a trailing singleton; otherwise ordinary broadcasting applies.
    """
    given = tuple(lam.shape)
    if lam.dim() == len(shape) - 1 and lam.dim() > 0:
        lam = lam.unsqueeze(-1)
    try:
        return lam.expand(torch.broadcast_shapes(lam.shape, shape))
    except RuntimeError:
        raise ValueError(
            f"{name} of shape {given} does not broadcast against tokens of shape "
            f"{tuple(shape)}; use [batch], [batch, 1] or [batch, seq]"
        ) from None


def broadcast_base(t: Tensor) -> Tensor:
    """The smallest view of ``t`` that broadcasts back to it: every dimension with stride 0 (an
    ``expand``-ed one, as :func:`align_log_snr` makes) shrunk to size 1.  No copy, no host sync.

    A per-sequence ``lambda`` broadcast to ``[batch, seq]`` comes back as ``[batch, 1]``, so a
    function of ``lambda`` alone is evaluated once per sequence instead of once per token.
    """
    index = tuple(slice(0, 1) if stride == 0 and size > 1 else slice(None)
                  for size, stride in zip(t.shape, t.stride()))
    return t[index]


def check_same_shape(name_a: str, a: Tensor, name_b: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{name_a} has shape {tuple(a.shape)} but {name_b} has shape {tuple(b.shape)}")


def check_vocab_dim(name: str, t: Tensor, vocab_size: int, positions: torch.Size) -> None:
    """``t`` must be ``[*positions, vocab_size]``."""
    if t.shape[-1:] != (vocab_size,) or t.shape[:-1] != positions:
        raise ValueError(
            f"{name} must have shape {tuple(positions) + (vocab_size,)}, got {tuple(t.shape)}"
        )


def check_vocab_size(vocab_size: object) -> int:
    """The number of states: an int >= 2."""
    return check_int("vocab_size", vocab_size, lo=2)


def check_mask_id(mask_id: object, vocab_size: int) -> int:
    """A mask id: an int in ``[0, vocab_size - 1]``."""
    return check_int("mask_id", mask_id, lo=0, hi=vocab_size - 1)


def check_int(name: str, value: object, *, lo: int | None = None, hi: int | None = None) -> int:
    """A Python ``int`` (never a ``bool``) in ``[lo, hi]`` (``None``: unbounded on that side).

    A wrong type raises ``TypeError``, a value out of range ``ValueError``; both name the
    argument, the accepted range and the value given.
    """
    accepted = "an int" + (f" in [{lo}, {hi}]" if lo is not None and hi is not None
                           else f" >= {lo}" if lo is not None else f" <= {hi}" if hi is not None else "")
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be {accepted}, got {value!r} ({type(value).__name__})")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be {accepted}, got {value}")
    return value


def check_finite_float(name: str, value: object, *, lo: float = -math.inf, hi: float = math.inf,
                       open_lo: bool = False, open_hi: bool = False, allow_inf: bool = False) -> float:
    """A Python number in ``[lo, hi]`` (open ends as asked), as a float: finite unless
    ``allow_inf`` (NaN never).  A wrong type raises ``TypeError``, a bad value ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if math.isnan(value) or not (allow_inf or math.isfinite(value)):
        raise ValueError(f"{name} must be {'a number, not NaN' if allow_inf else 'finite'}, got {value}")
    bad_lo = value <= lo if open_lo else value < lo
    bad_hi = value >= hi if open_hi else value > hi
    if bad_lo or bad_hi:
        left, right = ("(" if open_lo else "["), (")" if open_hi else "]")
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {value}")
    return value


def top_logit(logits: Tensor, mask_id: int | None) -> Tensor:
    """``max_j logits_j`` over the non-mask states, per position (``[*shape]``), without copying
    the logits.  NaN and ``+inf`` propagate into it; ``-inf`` means every non-mask logit is
    ``-inf``.  So ``isfinite(top_logit(...))`` is "``x_hat`` is well defined here"."""
    if mask_id is None:
        return logits.amax(-1)
    parts = [p for p in (logits[..., :mask_id], logits[..., mask_id + 1:]) if p.shape[-1] > 0]
    top = parts[0].amax(-1)
    return top if len(parts) == 1 else torch.maximum(top, parts[1].amax(-1))


def check_logits(name: str, logits: Tensor, mask_id: int | None, *, validate: bool = True) -> None:
    """The denoiser's logits must define ``x_hat`` at every position: no NaN or ``+inf`` among
    the non-mask states, and at least one of them above ``-inf`` (``-inf`` on some states is
    fine: forbidden tokens).  The mask logit is ignored (``x_hat`` never uses it).  One reduction
    and one host sync when everything is fine; skipped with ``validate=False``."""
    if not validate or _tracing() or logits.numel() == 0:
        return
    top = top_logit(logits, mask_id)
    if bool(torch.isfinite(top).all()):
        return
    states = slice(None) if mask_id is None else torch.arange(logits.shape[-1], device=logits.device) != mask_id
    values = logits[..., states]
    broken = torch.isnan(top) | (top == math.inf)
    if bool(broken.any()):
        count = int((torch.isnan(values) | (values == math.inf)).sum())
        raise NonFiniteError(f"{name} are not finite: {count} values are NaN or +inf "
                         f"({_first(broken)}){' (the mask logit is ignored)' if mask_id is not None else ''}")
    empty = top == -math.inf
    raise NonFiniteError(f"{name} are -inf at every state{' but the mask' if mask_id is not None else ''} "
                     f"at {int(empty.sum())} positions ({_first(empty)}): x_hat is undefined there")


def _first(where: Tensor) -> str:
    index = torch.nonzero(where)[0].tolist()
    if len(index) == 2:
        return f"first at batch {index[0]}, position {index[1]}"
    return f"first at index {tuple(index)}"
