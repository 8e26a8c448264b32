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
pinned EOS); one that does not is never cut: it is skipped and counted
(``skipped_records`` in the manifest, :class:`sumi.data.chunking.Examples`).

Chat data (``sumi data prepare --sft``; docs/sft.md, "Data") is the same row: a chat record is
rendered by a :class:`sumi.sft.ChatTemplate` into ``prompt_ids`` (the conversation up to the
answer, BOS first) and ``response_ids`` (the answer then ``<|im_end|>``), which take the places
of ``BOS prompt`` and ``response`` (:func:`sumi.data.encoding.encode_chunk`).
"""

from __future__ import annotations

import numpy as np

PINNED = 2
"""The EOS and BOS that end every prompted row (generation pins them after the answer budget)."""
def layout_rows(records: list[tuple[list[int], list[int]]], tokenizer, seq_len: int) -> np.ndarray:
    """The rows (int64 ``[n, seq_len]``, laid out as in the module docstring) of ``records``,
    ``(prompt ids, response ids)`` pairs that fit (``P + R + 2 <= seq_len``): the prompt ids start
    with BOS, the response ids are what follows the prompt before the EOS fill."""
    rows = np.full((len(records), seq_len), tokenizer.eos_id, dtype=np.int64)  # the EOS closing and filling
    rows[:, -1] = tokenizer.bos_id  # the pinned BOS after the pinned EOS: generation's layout
    for row, (prompt, response) in zip(rows, records):
        if len(prompt) + len(response) + PINNED > seq_len:
            raise ValueError(f"a record of {len(prompt)} + {len(response)} tokens does not fit a row of {seq_len}")
        row[:len(prompt) + len(response)] = prompt + response
    return rows
