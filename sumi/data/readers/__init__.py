"""Readers: one module per on-disk format, each turning one source into :class:`Record` s, streamed.

- ``.txt``, ``.md``, ``.py`` (:mod:`.text`): the whole file is one document.
- ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst`` (:mod:`.jsonl`): each non-blank line's JSON object.
- ``.parquet`` (:mod:`.parquet`): each row, as a dict of the columns asked for.
- a ``datasets.Dataset.save_to_disk`` directory (:mod:`.saved`): each row of its Arrow files,
  read with pyarrow (``datasets`` itself is not needed).

Parquet, saved datasets and ``.zst`` need the optional ``[data]`` extra (pyarrow, zstandard);
without it, reading one raises :class:`MissingExtra`, which names the extra
(:func:`check_libraries` checks before any work).  Memory stays bounded whatever the file's size
(a line, or a batch of rows, at a time), except that a text file is read whole (it is one
document).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from sumi.data.readers._optional import MissingExtra, require
from sumi.data.readers.jsonl import SUFFIXES as JSONL_SUFFIXES
from sumi.data.readers.jsonl import read_jsonl
from sumi.data.readers.record import Record
from sumi.data.readers.text import SUFFIXES as TEXT_SUFFIXES
from sumi.data.readers.text import read_text

PARQUET_SUFFIXES = (".parquet",)
RECORD_SUFFIXES = JSONL_SUFFIXES + PARQUET_SUFFIXES
"""Files of records (JSON objects, table rows); a saved dataset directory is one too."""
SUFFIXES = TEXT_SUFFIXES + RECORD_SUFFIXES
"""Every file suffix a source may have (a saved dataset is a directory)."""
SAVED_DATASET = "a Dataset.save_to_disk directory"

__all__ = ["MissingExtra", "RECORD_SUFFIXES", "Record", "SUFFIXES", "check_libraries", "data_files", "format_of",
           "is_saved_dataset", "read_records"]


def format_of(path: Path) -> str | None:
    """The suffix of :data:`SUFFIXES` that ``path``'s name ends with (``"x.jsonl.gz"`` -> ``".jsonl.gz"``),
    ``"saved"`` for a saved dataset directory, ``None`` for anything else."""
    if path.is_dir():
        return "saved" if is_saved_dataset(path) else None
    return next((s for s in SUFFIXES if path.name.endswith(s)), None)


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``datasets.Dataset.save_to_disk``."""
    from sumi.data.readers.saved import is_saved_dataset as check

    return check(path)


def read_records(path: Path, start: int = 0, columns: Sequence[str] | None = None) -> Iterator[Record]:
    """The records of ``path`` whose ``index`` is ``>= start``, in order.

    ``columns``: the fields a table reader needs (``None``: all); a column the table lacks is a
    ``ValueError`` naming the file and its columns.  JSON records always hold all their fields.
    """
    fmt = format_of(path)
    if fmt in TEXT_SUFFIXES:
        return read_text(path, start)
    if fmt in JSONL_SUFFIXES:
        return read_jsonl(path, start)
    if fmt in PARQUET_SUFFIXES:
        from sumi.data.readers.parquet import read_parquet

        return read_parquet(path, start, columns)
    if fmt == "saved":
        from sumi.data.readers.saved import read_saved

        return read_saved(path, start, columns)
    raise ValueError(f"{path}: unsupported source (expected one of {', '.join(SUFFIXES)} or {SAVED_DATASET})")


_LIBRARIES = {".jsonl.zst": (("zstandard", ".zst files"),),
              ".parquet": (("pyarrow", ".parquet files"), ("pyarrow.parquet", ".parquet files")),
              "saved": (("pyarrow", "saved datasets"),)}


def check_libraries(paths: Iterable[Path]) -> None:
    """Import the libraries that reading ``paths`` needs now, before any work:
    :class:`MissingExtra` names the first one missing and the extra that installs it."""
    for fmt in dict.fromkeys(format_of(Path(p)) for p in paths):
        for module, what in _LIBRARIES.get(fmt, ()):
            require(module, what)


def data_files(path: Path) -> list[Path]:
    """The files that hold ``path``'s data: ``path`` itself, or a saved dataset's state and Arrow
    files (what a resumed prepare checks for changes)."""
    if path.is_dir():
        from sumi.data.readers.saved import data_files as saved_files

        return saved_files(path)
    return [path]
