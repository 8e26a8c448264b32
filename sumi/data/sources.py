"""Where documents come from: local files, named by paths, directories or globs, read by the
format readers of :mod:`sumi.data.readers`.

Conventions:

- ``.txt``, ``.md``, ``.py``: the whole file (UTF-8) is one document.
- ``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``: one JSON object per non-blank line; ``.parquet``
  and directories written by ``datasets.Dataset.save_to_disk``: one record per row.  A record's
  ``text_field`` (a string) is one document.  Prompted data (:func:`prompt_items`) reads
  ``{"prompt": str, "response": str}`` records; chat data (:func:`chat_items`, ``sumi data
  prepare --sft``) ``{"prompt", "response"}`` or ``{"messages": [{"role", "content"}, ...]}``
  records (docs/sft.md, "Data"), from any of these record formats.
- A directory stands for every supported file under it (recursively; a saved dataset inside it
  counts as one source, a saved ``DatasetDict`` is refused: name its split); a glob (``*``,
  ``?``, ``[``, ``**``) for every supported file or saved dataset it matches.  Sources are read
  in sorted order, so the same inputs always give the same documents in the same order.
- ``stdlib:train`` and ``stdlib:heldout`` stand for the files of a split of the running Python's
  standard library (:func:`stdlib_split`): the embedded default trains on ``stdlib:train`` and
  never sees ``stdlib:heldout``.
- Empty documents (``""``) are skipped: they would pack to a bare ``BOS EOS``.
- Missing or empty inputs are errors that name the path (``FileNotFoundError`` / ``ValueError``),
  raised when the sources are resolved, before any document is read.  A bad record (invalid
  UTF-8, not a JSON object, a field missing, null or not a string) is an :class:`Item` with an
  ``error`` naming ``file:line`` (``file: row N`` in a table); :func:`iter_documents` and
  :func:`jsonl_records` raise it as a ``ValueError``, :func:`sumi.data.prepare` stops on it or
  (``skip_bad``) counts it.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from sumi.data.readers import (RECORD_SUFFIXES, SAVED_DATASET, SUFFIXES, TEXT_SUFFIXES, format_of, is_saved_dataset,
                               read_records)

_KINDS = f"{'/'.join(SUFFIXES)} files or saved datasets"

_STDLIB_SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
STDLIB_SPLITS = ("train", "heldout")
"""The splits of the standard-library corpus, named ``stdlib:train`` and ``stdlib:heldout`` as data."""
STDLIB_PREFIX = "stdlib:"
HELDOUT_ONE_IN = 50
"""One standard-library file in 50 (2%) is held out (:func:`is_heldout`)."""


def stdlib_root() -> Path:
    """The running Python's standard library: ``sysconfig.get_paths()["stdlib"]``."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files() -> list[Path]:
    """The ``.py`` files of the running Python's standard library, sorted (a corpus every install has).

    Found under :func:`stdlib_root`; third-party packages (``site-packages``) and test suites
    (``test``/``tests``/``idle_test`` directories) are left out.
    """
    root = stdlib_root()
    found = []
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [d for d in subdirectories if d not in _STDLIB_SKIP]  # never walk site-packages
        found += [Path(directory, name) for name in names if name.endswith(".py")]
    files = sorted(p for p in found if p.is_file())
    if not files:
        raise FileNotFoundError(f"no standard-library .py files under {root}")
    return files


