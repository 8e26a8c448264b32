"""Draws of diffusion time ``t`` for training: plain, stratified and antithetic.

All return a tensor of ``shape`` in ``[t_min, t_max]``: ``(batch,)`` for per-sequence noise,
``(batch, seq)`` for per-token noise.  Each takes an explicit ``generator``.  Stratified and
antithetic draws are unbiased for ``E_t`` and lower the variance of a batch mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from discdiff._checks import check_finite_float, check_int


def _range(t_min: float, t_max: float) -> tuple[float, float]:
    t_min = check_finite_float("t_min", t_min, lo=0.0, hi=1.0)
    t_max = check_finite_float("t_max", t_max, lo=0.0, hi=1.0)
    if not t_min < t_max:
        raise ValueError(f"t_min ({t_min}) must be smaller than t_max ({t_max})")
    return t_min, t_max


def _shape(shape: Sequence[int] | int) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    for n in shape:
        check_int(f"every entry of shape {shape}", n, lo=0)
    return shape


def _scale(u: Tensor, t_min: float, t_max: float) -> Tensor:
    return t_min + (t_max - t_min) * u


def uniform(
    shape: Sequence[int] | int,
    *,
    t_min: float = 0.0,
    t_max: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Independent ``t ~ U(t_min, t_max)``."""
    t_min, t_max = _range(t_min, t_max)
    u = torch.rand(_shape(shape), generator=generator, device=device, dtype=torch.float64)
    return _scale(u, t_min, t_max).to(dtype)


def stratified(
    shape: Sequence[int] | int,
    *,
    t_min: float = 0.0,
    t_max: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """One draw in each of ``n = prod(shape)`` equal strata, ``u_i = (i + U_i) / n``, placed at
    random positions (a random permutation, so strata do not line up with positions)."""
    t_min, t_max = _range(t_min, t_max)
    shape = _shape(shape)
    n = math.prod(shape)
    jitter = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    u = (torch.arange(n, device=device, dtype=torch.float64) + jitter) / max(n, 1)
    u = u[torch.randperm(n, generator=generator, device=device)]
    return _scale(u, t_min, t_max).reshape(shape).to(dtype)


def antithetic(
    shape: Sequence[int] | int,
    *,
    t_min: float = 0.0,
    t_max: float = 1.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Pairs ``(u, 1 - u)``: the first half of the (flattened) draws is ``U(0, 1)``, the second
    its mirror; with an odd count the last draw is independent."""
    t_min, t_max = _range(t_min, t_max)
    shape = _shape(shape)
    n = math.prod(shape)
    half = torch.rand(n // 2, generator=generator, device=device, dtype=torch.float64)
    extra = torch.rand(n % 2, generator=generator, device=device, dtype=torch.float64)
    u = torch.cat([half, 1 - half, extra])
    return _scale(u, t_min, t_max).reshape(shape).to(dtype)


__all__ = ["uniform", "stratified", "antithetic"]
