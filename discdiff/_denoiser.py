"""How the sampling loop and the NELBO call a denoiser: ``denoiser(z)`` or ``denoiser(z, lam)``.

A denoiser is *time-conditioned* when it takes the current log-SNR as a second argument.
Callers say so explicitly (``time_conditioned=True`` / ``False``); by default the signature
decides: two or more required positional parameters mean ``denoiser(z, lam)``.  For an
``nn.Module`` the signature of ``forward`` is read (calling a module goes through
``*args, **kwargs``), so ``forward(input_ids, attention_mask=None)`` (one required parameter)
is called as ``denoiser(z)``.  Anything whose signature cannot be read, or that takes only
``*args``, is called as ``denoiser(z)``: pass ``time_conditioned=True`` for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def takes_log_snr(denoiser: Callable, time_conditioned: bool | None = None) -> bool:
    """Whether to call ``denoiser(z, lam)`` (``True``) or ``denoiser(z)``: ``time_conditioned``
    when given, else two or more required positional parameters in the signature."""
    if time_conditioned is not None:
        if not isinstance(time_conditioned, bool):
            raise TypeError(f"time_conditioned must be True, False or None, got {time_conditioned!r}")
        return time_conditioned
    if not callable(denoiser):
        raise TypeError(f"denoiser must be callable (tokens -> logits), got {type(denoiser).__name__}")
    target = denoiser.forward if isinstance(denoiser, torch.nn.Module) else denoiser
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):  # builtins and some C extensions have no signature
        return False
    required = [p for p in params if p.kind in _POSITIONAL and p.default is inspect.Parameter.empty]
    return len(required) >= 2


def denoise(denoiser: Callable, z: Tensor, lam: Tensor, with_log_snr: bool, *, check: bool = False) -> object:
    """``denoiser(z, lam)`` or ``denoiser(z)``; ``lam`` is float64, one value per sequence
    (``z.shape[:-1]``: ``[batch]`` for ``[batch, seq]`` tokens).  ``check``: the output must be
    floating logits ``[*z.shape, V]`` (shapes only: no host sync); without it the output is
    returned as it is (:func:`discdiff.likelihood.nelbo` also accepts hidden states)."""
    if with_log_snr:
        # a fresh tensor: the caller's grid (or the loss's lambda) is safe from in-place edits
        lam = lam.to(device=z.device, dtype=torch.float64).expand(z.shape[:-1]).clone()
        logits = denoiser(z, lam)
    else:
        logits = denoiser(z)
    if check:
        check_logits_shape(logits, z)
    return logits


def check_logits_shape(logits: Tensor, z: Tensor) -> None:
    """The denoiser's output must be floating logits ``[*z.shape, V]`` (shapes only: no host sync)."""
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        got = f"dtype {logits.dtype}" if isinstance(logits, Tensor) else type(logits).__name__
        raise TypeError(f"the denoiser must return floating-point logits [*z.shape, V], got {got}")
    if logits.dim() != z.dim() + 1 or logits.shape[:-1] != z.shape:
        raise ValueError(f"the denoiser returned shape {tuple(logits.shape)}; expected {tuple(z.shape)} + "
                         f"(vocab,): one row of logits per token of z")
