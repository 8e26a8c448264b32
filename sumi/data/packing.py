"""Tokenize documents into packed shards: the on-disk format of Sumi's training data.

Packing (docs/math.md "Sumi recipe facts": documents packed as ``BOS text EOS``): every document becomes
``[bos_id, *encode(text), eos_id]``; the documents are concatenated in source order into one
stream, which is cut into rows of exactly ``seq_len`` tokens.  Documents cross row boundaries
freely (no padding, no per-row BOS); the last partial row is dropped and its length reported as
``dropped_tokens``.

Layout of ``out_dir``::

    manifest.json        a :class:`~sumi.data.manifest.Manifest` (format "sumi-packed-v1")
    tokenizer.json       the tokenizer that wrote the ids (a model trained on them ships it)
    shard-00000.npy      uint32 [rows, seq_len], ``shard_sequences`` rows (the last shard fewer)
    shard-00001.npy      ...

The manifest records the sha256 of every shard file (``shard_sha256``), so a reader can prove
the tokens are the ones written (:meth:`sumi.data.PackedDataset.verify`).

Prompted data (``prompted=True``; docs/training.md, "Prompted data"): every ``{"prompt",
"response"}`` record of ``.jsonl`` sources becomes one row ``[BOS prompt | response | EOS
fill | EOS | BOS]`` (:mod:`sumi.data.prompted`); a record too long for a row is skipped (counted in
``skipped_records``, the first few named in ``skipped_examples``), never cut.  The directory gets
format "sumi-prompted-v1" (a reader that knows only "sumi-packed-v1" refuses it instead of
training on the prompts as text) and, beside each shard, the rows' prompt lengths ``P``::

    prompt-00000.npy     uint32 [rows], P of each row of shard-00000.npy (sha256 in ``prompt_sha256``)

Chat data (``sft=True``; docs/sft.md, "Data"): every ``{"prompt", "response"}`` or ``{"messages":
[...]}`` record of ``.jsonl`` sources is rendered by a :class:`sumi.sft.ChatTemplate` and written
as a prompted row, in the same format (its prompt is the rendered conversation up to the answer).

Writing: while a prepare runs it holds an exclusive lock on the sibling file ``.NAME.lock``
(a second prepare of the same ``out_dir`` fails at once, naming the holder) and, holding it,
first deletes what an interrupted prepare left (``.NAME.tmp-*``, ``.NAME.old-*``).  The
directory is written to a temporary sibling (mode ``0o777 & ~umask``, like ``mkdir``) and
swapped into place at the end (atomically on Linux), so a failure leaves nothing that looks like
a dataset.  An existing non-empty ``out_dir`` is replaced only with ``overwrite=True``, and only
when it holds a previous prepare's output and nothing else: other files are never deleted.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from sumi._checks import check_int
from sumi._fs import exclusive_lock, remove_leftovers, replace_dir, temp_dir
from sumi.data.manifest import (MANIFEST, PROMPTED_FORMAT, Manifest, prompt_shard_name, shard_name,
                                tokenizer_fingerprint)
from sumi.data.prompted import Skipped, encoded_prompts, prompted_rows, rendered_chats
from sumi.data.sources import iter_chat_records, iter_documents, iter_prompt_records, resolve_files
from sumi.tokenizer import TOKENIZER_FILE

DEFAULT_SHARD_SEQUENCES = 8192  # 8192 x 1184 x 4 bytes = 39 MB per shard
_ENCODE_CHARS = 1 << 18  # text per encode_batch call: bounds the backend's per-token Encoding objects
_CHUNK_ROW_TOKENS = 1 << 22  # row tokens per chunk of prompted records: bounds its int64 rows (32 MB)


def prepare(sources: str | os.PathLike | Iterable[str | os.PathLike], tokenizer, out_dir: str | os.PathLike,
            seq_len: int, *, shard_sequences: int = DEFAULT_SHARD_SEQUENCES, text_field: str = "text",
            overwrite: bool = False, progress: bool = False, prompted: bool = False,
            prompt_field: str = "prompt", response_field: str = "response", sft: bool = False,
            template=None) -> Manifest:
    """Tokenize the documents of ``sources`` (see :mod:`sumi.data.sources`) into packed shards in ``out_dir``.

    ``tokenizer``: a :class:`sumi.SumiTokenizer`; it is saved next to the shards as
    ``tokenizer.json``.  Returns the :class:`Manifest` written (shard checksums included).
    ``prompted``: read ``{prompt_field: str, response_field: str}`` records from ``.jsonl``
    sources instead, one row each (module docstring; records too long for a row are skipped and
    counted in the manifest).
    ``sft``: read chat records (``{"prompt", "response"}`` or ``{"messages": [...]}``,
    :func:`sumi.sft.messages_of`) from ``.jsonl`` sources instead, each rendered by ``template``
    (a :class:`sumi.sft.ChatTemplate`; default :data:`sumi.sft.DEFAULT_TEMPLATE`) into one
    prompted row (same format and skipping as ``prompted``; the field names are fixed).
    Raises ``FileExistsError`` if ``out_dir`` exists and is not empty (unless ``overwrite``), or
    with ``overwrite`` if it holds anything but a previous prepare's output (what is there is
    named, nothing is deleted); ``ValueError`` if the sources hold less than one row of tokens
    (prompted, sft: no record that fits a row), a bad record (naming ``file:line``), or (sft) a
    tokenizer without the template's marker tokens;
    :class:`sumi._fs.LockedError` while another prepare writes the same ``out_dir``.
    """
    check_int("seq_len", seq_len, 2)
    check_int("shard_sequences", shard_sequences, 1)
    if sft:
        from sumi.sft.template import DEFAULT_TEMPLATE, ChatTemplate  # only chat data needs the template

        if prompted:
            raise ValueError("sft=True reads chat records into prompted rows already: leave prompted=False")
        if (prompt_field, response_field) != ("prompt", "response"):
            raise ValueError(f"chat records have fixed fields ('prompt', 'response' or 'messages'): prompt_field="
                             f"{prompt_field!r} and response_field={response_field!r} apply to prompted=True only")
        template = DEFAULT_TEMPLATE if template is None else template
        if not isinstance(template, ChatTemplate):
            raise ValueError(f"template must be a sumi.sft.ChatTemplate, got {type(template).__name__}")
        template.marker_ids(tokenizer)  # a tokenizer without the markers fails before any work
    elif template is not None:
        raise ValueError("template renders chat records: it applies with sft=True only")
    if tokenizer.vocab_size > 2**32:
        raise ValueError(f"vocab_size {tokenizer.vocab_size} does not fit uint32 shards")
    out = Path(out_dir)
    _check_replaceable(out, overwrite)  # early, before any work; again under the lock below
    source_list = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    files = resolve_files(source_list)  # checks every input before any work
    if sft:
        items, write = iter_chat_records(files), functools.partial(_write_prompted, template=template)
    elif prompted:
        items, write = iter_prompt_records(files, prompt_field, response_field), _write_prompted
    else:
        items, write = iter_documents(files, text_field=text_field), _write
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f".{out.name}.lock", f"the prepared directory {out}"):
        remove_leftovers(out.parent, out.name)  # an interrupted prepare's; no live writer owns them now
        _check_replaceable(out, overwrite)
        tmp = temp_dir(out.parent, out.name)
        try:
            manifest = write(items, tokenizer, tmp, seq_len, shard_sequences, progress,
                             sources=[str(s) for s in source_list], files=len(files))
            replace_dir(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return manifest


def _check_replaceable(out: Path, overwrite: bool) -> None:
    """Raise ``FileExistsError`` unless ``out`` is absent, empty, or (with ``overwrite``) holds
    exactly a previous prepare's output: a valid manifest and only the files it lists."""
    if out.is_symlink():  # swapping would replace the link, not the directory it points to
        raise FileExistsError(f"out_dir {out} is a symbolic link: give the directory it points to "
                              f"({out.resolve()})")
    if not out.exists():
        return
    if not out.is_dir():
        raise FileExistsError(f"out_dir {out} exists and is not a directory")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    if not overwrite:
        raise FileExistsError(f"out_dir {out} exists and is not empty: pass overwrite=True (--overwrite) "
                              "to replace a previous prepare's output")
    try:
        other = sorted(set(entries) - Manifest.load(out).files_written())
        reason = "files a prepare did not write"
    except (OSError, ValueError) as e:
        other, reason = entries, f"no valid {MANIFEST} of a prepared dataset ({e})"
    if other:
        shown = ", ".join(other[:5]) + (f", ... ({len(other)} in all)" if len(other) > 5 else "")
        raise FileExistsError(f"out_dir {out} is not only a previous prepare's output: {reason}; it holds {shown}. "
                              "--overwrite replaces prepared datasets only: choose another --out, or move those "
                              "files away")


