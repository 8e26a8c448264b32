"""Resuming an interrupted ``sumi data prepare`` (``--resume``, ``prepare(..., resume=True)``).

A prepare of ``DIR`` writes into the sibling ``.DIR.partial/``.  After every chunk of records that
completed a shard it saves its progress there, atomically, in ``progress.json``:

- ``settings``: everything the output depends on (mode, ``seq_len``, ``shard_sequences``, field
  names, chat template, the tokenizer's fingerprint, the sources as given) and ``inputs``: each
  input file's path, size and modification time.  A resume with other settings or changed inputs
  is refused, naming what differs, so a resumed output is always the one an uninterrupted run
  writes.
- the shards written so far (names, rows, sha256), ``position``: the record to continue from
  (``[source, index]``, :class:`sumi.data.sources.Item`), the counts so far, and the tokens (or
  rows) read but not yet in a shard, saved beside it as ``carry-NNNNN.npy``.

Resuming deletes whatever is not in ``progress.json`` (a shard being written when the process
died, older carries), checks the listed shards' shapes, and continues from ``position`` with the
carry; the bytes written are then exactly those of an uninterrupted run.  The finished directory
gets a ``manifest.json`` (written last) and only then replaces ``DIR`` (:func:`sumi._fs.replace_dir`),
so ``DIR`` is never half-written.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import numpy as np

from sumi._fs import atomic_write

PROGRESS = "progress.json"
_VERSION = 1
_CARRY = "carry-"


def partial_dir(out: Path) -> Path:
    """Where a prepare of ``out`` writes until it is complete: ``.NAME.partial`` beside it."""
    return out.parent / f".{out.name}.partial"


def input_stats(files: list[Path]) -> list[list]:
    """``[path, size, mtime_ns]`` of each file: what a resume checks for changes."""
    stats = []
    for f in files:
        st = os.stat(f)
        stats.append([str(Path(f).absolute()), st.st_size, st.st_mtime_ns])
    return stats


@dataclasses.dataclass
class Progress:
    """What ``progress.json`` holds (module docstring)."""

    settings: dict
    inputs: list
    writer: dict
    position: list
    documents: int
    bad: dict
    skipped: dict
    carry: str
    carry_prompts: str | None = None
    version: int = _VERSION


def save_progress(partial: Path, progress: Progress, carry: np.ndarray, carry_prompts: np.ndarray | None) -> None:
    """Save ``carry`` (and ``carry_prompts``), then ``progress`` naming them (atomically), then
    delete older carries: at every instant ``progress.json`` names files that exist."""
    n = len(progress.writer["shards"])
    progress.carry = f"{_CARRY}{n:05d}.npy"
    np.save(partial / progress.carry, carry)
    progress.carry_prompts = None
    if carry_prompts is not None:
        progress.carry_prompts = f"{_CARRY}prompt-{n:05d}.npy"
        np.save(partial / progress.carry_prompts, carry_prompts)
    atomic_write(partial / PROGRESS, json.dumps(dataclasses.asdict(progress)))
    for entry in partial.iterdir():
        if entry.name.startswith(_CARRY) and entry.name not in (progress.carry, progress.carry_prompts):
            entry.unlink()


def load_progress(partial: Path) -> Progress | None:
    """The progress saved in ``partial`` (``None`` when there is none); a ``ValueError`` when it
    cannot be read."""
    file = partial / PROGRESS
    if not file.is_file():
        return None
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
        progress = Progress(**raw)
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as e:
        raise ValueError(f"{file} is unreadable ({e}): delete {partial} to start over") from None
    if progress.version != _VERSION:
        raise ValueError(f"{file} was written by another version of sumi (progress version {progress.version}, "
                         f"this one reads {_VERSION}): delete {partial} to start over")
    return progress


def check_resumable(progress: Progress, settings: dict, inputs: list, partial: Path) -> None:
    """A ``ValueError`` naming what differs when ``progress`` was saved with other ``settings``
    or ``inputs`` (its output would not be this run's)."""
    saved = json.loads(json.dumps(settings))  # as JSON gives it back (tuples as lists)
    changed = sorted(k for k in saved.keys() | progress.settings.keys() if saved.get(k) != progress.settings.get(k))
    if changed:
        shown = "; ".join(f"{k}: {progress.settings.get(k)!r} then, {saved.get(k)!r} now" for k in changed)
        raise ValueError(f"cannot resume {partial}: it was started with other settings ({shown}); run with the "
                         "same ones, or delete it (or pass --overwrite) to start over")
    if progress.inputs != inputs:
        then = {f: (size, mtime) for f, size, mtime in progress.inputs}
        now = {f: (size, mtime) for f, size, mtime in inputs}
        diff = sorted(f for f in then.keys() | now.keys() if then.get(f) != now.get(f))
        raise ValueError(f"cannot resume {partial}: its inputs changed since it started ({', '.join(diff[:3])}"
                         f"{' ...' if len(diff) > 3 else ''}: added, removed, or a different size or modification "
                         "time); delete it (or pass --overwrite) to start over")


def restore(partial: Path, progress: Progress, seq_len: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Delete what ``progress`` does not name, check the shards it names (present, ``[rows,
    seq_len]`` uint32) and return its carry (and carried prompt lengths)."""
    from sumi.data.manifest import MANIFEST

    writer = progress.writer
    keep = {PROGRESS, progress.carry, progress.carry_prompts, *writer["shards"], *(writer["prompt_shards"] or [])}
    for entry in partial.iterdir():
        if entry.name not in keep or entry.name == MANIFEST:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    for name, rows in zip(writer["shards"], writer["shard_rows"]):
        try:
            shard = np.load(partial / name, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise ValueError(f"cannot resume {partial}: shard {name} is unreadable ({e}); delete it to start over") \
                from None
        if shard.dtype != np.uint32 or shard.shape != (rows, seq_len):
            raise ValueError(f"cannot resume {partial}: shard {name} is {shard.dtype} {shard.shape}, not uint32 "
                             f"({rows}, {seq_len}); delete it to start over")
    carry = np.load(partial / progress.carry)
    prompts = None if progress.carry_prompts is None else np.load(partial / progress.carry_prompts)
    return carry, prompts
