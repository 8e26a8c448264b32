"""The optional ``[data]`` extra: parquet, saved datasets (pyarrow) and ``.zst`` files (zstandard)."""

from __future__ import annotations

import importlib
from types import ModuleType

EXTRA = "pip install 'discdiff[data]'"


class MissingExtra(ImportError):
    """A format's library is not installed; the message names the extra that installs it."""


def require(module: str, what: str) -> ModuleType:
    """``import module``, or :class:`MissingExtra` saying that reading ``what`` needs it and how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.partition(".")[0]
        raise MissingExtra(f"reading {what} needs {top}, which is not installed: {EXTRA} (or pip install "
                           f"{top})") from None
