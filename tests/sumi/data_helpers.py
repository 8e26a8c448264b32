"""Prepared datasets written by hand for the data and loader tests (no tokenizer needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sumi.data import Manifest, PackedDataset
from sumi.data.manifest import MANIFEST, shard_name


def hand_dataset(path: Path, shards: list[np.ndarray], vocab_size: int = 100, sha: str = "x") -> Path:
    """A prepared directory written by hand (no tokenizer): shards as given, a matching manifest."""
    path.mkdir(parents=True)
    names = [shard_name(i) for i in range(len(shards))]
    for n, s in zip(names, shards):
        np.save(path / n, s.astype(np.uint32))
    rows = [s.shape[0] for s in shards]
    seq = shards[0].shape[1]
    m = Manifest(seq_len=seq, vocab_size=vocab_size, bos_id=vocab_size - 2, eos_id=vocab_size - 1,
                 shard_sequences=max(rows), shards=names, shard_rows=rows, total_rows=sum(rows),
                 total_tokens=sum(rows) * seq, documents=1, dropped_tokens=0, tokenizer_sha256=sha,
                 sources=["hand"], files=0)
    (path / MANIFEST).write_text(m.to_json())
    return path


def rows_dataset(path: Path, n: int, seq: int = 4, fill: int | None = None, sha: str = "x") -> PackedDataset:
    """n rows; row i is all ``i`` (or all ``fill``), so a batch says which rows it holds."""
    vals = np.full(n, fill) if fill is not None else np.arange(n)
    return PackedDataset(hand_dataset(path, [np.repeat(vals[:, None], seq, axis=1)], vocab_size=n + 10, sha=sha))