def is_heldout(relative_path: str) -> bool:
    """Whether the standard-library file at ``relative_path`` (POSIX form, relative to
    :func:`stdlib_root`, e.g. ``"email/utils.py"``) belongs to the held-out split: the BLAKE2b
    digest (8 bytes, big-endian) of the path's UTF-8 bytes is a multiple of
    :data:`HELDOUT_ONE_IN`.  A file's split depends on its path only, so it is the same on every
    call, machine and Python version that has the file."""
    digest = hashlib.blake2b(relative_path.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HELDOUT_ONE_IN == 0


def stdlib_split(name: str) -> list[Path]:
    """The files of the split ``name`` (``"train"`` or ``"heldout"``) of :func:`stdlib_files`,
    sorted: the held-out split is every file for which :func:`is_heldout` holds (about 2%), the
    training split the others.  The two are disjoint and together are :func:`stdlib_files`."""
    if name not in STDLIB_SPLITS:
        raise _unknown_split(name)
    root = stdlib_root()
    held = name == "heldout"
    files = [p for p in stdlib_files() if is_heldout(p.relative_to(root).as_posix()) == held]
    if not files:
        raise FileNotFoundError(f"the standard-library split {STDLIB_PREFIX}{name} holds no files (under {root})")
    return files


def stdlib_split_name(source: str | os.PathLike) -> str | None:
    """The split that ``source`` names (``"stdlib:train"`` -> ``"train"``), or ``None`` when it is
    no ``stdlib:`` name; an unknown split is a ``ValueError``."""
    text = str(source)
    if not text.startswith(STDLIB_PREFIX):
        return None
    name = text[len(STDLIB_PREFIX):]
    if name not in STDLIB_SPLITS:
        raise _unknown_split(name)
    return name


def _unknown_split(name: str) -> ValueError:
    names = " or ".join(STDLIB_PREFIX + split for split in STDLIB_SPLITS)
    return ValueError(f"unknown standard-library split {STDLIB_PREFIX}{name}: use {names}")


def resolve_files(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The sources that ``paths_or_globs`` names, in order (each entry's sorted), duplicates kept
    once: files of :data:`~sumi.data.readers.SUFFIXES` and saved dataset directories;
    ``stdlib:train`` and ``stdlib:heldout`` name the files of :func:`stdlib_split`."""
    entries = [paths_or_globs] if isinstance(paths_or_globs, (str, os.PathLike)) else list(paths_or_globs)
    if not entries:
        raise ValueError("no data sources given: pass at least one file, directory or glob")
    files: list[Path] = []
    for entry in entries:
        if not isinstance(entry, (str, os.PathLike)) or not str(entry):
            raise ValueError(f"a data source must be a non-empty path or glob, got {entry!r}")
        text = str(entry)
        split = stdlib_split_name(text)
        if split is not None:
            found = stdlib_split(split)
        elif any(c in text for c in "*?["):
            found = []
            for match in sorted(Path(m) for m in glob.glob(text, recursive=True)):
                found += _walk(match) if match.is_dir() and not is_saved_dataset(match) else \
                    [match] if format_of(match) else []
            found = list(dict.fromkeys(found))
            if not found:
                raise FileNotFoundError(f"the glob {text} matches no {_KINDS}")
        else:
            path = Path(entry)
            if path.is_dir():
                _refuse_dataset_dict(path)
                found = [path] if is_saved_dataset(path) else _walk(path)
                if not found:
                    raise ValueError(f"the directory {path} holds no {_KINDS}")
            elif path.is_file():
                if format_of(path) is None:
                    raise ValueError(f"{path}: unsupported file type {''.join(path.suffixes[-2:])!r} "
                                     f"(expected one of {', '.join(SUFFIXES)} or {SAVED_DATASET})")
                found = [path]
            else:
                raise FileNotFoundError(f"no such data file or directory: {path}")
        files.extend(found)
    return list(dict.fromkeys(files))


def _walk(directory: Path) -> list[Path]:
    """The sources under ``directory``, sorted: supported files, and saved datasets as one source
    each (never the Arrow files inside them); a saved ``DatasetDict`` is a ``ValueError``."""
    found = []
    for root, subdirectories, names in os.walk(directory):
        here = Path(root)
        _refuse_dataset_dict(here)
        if here != directory and is_saved_dataset(here):
            found.append(here)
            subdirectories[:] = []
            continue
        subdirectories.sort()
        found += [here / n for n in names if format_of(here / n) not in (None, "saved")]
    return sorted(found)


def _refuse_dataset_dict(path: Path) -> None:
    """A ``DatasetDict.save_to_disk`` directory holds several splits: reading them all would mix a
    test split into training, so the split must be named."""
    from sumi.data.readers.saved import dataset_dict_splits

    splits = dataset_dict_splits(path)
    if splits is not None:
        raise ValueError(f"{path} holds a saved DatasetDict with splits {', '.join(splits)}: name one split's "
                         f"directory (e.g. {path / splits[0]})")


class Item(NamedTuple):
    """One record of the sources, ready for tokenizing or to be reported.

    ``pos``: ``(i, index)``, the ``i``-th source of :func:`resolve_files` and the record's
    :attr:`~sumi.data.readers.Record.index` in it (a prepare resumes after the last record it
    finished); ``where``: ``"file:line"`` / ``"file: row N"`` / ``"file"``; ``value``: a document
    (``str``), a ``(prompt, response)`` pair, or a chat record (``dict``), as the function that
    yields it says; ``None`` when the record is bad, ``error`` saying why."""

    pos: tuple[int, int]
    where: str
    value: Any
    error: str | None = None


def document_items(files: list[Path], text_field: str = "text", start: tuple[int, int] = (0, 0)) -> Iterator[Item]:
    """The documents of ``files`` (resolved sources) from position ``start`` on: a text file's
    text, a record's ``text_field``; empty documents are left out, bad records kept (``error``)."""
    _check_field("text_field", text_field)
    return _documents(files, text_field, start)


def _documents(files: list[Path], text_field: str, start: tuple[int, int]) -> Iterator[Item]:
    for i, path, record in _records(files, start, (text_field,)):
        if record.error is not None or format_of(path) in TEXT_SUFFIXES:
            value, error = record.value, record.error
        else:
            value, error = _field(record.value, text_field, "text_field / --text-field")
        if error is not None or value:
            yield Item((i, record.index), record.where, value, error)


def prompt_items(files: list[Path], prompt_field: str = "prompt", response_field: str = "response",
                 start: tuple[int, int] = (0, 0)) -> Iterator[Item]:
    """The ``(prompt, response)`` pairs of the records of ``files`` (record formats only) from
    position ``start`` on; bad records kept (``error``)."""
    for name, value in (("prompt_field", prompt_field), ("response_field", response_field)):
        _check_field(name, value)
    if prompt_field == response_field:
        raise ValueError(f"prompt_field and response_field must differ, both are {prompt_field!r}")
    _check_record_files(files, "prompted data", f"{{{prompt_field!r}: str, {response_field!r}: str}}")
    return _prompts(files, prompt_field, response_field, start)


def _prompts(files: list[Path], prompt_field: str, response_field: str, start: tuple[int, int]) -> Iterator[Item]:
    for i, _, record in _records(files, start, (prompt_field, response_field)):
        value, error = record.value, record.error
        if error is None:
            prompt, error = _field(value, prompt_field, "prompt_field / --prompt-field")
            if error is None:
                response, error = _field(value, response_field, "response_field / --response-field")
            value = (prompt, response) if error is None else None
        yield Item((i, record.index), record.where, value, error)


def chat_items(files: list[Path], start: tuple[int, int] = (0, 0)) -> Iterator[Item]:
    """The chat records (``dict``, fields unchecked: :func:`sumi.sft.messages_of` reads them) of
    ``files`` (record formats only) from position ``start`` on; bad records kept (``error``)."""
    _check_record_files(files, "chat data", "{'prompt', 'response'} or {'messages': [...]}")
    return (Item((i, record.index), record.where, record.value, record.error)
            for i, _, record in _records(files, start, None))


def _records(files: list[Path], start: tuple[int, int], columns):
    first, index = start
    for i in range(first, len(files)):
        for record in read_records(files[i], index if i == first else 0, columns):
            yield i, files[i], record


def _check_field(name: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")


def _check_record_files(files: list[Path], what: str, records: str) -> None:
    """A ``ValueError`` naming the first of ``files`` that holds no records (a text file)."""
    other = [f for f in files if format_of(f) in TEXT_SUFFIXES]
    if other:
        raise ValueError(f"{other[0]}: {what} is read from {'/'.join(RECORD_SUFFIXES)} files or saved datasets of "
                         f"{records} records, not {other[0].suffix!r} files")


def _field(record: dict, field: str, setting: str) -> tuple[str | None, str | None]:
    """``(record[field], None)`` when it is a string, else ``(None, why)`` (naming ``setting``, the
    option that names the field, when it is missing)."""
    if field not in record:
        return None, f"no {field!r} field (set {setting})"
    value = record[field]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        return None, f"field {field!r} is {kind}, not a string"
    return value, None


def _raise_bad(items: Iterator[Item]) -> Iterator[Item]:
    """``items``, raising the first bad one as a ``ValueError`` naming where it is."""
    for item in items:
        if item.error is not None:
            raise ValueError(f"{item.where}: {item.error}")
        yield item


def iter_documents(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike],
                   text_field: str = "text") -> Iterator[str]:
    """Yield the documents of ``paths_or_globs`` in order (see the module docstring); a bad record
    is a ``ValueError`` naming where it is.

    The inputs are resolved and checked now; the files are read lazily as the iterator advances.
    """
    _check_field("text_field", text_field)  # before resolving: the cheaper mistake first
    items = document_items(resolve_files(paths_or_globs), text_field)
    return (item.value for item in _raise_bad(items))


def jsonl_records(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of the JSONL file ``path`` (plain or
    compressed, :mod:`sumi.data.readers.jsonl`); a bad line raises ``ValueError`` naming ``path:line``."""
    from sumi.data.readers.jsonl import read_jsonl

    for record in read_jsonl(Path(path)):
        if record.error is not None:
            raise ValueError(f"{record.where}: {record.error}")
        yield record.index, record.value
