"""NELBO estimation: the negative ELBO of clean tokens under a denoiser and a kernel.

``NELBO(x) = integral_0^1 dt |d lambda/dt| E_z[w (KL + IS)]`` (docs/math.md, "Likelihood";
arXiv 2512.10858, Eq. 3-5), estimated on a deterministic time grid (midpoints, Sumi and GIDD
use 128 points under the linear-alpha schedule) or by stratified random times, one noisy draw
``z`` per point and sequence.  Bits per byte = NELBO / (ln 2 * bytes).

Several time points can share one denoiser call (``points_per_call``: their noisy sequences
stacked along the batch), and a denoiser may return :class:`HiddenStates` instead of logits, so
that the loss is computed from the hidden states and the output head in chunks
(:func:`discdiff.losses.gidd_from_hidden`) without ever holding the ``[tokens, V]`` logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff._checks import check_int, top_logit
from discdiff._denoiser import check_logits_shape, denoise, takes_log_snr
from discdiff.errors import NonFiniteError
from discdiff.kernels.base import Kernel
from discdiff.losses.elbo import gidd
from discdiff.losses.estimate import elbo_weight_in_time
from discdiff.losses.fused import gidd_from_hidden
from discdiff.schedules.base import Schedule
from discdiff.schedules.linear_alpha import LinearAlpha
from discdiff.typing import Logits, Mask, Tokens


@dataclass(frozen=True)
class HiddenStates:
    """What a denoiser may return instead of logits: its final hidden states and output head,
    whose product ``hidden @ head_weight.T`` are the logits.  :func:`nelbo` then computes the
    loss with :func:`discdiff.losses.gidd_from_hidden` (docs/math.md, "Memory-light form of the
    KL"): the same values up to rounding, without a ``[tokens, V]`` tensor.

    For a model with a linear head: ``HiddenStates(model(z, return_hidden=True), model.lm_head.weight)``.

    Attributes:
        hidden: ``[*z.shape, H]`` final hidden states (after the last norm).
        head_weight: ``[V, H]`` output projection, same dtype and device as ``hidden`` (float32,
            float64, or bfloat16/float16, whose vocabulary reductions run in float32).
    """

    hidden: Tensor
    head_weight: Tensor


@dataclass(frozen=True)
class LikelihoodOutput:
    """``per_token``: NELBO per token in nats, ``[batch, seq]`` (0 where not counted);
    ``per_sequence``: its sum over counted tokens, ``[batch]``; ``num_tokens``: counted tokens."""

    per_token: Tensor
    per_sequence: Tensor
    num_tokens: Tensor

    @property
    def per_token_mean(self) -> Tensor:
        """NELBO per counted token, per sequence (nats)."""
        return self.per_sequence / self.num_tokens.clamp_min(1)


def nelbo(
    denoiser: Callable[..., Logits | HiddenStates],
    kernel: Kernel,
    x: Tokens,
    *,
    schedule: Schedule | None = None,
    points: int = 128,
    stratified: bool = False,
    effective_snr: bool = False,
    frozen: Mask | None = None,
    generator: torch.Generator | None = None,
    callback: Callable[[int, int], None] | None = None,
    time_conditioned: bool | None = None,
    points_per_call: int = 1,
) -> LikelihoodOutput:
    """Per-token NELBO of ``x`` (``[batch, seq]``) under ``denoiser`` (tokens -> logits;
    docs/math.md, "Likelihood").

    Args:
        denoiser: ``denoiser(z)`` or, time-conditioned, ``denoiser(z, lam)`` with ``lam`` the
            log-SNR at which the integrand is evaluated (``lambda(t_i)``, or the effective one),
            float64, one value per row of ``z``.  It returns logits ``[*z.shape, V]`` or
            :class:`HiddenStates` (the loss is then fused with the output head).
        schedule: maps the time grid to log-SNR (default ``LinearAlpha()``, clamped to [-9, 9]).
        points: time points; the grid is the midpoints ``t_i = (i + 1/2) / points`` unless
            ``stratified``, which draws ``t_i = (i + U_i) / points`` per sequence.
        effective_snr: per sequence and point, evaluate the integrand at the logit of the
            realized clean fraction instead of at ``lambda(t_i)`` (docs/math.md, "Likelihood";
            meant for long sequences).  The fraction is estimated from the match rate ``f`` of
            ``z = x`` (with a half-count correction ``(matches + 1/2) / (n + 1)``) as
            ``(f - p) / (1 - p)``, ``p`` the mean of ``pi_lambda(x_j)``, since noise can redraw
            ``x`` itself; then clamped to the schedule's range.  The quadrature weight stays ``|d lambda/dt|`` at ``t_i``.
            (With a constant predictor we measured no variance reduction; see the tests.)
        frozen: context positions (bool ``[batch, seq]``): never noised, not counted: the
            conditional NELBO of the rest given them.
        generator: the source of the noise (and of the stratified times).
        callback: called as ``callback(done, points)`` after each denoiser call (progress;
            ``done`` counts the time points scored so far).
        time_conditioned: call ``denoiser(z, lam)`` (``True``) or ``denoiser(z)`` (``False``);
            ``None`` reads the signature, as :func:`discdiff.samplers.sample` does.
        points_per_call: time points scored by one denoiser call: their noisy sequences are
            stacked point-major into ``z`` of shape ``[k * batch, seq]`` (the last call takes
            the remainder).  The noise is drawn point by point in the same order whatever
            this is, so the estimate is the same up to the rounding of the larger calls;
            memory grows with it (logits ``[k * batch, seq, V]`` unless the denoiser returns
            :class:`HiddenStates`).

    Raises:
        NonFiniteError: (a ``ValueError``) if the result holds NaN, checked once at the end (one host sync), naming
            the cause: the denoiser's logits were NaN or ``+inf`` (or ``-inf`` at every
            non-mask state) at some counted position, or else the loss itself.  For
            :class:`HiddenStates` the check reads the log-normalizer over all ``V`` logits
            (the mask's included): NaN or infinite there counts as unusable logits.
    """
    schedule = LinearAlpha() if schedule is None else schedule
    kernel.check_clean(x)
    if x.dim() != 2:
        raise ValueError(f"x must be [batch, seq], got shape {tuple(x.shape)}")
    check_int("points", points, lo=1)
    check_int("points_per_call", points_per_call, lo=1)
    with_log_snr = takes_log_snr(denoiser, time_conditioned)
    if frozen is not None and (frozen.dtype != torch.bool or frozen.shape != x.shape):
        raise ValueError(f"frozen must be a bool tensor of shape {tuple(x.shape)}")
    counted = torch.ones_like(x, dtype=torch.bool) if frozen is None else ~frozen
    batch = x.shape[0]
    n = counted.sum(-1).clamp_min(1).double()  # counted tokens per sequence (effective SNR)
    total = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    first_bad = torch.full((), points, dtype=torch.long, device=x.device)  # first point with bad logits, no sync
    for start in range(0, points, points_per_call):
        stop = min(start + points_per_call, points)
        zs, lams, speeds = [], [], []
        for i in range(start, stop):  # the draws of each point in turn: the same noise for any points_per_call
            if stratified:
                u = torch.rand(batch, generator=generator, device=x.device, dtype=torch.float64)
            else:
                u = torch.full((batch,), 0.5, dtype=torch.float64, device=x.device)
            t = (i + u) / points
            lam = schedule.log_snr(t)
            z = kernel.corrupt(x, lam, generator, validate=False)
            z = torch.where(counted, z, x)
            if effective_snr:
                # half-count correction keeps the logit finite when every (or no) token matched
                matched = (((z == x) & counted).sum(-1).double() + 0.5) / (n + 1)
                # z = x also when noise redrew x: E[matched] = alpha + (1 - alpha) mean_j pi(x_j)
                pi_x = torch.where(counted, kernel.pi_at(lam.unsqueeze(-1).expand(x.shape), x).double(), 0.0).sum(-1) / n
                share = ((matched - pi_x) / (1 - pi_x)).clamp(0.5 / (n + 1), 1 - 0.5 / (n + 1))
                lam = torch.logit(share).clamp(schedule.log_snr_min, schedule.log_snr_max)
            zs.append(z)
            lams.append(lam)
            speeds.append(elbo_weight_in_time(schedule, t))
        k = stop - start
        z, lam = torch.cat(zs), torch.cat(lams)
        x_k, counted_k = x.repeat(k, 1), counted.repeat(k, 1)
        integrand, usable = _integrand(kernel, denoise(denoiser, z, lam, with_log_snr), x_k, z, lam)
        bad = (~usable & counted_k).view(k, -1).any(-1)
        at = torch.arange(start, stop, device=x.device)
        first_bad = torch.minimum(first_bad, torch.where(bad, at, points).min())
        integrand = torch.where(counted_k, integrand.double(), 0.0).view(k, *x.shape)
        for j in range(k):  # point by point, in order: the same float64 sum for any points_per_call
            total += speeds[j].unsqueeze(-1) * integrand[j] / points
        if callback is not None:
            callback(stop, points)
    _check_result(total, first_bad, points)
    return LikelihoodOutput(per_token=total, per_sequence=total.sum(-1), num_tokens=counted.sum(-1))


def _integrand(kernel: Kernel, out: Tensor | HiddenStates, x: Tokens, z: Tokens, lam: Tensor) -> tuple[Tensor, Tensor]:
    """``w (KL + IS)`` per token (float32 or wider) from the denoiser's output, and where that
    output defines ``x_hat`` (bool, per token)."""
    if isinstance(out, HiddenStates):
        loss = gidd_from_hidden(kernel, out.hidden, out.head_weight, x, z, lam, validate=False)
        return loss.integrand, torch.isfinite(loss.logsumexp)
    check_logits_shape(out, z)
    return gidd(kernel, out, x, z, lam, validate=False).integrand, torch.isfinite(top_logit(out, kernel.mask_id))


def _check_result(total: Tensor, first_bad: Tensor, points: int) -> None:
    """One host sync for the whole estimate: NaN anywhere is an error, named by its cause."""
    nan, bad_point = torch.stack([torch.isnan(total).any().long(), first_bad]).tolist()
    if bad_point < points:
        raise NonFiniteError(f"the denoiser's logits are not usable (NaN or +inf, or -inf at every non-mask state) at "
                         f"counted positions, first at time point {bad_point} of {points}: the NELBO is undefined")
    if nan:
        raise NonFiniteError(f"the NELBO is NaN at {int(torch.isnan(total).sum())} tokens although the denoiser's logits "
                         f"were finite: the kernel's loss terms produced NaN (check the kernel with "
                         f"discdiff.testing.check_kernel)")


__all__ = ["HiddenStates", "LikelihoodOutput", "nelbo"]
