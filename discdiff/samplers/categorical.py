"""The denoiser's distribution ``x_hat`` as samplers use it: tempered, filtered (top-k, top-p,
min-p), mask state removed; its values at given tokens; and exact draws from it.

Draws use the inverse CDF in float64 (``cumsum`` + ``searchsorted``), chunked over positions:
at vocabulary 100,278 a float32 cumsum would lose rare tokens (docs/math.md, "Samplers"), and
``torch.multinomial`` / Gumbel-max over 100k-wide rows are several times slower on CPU.
Temperature 0 means argmax and never builds a ``[..., V]`` probability tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff._checks import check_finite_float, check_int, compute_dtype
from discdiff.typing import Logits, Tokens

DRAW_CHUNK = 256  # positions per float64 CDF chunk: 256 x 100,278 x 8 bytes = 205 MB


@dataclass(frozen=True)
class Filters:
    """Truncation of ``x_hat`` before sampling; ``None`` disables each.

    ``top_k``: keep the k most likely tokens.  ``top_p``: keep the smallest set whose mass
    reaches p (nucleus sampling, Holtzman et al. 2020).  ``min_p``: keep tokens with
    probability at least ``min_p`` times the largest (Nguyen et al. 2024).
    """

    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self) -> None:
        if self.top_k is not None:
            check_int("top_k", self.top_k, lo=1)
        if self.top_p is not None:
            check_finite_float("top_p", self.top_p, lo=0.0, hi=1.0, open_lo=True)
        if self.min_p is not None:
            check_finite_float("min_p", self.min_p, lo=0.0, hi=1.0)

    @property
    def active(self) -> bool:
        return self.top_k is not None or self.top_p is not None or bool(self.min_p)

    def apply(self, log_probs: Tensor) -> Tensor:
        """Set filtered-out entries to ``-inf`` and renormalize (``log_probs`` normalized)."""
        if not self.active:
            return log_probs
        keep = torch.ones_like(log_probs, dtype=torch.bool)
        if self.top_k is not None and self.top_k < log_probs.shape[-1]:
            kth = log_probs.topk(self.top_k, dim=-1).values[..., -1:]
            keep &= log_probs >= kth
        if self.min_p:
            keep &= log_probs >= log_probs.max(-1, keepdim=True).values + math.log(self.min_p)
        if self.top_p is not None and self.top_p < 1.0:
            sorted_lp, order = log_probs.sort(-1, descending=True)
            mass_before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # mass of strictly better tokens
            keep_sorted = mass_before < self.top_p
            keep &= torch.zeros_like(keep).scatter(-1, order, keep_sorted)
        return torch.log_softmax(log_probs.masked_fill(~keep, -math.inf), dim=-1)


def check_temperature(temperature: float) -> float:
    """A finite ``temperature >= 0`` (0: argmax), as a float."""
    return check_finite_float("temperature", temperature, lo=0.0)


class Denoised:
    """``x_hat`` at every position: ``softmax(logits / T)`` without the mask state, filtered.

    At ``T = 0`` it is the point mass at the argmax, held as token ids only.
    """

    def __init__(self, logits: Logits, mask_id: int | None, temperature: float = 1.0,
                 filters: Filters | None = None) -> None:
        temperature = check_temperature(temperature)
        logits = logits.to(compute_dtype(logits))
        if mask_id is not None:
            logits = logits.index_fill(-1, torch.tensor([mask_id], device=logits.device), -math.inf)
        self.vocab_size = logits.shape[-1]
        if temperature == 0.0:
            self.log_probs = None
            self.argmax = logits.argmax(-1)
        else:
            scaled = logits if temperature == 1.0 else logits / temperature  # no copy at T = 1
            log_probs = torch.log_softmax(scaled, dim=-1)
            log_probs = log_probs if filters is None else filters.apply(log_probs)
            self.log_probs = log_probs
            self.argmax = log_probs.argmax(-1)

    def prob_at(self, idx: Tokens) -> Tensor:
        """``x_hat(idx)`` per position, in float64."""
        if self.log_probs is None:
            return (idx == self.argmax).to(torch.float64)
        return self.log_probs.gather(-1, idx.long().unsqueeze(-1)).squeeze(-1).to(torch.float64).exp()

    def max_prob(self) -> Tensor:
        """``max_j x_hat_j`` per position, in float64."""
        if self.log_probs is None:
            return torch.ones(self.argmax.shape, dtype=torch.float64, device=self.argmax.device)
        return self.log_probs.max(-1).values.to(torch.float64).exp()

    def sample(self, generator: torch.Generator | None = None) -> Tokens:
        """One exact draw per position (the argmax at ``T = 0``)."""
        if self.log_probs is None:
            return self.argmax
        return inverse_cdf_draw(self.log_probs, generator)


def inverse_cdf_draw(log_probs: Tensor, generator: torch.Generator | None = None,
                     chunk: int = DRAW_CHUNK) -> Tokens:
    """Draw ``j`` with probability ``exp(log_probs[..., j])`` (normalized rows) by the inverse CDF
    in float64, ``chunk`` positions at a time; returns ``log_probs.shape[:-1]`` int64 ids."""
    shape, V = log_probs.shape[:-1], log_probs.shape[-1]
    flat = log_probs.reshape(-1, V)
    u = torch.rand(flat.shape[0], generator=generator, device=flat.device, dtype=torch.float64)
    out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    # one float64 buffer reused across chunks: fresh 200 MB allocations per chunk cost more
    # (page faults) than the arithmetic
    buffer = torch.empty((min(chunk, flat.shape[0]), V), dtype=torch.float64, device=flat.device)
    for start in range(0, flat.shape[0], chunk):
        rows = flat[start:start + chunk]
        cdf = buffer[: rows.shape[0]]
        cdf.copy_(rows).exp_()
        torch.cumsum(cdf, dim=-1, out=cdf)
        target = (u[start:start + chunk] * cdf[:, -1]).unsqueeze(-1)
        out[start:start + chunk] = torch.searchsorted(cdf, target, right=True).squeeze(-1).clamp_max(V - 1)
    return out.reshape(shape)
