"""The loss result type and explicit reductions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff.typing import Mask, PerToken, Reduction


@dataclass(frozen=True)
class LossOutput:
    """A loss and its per-token parts (all parts ``[*shape]``, float32 or wider).

    - ``loss``: the training surrogate ``w' KL + beta_is w' IS`` (``w'`` the weight after the
      optional clip), reduced as asked (``[*shape]`` for ``"none"``, a scalar otherwise).
    - ``kl``: ``KL(q_lambda(.|x) || q_lambda(.|x_hat))``.
    - ``is_div``: the Itakura-Saito term ``r - log r - 1``, ``r = q_z / p_z``.
    - ``weight``: the exact ELBO weight ``w`` per unit log-SNR (never clipped).
    """

    loss: Tensor
    kl: PerToken
    is_div: PerToken
    weight: PerToken

    @property
    def integrand(self) -> PerToken:
        """``w (KL + IS)``: the per-token NELBO density per unit log-SNR (``beta_is = 1``, no clip)."""
        return self.weight * (self.kl + self.is_div)


_REDUCTIONS = ("none", "mean", "sum")


def reduce(values: PerToken, reduction: Reduction = "mean", mask: Mask | None = None) -> Tensor:
    """Reduce per-token ``values`` over the positions where ``mask`` is True (all if ``None``).

    ``"none"`` returns ``values`` with unselected positions set to 0; ``"sum"`` their sum;
    ``"mean"`` the sum divided by the number of selected positions (0 if none).
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor, got dtype {mask.dtype}")
        if mask.shape != values.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but the tokens have shape {tuple(values.shape)}")
        values = torch.where(mask, values, torch.zeros_like(values))
    if reduction == "none":
        return values
    total = values.sum()
    if reduction == "sum":
        return total
    count = values.numel() if mask is None else mask.sum()
    return total / torch.as_tensor(count, dtype=values.dtype, device=values.device).clamp_min(1)
