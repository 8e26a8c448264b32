"""Exceptions raised by discdiff beyond the built-in ones."""

from __future__ import annotations

__all__ = ["NonFiniteError"]


class NonFiniteError(ValueError):
    """A denoiser's output (or a result computed from it) is NaN or infinite where a number is
    needed: raised by the samplers' first, validated step and by :func:`discdiff.likelihood.nelbo`.
    A ``ValueError``, so callers that catch bad input catch it too; catch it by name to tell a
    broken model (NaN weights, an overflow) from a wrong argument."""
