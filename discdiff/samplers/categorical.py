"""The denoiser's distribution ``x_hat`` as samplers use it: tempered, filtered (top-k, top-p,
min-p), mask state removed; its values at given tokens; and exact draws from it.

Nothing here holds a vocabulary-sized tensor besides the logits it was given (docs/math.md,
"The denoised distribution").  With ``s_j = logits_j / T - max_k logits_k / T`` (``-inf`` at
the mask state) in the compute dtype (float32 or wider),

    x_hat_j = [s_j >= tau] exp(s_j) / S,    S = sum_{k: s_k >= tau} exp(s_k),

where ``tau`` is the filters' per-row threshold (``-inf`` without filters; top-p's found by a
radix select, no sort).  One pass over the logits, ``rows`` rows at a time through reused chunk
buffers, gives per row the maximum, ``tau`` and ``log S`` (kept in float64); ``prob_at`` and
``max_prob`` then read single logits, ``argmax`` is one arg-reduction pass.  Draws use the inverse
CDF in float64 over one reused chunk buffer, applying temperature, the mask column and the
threshold inside each chunk, and only at the rows asked for.  Temperature 0 means argmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from discdiff._checks import check_finite_float, check_int, compute_dtype
from discdiff.typing import Logits, Tokens

DRAW_CHUNK = 256  # rows per float64 CDF chunk in inverse_cdf_draw: 256 x 100,278 x 8 bytes = 205 MB
# rows per chunk = budget // vocabulary: on CPU a few MB, so a chunk's buffers stay in cache
# across the several passes made over it; accelerators take larger chunks (fewer launches)
CPU_CHUNK_ELEMENTS = 1 << 20
ACCELERATOR_CHUNK_ELEMENTS = 1 << 24
RADIX_BITS = 11  # top-p threshold search: 2,048-bin histograms, 3 passes for float32 keys
LANES = 16       # copies of each top-p histogram (see top_p_threshold)
_MAX32 = (1 << 31) - 1
_MAX64 = (1 << 63) - 1


@dataclass(frozen=True)
class Filters:
    """Truncation of ``x_hat`` before sampling; ``None`` disables each.

    Each filter keeps the tokens whose tempered logit is at least a per-row threshold computed
    from the unfiltered ``x_hat``; the kept set is the intersection (the largest threshold) and
    is renormalized.  ``top_k``: keep the tokens at least as likely as the k-th most likely
    (ties at the threshold all kept).  ``top_p``: nucleus sampling (Holtzman et al. 2020): keep
    every token whose probability is at least ``v``, the largest probability at which the mass
    of the tokens at least as likely reaches ``p``: for distinct probabilities the smallest set
    whose mass reaches ``p``; tokens tied with the last one needed are all kept.  ``min_p``: keep
    tokens with probability at least ``min_p`` times the largest (Nguyen et al. 2024).
    """

    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None

    def __post_init__(self) -> None:
        if self.top_k is not None:
            check_int("top_k", self.top_k, lo=1)
        if self.top_p is not None:
            check_finite_float("top_p", self.top_p, lo=0.0, hi=1.0, open_lo=True)
        if self.min_p is not None:
            check_finite_float("min_p", self.min_p, lo=0.0, hi=1.0)

    @property
    def active(self) -> bool:
        return self.top_k is not None or self.top_p is not None or bool(self.min_p)

    def threshold(self, s: Tensor, e: Tensor | None = None, keys: Tensor | None = None,
                  buffers: KeyBuffers | None = None) -> Tensor | None:
        """The smallest kept value of ``s`` per row (``None`` when no filter is active).

        ``s`` (``[rows, V]``, float32 or float64) holds the tempered logits minus their row
        maximum (``-inf`` at excluded states); ``e = exp(s)`` and ``keys = ordered_keys(s)`` may
        be passed to save passes, ``buffers`` to reuse chunk buffers.  A token is kept iff
        ``s_j >= threshold``: top-k's is the k-th largest ``s``, min-p's ``log(min_p)``, top-p's
        from :func:`top_p_threshold`; the result is their maximum.
        """
        if not self.active:
            return None
        tau = torch.full(s.shape[:-1], -math.inf, dtype=s.dtype, device=s.device)
        if self.top_k is not None and self.top_k < s.shape[-1]:
            tau = torch.maximum(tau, s.topk(self.top_k, dim=-1).values[..., -1])
        if self.min_p:
            tau = tau.clamp_min(math.log(self.min_p))
        if self.top_p is not None and self.top_p < 1.0:
            keys = ordered_keys(s) if keys is None else keys
            e = torch.exp(s) if e is None else e
            tau = torch.maximum(tau, top_p_threshold(keys, e, self.top_p, s.dtype, buffers))
        return tau

    def apply(self, log_probs: Tensor) -> Tensor:
        """Set filtered-out entries of normalized ``log_probs`` to ``-inf`` and renormalize.

        A dense reference (it returns a tensor the size of its input); samplers never call it.
        """
        if not self.active:
            return log_probs
        return Denoised(log_probs, None, 1.0, self).log_probs


def check_temperature(temperature: float) -> float:
    """A finite ``temperature >= 0`` (0: argmax), as a float."""
    return check_finite_float("temperature", temperature, lo=0.0)


def default_chunk_rows(vocab_size: int, device: torch.device, top_p: bool = False) -> int:
    """Rows per chunk: ``CPU_CHUNK_ELEMENTS`` (or ``ACCELERATOR_CHUNK_ELEMENTS``) // the widest
    per-row tensor: the vocabulary, or with ``top_p`` top-p's histogram if wider (``LANES`` x
    ``2^RADIX_BITS + 2`` bins, a small vocabulary's 32,800)."""
    budget = CPU_CHUNK_ELEMENTS if device.type == "cpu" else ACCELERATOR_CHUNK_ELEMENTS
    width = max(vocab_size, LANES * ((1 << RADIX_BITS) + 2) if top_p else 1)
    return max(1, budget // width)


def gathers_rows(device: torch.device) -> bool:
    """Whether a draw at some positions gathers just those rows (CPU, eager) or runs over every
    row and masks the result (accelerators and ``torch.compile``).

    Gathering needs the number of selected rows, a data-dependent shape: on an accelerator that
    is a host synchronization, under ``torch.compile`` a graph break.  Both ways consume the
    generator identically (one uniform per row, drawn for every row), so they give the same ids.
    """
    return device.type == "cpu" and not torch.compiler.is_compiling()


class Denoised:
    """``x_hat`` at every position: ``softmax(logits / T)`` without the mask state, filtered,
    held as per-row statistics of ``logits`` (which it keeps a reference to, never a copy).

    ``x_hat_j = [s_j >= tau] exp(s_j) / S`` with ``s_j = logits_j / T - max_k logits_k / T``
    (docs/math.md, "The denoised distribution").  The per-row statistics (``max``, ``tau``,
    ``log S``) are computed on first use, in chunks of ``rows`` rows (default
    :func:`default_chunk_rows`): for all rows by :meth:`prob_at`, :meth:`max_prob` and
    ``log_probs``, for the drawn rows only by :meth:`sample` called first.  At ``T = 0`` it is
    the point mass at the argmax.
    """

    def __init__(self, logits: Logits, mask_id: int | None, temperature: float = 1.0,
                 filters: Filters | None = None, *, rows: int | None = None) -> None:
        self.temperature = check_temperature(temperature)
        if rows is not None:
            check_int("rows", rows, lo=1)
        self.logits = logits.detach()  # a view: draws are not differentiable, and the buffers take out=
        self.mask_id = mask_id
        self.filters = filters if filters is not None and filters.active and self.temperature > 0 else None
        self.vocab_size = logits.shape[-1]
        self.shape = logits.shape[:-1]
        self.num_rows = math.prod(self.shape)
        self.dtype = compute_dtype(logits)
        top_p = self.filters is not None and self.filters.top_p is not None and self.filters.top_p < 1.0
        self.rows = rows or default_chunk_rows(self.vocab_size, logits.device, top_p)
        self._flat = _row_view(self.logits)
        self._stats: _RowStats | None = None
        self._argmax: Tensor | None = None

    # ------------------------------------------------------------------ per-position values
    @property
    def argmax(self) -> Tokens:
        """``argmax_j x_hat_j`` per position (the first on ties; the mask state excluded): one
        pass of its own over the logits, made on first use (an arg-reduction costs several times
        the plain maximum the statistics need)."""
        if self._argmax is None:
            bufs = _Buffers(self, min(self.rows, self.num_rows), draw=False, stats=False)
            parts = []
            for a, b in self._spans(self.num_rows):
                block = self._block(a, b)
                if self.temperature in (0.0, 1.0):
                    parts.append(_max_without(block, self.mask_id, with_index=True)[1])
                else:  # the tempered values: rounding may tie logits that differ
                    parts.append(self._tempered(block, bufs).argmax(-1))
            self._argmax = _cat(parts, torch.long, self.logits.device).reshape(self.shape)
        return self._argmax

    def prob_at(self, idx: Tokens) -> Tensor:
        """``x_hat(idx)`` per position, in float64."""
        if self.temperature == 0:
            return (idx == self.argmax).to(torch.float64)
        stats = self._row_stats()
        s = self._shifted_at(idx, stats.top.reshape(self.shape))
        p = torch.exp(s.to(torch.float64) - stats.log_norm.reshape(self.shape))
        if stats.tau is None:
            return p
        return torch.where(s >= stats.tau.reshape(self.shape), p, torch.zeros_like(p))

    def max_prob(self) -> Tensor:
        """``max_j x_hat_j`` per position, in float64 (the maximum is always kept: ``s = 0``)."""
        if self.temperature == 0:
            return torch.ones(self.shape, dtype=torch.float64, device=self.logits.device)
        return torch.exp(-self._row_stats().log_norm).reshape(self.shape)

    @property
    def log_probs(self) -> Tensor | None:
        """``log x_hat`` as a dense ``[*shape, V]`` tensor (``None`` at ``T = 0``).

        Materialized on each access, for inspection and tests; samplers never use it.
        """
        if self.temperature == 0:
            return None
        stats = self._row_stats()
        parts = []
        bufs = _Buffers(self, min(self.rows, self.num_rows), draw=False)
        for a, b in self._spans(self.num_rows):
            s = self._shifted(self._block(a, b), stats.top[a:b], bufs).to(torch.float64)
            lp = s - stats.log_norm[a:b].unsqueeze(-1)
            if stats.tau is not None:
                lp = lp.masked_fill(s < stats.tau[a:b].unsqueeze(-1).to(torch.float64), -math.inf)
            parts.append(lp.to(self.dtype))
        return _cat(parts, self.dtype, self.logits.device, self.vocab_size).reshape(*self.shape, self.vocab_size)

    # ------------------------------------------------------------------ draws
    def sample(self, generator: torch.Generator | None = None, where: Tensor | None = None) -> Tokens:
        """One exact draw per position where ``where`` is true (everywhere by default), ``-1``
        elsewhere; the argmax at ``T = 0`` (no randomness used).

        One float64 uniform ``u`` per position is drawn first, for every position whatever
        ``where`` says, and mapped through the inverse CDF: the first ``j`` with
        ``C_j > u C_{V-1}``, ``C`` the float64 running sum of ``exp(s)`` over kept tokens.
        Only the rows drawn are read (:func:`gathers_rows`).
        """
        device = self.logits.device
        if where is not None and (not isinstance(where, Tensor) or where.dtype != torch.bool
                                  or where.shape != self.shape):
            got = f"{where.dtype} {tuple(where.shape)}" if isinstance(where, Tensor) else type(where).__name__
            raise ValueError(f"where must be a bool tensor of shape {tuple(self.shape)}, got {got}")
        if self.temperature == 0:
            return self.argmax if where is None else torch.where(where, self.argmax, -1)
        u = torch.rand(self.num_rows, generator=generator, device=device, dtype=torch.float64)
        if where is not None and gathers_rows(device):
            index = where.reshape(-1).nonzero().squeeze(-1)
            out = torch.full((self.num_rows,), -1, dtype=torch.long, device=device)
            out[index] = self._draw_rows(u[index], index)
            return out.reshape(self.shape)
        drawn = self._draw_rows(u, None).reshape(self.shape)
        return drawn if where is None else torch.where(where, drawn, -1)

    def _draw_rows(self, u: Tensor, index: Tensor | None) -> Tokens:
        """Draws for the rows ``index`` (all rows if ``None``) given their uniforms ``u``."""
        n = u.shape[0]
        stats = self._stats
        parts = []
        bufs = _Buffers(self, min(self.rows, n), draw=True, stats=stats is None)
        for a, b in self._spans(n):
            block = self._block(a, b, index)
            if stats is None:
                top, tau, _ = self._block_stats(block, bufs)
            else:
                rows = slice(a, b) if index is None else index[a:b]
                top, tau = stats.top[rows], None if stats.tau is None else stats.tau[rows]
            parts.append(self._draw_block(block, u[a:b], top, tau, bufs))
        return _cat(parts, torch.long, u.device)

    def _draw_block(self, block: Tensor, u: Tensor, top: Tensor, tau: Tensor | None, bufs: _Buffers) -> Tokens:
        s = self._shifted(block, top, bufs)
        if tau is not None:
            s = s.masked_fill_(s < tau.unsqueeze(-1), -math.inf)
        cdf = bufs.cdf[: block.shape[0]]
        cdf.copy_(s)
        return _search_cdf(cdf.exp_(), u)

    # ------------------------------------------------------------------ statistics
    def _row_stats(self) -> _RowStats:
        if self._stats is None:
            fields = ([], [], [])
            bufs = _Buffers(self, min(self.rows, self.num_rows), draw=False)
            for a, b in self._spans(self.num_rows):
                for parts, value in zip(fields, self._block_stats(self._block(a, b), bufs)):
                    parts.append(value)
            device = self.logits.device
            top, tau, log_norm = fields
            self._stats = _RowStats(
                top=_cat(top, self.dtype, device),
                tau=None if self.filters is None else _cat(tau, self.dtype, device),
                log_norm=_cat(log_norm, torch.float64, device),
            )
        return self._stats

    def _block_stats(self, block: Tensor, bufs: _Buffers) -> tuple[Tensor, Tensor | None, Tensor]:
        """``(top, tau, log_norm)`` of one chunk of rows: the maximum tempered logit (mask
        excluded), the filters' threshold on ``s`` (or ``None``), ``log S`` in float64."""
        t = self._tempered(block, bufs)
        # at T != 1 the mask column of t is -inf already
        top = _max_without(t, self.mask_id if self.temperature == 1.0 else None)[0].to(self.dtype)
        s = self._shifted(block, top, bufs, tempered=t)
        e = torch.exp(s, out=bufs.e[: block.shape[0]])
        # float32 sums are cascaded (pairwise) on CPU and tree-reduced on GPU: accurate to a few
        # ulps over 100k terms, and a float64 accumulator would first copy the chunk
        if self.filters is None:
            return top, None, e.sum(-1).to(torch.float64).log()
        work = bufs.keys.first(block.shape[0])
        keys = ordered_keys(s, out=work.keys, scratch=work.scratch)
        tau = self.filters.threshold(s, e, keys, work)
        mass = kept_mass(keys, tau, e, out=bufs.s[: block.shape[0]], scratch=work.scratch)  # s is done
        return top, tau, mass.to(torch.float64).log()

    def _tempered(self, block: Tensor, bufs: _Buffers) -> Tensor:
        """``logits / T`` in the compute dtype with the mask column at ``-inf``; at ``T = 1`` the
        block itself (the mask is applied by :meth:`_shifted`, so nothing is copied)."""
        if self.temperature == 1.0:
            return block
        t = bufs.t[: block.shape[0]]
        if block.dtype == self.dtype:
            torch.div(block, self.temperature, out=t)
        else:  # convert first: a division of bf16 logits would round in bf16
            t.copy_(block).div_(self.temperature)
        if self.mask_id is not None:
            t[:, self.mask_id] = -math.inf
        return t

    def _shifted(self, block: Tensor, top: Tensor, bufs: _Buffers, tempered: Tensor | None = None) -> Tensor:
        """``s = logits / T - top`` in the compute dtype (``-inf`` at the mask), in ``bufs.s``."""
        t = self._tempered(block, bufs) if tempered is None else tempered
        s = torch.sub(t, top.unsqueeze(-1), out=bufs.s[: block.shape[0]])
        if self.temperature == 1.0 and self.mask_id is not None:
            s[:, self.mask_id] = -math.inf
        return s

    def _shifted_at(self, idx: Tokens, top: Tensor) -> Tensor:
        """``s`` at one state per position, by the same arithmetic as :meth:`_shifted`."""
        idx = idx.long()
        t = self.logits.gather(-1, idx.unsqueeze(-1)).squeeze(-1).to(self.dtype)
        if self.temperature != 1.0:
            t = t / self.temperature
        s = t - top
        return s if self.mask_id is None else s.masked_fill(idx == self.mask_id, -math.inf)

    # ------------------------------------------------------------------ rows
    def _spans(self, n: int) -> list:
        """``[(start, stop), ...]`` chunks of ``rows`` rows covering ``0 .. n``.  (Annotated as a
        bare ``list``: under pytest beartype checks ``list[...]`` by sampling one item with
        Python's global ``random``, which a sampler must leave alone.)"""
        return [(a, min(a + self.rows, n)) for a in range(0, n, self.rows)]

    def _block(self, start: int, stop: int, index: Tensor | None = None) -> Tensor:
        """Rows ``start:stop`` (of ``index``, if given) as ``[rows, V]``: a view where possible."""
        if index is None and self._flat is not None:
            return self._flat[start:stop]
        rows = torch.arange(start, stop, device=self.logits.device) if index is None else index[start:stop]
        if self._flat is not None:
            return self._flat.index_select(0, rows)
        return self.logits[torch.unravel_index(rows, self.shape)]


@dataclass
class _RowStats:
    top: Tensor            # [rows] max tempered logit, compute dtype
    tau: Tensor | None     # [rows] threshold on s, compute dtype (None: no filter)
    log_norm: Tensor       # [rows] log S, float64


class _Buffers:
    """The chunk buffers of one pass (allocated once, reused by every chunk of the pass)."""

    def __init__(self, x0: Denoised, rows: int, *, draw: bool, stats: bool = True) -> None:
        rows, V, device = max(rows, 1), x0.vocab_size, x0.logits.device
        empty = lambda dtype: torch.empty((rows, V), dtype=dtype, device=device)  # noqa: E731
        self.t = empty(x0.dtype) if x0.temperature not in (0.0, 1.0) else None
        self.s = empty(x0.dtype)
        self.e = empty(x0.dtype) if stats else None
        self.cdf = empty(torch.float64) if draw else None
        top_p = x0.filters is not None and x0.filters.top_p is not None and x0.filters.top_p < 1.0
        self.keys = None if x0.filters is None or not stats else KeyBuffers.empty(rows, V, x0.dtype, device, top_p)


def _row_view(logits: Tensor) -> Tensor | None:
    """``logits`` as ``[rows, V]`` without a copy, or ``None`` when the leading dimensions
    cannot be merged (an ``expand``-ed tensor, say): rows are then gathered chunk by chunk."""
    lead = [(n, st) for n, st in zip(logits.shape[:-1], logits.stride()[:-1]) if n != 1]
    if all(lead[i][1] == lead[i + 1][1] * lead[i + 1][0] for i in range(len(lead) - 1)):
        return logits.view(-1, logits.shape[-1])
    return None


def _cat(parts: list, dtype: torch.dtype, device: torch.device, width: int | None = None) -> Tensor:
    """``torch.cat`` of a list of tensors (bare ``list``: see ``Denoised._spans``), or an empty
    ``[0]`` (``[0, width]``) tensor."""
    if parts:
        return torch.cat(parts)
    return torch.empty((0,) if width is None else (0, width), dtype=dtype, device=device)


def _max_without(block: Tensor, mask_id: int | None, with_index: bool = False) -> tuple[Tensor, Tensor | None]:
    """Row maximum over every column but ``mask_id``, without a copy, and with ``with_index``
    its first index (else ``None``)."""
    reduce = (lambda x: x.max(-1)) if with_index else (lambda x: (x.amax(-1), None))
    if mask_id is None:
        return reduce(block)
    left, right = block[:, :mask_id], block[:, mask_id + 1:]
    if right.shape[-1] == 0:
        return reduce(left)
    r_val, r_idx = reduce(right)
    if left.shape[-1] == 0:
        return r_val, None if r_idx is None else r_idx + (mask_id + 1)
    l_val, l_idx = reduce(left)
    if r_idx is None:
        return torch.maximum(l_val, r_val), None
    right_wins = r_val > l_val  # ties go to the lower index, like argmax
    return torch.where(right_wins, r_val, l_val), torch.where(right_wins, r_idx + (mask_id + 1), l_idx)


def _search_cdf(weights: Tensor, u: Tensor) -> Tokens:
    """In place: ``weights`` (``[rows, V]`` float64, unnormalized probabilities) become their
    running sums ``C``; returns per row ``min{j : C_j > u C_{V-1}}`` (clamped to ``V - 1``)."""
    torch.cumsum(weights, dim=-1, out=weights)
    target = (u * weights[:, -1]).unsqueeze(-1)
    return torch.searchsorted(weights, target, right=True).squeeze(-1).clamp_max(weights.shape[-1] - 1)


@dataclass
class KeyBuffers:
    """Chunk buffers for the filters' integer-key passes (``[rows, V]`` each unless noted):
    ``keys`` and ``scratch`` in the key dtype, and for top-p ``index`` (int64), ``weights``
    (float64) and ``hist`` (float64 ``[rows, LANES * (2^RADIX_BITS + 2)]``).  Reusing them keeps
    each pass from allocating (and the heap from growing) chunk after chunk."""

    keys: Tensor
    scratch: Tensor
    index: Tensor | None = None
    weights: Tensor | None = None
    hist: Tensor | None = None

    @classmethod
    def empty(cls, rows: int, vocab_size: int, dtype: torch.dtype, device: torch.device,
              top_p: bool) -> KeyBuffers:
        key_dtype = torch.int64 if dtype == torch.float64 else torch.int32
        new = lambda dt, width=vocab_size: torch.empty((rows, width), dtype=dt, device=device)  # noqa: E731
        if not top_p:
            return cls(new(key_dtype), new(key_dtype))
        return cls(new(key_dtype), new(key_dtype), new(torch.int64), new(torch.float64),
                   new(torch.float64, LANES * ((1 << RADIX_BITS) + 2)))

    def first(self, rows: int) -> KeyBuffers:
        """The same buffers cut to the first ``rows`` rows."""
        return KeyBuffers(*(None if b is None else b[:rows] for b in
                            (self.keys, self.scratch, self.index, self.weights, self.hist)))


def ordered_keys(s: Tensor, out: Tensor | None = None, scratch: Tensor | None = None) -> Tensor:
    """Integer keys in the order of the float values ``s``: int32 for float32, int64 for float64
    (the sign bit kept, the other bits flipped for negative values; ``-0.0`` taken as ``+0.0``,
    so keys tie exactly where the floats compare equal).  ``out`` and ``scratch`` (``s``'s shape,
    the key dtype) avoid allocations."""
    key_dtype = torch.int64 if s.dtype == torch.float64 else torch.int32
    top_bit = 8 * s.element_size() - 1
    if out is None:
        bits = (s + 0.0).view(key_dtype)
        return bits ^ ((bits >> top_bit) & _max_int(key_dtype))
    torch.add(s, 0.0, out=out.view(s.dtype))
    flip = torch.bitwise_right_shift(out, top_bit, out=scratch).bitwise_and_(_max_int(key_dtype))
    return out.bitwise_xor_(flip)


def _key_values(keys: Tensor, dtype: torch.dtype) -> Tensor:
    """The floats of :func:`ordered_keys` (the map is its own inverse on the bits)."""
    return (keys ^ ((keys >> (8 * keys.element_size() - 1)) & _max_int(keys.dtype))).view(dtype)


def _max_int(dtype: torch.dtype) -> int:
    return _MAX64 if dtype == torch.int64 else _MAX32


def kept_mass(keys: Tensor, tau: Tensor, e: Tensor, out: Tensor, scratch: Tensor | None = None) -> Tensor:
    """``sum_j e_j [s_j >= tau]`` per row, from the keys of ``s``: an exact 0/1 indicator
    ``clamp(key - key(tau) + 1, 0, 1)`` in integers (in ``scratch``), converted into ``out``
    (``e``'s dtype) and multiplied (several times faster on CPU than a boolean mask and ``where``)."""
    indicator = torch.sub(keys, (ordered_keys(tau) - 1).unsqueeze(-1), out=scratch).clamp_(0, 1)
    return out.copy_(indicator).mul_(e).sum(-1)


def top_p_threshold(keys: Tensor, e: Tensor, p: float, dtype: torch.dtype,
                    buffers: KeyBuffers | None = None) -> Tensor:
    """Top-p's threshold per row: ``v = max{s_j : sum_{k: s_k >= s_j} e_k >= p sum_k e_k}``.

    ``keys = ordered_keys(s)`` of ``s`` (``[rows, V]``, ``dtype`` float32 or float64, ``<= 0``)
    and ``e = exp(s)``; ``buffers`` (:class:`KeyBuffers`, with the top-p ones) avoid allocations.
    Keeping ``s_j >= v`` keeps exactly the tokens whose strictly more likely tokens hold less than
    ``p`` of the mass.  Found without sorting by a radix select on the keys: each pass builds a
    ``2^RADIX_BITS``-bin histogram of the mass ``e`` (float64) of the keys in the current range,
    by their next bits, and keeps the highest bin where the mass at or above it reaches ``p``;
    3 passes settle a float32 key exactly, 6 a float64 one.
    """
    rows, V = keys.shape
    stride = (1 << RADIX_BITS) + 2
    if buffers is None or buffers.index is None:
        buffers = KeyBuffers.empty(rows, V, dtype, keys.device, top_p=True)
    weights = buffers.weights.copy_(e)
    bins = buffers.scratch
    # LANES copies of the histogram, token j adding to copy j % LANES: runs of tokens in one bin
    # (most tokens fall outside the range after the first pass) then do not serialize on one
    # accumulator, which made the scatter 5x slower on CPU
    lanes = ((torch.arange(V, device=keys.device) % LANES) * stride).to(keys.dtype)

    def histogram() -> Tensor:  # bins in [0, stride) -> mass per bin, [rows, stride]
        index = buffers.index.copy_(bins.add_(lanes))
        spread = buffers.hist.zero_().scatter_add_(1, index, weights)
        return spread.view(rows, LANES, stride).sum(1)

    half = 1 << (RADIX_BITS - 1)
    width = 8 * keys.element_size() - RADIX_BITS
    torch.bitwise_right_shift(keys, width, out=bins).add_(half)  # the top bits, sign included
    hist = histogram()[:, : 1 << RADIX_BITS]
    target = p * hist.sum(-1)
    digit, above = _pick_bin(hist, weights.new_zeros(rows), target)
    # never below the range of -inf (s >= -inf), so the arithmetic below stays inside the key type
    floor = ordered_keys(torch.full((1,), -math.inf, dtype=dtype, device=keys.device))
    digit = torch.maximum(digit, ((floor >> width) + half).long())
    base = ((digit - half) << width).to(keys.dtype)  # the lowest key of the chosen range
    while width > 0:
        n_bits = min(RADIX_BITS, width)
        shift, n = width - n_bits, 1 << n_bits
        unit = 1 << shift
        # keys below the range -> bin 0, in it -> 1 .. n by their next bits, above it -> n + 1
        torch.sub(keys, (base - unit).unsqueeze(-1), out=bins).clamp_(unit - 1, (n + 1) * unit)
        if shift:
            bins.bitwise_right_shift_(shift)
        digit, above = _pick_bin(histogram()[:, 1:n + 1], above, target)
        base = base + (digit << shift).to(keys.dtype)
        width = shift
    return _key_values(torch.maximum(base, floor), dtype)


def _pick_bin(hist: Tensor, above: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """The highest bin whose mass at or above it (plus ``above``, the mass above the range)
    reaches ``target``, and the new ``above`` (the mass strictly above that bin).  If none does
    (round-off in the last bits), bin 0: the whole range is kept, as the coarser pass decided."""
    suffix = hist.flip(-1).cumsum(-1).flip(-1) + above.unsqueeze(-1)
    digit = ((suffix >= target.unsqueeze(-1)).sum(-1) - 1).clamp_min(0)
    beyond = torch.cat([suffix[:, 1:], above.unsqueeze(-1)], dim=-1)  # mass strictly above each bin
    return digit, beyond.gather(-1, digit.unsqueeze(-1)).squeeze(-1)


def inverse_cdf_draw(log_probs: Tensor, generator: torch.Generator | None = None,
                     chunk: int = DRAW_CHUNK) -> Tokens:
    """Draw ``j`` with probability ``exp(log_probs[..., j])`` (normalized rows) by the inverse CDF
    in float64, ``chunk`` positions at a time; returns ``log_probs.shape[:-1]`` int64 ids."""
    shape, V = log_probs.shape[:-1], log_probs.shape[-1]
    flat = log_probs.reshape(-1, V)
    u = torch.rand(flat.shape[0], generator=generator, device=flat.device, dtype=torch.float64)
    out = torch.empty(flat.shape[0], dtype=torch.long, device=flat.device)
    # one float64 buffer reused across chunks: fresh 200 MB allocations per chunk cost more
    # (page faults) than the arithmetic
    buffer = torch.empty((min(chunk, flat.shape[0]), V), dtype=torch.float64, device=flat.device)
    for start in range(0, flat.shape[0], chunk):
        rows = flat[start:start + chunk]
        cdf = buffer[: rows.shape[0]]
        out[start:start + chunk] = _search_cdf(cdf.copy_(rows).exp_(), u[start:start + chunk])
    return out.reshape(shape)
