"""Ancestral sampling: an exact draw from the posterior with ``x_hat`` plugged in."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from discdiff.samplers.base import KernelStepRule, StepOutput, move_to_marginal
from discdiff.samplers.categorical import Denoised


class Ancestral(KernelStepRule):
    """``p(z_s = j | z_t) = q_s(j | x_hat) q_{t|s}(z_t | j) / q_t(z_t | x_hat)`` (docs/math.md, "Samplers";
    D3PM, Austin et al. 2021; GIDD, arXiv 2503.04482), for any kernel.

    Memory-light: the posterior is "stay at ``z_t`` with probability
    ``alpha_{t|s} q_s(z_t | x_hat) / q_t(z_t | x_hat)``, else draw from ``q_s(. | x_hat)``", and
    ``q_s(. | x_hat)`` is "``x_hat`` with probability ``alpha_s``, else ``pi_s``".  ``x_hat`` is
    read through :class:`~discdiff.samplers.Denoised` (per-row statistics, no vocabulary-sized
    copy) and drawn only at the positions that move and take the ``x_hat`` component; per-position
    probabilities are float64.  With a :class:`~discdiff.kernels.Masked` kernel this is MDLM's
    ancestral sampler.
    """

    def _step(self, logits, z_t, lam_t, lam_s, frozen, temperature, generator) -> StepOutput:
        x0 = Denoised(logits, self.kernel.mask_id, temperature, self.filters)
        x0_z = x0.prob_at(z_t)
        q_t = torch.sigmoid(lam_t) * x0_z + torch.sigmoid(-lam_t) * self.kernel.pi_at(lam_t, z_t)
        q_s = torch.sigmoid(lam_s) * x0_z + torch.sigmoid(-lam_s) * self.kernel.pi_at(lam_s, z_t)
        alpha_ts = torch.exp(F.logsigmoid(lam_t) - F.logsigmoid(lam_s))
        # q_t(z_t | x_hat) = 0 only where x_hat gives no way to reach z_t; the limit there is "stay"
        p_stay = torch.where(q_t > 0, alpha_ts * q_s / torch.where(q_t > 0, q_t, torch.ones_like(q_t)), torch.ones_like(q_t))
        tokens = move_to_marginal(self.kernel, x0, z_t, 1.0 - p_stay, lam_s, frozen, generator)
        return StepOutput(tokens=tokens, selected=torch.ones_like(frozen))

