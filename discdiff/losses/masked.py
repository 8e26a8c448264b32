"""Masked-diffusion objectives: the MDLM ELBO and the unweighted "simple CE".

MDLM: Sahoo et al., "Simple and Effective Masked Diffusion Language Models", NeurIPS 2024
(arXiv 2406.07524), Eq. 10: ``NELBO = E_t[-alpha'_t / (1 - alpha_t) CE on masked tokens]``,
``= E_t[CE / t]`` for ``alpha = 1 - t``.  Per unit log-SNR this is ``alpha * CE`` on masked
tokens, which is exactly what :func:`discdiff.losses.gidd` gives for a :class:`Masked` kernel.
Simple CE: Sahoo et al. 2026 (arXiv 2602.15014): plain CE on masked tokens, no weight.
"""

from __future__ import annotations

import torch
from torch import Tensor

from discdiff._checks import align_log_snr, check_log_snr, check_vocab_dim, compute_dtype
from discdiff.kernels.masked import Masked
from discdiff.losses.output import LossOutput, reduce
from discdiff.typing import Logits, LogSNR, Mask, Reduction, Tokens


def _masked_cross_entropy(kernel: Masked, logits: Logits, x: Tokens, z: Tokens, validate: bool) -> tuple[Tensor, Tensor]:
    if not isinstance(kernel, Masked):
        raise TypeError(f"this loss needs a Masked kernel, got {kernel!r}")
    kernel.check_pair(x, z, validate=validate)
    check_vocab_dim("logits", logits, kernel.vocab_size, x.shape)
    log_x0 = kernel.x0_log_probs(logits)
    ce = -log_x0.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)
    return ce, (z == kernel.mask_id).to(ce.dtype)


def mdlm(
    kernel: Masked,
    logits: Logits,
    x: Tokens,
    z: Tokens,
    lam: LogSNR,
    *,
    reduction: Reduction = "none",
    mask: Mask | None = None,
    validate: bool = True,
) -> LossOutput:
    """MDLM's ELBO per unit log-SNR: ``loss = alpha CE [z = m]`` (``kl = alpha CE``, ``is_div = 0``,
    ``weight = [z = m]``).  Multiply by ``|d lambda/dt|`` (:func:`discdiff.losses.nelbo_estimate`) for
    the time form ``CE / t`` under ``alpha = 1 - t``."""
    ce, masked = _masked_cross_entropy(kernel, logits, x, z, validate)
    check_log_snr("lam", lam, allow_inf=False, validate=validate)
    lam = align_log_snr("lam", lam.to(compute_dtype(logits)), x.shape)
    kl = torch.sigmoid(lam) * ce
    per_token = masked * kl
    return LossOutput(loss=reduce(per_token, reduction, mask), kl=kl, is_div=torch.zeros_like(kl), weight=masked)


def masked_ce(
    kernel: Masked,
    logits: Logits,
    x: Tokens,
    z: Tokens,
    *,
    reduction: Reduction = "mean",
    mask: Mask | None = None,
    validate: bool = True,
) -> Tensor:
    """The unweighted "simple CE" of Sahoo et al. 2026: ``-log x_hat_x`` on masked tokens, 0 on
    clean ones; ``"mean"`` divides by the number of counted tokens (masked or not)."""
    ce, masked = _masked_cross_entropy(kernel, logits, x, z, validate)
    return reduce(masked * ce, reduction, mask)
