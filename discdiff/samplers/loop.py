"""The sampling loop: any denoiser, any step rule, one driver."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff._denoiser import denoise, takes_log_snr
from discdiff.samplers.base import StepRule
from discdiff.samplers.grids import check_grid
from discdiff.samplers.trace import Trace
from discdiff.typing import Logits, Mask, Tokens


@dataclass(frozen=True)
class StepInfo:
    """What a callback sees after each step (tensors stay on the device: no host sync)."""

    index: int        # 0-based step number
    lam_t: Tensor     # log-SNR before the step (0-d)
    lam_s: Tensor     # log-SNR after the step (0-d)
    before: Tokens    # z_t
    after: Tokens     # z_s
    changed: Mask     # after != before
    selected: Mask    # positions the rule chose to (re)write


@dataclass(frozen=True)
class SampleOutput:
    """What :func:`sample` returns: ``tokens`` ``[batch, seq]`` after the last step, and the
    :class:`~discdiff.samplers.Trace` of every step when ``trace=True`` (else ``None``)."""

    tokens: Tokens
    trace: Trace | None = None


def sample(
    denoiser: Callable[..., Logits],
    sampler: StepRule,
    canvas: Tokens,
    log_snrs: Tensor,
    frozen: Mask | None = None,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    callback: Callable[[StepInfo], None] | None = None,
    trace: bool = False,
    time_conditioned: bool | None = None,
) -> SampleOutput:
    """Run ``sampler`` from ``canvas`` along ``log_snrs`` (ascending: noisy -> clean; docs/math.md,
    "The sampling loop").

    Step ``i`` calls the denoiser on ``z`` (tokens ``[batch, seq]`` -> logits ``[batch, seq, V]``)
    and steps from ``log_snrs[i]`` to ``log_snrs[i + 1]``.  ``frozen`` positions (prompts,
    anchors, infilling context) keep their canvas tokens.  The first step validates its inputs
    (shapes, vocabulary, token range, finite logits: one host sync); after it, shapes are static
    and nothing in the loop synchronizes with the host (callbacks aside).  ``trace=True``
    records every step in a :class:`Trace` (``SampleOutput.trace``).

    Args:
        denoiser: ``denoiser(z)`` or, time-conditioned, ``denoiser(z, lam)`` with ``lam`` the
            log-SNR of ``z`` (``log_snrs[i]``), float64, one value per sequence (``[batch]``).
        time_conditioned: call ``denoiser(z, lam)`` (``True``) or ``denoiser(z)`` (``False``);
            ``None`` reads the signature: two or more required positional parameters mean
            time-conditioned (for an ``nn.Module``, those of ``forward``, so
            ``forward(input_ids, attention_mask=None)`` is not).
    """
    check_grid(log_snrs)
    with_log_snr = takes_log_snr(denoiser, time_conditioned)
    log_snrs = log_snrs.to(device=canvas.device, dtype=torch.float64)
    recorder = Trace(canvas) if trace else None
    z = canvas
    for i in range(log_snrs.numel() - 1):
        lam_t, lam_s = log_snrs[i], log_snrs[i + 1]
        validate = i == 0  # inputs are checked once; later steps reuse the same shapes
        logits = denoise(denoiser, z, lam_t, with_log_snr, check=validate)
        out = sampler.step_info(logits, z, lam_t, lam_s, frozen, temperature, generator, validate=validate)
        if recorder is not None or callback is not None:
            info = StepInfo(index=i, lam_t=lam_t, lam_s=lam_s, before=z, after=out.tokens,
                            changed=out.tokens != z, selected=out.selected)
            if recorder is not None:
                recorder(info)
            if callback is not None:
                callback(info)
        z = out.tokens
    return SampleOutput(tokens=z, trace=recorder)
