"""Writing shard files: ``.npy`` arrays hashed while they are written, in order, into a
directory being prepared (:func:`sumi.data.prepare`)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from sumi._fs import atomic_write
from sumi.data.manifest import MANIFEST, PROMPTED_FORMAT, Manifest, prompt_shard_name, shard_name, tokenizer_fingerprint
from sumi.tokenizer import TOKENIZER_FILE


class _HashingFile:
    """A write-only file that also feeds every byte to a sha256 (``np.save`` writes through it)."""

    def __init__(self, f) -> None:
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)


def save_array(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as ``.npy`` to ``path``; returns the file's sha256 (computed while writing)."""
    with open(path, "wb") as f:
        writer = _HashingFile(f)
        np.save(writer, array)
    return writer.sha256.hexdigest()


class ShardWriter:
    """Saves rows, in order, as the shard files of a directory being prepared, hashing them while
    writing; with prompts, each shard's prompt lengths as a prompt file beside it.

    ``state`` (what :meth:`state` returned) continues a writer whose shards are already on disk."""

    _KEYS = ("shards", "shard_rows", "shard_sha256", "prompt_shards", "prompt_sha256")

    def __init__(self, tmp: Path, prompted: bool, state: dict | None = None) -> None:
        self.tmp = tmp
        if state is None:
            state = {key: [] for key in self._KEYS}
            if not prompted:
                state["prompt_shards"] = state["prompt_sha256"] = None
        self.shards: list[str] = list(state["shards"])
        self.rows: list[int] = list(state["shard_rows"])
        self.sha256: list[str] = list(state["shard_sha256"])
        self.prompt_shards: list[str] | None = None if state["prompt_shards"] is None else list(state["prompt_shards"])
        self.prompt_sha256: list[str] | None = None if state["prompt_sha256"] is None else list(state["prompt_sha256"])

    def state(self) -> dict:
        """The shards written so far (JSON-ready)."""
        return dict(zip(self._KEYS, (self.shards, self.rows, self.sha256, self.prompt_shards, self.prompt_sha256)))

    def save(self, rows: np.ndarray, prompt_lengths: np.ndarray | None = None) -> None:
        i = len(self.shards)
        sha = save_array(self.tmp / shard_name(i), np.ascontiguousarray(rows, dtype=np.uint32))
        if self.prompt_shards is not None:
            prompt_sha = save_array(self.tmp / prompt_shard_name(i), np.ascontiguousarray(prompt_lengths,
                                                                                         dtype=np.uint32))
            self.prompt_shards.append(prompt_shard_name(i))
            self.prompt_sha256.append(prompt_sha)
        self.shards.append(shard_name(i))
        self.rows.append(len(rows))
        self.sha256.append(sha)

    def finish(self, tokenizer, seq_len: int, shard_sequences: int, **fields) -> Manifest:
        """Save the tokenizer and, last (its presence means complete), the manifest."""
        tokenizer.save(self.tmp / TOKENIZER_FILE)
        total_rows = sum(self.rows)
        if self.prompt_shards is not None:
            fields.update(format=PROMPTED_FORMAT, prompt_shards=self.prompt_shards, prompt_sha256=self.prompt_sha256)
        manifest = Manifest(seq_len=seq_len, vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id,
                            eos_id=tokenizer.eos_id, shard_sequences=shard_sequences, shards=self.shards,
                            shard_rows=self.rows, total_rows=total_rows, total_tokens=total_rows * seq_len,
                            tokenizer_sha256=tokenizer_fingerprint(tokenizer), shard_sha256=self.sha256,
                            tokenizer_file=TOKENIZER_FILE, **fields)
        atomic_write(self.tmp / MANIFEST, manifest.to_json())  # whole or absent: its presence means complete
        return manifest
