"""The training objective of every family in one place: noise sampling and the loss terms.

Sources: docs/math.md, "Loss", "Family objectives" and "Sumi recipe facts"; the Sumi paper (arXiv
2606.19005); von Rütte et al., "Scaling Behavior of Discrete Diffusion Language Models" (arXiv
2512.10858), Eqs. 1-5; MDLM (Sahoo et al. 2024, arXiv 2406.07524, Eq. 10); Sahoo et al. 2026
("Scaling Beyond Masked Diffusion Language Models", arXiv 2602.15014).  The families are those of
docs/training.md, "Families"; :func:`build_objective` turns a :class:`~sumi.configs.TrainConfig`
into its objective, with the kernel from :func:`sumi.family.kernel_for`.

- :class:`Objective` (``uniform``, ``masked``, ``hybrid``): diffusion noise (the family's kernel;
  Sumi's is pure uniform noise over the **full** vocabulary) and the GIDD surrogate
  ``w KL + beta_IS w IS`` (``beta_IS = 1``) per unit log-SNR; ``masked`` trains it in time
  (``in_time=True``: times ``|d lambda/dt|``), which for the ``Masked`` kernel is MDLM's ELBO,
  ``CE / t`` on masked tokens.
- :class:`MaskedCEObjective` (``masked-ce``): the same masked noise, the plain cross-entropy
  ``[z = m] (-log x_hat_x)`` without a weight.
- :class:`AutoregressiveObjective` (``ar``): no noise; next-token cross-entropy of a causal model
  (position ``i`` predicts ``x[i + 1]``: ``seq_len - 1`` counted tokens per row).

Every diffusion family draws its noise levels alike (:class:`DiffusionObjective`): ``t ~ U(0, 1)``
with ``alpha = 1 - t``, so ``lambda = logit(1 - t)`` clamped to ``[-9, 9]``
(``discdiff.schedules.LinearAlpha``); one ``t`` per sequence, except for a share of sequences
that draw one ``t`` per token.  Every family adds the z-loss ``z_loss * logsumexp(logits)^2``
(over all ``V`` logits) on every counted token.

Two ways to compute each loss, equal up to rounding: from the logits (``loss``), or fused with
the output projection from the final hidden states (``loss_from_hidden``:
``discdiff.losses.gidd_from_hidden`` and ``discdiff.losses.cross_entropy_from_hidden``), which
never holds the ``[batch, seq, V]`` logits.  ``model_loss`` runs the model and picks the path set
by ``fused``.

The losses return **sums** over the counted tokens and their count (:class:`ObjectiveTerms`), never
means, so that a data-parallel caller can all-reduce both and divide by the *global* token count
(a mean of per-rank means is wrong whenever ranks count different numbers of tokens).

Prompted rows (docs/training.md, "Conditional training (condition dropout)"): ``add_noise(...,
prompt_lengths=P)`` keeps each row's first ``P`` tokens, the condition, clean and out of the loss
(:attr:`Noised.counted`), and hides the prompt of a share ``cond_dropout`` of the rows from
attention (:attr:`Noised.attention_mask`): the unconditional branch of one model trained for
classifier-free guidance (Ho & Salimans 2022, arXiv 2207.12598; docs/math.md, "Guidance").
"""

from __future__ import annotations

import dataclasses
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from discdiff._checks import align_log_snr, check_tokens
from discdiff.kernels import Kernel, Masked, Uniform
from discdiff.losses import cross_entropy_from_hidden, gidd, gidd_from_hidden, masked_ce
from discdiff.schedules import LinearAlpha
from sumi._checks import check_int, check_number
from sumi.configs.train import TrainConfig
from sumi.family import kernel_for


def _check_prompt_range(lengths: np.ndarray, seq_len: int) -> None:
    """Every prompt length ``P`` (host integers) in ``[0, seq_len)``: a prompt leaves at least one
    token of its row to score."""
    bad = np.flatnonzero((lengths < 0) | (lengths >= seq_len))
    if bad.size:
        raise ValueError(f"prompt_lengths[{int(bad[0])}] is {int(lengths[bad[0]])}, outside [0, seq_len={seq_len}): "
                         "a prompt must leave at least one token of its row to score")


@dataclass(frozen=True)
class Noised:
    """One noising of a clean batch ``x`` (``[batch, seq]``).

    - ``z``: noisy tokens ``z ~ q_lambda(. | x)``, same shape and dtype as ``x`` (``x`` itself
      for the autoregressive family, which has no noise).
    - ``lam``: log-SNR per token, ``[batch, seq]`` float32 (constant along a row for sequences
      that drew one ``t``; ``+inf``, clean, for the autoregressive family).
    - ``t``: the diffusion time per token, ``[batch, seq]`` float32 (``alpha = 1 - t`` before the
      clamp; 0 for the autoregressive family).
    - ``per_token``: bool ``[batch]``, the sequences that drew one ``t`` per token.
    - ``counted``: bool ``[batch, seq]``, the positions the loss may count: False on each row's
      prompt (and, for the autoregressive family, on position 0, never a target); ``None``
      (rows without prompts): every position.
    - ``attention_mask``: bool ``[batch, seq]`` for the model, False at the prompt positions of
      the rows whose prompt is hidden (condition dropout: the unconditional branch); ``None``:
      nothing hidden.

    On a prompt position ``z == x`` (the condition is never noised); ``lam`` and ``t`` there are
    the draws', unused (the position is not counted).
    """

    z: Tensor
    lam: Tensor
    t: Tensor
    per_token: Tensor
    counted: Tensor | None = None
    attention_mask: Tensor | None = None


