"""The CTMC Euler / tau-leaping step from the reverse rates (Campbell et al. 2022, "A
Continuous Time Framework for Discrete Denoising Models", Sec. 4)."""

from __future__ import annotations

import torch

from discdiff.samplers.base import KernelStepRule, StepOutput, move_to_marginal
from discdiff.samplers.categorical import Denoised


class TauLeaping(KernelStepRule):
    """Euler step of the reverse CTMC in log-SNR, with ``x_hat`` plugged in.

    Letting ``s -> t`` in the exact posterior gives the reverse rate (per unit log-SNR) from
    ``z_t`` to ``j != z_t``: ``R_j = beta_t (pi_t - pi'_t)(z_t) q_t(j | x_hat) / q_t(z_t | x_hat)``.
    The step moves with probability ``min(1, (lambda_s - lambda_t) beta_t (pi_t - pi'_t)(z_t) /
    q_t(z_t | x_hat))`` to a draw from ``q_t(. | x_hat)`` (a draw of ``z_t`` itself means stay):
    each ``j != z_t`` is reached with probability ``(lambda_s - lambda_t) R_j`` exactly, the
    first-order expansion of :class:`Ancestral`.  Its error shrinks with the step size.  As in
    :class:`Ancestral`, ``x_hat`` is drawn only at the positions that move.
    """

    def _step(self, logits, z_t, lam_t, lam_s, frozen, temperature, generator) -> StepOutput:
        x0 = Denoised(logits, self.kernel.mask_id, temperature, self.filters)
        pi_z = self.kernel.pi_at(lam_t, z_t)
        q_t = torch.sigmoid(lam_t) * x0.prob_at(z_t) + torch.sigmoid(-lam_t) * pi_z
        rate = torch.sigmoid(-lam_t) * (pi_z - self.kernel.dpi_at(lam_t, z_t))
        p_move = torch.where(q_t > 0, (lam_s - lam_t) * rate / torch.where(q_t > 0, q_t, torch.ones_like(q_t)),
                             torch.zeros_like(q_t))
        tokens = move_to_marginal(self.kernel, x0, z_t, p_move, lam_t, frozen, generator)
        return StepOutput(tokens=tokens, selected=torch.ones_like(frozen))
