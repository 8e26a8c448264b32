"""The speed-quality Pareto frontier of generation (Sahoo et al. 2026, arXiv 2602.15014).

Perplexity is not comparable across diffusion families; what is comparable is the quality of
samples reached for a given generation cost.  Each measured point (one model x sampler x step
count) has a ``cost`` (forward passes, or seconds per sample; lower is better) and a
``quality`` (generative perplexity under a judge; lower is better).  The frontier is the set of
points that no other point dominates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from sumi._checks import check_number

T = TypeVar("T")

__all__ = ["pareto_front"]


def _pair(point: Any) -> tuple[Any, Any]:
    cost, quality = point
    return cost, quality


def pareto_front(points: Sequence[T], *, key: Callable[[T], tuple[float, float]] | None = None) -> list[T]:
    """The non-dominated points, sorted by cost.

    A point ``p`` dominates ``q`` when ``cost(p) <= cost(q)`` and ``quality(p) <= quality(q)``
    with at least one of the two strict (both lower is better).  The frontier is every point no
    other point dominates.  Ties: points with equal cost and equal quality do not dominate each
    other, so exact duplicates are all kept; the result is ordered by cost, then by input order
    (so it is deterministic and equal-cost points can only be duplicates).

    Args:
        points: the measured points; each is a ``(cost, quality)`` pair unless ``key`` is given.
        key: maps a point to its ``(cost, quality)`` (for example
            ``lambda row: (row["forward_passes"], row["gen_ppl"])``); the points returned are the
            objects given, not the pairs.

    Returns:
        The frontier's points (the same objects), in order of increasing cost.

    Raises:
        ValueError: a cost that is not a finite number >= 0, or a quality that is not a finite
            number (a NaN or infinite generative perplexity is a failed measurement, which
            must be seen, never silently left off the frontier).
    """
    get = _pair if key is None else key
    measured = []
    for i, point in enumerate(points):
        cost, quality = get(point)
        measured.append((check_number(f"points[{i}] cost", cost, 0.0),
                         check_number(f"points[{i}] quality", quality), i))
    measured.sort()  # by cost, then quality, then input order
    front = []
    best = None  # (cost, quality) of the lowest quality seen so far (the earliest such point)
    for cost, quality, i in measured:
        # every point sorted before this one costs at most as much; this one is dominated iff one
        # of them has a lower quality, or the same quality at a strictly lower cost
        if best is None or quality < best[1] or (cost, quality) == best:
            front.append(points[i])
            if best is None or quality < best[1]:
                best = (cost, quality)
    return front