@dataclass(frozen=True)
class ObjectiveTerms:
    """Sums over the counted tokens (``mask``), in float32 or wider, and their count; the same
    shape for every family (what the parts hold per family: docs/training.md, "Families").

    - ``loss_sum``: the summed training loss, the z-loss included; carries the graph.  Divide by
      the (global) ``num_tokens`` before ``backward``.
    - ``kl_sum``: the data term: ``sum w KL`` for the GIDD families, the summed cross-entropy for
      ``masked-ce`` (0 on unmasked tokens) and ``ar``.
    - ``is_sum``: ``sum w IS`` for the GIDD families (not scaled by ``beta_is``); 0 for the
      cross-entropy families.
    - ``z_loss_sum``: ``sum z_loss * logsumexp(logits)^2``.
      ``kl_sum``, ``is_sum`` and ``z_loss_sum`` are detached (metrics):
      ``loss_sum = kl_sum + beta_is * is_sum + z_loss_sum`` up to rounding.
    - ``num_tokens``: int64 scalar, the number of counted tokens.
    """

    loss_sum: Tensor
    kl_sum: Tensor
    is_sum: Tensor
    z_loss_sum: Tensor
    num_tokens: Tensor


class TrainingObjective(ABC):
    """What the training loop asks of a family's objective (:func:`build_objective` builds one).

    - :meth:`add_noise` turns a clean batch into the model's input (:class:`Noised`);
    - :meth:`model_loss` runs the model on it and returns the :class:`ObjectiveTerms`;
    - :meth:`counted_per_row` and :meth:`counted_tokens` are the number of tokens a row, or a
      global batch of prompted rows, counts, so that the loop divides by the global count
      without reading it from the device.

    Args:
        vocab_size: ``V``, the model's vocabulary.
        z_loss: coefficient of ``logsumexp(logits)^2`` per counted token (Sumi: ``1e-5``).
        fused: :meth:`model_loss` computes the loss from the model's hidden states and its
            ``lm_head.weight`` instead of from its logits (no ``[batch, seq, V]`` tensor).
        cond_dropout: the probability that a prompted row's prompt is hidden from attention
            (condition dropout, in ``[0, 1]``; docs/training.md, "Conditional training
            (condition dropout)").
    """

    first_target: int = 0
    """The first position of a row that can count: 0, or 1 for the autoregressive family (its
    first token is never a target)."""

    def __init__(self, vocab_size: int, *, z_loss: float, fused: bool, cond_dropout: float = 0.0) -> None:
        self.vocab_size = check_int("vocab_size", vocab_size, 2)
        self.z_loss = check_number("z_loss", z_loss, 0.0)
        if not isinstance(fused, bool):
            raise ValueError(f"fused must be a bool, got {fused!r}")
        self.fused = fused
        self.cond_dropout = check_number("cond_dropout", cond_dropout, 0.0, 1.0)

    @abstractmethod
    def add_noise(self, x: Tensor, generator: torch.Generator, *, offset: int = 0,
                  global_batch: int | None = None, validate: bool = True,
                  prompt_lengths: Tensor | None = None) -> Noised:
        """The model's input for the clean rows ``x`` (``[batch, seq]``), rows ``offset ..
        offset + batch - 1`` of a global batch of ``global_batch`` sequences; ``prompt_lengths``
        (long ``[batch]``): each row's prompt length ``P``, its first ``P`` tokens the condition."""

    @abstractmethod
    def model_loss(self, model, x: Tensor, noised: Noised, mask: Tensor | None = None, *,
                   validate: bool = True) -> ObjectiveTerms:
        """Run ``model`` on ``noised`` and return the loss terms of the clean batch ``x``."""

    def counted_per_row(self, seq_len: int) -> int:
        """Tokens counted in a row of ``seq_len`` tokens without a mask or a prompt: ``seq_len -
        first_target`` (all of them for the diffusion families, ``seq_len - 1`` for ``ar``: the
        last position has no next token to predict)."""
        return check_int("seq_len", seq_len, self.first_target + 1) - self.first_target

    def counted_tokens(self, seq_len: int, prompt_lengths: np.ndarray | None, rows: int) -> int:
        """The tokens a global batch of ``rows`` rows of ``seq_len`` tokens counts, on the host:
        ``sum_b (seq_len - max(P_b, first_target))`` for the prompt lengths ``P`` (an integer
        array ``[rows]``: the diffusion families count ``seq_len - P`` per row, ``ar`` ``seq_len
        - max(P, 1)``), or ``rows * counted_per_row(seq_len)`` without prompts (``None``).

        Every ``P`` is checked (``0 <= P < seq_len``) here, on the host: the training loop
        computes its loss divisor with this from the loader's prompt lengths, so the device never
        needs to check them."""
        rows = check_int("rows", rows, 1)
        if prompt_lengths is None:
            return rows * self.counted_per_row(seq_len)
        seq_len = check_int("seq_len", seq_len, self.first_target + 1)
        lengths = np.asarray(prompt_lengths)
        if lengths.dtype.kind not in "iu" or lengths.shape != (rows,):
            raise ValueError(f"prompt_lengths must be an integer array of shape ({rows},) (one per row), got "
                             f"{lengths.dtype} of shape {lengths.shape}")
        _check_prompt_range(lengths, seq_len)
        return int((seq_len - np.maximum(lengths.astype(np.int64), self.first_target)).sum())

    def _prompt_masks(self, prompt_lengths: Tensor, x: Tensor, validate: bool) -> tuple[Tensor, Tensor]:
        """``(prompt, counted)``, bool ``[batch, seq]``: the positions ``i < P`` of each row, and
        those ``i >= max(P, first_target)`` the loss may count.  ``validate``: check ``0 <= P <
        seq`` (a host sync)."""
        batch, seq = x.shape
        if not isinstance(prompt_lengths, Tensor) or prompt_lengths.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"prompt_lengths must be a torch.long tensor [batch], got "
                            f"{getattr(prompt_lengths, 'dtype', type(prompt_lengths).__name__)}")
        if prompt_lengths.shape != (batch,):
            raise ValueError(f"prompt_lengths must have shape ({batch},) (one per row of x), got "
                             f"{tuple(prompt_lengths.shape)}")
        if prompt_lengths.device != x.device:
            raise ValueError(f"prompt_lengths is on {prompt_lengths.device} but x on {x.device}")
        if validate:
            _check_prompt_range(prompt_lengths.cpu().numpy(), seq)
        positions = torch.arange(seq, device=x.device)
        lengths = prompt_lengths.unsqueeze(-1)
        return positions < lengths, positions >= lengths.clamp(min=self.first_target)

    @staticmethod
    def _counted(mask: Tensor | None, x: Tensor, noised: Noised) -> Tensor | None:
        """The tokens :meth:`model_loss` counts: ``mask`` (checked against ``x``) and
        ``noised.counted``; ``None`` when both are (every token)."""
        if noised.counted is None:
            return mask
        if mask is None:
            return noised.counted
        return TrainingObjective._check_mask(mask, x) & noised.counted

    @staticmethod
    def _run(model, noised: Noised, *, hidden: bool = False) -> Tensor:
        """``model`` on ``noised.z``: its logits, or its final hidden states (``hidden``), with
        ``attention_mask=noised.attention_mask`` when a prompt is hidden."""
        kwargs = {} if noised.attention_mask is None else {"attention_mask": noised.attention_mask}
        if hidden:
            kwargs["return_hidden"] = True
        return model(noised.z, **kwargs)

    @staticmethod
    def _check_args(generator: torch.Generator, x: Tensor, offset: int, global_batch: int | None) -> int:
        """Check :meth:`add_noise`'s arguments; the global batch size."""
        if not isinstance(generator, torch.Generator):
            raise TypeError("generator must be a torch.Generator (the caller owns the noise RNG), got "
                            f"{type(generator).__name__}")
        if not isinstance(x, Tensor) or x.dim() != 2:
            raise ValueError(f"x must be a [batch, seq] tensor, got {getattr(x, 'shape', type(x).__name__)}")
        batch = x.shape[0]
        total = batch if global_batch is None else check_int("global_batch", global_batch, 1)
        check_int("offset", offset, 0, total - batch)
        return total

    @staticmethod
    def _check_mask(mask: Tensor | None, x: Tensor) -> Tensor:
        """``mask`` checked against ``x``, or all True."""
        if mask is None:
            return torch.ones_like(x, dtype=torch.bool)
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor (True = counted)")
        if mask.shape != x.shape:
            raise ValueError(f"mask has shape {tuple(mask.shape)} but x has shape {tuple(x.shape)}")
        return mask

    def _z_term(self, log_norm: Tensor | None, counted: Tensor, dtype: torch.dtype) -> Tensor:
        """``z_loss * logsumexp(logits)^2`` per counted token (0 elsewhere), differentiable."""
        if self.z_loss == 0:
            return torch.zeros(counted.shape, dtype=dtype, device=counted.device)
        return torch.where(counted, self.z_loss * log_norm.to(dtype).square(), 0.0)

    def _ce_terms(self, ce: Tensor, lse: Tensor | None, counted: Tensor) -> ObjectiveTerms:
        """The terms of a cross-entropy family: the loss ``ce + z-loss`` per counted token, the
        metric ``kl`` the cross-entropy itself, no IS term."""
        z_term = self._z_term(lse, counted, ce.dtype)
        return self._terms(torch.where(counted, ce, 0.0) + z_term, ce, None, z_term, counted)

    @staticmethod
    def _terms(per_token: Tensor, kl: Tensor, is_div: Tensor | None, z_term: Tensor, counted: Tensor) -> ObjectiveTerms:
        """Sums over the counted tokens: the loss (with its graph), and the detached parts
        ``kl`` and ``is_div`` (per token, already weighted; ``None``: 0) and ``z_term``."""
        dtype = per_token.dtype
        zero = torch.zeros((), dtype=dtype, device=per_token.device)
        with torch.no_grad():
            kl_sum = torch.where(counted, kl.to(dtype), zero).sum()
            is_sum = zero if is_div is None else torch.where(counted, is_div.to(dtype), zero).sum()
        num_tokens = counted.sum().to(torch.int64)
        return ObjectiveTerms(loss_sum=per_token.sum(), kl_sum=kl_sum, is_sum=is_sum,
                              z_loss_sum=z_term.detach().sum(), num_tokens=num_tokens)


