"""Tokenize documents into packed shards: the on-disk format of Sumi's training data.

Packing (docs/math.md "Sumi recipe facts": documents packed as ``BOS text EOS``): every document becomes
``[bos_id, *encode(text), eos_id]``; the documents are concatenated in source order into one
stream, which is cut into rows of exactly ``seq_len`` tokens.  Documents cross row boundaries
freely (no padding, no per-row BOS); the last partial row is dropped and its length reported as
``dropped_tokens``.

Layout of ``out_dir``::

    manifest.json        Manifest below (format "sumi-packed-v1")
    tokenizer.json       the tokenizer that wrote the ids (a model trained on them ships it)
    shard-00000.npy      uint32 [rows, seq_len], ``shard_sequences`` rows (the last shard fewer)
    shard-00001.npy      ...

The manifest records the sha256 of every shard file (``shard_sha256``), so a reader can prove
the tokens are the ones written (:meth:`sumi.data.PackedDataset.verify`).

Writing: while a prepare runs it holds an exclusive lock on the sibling file ``.NAME.lock``
(a second prepare of the same ``out_dir`` fails at once, naming the holder) and, holding it,
first deletes what an interrupted prepare left (``.NAME.tmp-*``, ``.NAME.old-*``).  The
directory is written to a temporary sibling (mode ``0o777 & ~umask``, like ``mkdir``) and
swapped into place at the end (atomically on Linux), so a failure leaves nothing that looks like
a dataset.  An existing non-empty ``out_dir`` is replaced only with ``overwrite=True``, and only
when it holds a previous prepare's output and nothing else: other files are never deleted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from sumi._checks import check_int
from sumi._fs import exclusive_lock, remove_leftovers, replace_dir, temp_dir
from sumi.data.sources import iter_documents
from sumi.tokenizer import TOKENIZER_FILE

FORMAT = "sumi-packed-v1"
MANIFEST = "manifest.json"
DEFAULT_SHARD_SEQUENCES = 8192  # 8192 x 1184 x 4 bytes = 39 MB per shard
_ENCODE_CHARS = 1 << 18  # text per encode_batch call: bounds the backend's per-token Encoding objects
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _plain_name(name: object) -> bool:
    """A non-hidden file name without any directory part."""
    return isinstance(name, str) and bool(name) and name == Path(name).name and not name.startswith(".")


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's JSON and its special ids / model vocab: equal iff ids mean the same."""
    h = hashlib.sha256(tokenizer.backend.to_str().encode("utf-8"))
    h.update(f"|{tokenizer.vocab_size}|{tokenizer.bos_id}|{tokenizer.eos_id}".encode())
    return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What ``manifest.json`` holds.  ``shards``: the file names; ``shard_rows``: rows in each.

    ``shard_sha256``: the sha256 (hex) of each shard file, and ``tokenizer_file``: the name of
    the tokenizer copy in the directory; both ``None`` in directories written before they
    existed (those can be read, not verified)."""

    seq_len: int
    vocab_size: int
    bos_id: int
    eos_id: int
    shard_sequences: int
    shards: list[str]
    shard_rows: list[int]
    total_rows: int
    total_tokens: int
    documents: int
    dropped_tokens: int
    tokenizer_sha256: str
    sources: list[str]
    files: int
    dtype: str = "uint32"
    format: str = FORMAT
    shard_sha256: list[str] | None = None
    tokenizer_file: str | None = None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        """Read and check ``path/manifest.json`` (``path`` a dataset directory or the file itself)."""
        path = Path(path)
        file = path / MANIFEST if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no {MANIFEST} in {path}: not a prepared dataset (run `sumi data prepare`)")
        try:
            raw = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{file} is not valid JSON: {e}") from None
        if not isinstance(raw, dict) or raw.get("format") != FORMAT:
            raise ValueError(f"{file}: format must be {FORMAT!r}, got {raw.get('format') if isinstance(raw, dict) else raw!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        missing = sorted(names - raw.keys() - optional)
        if missing:
            raise ValueError(f"{file}: missing keys {missing}")
        m = cls(**{k: v for k, v in raw.items() if k in names})
        ints = ("seq_len", "vocab_size", "bos_id", "eos_id", "shard_sequences", "total_rows", "total_tokens")
        for key in ints:
            v = getattr(m, key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"{file}: {key} must be a non-negative int, got {v!r}")
        if m.dtype != "uint32" or m.seq_len < 1 or len(m.shards) != len(m.shard_rows) \
                or sum(m.shard_rows) != m.total_rows or m.total_tokens != m.total_rows * m.seq_len:
            raise ValueError(f"{file}: inconsistent manifest (dtype, seq_len, shard list or row/token totals)")
        if not (m.bos_id < m.vocab_size and m.eos_id < m.vocab_size):
            raise ValueError(f"{file}: bos_id/eos_id must lie in [0, vocab_size={m.vocab_size})")
        listed = [*m.shards, *([m.tokenizer_file] if m.tokenizer_file is not None else [])]
        if not all(_plain_name(n) for n in listed):  # a reader must never leave the directory
            raise ValueError(f"{file}: shard and tokenizer entries must be plain file names in the directory, "
                             f"got {listed}")
        sums = m.shard_sha256
        if sums is not None and not (isinstance(sums, list) and len(sums) == len(m.shards)
                                     and all(isinstance(h, str) and _SHA256.fullmatch(h) for h in sums)):
            raise ValueError(f"{file}: shard_sha256 must list one lowercase hex sha256 per shard")
        return m

    def files_written(self) -> set[str]:
        """The names a prepare wrote into its directory: the manifest, the shards, the tokenizer."""
        return {MANIFEST, *self.shards, *([self.tokenizer_file] if self.tokenizer_file else [])}


def prepare(sources: str | os.PathLike | Iterable[str | os.PathLike], tokenizer, out_dir: str | os.PathLike,
            seq_len: int, *, shard_sequences: int = DEFAULT_SHARD_SEQUENCES, text_field: str = "text",
            overwrite: bool = False, progress: bool = False) -> Manifest:
    """Tokenize the documents of ``sources`` (see :mod:`sumi.data.sources`) into packed shards in ``out_dir``.

    ``tokenizer``: a :class:`sumi.SumiTokenizer`; it is saved next to the shards as
    ``tokenizer.json``.  Returns the :class:`Manifest` written (shard checksums included).
    Raises ``FileExistsError`` if ``out_dir`` exists and is not empty (unless ``overwrite``), or
    with ``overwrite`` if it holds anything but a previous prepare's output (what is there is
    named, nothing is deleted); ``ValueError`` if the sources hold less than one row of tokens;
    :class:`sumi._fs.LockedError` while another prepare writes the same ``out_dir``.
    """
    check_int("seq_len", seq_len, 2)
    check_int("shard_sequences", shard_sequences, 1)
    if tokenizer.vocab_size > 2**32:
        raise ValueError(f"vocab_size {tokenizer.vocab_size} does not fit uint32 shards")
    out = Path(out_dir)
    _check_replaceable(out, overwrite)  # early, before any work; again under the lock below
    source_list = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    from sumi.data.sources import resolve_files

    files = resolve_files(source_list)  # checks every input before any work
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f".{out.name}.lock", f"the prepared directory {out}"):
        remove_leftovers(out.parent, out.name)  # an interrupted prepare's; no live writer owns them now
        _check_replaceable(out, overwrite)
        tmp = temp_dir(out.parent, out.name)
        try:
            manifest = _write(iter_documents(files, text_field=text_field), tokenizer, tmp, seq_len,
                              shard_sequences, progress, sources=[str(s) for s in source_list], files=len(files))
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """Raise ``FileExistsError`` unless ``out`` is absent, empty, or (with ``overwrite``) holds
    exactly a previous prepare's output: a valid manifest and only the files it lists."""
    if out.is_symlink():  # swapping would replace the link, not the directory it points to
        raise FileExistsError(f"out_dir {out} is a symbolic link: give the directory it points to "
                              f"({out.resolve()})")
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"out_dir {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"out_dir {out} exists and is not empty: pass overwrite=True (--overwrite) "
                              "to replace a previous prepare's output")
    try:
        other = sorted(set(entries) - Manifest.load(out).files_written())
        reason = "files a prepare did not write"
    except (OSError, ValueError) as e:
        other, reason = entries, f"no valid {MANIFEST} of a prepared dataset ({e})"
    if other:
        shown = ", ".join(other[:5]) + (f", ... ({len(other)} in all)" if len(other) > 5 else "")
        raise FileExistsError(f"out_dir {out} is not only a previous prepare's output: {reason}; it holds {shown}. "
                              "--overwrite replaces prepared datasets only: choose another --out, or move those "
                              "files away")


