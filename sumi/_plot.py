"""Figures without global state: a :class:`matplotlib.figure.Figure` drawn by the Agg canvas.

No pyplot, so no backend switch, no figure registry and no state outlives a call (each figure is
garbage once saved).  Needs matplotlib (the ``[test]`` and ``[docs]`` extras install it).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["figure", "save", "integer_ticks"]


def figure(width: float, height: float):
    """A new figure of ``width`` x ``height`` inches at 120 dpi, rendered by Agg."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)  # attaches itself: savefig renders with Agg whatever the global backend is
    return fig


def integer_ticks():
    """A tick locator for counts (positions, steps, budgets)."""
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(integer=True)


def save(fig, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` (parents created), laid out tight; returns the path."""
    import io

    from sumi._fs import atomic_write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write(path, buffer.getvalue())
