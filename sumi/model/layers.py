"""Transformer building blocks: RMSNorm, rotary embeddings (rotate-half), SwiGLU MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    """``w * cast(x / rms(x))`` with the normalization in float32, then cast back to the input
    dtype before the weight multiplies (the released checkpoint's convention; docs/math.md, "Sumi recipe facts")."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(self, x: Tensor) -> Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return h.to(x.dtype) * self.weight

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)


def rope_cos_sin(positions: Tensor, head_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """float32 ``cos``/``sin`` of shape ``[*positions.shape, head_dim]`` (frequencies repeated for the
    two halves, the rotate-half layout): ``freq_i = theta^(-2i / head_dim)``."""
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float().unsqueeze(-1) * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (``[batch, heads, seq, head_dim]``) in float32: ``x cos + rotate_half(x) sin``,
    ``rotate_half([a, b]) = [-b, a]``; ``cos``/``sin`` are ``[seq, d]`` or ``[batch, seq, d]``."""
    if cos.dim() == 3:  # per-sequence positions: broadcast over heads
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    h = x.float()
    a, b = h.chunk(2, dim=-1)
    rotated = torch.cat([-b, a], dim=-1)
    return (h * cos + rotated * sin).to(x.dtype)


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, hidden_size: int, intermediate_size: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.up_proj = nn.Linear(hidden_size, intermediate_size, bias=False)
        self.down_proj = nn.Linear(intermediate_size, hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
