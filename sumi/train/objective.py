"""Sumi's training objective in one place: noise sampling and the loss terms.

Sources: docs/math.md, "Loss" and "Sumi recipe facts"; the Sumi paper (arXiv 2606.19005); von Rütte et al.,
"Scaling Behavior of Discrete Diffusion Language Models" (arXiv 2512.10858), Eqs. 1-5.

- Forward process: pure uniform noise over the **full** vocabulary (``discdiff.kernels.Uniform``,
  ``N = V``: every id, specials included, can be drawn as noise).
- Time: ``t ~ U(0, 1)`` with ``alpha = 1 - t``, so ``lambda = logit(1 - t)`` clamped to
  ``[-9, 9]`` (``discdiff.schedules.LinearAlpha``).  One ``t`` per sequence, except for a share of
  sequences that draw one ``t`` per token.
- Loss per token: the GIDD "unweighted ELBO" surrogate ``w KL + beta_IS w IS`` (``beta_IS = 1``)
  plus a z-loss ``1e-5 * logsumexp(logits)^2``, averaged over all non-ignored tokens (clean ones
  included: their ELBO weight handles them).
- Two ways to compute it, equal up to rounding: from the logits (:meth:`Objective.loss`), or
  fused with the output projection from the final hidden states
  (:meth:`Objective.loss_from_hidden`, ``discdiff.losses.gidd_from_hidden``), which never holds
  the ``[batch, seq, V]`` logits (nor the several float32 copies the loss would make of them).
  :meth:`Objective.model_loss` runs the model and picks the path set by ``fused``.

:meth:`Objective.loss` returns **sums** over the counted tokens and their count, never means, so
that a data-parallel caller can all-reduce both and divide by the *global* token count (a mean
of per-rank means is wrong whenever ranks count different numbers of tokens).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff.kernels import Uniform
from discdiff.losses import LossOutput, gidd, gidd_from_hidden
from discdiff.schedules import LinearAlpha
from sumi._checks import check_int, check_number


@dataclass(frozen=True)
class Noised:
    """One noising of a clean batch ``x`` (``[batch, seq]``).

    - ``z``: noisy tokens ``z ~ q_lambda(. | x)``, same shape and dtype as ``x``.
    - ``lam``: log-SNR per token, ``[batch, seq]`` float32 (constant along a row for sequences
      that drew one ``t``).
    - ``t``: the diffusion time per token, ``[batch, seq]`` float32 (``alpha = 1 - t`` before the clamp).
    - ``per_token``: bool ``[batch]``, the sequences that drew one ``t`` per token.
    """

    z: Tensor
    lam: Tensor
    t: Tensor
    per_token: Tensor


@dataclass(frozen=True)
class ObjectiveTerms:
    """Sums over the counted tokens (``mask``), in float32 or wider, and their count.

    - ``loss_sum``: ``sum (w KL + beta_is w IS + z_loss * logsumexp(logits)^2)``; carries the graph.
      Divide by the (global) ``num_tokens`` before ``backward``.
    - ``kl_sum``: ``sum w KL``; ``is_sum``: ``sum w IS`` (not scaled by ``beta_is``);
      ``z_loss_sum``: ``sum z_loss * logsumexp(logits)^2``.  These three are detached (metrics):
      ``loss_sum = kl_sum + beta_is * is_sum + z_loss_sum`` up to rounding.
    - ``num_tokens``: int64 scalar, the number of counted tokens.
    """

    loss_sum: Tensor
    kl_sum: Tensor
    is_sum: Tensor
    z_loss_sum: Tensor
    num_tokens: Tensor


class Objective:
    """Sumi's training objective (docs/math.md "Loss" / "Sumi recipe facts"; arXiv 2606.19005).

    Args:
        vocab_size: ``V``; the uniform kernel covers all ``V`` ids.
        per_token_share: probability that a sequence draws one ``t`` per token instead of one
            per sequence (a Bernoulli draw per sequence).
        z_loss: coefficient of ``logsumexp(logits)^2`` per token (Sumi: ``1e-5``).
        beta_is: weight of the Itakura-Saito term (``1`` gives the ELBO integrand).
        log_snr_min: the lower clamp of ``lambda`` (Sumi and GIDD-scaling: ``-9``).
        log_snr_max: the upper clamp of ``lambda`` (Sumi and GIDD-scaling: ``9``).
        fused: :meth:`model_loss` computes the loss from the model's hidden states and its
            ``lm_head.weight`` (:meth:`loss_from_hidden`) instead of from its logits.

    Randomness: :meth:`add_noise` takes its ``torch.Generator`` explicitly and never touches the
    global RNG.  The training loop seeds it from the run's seed and the step
    (:func:`sumi.train.loop.noise_seed`) and draws for the whole global batch, so the noise is a
    function of (seed, step, row of the global batch): a resumed run, or a run on another number
    of ranks, draws exactly the noise the uninterrupted one would have drawn.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        per_token_share: float = 0.5,
        z_loss: float = 1e-5,
        beta_is: float = 1.0,
        log_snr_min: float = -9.0,
        log_snr_max: float = 9.0,
        fused: bool = False,
    ) -> None:
        self.kernel = Uniform(vocab_size)
        self.vocab_size = self.kernel.vocab_size
        self.per_token_share = check_number("per_token_share", per_token_share, 0.0, 1.0)
        self.z_loss = check_number("z_loss", z_loss, 0.0)
        self.beta_is = check_number("beta_is", beta_is, 0.0)
        log_snr_min = check_number("log_snr_min", log_snr_min)
        log_snr_max = check_number("log_snr_max", log_snr_max)
        if not log_snr_min < log_snr_max:
            raise ValueError(f"log_snr_min ({log_snr_min}) must be smaller than log_snr_max ({log_snr_max})")
        self.schedule = LinearAlpha(log_snr_min=log_snr_min, log_snr_max=log_snr_max)
        if not isinstance(fused, bool):
            raise ValueError(f"fused must be a bool, got {fused!r}")
        self.fused = fused

    def __repr__(self) -> str:
        s = self.schedule
        return (f"Objective(vocab_size={self.vocab_size}, per_token_share={self.per_token_share}, "
                f"z_loss={self.z_loss}, beta_is={self.beta_is}, log_snr_min={s.log_snr_min}, "
                f"log_snr_max={s.log_snr_max}, fused={self.fused})")

    # -- noise ---------------------------------------------------------------------------------
    def add_noise(self, x: Tensor, generator: torch.Generator, *, offset: int = 0,
                  global_batch: int | None = None, validate: bool = True) -> Noised:
        """Noise a clean batch ``x`` (``[batch, seq]`` ids in ``[0, V)``): the forward process.

        ``t ~ U(0, 1)`` per sequence; a Bernoulli(``per_token_share``) draw per sequence picks
        the sequences that use an independent ``t ~ U(0, 1)`` per token instead.  Then
        ``lambda = logit(1 - t)`` clamped (``LinearAlpha().log_snr(t)``) and
        ``z = kernel.corrupt(x, lambda, generator)``.

        ``x`` may be the rows ``offset .. offset + batch - 1`` of a global batch of
        ``global_batch`` sequences (default: ``x`` is the whole batch).  The random numbers are
        then drawn for the whole global batch, in the same order, and sliced: a row's noise
        depends only on ``generator``'s state and the row's index in the global batch, not on
        how the batch is split among ranks and micro-batches (so one process and many compute
        the same step).

        ``generator`` is required (the caller's: the training loop seeds one per step).  The
        number of draws does not depend on ``per_token_share``, so the stream stays aligned
        across configurations.

        ``validate``: check that ``x`` holds ids in ``[0, V)`` (two reductions read by the host:
        a sync per call on an accelerator).  The training loop passes ``False``: its batches come
        from :class:`sumi.data.Loader`, which checks every id on the host where it is read.  Either
        way nothing else syncs: the drawn ``t`` is in ``[0, 1)`` by construction.
        """
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator (the caller owns the noise RNG), got {type(generator).__name__}")
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"x must be a [batch, seq] tensor, got {getattr(x, 'shape', type(x).__name__)}")
        self.kernel.check_clean(x, validate=validate)
        batch, seq = x.shape
        total = batch if global_batch is None else check_int("global_batch", global_batch, 1)
        check_int("offset", offset, 0, total - batch)
        device = x.device
        t_seq = torch.rand(total, generator=generator, device=device, dtype=torch.float64)
        t_tok = torch.rand(total, seq, generator=generator, device=device, dtype=torch.float64)
        per_token = torch.rand(total, generator=generator, device=device, dtype=torch.float64) < self.per_token_share
        t = torch.where(per_token.unsqueeze(-1), t_tok, t_seq.unsqueeze(-1))
        lam = self.schedule.log_snr(t, validate=False)  # t ~ U[0, 1): valid by construction
        rows = slice(offset, offset + batch)
        # the other rows' tokens only take the draws' places: the kernel draws for every row
        full = x if total == batch else x.new_zeros(total, seq).index_copy_(0, torch.arange(offset, offset + batch,
                                                                                              device=device), x)
        z = self.kernel.corrupt(full, lam, generator, validate=False)[rows]
        return Noised(z=z, lam=lam[rows].float(), t=t[rows].float(), per_token=per_token[rows])

    def sample(self, x: Tensor, generator: torch.Generator) -> Noised:
        """Deprecated name of :meth:`add_noise` (it noises data; it does not generate)."""
        warnings.warn("Objective.sample is deprecated: use Objective.add_noise", DeprecationWarning, stacklevel=2)
        return self.add_noise(x, generator)

    # -- loss ----------------------------------------------------------------------------------
    def model_loss(self, model, x: Tensor, noised: Noised, mask: Tensor | None = None, *,
                   validate: bool = True) -> ObjectiveTerms:
        """Run ``model`` on ``noised.z`` and return :meth:`loss_from_hidden` of its final hidden
        states and ``model.lm_head.weight`` (``fused=True``) or :meth:`loss` of its logits.

        ``model``: a :class:`sumi.Sumi` (plain or parallelized: under FSDP2 the root module keeps
        its parameters, the head included, gathered from its forward until the backward).
        ``validate``: as in :meth:`loss` (``False`` for ``noised`` from :meth:`add_noise` of a
        checked ``x``: then nothing here syncs with the host)."""
        if self.fused:
            hidden = model(noised.z, return_hidden=True)
            return self.loss_from_hidden(hidden, model.lm_head.weight, x, noised.z, noised.lam, mask,
                                         validate=validate)
        return self.loss(model(noised.z), x, noised.z, noised.lam, mask, validate=validate)

    def loss(self, logits: Tensor, x: Tensor, z: Tensor, lam: Tensor, mask: Tensor | None = None, *,
             validate: bool = True) -> ObjectiveTerms:
        """Sums of the per-token loss terms over the tokens selected by ``mask`` (bool
        ``[batch, seq]``, True = counted; ``None`` counts all).

        ``logits``: ``[batch, seq, V]`` from ``model(z)``; ``lam``: ``[batch]``, ``[batch, 1]`` or
        ``[batch, seq]``.  Per token: ``w KL + beta_is w IS`` (``discdiff.losses.gidd``, arXiv
        2512.10858 Eq. 5) ``+ z_loss * logsumexp(logits)^2`` (Sumi), all in float32 or wider
        (the logsumexp included, also for bf16 logits).  Besides the model's logits, the only
        vocabulary-sized tensors are those ``gidd`` needs (``log_softmax``) and the logsumexp's.
        ``validate``: check the ids of ``x`` and ``z`` and that ``lam`` is finite (host syncs);
        ``False`` where they come from :meth:`add_noise` of checked data.
        """
        self._check_mask(mask, x)
        out = gidd(self.kernel, logits, x, z, lam, self.beta_is, reduction="none", mask=mask, validate=validate)
        per_token = out.loss  # zero where not counted
        counted = torch.ones_like(per_token, dtype=torch.bool) if mask is None else mask
        if self.z_loss > 0:
            lse = torch.logsumexp(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
            z_term = torch.where(counted, self.z_loss * lse.to(per_token.dtype).square(), 0.0)
            per_token = per_token + z_term
        else:
            z_term = torch.zeros_like(per_token)
        return self._terms(out, per_token, z_term, counted, x)

    def loss_from_hidden(self, hidden: Tensor, head_weight: Tensor, x: Tensor, z: Tensor, lam: Tensor,
                         mask: Tensor | None = None, *, validate: bool = True) -> ObjectiveTerms:
        """:meth:`loss` of the logits ``hidden @ head_weight.T`` without materializing them.

        ``hidden``: ``[batch, seq, H]`` from ``model(z, return_hidden=True)``; ``head_weight``:
        ``[V, H]`` (``model.lm_head.weight``), same dtype.  The loss and the z-loss come from
        ``discdiff.losses.gidd_from_hidden`` (chunked over tokens and the vocabulary, float32
        accumulation; docs/math.md, "Memory-light form of the KL"); gradients reach ``hidden`` and ``head_weight``.
        ``validate``: as in :meth:`loss`.
        """
        self._check_mask(mask, x)
        out = gidd_from_hidden(self.kernel, hidden, head_weight, x, z, lam, self.beta_is, reduction="none",
                               mask=mask, z_loss=self.z_loss, validate=validate)
        per_token = out.loss  # the z-loss included; zero where not counted
        counted = torch.ones_like(per_token, dtype=torch.bool) if mask is None else mask
        if self.z_loss > 0:
            z_term = torch.where(counted, self.z_loss * out.logsumexp.detach().square(), 0.0)
        else:
            z_term = torch.zeros_like(per_token)
        return self._terms(out, per_token, z_term, counted, x)

    @staticmethod
    def _check_mask(mask: Tensor | None, x: Tensor) -> None:
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise TypeError("mask must be a bool tensor (True = counted)")
            if mask.shape != x.shape:
                raise ValueError(f"mask has shape {tuple(mask.shape)} but x has shape {tuple(x.shape)}")

    @staticmethod
    def _terms(out: LossOutput, per_token: Tensor, z_term: Tensor, counted: Tensor, x: Tensor) -> ObjectiveTerms:
        dtype = per_token.dtype
        zero = torch.zeros((), dtype=dtype, device=per_token.device)
        with torch.no_grad():
            w = out.weight.to(dtype)
            kl_sum = torch.where(counted, w * out.kl, zero).sum()
            is_sum = torch.where(counted, w * out.is_div, zero).sum()
        num_tokens = torch.as_tensor(counted.sum(), dtype=torch.int64, device=x.device)
        return ObjectiveTerms(loss_sum=per_token.sum(), kl_sum=kl_sum, is_sum=is_sum,
                              z_loss_sum=z_term.detach().sum(), num_tokens=num_tokens)


__all__ = ["Objective", "Noised", "ObjectiveTerms"]
