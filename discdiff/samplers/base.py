"""The step-rule interface: one reverse step from a noisy ``lambda_t`` to a cleaner ``lambda_s``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff._checks import align_log_snr, check_log_snr, check_logits, check_tokens
from discdiff.kernels.base import Kernel
from discdiff.samplers.categorical import Denoised, Filters, check_temperature
from discdiff.typing import Logits, LogSNR, Mask, Tokens


@dataclass(frozen=True)
class StepOutput:
    """``tokens``: ``z_s``.  ``selected``: the positions the rule chose to (re)write this step
    (every unfrozen position for rules that resample everywhere)."""

    tokens: Tokens
    selected: Mask


class StepRule(ABC):
    """``step(logits, z_t, lam_t, lam_s, frozen=None, temperature=1.0, generator=None) -> z_s``.

    ``logits`` are the denoiser's outputs at ``z_t`` (``[*shape, V]``); ``lam_t <= lam_s`` per
    sequence or per token; ``frozen`` (bool ``[*shape]``) marks positions that must not change.
    Subclasses implement :meth:`_step`; validation happens here, once.
    """

    vocab_size: int | None = None  # the kernel's; None for rules that accept any vocabulary
    mask_id: int | None = None     # a state x_hat never takes (its logit is ignored)

    def step(self, logits: Logits, z_t: Tokens, lam_t: LogSNR | float, lam_s: LogSNR | float, frozen: Mask | None = None,
             temperature: float = 1.0, generator: torch.Generator | None = None, *, validate: bool = True) -> Tokens:
        return self.step_info(logits, z_t, lam_t, lam_s, frozen, temperature, generator, validate=validate).tokens

    def step_info(self, logits: Logits, z_t: Tokens, lam_t: LogSNR | float, lam_s: LogSNR | float, frozen: Mask | None = None,
                  temperature: float = 1.0, generator: torch.Generator | None = None, *,
                  validate: bool = True) -> StepOutput:
        """:meth:`step`, also returning which positions the rule selected.

        With ``validate=True`` (the default; :func:`~discdiff.samplers.sample` validates its
        first step only) the inputs are checked in this order, so a message names the first real
        problem: the logits' shape against ``z_t`` (``[*z_t.shape, V]``), their vocabulary against
        the kernel's, token ids in ``[0, V)``, the logits' values (no NaN or ``+inf``, and not
        ``-inf`` at every non-mask state of a position), ``frozen``, then the log-SNRs.  The value
        checks synchronize with the host; ``validate=False`` skips them (shape checks always run).
        """
        temperature = check_temperature(temperature)
        check_tokens("z_t", z_t, 0, validate=False)  # type and dtype only; the range needs V
        if not isinstance(logits, Tensor) or not logits.is_floating_point():
            got = f"dtype {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
            raise TypeError(f"logits (the denoiser's output) must be a floating-point tensor [*z_t.shape, V], "
                            f"got {got}")
        if logits.dim() != z_t.dim() + 1 or logits.shape[:-1] != z_t.shape:
            raise ValueError(f"logits (the denoiser's output) have shape {tuple(logits.shape)}; expected "
                             f"{tuple(z_t.shape)} + (vocab,): one row of logits per token of z_t")
        if self.vocab_size is not None and logits.shape[-1] != self.vocab_size:
            raise ValueError(f"logits have vocabulary {logits.shape[-1]} but the kernel has {self.vocab_size} states")
        check_tokens("z_t", z_t, logits.shape[-1], validate=validate)
        check_logits("the denoiser's logits", logits, self.mask_id, validate=validate)
        if frozen is None:
            frozen = torch.zeros(z_t.shape, dtype=torch.bool, device=z_t.device)
        elif frozen.dtype != torch.bool or frozen.shape != z_t.shape:
            raise ValueError(f"frozen must be a bool tensor of shape {tuple(z_t.shape)}, got "
                             f"{frozen.dtype} {tuple(frozen.shape)}")
        lam_t = torch.as_tensor(lam_t, dtype=torch.float64, device=z_t.device)
        lam_s = torch.as_tensor(lam_s, dtype=torch.float64, device=z_t.device)
        check_log_snr("lam_t", lam_t, allow_inf=True, validate=validate)
        check_log_snr("lam_s", lam_s, allow_inf=True, validate=validate)
        lam_t = align_log_snr("lam_t", lam_t, z_t.shape).to(torch.float64)
        lam_s = align_log_snr("lam_s", lam_s, z_t.shape).to(torch.float64)
        if validate and not torch.compiler.is_compiling() and bool((lam_s < lam_t).any()):
            raise ValueError("lam_s must be >= lam_t: a reverse step goes from noisy (t) to cleaner (s)")
        out = self._step(logits, z_t, lam_t, lam_s, frozen, temperature, generator)
        tokens = torch.where(frozen, z_t, out.tokens.to(z_t.dtype))
        return StepOutput(tokens=tokens, selected=out.selected & ~frozen)

    @abstractmethod
    def _step(self, logits: Tensor, z_t: Tensor, lam_t: Tensor, lam_s: Tensor, frozen: Tensor,
              temperature: float, generator: torch.Generator | None) -> StepOutput:
        """The rule itself; ``lam_t``/``lam_s`` are float64 and broadcast to ``z_t``'s shape."""


class KernelStepRule(StepRule):
    """A step rule built on a kernel, with the truncation filters every sampling user expects
    (``top_k``, ``top_p``, ``min_p``; see :class:`~discdiff.samplers.Filters`)."""

    def __init__(self, kernel: Kernel, *, top_k: int | None = None, top_p: float | None = None,
                 min_p: float | None = None) -> None:
        if not isinstance(kernel, Kernel):
            raise TypeError(f"{type(self).__name__} needs a discdiff Kernel, got {kernel!r}")
        self.kernel = kernel
        self.vocab_size = kernel.vocab_size
        self.mask_id = kernel.mask_id
        self.filters = Filters(top_k, top_p, min_p)

    def _repr_extra(self) -> str:
        return ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.kernel!r}, {self._repr_extra()}{self.filters})"


def move_to_marginal(kernel: Kernel, x0: Denoised, z_t: Tokens, p_move: Tensor, lam: Tensor, frozen: Mask,
                     generator: torch.Generator | None) -> Tokens:
    """``z_t``, or with probability ``p_move`` (clamped to [0, 1]) a draw from ``q_lambda(. | x_hat)
    = alpha x_hat + beta pi_lambda`` (docs/math.md, "Ancestral").

    Per position, in this order: ``move ~ Bernoulli(p_move)``; ``from_x0 ~ Bernoulli(alpha)``
    (``alpha = sigmoid(lam)``, float64); ``x_hat`` is drawn only where a non-frozen position moves
    and takes the ``x_hat`` component (:meth:`Denoised.sample` with ``where``); ``pi_lambda``
    draws come from ``kernel.sample_pi``, which needs no vocabulary-sized tensor.
    """
    move = torch.rand(z_t.shape, generator=generator, device=z_t.device, dtype=torch.float64) < p_move.clamp(0.0, 1.0)
    from_x0 = torch.rand(lam.shape, generator=generator, device=lam.device, dtype=torch.float64) < torch.sigmoid(lam)
    drawn = x0.sample(generator, where=move & from_x0 & ~frozen)
    candidate = torch.where(from_x0, drawn, kernel.sample_pi(lam, generator))
    return torch.where(move, candidate, z_t)
