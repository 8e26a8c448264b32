"""Tensor type aliases shared by every discdiff module, and the dimension legend.

Use them to annotate your own denoisers, kernels and losses the way discdiff does::

    from discdiff.typing import Logits, LogSNR, Tokens

    def denoiser(z: Tokens, lam: LogSNR) -> Logits: ...

Dimension legend (names used inside the jaxtyping annotations):

- ``*shape``: any leading shape of token positions, usually ``batch seq``.
- ``batch``: sequences in a batch.  ``seq``: positions in a sequence.
- ``vocab``: the states the model sees, ``V`` in docs/math.md, "Conventions" (the mask state included, if any).

Log-SNR ``lambda`` is given per sequence (``[batch]`` or ``[batch, 1]``) or per token
(``[batch, seq]``) and broadcast against the tokens by one rule: one dimension fewer than the
tokens means "per sequence" (docs/math.md, "Conventions").  discdiff's own shapes are checked at
run time under pytest only (jaxtyping's import hook with beartype, see ``pyproject.toml``).
"""

from __future__ import annotations

from typing import Literal, Union

from jaxtyping import Bool, Float, Int
from torch import Tensor

Tokens = Int[Tensor, "*shape"]
"""Token ids, int64, values in ``[0, V)``."""

Mask = Bool[Tensor, "*shape"]
"""A boolean selection of token positions (``frozen``, ``mask`` for reductions, ...)."""

Logits = Float[Tensor, "*shape vocab"]
"""Unnormalized denoiser outputs over the vocabulary."""

Probs = Float[Tensor, "*shape vocab"]
"""A distribution over the vocabulary at every position (non-negative, sums to 1)."""

LogSNR = Float[Tensor, "..."]
"""Log signal-to-noise ratio ``lambda = log(alpha / (1 - alpha))``; broadcastable shape."""

Time = Float[Tensor, "..."]
"""Diffusion time ``t`` in ``[0, 1]``; ``t = 0`` is data, ``t = 1`` is the prior."""

PerToken = Float[Tensor, "*shape"]
"""One value per token position."""

Scalar = Float[Tensor, ""]
"""A 0-d floating tensor (a reduced loss)."""

Reduction = Literal["none", "mean", "sum"]
"""How a loss reduces over token positions (:func:`discdiff.losses.reduce`)."""

FloatLike = Union[float, Tensor]
"""A Python float or a floating tensor (times and log-SNRs accept either)."""

__all__ = [
    "Tokens",
    "Mask",
    "Logits",
    "Probs",
    "LogSNR",
    "Time",
    "PerToken",
    "Scalar",
    "Reduction",
    "FloatLike",
]
