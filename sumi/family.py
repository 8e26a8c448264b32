"""The model families as discdiff objects: where a family's name becomes a kernel.

A :class:`~sumi.configs.ModelConfig` names its family (``objective``, one of
:data:`sumi.configs.model.OBJECTIVES`); everything that needs the forward process (training,
generation, likelihood) asks :func:`kernel_for` here, so names never travel further than this
configuration edge (docs/training.md, "Families"):

- ``uniform``: ``discdiff.kernels.Uniform(V)``, uniform noise over all ``V`` ids (Sumi);
- ``masked`` and ``masked-ce``: ``discdiff.kernels.Masked(V, mask_token_id)``;
- ``hybrid``: ``discdiff.kernels.Hybrid(V, mask_token_id, shift=hybrid_shift, scale=hybrid_scale)``
  (GIDD's log-SNR hybrid, von Rütte et al., arXiv 2512.10858, Sec. 2);
- ``ar``: no kernel (``None``): causal attention and next-token prediction.
"""

from __future__ import annotations

from discdiff.kernels import Hybrid, Kernel, Masked, Uniform
from sumi.configs.model import ModelConfig


def kernel_for(config: ModelConfig) -> Kernel | None:
    """The forward process of ``config``'s family (``None`` for ``"ar"``, which has none)."""
    name = config.objective
    if name == "uniform":
        return Uniform(config.vocab_size)
    if name in ("masked", "masked-ce"):
        return Masked(config.vocab_size, config.mask_token_id)
    if name == "hybrid":
        return Hybrid(config.vocab_size, config.mask_token_id, shift=config.hybrid_shift, scale=config.hybrid_scale)
    if name == "ar":
        return None
    raise ValueError(f"unknown objective {name!r}")  # ModelConfig validates it: unreachable for a valid config


def is_diffusion(config: ModelConfig) -> bool:
    """Whether ``config`` is a diffusion family (every family but ``"ar"``)."""
    return not config.causal


__all__ = ["kernel_for", "is_diffusion"]
