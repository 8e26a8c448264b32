"""Scalar argument checks shared by sumi's public functions and configs.

Both raise ``ValueError`` (a wrong type included) with the argument's name, the accepted range
and the value given, so the command line can report any of them in one line.  ``bool`` is never
accepted as a number.
"""

from __future__ import annotations

import math


def check_int(name: str, value: object, lo: int | None = None, hi: int | None = None) -> int:
    """An ``int`` in ``[lo, hi]`` (either end may be open-ended: ``None``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int{_range(lo, hi)}, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(f"{name} must be an int{_range(lo, hi)}, got {value!r}")
    return value


def check_number(name: str, value: object, lo: float = -math.inf, hi: float = math.inf, *,
                 open_lo: bool = False, open_hi: bool = False) -> float:
    """A finite number in ``[lo, hi]`` (``open_lo``/``open_hi`` exclude the ends), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    too_low = value <= lo if open_lo else value < lo
    too_high = value >= hi if open_hi else value > hi
    if too_low or too_high:
        interval = f"{'(' if open_lo else '['}{lo}, {hi}{')' if open_hi else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {value!r}")
    return float(value)


def _range(lo: int | None, hi: int | None) -> str:
    if lo is not None and hi is not None:
        return f" in [{lo}, {hi}]"
    if lo is not None:
        return f" >= {lo}"
    if hi is not None:
        return f" <= {hi}"
    return ""
