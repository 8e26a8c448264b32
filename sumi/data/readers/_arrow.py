"""Arrow record batches as :class:`Record` s: the row loop the parquet and saved-dataset readers share.

Rows are converted to Python objects :data:`BATCH_ROWS` at a time, so memory stays bounded
whatever the size of a batch as stored; rows before ``start`` are skipped by their batches' row
counts, never converted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from sumi.data.readers._optional import require
from sumi.data.readers.record import Record

BATCH_ROWS = 1024
"""Rows converted to Python objects at once (and the batch size asked of the parquet reader)."""


def reason(error: BaseException) -> str:
    """pyarrow's message for ``error`` on one line (a thrift error spans several)."""
    return " ".join(str(error).split())


def check_columns(path: Path, names: Sequence[str], columns: Sequence[str] | None) -> None:
    """``ValueError`` naming ``path`` and its columns ``names`` when one of ``columns`` is not among them."""
    if isinstance(columns, str):  # a lone name would be read as its letters
        raise ValueError(f"columns must be a sequence of column names, got the string {columns!r}")
    for column in columns or ():
        if column not in names:
            raise ValueError(f"{path}: no column {column!r} (its columns: {', '.join(names)})")


def table_records(path: Path, batches: Iterable[Any], first: int, start: int,
                  columns: Sequence[str] | None) -> Iterator[Record]:
    """The rows of ``batches`` (pyarrow ``RecordBatch`` es whose first row has index ``first``) with
    index ``>= start``, as records of the ``columns`` asked for (``None``: all).

    Data that cannot be decoded (a corrupt page or message) ends the rows with one last bad record,
    at the first row not delivered.
    """
    pa = require("pyarrow", "tables")
    index = first
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as e:  # ArrowInvalid; a thrift error in a page header is an OSError
            at = max(index, start)
            yield Record(at, f"{path}: row {at}", None, f"corrupt data: {reason(e)}")
            return
        rows = batch.num_rows
        if index + rows > start:
            skip = max(start - index, 0)
            part = batch.slice(skip) if columns is None else batch.select(list(columns)).slice(skip)
            for offset in range(0, part.num_rows, BATCH_ROWS):
                for i, value in enumerate(part.slice(offset, BATCH_ROWS).to_pylist(), index + skip + offset):
                    yield Record(i, f"{path}: row {i}", value)
        index += rows
