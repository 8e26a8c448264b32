"""Losses: the GIDD ELBO and its surrogate (also fused with the output projection, from hidden
states: :func:`gidd_from_hidden`), MDLM, the simple masked CE, the plain cross-entropy from hidden
states (:func:`cross_entropy_from_hidden`: next-token, or masked diffusion's with the mask left
out), and the one-sample NELBO estimate (:func:`nelbo_estimate`; ``nelbo`` is its deprecated old
name).

All return per-token values in float32 or wider and reduce only when asked (``reduction``).
"""

from discdiff.losses.fused import CrossEntropyOutput, FusedLossOutput, cross_entropy_from_hidden, gidd_from_hidden
from discdiff.losses.elbo import gidd, kl_and_is, kl_and_log_ratio
from discdiff.losses.masked import masked_ce, mdlm
from discdiff.losses.estimate import elbo_weight_in_time, nelbo, nelbo_estimate
from discdiff.losses.output import LossOutput, reduce

__all__ = ["LossOutput", "FusedLossOutput", "CrossEntropyOutput", "reduce", "gidd", "gidd_from_hidden",
           "cross_entropy_from_hidden", "kl_and_is", "kl_and_log_ratio", "mdlm", "masked_ce", "nelbo_estimate",
           "elbo_weight_in_time", "nelbo"]
