"""The kernel interface: a forward (noising) process in log-SNR form.

``q_lambda(z | x) = sigmoid(lambda) e_x + sigmoid(-lambda) pi_lambda`` (docs/math.md, "Forward
process and kernels"; von Rütte et al., arXiv 2503.04482 Eq. 1 and arXiv 2512.10858 Eq. 1).

A family only says what its mixing distribution ``pi_lambda`` is (:meth:`Kernel.pi` and its
lambda-derivative :meth:`Kernel.dpi`); draws, marginals, transitions, posteriors and loss
weights are derived here once for every family.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from discdiff._checks import (
    align_log_snr,
    as_log_snr,
    broadcast_base,
    check_int,
    check_log_snr,
    check_mask_id,
    check_same_shape,
    check_tokens,
    check_vocab_dim,
    check_vocab_size,
    compute_dtype,
)
from discdiff.typing import Logits, LogSNR, PerToken, Probs, Tokens

SAMPLE_CHUNK = 64  # distinct log-SNRs per float64 CDF block in the default sample_pi (64 x V x 8 bytes)


class _ChecksAfterInit(ABCMeta):
    """Validates ``vocab_size`` and ``mask_id`` once the whole ``__init__`` chain has returned
    (also for dataclass kernels, whose ``__init__`` is generated after class creation)."""

    def __call__(cls, *args, **kwargs):
        kernel = super().__call__(*args, **kwargs)
        _check_kernel_attributes(kernel)
        return kernel


def _check_kernel_attributes(kernel: Kernel) -> None:
    name = type(kernel).__name__
    if not hasattr(kernel, "vocab_size"):
        raise TypeError(f"{name} does not set vocab_size: a Kernel must set self.vocab_size (the number "
                        f"of states, an int >= 2) in __init__")
    if not hasattr(kernel, "mask_id"):
        raise TypeError(f"{name} does not set mask_id: a Kernel must set self.mask_id (None, or the id of "
                        f"its absorbing mask state) in __init__")
    try:
        check_vocab_size(kernel.vocab_size)
        if kernel.mask_id is not None:
            check_mask_id(kernel.mask_id, kernel.vocab_size)
    except (TypeError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from None


class Kernel(metaclass=_ChecksAfterInit):
    """A discrete forward process ``q_lambda(z | x)`` over ``vocab_size`` states.

    A subclass sets ``self.vocab_size`` (an int >= 2) and ``self.mask_id`` (``None``, or the id
    of an absorbing mask state that clean data never takes) in ``__init__``, checked as soon as
    the object is built, and implements :meth:`pi` and :meth:`dpi`.  Everything else has a
    default: :meth:`sample_pi` (an inverse-CDF draw), the gathered forms :meth:`pi_at` and
    :meth:`dpi_at` and :meth:`noise_log1p_sum`, which evaluate :meth:`pi` once per distinct
    ``lambda`` (``[batch, 1, V]`` for a per-sequence ``lambda``, never ``[batch, seq, V]``).
    Families override them where a closed form avoids ``[..., V]`` tensors altogether.
    """

    vocab_size: int
    mask_id: int | None

    # -- the mixing distribution: what a family defines ------------------------------------
    @abstractmethod
    def pi(self, lam: LogSNR) -> Probs:
        """``pi_lambda`` as a ``[*lam.shape, V]`` tensor (possibly an expanded view), in
        ``lam``'s dtype; defined at ``lambda = +-inf`` too (``-inf``: the prior)."""

    @abstractmethod
    def dpi(self, lam: LogSNR) -> Tensor:
        """``d pi_lambda / d lambda`` as a ``[*lam.shape, V]`` tensor (sums to 0), in ``lam``'s dtype."""

    def sample_pi(self, lam: LogSNR, generator: torch.Generator | None = None) -> Tokens:
        """One draw from ``pi_lambda`` at every element of ``lam`` (int64, ``lam.shape``).

        The default is the inverse CDF of :meth:`pi` in float64 (as in docs/math.md, "The denoised
        distribution"): ``pi`` is evaluated once per distinct value of ``lam``, at most 64 values
        (64 ``[V]`` rows) at a time, so memory is bounded by the number of distinct log-SNRs, not
        by ``lam.numel()``.  Finding the distinct values synchronizes with the host; families
        override this with a direct draw.
        """
        shape, device = lam.shape, lam.device
        u = torch.rand(shape, generator=generator, device=device, dtype=torch.float64).reshape(-1)
        out = torch.zeros(u.shape, dtype=torch.long, device=device)
        if u.numel() == 0:
            return out.reshape(shape)
        base = broadcast_base(lam)
        values, inverse = torch.unique(base.reshape(-1), return_inverse=True)
        rows = inverse.reshape(base.shape).expand(shape).reshape(-1)
        order = rows.argsort()
        sorted_rows = rows[order]
        starts = torch.arange(0, values.numel() + SAMPLE_CHUNK, SAMPLE_CHUNK, device=device)
        bounds = torch.searchsorted(sorted_rows, starts.clamp_max(values.numel())).tolist()  # elements per block
        V = self.vocab_size
        for chunk, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            if lo == hi:
                continue
            first = chunk * SAMPLE_CHUNK
            probs = self.pi(values[first:first + SAMPLE_CHUNK].to(torch.float64)).to(torch.float64)
            cdf = probs.cumsum(-1)
            cdf = cdf / cdf[:, -1:]
            # one non-decreasing sequence: row r's CDF shifted into [r, r + 1] (at most 6 bits of
            # float64 lost, below the cumsum's own rounding); zero-probability states stay tied
            offsets = torch.arange(cdf.shape[0], dtype=torch.float64, device=device).unsqueeze(-1)
            flat = (cdf + offsets).reshape(-1)
            last = V - 1 - (probs > 0).flip(-1).to(torch.uint8).argmax(-1)  # last state with mass, per row
            idx = order[lo:hi]
            r = sorted_rows[lo:hi] - first
            pos = torch.searchsorted(flat, r.to(torch.float64) + u[idx], right=True) - r * V
            out[idx] = torch.minimum(pos, last[r])
        return out.reshape(shape)

    def sample_prior(self, shape: Sequence[int] | int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> Tokens:
        """A draw from the prior ``pi_{-inf}`` (``lambda = -inf``) of the given shape, int64: the
        canvas sampling starts from (docs/math.md, "Prior")."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        for n in shape:
            check_int(f"every entry of shape {shape}", n, lo=0)
        lam = torch.tensor(-math.inf, dtype=torch.float64, device=device).expand(shape)
        return self.sample_pi(lam, generator)

    def pi_at(self, lam: LogSNR, idx: Tokens) -> Tensor:
        """``pi_lambda(idx)`` gathered elementwise (``lam`` and ``idx`` broadcast); :meth:`pi` is
        evaluated once per distinct ``lambda`` (:func:`broadcast_base`)."""
        lam, idx = torch.broadcast_tensors(lam, idx)
        return _gather(self.pi(broadcast_base(lam)), idx)

    def dpi_at(self, lam: LogSNR, idx: Tokens) -> Tensor:
        """``d pi_lambda(idx) / d lambda`` gathered elementwise, like :meth:`pi_at`."""
        lam, idx = torch.broadcast_tensors(lam, idx)
        return _gather(self.dpi(broadcast_base(lam)), idx)

    def pi_slice(self, lam: LogSNR, start: int, stop: int) -> Tensor:
        """``pi_lambda`` on the states ``start .. stop - 1`` only, as any tensor that broadcasts
        to ``[*lam.shape, stop - start]``: ``[*lam.shape, 1]`` where ``pi`` is the same on every
        state of the slice, ``[stop - start]`` where it does not depend on ``lambda``, else
        ``[*lam.shape, stop - start]``.  Chunked losses (:func:`discdiff.losses.gidd_from_hidden`)
        read ``pi`` through this, one vocabulary chunk at a time; the default slices :meth:`pi`,
        so override it where :meth:`pi` builds a full ``[..., V]`` tensor.
        """
        _check_slice(start, stop, self.vocab_size)
        return self.pi(lam)[..., start:stop]

    def noise_log1p_sum(self, lam: LogSNR, log_x0: Tensor) -> Tensor:
        """``T = sum_j c_j log1p(alpha x_hat_j / c_j)`` with ``c = sigmoid(-lambda) pi_lambda``
        (terms with ``c_j = 0`` are 0): the one vocabulary reduction the KL needs beyond the
        gathers (docs/math.md, "Memory-light form of the KL").  ``lam`` is ``[*shape]``, ``log_x0``
        ``[*shape, V]``.  The default evaluates :meth:`pi` once per distinct ``lambda``.
        """
        small = broadcast_base(lam)
        log_c = F.logsigmoid(-small).unsqueeze(-1) + torch.log(self.pi(small).to(log_x0.dtype))
        positive = torch.isfinite(log_c)
        log_c_safe = torch.where(positive, log_c, torch.zeros_like(log_c))
        weight = torch.where(positive, torch.exp(log_c_safe), torch.zeros_like(log_c_safe))
        log_ratio = log_x0 - log_c_safe
        log_ratio.add_(F.logsigmoid(lam).unsqueeze(-1).to(log_ratio.dtype))  # a fresh tensor: no copy
        zero = torch.zeros((), dtype=log_ratio.dtype, device=log_ratio.device)
        return _dot_last(torch.logaddexp(log_ratio, zero), weight)

    # -- derived, shared by every family -----------------------------------------------------
    def x0_log_probs(self, logits: Logits) -> Tensor:
        """``log x_hat = log_softmax(logits)`` with the mask logit set to ``-inf`` (the
        denoiser never predicts the mask state as the clean token), in float32 or wider."""
        logits = logits.to(compute_dtype(logits))
        if self.mask_id is not None:
            logits = logits.index_fill(-1, torch.tensor([self.mask_id], device=logits.device), float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    def marginal(self, x: Tokens, lam: LogSNR | float, *, validate: bool = True) -> Probs:
        """``q_lambda(. | x) = sigmoid(lambda) e_x + sigmoid(-lambda) pi_lambda`` as ``[*x.shape, V]``.

        ``lam`` (a tensor or a Python float) may be ``+-inf`` (the endpoints: ``e_x`` and the prior).
        """
        check_tokens("x", x, self.vocab_size, forbid=self.mask_id, validate=validate)
        lam = as_log_snr("lam", lam, x)
        check_log_snr("lam", lam, allow_inf=True, validate=validate)
        lam = align_log_snr("lam", lam, x.shape)
        onehot = F.one_hot(x.long(), self.vocab_size).to(lam.dtype)
        return self.marginal_of_probs(onehot, lam)

    def marginal_of_probs(self, x0_probs: Probs, lam: LogSNR) -> Probs:
        """``q_lambda(. | x_hat) = sigmoid(lambda) x_hat + sigmoid(-lambda) pi_lambda`` (linear in x_hat)."""
        alpha = torch.sigmoid(lam).unsqueeze(-1)
        beta = torch.sigmoid(-lam).unsqueeze(-1)
        return alpha * x0_probs + beta * self.pi(broadcast_base(lam)).to(x0_probs.dtype)

    def corrupt(
        self,
        x: Tokens,
        lam: LogSNR | float,
        generator: torch.Generator | None = None,
        *,
        validate: bool = True,
    ) -> Tokens:
        """A draw ``z ~ q_lambda(. | x)``: keep ``x`` with probability ``alpha``, else draw from
        ``pi_lambda``.  ``lam`` is per sequence (``[batch]``, ``[batch, 1]``), per token, or one
        Python float for every token.  For a draw from the prior use :meth:`sample_prior`."""
        check_tokens("x", x, self.vocab_size, forbid=self.mask_id, validate=validate)
        lam = as_log_snr("lam", lam, x)
        check_log_snr("lam", lam, allow_inf=True, validate=validate)
        lam = align_log_snr("lam", lam, x.shape)
        # The keep/noise decision in float64: sigmoid(lambda) at |lambda| = 9 is 1.2e-4 from 1.
        keep = torch.rand(x.shape, generator=generator, device=x.device, dtype=torch.float64)
        keep = keep < torch.sigmoid(lam.to(torch.float64))
        noise = self.sample_pi(lam, generator)
        return torch.where(keep, x, noise.to(x.dtype))

    def transition(self, lam_t: LogSNR, lam_s: LogSNR) -> tuple[Tensor, Tensor]:
        """``q_{t|s}(z_t | z_s) = alpha_{t|s} [z_t = z_s] + (beta pi)_{t|s}(z_t)`` for ``lam_s >= lam_t``.

        Returns ``alpha_{t|s} = alpha_t / alpha_s`` (``[*shape]``) and
        ``(beta pi)_{t|s} = beta_t pi_t - alpha_{t|s} beta_s pi_s`` (``[*shape, V]``; docs/math.md,
        "Transition").  The kernel is a valid Markov kernel where the latter is non-negative.
        """
        lam_t, lam_s = torch.broadcast_tensors(lam_t, lam_s)
        alpha_ts = torch.exp(F.logsigmoid(lam_t) - F.logsigmoid(lam_s))
        noise_t = torch.sigmoid(-lam_t).unsqueeze(-1) * self.pi(broadcast_base(lam_t))
        noise_s = torch.sigmoid(-lam_s).unsqueeze(-1) * self.pi(broadcast_base(lam_s))
        return alpha_ts, noise_t - alpha_ts.unsqueeze(-1) * noise_s

    def posterior(
        self,
        x0_probs: Probs,
        z_t: Tokens,
        lam_t: LogSNR,
        lam_s: LogSNR,
        *,
        validate: bool = True,
    ) -> Probs:
        """``p(z_s = j | z_t) = q_s(j | x_hat) q_{t|s}(z_t | j) / q_t(z_t | x_hat)`` with ``x_hat``
        plugged in (docs/math.md, "Samplers"), as ``[*z_t.shape, V]``; ``lam_s >= lam_t`` (cleaner).

        It is a scaled copy of ``q_s(. | x_hat)`` plus extra mass ``alpha_{t|s} q_s(z_t | x_hat)``
        at ``z_t``; the normalizer is ``q_t(z_t | x_hat)``.  ``x0_probs`` must put no mass on
        the mask state.
        """
        check_tokens("z_t", z_t, self.vocab_size, validate=validate)
        check_log_snr("lam_t", lam_t, allow_inf=True, validate=validate)
        check_log_snr("lam_s", lam_s, allow_inf=True, validate=validate)
        check_vocab_dim("x0_probs", x0_probs, self.vocab_size, z_t.shape)
        lam_t = align_log_snr("lam_t", lam_t, z_t.shape)
        lam_s = align_log_snr("lam_s", lam_s, z_t.shape)
        if validate and not torch.compiler.is_compiling() and bool((lam_s < lam_t).any()):
            raise ValueError("lam_s must be >= lam_t: the posterior steps from noisy (t) to cleaner (s)")
        dtype = compute_dtype(x0_probs, lam_t, lam_s)
        x0_probs, lam_t, lam_s = x0_probs.to(dtype), lam_t.to(dtype), lam_s.to(dtype)
        idx = z_t.long().unsqueeze(-1)
        q_s = self.marginal_of_probs(x0_probs, lam_s)
        alpha_ts, noise_ts = self.transition(lam_t, lam_s)
        noise_ts_at_z = noise_ts.gather(-1, idx)
        unnorm = q_s * noise_ts_at_z
        stay = alpha_ts.unsqueeze(-1) * q_s.gather(-1, idx)
        unnorm = unnorm.scatter_add(-1, idx, stay)
        return unnorm / unnorm.sum(-1, keepdim=True)

    def weight(self, x: Tokens, z: Tokens, lam: LogSNR) -> PerToken:
        """The ELBO weight per unit log-SNR, ``w = (pi_z - pi'_z) / (pi_z + e^lambda [z = x])``
        (von Rütte et al., arXiv 2512.10858, Prop. 1 / Eq. 4).  ``z`` must lie in the support of
        ``q_lambda(. | x)``.  ``lam`` is already broadcast to the token shape."""
        pi_z = self.pi_at(lam, z)
        dpi_z = self.dpi_at(lam, z)
        clean = (z == x).to(pi_z.dtype)
        return (pi_z - dpi_z) / (pi_z + torch.exp(lam) * clean)

    # -- bookkeeping -----------------------------------------------------------------------
    def check_clean(self, x: Tokens, *, validate: bool = True) -> None:
        """Raise if ``x`` is not a valid tensor of clean token ids for this kernel."""
        check_tokens("x", x, self.vocab_size, forbid=self.mask_id, validate=validate)

    def check_pair(self, x: Tokens, z: Tokens, *, validate: bool = True) -> None:
        check_tokens("x", x, self.vocab_size, forbid=self.mask_id, validate=validate)
        check_tokens("z", z, self.vocab_size, validate=validate)
        check_same_shape("x", x, "z", z)


def _dot_last(values: Tensor, weight: Tensor) -> Tensor:
    """``sum_j values[..., j] weight[..., j]`` for a ``weight`` that broadcasts against ``values``
    (``[*shape, V]``).  Where ``weight`` varies only along leading dimensions (per sequence, or
    one for all) it is a batched matrix product, so no ``[*shape, V]`` product is built."""
    shape, V = values.shape[:-1], values.shape[-1]
    wshape = (1,) * (len(shape) - (weight.dim() - 1)) + tuple(weight.shape[:-1])
    lead = 0
    while lead < len(shape) and wshape[lead] == shape[lead]:
        lead += 1
    if any(n != 1 for n in wshape[lead:]):
        return (values * weight).sum(-1)
    groups = math.prod(shape[:lead])
    rows = values.reshape(groups, math.prod(shape[lead:]), V)
    return torch.matmul(rows, weight.to(values.dtype).reshape(groups, V, 1)).reshape(shape)


def _gather(table: Tensor, idx: Tensor) -> Tensor:
    """``table[..., idx]`` elementwise, for a ``table`` that broadcasts to ``[*idx.shape, V]``
    (expanded, not copied)."""
    table = table.expand(*idx.shape, table.shape[-1])
    return table.gather(-1, idx.long().unsqueeze(-1)).squeeze(-1)


def _check_slice(start: int, stop: int, vocab_size: int) -> None:
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= vocab_size):
        raise ValueError(f"need integers 0 <= start < stop <= {vocab_size}, got start={start!r}, stop={stop!r}")
