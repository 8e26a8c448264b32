"""Tokenizing one chunk of records into what the packer appends: the work of ``sumi data
prepare``'s worker processes (:mod:`sumi.data.workers`), or of the calling process with one
worker; either way the same function on the same chunk gives the same arrays.

- Documents (plain data): one uint32 stream, ``BOS text EOS`` per document in order
  (docs/math.md, "Sumi recipe facts"), cut into rows later by the packer.
- Prompted and chat records: one row each (:mod:`sumi.data.prompted`), with the records too
  long for a row and (chat) the records the template cannot render reported by their place in
  the chunk.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import numpy as np

from sumi.data.prompted import PINNED, layout_rows

DOCUMENTS, PROMPTED, CHAT = "documents", "prompted", "chat"


@dataclasses.dataclass(frozen=True)
class EncodeContext:
    """What every chunk is tokenized with (sent once to each worker): the tokenizer (a
    :class:`sumi.SumiTokenizer`), the row length and, for chat records, the
    :class:`sumi.sft.ChatTemplate`."""

    tokenizer: Any
    seq_len: int
    template: Any = None


class Rows(NamedTuple):
    """The rows of a chunk of prompted or chat records: ``rows`` (uint32 ``[n, seq_len]``) and
    their ``prompt_lengths`` (uint32 ``[n]``) for the records that fit, in order; ``skipped``:
    ``(k, P, R)`` for the ``k``-th record of the chunk, too long for a row; ``bad``: ``(k, why)``
    for a chat record the template could not read."""

    rows: np.ndarray
    prompt_lengths: np.ndarray
    skipped: list[tuple[int, int, int]]
    bad: list[tuple[int, str]]


def checked_ids(ids: np.ndarray, vocab_size: int) -> np.ndarray:
    """``ids`` as uint32, after checking that every id lies in ``[0, vocab_size)``."""
    if ids.size and (ids.min() < 0 or ids.max() >= vocab_size):
        raise ValueError(f"the tokenizer produced an id outside [0, vocab_size={vocab_size})")
    return ids.astype(np.uint32)


def encode_chunk(context: EncodeContext, task: tuple[str, list]) -> np.ndarray | Rows:
    """Tokenize ``task = (kind, values)``: :data:`DOCUMENTS` (texts) give their stream,
    :data:`PROMPTED` (``(prompt, response)`` pairs) and :data:`CHAT` (chat records) their
    :class:`Rows`."""
    kind, values = task
    tokenizer = context.tokenizer
    if kind == DOCUMENTS:
        # SumiTokenizer.encode_batch(values, add_bos=True)'s ids, without copying each into a BOS-led list
        encoded = [e.ids for e in tokenizer.backend.encode_batch(values, add_special_tokens=False)]
        total = sum(map(len, encoded)) + 2 * len(encoded)
        bos, eos = (tokenizer.bos_id,), (tokenizer.eos_id,)
        stream = np.fromiter(itertools.chain.from_iterable(itertools.chain(bos, ids, eos) for ids in encoded),
                             dtype=np.int64, count=total)
        return checked_ids(stream, tokenizer.vocab_size)
    bad: list[tuple[int, str]] = []
    if kind == PROMPTED:
        prompts = tokenizer.encode_batch([p for p, _ in values], add_bos=True)
        responses = tokenizer.encode_batch([r for _, r in values], add_bos=False)
        pairs = list(enumerate(zip(prompts, responses)))
    elif kind == CHAT:
        from sumi.sft.template import messages_of  # imported when chat data is read

        pairs = []
        for k, record in enumerate(values):
            try:
                pairs.append((k, context.template.render(tokenizer, messages_of(record))))
            except ValueError as e:
                bad.append((k, str(e)))
    else:
        raise ValueError(f"unknown chunk kind {kind!r}")
    fits = [(k, p, r) for k, (p, r) in pairs if len(p) + len(r) + PINNED <= context.seq_len]
    skipped = [(k, len(p), len(r)) for k, (p, r) in pairs if len(p) + len(r) + PINNED > context.seq_len]
    rows = layout_rows([(p, r) for _, p, r in fits], tokenizer, context.seq_len)
    lengths = np.array([len(p) for _, p, _ in fits], dtype=np.uint32)
    return Rows(checked_ids(rows, tokenizer.vocab_size), lengths, skipped, bad)
