"""Directories written by ``datasets.Dataset.save_to_disk``, read with pyarrow alone (the ``[data]``
extra; ``datasets`` is never imported).

Such a directory holds ``state.json`` (its ``_data_files`` list the Arrow files, in row order, as
``{"filename": ...}`` relative to the directory), ``dataset_info.json`` (the features) and the
Arrow files themselves, which are Arrow IPC *streams*: ``data-00000-of-00003.arrow`` ... (datasets
2.14 and later), one ``dataset.arrow`` (1.18 to 2.0).  Those versions write the rows of a
``select`` / ``shuffle`` in their new order; datasets 1.0 to 1.12 instead saved the indices
mapping (``_indices_data_files`` and ``indices.arrow``), which this reader refuses rather than read
the rows in the wrong order.  ``DatasetDict.save_to_disk`` writes ``dataset_dict.json``
(``{"splits": [...]}``) and one such directory per split.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from sumi.data.readers._arrow import check_columns, reason, table_records
from sumi.data.readers._optional import require
from sumi.data.readers.record import Record

STATE = "state.json"
INFO = "dataset_info.json"
DICT = "dataset_dict.json"


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``datasets.Dataset.save_to_disk`` (it holds
    ``state.json`` and ``dataset_info.json``)."""
    return path.is_dir() and (path / STATE).is_file() and (path / INFO).is_file()


def dataset_dict_splits(path: Path) -> list[str] | None:
    """The split names of a ``DatasetDict.save_to_disk`` directory (each split is the saved dataset
    ``path / name``), or ``None`` when ``path`` holds no ``dataset_dict.json``."""
    file = path / DICT
    if not file.is_file():
        return None
    splits = _json(path, file).get("splits")
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise ValueError(f"{path}: {DICT} has no 'splits' list of names (got {splits!r})")
    return splits


def data_files(path: Path) -> list[Path]:
    """``state.json`` and the Arrow files it lists, in row order."""
    return [path / STATE, *_arrow_files(path)]


def read_saved(path: Path, start: int = 0, columns: Sequence[str] | None = None) -> Iterator[Record]:
    """A record per row with row number (0-based, across all the Arrow files) ``>= start``: a
    ``dict`` of the ``columns`` asked for (``None``: all), as Python values.

    Files and record batches wholly before ``start`` are skipped by their row counts, never
    converted.  A bad ``state.json``, a missing or unreadable Arrow file, an indices mapping or a
    missing column is a ``ValueError`` naming the directory and the file; data that cannot be
    decoded further on ends the rows with one last bad record, at the first row not delivered.
    """
    pa = require("pyarrow", "saved datasets")
    files = _arrow_files(path)
    yield from table_records(path, _batches(pa, path, files, columns), 0, start, columns)


def _batches(pa: Any, path: Path, files: list[Path], columns: Sequence[str] | None) -> Iterator[Any]:
    """The record batches of ``files`` in order, each file memory-mapped (a batch skipped is never read)."""
    for file in files:
        try:
            source = pa.memory_map(str(file))
        except OSError as e:  # a file-level failure, not a bad row: never a record
            raise ValueError(f"{path}: cannot read {file.name} ({reason(e)})") from e
        with source:
            try:
                reader = pa.ipc.open_stream(source)
            except (pa.ArrowException, OSError) as e:
                raise ValueError(f"{path}: {file.name} is not an Arrow stream ({reason(e)})") from e
            check_columns(path / file.name, reader.schema.names, columns)
            yield from reader


def _arrow_files(path: Path) -> list[Path]:
    """The Arrow files ``state.json`` lists, checked to exist; ``ValueError`` for anything else."""
    state = _json(path, path / STATE)
    if state.get("_indices_data_files") or state.get("_indices"):
        raise ValueError(f"{path}: {STATE} lists an indices mapping (saved by datasets 1.x after a select or "
                         f"shuffle), which this reader does not apply; save a flattened copy with datasets: "
                         f"load_from_disk(...).flatten_indices().save_to_disk(...)")
    entries = state.get("_data_files")
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("filename"), str)
                                                for e in entries):
        raise ValueError(f"{path}: {STATE} has no '_data_files' list of {{\"filename\": ...}} entries")
    names = [e["filename"] for e in entries]
    for name in names:
        if name != Path(name).name or name in ("", ".", ".."):  # a reader never leaves the directory
            raise ValueError(f"{path}: {STATE} lists {name!r}, not a file name in the directory")
        if not (path / name).is_file():
            raise ValueError(f"{path}: {STATE} lists {name!r}, which is not a file there")
    return [path / name for name in names]


def _json(path: Path, file: Path) -> dict:
    """``file`` parsed as a JSON object; ``ValueError`` naming ``path`` and the file otherwise."""
    try:
        value = json.loads(file.read_bytes())
    except (OSError, ValueError) as e:  # unreadable, not UTF-8, not JSON
        raise ValueError(f"{path}: cannot read {file.name} ({e})") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {file.name} is not a JSON object")
    return value