class _HashingFile:
    """A write-only file that also feeds every byte to a sha256 (``np.save`` writes through it)."""

    def __init__(self, f) -> None:
        self.f, self.sha256 = f, hashlib.sha256()

    def write(self, data) -> int:
        self.sha256.update(data)
        return self.f.write(data)


def _save_shard(path: Path, array: np.ndarray) -> str:
    """Write ``array`` as ``.npy`` to ``path``; returns the file's sha256 (computed while writing)."""
    with open(path, "wb") as f:
        writer = _HashingFile(f)
        np.save(writer, array)
    return writer.sha256.hexdigest()


class _ShardWriter:
    """Saves rows, in order, as the shard files of a directory being prepared, hashing them while
    writing; with prompts, each shard's prompt lengths as a prompt file beside it."""

    def __init__(self, tmp: Path, prompted: bool) -> None:
        self.tmp = tmp
        self.shards: list[str] = []
        self.rows: list[int] = []
        self.sha256: list[str] = []
        self.prompt_shards: list[str] | None = [] if prompted else None
        self.prompt_sha256: list[str] | None = [] if prompted else None

    def save(self, rows: np.ndarray, prompt_lengths: np.ndarray | None = None) -> None:
        i = len(self.shards)
        self.shards.append(shard_name(i))
        self.rows.append(len(rows))
        self.sha256.append(_save_shard(self.tmp / self.shards[-1], np.ascontiguousarray(rows, dtype=np.uint32)))
        if self.prompt_shards is not None:
            self.prompt_shards.append(prompt_shard_name(i))
            self.prompt_sha256.append(_save_shard(self.tmp / self.prompt_shards[-1],
                                                  np.ascontiguousarray(prompt_lengths, dtype=np.uint32)))

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
        (self.tmp / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
        return manifest


@contextlib.contextmanager
def _progress_bar(progress: bool, unit: str):
    """A tqdm bar on stderr (or ``None``), closed on the way out: it ends the bar's line, so an
    error message starts on a line of its own."""
    if not progress:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc="tokenizing", unit=unit, file=sys.stderr)
    try:
        yield bar
    finally:
        bar.close()