class _HashingFile:
    """A write-only file that also feeds every byte to a sha256 (``np.save`` writes through it)."""

    def __init__(self, f) -> None:
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)


def _save_shard(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as ``.npy`` to ``path``; returns the file's sha256 (computed while writing)."""
    with open(path, "wb") as f:
        writer = _HashingFile(f)
        np.save(writer, array)
    return writer.sha256.hexdigest()


def _write(docs, tokenizer, tmp: Path, seq_len: int, shard_sequences: int, progress: bool, *,
           sources: list[str], files: int) -> Manifest:
    shard_tokens = shard_sequences * seq_len
    buffer: list[np.ndarray] = []  # pending token chunks (uint32), fewer than shard_tokens in all
    pending = 0
    shards: list[str] = []
    shard_rows: list[int] = []
    checksums: list[str] = []
    n_docs = 0

    def flush(rows: int) -> None:
        nonlocal buffer, pending
        stream = np.concatenate(buffer) if len(buffer) != 1 else buffer[0]
        take = rows * seq_len
        shards.append(shard_name(len(shards)))
        shard_rows.append(rows)
        checksums.append(_save_shard(tmp / shards[-1], np.ascontiguousarray(stream[:take]).reshape(rows, seq_len)))
        rest = stream[take:]
        buffer, pending = ([rest] if rest.size else []), int(rest.size)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(desc="tokenizing", unit="doc", file=sys.stderr)
    eos = np.array([tokenizer.eos_id], dtype=np.uint32)
    try:
        for chunk in _chunks(docs, _ENCODE_CHARS):
            for ids in tokenizer.encode_batch(chunk, add_bos=True):
                arr = np.asarray(ids, dtype=np.int64)
                if arr.size and (arr.min() < 0 or arr.max() >= tokenizer.vocab_size):
                    raise ValueError(f"the tokenizer produced an id outside [0, vocab_size={tokenizer.vocab_size})")
                buffer += [arr.astype(np.uint32), eos]
                pending += arr.size + 1
            n_docs += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            while pending >= shard_tokens:
                flush(shard_sequences)
    finally:
        if bar is not None:
            bar.close()  # ends the bar's line, so an error message starts on a line of its own
    if n_docs == 0:
        raise ValueError(f"the sources {sources} hold no (non-empty) documents")
    if pending >= seq_len:
        flush(pending // seq_len)
    total_rows = sum(shard_rows)
    if total_rows == 0:
        raise ValueError(f"the sources hold {pending} tokens ({n_docs} documents), fewer than one row of "
                         f"seq_len={seq_len}")
    tokenizer.save(tmp / TOKENIZER_FILE)
    manifest = Manifest(seq_len=seq_len, vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id,
                        eos_id=tokenizer.eos_id, shard_sequences=shard_sequences, shards=shards,
                        shard_rows=shard_rows, total_rows=total_rows, total_tokens=total_rows * seq_len,
                        documents=n_docs, dropped_tokens=pending, tokenizer_sha256=tokenizer_fingerprint(tokenizer),
                        sources=sources, files=files, shard_sha256=checksums, tokenizer_file=TOKENIZER_FILE)
    (tmp / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")  # last: its presence means complete
    return manifest


def _chunks(it, max_chars: int):
    """Lists of consecutive documents of about ``max_chars`` characters (at least one document)."""
    chunk: list[str] = []
    chars = 0
    for x in it:
        chunk.append(x)
        chars += len(x)
        if chars >= max_chars:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk
