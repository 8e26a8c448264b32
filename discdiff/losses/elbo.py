"""The GIDD ELBO in log-SNR form and its training surrogate.

Sources: von Rütte et al., "Generalized Interpolating Discrete Diffusion", ICML 2025
(arXiv 2503.04482); von Rütte et al., "Scaling Behavior of Discrete Diffusion Language
Models", arXiv 2512.10858, Eqs. 1-5 (Prop. 1).  docs/math.md, "Loss".

Per token, with ``q = q_lambda(. | x)`` and ``p = q_lambda(. | x_hat)``:
``NELBO(x) = integral d lambda E_z[w (KL(q || p) + IS)]``,
``IS = r - log r - 1`` at the observed ``z`` (``r = q_z / p_z``),
``w = (pi_z - pi'_z) / (pi_z + e^lambda [z = x])``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from discdiff._checks import align_log_snr, check_finite_float, check_log_snr, check_vocab_dim, compute_dtype
from discdiff.kernels.base import Kernel
from discdiff.losses.output import LossOutput, reduce
from discdiff.typing import Logits, LogSNR, Mask, Reduction, Tokens


def _c_log1p(log_c: Tensor, log_a: Tensor) -> Tensor:
    """``c log1p(a / c)`` from ``log c`` and ``log a``; 0 where ``c = 0`` (no ``0 * inf``)."""
    positive = torch.isfinite(log_c)
    log_c = torch.where(positive, log_c, torch.zeros_like(log_c))
    value = torch.exp(log_c) * torch.logaddexp(log_a - log_c, torch.zeros_like(log_c))
    return torch.where(positive, value, torch.zeros_like(value))


def _itakura_saito(d: Tensor) -> Tensor:
    """``r - log r - 1`` for ``d = log r``, as ``expm1(d) - d`` (exact near ``r = 1``)."""
    return torch.expm1(d) - d


def kl_and_log_ratio(
    kernel: Kernel, log_x0: Tensor, x: Tokens, z: Tokens, lam: Tensor
) -> tuple[Tensor, Tensor]:
    """``KL(q || p)`` and ``d = log q_z - log p_z`` per token, in the stable forms of docs/math.md
    ("Memory-light form of the KL", "Numerics").

    With ``c = sigmoid(-lambda) pi`` (noise mass per state) and ``T`` the kernel's
    :meth:`~discdiff.kernels.Kernel.noise_log1p_sum`:
    ``KL = q_x log(q_x / p_x) - T + c_x log1p(alpha x_hat_x / c_x)``,
    ``q_x = alpha + c_x``, ``p_x = alpha x_hat_x + c_x``, all in log space (no epsilon anywhere:
    docs/math.md, "Numerics").  ``log_x0`` is ``[*shape, V]``; the rest ``[*shape]``, ``lam``
    already broadcast.
    """
    log_x0_x = log_x0.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)
    log_x0_z = log_x0.gather(-1, z.long().unsqueeze(-1)).squeeze(-1)
    return kl_and_log_ratio_from_parts(kernel, log_x0_x, log_x0_z, kernel.noise_log1p_sum(lam, log_x0), x, z, lam)


def kl_and_log_ratio_from_parts(
    kernel: Kernel, log_x0_x: Tensor, log_x0_z: Tensor, noise_sum: Tensor, x: Tokens, z: Tokens, lam: Tensor
) -> tuple[Tensor, Tensor]:
    """:func:`kl_and_log_ratio` from per-token parts only: ``log x_hat`` at ``x`` and at ``z``
    (``-inf`` where ``z`` is the mask) and ``T = sum_j c_j log1p(alpha x_hat_j / c_j)``, all
    ``[*shape]``.  No vocabulary-sized tensor is needed once these are known (docs/math.md,
    "Memory-light form of the KL"); :func:`discdiff.losses.gidd_from_hidden` computes them in chunks.
    """
    log_alpha, log_beta = F.logsigmoid(lam), F.logsigmoid(-lam)
    log_cx = log_beta + torch.log(kernel.pi_at(lam, x))
    log_cz = log_beta + torch.log(kernel.pi_at(lam, z))

    log_qx = torch.logaddexp(log_alpha, log_cx)
    log_px = torch.logaddexp(log_alpha + log_x0_x, log_cx)
    kl = torch.exp(log_qx) * (log_qx - log_px) - noise_sum
    kl = kl + _c_log1p(log_cx, log_alpha + log_x0_x)

    log_qz = torch.where(z == x, log_qx, log_cz)
    log_pz = torch.logaddexp(log_alpha + log_x0_z, log_cz)
    return kl, log_qz - log_pz


def kl_and_is(kernel: Kernel, log_x0: Tensor, x: Tokens, z: Tokens, lam: Tensor) -> tuple[Tensor, Tensor]:
    """``KL(q || p)`` and ``IS = r - log r - 1`` (``r = q_z / p_z``) per token; see
    :func:`kl_and_log_ratio`."""
    kl, d = kl_and_log_ratio(kernel, log_x0, x, z, lam)
    return kl, _itakura_saito(d)


def _surrogate(kl: Tensor, d: Tensor, weight: Tensor, beta_is: float, max_weight: float | None) -> Tensor:
    """``w' KL + beta_is w' IS`` per token from ``KL``, ``d = log(q_z / p_z)`` and the exact weight
    ``w`` (``w'`` clipped at ``max_weight`` if given); exactly 0 where ``w' = 0``."""
    w = weight if max_weight is None else weight.clamp(max=max_weight)
    # Tokens with w = 0 (clean tokens under masked noise) contribute exactly 0 to the loss, even
    # where their IS ratio overflows (x_hat_x < e^-88 in float32): the loss reads a sanitized
    # ratio, so no 0 * inf reaches its value or its gradient; ``is_div`` reports the true term.
    counted = w != 0
    is_in_loss = _itakura_saito(torch.where(counted, d, torch.zeros_like(d)))
    return torch.where(counted, w * (kl + beta_is * is_in_loss), torch.zeros_like(w))


def gidd(
    kernel: Kernel,
    logits: Logits,
    x: Tokens,
    z: Tokens,
    lam: LogSNR,
    beta_is: float = 1.0,
    *,
    reduction: Reduction = "none",
    mask: Mask | None = None,
    max_weight: float | None = None,
    validate: bool = True,
) -> LossOutput:
    """The GIDD surrogate ``loss = w KL + beta_is w IS`` per token (arXiv 2512.10858, Eq. 5).

    Args:
        kernel: the forward process that produced ``z`` from ``x``.
        logits: denoiser outputs ``[*shape, V]``; ``x_hat = softmax`` with the mask logit
            removed.  Computed in ``logits``' dtype, at least float32.
        x: clean tokens ``[*shape]`` (never the mask id).
        z: noisy tokens, ``z ~ q_lambda(.|x)``.
        lam: log-SNR per sequence (``[batch]``, ``[batch, 1]``) or per token; finite.
        beta_is: weight of the IS term (1 gives the ELBO; Sumi and GIDD-scaling use 1).
        reduction: ``"none"``, ``"mean"`` or ``"sum"`` (:func:`discdiff.losses.reduce`).
        mask: the tokens that count in the reduction (e.g. not padding); default all.
        max_weight: clip ``w`` at this value in ``loss`` (GIDD's weight clipping); the
            returned ``weight`` stays exact.

    With ``beta_is = 1`` and no clip, ``loss * |d lambda/dt|`` is an unbiased per-token NELBO
    estimate under the schedule that drew ``lambda`` (:func:`discdiff.losses.nelbo_estimate`).
    """
    kernel.check_pair(x, z, validate=validate)
    check_vocab_dim("logits", logits, kernel.vocab_size, x.shape)
    check_log_snr("lam", lam, allow_inf=False, validate=validate)
    if max_weight is not None:
        check_finite_float("max_weight", max_weight, lo=0.0, open_lo=True, allow_inf=True)
    dtype = compute_dtype(logits)
    # cast before broadcasting: .to() would copy an expanded lam into [*shape]
    lam = align_log_snr("lam", lam.to(dtype), x.shape)
    log_x0 = kernel.x0_log_probs(logits)
    weight = kernel.weight(x, z, lam)
    kl, d = kl_and_log_ratio(kernel, log_x0, x, z, lam)
    per_token = _surrogate(kl, d, weight, beta_is, max_weight)
    return LossOutput(loss=reduce(per_token, reduction, mask), kl=kl, is_div=_itakura_saito(d), weight=weight)