class DiffusionObjective(TrainingObjective):
    """The noise every diffusion family shares: ``kernel`` with Sumi's time sampling.

    Args:
        kernel: the forward process (``discdiff.kernels``); its ``vocab_size`` is ``V``.
        per_token_share: probability that a sequence draws one ``t`` per token instead of one
            per sequence (a Bernoulli draw per sequence).
        z_loss: coefficient of ``logsumexp(logits)^2`` per token (Sumi: ``1e-5``).
        log_snr_min: the lower clamp of ``lambda`` (Sumi and GIDD-scaling: ``-9``).
        log_snr_max: the upper clamp of ``lambda`` (Sumi and GIDD-scaling: ``9``).
        fused: :meth:`model_loss` computes the loss from the model's hidden states and its
            ``lm_head.weight`` (:meth:`loss_from_hidden`) instead of from its logits.
        cond_dropout: probability that a prompted row's prompt is hidden from attention
            (:meth:`add_noise` with ``prompt_lengths``).

    Randomness: :meth:`add_noise` takes its ``torch.Generator`` explicitly and never touches the
    global RNG.  The training loop seeds it from the run's seed and the step
    (:func:`sumi.train.loop.noise_seed`) and draws for the whole global batch, so the noise is a
    function of (seed, step, row of the global batch): a resumed run, or a run on another number
    of ranks, draws exactly the noise the uninterrupted one would have drawn.
    """

    def __init__(self, kernel: Kernel, *, per_token_share: float = 0.5, z_loss: float = 1e-5,
                 log_snr_min: float = -9.0, log_snr_max: float = 9.0, fused: bool = False,
                 cond_dropout: float = 0.0) -> None:
        if not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a discdiff Kernel, got {type(kernel).__name__}")
        super().__init__(kernel.vocab_size, z_loss=z_loss, fused=fused, cond_dropout=cond_dropout)
        self.kernel = kernel
        self.per_token_share = check_number("per_token_share", per_token_share, 0.0, 1.0)
        log_snr_min = check_number("log_snr_min", log_snr_min)
        log_snr_max = check_number("log_snr_max", log_snr_max)
        if not log_snr_min < log_snr_max:
            raise ValueError(f"log_snr_min ({log_snr_min}) must be smaller than log_snr_max ({log_snr_max})")
        self.schedule = LinearAlpha(log_snr_min=log_snr_min, log_snr_max=log_snr_max)

    # -- noise ---------------------------------------------------------------------------------
    def add_noise(self, x: Tensor, generator: torch.Generator, *, offset: int = 0,
                  global_batch: int | None = None, validate: bool = True,
                  prompt_lengths: Tensor | None = None) -> Noised:
        """Noise a clean batch ``x`` (``[batch, seq]`` ids in ``[0, V)``, never the mask id): the
        forward process.

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

        ``prompt_lengths`` (long ``[batch]`` on ``x``'s device; docs/training.md, "Conditional
        training (condition dropout)"): the first ``P`` tokens of each row are its condition.  They
        stay clean (``z == x`` there) and are not counted (:attr:`Noised.counted`).  Then, after
        every draw above (so the noise is the same as without prompts), one float64 ``u ~ U(0,
        1)`` per row of the global batch, sliced like the others: the rows with ``u <
        cond_dropout`` have their prompt hidden from attention (:attr:`Noised.attention_mask`;
        ``None`` when ``cond_dropout`` is 0).  ``u`` is drawn whatever ``cond_dropout`` is, so the
        stream does not depend on it.  ``validate`` also checks ``0 <= P < seq`` (a host sync;
        the training loop checks them on the host: :meth:`counted_tokens`).  Without
        ``prompt_lengths`` nothing of this happens and nothing more is drawn.
        """
        total = self._check_args(generator, x, offset, global_batch)
        self.kernel.check_clean(x, validate=validate)
        masks = None if prompt_lengths is None else self._prompt_masks(prompt_lengths, x, validate)
        batch, seq = x.shape
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
        noised = Noised(z=z, lam=lam[rows].float(), t=t[rows].float(), per_token=per_token[rows])
        if masks is None:
            return noised
        prompt, counted = masks
        hide = torch.rand(total, generator=generator, device=device, dtype=torch.float64)[rows] < self.cond_dropout
        attention_mask = None if self.cond_dropout == 0 else ~(prompt & hide.unsqueeze(-1))
        return dataclasses.replace(noised, z=torch.where(prompt, x, z), counted=counted,
                                   attention_mask=attention_mask)

    def _dropout_repr(self) -> str:
        """``", cond_dropout=p"`` in a repr, when not 0 (the default)."""
        return f", cond_dropout={self.cond_dropout}" if self.cond_dropout else ""

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
        checked ``x``: then nothing here syncs with the host).

        The model reads ``attention_mask=noised.attention_mask`` when some prompt is hidden; the
        counted tokens are those of ``mask`` (``None``: all) that ``noised.counted`` counts (a
        prompt never is)."""
        counted = self._counted(mask, x, noised)
        if self.fused:
            hidden = self._run(model, noised, hidden=True)
            return self.loss_from_hidden(hidden, model.lm_head.weight, x, noised.z, noised.lam, counted,
                                         validate=validate, t=noised.t)
        return self.loss(self._run(model, noised), x, noised.z, noised.lam, counted, validate=validate, t=noised.t)

    @abstractmethod
    def loss(self, logits: Tensor, x: Tensor, z: Tensor, lam: Tensor, mask: Tensor | None = None, *,
             validate: bool = True, t: Tensor | None = None) -> ObjectiveTerms:
        """Sums of the per-token loss terms of ``logits`` (``[batch, seq, V]``, from ``model(z)``)
        over the tokens selected by ``mask`` (bool ``[batch, seq]``; ``None`` counts all).
        ``t``: the times that drew ``lam`` (:class:`Noised`), needed by time-form objectives."""

    @abstractmethod
    def loss_from_hidden(self, hidden: Tensor, head_weight: Tensor, x: Tensor, z: Tensor, lam: Tensor,
                         mask: Tensor | None = None, *, validate: bool = True,
                         t: Tensor | None = None) -> ObjectiveTerms:
        """:meth:`loss` of the logits ``hidden @ head_weight.T`` without materializing them."""


class Objective(DiffusionObjective):
    """Sumi's training objective (docs/math.md "Loss" / "Sumi recipe facts"; arXiv 2606.19005):
    the GIDD surrogate on the noise of ``kernel`` (default: ``Uniform(vocab_size)``, Sumi's).

    The ``uniform``, ``masked`` and ``hybrid`` families (docs/training.md, "Families") are this
    objective with the kernel of :func:`sumi.family.kernel_for` (``masked`` with ``in_time=True``:
    then it is MDLM's ELBO in time; docs/math.md, "Family objectives").

    Args:
        vocab_size: ``V``; the uniform kernel covers all ``V`` ids.
        kernel: the forward process (its ``vocab_size`` must be ``vocab_size``); default
            ``discdiff.kernels.Uniform(vocab_size)``.
        per_token_share: probability that a sequence draws one ``t`` per token instead of one
            per sequence (a Bernoulli draw per sequence).
        z_loss: coefficient of ``logsumexp(logits)^2`` per token (Sumi: ``1e-5``).
        beta_is: weight of the Itakura-Saito term (``1`` gives the ELBO integrand).
        log_snr_min: the lower clamp of ``lambda`` (Sumi and GIDD-scaling: ``-9``).
        log_snr_max: the upper clamp of ``lambda`` (Sumi and GIDD-scaling: ``9``).
        fused: :meth:`model_loss` computes the loss from the model's hidden states and its
            ``lm_head.weight`` (:meth:`loss_from_hidden`) instead of from its logits.
        in_time: train on the NELBO in time, ``|d lambda/dt| (w KL + beta_is w IS)`` per token
            (``discdiff.losses.nelbo_estimate``; 0 where ``lambda`` is clamped), instead of the
            per-unit-log-SNR surrogate; the z-loss is added unweighted.  With a ``Masked`` kernel
            and ``alpha = 1 - t`` this is MDLM's training objective, ``[z = m] CE / t`` (Sahoo et
            al. 2024, arXiv 2406.07524, Eq. 10): the ``masked`` family.  Needs ``t`` in
            :meth:`loss` (:meth:`model_loss` passes it).
        cond_dropout: as in :class:`DiffusionObjective`.

    Noise and randomness: :class:`DiffusionObjective`.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        kernel: Kernel | None = None,
        per_token_share: float = 0.5,
        z_loss: float = 1e-5,
        beta_is: float = 1.0,
        log_snr_min: float = -9.0,
        log_snr_max: float = 9.0,
        fused: bool = False,
        in_time: bool = False,
        cond_dropout: float = 0.0,
    ) -> None:
        if kernel is None:
            kernel = Uniform(vocab_size)
        elif not isinstance(kernel, Kernel):
            raise TypeError(f"kernel must be a discdiff Kernel, got {type(kernel).__name__}")
        elif kernel.vocab_size != vocab_size:
            raise ValueError(f"kernel {kernel!r} has {kernel.vocab_size} states, vocab_size is {vocab_size}")
        super().__init__(kernel, per_token_share=per_token_share, z_loss=z_loss, log_snr_min=log_snr_min,
                         log_snr_max=log_snr_max, fused=fused, cond_dropout=cond_dropout)
        self.beta_is = check_number("beta_is", beta_is, 0.0)
        if not isinstance(in_time, bool):
            raise ValueError(f"in_time must be a bool, got {in_time!r}")
        self.in_time = in_time

    def __repr__(self) -> str:
        s = self.schedule
        kernel = "" if isinstance(self.kernel, Uniform) else f"kernel={self.kernel!r}, "
        in_time = ", in_time=True" if self.in_time else ""
        return (f"Objective(vocab_size={self.vocab_size}, {kernel}per_token_share={self.per_token_share}, "
                f"z_loss={self.z_loss}, beta_is={self.beta_is}, log_snr_min={s.log_snr_min}, "
                f"log_snr_max={s.log_snr_max}, fused={self.fused}{in_time}{self._dropout_repr()})")

    def _time_weight(self, t: Tensor | None, x: Tensor) -> Tensor | None:
        """``|d lambda/dt|`` per token for :attr:`in_time` (``None`` otherwise)."""
        if not self.in_time:
            return None
        if t is None:
            raise ValueError("this objective trains on the NELBO in time (in_time=True): pass t, the times that "
                             "drew lam (Noised.t)")
        # |d lambda/dt| (discdiff.losses.elbo_weight_in_time), unchecked: t comes from add_noise
        return align_log_snr("t", self.schedule.dlog_snr_dt(t.double(), validate=False).abs(), x.shape)

    def loss(self, logits: Tensor, x: Tensor, z: Tensor, lam: Tensor, mask: Tensor | None = None, *,
             validate: bool = True, t: Tensor | None = None) -> ObjectiveTerms:
        """Sums of the per-token loss terms over the tokens selected by ``mask`` (bool
        ``[batch, seq]``, True = counted; ``None`` counts all).  ``t``: the times that drew
        ``lam``, required with ``in_time`` (the GIDD terms are then multiplied by ``|d lambda/dt|``).

        ``logits``: ``[batch, seq, V]`` from ``model(z)``; ``lam``: ``[batch]``, ``[batch, 1]`` or
        ``[batch, seq]``.  Per token: ``w KL + beta_is w IS`` (``discdiff.losses.gidd``, arXiv
        2512.10858 Eq. 5) ``+ z_loss * logsumexp(logits)^2`` (Sumi), all in float32 or wider
        (the logsumexp included, also for bf16 logits).  Besides the model's logits, the only
        vocabulary-sized tensors are those ``gidd`` needs (``log_softmax``) and the logsumexp's.
        ``validate``: check the ids of ``x`` and ``z`` and that ``lam`` is finite (host syncs);
        ``False`` where they come from :meth:`add_noise` of checked data.
        """
        counted = self._check_mask(mask, x)
        out = gidd(self.kernel, logits, x, z, lam, self.beta_is, reduction="none", mask=mask, validate=validate)
        lse = torch.logsumexp(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1) \
            if self.z_loss > 0 else None
        z_term = self._z_term(lse, counted, out.loss.dtype)
        weight = self._time_weight(t, x)
        gidd_loss = out.loss if weight is None else out.loss * weight.to(out.loss.dtype)
        return self._gidd_terms(out, gidd_loss + z_term, z_term, counted, weight)

    def loss_from_hidden(self, hidden: Tensor, head_weight: Tensor, x: Tensor, z: Tensor, lam: Tensor,
                         mask: Tensor | None = None, *, validate: bool = True,
                         t: Tensor | None = None) -> ObjectiveTerms:
        """:meth:`loss` of the logits ``hidden @ head_weight.T`` without materializing them.

        ``hidden``: ``[batch, seq, H]`` from ``model(z, return_hidden=True)``; ``head_weight``:
        ``[V, H]`` (``model.lm_head.weight``), same dtype.  The loss and the z-loss come from
        ``discdiff.losses.gidd_from_hidden`` (chunked over tokens and the vocabulary, float32
        accumulation; docs/math.md, "Memory-light form of the KL"); gradients reach ``hidden`` and ``head_weight``.
        ``validate``: as in :meth:`loss`.
        """
        counted = self._check_mask(mask, x)
        weight = self._time_weight(t, x)
        if weight is None:
            out = gidd_from_hidden(self.kernel, hidden, head_weight, x, z, lam, self.beta_is, reduction="none",
                                   mask=mask, z_loss=self.z_loss, validate=validate)
            # out.loss holds the z-loss already (zero where not counted); the metric reads it detached
            z_term = self._z_term(out.logsumexp.detach(), counted, out.loss.dtype)
            return self._gidd_terms(out, out.loss, z_term, counted, None)
        # in time: only the GIDD terms are weighted, so the z-loss (differentiable) is added after
        out = gidd_from_hidden(self.kernel, hidden, head_weight, x, z, lam, self.beta_is, reduction="none",
                               mask=mask, validate=validate)
        z_term = self._z_term(out.logsumexp, counted, out.loss.dtype)
        return self._gidd_terms(out, out.loss * weight.to(out.loss.dtype) + z_term, z_term, counted, weight)

    def _gidd_terms(self, out, per_token: Tensor, z_term: Tensor, counted: Tensor,
                    weight: Tensor | None) -> ObjectiveTerms:
        """The terms of a GIDD loss output: the loss ``per_token`` (the z-loss ``z_term``
        included) and the metrics ``w KL`` and ``w IS`` (times ``weight``, the time weight, when
        training in time)."""
        with torch.no_grad():
            w = out.weight.to(per_token.dtype)
            if weight is not None:
                w = w * weight.to(w.dtype)
            kl, is_div = w * out.kl, w * out.is_div
        return self._terms(per_token, kl, is_div, z_term, counted)


