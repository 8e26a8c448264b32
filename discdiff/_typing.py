"""Deprecated location of :mod:`discdiff.typing` (kept so old imports keep working)."""

from discdiff.typing import *  # noqa: F403
from discdiff.typing import __all__  # noqa: F401