def _checked_ids(ids, vocab_size: int) -> np.ndarray:
    """``ids`` as uint32, after checking that every id lies in ``[0, vocab_size)``."""
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise ValueError(f"the tokenizer produced an id outside [0, vocab_size={vocab_size})")
    return arr.astype(np.uint32)


def _write(docs, tokenizer, tmp: Path, seq_len: int, shard_sequences: int, progress: bool, *,
           sources: list[str], files: int) -> Manifest:
    shard_tokens = shard_sequences * seq_len
    buffer: list[np.ndarray] = []  # pending token chunks (uint32), fewer than shard_tokens in all
    pending = 0
    out = _ShardWriter(tmp, prompted=False)
    n_docs = 0

    def flush(rows: int) -> None:
        nonlocal buffer, pending
        stream = np.concatenate(buffer) if len(buffer) != 1 else buffer[0]
        take = rows * seq_len
        out.save(stream[:take].reshape(rows, seq_len))
        rest = stream[take:]
        buffer, pending = ([rest] if rest.size else []), int(rest.size)

    eos = np.array([tokenizer.eos_id], dtype=np.uint32)
    with _progress_bar(progress, "doc") as bar:
        for chunk in _chunks(docs, _ENCODE_CHARS, len):
            for ids in tokenizer.encode_batch(chunk, add_bos=True):
                buffer += [_checked_ids(ids, tokenizer.vocab_size), eos]
                pending += len(ids) + 1
            n_docs += len(chunk)
            if bar is not None:
                bar.update(len(chunk))
            while pending >= shard_tokens:
                flush(shard_sequences)
    if n_docs == 0:
        raise ValueError(f"the sources {sources} hold no (non-empty) documents")
    if pending >= seq_len:
        flush(pending // seq_len)
    if not out.rows:
        raise ValueError(f"the sources hold {pending} tokens ({n_docs} documents), fewer than one row of "
                         f"seq_len={seq_len}")
    return out.finish(tokenizer, seq_len, shard_sequences, documents=n_docs, dropped_tokens=pending,
                      sources=sources, files=files)


def _write_prompted(records, tokenizer, tmp: Path, seq_len: int, shard_sequences: int, progress: bool, *,
                    sources: list[str], files: int, template=None) -> Manifest:
    """Prompted rows of ``records``: :class:`~sumi.data.sources.PromptRecord` s, or with a
    ``template`` :class:`~sumi.data.sources.ChatRecord` s rendered by it."""
    rows_buffer: list[np.ndarray] = []  # pending rows (uint32 [n, seq_len]), fewer than shard_sequences in all
    lengths_buffer: list[np.ndarray] = []  # their prompt lengths
    pending = 0
    out = _ShardWriter(tmp, prompted=True)
    skipped = Skipped()

    def flush(rows: int) -> None:
        nonlocal rows_buffer, lengths_buffer, pending
        block, lengths = np.concatenate(rows_buffer), np.concatenate(lengths_buffer)
        out.save(block[:rows], lengths[:rows])
        rows_buffer, lengths_buffer, pending = [block[rows:]], [lengths[rows:]], len(block) - rows

    with _progress_bar(progress, "record") as bar:
        max_items = max(1, _CHUNK_ROW_TOKENS // seq_len)  # short records still fill whole rows
        if template is None:
            encoded = encoded_prompts(_chunks(records, _ENCODE_CHARS, lambda r: len(r.prompt) + len(r.response),
                                              max_items=max_items), tokenizer)
        else:  # encoded one message at a time: only the rows bound a chunk
            encoded = rendered_chats(_chunks(records, _ENCODE_CHARS, lambda r: 0, max_items=max_items), tokenizer,
                                     template)
        for rows, lengths in prompted_rows(encoded, tokenizer, seq_len, skipped):
            rows_buffer.append(_checked_ids(rows, tokenizer.vocab_size))
            lengths_buffer.append(lengths)
            pending += len(rows)
            if bar is not None:
                bar.update(sum(out.rows) + pending + skipped.count - bar.n)  # to the records read so far
            while pending >= shard_sequences:
                flush(shard_sequences)
    if pending:
        flush(pending)
    if not out.rows:
        if not skipped.count:
            raise ValueError(f"the sources {sources} hold no records")
        first = skipped.examples[0]
        raise ValueError(f"none of the {skipped.count} records fits a row of seq_len={seq_len} (BOS + prompt + "
                         f"response + pinned EOS BOS; the first, {first['where']}, needs "
                         f"{first['prompt_tokens'] + first['response_tokens'] + 2} tokens): raise seq_len")
    return out.finish(tokenizer, seq_len, shard_sequences, documents=sum(out.rows), dropped_tokens=0,
                      sources=sources, files=files, skipped_records=skipped.count,
                      skipped_examples=skipped.examples)


def _chunks(it, max_chars: int, chars_of, max_items: int | None = None):
    """Lists of consecutive items of about ``max_chars`` characters (``chars_of(item)`` each) and
    at most ``max_items`` items (at least one item per list)."""
    chunk: list = []
    chars = 0
    for x in it:
        chunk.append(x)
        chars += chars_of(x)
        if chars >= max_chars or len(chunk) == max_items:
            yield chunk
            chunk, chars = [], 0
    if chunk:
        yield chunk
