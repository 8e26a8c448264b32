"""What ``manifest.json`` holds: the description of a directory written by
:func:`sumi.data.prepare` (:mod:`sumi.data.packing`), read back and checked by :meth:`Manifest.load`.

Two formats: "sumi-packed-v1" (plain packed documents) and "sumi-prompted-v1" (one prompted
record per row, with prompt files beside the shards; docs/training.md, "Prompted data").  A
reader that knows only the first refuses the second rather than training on prompts as text.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path

FORMAT = "sumi-packed-v1"
PROMPTED_FORMAT = "sumi-prompted-v1"
MANIFEST = "manifest.json"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _plain_name(name: object) -> bool:
    """A non-hidden file name without any directory part."""
    return isinstance(name, str) and bool(name) and name == Path(name).name and not name.startswith(".")


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.npy"


def prompt_shard_name(i: int) -> str:
    """The file of the prompt lengths of the rows of :func:`shard_name` ``(i)``."""
    return f"prompt-{i:05d}.npy"


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
    existed (those can be read, not verified).

    Prompted directories (``format`` :data:`PROMPTED_FORMAT`, :attr:`prompted`) also hold
    ``prompt_shards`` (per shard, the file of its rows' prompt lengths), ``prompt_sha256`` (their
    sha256), ``skipped_records`` (records too long for a row) and ``skipped_examples`` (the first
    few of those: ``{"where": "file:line", "prompt_tokens": P, "response_tokens": R}``); there
    ``documents`` counts the records written, one per row.  Plain directories have none of them.

    ``bad_records``: the bad records skipped (``skip_bad``; 0 otherwise) and ``bad_examples`` the
    first few, ``{"where": "file:line", "error": why}``; ``None`` in directories written before
    they existed."""

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
    prompt_shards: list[str] | None = None
    prompt_sha256: list[str] | None = None
    skipped_records: int | None = None
    skipped_examples: list[dict] | None = None
    bad_records: int | None = None
    bad_examples: list[dict] | None = None

    @property
    def prompted(self) -> bool:
        """Whether the rows are prompted (format :data:`PROMPTED_FORMAT`)."""
        return self.format == PROMPTED_FORMAT

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        if not self.prompted:  # a plain manifest stays as it was before prompted data existed
            fields = {k: v for k, v in fields.items() if k not in _PROMPTED_FIELDS}
        return json.dumps(fields, indent=1)

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
        if not isinstance(raw, dict) or raw.get("format") not in (FORMAT, PROMPTED_FORMAT):
            raise ValueError(f"{file}: format must be {FORMAT!r} or {PROMPTED_FORMAT!r}, got "
                             f"{raw.get('format') if isinstance(raw, dict) else raw!r}")
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
        if m.prompted:
            _check_prompted(m, file)
        elif any(getattr(m, key) is not None for key in _PROMPTED_FIELDS):
            raise ValueError(f"{file}: {', '.join(_PROMPTED_FIELDS)} belong to format {PROMPTED_FORMAT!r}, "
                             f"not {m.format!r}")
        _check_bad(m, file)
        listed = [*m.shards, *(m.prompt_shards or []), *([m.tokenizer_file] if m.tokenizer_file is not None else [])]
        if not all(_plain_name(n) for n in listed) or len(set(listed)) != len(listed):
            # a reader must never leave the directory
            raise ValueError(f"{file}: shard, prompt shard and tokenizer entries must be distinct plain file names "
                             f"in the directory, got {listed}")
        for key in ("shard_sha256", "prompt_sha256"):
            sums = getattr(m, key)
            if sums is not None and not (isinstance(sums, list) and len(sums) == len(m.shards)
                                         and all(isinstance(h, str) and _SHA256.fullmatch(h) for h in sums)):
                raise ValueError(f"{file}: {key} must list one lowercase hex sha256 per shard")
        return m

    def files_written(self) -> set[str]:
        """The names a prepare wrote into its directory: the manifest, the shards (prompt shards
        included), the tokenizer."""
        return {MANIFEST, *self.shards, *(self.prompt_shards or []),
                *([self.tokenizer_file] if self.tokenizer_file else [])}


_PROMPTED_FIELDS = ("prompt_shards", "prompt_sha256", "skipped_records", "skipped_examples")


def _check_prompted(m: Manifest, file: Path) -> None:
    """The fields of a prompted manifest: all present, a prompt file and a checksum per shard,
    a skip count and at most that many well-formed examples."""
    missing = [key for key in (*_PROMPTED_FIELDS, "shard_sha256") if getattr(m, key) is None]
    if missing:
        raise ValueError(f"{file}: a {PROMPTED_FORMAT!r} manifest needs {missing}")
    if not isinstance(m.prompt_shards, list) or len(m.prompt_shards) != len(m.shards):
        raise ValueError(f"{file}: prompt_shards must list one file per shard ({len(m.shards)})")
    n = m.skipped_records
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{file}: skipped_records must be a non-negative int, got {n!r}")
    examples = m.skipped_examples
    if not (isinstance(examples, list) and len(examples) <= n and all(
            isinstance(e, dict) and set(e) == {"where", "prompt_tokens", "response_tokens"}
            and isinstance(e["where"], str)
            and all(isinstance(e[k], int) and not isinstance(e[k], bool) and e[k] >= 0
                    for k in ("prompt_tokens", "response_tokens")) for e in examples)):
        raise ValueError(f"{file}: skipped_examples must list at most skipped_records={n} entries "
                         '{"where": str, "prompt_tokens": int, "response_tokens": int}')


def _check_bad(m: Manifest, file: Path) -> None:
    """``bad_records`` and ``bad_examples``: both absent (older directories) or a count and at most
    that many ``{"where": str, "error": str}`` entries."""
    n, examples = m.bad_records, m.bad_examples
    if n is None and examples is None:
        return
    if isinstance(n, bool) or not isinstance(n, int) or n < 0 or not (
            isinstance(examples, list) and len(examples) <= n and all(
                isinstance(e, dict) and set(e) == {"where", "error"} and all(isinstance(v, str) for v in e.values())
                for e in examples)):
        raise ValueError(f"{file}: bad_records must be a non-negative int and bad_examples a list of at most that "
                         'many {"where": str, "error": str} entries')
