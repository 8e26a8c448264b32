"""A dense small-vocabulary kernel: explicit ``[V, V]`` matrices, the test oracle.

Everything here is computed the slow, obvious way from the definition, independently of the
closed forms in :class:`discdiff.kernels.Kernel`: the transition ``Q_{t|s}`` by solving
``Q_s Q_{t|s} = Q_t`` (not from ``alpha_t / alpha_s``), the posterior by Bayes' rule over
matrices, ``pi'`` by finite differences, the KL and IS terms by plain sums.  Use it in
float64 for vocabularies of a few dozen states.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class DenseLossTerms:
    """Per-``z`` parts of the GIDD integrand at one ``(x, lambda)``: each a ``[V]`` tensor."""

    q: Tensor        # q_lambda(z | x) over z
    kl: Tensor       # KL(q_lambda(.|x) || q_lambda(.|x_hat)) (the same for every z)
    is_div: Tensor   # r - log r - 1 with r = q_z / p_z
    weight: Tensor   # (pi_z - pi'_z) / (pi_z + e^lambda [z = x])


class Dense:
    """``Q_lambda = alpha I + beta 1 pi_lambda^T`` (row ``x``, column ``z``) for a scalar ``lambda``.

    ``pi_fn`` maps a 0-d float64 ``lambda`` to ``pi_lambda`` (``[V]``).  ``Dense.of(kernel)``
    wraps any :class:`Kernel`, reading only its mixing distribution ``kernel.pi``.
    """

    def __init__(self, vocab_size: int, pi_fn: Callable[[Tensor], Tensor], mask_id: int | None = None) -> None:
        self.vocab_size = vocab_size
        self.pi_fn = pi_fn
        self.mask_id = mask_id

    @classmethod
    def of(cls, kernel) -> Dense:
        return cls(kernel.vocab_size, lambda lam: kernel.pi(lam.reshape(())), kernel.mask_id)

    @staticmethod
    def _lam(lam: float | Tensor) -> Tensor:
        return torch.as_tensor(lam, dtype=torch.float64).reshape(())

    def pi(self, lam: float | Tensor) -> Tensor:
        return self.pi_fn(self._lam(lam)).to(torch.float64).clone()

    def dpi(self, lam: float | Tensor, h: float = 1e-3) -> Tensor:
        """``d pi / d lambda`` by a five-point central difference (error ``O(h^4)``), so the
        oracle needs neither the analytic derivative nor a differentiable ``pi_fn``."""
        lam = self._lam(lam)
        f = lambda k: self.pi(lam + k * h)  # noqa: E731
        return (f(-2) - 8 * f(-1) + 8 * f(1) - f(2)) / (12 * h)

    def matrix(self, lam: float | Tensor) -> Tensor:
        """``Q_lambda[x, z] = q_lambda(z | x)``."""
        lam = self._lam(lam)
        alpha, beta = torch.sigmoid(lam), torch.sigmoid(-lam)
        eye = torch.eye(self.vocab_size, dtype=torch.float64)
        return alpha * eye + beta * self.pi(lam).expand(self.vocab_size, -1)

    def transition_matrix(self, lam_t: float | Tensor, lam_s: float | Tensor) -> Tensor:
        """``Q_{t|s}`` with ``Q_s Q_{t|s} = Q_t`` (``lam_s >= lam_t``), by a linear solve."""
        return torch.linalg.solve(self.matrix(lam_s), self.matrix(lam_t))

    def marginal_of_probs(self, x0_probs: Tensor, lam: float | Tensor) -> Tensor:
        """``q_lambda(. | x_hat) = x_hat^T Q_lambda``."""
        return x0_probs.to(torch.float64) @ self.matrix(lam)

    def posterior(self, x0_probs: Tensor, lam_t: float | Tensor, lam_s: float | Tensor) -> Tensor:
        """``P[z_t, z_s] = p(z_s | z_t) ∝ q_s(z_s | x_hat) Q_{t|s}[z_s, z_t]`` (Bayes' rule), every
        ``z_t`` at once; rows of unreachable ``z_t`` are 0."""
        joint = self.marginal_of_probs(x0_probs, lam_s).unsqueeze(-1) * self.transition_matrix(lam_t, lam_s)
        return self._bayes(joint, self.marginal_of_probs(x0_probs, lam_t) > 0)

    def true_posterior(self, x: int, lam_t: float | Tensor, lam_s: float | Tensor) -> Tensor:
        """``P[z_t, z_s] = q(z_s | z_t, x) = Q_s[x, z_s] Q_{t|s}[z_s, z_t] / Q_t[x, z_t]``."""
        joint = self.matrix(lam_s)[x].unsqueeze(-1) * self.transition_matrix(lam_t, lam_s)
        return self._bayes(joint, self.matrix(lam_t)[x] > 0)

    @staticmethod
    def _bayes(joint: Tensor, reachable: Tensor) -> Tensor:
        """``joint[z_s, z_t]`` with each column normalized, transposed to ``[z_t, z_s]``; the rows
        of unreachable ``z_t`` are 0.  Reachability (``q_t(z_t) > 0``) is read off the marginal,
        whose zeros are exact, never off ``joint``: its unreachable columns come from a linear
        solve and hold rounding noise (about 1e-17, and exact zeros only with some LAPACK builds),
        which normalizing would blow up to O(1)."""
        reachable = reachable.unsqueeze(-2)
        total = joint.sum(-2, keepdim=True)
        return torch.where(reachable, joint / torch.where(reachable, total, torch.ones_like(total)),
                           torch.zeros_like(joint)).transpose(-1, -2)

    def loss_terms(self, x: int, x0_probs: Tensor, lam: float | Tensor) -> DenseLossTerms:
        """KL, IS and weight of the GIDD ELBO (arXiv 2512.10858, Eq. 3-5) for every ``z``."""
        lam = self._lam(lam)
        q = self.matrix(lam)[x]
        p = self.marginal_of_probs(x0_probs, lam)
        support = q > 0
        kl = torch.where(support, q * torch.log(q / p), torch.zeros_like(q)).sum()
        r = q / p
        is_div = r - torch.log(r) - 1
        pi, dpi = self.pi(lam), self.dpi(lam)
        clean = torch.zeros(self.vocab_size, dtype=torch.float64)
        clean[x] = 1.0
        weight = (pi - dpi) / (pi + torch.exp(lam) * clean)
        return DenseLossTerms(q=q, kl=kl.expand(self.vocab_size), is_div=is_div, weight=weight)
