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

Tokenizing runs in ``workers`` processes (:mod:`sumi.data.workers`), chunk by chunk; the
chunks are packed in input order, so the files are the same, byte for byte, for any number of
workers.  Memory is bounded: a few chunks in flight and less than one shard pending.

Bad records (invalid UTF-8 or JSON, a field missing, null or not a string, a chat record the
template cannot read) stop the prepare with their ``file:line`` (``file: row N``); with
``skip_bad=True`` they are skipped and counted in the manifest (``bad_records``; the first five
in ``bad_examples`` with their place and reason).

Writing: while a prepare runs it holds an exclusive lock on the sibling file ``.NAME.lock``
(a second prepare of the same ``out_dir`` fails at once, naming the holder) and, holding it,
first deletes what an interrupted directory swap left (``.NAME.tmp-*``, ``.NAME.old-*``).  The
directory is written to the sibling ``.NAME.partial`` (mode ``0o777 & ~umask``, like ``mkdir``),
which saves its progress after every shard; ``resume=True`` continues an interrupted prepare
from there and ends with exactly the files an uninterrupted one writes (:mod:`sumi.data.resume`).
The complete directory is swapped into place at the end (atomically on Linux), so ``out_dir``
never holds a half-written dataset.  An existing non-empty ``out_dir`` is replaced only with
``overwrite=True``, and only when it holds a previous prepare's output and nothing else: other
files are never deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import shutil
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from sumi._checks import check_int
from sumi._fs import exclusive_lock, remove_leftovers, replace_dir
from sumi.data.chunking import Chunk, Tally, chunked
from sumi.data.encoding import CHAT, DOCUMENTS, PROMPTED, EncodeContext, encode_chunk
from sumi.data.manifest import MANIFEST, Manifest, tokenizer_fingerprint
from sumi.data.packers import RowPacker, StreamPacker
from sumi.data.readers import check_libraries, data_files
from sumi.data.resume import (PROGRESS, Progress, check_resumable, input_stats, load_progress, partial_dir, restore,
                              save_progress)
from sumi.data.shards import ShardWriter
from sumi.data.sources import Item, chat_items, document_items, prompt_items, resolve_files
from sumi.data.workers import default_workers, ordered_map

DEFAULT_SHARD_SEQUENCES = 8192  # 8192 x 1184 x 4 bytes = 39 MB per shard


