"""Packers: how tokens read become shards, in input order (:mod:`sumi.data.packing`).

- :class:`StreamPacker` (plain data): the documents' ``BOS text EOS`` stream cut into rows of
  ``seq_len`` tokens, ``shard_sequences`` rows per shard; documents cross row boundaries and the
  last partial row is dropped (docs/math.md, "Sumi recipe facts").
- :class:`RowPacker` (prompted data): whole rows, one record each, with their prompt lengths.

Each packer starts from a carry (what a resumed prepare had read but not yet written) and gives
its carry back (:meth:`StreamPacker.carry`), so a resumed prepare writes the same bytes.
"""

from __future__ import annotations

import numpy as np

from sumi.data.encoding import Rows
from sumi.data.shards import ShardWriter


class StreamPacker:
    """Plain data: the documents' token stream, cut into rows of ``seq_len`` tokens and saved
    ``shard_sequences`` rows per shard; ``carry``: tokens read before, not yet in a shard."""

    def __init__(self, writer: ShardWriter, seq_len: int, shard_sequences: int, carry: np.ndarray) -> None:
        self.writer, self.seq_len, self.shard_sequences = writer, seq_len, shard_sequences
        self.buffer: list[np.ndarray] = [carry] if carry.size else []
        self.pending = int(carry.size)

    def add(self, stream: np.ndarray) -> bool:
        """Append ``stream``; True when a shard was saved."""
        self.buffer.append(stream)
        self.pending += stream.size
        saved = False
        while self.pending >= self.shard_sequences * self.seq_len:
            self._flush(self.shard_sequences)
            saved = True
        return saved

    def _flush(self, rows: int) -> None:
        stream = self._stream()
        take = rows * self.seq_len
        self.writer.save(stream[:take].reshape(rows, self.seq_len))
        rest = stream[take:]
        self.buffer, self.pending = ([rest] if rest.size else []), int(rest.size)

    def _stream(self) -> np.ndarray:
        return np.concatenate(self.buffer) if len(self.buffer) != 1 else self.buffer[0]

    def carry(self) -> tuple[np.ndarray, None]:
        return (self._stream() if self.buffer else np.zeros(0, np.uint32)), None

    def close(self) -> int:
        """Save the last full rows; returns the tokens of the partial row left (dropped)."""
        if self.pending >= self.seq_len:
            self._flush(self.pending // self.seq_len)
        return self.pending


class RowPacker:
    """Prompted data: whole rows (and their prompt lengths), saved ``shard_sequences`` per shard;
    ``rows``/``prompts``: rows read before, not yet in a shard."""

    def __init__(self, writer: ShardWriter, shard_sequences: int, rows: np.ndarray, prompts: np.ndarray) -> None:
        self.writer, self.shard_sequences = writer, shard_sequences
        self.rows, self.prompts = [rows], [prompts]
        self.pending = len(rows)

    def add(self, result: Rows) -> bool:
        self.rows.append(result.rows)
        self.prompts.append(result.prompt_lengths)
        self.pending += len(result.rows)
        saved = False
        while self.pending >= self.shard_sequences:
            self._flush(self.shard_sequences)
            saved = True
        return saved

    def _flush(self, n: int) -> None:
        rows, prompts = np.concatenate(self.rows), np.concatenate(self.prompts)
        self.writer.save(rows[:n], prompts[:n])
        self.rows, self.prompts, self.pending = [rows[n:]], [prompts[n:]], len(rows) - n

    def carry(self) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate(self.rows), np.concatenate(self.prompts)

    def close(self) -> int:
        if self.pending:
            self._flush(self.pending)
        return 0
