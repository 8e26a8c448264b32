"""Generation traces and the generation-dynamics statistics of the Sumi paper (arXiv 2606.19005):
overwrite rate per step, net change, A->B->A round trips, commitment steps and how close the
commitment order is to left-to-right."""

from __future__ import annotations

import torch
from torch import Tensor

from discdiff.typing import Tokens


class Trace:
    """Records the tokens after every step (a :func:`discdiff.samplers.sample` callback).

    ``tokens`` is ``[steps + 1, batch, seq]`` (index 0 the canvas); ``selected`` is
    ``[steps, batch, seq]``.  Statistics count only positions in ``positions`` (default: all;
    pass ``~frozen`` to leave prompts out).
    """

    def __init__(self, canvas: Tokens) -> None:
        self._tokens = [canvas]
        self._selected: list[Tensor] = []
        self._lams: list[tuple[Tensor, Tensor]] = []

    def __call__(self, info) -> None:
        self._tokens.append(info.after)
        self._selected.append(info.selected)
        self._lams.append((info.lam_t, info.lam_s))

    @classmethod
    def from_tokens(cls, tokens: Tokens) -> Trace:
        """A trace of a hand-built trajectory ``[steps + 1, batch, seq]``."""
        trace = cls(tokens[0])
        trace._tokens = list(tokens)
        trace._selected = [t != s for s, t in zip(tokens[:-1], tokens[1:])]
        return trace

    @property
    def tokens(self) -> Tokens:
        return torch.stack(self._tokens)

    @property
    def selected(self) -> Tensor:
        return torch.stack(self._selected) if self._selected else torch.zeros((0, *self._tokens[0].shape), dtype=torch.bool)

    @property
    def num_steps(self) -> int:
        return len(self._tokens) - 1

    def _changes(self) -> Tensor:
        toks = self.tokens
        return toks[1:] != toks[:-1]  # [steps, batch, seq]

    @staticmethod
    def _mask(positions: Tensor | None, like: Tensor) -> Tensor:
        return torch.ones_like(like, dtype=torch.bool) if positions is None else positions.expand_as(like)

    def overwrite_rate(self, positions: Tensor | None = None) -> Tensor:
        """``[steps]``: the fraction of counted positions whose token changed at each step."""
        changes = self._changes()
        mask = self._mask(positions, changes[0]) if self.num_steps else None
        if mask is None:
            return torch.zeros(0)
        return (changes & mask).sum((1, 2)).double() / mask.sum().clamp_min(1)

    def net_change(self, positions: Tensor | None = None) -> Tensor:
        """The fraction of counted positions whose final token differs from the canvas."""
        toks = self.tokens
        mask = self._mask(positions, toks[0])
        return ((toks[-1] != toks[0]) & mask).sum().double() / mask.sum().clamp_min(1)

    def round_trips(self) -> Tensor:
        """``[batch, seq]``: how often a position's token went A -> B -> A (three consecutive
        distinct values in its run-length-encoded history, the first equal to the last)."""
        toks = self.tokens.flatten(1).T.tolist()  # positions x steps: host-side, after sampling
        counts = []
        for history in toks:
            runs = [history[0]]
            for v in history[1:]:
                if v != runs[-1]:
                    runs.append(v)
            counts.append(sum(1 for i in range(len(runs) - 2) if runs[i] == runs[i + 2]))
        return torch.tensor(counts, dtype=torch.long).reshape(self._tokens[0].shape)

    def commitment_step(self) -> Tensor:
        """``[batch, seq]``: the step after which each position never changes again (1-based
        index of its last change; 0 if it never changed)."""
        changes = self._changes()
        if changes.shape[0] == 0:
            return torch.zeros(self._tokens[0].shape, dtype=torch.long)
        steps = torch.arange(1, changes.shape[0] + 1, device=changes.device).view(-1, 1, 1)
        return (changes.long() * steps).amax(0)

    def order_correlation(self, positions: Tensor | None = None) -> Tensor:
        """``[batch]``: Spearman rank correlation between position and commitment step over the
        counted positions (1: strictly left-to-right; NaN if undefined, e.g. all ties)."""
        commit = self.commitment_step().double()
        mask = self._mask(positions, commit).bool()
        out = []
        for row, keep in zip(commit, mask):
            values = row[keep]
            pos = torch.arange(row.numel(), dtype=torch.float64)[keep]
            out.append(_pearson(_ranks(pos), _ranks(values)))
        return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)

    def left_to_right_fraction(self, positions: Tensor | None = None) -> Tensor:
        r"""``[batch]`` float64: how often an earlier position commits before a later one.

        With ``c_i`` the :meth:`commitment_step` of counted position ``i`` and ``n`` counted
        positions per row,

        .. math::

            F = \binom{n}{2}^{-1} \sum_{i < j} \Big( [c_i < c_j] + \tfrac12 [c_i = c_j] \Big),

        so ``F = 1`` for a strictly left-to-right order, ``1/2`` for no order (or all ties) and
        ``0`` for strictly right to left; NaN when a row counts fewer than 2 positions.  Unlike
        :meth:`order_correlation` it is always defined for ``n >= 2`` and reads as a probability:
        the chance that of two random positions the left one is inked first (ties split evenly).
        """
        commit = self.commitment_step()
        mask = self._mask(positions, commit).bool()
        out = []
        for row, keep in zip(commit, mask):
            values = row[keep]
            n = values.numel()
            if n < 2:
                out.append(torch.tensor(float("nan"), dtype=torch.float64, device=values.device))
                continue
            # [i, j] pairs with i < j only; O(n^2) booleans, fine for answers of a few thousand tokens
            upper = torch.ones(n, n, dtype=torch.bool, device=values.device).triu(1)
            earlier = (values.unsqueeze(1) < values.unsqueeze(0)) & upper
            tied = (values.unsqueeze(1) == values.unsqueeze(0)) & upper
            score = earlier.sum().double() + 0.5 * tied.sum().double()
            out.append(score / (n * (n - 1) / 2))
        return torch.stack(out) if out else torch.zeros(0, dtype=torch.float64)


def _ranks(values: Tensor) -> Tensor:
    """Average ranks (ties share the mean of their ranks), as Spearman's rho needs."""
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(values.numel(), dtype=torch.float64)
    uniq, inverse = torch.unique(values, return_inverse=True)
    sums = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, ranks)
    counts = torch.zeros(uniq.numel(), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def _pearson(a: Tensor, b: Tensor) -> Tensor:
    a, b = a - a.mean(), b - b.mean()
    denom = torch.sqrt((a * a).sum() * (b * b).sum())
    return (a * b).sum() / denom if denom > 0 else torch.tensor(float("nan"), dtype=torch.float64)
