"""Classifier-free guidance on the denoiser's distribution (docs/math.md, "Guidance").

With ``a = log_softmax(cond_logits)`` and ``b = log_softmax(uncond_logits)`` (float32 or wider)
and the guidance scale ``w``,

    log p_w(x) = (1 + w) a(x) - w b(x) - log sum_y exp((1 + w) a(y) - w b(y)),

i.e. ``p_w(x | c) ∝ p(x | c)^(1 + w) p(x)^(-w)``: classifier-free guidance (Ho & Salimans 2022,
arXiv 2207.12598) applied to the denoiser's categorical distribution, as in D-CFG
(Schiff et al. 2025, arXiv 2412.10193, with ``gamma = 1 + w``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from discdiff._checks import check_finite_float, check_int, compute_dtype
from discdiff.samplers.categorical import default_chunk_rows
from discdiff.typing import Logits


def check_scale(scale: object) -> float:
    """A guidance scale: a finite number ``w >= -1`` (``-1``: unconditional, ``0``: conditional,
    ``> 0``: guided), as a float."""
    return check_finite_float("scale", scale, lo=-1.0)


def uncond_log_floor(dtype: torch.dtype) -> float:
    """The floor on ``log p(x)`` at positive scales: the log of the smallest positive normal number
    of ``dtype`` (about -87.3 for float32, -708.4 for float64)."""
    return math.log(torch.finfo(dtype).tiny)


def cfg(cond_logits: Logits, uncond_logits: Logits, scale: float, *, rows: int | None = None) -> Logits:
    """Classifier-free guidance: the guided log-probabilities ``log p_w`` over the vocabulary.

    ``log p_w = (1 + w) log p(x | c) - w log p(x)``, renormalized over the last dimension
    (Ho & Salimans 2022, arXiv 2207.12598; the discrete form ``p(x | c)^gamma
    p(x)^(1 - gamma)``, ``gamma = 1 + w``, is D-CFG, Schiff et al. 2025, arXiv 2412.10193;
    docs/math.md, "Guidance").  ``p(x | c)`` and ``p(x)`` are the softmaxes of the two
    logits.  The result is normalized (``logsumexp`` over the vocabulary is 0 up to rounding).

    Edge cases, defined so that no NaN or ``+inf`` appears:

    - ``w = 0`` returns ``log_softmax(cond_logits)`` exactly and ``w = -1``
      ``log_softmax(uncond_logits)`` exactly; the other input is not read.
    - ``-1 < w < 0`` (a geometric mixture of the two): a token impossible under either
      distribution (log-probability ``-inf``) stays impossible.
    - ``w > 0``: a token impossible under ``p(x | c)`` stays impossible; ``log p(x)`` is floored
      at :func:`uncond_log_floor` (the log of the smallest normal number of the compute dtype),
      so a token possible under ``p(x | c)`` but impossible under ``p(x)`` gets a large finite
      boost instead of ``+inf``.
    - A position where the guided distribution has no support (disjoint supports with
      ``-1 < w < 0``) is ``-inf`` at every token, which the samplers' input check reports.

    Guidance commutes with removing states: the samplers' ``x_hat`` of the result (which ignores
    a kernel's mask state) equals guidance of the two distributions with the mask state removed
    first, so a finite or ``-inf`` mask logit in either input makes no difference to sampling.

    The only vocabulary-sized allocation is the output; the work runs ``rows`` rows at a time
    (default :func:`discdiff.samplers.categorical.default_chunk_rows`) with one chunk of scratch.
    Shapes are checked, values are not (no host sync).  The result carries no gradient
    (guidance is a sampling-time procedure).

    Args:
        cond_logits: the conditional denoiser's logits, ``[*shape, V]``, any floating dtype.
        uncond_logits: the unconditional denoiser's logits, the same shape.
        scale: the guidance scale ``w``, a finite number ``>= -1``.
        rows: rows of ``V`` values processed at a time (``None``: the samplers' default).

    Returns:
        ``log p_w``, ``[*shape, V]``, float32 (float64 if either input is float64).
    """
    w = check_scale(scale)
    for name, t in (("cond_logits", cond_logits), ("uncond_logits", uncond_logits)):
        if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() == 0:
            got = f"dtype {t.dtype}, shape {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
            raise TypeError(f"{name} must be floating-point logits [*shape, V], got {got}")
    if cond_logits.shape != uncond_logits.shape:
        raise ValueError(f"cond_logits has shape {tuple(cond_logits.shape)} but uncond_logits has shape "
                         f"{tuple(uncond_logits.shape)}; guidance needs both over the same positions and vocabulary")
    if cond_logits.device != uncond_logits.device:
        raise ValueError(f"cond_logits is on {cond_logits.device} but uncond_logits on {uncond_logits.device}")
    if rows is not None:
        check_int("rows", rows, lo=1)
    dtype = compute_dtype(cond_logits, uncond_logits)
    with torch.no_grad():
        if w == 0:
            return log_softmax_rows(cond_logits, dtype, rows)
        if w == -1:
            return log_softmax_rows(uncond_logits, dtype, rows)
        return _guided(cond_logits, uncond_logits, w, dtype, rows)


def log_softmax_rows(logits: Tensor, dtype: torch.dtype, rows: int | None = None) -> Tensor:
    """``log_softmax(logits)`` over the last dimension in ``dtype``, ``rows`` rows at a time into
    the output (each row is computed exactly as one ``torch.log_softmax`` call computes it)."""
    shape, V = logits.shape, logits.shape[-1]
    flat = logits.detach().reshape(-1, V)
    out = torch.empty(flat.shape, dtype=dtype, device=flat.device)
    step = rows or default_chunk_rows(V, flat.device)
    for a in range(0, flat.shape[0], step):
        out[a:a + step] = torch.log_softmax(flat[a:a + step], -1, dtype=dtype)
    return out.reshape(shape)


def _guided(cond: Tensor, uncond: Tensor, w: float, dtype: torch.dtype, rows: int | None) -> Tensor:
    shape, V = cond.shape, cond.shape[-1]
    c, u = cond.detach().reshape(-1, V), uncond.detach().reshape(-1, V)
    out = torch.empty(c.shape, dtype=dtype, device=c.device)
    step = rows or default_chunk_rows(V, c.device)
    floor = uncond_log_floor(dtype)
    for a in range(0, c.shape[0], step):
        o = out[a:a + step]
        o.copy_(torch.log_softmax(c[a:a + step], -1, dtype=dtype)).mul_(1.0 + w)
        b = torch.log_softmax(u[a:a + step], -1, dtype=dtype)
        if w > 0:
            # -w * (-inf) would be +inf (and NaN next to a conditional -inf): floor p(x) instead
            b.clamp_min_(floor)
        # (1 + w) a - w b: for w < 0 both terms are <= 0, so -inf + -inf stays -inf (no NaN)
        o.sub_(b, alpha=w)
        norm = torch.logsumexp(o, -1, keepdim=True)
        # a row with no support stays -inf everywhere instead of -inf - (-inf) = NaN
        o.sub_(norm.masked_fill_(norm == -math.inf, 0.0))
    return out.reshape(shape)