def prepare(sources: str | os.PathLike | Iterable[str | os.PathLike], tokenizer, out_dir: str | os.PathLike,
            seq_len: int, *, shard_sequences: int = DEFAULT_SHARD_SEQUENCES, text_field: str = "text",
            overwrite: bool = False, progress: bool = False, prompted: bool = False,
            prompt_field: str = "prompt", response_field: str = "response", sft: bool = False,
            template=None, workers: int | None = None, resume: bool = False, skip_bad: bool = False) -> Manifest:
    """Tokenize the documents of ``sources`` (see :mod:`sumi.data.sources`) into packed shards in ``out_dir``.

    ``tokenizer``: a :class:`sumi.SumiTokenizer`; it is saved next to the shards as
    ``tokenizer.json``.  Returns the :class:`Manifest` written (shard checksums included).
    ``prompted``: read ``{prompt_field: str, response_field: str}`` records from record sources
    (JSONL, parquet, saved datasets) instead, one row each (module docstring; records too long
    for a row are skipped and counted in the manifest).
    ``sft``: read chat records (``{"prompt", "response"}`` or ``{"messages": [...]}``,
    :func:`sumi.sft.messages_of`) from record sources instead, each rendered by ``template``
    (a :class:`sumi.sft.ChatTemplate`; default :data:`sumi.sft.DEFAULT_TEMPLATE`) into one
    prompted row (same format and skipping as ``prompted``; the field names are fixed).
    ``workers``: tokenizing processes (default: this machine's CPUs; 1 tokenizes in this
    process); the output does not depend on it.
    ``resume``: continue the interrupted prepare of ``out_dir`` (started with the same settings
    and inputs), or start one when there is none; an ``out_dir`` already complete with these
    settings is returned as it is.
    ``skip_bad``: skip and count bad records instead of stopping at the first.
    Raises ``FileExistsError`` if ``out_dir`` exists and is not empty (unless ``overwrite``), or
    with ``overwrite`` if it holds anything but a previous prepare's output (what is there is
    named, nothing is deleted), or when an interrupted prepare's partial output is there and
    neither ``resume`` nor ``overwrite`` says what to do with it; ``ValueError`` if the sources
    hold less than one row of tokens (prompted, sft: no record that fits a row), a bad record
    (naming ``file:line``; unless ``skip_bad``), a resume with other settings or changed inputs,
    or (sft) a tokenizer without the template's marker tokens;
    :class:`sumi.data.readers.MissingExtra` (an ``ImportError``) when a format's library is not
    installed; :class:`sumi._fs.LockedError` while another prepare writes the same ``out_dir``.
    A failure (or Ctrl-C) after the first shard keeps the partial output for ``resume``.
    """
    check_int("seq_len", seq_len, 2)
    check_int("shard_sequences", shard_sequences, 1)
    workers = default_workers() if workers is None else workers
    check_int("workers", workers, 1)
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
    if not (resume and (out / MANIFEST).is_file()):
        _check_replaceable(out, overwrite)  # early, before any work; again under the lock below
    source_list = [sources] if isinstance(sources, (str, os.PathLike)) else list(sources)
    files = resolve_files(source_list)  # checks every input before any work
    check_libraries(files)
    if sft:
        kind, items = CHAT, functools.partial(chat_items, files)
    elif prompted:
        kind, items = PROMPTED, functools.partial(prompt_items, files, prompt_field, response_field)
    else:
        kind, items = DOCUMENTS, functools.partial(document_items, files, text_field)
    items()  # checks the fields and the kinds of sources now
    settings = {"kind": kind, "seq_len": seq_len, "shard_sequences": shard_sequences,
                "fields": [text_field] if kind == DOCUMENTS else [prompt_field, response_field] if kind == PROMPTED
                else None, "template": None if template is None else dataclasses.asdict(template),
                "tokenizer_sha256": tokenizer_fingerprint(tokenizer), "sources": [str(s) for s in source_list]}
    run = _Run(out, settings, input_stats([f for source in files for f in data_files(source)]), len(files))
    out.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(out.parent / f".{out.name}.lock", f"the prepared directory {out}"):
        remove_leftovers(out.parent, out.name)  # an interrupted swap's; no live writer owns them now
        done = run.open(resume, overwrite)
        if done is not None:
            return done
        try:
            manifest = run.pack(kind, items, EncodeContext(tokenizer, seq_len, template), workers, skip_bad, progress)
            replace_dir(run.partial, out)
        except BaseException:
            if not any((run.partial / name).is_file() for name in (PROGRESS, MANIFEST)):  # nothing to resume
                shutil.rmtree(run.partial, ignore_errors=True)
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


