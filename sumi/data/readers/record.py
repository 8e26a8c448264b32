"""What a reader yields: one :class:`Record` per document or JSON object / table row of a source."""

from __future__ import annotations

from typing import Any, NamedTuple


class Record(NamedTuple):
    """One record of a source file.

    ``index``: its place in the file, the unit :func:`sumi.data.readers.read_records` resumes
    from (``start``): the line number (1-based) in a JSONL file, the row (0-based) of a table, 0
    for a text file (one document).  ``where``: how a message names it (``"file:line"``,
    ``"file: row N"``, ``"file"``).  ``value``: the whole text of a text file, or the record as a
    ``dict`` (a JSON object, a table row's columns); ``None`` when the record is bad, and then
    ``error`` says why (invalid UTF-8, not JSON, not a JSON object).
    """

    index: int
    where: str
    value: Any
    error: str | None = None