class MaskedCEObjective(DiffusionObjective):
    """The ``masked-ce`` family: masked noise and the plain cross-entropy of Sahoo et al. 2026
    (arXiv 2602.15014; docs/math.md, "Family objectives").

    Per token ``[z = m] (-log x_hat_x) + z_loss * logsumexp(logits)^2``: the cross-entropy of the
    denoiser (softmax over every state but the mask) on masked tokens, 0 on the others, no
    ELBO weight.  Noise as :class:`DiffusionObjective` (the same time sampling as Sumi).

    Args:
        kernel: a ``discdiff.kernels.Masked`` kernel (``V`` states, mask id ``m``).
        per_token_share: as in :class:`Objective`.
        z_loss: as in :class:`Objective`.
        log_snr_min: as in :class:`Objective`.
        log_snr_max: as in :class:`Objective`.
        fused: as in :class:`Objective`.
        cond_dropout: as in :class:`Objective`.
    """

    def __init__(self, kernel: Masked, *, per_token_share: float = 0.5, z_loss: float = 1e-5,
                 log_snr_min: float = -9.0, log_snr_max: float = 9.0, fused: bool = False,
                 cond_dropout: float = 0.0) -> None:
        if not isinstance(kernel, Masked):
            raise TypeError(f"the masked cross-entropy needs a Masked kernel, got {kernel!r}")
        super().__init__(kernel, per_token_share=per_token_share, z_loss=z_loss, log_snr_min=log_snr_min,
                         log_snr_max=log_snr_max, fused=fused, cond_dropout=cond_dropout)

    def __repr__(self) -> str:
        s = self.schedule
        return (f"MaskedCEObjective(kernel={self.kernel!r}, per_token_share={self.per_token_share}, "
                f"z_loss={self.z_loss}, log_snr_min={s.log_snr_min}, log_snr_max={s.log_snr_max}, "
                f"fused={self.fused}{self._dropout_repr()})")

    def loss(self, logits: Tensor, x: Tensor, z: Tensor, lam: Tensor, mask: Tensor | None = None, *,
             validate: bool = True, t: Tensor | None = None) -> ObjectiveTerms:
        """Sums of ``[z = m] CE + z_loss * logsumexp(logits)^2`` over the tokens ``mask`` selects
        (``discdiff.losses.masked_ce``).  ``lam`` is not used (the plain cross-entropy has no
        weight), nor is ``t``; they are taken so that every diffusion objective scores the same arguments."""
        counted = self._check_mask(mask, x)
        ce = masked_ce(self.kernel, logits, x, z, reduction="none", validate=validate)  # 0 on unmasked tokens
        lse = torch.logsumexp(logits.to(ce.dtype), dim=-1) if self.z_loss > 0 else None
        return self._ce_terms(ce, lse, counted)

    def loss_from_hidden(self, hidden: Tensor, head_weight: Tensor, x: Tensor, z: Tensor, lam: Tensor,
                         mask: Tensor | None = None, *, validate: bool = True,
                         t: Tensor | None = None) -> ObjectiveTerms:
        """:meth:`loss` of the logits ``hidden @ head_weight.T`` without materializing them
        (``discdiff.losses.cross_entropy_from_hidden`` with the mask id excluded)."""
        counted = self._check_mask(mask, x)
        self.kernel.check_pair(x, z, validate=validate)
        out = cross_entropy_from_hidden(hidden, head_weight, x, exclude_id=self.kernel.mask_id, validate=False)
        ce = torch.where(z == self.kernel.mask_id, out.cross_entropy, 0.0)
        return self._ce_terms(ce, out.logsumexp, counted)


