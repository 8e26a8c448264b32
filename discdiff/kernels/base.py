"""The kernel interface: a forward (noising) process in log-SNR form.

``q_lambda(z | x) = sigmoid(lambda) e_x + sigmoid(-lambda) pi_lambda``  (docs/math.md, "Forward process and kernels"; von Rütte et al., arXiv 2503.04482 Eq. 1 and arXiv 2512.10858 Eq. 1).

A family only says what its mixing distribution ``pi_lambda`` is (:meth:`Kernel.pi`, its
lambda-derivative :meth:`Kernel.dpi`, and how to draw from it); marginals, transitions,
posteriors and loss weights are derived here once for every family.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor

from discdiff._checks import (
    align_log_snr,
    check_log_snr,
    check_same_shape,
    check_tokens,
    check_vocab_dim,
    compute_dtype,
)
from discdiff._typing import Logits, LogSNR, PerToken, Probs, Tokens


class Kernel(ABC):
    """A discrete forward process ``q_lambda(z | x)`` over ``vocab_size`` states.

    Subclasses implement :meth:`pi`, :meth:`dpi` and :meth:`sample_pi`; they may override the
    gathered forms (:meth:`pi_at`, :meth:`dpi_at`) and :meth:`noise_log1p_sum` to avoid
    building ``[..., V]`` tensors.  ``mask_id`` is ``None`` for kernels without a mask state.
    """

    vocab_size: int
    mask_id: int | None

    # -- the mixing distribution: what a family defines ------------------------------------
    @abstractmethod
    def pi(self, lam: LogSNR) -> Probs:
        """``pi_lambda`` as a ``[*lam.shape, V]`` tensor (possibly an expanded view)."""

    @abstractmethod
    def dpi(self, lam: LogSNR) -> Tensor:
        """``d pi_lambda / d lambda`` as a ``[*lam.shape, V]`` tensor (sums to 0)."""

    @abstractmethod
    def sample_pi(self, lam: LogSNR, generator: torch.Generator | None = None) -> Tokens:
        """One draw from ``pi_lambda`` at every element of ``lam``."""

    def pi_at(self, lam: LogSNR, idx: Tokens) -> Tensor:
        """``pi_lambda(idx)`` gathered elementwise (``lam`` and ``idx`` broadcast)."""
        lam, idx = torch.broadcast_tensors(lam, idx)
        return self.pi(lam).gather(-1, idx.long().unsqueeze(-1)).squeeze(-1)

    def dpi_at(self, lam: LogSNR, idx: Tokens) -> Tensor:
        """``d pi_lambda(idx) / d lambda`` gathered elementwise."""
        lam, idx = torch.broadcast_tensors(lam, idx)
        return self.dpi(lam).gather(-1, idx.long().unsqueeze(-1)).squeeze(-1)

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
        gathers (docs/math.md, "Memory-light form of the KL").  ``lam`` is ``[*shape]``, ``log_x0`` ``[*shape, V]``.
        """
        log_c = F.logsigmoid(-lam).unsqueeze(-1) + torch.log(self.pi(lam).to(log_x0.dtype))
        positive = torch.isfinite(log_c)
        log_c_safe = torch.where(positive, log_c, torch.zeros_like(log_c))
        log_ratio = F.logsigmoid(lam).unsqueeze(-1) + log_x0 - log_c_safe
        terms = torch.exp(log_c_safe) * torch.logaddexp(log_ratio, torch.zeros_like(log_ratio))
        return torch.where(positive, terms, torch.zeros_like(terms)).sum(-1)

    # -- derived, shared by every family -----------------------------------------------------
    def x0_log_probs(self, logits: Logits) -> Tensor:
        """``log x_hat = log_softmax(logits)`` with the mask logit set to ``-inf`` (the
        denoiser never predicts the mask state as the clean token), in float32 or wider."""
        logits = logits.to(compute_dtype(logits))
        if self.mask_id is not None:
            logits = logits.index_fill(-1, torch.tensor([self.mask_id], device=logits.device), float("-inf"))
        return torch.log_softmax(logits, dim=-1)

    def marginal(self, x: Tokens, lam: LogSNR, *, validate: bool = True) -> Probs:
        """``q_lambda(. | x) = sigmoid(lambda) e_x + sigmoid(-lambda) pi_lambda`` as ``[*x.shape, V]``.

        ``lam`` may be ``+-inf`` (the endpoints: ``e_x`` and the prior).
        """
        check_tokens("x", x, self.vocab_size, forbid=self.mask_id, validate=validate)
        check_log_snr("lam", lam, allow_inf=True, validate=validate)
        lam = align_log_snr("lam", lam, x.shape)
        onehot = F.one_hot(x.long(), self.vocab_size).to(lam.dtype)
        return self.marginal_of_probs(onehot, lam)

    def marginal_of_probs(self, x0_probs: Probs, lam: LogSNR) -> Probs:
        """``q_lambda(. | x_hat) = sigmoid(lambda) x_hat + sigmoid(-lambda) pi_lambda`` (linear in x_hat)."""
        alpha = torch.sigmoid(lam).unsqueeze(-1)
        beta = torch.sigmoid(-lam).unsqueeze(-1)
        return alpha * x0_probs + beta * self.pi(lam).to(x0_probs.dtype)

    def corrupt(
        self,
        x: Tokens,
        lam: LogSNR,
        generator: torch.Generator | None = None,
        *,
        validate: bool = True,
    ) -> Tokens:
        """A draw ``z ~ q_lambda(. | x)``: keep ``x`` with probability ``alpha``, else draw from
        ``pi_lambda``.  ``lam`` is per sequence (``[batch]``, ``[batch, 1]``) or per token."""
        check_tokens("x", x, self.vocab_size, forbid=self.mask_id, validate=validate)
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
        ``(beta pi)_{t|s} = beta_t pi_t - alpha_{t|s} beta_s pi_s`` (``[*shape, V]``); docs/math.md.
        The kernel is a valid Markov kernel where the latter is non-negative.
        """
        lam_t, lam_s = torch.broadcast_tensors(lam_t, lam_s)
        alpha_ts = torch.exp(F.logsigmoid(lam_t) - F.logsigmoid(lam_s))
        noise_t = torch.sigmoid(-lam_t).unsqueeze(-1) * self.pi(lam_t)
        noise_s = torch.sigmoid(-lam_s).unsqueeze(-1) * self.pi(lam_s)
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


def _check_slice(start: int, stop: int, vocab_size: int) -> None:
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= vocab_size):
        raise ValueError(f"need integers 0 <= start < stop <= {vocab_size}, got start={start!r}, stop={stop!r}")