class _Run:
    """One prepare of ``out``: its partial directory, what it resumes from, and the packing loop."""

    def __init__(self, out: Path, settings: dict, inputs: list, files: int) -> None:
        self.out, self.settings, self.inputs, self.files = out, settings, inputs, files
        self.partial = partial_dir(out)
        self.saved: Progress | None = None
        self.carry: tuple[np.ndarray, np.ndarray | None] | None = None

    def open(self, resume: bool, overwrite: bool) -> Manifest | None:
        """Set up the partial directory: fresh, or resumed (``resume``); the manifest when there is
        nothing left to do (``out`` already complete, or complete and not yet swapped in)."""
        out, partial = self.out, self.partial
        if resume and not partial.exists() and (out / MANIFEST).is_file():
            return self._complete(Manifest.load(out), out)
        _check_replaceable(out, overwrite)
        if partial.exists():
            starting_over = overwrite and not resume
            saved = None if starting_over else load_progress(partial)
            complete = (partial / MANIFEST).is_file()
            if starting_over or (saved is None and not complete):  # discarded, or nothing in it to resume
                shutil.rmtree(partial)
            elif not resume:
                raise FileExistsError(f"an interrupted prepare of {out} left {partial}: continue it with --resume "
                                      "(resume=True), or pass --overwrite to start over")
            elif complete:  # complete, not yet swapped in
                if saved is not None:
                    check_resumable(saved, self.settings, self.inputs, partial)
                manifest = self._complete(Manifest.load(partial), partial)
                (partial / PROGRESS).unlink(missing_ok=True)
                replace_dir(partial, out)
                return manifest
            else:
                check_resumable(saved, self.settings, self.inputs, partial)
                self.carry = restore(partial, saved, self.settings["seq_len"])
                self.saved = saved
        if not partial.exists():
            os.mkdir(partial)  # 0o777 & ~umask, as mkdir gives
        return None

    def _complete(self, manifest: Manifest, where: Path) -> Manifest:
        """``manifest`` of a complete directory, if prepared as this run would (else a ``ValueError``)."""
        s = self.settings
        expected = {"seq_len": s["seq_len"], "shard_sequences": s["shard_sequences"], "sources": s["sources"],
                    "tokenizer_sha256": s["tokenizer_sha256"], "prompted": s["kind"] != DOCUMENTS}
        found = {"seq_len": manifest.seq_len, "shard_sequences": manifest.shard_sequences, "sources": manifest.sources,
                 "tokenizer_sha256": manifest.tokenizer_sha256, "prompted": manifest.prompted}
        changed = [k for k in expected if expected[k] != found[k]]
        if changed:
            raise ValueError(f"{where} is complete but was prepared with other settings ({', '.join(changed)}): pass "
                             "--overwrite (overwrite=True) to prepare it again")
        return manifest

    def pack(self, kind: str, items: Callable[..., Iterator[Item]], context: EncodeContext,
             workers: int, skip_bad: bool, progress: bool) -> Manifest:
        """Tokenize and pack every item (from the saved position on) into the partial directory,
        saving progress after each chunk that completes a shard; returns the manifest written."""
        saved, seq_len = self.saved, context.seq_len
        shard_sequences = self.settings["shard_sequences"]
        writer = ShardWriter(self.partial, kind != DOCUMENTS, saved.writer if saved else None)
        if kind == DOCUMENTS:
            tokens = self.carry[0] if self.carry else np.zeros(0, np.uint32)
            packer = StreamPacker(writer, seq_len, shard_sequences, tokens)
        else:
            rows, prompts = self.carry or (np.zeros((0, seq_len), np.uint32), np.zeros(0, np.uint32))
            packer = RowPacker(writer, shard_sequences, rows, prompts)
        tally = Tally(saved)
        chunks: deque[Chunk] = deque()

        def tasks() -> Iterator[tuple[str, list]]:
            for chunk, values in chunked(items(start=tuple(saved.position) if saved else (0, 0)), kind, seq_len):
                chunks.append(chunk)
                yield kind, values

        if saved is not None and progress:
            print(f"sumi: resuming {self.partial}: {len(writer.shards)} shards written, {tally.read} records read",
                  file=sys.stderr)
        results = ordered_map(encode_chunk, context, tasks(), workers)
        with _progress_bar(progress, "doc" if kind == DOCUMENTS else "record", tally.read) as bar, \
                contextlib.closing(results):  # stops the workers at once on an error
            for result in results:
                chunk = chunks.popleft()
                tally.take(chunk, result, skip_bad)
                if packer.add(result):
                    self._save(writer, chunk.next, tally, packer)
                if bar is not None:
                    bar.update(chunk.count)
        dropped = packer.close()
        if not writer.rows:
            raise ValueError(tally.nothing_written(self.settings["sources"], kind, dropped, seq_len))
        fields = dict(documents=tally.documents if kind == DOCUMENTS else sum(writer.rows), dropped_tokens=dropped,
                      sources=self.settings["sources"], files=self.files, bad_records=tally.bad.count,
                      bad_examples=tally.bad.examples)
        if kind != DOCUMENTS:
            fields.update(skipped_records=tally.skipped.count, skipped_examples=tally.skipped.examples)
        manifest = writer.finish(context.tokenizer, seq_len, shard_sequences, **fields)
        for entry in self.partial.iterdir():  # the progress and its carry: not part of the dataset
            if entry.name not in manifest.files_written():
                entry.unlink()
        return manifest

    def _save(self, writer: ShardWriter, position: tuple[int, int], tally: Tally, packer) -> None:
        rows_or_tokens, prompts = packer.carry()
        save_progress(self.partial, Progress(self.settings, self.inputs, writer.state(), list(position),
                                             tally.documents, dataclasses.asdict(tally.bad),
                                             dataclasses.asdict(tally.skipped), carry=""),
                      rows_or_tokens, prompts)


@contextlib.contextmanager
def _progress_bar(progress: bool, unit: str, initial: int = 0):
    """A tqdm bar on stderr (or ``None``), closed on the way out: it ends the bar's line, so an
    error message starts on a line of its own."""
    if not progress:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(desc="tokenizing", unit=unit, file=sys.stderr, initial=initial)
    try:
        yield bar
    finally:
        bar.close()
