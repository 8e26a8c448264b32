"""Chunks: the units a prepare tokenizes (in its worker processes) and the accounting done as
each chunk's tokens come back (:mod:`sumi.data.packing`).

Consecutive items of the sources are grouped into chunks of about :data:`ENCODE_CHARS`
characters; the bad ones are kept out of the chunk's values and reported with it, so that bad
records are counted (or stop the prepare) in input order whatever the number of workers.  How
the items are cut into chunks never changes the output: the packer appends their tokens in
order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from sumi.data.encoding import DOCUMENTS, PROMPTED, Rows
from sumi.data.resume import Progress
from sumi.data.sources import Item

ENCODE_CHARS = 1 << 18
"""Text per chunk: bounds a worker's per-token ``Encoding`` objects and the chunks in flight."""
CHUNK_ITEMS = 1 << 13
"""Records per chunk: bounds the per-record objects of many short documents."""
CHUNK_ROW_TOKENS = 1 << 22
"""Row tokens per chunk of prompted records: bounds its int64 rows (32 MB)."""
EXAMPLES = 5
"""How many of the bad or skipped records a manifest names (all are counted)."""


@dataclasses.dataclass
class Examples:
    """Records set aside: ``count`` of them, the first :data:`EXAMPLES` described in
    ``examples`` (bad records as ``{"where": "file:line", "error": why}``; records too long for a
    row as ``{"where", "prompt_tokens": P, "response_tokens": R}``, ``P`` with BOS)."""

    count: int = 0
    examples: list[dict] = dataclasses.field(default_factory=list)

    def add(self, **example) -> None:
        self.count += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)


class Chunk(NamedTuple):
    """What the packer needs to know about a chunk of items besides its tokens: the position after
    it (``next``), the items it read (``count``), and for the items sent to tokenizing (by their
    place ``k``) where they are and their order among all the chunk's items (``seqs``); ``bad``:
    ``(seq, where, error)`` of the bad items found while reading."""

    next: tuple[int, int]
    count: int
    wheres: list[str]
    seqs: list[int]
    bad: list[tuple[int, str, str]]


def chunked(items: Iterator[Item], kind: str, seq_len: int) -> Iterator[tuple[Chunk, list]]:
    """Consecutive items as ``(chunk, values)``: about :data:`ENCODE_CHARS` characters of text
    (chat records: :data:`CHUNK_ITEMS` records), at most :data:`CHUNK_ITEMS` items, the bad
    ones reported in the chunk and not sent."""
    max_items = CHUNK_ITEMS if kind == DOCUMENTS else max(1, min(CHUNK_ITEMS, CHUNK_ROW_TOKENS // seq_len))
    values: list = []
    wheres: list[str] = []
    seqs: list[int] = []
    bad: list[tuple[int, str, str]] = []
    chars = count = 0
    for item in items:
        if item.error is not None:
            bad.append((count, item.where, item.error))
        else:
            values.append(item.value)
            wheres.append(item.where)
            seqs.append(count)
            chars += _chars(item.value, kind)
        count += 1
        if chars >= ENCODE_CHARS or count >= max_items:
            yield Chunk((item.pos[0], item.pos[1] + 1), count, wheres, seqs, bad), values
            values, wheres, seqs, bad, chars, count = [], [], [], [], 0, 0
    if count:
        yield Chunk((item.pos[0], item.pos[1] + 1), count, wheres, seqs, bad), values


def _chars(value, kind: str) -> int:
    """The text of a document or a prompted record; 0 for a chat record (chunked by count)."""
    if kind == DOCUMENTS:
        return len(value)
    return len(value[0]) + len(value[1]) if kind == PROMPTED else 0


class Tally:
    """The counts of a prepare: records read, documents, bad records, records too long for a row."""

    def __init__(self, saved: Progress | None) -> None:
        self.documents = saved.documents if saved else 0
        self.bad = Examples(**saved.bad) if saved else Examples()
        self.skipped = Examples(**saved.skipped) if saved else Examples()
        self.read = self.documents + self.bad.count + self.skipped.count

    def take(self, chunk: Chunk, result: np.ndarray | Rows, skip_bad: bool) -> None:
        """Count the chunk's bad records in input order (the first stops the prepare unless
        ``skip_bad``), its records too long for a row, and its documents."""
        bad = chunk.bad
        if isinstance(result, Rows):
            bad = sorted(bad + [(chunk.seqs[k], chunk.wheres[k], why) for k, why in result.bad])
            for k, p, r in result.skipped:
                self.skipped.add(where=chunk.wheres[k], prompt_tokens=p, response_tokens=r)
        for _, where, why in bad:
            if not skip_bad:
                raise ValueError(f"{where}: {why} (--skip-bad / skip_bad=True skips and counts bad records)")
            self.bad.add(where=where, error=why)
        self.documents += len(chunk.wheres) - (len(result.bad) if isinstance(result, Rows) else 0)
        self.read += chunk.count

    def nothing_written(self, sources: list[str], kind: str, pending: int, seq_len: int) -> str:
        """Why no shard was written."""
        bad = f" ({self.bad.count} bad records skipped)" if self.bad.count else ""
        if self.skipped.count:
            first = self.skipped.examples[0]
            return (f"none of the {self.skipped.count} records fits a row of seq_len={seq_len} (BOS + prompt + "
                    f"response + pinned EOS BOS; the first, {first['where']}, needs "
                    f"{first['prompt_tokens'] + first['response_tokens'] + 2} tokens): raise seq_len{bad}")
        if self.documents == 0:
            what = "(non-empty) documents" if kind == DOCUMENTS else "records"
            return f"the sources {sources} hold no {what}{bad}"
        return (f"the sources hold {pending} tokens ({self.documents} documents), fewer than one row of "
                f"seq_len={seq_len}{bad}")