class AutoregressiveObjective(TrainingObjective):
    """The ``ar`` family: next-token cross-entropy of a causal model (docs/math.md, "Family
    objectives"; docs/training.md, "Families").

    No noise: the model reads the clean rows and position ``i`` predicts ``x[i + 1]``, so a row
    of ``seq_len`` tokens counts ``seq_len - 1`` (its first token is never a target).  Per
    counted token ``-log softmax(l_i)_{x[i+1]} + z_loss * logsumexp(l_i)^2``.  ``mask`` selects
    targets: ``mask[b, i]`` says whether ``x[b, i]`` counts as the prediction of position
    ``i - 1`` (``mask[:, 0]`` is not read).

    Prompted rows: the prompt's tokens are never targets, so ``x[i]`` counts only for ``i >=
    max(P, 1)`` (the last prompt position predicts the first answer token).  Condition dropout
    is refused: in a causal model the prompt is what the first answer token is predicted from,
    so hiding it from attention is not the unconditional branch the diffusion families train.

    Args:
        vocab_size: ``V``.
        z_loss: coefficient of ``logsumexp(logits)^2`` per counted token.
        fused: :meth:`model_loss` computes the loss from the model's hidden states and its
            ``lm_head.weight`` (:meth:`loss_from_hidden`) instead of from its logits.
        cond_dropout: must be 0 (a ``ValueError`` otherwise; see above).
    """

    first_target = 1  # position 0 is never a target: nothing before it predicts it

    def __init__(self, vocab_size: int, *, z_loss: float = 1e-5, fused: bool = False,
                 cond_dropout: float = 0.0) -> None:
        super().__init__(vocab_size, z_loss=z_loss, fused=fused, cond_dropout=cond_dropout)
        if self.cond_dropout != 0:
            raise ValueError(f"cond_dropout must be 0 for the autoregressive objective (objective 'ar'), got "
                             f"{cond_dropout}: a causal model predicts the first answer token from the prompt, so "
                             "hiding the prompt is not an unconditional branch; condition dropout is for the "
                             "diffusion families")

    def __repr__(self) -> str:
        return f"AutoregressiveObjective(vocab_size={self.vocab_size}, z_loss={self.z_loss}, fused={self.fused})"

    def add_noise(self, x: Tensor, generator: torch.Generator, *, offset: int = 0,
                  global_batch: int | None = None, validate: bool = True,
                  prompt_lengths: Tensor | None = None) -> Noised:
        """No noise: ``z = x``, ``lambda = +inf`` (clean), ``t = 0``; nothing is drawn from
        ``generator``.  The arguments are checked as for the diffusion families (``validate``:
        the ids of ``x`` and the prompt lengths, host syncs).  ``prompt_lengths`` (long
        ``[batch]``): :attr:`Noised.counted` is ``i >= max(P, 1)``; nothing is hidden."""
        self._check_args(generator, x, offset, global_batch)
        check_tokens("x", x, self.vocab_size, validate=validate)
        counted = None if prompt_lengths is None else self._prompt_masks(prompt_lengths, x, validate)[1]
        batch, seq = x.shape
        lam = torch.full((batch, seq), float("inf"), dtype=torch.float32, device=x.device)
        return Noised(z=x, lam=lam, t=torch.zeros_like(lam),
                      per_token=torch.zeros(batch, dtype=torch.bool, device=x.device), counted=counted)

    def model_loss(self, model, x: Tensor, noised: Noised, mask: Tensor | None = None, *,
                   validate: bool = True) -> ObjectiveTerms:
        """Run the causal ``model`` on ``x`` (``noised.z``) and return :meth:`loss_from_hidden`
        (``fused=True``) or :meth:`loss` of its logits.  A bidirectional model is refused: it would
        see the token it predicts and learn to copy it.  The counted targets are those of ``mask``
        that ``noised.counted`` counts (never a prompt token)."""
        config = getattr(model, "config", None)
        if config is not None and not config.causal:
            raise ValueError(f"the autoregressive objective needs a causal model (objective 'ar'), got one of "
                             f"objective {config.objective!r}, which attends in both directions")
        counted = self._counted(mask, x, noised)
        if self.fused:
            hidden = self._run(model, noised, hidden=True)
            return self.loss_from_hidden(hidden, model.lm_head.weight, x, counted, validate=validate)
        return self.loss(self._run(model, noised), x, counted, validate=validate)

    def loss(self, logits: Tensor, x: Tensor, mask: Tensor | None = None, *, validate: bool = True) -> ObjectiveTerms:
        """Sums of the next-token cross-entropy (plus the z-loss) of ``logits`` (``[batch, seq,
        V]`` from the causal ``model(x)``) over the targets ``x[:, 1:]`` that ``mask`` selects;
        computed in float32 or wider.  ``validate``: check the ids of ``x`` (a host sync)."""
        counted = self._check_mask(mask, x)[:, 1:]
        check_tokens("x", x, self.vocab_size, validate=validate)
        if logits.shape != (*x.shape, self.vocab_size):
            raise ValueError(f"logits must have shape {(*x.shape, self.vocab_size)}, got {tuple(logits.shape)}")
        pred = logits[:, :-1].to(torch.promote_types(logits.dtype, torch.float32))
        lse = torch.logsumexp(pred, dim=-1)
        ce = lse - pred.gather(-1, x[:, 1:].long().unsqueeze(-1)).squeeze(-1)
        return self._ce_terms(ce, lse, counted)

    def loss_from_hidden(self, hidden: Tensor, head_weight: Tensor, x: Tensor, mask: Tensor | None = None, *,
                         validate: bool = True) -> ObjectiveTerms:
        """:meth:`loss` of the logits ``hidden @ head_weight.T`` without materializing them
        (``discdiff.losses.cross_entropy_from_hidden`` of ``hidden[:, :-1]`` at ``x[:, 1:]``)."""
        counted = self._check_mask(mask, x)[:, 1:]
        check_tokens("x", x, self.vocab_size, validate=validate)
        if not isinstance(hidden, Tensor) or hidden.shape[:-1] != x.shape:
            raise ValueError(f"hidden must have shape {(*x.shape, 'hidden')} (x's shape, then the hidden size), "
                             f"got {tuple(getattr(hidden, 'shape', ()))}")
        out = cross_entropy_from_hidden(hidden[:, :-1], head_weight, x[:, 1:], validate=False)
        return self._ce_terms(out.cross_entropy, out.logsumexp, counted)


