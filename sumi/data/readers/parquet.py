"""Parquet files (``.parquet``): one record per row, read with pyarrow (the ``[data]`` extra) a
batch of rows at a time, so memory stays bounded whatever the file's size."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from sumi.data.readers._arrow import BATCH_ROWS, check_columns, reason, table_records
from sumi.data.readers._optional import require
from sumi.data.readers.record import Record


def read_parquet(path: Path, start: int = 0, columns: Sequence[str] | None = None) -> Iterator[Record]:
    """A record per row with row number (0-based) ``>= start``: a ``dict`` of the ``columns`` asked
    for (``None``: all), as Python values (a null is ``None``).

    Row groups wholly before ``start`` are skipped from the file's metadata, never decoded.  When
    the generator starts, a file pyarrow cannot open (not parquet, truncated) or that lacks one of
    ``columns`` is a ``ValueError`` naming the file; data that cannot be decoded further on (a
    corrupt page) ends the rows with one last bad record, at the first row not delivered.
    """
    pa = require("pyarrow", ".parquet files")
    pq = require("pyarrow.parquet", ".parquet files")
    try:
        file = pq.ParquetFile(path)
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as e:  # bad magic, a truncated footer, undecodable metadata
        raise ValueError(f"{path}: not a readable parquet file ({reason(e)})") from e
    with file:
        check_columns(path, file.schema_arrow.names, columns)
        metadata = file.metadata
        first = group = 0
        while group < metadata.num_row_groups and first + metadata.row_group(group).num_rows <= start:
            first += metadata.row_group(group).num_rows
            group += 1
        # a group at a time, so that a corrupt group ends the rows at its first one; one decoding
        # thread, as the parallelism of a prepare is its worker processes
        batches = (batch for g in range(group, metadata.num_row_groups)
                   for batch in file.iter_batches(batch_size=BATCH_ROWS, row_groups=[g], use_threads=False,
                                                  columns=None if columns is None else list(columns)))
        yield from table_records(path, batches, first, start, None)
