"""A guided denoiser: classifier-free guidance wrapped as a denoiser (tokens -> logits) that the
step rules and :func:`discdiff.samplers.sample` take unchanged (docs/math.md, "Guidance")."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor

from discdiff._denoiser import check_logits_shape, takes_log_snr
from discdiff.guidance.classifier_free import cfg, check_scale
from discdiff.typing import Logits, LogSNR, Tokens

_TOKENS = inspect.Parameter("z", inspect.Parameter.POSITIONAL_OR_KEYWORD)
_LOG_SNR = inspect.Parameter("lam", inspect.Parameter.POSITIONAL_OR_KEYWORD)


class Guided:
    """The denoiser ``z -> cfg(cond(z), uncond(z), scale)``: classifier-free guidance
    (Ho & Salimans 2022, arXiv 2207.12598; D-CFG, Schiff et al. 2025, arXiv 2412.10193),
    ``log p_w = (1 + w) log p(x | c) - w log p(x)`` renormalized, by :func:`cfg`.

    ``Guided(cond_denoiser, uncond_denoiser, scale)`` calls the two denoisers (``denoiser(z)``
    or ``denoiser(z, lam)``) once each per call; :meth:`batched` makes one call on both halves
    of a doubled batch instead.  A denoiser whose weight is zero is not called: at ``scale = 0``
    only the conditional one (the result is then exactly ``log_softmax`` of its logits), at
    ``scale = -1`` only the unconditional one.

    Time conditioning: each denoiser is called with the log-SNR when ``time_conditioned`` says
    so, or, when it is ``None``, when its own signature asks for it (the rule of
    :func:`discdiff.samplers.sample`: two or more required positional parameters).  If either
    one takes it, the guided denoiser is time-conditioned: it is called ``guided(z, lam)``, and
    its signature (``guided.time_conditioned``) says so, so ``sample`` passes ``lam``
    without being told.

    Args:
        cond_denoiser: the conditional denoiser (tokens ``[batch, seq]`` -> logits
            ``[batch, seq, V]``).
        uncond_denoiser: the unconditional denoiser, over the same vocabulary.
        scale: the guidance scale ``w``, a finite number ``>= -1`` (0: the conditional
            distribution, -1: the unconditional one).
        time_conditioned: pass the log-SNR to both denoisers (``True``), to neither (``False``),
            or read each one's signature (``None``).
    """

    def __init__(self, cond_denoiser: Callable[..., Logits], uncond_denoiser: Callable[..., Logits],
                 scale: float, *, time_conditioned: bool | None = None) -> None:
        self.scale = check_scale(scale)
        self.cond_denoiser, self.uncond_denoiser = cond_denoiser, uncond_denoiser
        self._batched: Callable[..., Logits] | None = None
        self._cond_lam = takes_log_snr(cond_denoiser, time_conditioned)
        self._uncond_lam = takes_log_snr(uncond_denoiser, time_conditioned)
        self._finish(self._cond_lam or self._uncond_lam)

    @classmethod
    def batched(cls, denoiser: Callable[..., Logits], scale: float, *,
                time_conditioned: bool | None = None) -> Guided:
        """Guidance with one denoiser call per step, on a doubled batch.

        ``denoiser(z2, conditional=flags)`` (or ``denoiser(z2, lam2, conditional=flags)``, time
        conditioning decided as for the constructor) receives ``z2 = cat([z, z])`` (``[2 batch,
        seq]``) and ``flags``, a bool ``[2 batch]`` tensor, ``True`` for the first ``batch``
        rows: it applies the condition there (a class label, a prompt prefix) and drops it for the
        rest.  The first half of its logits is ``p(x | c)``, the second ``p(x)``.  For a single
        model with different conditioning this is one forward pass instead of two; the result is
        the same as ``Guided(cond, uncond, scale)`` with ``cond(z) = denoiser(z, conditional=True
        rows)`` and ``uncond`` likewise.  At ``scale = 0`` (``-1``) only the ``batch`` rows of the
        conditional (unconditional) half are passed.

        Args:
            denoiser: ``denoiser(z2, conditional=flags)`` or ``denoiser(z2, lam2, conditional=flags)``
                -> logits ``[2 batch, seq, V]``.
            scale: the guidance scale ``w``, a finite number ``>= -1``.
            time_conditioned: pass the log-SNR (``True``/``False``), or read the signature (``None``).
        """
        self = cls.__new__(cls)
        self.scale = check_scale(scale)
        self.cond_denoiser = self.uncond_denoiser = None
        self._batched = denoiser
        self._cond_lam = self._uncond_lam = takes_log_snr(denoiser, time_conditioned)
        self._finish(self._cond_lam)
        return self

    def _finish(self, time_conditioned: bool) -> None:
        self.time_conditioned = time_conditioned
        # what discdiff's signature rule (takes_log_snr, used by the sampling loop) reads: (z, lam) or (z)
        self.__signature__ = inspect.Signature([_TOKENS, _LOG_SNR] if time_conditioned else [_TOKENS])

    def __repr__(self) -> str:
        if self._batched is not None:
            return f"Guided.batched({self._batched!r}, scale={self.scale})"
        return f"Guided({self.cond_denoiser!r}, {self.uncond_denoiser!r}, scale={self.scale})"

    def __call__(self, z: Tokens, lam: LogSNR | None = None) -> Logits:
        """The guided log-probabilities ``[*z.shape, V]`` at ``z`` (float32, or float64 if a
        denoiser returns float64); ``lam``, the log-SNR of ``z`` (one value per sequence), is
        required when :attr:`time_conditioned`."""
        if self.time_conditioned and lam is None:
            raise TypeError("this Guided denoiser is time-conditioned (a denoiser takes the log-SNR): "
                            "call it as guided(z, lam)")
        if lam is not None:
            lam = lam.to(device=z.device, dtype=torch.float64)
        if self._batched is not None:
            return self._call_batched(z, lam)
        cond = None if self.scale == -1 else _logits(self.cond_denoiser, z, lam, self._cond_lam)
        uncond = None if self.scale == 0 else _logits(self.uncond_denoiser, z, lam, self._uncond_lam)
        return cfg(cond if cond is not None else uncond, uncond if uncond is not None else cond, self.scale)

    def _call_batched(self, z: Tokens, lam: Tensor | None) -> Logits:
        if z.dim() < 2:
            raise ValueError(f"Guided.batched needs tokens [batch, seq, ...] to double the batch, got shape "
                             f"{tuple(z.shape)}")
        batch = z.shape[0]
        halves = 2 if self.scale not in (0, -1) else 1
        flags = torch.arange(halves * batch, device=z.device) < batch
        if self.scale == -1:
            flags = ~flags
        z2 = z if halves == 1 else torch.cat([z, z])
        if self._cond_lam:
            lam = lam.expand(z.shape[:-1])
            logits = self._batched(z2, lam.clone() if halves == 1 else torch.cat([lam, lam]), conditional=flags)
        else:
            logits = self._batched(z2, conditional=flags)
        check_logits_shape(logits, z2)
        if halves == 1:
            return cfg(logits, logits, self.scale)
        return cfg(logits[:batch], logits[batch:], self.scale)


def _logits(denoiser: Callable[..., Logits], z: Tensor, lam: Tensor | None, with_log_snr: bool) -> Tensor:
    """``denoiser(z, lam)`` (``lam`` one value per sequence, a fresh tensor so the caller's is safe
    from in-place edits) or ``denoiser(z)``; the output's shape is checked (no host sync)."""
    logits = denoiser(z, lam.expand(z.shape[:-1]).clone()) if with_log_snr else denoiser(z)
    check_logits_shape(logits, z)
    return logits
