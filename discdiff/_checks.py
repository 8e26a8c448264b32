"""Input validation at the public boundary, and the broadcasting rule for log-SNR.

Value checks (ranges, NaNs) synchronize with the host, so every public function that runs
them takes ``validate: bool = True``; hot loops pass ``validate=False`` after checking once.
They are skipped automatically while ``torch.compile`` traces.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _tracing() -> bool:
    return torch.compiler.is_compiling()


def as_float_tensor(name: str, value: float | Tensor, like: Tensor | None = None) -> Tensor:
    """A floating tensor from a float or tensor; floats become float64 (or ``like``'s dtype)."""
    if isinstance(value, Tensor):
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a floating-point tensor, got {type(value).__name__}")
    dtype = like.dtype if like is not None and like.is_floating_point() else torch.float64
    device = like.device if like is not None else None
    return torch.tensor(float(value), dtype=dtype, device=device)


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
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError(f"vocab_size must be an int, got {type(vocab_size).__name__}")
    if vocab_size < 2:
        raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    return vocab_size


def check_mask_id(mask_id: object, vocab_size: int) -> int:
    if isinstance(mask_id, bool) or not isinstance(mask_id, int):
        raise TypeError(f"mask_id must be an int, got {type(mask_id).__name__}")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id must be in [0, {vocab_size}), got {mask_id}")
    return mask_id


def check_finite_float(name: str, value: object, *, lo: float = -math.inf, hi: float = math.inf,
                       open_lo: bool = False, open_hi: bool = False) -> float:
    """A finite Python number in ``[lo, hi]`` (open ends as asked)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    bad_lo = value <= lo if open_lo else value < lo
    bad_hi = value >= hi if open_hi else value > hi
    if bad_lo or bad_hi:
        left, right = ("(" if open_lo else "["), (")" if open_hi else "]")
        raise ValueError(f"{name} must be in {left}{lo}, {hi}{right}, got {value}")
    return value
