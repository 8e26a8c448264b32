"""Losses from hidden states: the output projection and the loss fused, in chunks.

Two losses share one blockwise pass over the logits ``l = h W^T`` (:class:`_LogitStats`):
the GIDD surrogate (:func:`gidd_from_hidden`) and the plain cross-entropy
(:func:`cross_entropy_from_hidden`, docs/math.md, "Fused cross-entropy").

Sources: docs/math.md, "Loss" and "Memory-light form of the KL"; von Rütte et al., "Scaling
Behavior of Discrete Diffusion Language Models", arXiv 2512.10858, Eq. 5 (the surrogate
``w KL + beta_IS w IS``) and Prop. 1 (the weight ``w``).

``gidd_from_hidden(kernel, h, W, x, z, lam)`` equals ``gidd(kernel, h @ W.T, x, z, lam)`` without
ever holding the ``[tokens, V]`` logits.  Every term depends on the logits ``l = h W^T`` through
five numbers per token only (``m`` the mask id, ``c_j = sigmoid(-lambda) pi_lambda(j)``,
``alpha = sigmoid(lambda)``):

- ``LSE = logsumexp_{j != m} l_j``, so that ``log x_hat_j = l_j - LSE``;
- ``l_x``, ``l_z`` and ``l_m``: the logits at the clean token, the noisy token and the mask id;
- ``T = sum_{j != m} c_j log1p(alpha x_hat_j / c_j)`` (terms with ``c_j = 0`` are 0).

From them (:func:`discdiff.losses.elbo.kl_and_log_ratio_from_parts`, the same code as
:func:`~discdiff.losses.gidd`): ``KL = q_x log(q_x / p_x) - T + c_x log1p(alpha x_hat_x / c_x)``,
``q_x = alpha + c_x``, ``p_x = alpha x_hat_x + c_x``; ``d = log q_z - log p_z`` with
``q_z = alpha [z = x] + c_z`` and ``p_z = alpha x_hat_z + c_z`` (``x_hat_m = 0``), and
``IS = e^d - 1 - d``.  For uniform/mask mixtures ``c_j = c_u`` on every non-mask state and
these are the closed forms of docs/math.md, "Memory-light form of the KL"; for pure masked noise
``c_u = 0`` and ``T = 0`` (no second vocabulary pass).

The derivatives with respect to a logit ``k``, with ``rho_j = alpha x_hat_j / (alpha x_hat_j + c_j)``
and ``R = sum_{j != m} c_j rho_j``:
``dLSE/dl_k = x_hat_k``, ``dT/dl_k = c_k rho_k - x_hat_k R``, ``dl_y/dl_k = [k = y]``
(``x_hat_m = rho_m = 0``).  Chained through the per-token formulas they give the gradient of
docs/math.md, "Memory-light form of the KL",
``w [-alpha g_x(k) - c_u (rho_k - x_hat_k R) + [z != m](1 - q_z/p_z) g_z(k)]``.

The forward pass keeps ``LSE`` and ``R`` per token (besides its inputs); the backward pass
recomputes the logits one ``[chunk_size, vocab_chunk_size]`` block at a time and accumulates
``d hidden`` and ``d head_weight`` in float32 (or float64).  Logit blocks are computed in the
inputs' dtype (as ``h @ W.T`` would be) and read in float32 or wider; vocabulary reductions
never run in bfloat16.

The cross-entropy needs only ``LSE`` (over every state but an excluded one, the mask of masked
diffusion), ``l_y`` at the target and the excluded logit: the same statistics with no kernel,
hence no noise pass (``T = R = 0``) and no noisy token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from torch.autograd.function import once_differentiable

from discdiff._checks import (
    align_log_snr, check_finite_float, check_int, check_log_snr, check_tokens, compute_dtype,
)
from discdiff.kernels.base import Kernel
from discdiff.kernels.masked import Masked
from discdiff.losses.elbo import _itakura_saito, _surrogate, kl_and_log_ratio_from_parts
from discdiff.losses.output import LossOutput, reduce
from discdiff.typing import LogSNR, Mask, PerToken, Reduction, Tokens

Hidden = Float[Tensor, "*shape hidden"]
HeadWeight = Float[Tensor, "vocab hidden"]

# (tokens, states) per block of logits when not given
_DEFAULT_CHUNKS = {"cpu": (1024, 2048), "accelerator": (4096, 16384)}

# softplus(y) = y beyond this (float64 error e^-40 ~ 4e-18 relative); torch's default of 20 is
# a 2e-9 relative error, visible against float64 oracles.
_SOFTPLUS_THRESHOLD = 40.0


@dataclass(frozen=True)
class FusedLossOutput(LossOutput):
    """:class:`LossOutput` plus the log-normalizer of the logits.

    - ``logsumexp``: ``logsumexp_j l_j`` over **all** ``V`` logits (the mask logit included),
      per token ``[*shape]``: the quantity Sumi's z-loss squares.  When ``z_loss > 0`` the
      ``loss`` already holds ``z_loss * logsumexp^2`` per token.
    """

    logsumexp: PerToken


@dataclass(frozen=True)
class CrossEntropyOutput:
    """The result of :func:`cross_entropy_from_hidden` (every part in float32 or wider).

    - ``loss``: ``cross_entropy + z_loss * logsumexp^2`` per token, reduced as asked.
    - ``cross_entropy``: ``-log softmax(l)_y`` per token ``[*shape]`` (with ``exclude_id``: the
      softmax over every state but that one), never reduced, without the z-loss.
    - ``logsumexp``: ``logsumexp_j l_j`` over **all** ``V`` logits (the excluded one included),
      per token ``[*shape]``.
    """

    loss: Tensor
    cross_entropy: PerToken
    logsumexp: PerToken


def gidd_from_hidden(
    kernel: Kernel,
    hidden: Hidden,
    head_weight: HeadWeight,
    x: Tokens,
    z: Tokens,
    lam: LogSNR,
    beta_is: float = 1.0,
    *,
    reduction: Reduction = "none",
    mask: Mask | None = None,
    max_weight: float | None = None,
    z_loss: float = 0.0,
    chunk_size: int | None = None,
    vocab_chunk_size: int | None = None,
    validate: bool = True,
) -> FusedLossOutput:
    """The GIDD surrogate ``w KL + beta_is w IS`` (arXiv 2512.10858, Eq. 5) from the denoiser's
    last hidden states, without materializing the logits ``hidden @ head_weight.T``.

    Same values (and gradients) as ``gidd(kernel, hidden @ head_weight.T, x, z, lam, beta_is, ...)``
    up to floating-point rounding, computed as in the module docstring (docs/math.md, "Memory-light
    form of the KL"): no tensor larger than one ``[chunk_size, vocab_chunk_size]`` block of logits
    (a few such blocks at once) exists in the forward or the backward pass, and the autograd graph
    keeps the inputs and a few numbers per token.

    Args:
        kernel: the forward process that produced ``z`` from ``x``.
        hidden: ``[*shape, H]`` final hidden states (for Sumi: ``model(z, return_hidden=True)``).
        head_weight: ``[V, H]`` output projection (``model.lm_head.weight``); same dtype as
            ``hidden`` (float32, float64, or bfloat16/float16 with float32 accumulation).
        x: clean tokens ``[*shape]`` (never the mask id), as in :func:`~discdiff.losses.gidd`.
        z: noisy tokens ``[*shape]``, ``z ~ q_lambda(. | x)``.
        lam: log-SNR per sequence (``[batch]``, ``[batch, 1]``) or per token; finite.  It
            receives no gradient.
        beta_is: weight of the IS term (1 gives the ELBO; Sumi uses 1).
        reduction: ``"none"``, ``"sum"`` or ``"mean"`` (:func:`discdiff.losses.reduce`).
        mask: the tokens that count (bool ``[*shape]``), as in :func:`~discdiff.losses.gidd`.
        max_weight: clip ``w`` at this value in ``loss``; the returned ``weight`` stays exact.
        z_loss: coefficient of Sumi's z-loss: ``loss`` gains ``z_loss * logsumexp(logits)^2``
            per token (over all ``V`` logits; before the reduction, so ``mask`` applies).  The
            log-normalizer itself is returned as ``logsumexp`` either way.
        chunk_size: tokens per block of logits.  ``None``: 1024 on the CPU, 4096 elsewhere.
        vocab_chunk_size: vocabulary states per block of logits; one ``>= V`` takes one pass
            over the vocabulary in the forward instead of two (an online logsumexp, then
            ``T``).  ``None``: 2048 on the CPU (cache-sized blocks were fastest on a 2-core
            Xeon, ``benchmarks/loss.py``), 16384 elsewhere (fewer, larger kernels; a 4096 x
            16384 float32 block is 256 MB; not measured on an accelerator).
        validate: run the value checks (they synchronize with the host).

    Returns:
        :class:`FusedLossOutput`: ``loss`` (reduced as asked), ``kl``, ``is_div``, ``weight``
        (as from :func:`~discdiff.losses.gidd`) and ``logsumexp``; all in float32 or wider.
        ``loss``, ``kl``, ``is_div`` and ``logsumexp`` carry gradients to ``hidden`` and
        ``head_weight``.
    """
    kernel.check_pair(x, z, validate=validate)
    _check_hidden(hidden, head_weight, kernel.vocab_size, x.shape)
    check_log_snr("lam", lam, allow_inf=False, validate=validate)
    if max_weight is not None:
        check_finite_float("max_weight", max_weight, lo=0.0, open_lo=True, allow_inf=True)
    z_loss = check_finite_float("z_loss", z_loss, lo=0.0)
    chunks = _chunk_sizes(hidden.device, chunk_size, vocab_chunk_size)
    dtype = compute_dtype(hidden, head_weight)
    lam = align_log_snr("lam", lam.detach(), x.shape).to(dtype)

    n = x.numel()
    stats = _LogitStats.apply(
        hidden.reshape(n, hidden.shape[-1]), head_weight, x.reshape(n), z.reshape(n), lam.reshape(n),
        kernel, kernel.mask_id, *chunks,
    )
    lse, logit_x, logit_z, logit_m, noise_sum = (s.reshape(x.shape) for s in stats)
    log_x0_z = logit_z - lse
    if kernel.mask_id is not None:  # x_hat_m = 0: the denoiser never predicts the mask
        log_x0_z = torch.where(z == kernel.mask_id, torch.full_like(log_x0_z, -math.inf), log_x0_z)
    weight = kernel.weight(x, z, lam)
    kl, d = kl_and_log_ratio_from_parts(kernel, logit_x - lse, log_x0_z, noise_sum, x, z, lam)
    per_token = _surrogate(kl, d, weight, beta_is, max_weight)
    log_norm = lse if kernel.mask_id is None else torch.logaddexp(lse, logit_m)
    if z_loss > 0:
        per_token = per_token + z_loss * log_norm.square()
    return FusedLossOutput(loss=reduce(per_token, reduction, mask), kl=kl, is_div=_itakura_saito(d),
                           weight=weight, logsumexp=log_norm)


def cross_entropy_from_hidden(
    hidden: Hidden,
    head_weight: HeadWeight,
    targets: Tokens,
    *,
    exclude_id: int | None = None,
    z_loss: float = 0.0,
    reduction: Reduction = "none",
    mask: Mask | None = None,
    chunk_size: int | None = None,
    vocab_chunk_size: int | None = None,
    validate: bool = True,
) -> CrossEntropyOutput:
    """The cross-entropy ``-log softmax(l)_y`` of the logits ``l = hidden @ head_weight.T`` at
    ``targets``, without materializing the logits (docs/math.md, "Fused cross-entropy").

    With ``exclude_id = m`` the softmax runs over every state but ``m``:
    ``CE = logsumexp_{j != m} l_j - l_y``, which is ``-log x_hat_y`` for masked diffusion's
    denoiser (the mask is never predicted; MDLM, Sahoo et al. 2024, arXiv 2406.07524, Eq. 10, and
    the plain masked cross-entropy of Sahoo et al. 2026, arXiv 2602.15014).  Without it, the
    ordinary next-token cross-entropy (``F.cross_entropy(hidden @ head_weight.T, targets)``
    per token).  The logits are computed and reduced one ``[chunk_size, vocab_chunk_size]``
    block at a time (the blocks of :func:`gidd_from_hidden`, without its noise pass), and the
    backward recomputes them: ``dCE/dl_k = softmax_k - [k = y]``, exact for ``hidden`` and
    ``head_weight``.

    Args:
        hidden: ``[*shape, H]`` final hidden states.
        head_weight: ``[V, H]`` output projection; same dtype as ``hidden`` (float32, float64,
            or bfloat16/float16 with float32 accumulation).
        targets: ``[*shape]`` ids in ``[0, V)``, never ``exclude_id``.
        exclude_id: a state left out of the softmax (the mask id), or ``None``.
        z_loss: coefficient of the z-loss: ``loss`` gains ``z_loss * logsumexp(l)^2`` per token,
            over all ``V`` logits (the excluded one included), before the reduction.
        reduction: ``"none"``, ``"sum"`` or ``"mean"`` (:func:`discdiff.losses.reduce`).
        mask: the tokens that count (bool ``[*shape]``); default all.
        chunk_size: tokens per block of logits (``None``: as in :func:`gidd_from_hidden`).
        vocab_chunk_size: vocabulary states per block of logits (``None``: as in
            :func:`gidd_from_hidden`).
        validate: check the target ids (a host sync); ``False`` where they were checked already.

    Returns:
        :class:`CrossEntropyOutput`: ``loss`` (reduced as asked), ``cross_entropy`` and
        ``logsumexp`` per token, all in float32 or wider and differentiable.
    """
    if not isinstance(targets, Tensor):
        raise TypeError(f"targets must be a torch.Tensor of token ids, got {type(targets).__name__}")
    _check_hidden(hidden, head_weight, None, targets.shape)
    V = head_weight.shape[0]
    if exclude_id is not None:
        check_int("exclude_id", exclude_id, lo=0, hi=V - 1)
    check_tokens("targets", targets, V, validate=validate)
    if validate and exclude_id is not None and targets.numel() > 0:
        if bool((targets == exclude_id).any()):
            raise ValueError(f"targets contain exclude_id={exclude_id}, a state the softmax leaves out "
                             "(its cross-entropy would be infinite)")
    z_loss = check_finite_float("z_loss", z_loss, lo=0.0)
    chunks = _chunk_sizes(hidden.device, chunk_size, vocab_chunk_size)

    n = targets.numel()
    lse, logit_y, _, logit_m, _ = (s.reshape(targets.shape) for s in _LogitStats.apply(
        hidden.reshape(n, hidden.shape[-1]), head_weight, targets.reshape(n).long(), None, None,
        None, exclude_id, *chunks,
    ))
    ce = lse - logit_y
    log_norm = lse if exclude_id is None else torch.logaddexp(lse, logit_m)
    per_token = ce + z_loss * log_norm.square() if z_loss > 0 else ce
    return CrossEntropyOutput(loss=reduce(per_token, reduction, mask), cross_entropy=ce, logsumexp=log_norm)


def _chunk_sizes(device: torch.device, chunk_size: int | None, vocab_chunk_size: int | None) -> tuple[int, int]:
    """``(chunk_size, vocab_chunk_size)``, checked, with the device's defaults for ``None``."""
    default_chunks = _DEFAULT_CHUNKS["cpu" if device.type == "cpu" else "accelerator"]
    chunk_size = check_int("chunk_size", default_chunks[0] if chunk_size is None else chunk_size, lo=1)
    vocab_chunk_size = check_int("vocab_chunk_size", default_chunks[1] if vocab_chunk_size is None
                                 else vocab_chunk_size, lo=1)
    return chunk_size, vocab_chunk_size


class _LogitStats(torch.autograd.Function):
    """Per-token statistics of ``logits = hidden @ weight.T`` over the vocabulary, in blocks.

    Inputs ``hidden [n, H]``, ``weight [V, H]``, ``x, z [n]``, ``lam [n]`` (compute dtype),
    the ``kernel`` and the excluded (mask) id ``mask_id``.  ``kernel=None`` (a plain
    cross-entropy) takes ``z=None`` and ``lam=None`` and skips the noise pass.  Outputs ``[n]``
    each: ``LSE`` (every state but ``mask_id``), ``l_x``, ``l_z`` (0 without ``z``), ``l_m`` (0
    without a mask), ``T`` (0 without noise).  Saves ``LSE`` and ``R`` for the backward pass,
    which recomputes the logits.
    """

    @staticmethod
    def forward(ctx, hidden, weight, x, z, lam, kernel, mask_id, chunk_size, vocab_chunk_size):
        n, V = hidden.shape[0], weight.shape[0]
        dtype = compute_dtype(hidden, weight)
        blocks = _Blocks(kernel, mask_id, hidden, weight, lam, dtype)
        tokens, vocab = _ranges(n, chunk_size), _ranges(V, vocab_chunk_size)
        noise = _has_noise(kernel)
        lse = torch.full((n,), -math.inf, dtype=dtype, device=hidden.device)
        logit_x, logit_z, logit_m, noise_sum, mass = (torch.zeros_like(lse) for _ in range(5))
        for t0, t1 in tokens:
            rows = slice(t0, t1)
            kept = None
            for v0, v1 in vocab:  # pass 1: logsumexp over the non-mask states, and the gathers
                block = blocks.logits(rows, v0, v1)
                _pick(block, x[rows], v0, v1, logit_x[rows])
                if z is not None:
                    _pick(block, z[rows], v0, v1, logit_z[rows])
                if mask_id is not None and v0 <= mask_id < v1:
                    logit_m[rows] = block[:, mask_id - v0]
                    block[:, mask_id - v0] = -math.inf
                lse[rows] = torch.logaddexp(lse[rows], torch.logsumexp(block, dim=1))
                kept = block if len(vocab) == 1 else None
            if not noise:
                continue
            for v0, v1 in vocab:  # pass 2: T and R (reuses the block when it spans the vocabulary)
                block = kept if kept is not None else blocks.logits(rows, v0, v1, mask_out=True)
                c, y = blocks.noise(block, rows, v0, v1, lse[rows])
                noise_sum[rows] += _row_dot(c, F.softplus(y, threshold=_SOFTPLUS_THRESHOLD))
                mass[rows] += _row_dot(c, torch.sigmoid(y))
        ctx.save_for_backward(hidden, weight, x, z, lam, lse, mass)
        ctx.kernel, ctx.mask_id, ctx.chunks = kernel, mask_id, (chunk_size, vocab_chunk_size)
        ctx.set_materialize_grads(False)
        constant = [t for t, used in ((logit_z, z is not None), (logit_m, mask_id is not None), (noise_sum, noise))
                    if not used]
        if constant:
            ctx.mark_non_differentiable(*constant)
        return lse, logit_x, logit_z, logit_m, noise_sum

    @staticmethod
    @once_differentiable
    def backward(ctx, g_lse, g_x, g_z, g_m, g_t):
        hidden, weight, x, z, lam, lse, mass = ctx.saved_tensors
        kernel, mask_id, (chunk_size, vocab_chunk_size) = ctx.kernel, ctx.mask_id, ctx.chunks
        need_h, need_w = ctx.needs_input_grad[:2]
        n, V = hidden.shape[0], weight.shape[0]
        dtype = compute_dtype(hidden, weight)
        zeros = torch.zeros(n, dtype=dtype, device=hidden.device)
        g_lse, g_x, g_z, g_m = (zeros if g is None else g for g in (g_lse, g_x, g_z, g_m))
        if mask_id is None:
            g_m = zeros
        if not _has_noise(kernel):
            g_t = None
        # dLSE/dl_k = x_hat_k and dT/dl_k = c_k rho_k - x_hat_k R: x_hat_k takes g_lse - g_T R
        coef = g_lse if g_t is None else g_lse - g_t * mass
        blocks = _Blocks(kernel, mask_id, hidden, weight, lam, dtype)
        grad_h = torch.zeros(hidden.shape, dtype=dtype, device=hidden.device) if need_h else None
        grad_w = torch.zeros_like(weight) if need_w else None
        for v0, v1 in _ranges(V, vocab_chunk_size):
            w_block = weight[v0:v1]
            direct = weight.dtype == dtype  # accumulate in grad_w itself, else in a float32 block
            if need_w:
                acc = grad_w[v0:v1] if direct else torch.zeros(w_block.shape, dtype=dtype, device=weight.device)
            for t0, t1 in _ranges(n, chunk_size):
                rows = slice(t0, t1)
                block = blocks.logits(rows, v0, v1, mask_out=True)
                grad = torch.exp(block - lse[rows, None]).mul_(coef[rows, None])  # x_hat_k coef
                if g_t is not None:
                    c, y = blocks.noise(block, rows, v0, v1, lse[rows], inplace=True)
                    grad.add_(y.sigmoid_().mul_(c * g_t[rows, None]))  # g_T c_k rho_k
                _add_at(grad, x[rows], v0, v1, g_x[rows])
                if z is not None:
                    _add_at(grad, z[rows], v0, v1, g_z[rows])
                if mask_id is not None and v0 <= mask_id < v1:
                    grad[:, mask_id - v0] += g_m[rows]
                grad = grad.to(weight.dtype)  # the matmuls run in the inputs' dtype
                if need_h:
                    grad_h[rows] += grad @ w_block
                if need_w:
                    acc += grad.t() @ hidden[rows]
            if need_w and not direct:
                grad_w[v0:v1] = acc
        grad_h = None if grad_h is None else grad_h.to(hidden.dtype)
        return grad_h, grad_w, None, None, None, None, None, None, None


def _has_noise(kernel: Kernel | None) -> bool:
    """Whether ``T`` and ``R`` need the noise pass: not without a kernel (a plain cross-entropy),
    nor for pure masked noise (``c_j = 0`` off the mask, so ``T = R = 0``)."""
    return kernel is not None and not isinstance(kernel, Masked)


class _Blocks:
    """Blocks of logits and of the noise terms, for one call (forward or backward); ``kernel``
    and ``lam`` are ``None`` for a plain cross-entropy (no noise terms)."""

    def __init__(self, kernel: Kernel | None, mask_id: int | None, hidden: Tensor, weight: Tensor,
                 lam: Tensor | None, dtype: torch.dtype) -> None:
        self.kernel, self.mask_id, self.hidden, self.weight, self.lam, self.dtype = \
            kernel, mask_id, hidden, weight, lam, dtype
        if lam is not None:
            self.log_alpha, self.log_beta = F.logsigmoid(lam), F.logsigmoid(-lam)

    def logits(self, rows: slice, v0: int, v1: int, *, mask_out: bool = False) -> Tensor:
        """``hidden[rows] @ weight[v0:v1].T`` in the compute dtype; ``-inf`` at the mask id if asked."""
        block = (self.hidden[rows] @ self.weight[v0:v1].t()).to(self.dtype)
        m = self.mask_id
        if mask_out and m is not None and v0 <= m < v1:
            block[:, m - v0] = -math.inf
        return block

    def noise(self, block: Tensor, rows: slice, v0: int, v1: int, lse: Tensor,
              *, inplace: bool = False) -> tuple[Tensor, Tensor]:
        """``c_j`` (broadcastable to the block) and ``y_j = log(alpha x_hat_j / c_j)`` (finite
        ``log c`` replaced by 0 where ``c_j = 0``, whose terms ``c_j f(y_j)`` are then 0):
        ``softplus(y) = log1p(alpha x_hat / c)`` and ``sigmoid(y) = rho``."""
        pi = self.kernel.pi_slice(self.lam[rows], v0, v1).to(self.dtype)
        log_c = self.log_beta[rows, None] + torch.log(pi)  # [n_c, 1] or [n_c, V_c]
        positive = torch.isfinite(log_c)
        c = torch.where(positive, torch.exp(log_c), torch.zeros_like(log_c))
        log_c = torch.where(positive, log_c, torch.zeros_like(log_c))
        shift = (lse - self.log_alpha[rows]).unsqueeze(-1)
        if log_c.shape[-1] == 1:
            shift = shift + log_c
            y = block.sub_(shift) if inplace else block - shift
        else:
            y = block.sub_(shift).sub_(log_c) if inplace else block - shift - log_c
        return c, y


def _row_dot(c: Tensor, values: Tensor) -> Tensor:
    """``sum_j c_j values_j`` per row, with ``c`` ``[n, 1]`` (factored out) or broadcastable."""
    if c.dim() == 2 and c.shape[-1] == 1:
        return c[:, 0] * values.sum(1)
    return (c * values).sum(1)


def _ranges(size: int, chunk: int) -> list[tuple[int, int]]:
    return [(start, min(start + chunk, size)) for start in range(0, size, chunk)]


def _pick(block: Tensor, ids: Tensor, v0: int, v1: int, out: Tensor) -> None:
    """``out[i] = block[i, ids[i] - v0]`` where ``ids[i]`` falls in ``[v0, v1)`` (in place)."""
    inside = (ids >= v0) & (ids < v1)
    local = (ids - v0).clamp(0, v1 - v0 - 1).unsqueeze(-1)
    out.copy_(torch.where(inside, block.gather(1, local).squeeze(-1), out))


def _add_at(grad: Tensor, ids: Tensor, v0: int, v1: int, values: Tensor) -> None:
    """``grad[i, ids[i] - v0] += values[i]`` where ``ids[i]`` falls in ``[v0, v1)`` (in place)."""
    inside = (ids >= v0) & (ids < v1)
    local = (ids - v0).clamp(0, v1 - v0 - 1).unsqueeze(-1)
    grad.scatter_add_(1, local, torch.where(inside, values, torch.zeros_like(values)).unsqueeze(-1))


def _check_hidden(hidden: Tensor, head_weight: Tensor, vocab_size: int | None, positions: torch.Size) -> None:
    """``hidden [*positions, H]`` and ``head_weight [V, H]`` floating, same dtype and device;
    ``V = vocab_size`` unless that is ``None``."""
    for name, t in (("hidden", hidden), ("head_weight", head_weight)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got "
                            f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
    if hidden.dtype != head_weight.dtype:
        raise TypeError(f"hidden ({hidden.dtype}) and head_weight ({head_weight.dtype}) must have the same dtype")
    if hidden.device != head_weight.device:
        raise ValueError(f"hidden ({hidden.device}) and head_weight ({head_weight.device}) are on different devices")
    if head_weight.dim() != 2 or (vocab_size is not None and head_weight.shape[0] != vocab_size):
        rows = "vocab" if vocab_size is None else vocab_size
        raise ValueError(f"head_weight must have shape ({rows}, hidden), got {tuple(head_weight.shape)}")
    if hidden.shape[:-1] != positions or hidden.dim() != len(positions) + 1 \
            or hidden.shape[-1] != head_weight.shape[1]:
        raise ValueError(f"hidden must have shape {tuple(positions) + (head_weight.shape[1],)} "
                         f"(the tokens' shape, then head_weight's hidden size), got {tuple(hidden.shape)}")


__all__ = ["gidd_from_hidden", "FusedLossOutput", "cross_entropy_from_hidden", "CrossEntropyOutput"]
