"""Prompted rows: one ``{"prompt", "response"}`` record per row of exactly ``seq_len`` tokens.

Layout of a row (written by ``sumi data prepare --prompted``; docs/training.md, "Prompted data")::

    | BOS prompt | response | EOS ... EOS | EOS | BOS |
      0 .. P-1     P .. P+R-1  P+R .. L-3    L-2   L-1      (L = seq_len)

``P = len(encode(prompt, add_bos=True))`` is the prompt length (BOS included; stored beside the
row), ``R = len(encode(response, add_bos=False))``.  This is, token for token, the canvas that
:func:`sumi.generate` lays out for the prompt with ``canvas_length = L`` and the largest answer
budget, ``max_new_tokens = L - P - 2`` (the pinned EOS and BOS end the row; no tail), with the
answer written in: the response, then EOS up to the pinned EOS.  Filling with EOS follows LLaDA's
supervised fine-tuning (Nie et al. 2025, arXiv 2502.09992, Sec. 2.3): the fill is trained on
like any token, so the model learns where an answer ends (generation cuts the answer at its first
EOS).  A record fits when ``P + R + 2 <= seq_len`` (an answer of the whole budget ends at the
pinned EOS); one that does not is never cut: it is skipped and reported (:class:`Skipped`).

Chat data (``sumi data prepare --sft``; docs/sft.md, "Data") is the same row: a chat record is
rendered by a :class:`sumi.sft.ChatTemplate` into ``prompt_ids`` (the conversation up to the
answer, BOS first) and ``response_ids`` (the answer then ``<|im_end|>``), which take the places
of ``BOS prompt`` and ``response`` (:func:`rendered_chats`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np

from sumi.data.sources import ChatRecord, PromptRecord

PINNED = 2
"""The EOS and BOS that end every prompted row (generation pins them after the answer budget)."""
SKIPPED_EXAMPLES = 5
"""How many skipped records a manifest names (all are counted)."""


@dataclasses.dataclass
class Skipped:
    """The records too long for a row: ``count`` of them, the first :data:`SKIPPED_EXAMPLES`
    named in ``examples`` as ``{"where": "file:line", "prompt_tokens": P, "response_tokens": R}``
    (``P`` with BOS, as in the row layout)."""

    count: int = 0
    examples: list[dict] = dataclasses.field(default_factory=list)

    def add(self, where: str, prompt_tokens: int, response_tokens: int) -> None:
        self.count += 1
        if len(self.examples) < SKIPPED_EXAMPLES:
            self.examples.append({"where": where, "prompt_tokens": prompt_tokens, "response_tokens": response_tokens})


class Encoded(NamedTuple):
    """A record as ids: ``where`` it is (``"file:line"``), its ``prompt`` ids (BOS first, as the
    row starts) and its ``response`` ids (what follows the prompt before the EOS fill)."""

    where: str
    prompt: list[int]
    response: list[int]


def encoded_prompts(chunks: Iterator[list[PromptRecord]], tokenizer) -> Iterator[list[Encoded]]:
    """Each chunk of ``{"prompt", "response"}`` records as ids: prompts encoded with
    ``add_bos=True``, responses with ``add_bos=False`` (:meth:`sumi.SumiTokenizer.encode_batch`)."""
    for chunk in chunks:
        prompts = tokenizer.encode_batch([r.prompt for r in chunk], add_bos=True)
        responses = tokenizer.encode_batch([r.response for r in chunk], add_bos=False)
        yield [Encoded(r.where, p, q) for r, p, q in zip(chunk, prompts, responses)]


def rendered_chats(chunks: Iterator[list[ChatRecord]], tokenizer, template) -> Iterator[list[Encoded]]:
    """Each chunk of chat records as ids: :func:`sumi.sft.messages_of` reads each record and
    ``template.render`` (a :class:`sumi.sft.ChatTemplate`) gives its prompt and response ids.  A
    bad record is a ``ValueError`` naming its ``file:line`` and field."""
    from sumi.sft.template import messages_of  # imported when chat data is read

    for chunk in chunks:
        encoded = []
        for r in chunk:
            try:
                prompt, response = template.render(tokenizer, messages_of(r.record))
            except ValueError as e:
                raise ValueError(f"{r.where}: {e}") from None
            encoded.append(Encoded(r.where, prompt, response))
        yield encoded


def prompted_rows(chunks: Iterator[list[Encoded]], tokenizer, seq_len: int,
                  skipped: Skipped) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each chunk of encoded records, the rows of those that fit (int64 ``[n, seq_len]``, in
    record order, laid out as in the module docstring) and their prompt lengths (int64 ``[n]``);
    the others are added to ``skipped``."""
    for chunk in chunks:
        kept = []  # the records that fit
        for record in chunk:
            p, r = len(record.prompt), len(record.response)
            if p + r + PINNED <= seq_len:
                kept.append(record)
            else:
                skipped.add(record.where, p, r)
        rows = np.full((len(kept), seq_len), tokenizer.eos_id, dtype=np.int64)  # the EOS closing and filling
        rows[:, -1] = tokenizer.bos_id  # the pinned BOS after the pinned EOS: generation's layout
        for row, record in zip(rows, kept):
            row[:len(record.prompt) + len(record.response)] = record.prompt + record.response
        yield rows, np.array([len(record.prompt) for record in kept], dtype=np.int64)
