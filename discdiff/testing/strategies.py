"""Hypothesis strategies for discrete-diffusion tests (needs the ``[test]`` extra; docs/math.md,
"Checking your own kernel or schedule").

Tensors are built from drawn integer seeds through an explicit ``torch.Generator``, so every
example is reproducible and shrinks by its seed.  Typical use::

    from hypothesis import given
    from discdiff.testing import strategies as dst

    @given(kernel=dst.kernels(), lam=dst.log_snrs())
    def test_marginal_normalized(kernel, lam): ...

    # your own kernel family next to the built-in ones
    @given(kernel=dst.kernels(families=("uniform", "masked", lambda V: MyKernel(V))))
    def test_my_property(kernel): ...
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import Tensor

from discdiff.kernels import GIDD, Hybrid, Kernel, Masked, Prior, Uniform
from discdiff.schedules import Cosine, GIDDTime, LinearAlpha, LinearLogSNR, Schedule

CLAMP_EDGES = (-9.0, 9.0)
FAMILIES = ("uniform", "masked", "hybrid", "gidd", "prior")
"""The built-in kernel families :func:`kernels` draws by name."""


def vocab_sizes(min_size: int = 2, max_size: int = 12) -> st.SearchStrategy[int]:
    """Small vocabulary sizes (the dense oracle is ``[V, V]``)."""
    return st.integers(min_value=min_size, max_value=max_size)


def log_snrs(min_value: float = -9.0, max_value: float = 9.0) -> st.SearchStrategy[float]:
    """Finite log-SNRs in ``[min_value, max_value]``, with the clamp edges and 0 drawn often."""
    edges = [v for v in (*CLAMP_EDGES, 0.0) if min_value <= v <= max_value]
    floats = st.floats(min_value=min_value, max_value=max_value, allow_nan=False, allow_infinity=False)
    return st.one_of(st.sampled_from(edges), floats) if edges else floats


def log_snr_pairs(min_value: float = -9.0, max_value: float = 9.0) -> st.SearchStrategy[tuple[float, float]]:
    """Pairs ``(lam_t, lam_s)`` of :func:`log_snrs` with ``lam_s >= lam_t`` (``s`` is the cleaner
    time): the two ends of a reverse step, for ``transition``, ``posterior`` and step rules."""
    return st.tuples(log_snrs(min_value, max_value), log_snrs(min_value, max_value)).map(lambda p: (min(p), max(p)))


def _mask_ids(vocab_size: int) -> st.SearchStrategy[int]:
    return st.sampled_from(sorted({0, vocab_size - 1, vocab_size // 2}))


@st.composite
def prior_probs(draw, vocab_size: int) -> Tensor:
    """A random distribution over ``vocab_size`` states, float64 ``[vocab_size]``: a softmax of
    ``2 * N(0, 1)`` logits from a drawn seed, with one state set to probability 0 in about half
    the examples (``vocab_size > 2``).  For :class:`~discdiff.kernels.Prior` kernels and
    constant predictors."""
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    logits = 2.0 * torch.randn(vocab_size, generator=gen, dtype=torch.float64)
    if draw(st.booleans()) and vocab_size > 2:
        logits[int(torch.randint(vocab_size, (1,), generator=gen))] = -math.inf
    return torch.softmax(logits, 0)


@st.composite
def kernels(draw, vocab_size: int | None = None, families: tuple = FAMILIES) -> Kernel:
    """A kernel of one of ``families`` (default: every built-in family), of ``vocab_size`` states
    (default: drawn by :func:`vocab_sizes`).

    Each item of ``families`` is a built-in name from :data:`FAMILIES` (``"uniform"``,
    ``"masked"``, ``"hybrid"``, ``"gidd"``, ``"prior"``: parameters drawn too), a callable
    ``V -> Kernel`` (your own family; it may also return a strategy that draws the kernel), or a
    strategy that draws a :class:`~discdiff.kernels.Kernel` itself.  A drawn kernel must have
    ``vocab_size`` states when ``vocab_size`` is given.

    (``families`` is annotated as a bare ``tuple``: beartype samples container items with the
    global ``random`` module, which hypothesis forbids inside strategies.)
    """
    V = draw(vocab_sizes()) if vocab_size is None else vocab_size
    family = draw(st.sampled_from(families))
    if isinstance(family, str):
        return _builtin_kernel(draw, family, V)
    if isinstance(family, st.SearchStrategy):
        kernel = draw(family)
    elif callable(family):
        kernel = family(V)
        if isinstance(kernel, st.SearchStrategy):
            kernel = draw(kernel)
    else:
        raise TypeError(f"families holds names, callables V -> Kernel or strategies, got {family!r}")
    if not isinstance(kernel, Kernel):
        raise TypeError(f"the family {family!r} produced {kernel!r}, not a discdiff Kernel")
    if vocab_size is not None and kernel.vocab_size != vocab_size:
        raise ValueError(f"the family {family!r} produced a kernel of {kernel.vocab_size} states, "
                         f"but vocab_size={vocab_size} was asked for")
    return kernel


def _builtin_kernel(draw, family: str, V: int) -> Kernel:
    if family == "uniform":
        return Uniform(V)
    if family == "masked":
        return Masked(V, draw(_mask_ids(V)))
    if family == "hybrid":
        shift = draw(st.floats(-4.0, 4.0))
        scale = draw(st.sampled_from([1.0, 0.5, 0.0]) | st.floats(0.0, 1.0))
        return Hybrid(V, draw(_mask_ids(V)), shift=shift, scale=scale)
    if family == "gidd":
        p_u = draw(st.floats(0.01, 0.99))
        gamma = draw(st.sampled_from([1.0]) | st.floats(0.5, 1.9))
        return GIDD(V, draw(_mask_ids(V)), p_uniform=p_u, gamma=gamma)
    if family == "prior":
        return Prior(draw(prior_probs(V)))
    raise ValueError(f"unknown kernel family {family!r}; the built-in ones are {FAMILIES}")


@st.composite
def schedules(draw, clamped: bool | None = None) -> Schedule:
    """A schedule of every family, clamped to ``[-9, 9]`` or not (LinearLogSNR always is)."""
    clamp = draw(st.booleans()) if clamped is None else clamped
    ends = {} if clamp else {"log_snr_min": -math.inf, "log_snr_max": math.inf}
    family = draw(st.sampled_from(["linear_alpha", "cosine", "linear_log_snr", "gidd_time"]))
    if family == "linear_alpha":
        return LinearAlpha(**ends)
    if family == "cosine":
        return Cosine(**ends)
    if family == "linear_log_snr":
        hi = draw(st.floats(0.5, 12.0))
        return LinearLogSNR(log_snr_min=-draw(st.floats(0.5, 12.0)), log_snr_max=hi)
    return GIDDTime(p_uniform=draw(st.floats(0.01, 0.99)), gamma=draw(st.sampled_from([1.0]) | st.floats(0.5, 1.9)), **ends)


@st.composite
def token_batches(draw, kernel: Kernel, max_batch: int = 3, max_seq: int = 6) -> Tensor:
    """Clean tokens ``[batch, seq]`` for ``kernel`` (never its mask id)."""
    batch = draw(st.integers(1, max_batch))
    seq = draw(st.integers(1, max_seq))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    n_clean = kernel.vocab_size - (kernel.mask_id is not None)
    x = torch.randint(n_clean, (batch, seq), generator=gen)
    if kernel.mask_id is not None:
        x = x + (x >= kernel.mask_id).long()
    return x


@st.composite
def log_snr_for(draw, tokens: Tensor, min_value: float = -9.0, max_value: float = 9.0) -> Tensor:
    """A float64 log-SNR tensor for ``tokens`` (``[batch, seq]``) in every layout the library
    accepts: per sequence (``[batch]`` or ``[batch, 1]``) or per token (``[batch, seq]``), with
    values from :func:`log_snrs`."""
    layout = draw(st.sampled_from(["batch", "batch1", "token"]))
    shape = {"batch": tokens.shape[:1], "batch1": (tokens.shape[0], 1), "token": tokens.shape}[layout]
    n = math.prod(shape)
    values = draw(st.lists(log_snrs(min_value, max_value), min_size=n, max_size=n))
    return torch.tensor(values, dtype=torch.float64).reshape(shape)


@st.composite
def logits(draw, shape: tuple, scale: float = 3.0) -> Tensor:
    """Float64 logits of ``shape`` (the vocabulary last): ``scale * N(0, 1)`` from a drawn seed.

    (``shape`` is annotated as a bare ``tuple`` for the reason given under :func:`kernels`.)
    """
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return scale * torch.randn(tuple(shape), generator=gen, dtype=torch.float64)


__all__ = [
    "vocab_sizes",
    "log_snrs",
    "log_snr_pairs",
    "prior_probs",
    "kernels",
    "schedules",
    "token_batches",
    "log_snr_for",
    "logits",
]
