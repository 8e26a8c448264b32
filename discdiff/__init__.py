"""discdiff: composable discrete-diffusion primitives.

Conventions (fixed for the whole library; see docs/math.md, "Conventions"):

- Time ``t in [0, 1]``: ``t = 0`` is data, ``t = 1`` is the prior.
- Kernels, losses and samplers take the log-SNR ``lambda = log(alpha / (1 - alpha))``;
  ``alpha = sigmoid(lambda)`` is the probability that a token is still clean.  Schedules map
  ``t -> lambda``.
- Tokens are integer tensors ``[batch, seq]``; logits ``[batch, seq, vocab]``; ``lambda`` is per
  sequence (``[batch]`` or ``[batch, 1]``) or per token (``[batch, seq]``).
- The mask id lives in the kernel and nowhere else.  Reductions are explicit arguments.
- Every stochastic function takes ``generator: torch.Generator | None``; nothing touches global
  state at import.

Samplers (``discdiff.samplers``), classifier-free guidance (``discdiff.guidance``) and NELBO
estimation (``discdiff.likelihood``) build on these;
``discdiff.typing`` holds the tensor type aliases.  ``discdiff.nelbo`` is a deprecated alias of
``discdiff.losses.nelbo_estimate``.  Imports torch and jaxtyping only.  ``discdiff.testing`` (hypothesis strategies and
invariant checks) needs the ``[test]`` extra and is not imported here.
"""

from discdiff import errors, guidance, kernels, likelihood, losses, samplers, schedules, time_sampling, typing
from discdiff.errors import NonFiniteError
from discdiff.kernels import GIDD, Dense, Hybrid, Kernel, Masked, Prior, Uniform
from discdiff.losses import LossOutput, cross_entropy_from_hidden, gidd, gidd_from_hidden, masked_ce, mdlm, nelbo
from discdiff.schedules import Cosine, GIDDTime, LinearAlpha, LinearLogSNR, Schedule

__version__ = "0.1.0"

__all__ = [
    "errors",
    "NonFiniteError",
    "kernels",
    "losses",
    "schedules",
    "time_sampling",
    "samplers",
    "guidance",
    "likelihood",
    "typing",
    "Kernel",
    "Uniform",
    "Masked",
    "Hybrid",
    "GIDD",
    "Prior",
    "Dense",
    "Schedule",
    "LinearAlpha",
    "Cosine",
    "LinearLogSNR",
    "GIDDTime",
    "LossOutput",
    "gidd",
    "gidd_from_hidden",
    "cross_entropy_from_hidden",
    "mdlm",
    "masked_ce",
    "nelbo",
]
