"""Text files (``.txt``, ``.md``, ``.py``): the whole file, UTF-8, is one document."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from sumi.data.readers.record import Record

SUFFIXES = (".txt", ".md", ".py")


def read_text(path: Path, start: int = 0) -> Iterator[Record]:
    """The file as one record (index 0; none when ``start > 0``): its text, or an error when it is
    not UTF-8."""
    if start > 0:
        return
    data = path.read_bytes()
    try:
        yield Record(0, str(path), data.decode("utf-8"))
    except UnicodeDecodeError as e:
        yield Record(0, str(path), None, f"not UTF-8 text: {e}")
