"""Reading packed shards: :class:`PackedDataset` (one prepared directory) and :class:`Mixture`.

A row is ``seq_len`` token ids (``numpy.uint32``, read-only, memory-mapped): a window of the
``BOS text EOS BOS text EOS ...`` stream written by :func:`sumi.data.prepare`, or in prompted
data one record ``BOS prompt | response | EOS fill | EOS | BOS`` whose prompt length ``P`` (BOS
included) :meth:`PackedDataset.prompt_lengths` gives (:mod:`sumi.data.prompted`; docs/training.md,
"Prompted data").

Phases (docs/math.md "Sumi recipe facts": pretraining, then mid-training with a code/math/general/reasoning
mix): one :class:`Mixture` per phase, each with its own weights and size.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from sumi._checks import check_int, check_number
from sumi._fs import sha256_files
from sumi.data.manifest import Manifest


def _row_indices(indices, n: int) -> np.ndarray:
    """``indices`` (integers in ``[-n, n)``, any shape) as int64 rows in ``[0, n)``; a ``TypeError``
    for non-integers, an ``IndexError`` naming the first index out of range."""
    idx = np.asarray(indices)
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"row indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise IndexError(f"row {int(idx[(idx < -n) | (idx >= n)][0])} out of range for {n} rows")
    return idx % n if n else idx


class IntegrityError(ValueError):
    """A shard whose bytes differ from the checksum its manifest recorded at prepare time."""


class PackedDataset:
    """The rows of one prepared directory, memory-mapped (nothing is read until indexed).

    Checks the manifest and that every shard exists with dtype uint32 and shape
    ``[shard_rows[i], seq_len]``.  The tokens themselves are checked by :meth:`verify` (every
    shard's sha256 against the manifest: ``PackedDataset(path, verify=True)`` when opening a
    dataset to train on) and :meth:`check_ids` (ids below the vocabulary); both read every shard.

    Prompted data (:attr:`prompted`): the prompt lengths are read at open (4 bytes a row), each
    prompt file checked to be uint32 ``[shard_rows[i]]`` with every ``P`` in ``[1, seq_len - 1]``
    (BOS at least, and at least one position of the row left to learn).
    """

    def __init__(self, path, *, verify: bool = False) -> None:
        self.path = Path(path)
        self.manifest: Manifest = Manifest.load(self.path)
        if self.manifest.tokenizer_file is not None and not (self.path / self.manifest.tokenizer_file).is_file():
            raise FileNotFoundError(f"{self.path}: {self.manifest.tokenizer_file} listed in the manifest is missing")
        self.shards: list[np.ndarray] = []
        for name, rows in zip(self.manifest.shards, self.manifest.shard_rows):
            file = self.path / name
            if not file.is_file():
                raise FileNotFoundError(f"{self.path}: shard {name} listed in the manifest is missing")
            try:
                arr = np.load(file, mmap_mode="r", allow_pickle=False)
            except ValueError as e:
                raise ValueError(f"{file} is not a .npy array: {e}") from None
            if arr.dtype != np.uint32 or arr.shape != (rows, self.seq_len):
                raise ValueError(f"{file}: expected uint32 [{rows}, {self.seq_len}] (the manifest), "
                                 f"got {arr.dtype} {list(arr.shape)}")
            self.shards.append(arr)
        self._starts = np.cumsum([0, *self.manifest.shard_rows])
        self._prompt_lengths = self._read_prompt_lengths() if self.prompted else None
        if verify:
            self.verify()

    seq_len = property(lambda self: self.manifest.seq_len)
    vocab_size = property(lambda self: self.manifest.vocab_size)

    @property
    def prompted(self) -> bool:
        """Whether each row is one prompted record (``sumi data prepare --prompted``)."""
        return self.manifest.prompted

    def _read_prompt_lengths(self) -> np.ndarray:
        lengths = []
        for name, rows in zip(self.manifest.prompt_shards, self.manifest.shard_rows):
            file = self.path / name
            if not file.is_file():
                raise FileNotFoundError(f"{self.path}: prompt shard {name} listed in the manifest is missing")
            try:
                arr = np.load(file, allow_pickle=False)
            except ValueError as e:
                raise ValueError(f"{file} is not a .npy array: {e}") from None
            if arr.dtype != np.uint32 or arr.shape != (rows,):
                raise ValueError(f"{file}: expected uint32 [{rows}] (the manifest), got {arr.dtype} {list(arr.shape)}")
            bad = np.flatnonzero((arr < 1) | (arr > self.seq_len - 1))
            if bad.size:
                raise ValueError(f"{file}: row {int(bad[0])} has prompt length {int(arr[bad[0]])}, outside "
                                 f"[1, seq_len - 1 = {self.seq_len - 1}]")
            lengths.append(arr)
        return np.concatenate(lengths) if lengths else np.zeros(0, np.uint32)

    def prompt_lengths(self, indices) -> np.ndarray:
        """The prompt length ``P`` (BOS included; int64, the shape of ``indices``) of each row in
        ``indices`` (integers in ``[-len, len)``); 0 for every row of data without prompts."""
        idx = _row_indices(indices, len(self))
        if self._prompt_lengths is None:
            return np.zeros(idx.shape, dtype=np.int64)
        return self._prompt_lengths[idx].astype(np.int64)

    @property
    def tokenizer_path(self) -> Path | None:
        """The ``tokenizer.json`` that wrote the ids (saved by :func:`sumi.data.prepare`), or
        ``None`` for a directory prepared before it was saved.  Load it with the manifest's ids:
        ``SumiTokenizer.from_file(path, vocab_size=ds.vocab_size)``."""
        name = self.manifest.tokenizer_file
        return None if name is None else self.path / name

    def verify(self, threads: int | None = None, *, part: tuple[int, int] = (0, 1)) -> None:
        """Prove every shard holds the bytes written at prepare time: its sha256 against the
        manifest's ``shard_sha256`` (and each prompt shard's against ``prompt_sha256``), files
        hashed in parallel by ``threads`` threads (default: up to 8, one per CPU; hashlib
        releases the GIL).  ``part=(i, n)`` checks only the files ``i, i + n, ...`` of that list
        (the ranks of a job share the work).  Raises :class:`IntegrityError`
        naming every shard that differs.  A manifest without checksums (prepared by an older
        version) cannot be verified: a ``UserWarning`` says so and how to add them (prepare again)."""
        expected = self.manifest.shard_sha256
        if expected is None:
            warnings.warn(f"{self.path}: the manifest has no shard checksums (prepared by an older version), so its "
                          "tokens cannot be verified; run `sumi data prepare --overwrite` again to add them",
                          UserWarning, stacklevel=2)
            return
        index, count = part
        names = [*self.manifest.shards, *(self.manifest.prompt_shards or [])]
        expected = [*expected, *(self.manifest.prompt_sha256 or [])]
        names, expected = names[index::count], expected[index::count]
        got = sha256_files([self.path / name for name in names], threads=threads)
        bad = [name for name, want, have in zip(names, expected, got) if want != have]
        if bad:
            shown = ", ".join(str(self.path / n) for n in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise IntegrityError(f"{shown}: sha256 differs from the manifest's: {len(bad)} of "
                                 f"{len(expected)} shard(s) checked changed after `sumi data prepare` (corrupted or "
                                 "edited); prepare the data again")

    def __len__(self) -> int:
        return self.manifest.total_rows

    def __getitem__(self, i) -> np.ndarray:
        i = int(np.int64(i)) if isinstance(i, np.integer) else i
        if not isinstance(i, int) or isinstance(i, bool):
            raise TypeError(f"row index must be an int, got {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"row {i} out of range for {n} rows")
        i %= n
        s = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self.shards[s][i - self._starts[s]]

    def check_ids(self, vocab_size: int | None = None) -> None:
        """Raise ``ValueError`` naming shard, row and column of the first id ``>= vocab_size``
        (default: the manifest's).  Reads every shard, in blocks."""
        vocab_size = self.vocab_size if vocab_size is None else vocab_size
        for name, arr in zip(self.manifest.shards, self.shards):
            for lo in range(0, arr.shape[0], 4096):
                block = arr[lo:lo + 4096]
                bad = np.flatnonzero(block >= vocab_size)
                if bad.size:
                    r, c = divmod(int(bad[0]), self.seq_len)
                    raise ValueError(f"{self.path / name}: row {lo + r}, column {c} holds id "
                                     f"{int(block[r, c])} >= vocab_size {vocab_size}")

    def __repr__(self) -> str:
        prompted = ", prompted" if self.prompted else ""
        return f"PackedDataset({str(self.path)!r}, rows={len(self)}, seq_len={self.seq_len}{prompted})"


class Mixture:
    """Rows drawn from several datasets in proportion to their weights; deterministic in ``seed``.

    ``sources``: ``{name: (dataset, weight)}`` with weights >= 0 (normalized; at least one > 0).
    All datasets share ``seq_len`` and tokenizer.  The mixture has ``rows`` rows (default: the
    most possible with no row used twice, ``min_s len_s / p_s``); source ``s`` gets
    ``n_s = round(p_s * rows)`` of them (largest remainders, so they sum to ``rows``).  Its rows are
    a seeded permutation of the source's rows, cycled when ``n_s > len_s`` (upsampling).  The
    mixture's row order interleaves the sources by a seeded permutation of all ``rows`` positions.

    The mixture is :attr:`prompted` when any source is; :meth:`prompt_lengths` then gives each
    row's prompt length from its source (0 for the rows of a source without prompts).
    """

    def __init__(self, sources: Mapping[str, tuple[object, float]], seed: int, *, rows: int | None = None) -> None:
        if not sources:
            raise ValueError("a Mixture needs at least one source")
        check_int("seed", seed)
        self.names = list(sources)
        self.datasets = [sources[n][0] for n in self.names]
        weights = [sources[n][1] for n in self.names]
        for name, ds, w in zip(self.names, self.datasets, weights):
            check_number(f"the weight of source {name!r}", w, 0.0)
            if len(ds) == 0 and w > 0:
                raise ValueError(f"source {name!r} is empty")
            if ds.seq_len != self.datasets[0].seq_len:
                raise ValueError(f"source {name!r} has seq_len {ds.seq_len}, source {self.names[0]!r} "
                                 f"{self.datasets[0].seq_len}: all must match")
            fp = getattr(getattr(ds, "manifest", None), "tokenizer_sha256", None)
            fp0 = getattr(getattr(self.datasets[0], "manifest", None), "tokenizer_sha256", None)
            if fp != fp0:
                raise ValueError(f"source {name!r} was tokenized with another tokenizer than {self.names[0]!r}")
        total = float(sum(weights))
        if total <= 0:
            raise ValueError("at least one Mixture weight must be > 0")
        if not math.isfinite(total):  # each finite, their sum too large for a float: the shares would all be 0
            raise ValueError(f"the Mixture weights {weights} sum to more than a float holds: scale them down (only "
                             "their ratios count)")
        self.weights = [w / total for w in weights]
        if rows is None:
            rows = math.floor(min(len(ds) / p for ds, p in zip(self.datasets, self.weights) if p > 0) * (1 + 1e-12))
        check_int("rows", rows, 1)
        self.rows, self.seq_len = rows, self.datasets[0].seq_len
        exact = [p * rows for p in self.weights]
        counts = [int(x) for x in exact]
        for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[:rows - sum(counts)]:
            counts[i] += 1
        self.counts = counts
        g = torch.Generator().manual_seed(seed)
        # source id and index within the source of each mixture position, interleaved
        src = torch.cat([torch.full((c,), i, dtype=torch.int64) for i, c in enumerate(counts)])
        within = torch.cat([torch.arange(c, dtype=torch.int64) for c in counts])
        order = torch.randperm(rows, generator=g)
        self._src, self._within = src[order].numpy(), within[order].numpy()
        self._perms = []
        for name, ds in zip(self.names, self.datasets):
            gs = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63)
            self._perms.append(torch.randperm(len(ds), generator=gs).numpy() if len(ds) else np.zeros(0, np.int64))

    def __len__(self) -> int:
        return self.rows

    def verify(self, threads: int | None = None, *, part: tuple[int, int] = (0, 1)) -> None:
        """:meth:`PackedDataset.verify` of every source (sources without a ``verify`` method are skipped)."""
        for ds in self.datasets:
            if hasattr(ds, "verify"):
                ds.verify(threads, part=part)

    @property
    def vocab_size(self) -> int:
        """The largest vocabulary among the sources (their manifests')."""
        return max(ds.vocab_size for ds in self.datasets)

    @property
    def prompted(self) -> bool:
        """Whether any source's rows carry prompts."""
        return any(getattr(ds, "prompted", False) for ds in self.datasets)

    def _source_rows(self, indices) -> tuple[np.ndarray, np.ndarray]:
        """The source and the row within it of each mixture row in ``indices`` (``[-rows, rows)``)."""
        j = _row_indices(indices, self.rows)
        src, within = self._src[j], self._within[j]
        rows = np.zeros(j.shape, dtype=np.int64)
        for s, perm in enumerate(self._perms):
            at = src == s
            if at.any():
                rows[at] = perm[within[at] % len(perm)]
        return src, rows

    def prompt_lengths(self, indices) -> np.ndarray:
        """The prompt length (int64, the shape of ``indices``) of each mixture row in ``indices``:
        its source row's (:meth:`PackedDataset.prompt_lengths`), 0 for a source without prompts."""
        src, rows = self._source_rows(indices)
        out = np.zeros(rows.shape, dtype=np.int64)
        for s, ds in enumerate(self.datasets):
            at = src == s
            if at.any() and getattr(ds, "prompted", False):
                out[at] = ds.prompt_lengths(rows[at])
        return out

    def source_of(self, j: int) -> str:
        """The name of the source that mixture row ``j`` comes from."""
        return self.names[int(self._src[j])]

    def __getitem__(self, j) -> np.ndarray:
        src, rows = self._source_rows(int(j))
        return self.datasets[int(src)][int(rows)]

    def __repr__(self) -> str:
        parts = ", ".join(f"{n}: {c}" for n, c in zip(self.names, self.counts))
        return f"Mixture(rows={self.rows}, {{{parts}}})"