def build_objective(config: TrainConfig) -> TrainingObjective:
    """The objective of ``config``'s family (``config.objective``; docs/training.md, "Families"),
    with ``config.per_token_share``, ``config.z_loss``, ``config.fused_loss`` and
    ``config.cond_dropout``:

    - ``uniform``, ``hybrid``: :class:`Objective` (the GIDD surrogate per unit log-SNR) on the
      kernel of :func:`sumi.family.kernel_for` (``Uniform(V)``, ``Hybrid(V, m, shift, scale)``);
    - ``masked``: :class:`Objective` on ``Masked(V, m)`` with ``in_time=True``: MDLM's ELBO,
      ``[z = m] CE / t`` (arXiv 2406.07524, Eq. 10);
    - ``masked-ce``: :class:`MaskedCEObjective` on ``Masked(V, m)``;
    - ``ar``: :class:`AutoregressiveObjective` (no kernel).
    """
    model = config.model
    kernel = kernel_for(model)
    if kernel is None:
        return AutoregressiveObjective(model.vocab_size, z_loss=config.z_loss, fused=config.fused_loss,
                                       cond_dropout=config.cond_dropout)
    noise = dict(per_token_share=config.per_token_share, z_loss=config.z_loss, fused=config.fused_loss,
                 cond_dropout=config.cond_dropout)
    if model.objective == "masked-ce":
        return MaskedCEObjective(kernel, **noise)
    # masked trains MDLM's ELBO in time (CE / t); uniform and hybrid the surrogate per unit log-SNR
    return Objective(model.vocab_size, kernel=kernel, in_time=model.objective == "masked", **noise)


__all__ = ["build_objective", "TrainingObjective", "DiffusionObjective", "Objective", "MaskedCEObjective",
           "AutoregressiveObjective", "Noised", "ObjectiveTerms"]
