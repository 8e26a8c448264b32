"""Where documents come from: local files, named by paths, directories or globs.

Conventions:

- ``.txt``, ``.md``, ``.py``: the whole file (UTF-8) is one document.
- ``.jsonl``: one JSON object per non-blank line; its ``text_field`` (a string) is one document.
  Prompted data (:func:`iter_prompt_records`) reads ``.jsonl`` files only: one
  ``{"prompt": str, "response": str}`` record per non-blank line; chat data
  (:func:`iter_chat_records`, ``sumi data prepare --sft``) one ``{"prompt", "response"}`` or
  ``{"messages": [{"role", "content"}, ...]}`` record per non-blank line (docs/sft.md, "Data").
- A directory stands for every supported file under it (recursively); a glob (``*``, ``?``, ``[``,
  ``**``) for every supported file it matches.  Files are read in sorted order, so the same
  inputs always give the same documents in the same order.
- ``stdlib:train`` and ``stdlib:heldout`` stand for the files of a split of the running Python's
  standard library (:func:`stdlib_split`): the embedded default trains on ``stdlib:train`` and
  never sees ``stdlib:heldout``.
- Empty documents (``""``) are skipped: they would pack to a bare ``BOS EOS``.
- Missing or empty inputs are errors that name the path (``FileNotFoundError`` / ``ValueError``),
  raised when :func:`iter_documents` is called, before any document is read.  A bad line (not a
  JSON object, a field missing or not a string) is a ``ValueError`` naming ``file:line``.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

TEXT_SUFFIXES = (".txt", ".md", ".py")
JSONL_SUFFIXES = (".jsonl",)
SUFFIXES = TEXT_SUFFIXES + JSONL_SUFFIXES
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
    """The files that ``paths_or_globs`` names, in order (each entry's files sorted), duplicates kept once;
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
            matched = sorted(Path(m) for m in glob.glob(text, recursive=True))
            found = [p for p in matched if p.is_file() and p.suffix in SUFFIXES]
            if not found:
                raise FileNotFoundError(f"the glob {text} matches no {'/'.join(SUFFIXES)} files")
        else:
            path = Path(entry)
            if path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
                if not found:
                    raise ValueError(f"the directory {path} holds no {'/'.join(SUFFIXES)} files")
            elif path.is_file():
                if path.suffix not in SUFFIXES:
                    raise ValueError(f"{path}: unsupported file type {path.suffix!r} "
                                     f"(expected one of {', '.join(SUFFIXES)})")
                found = [path]
            else:
                raise FileNotFoundError(f"no such data file or directory: {path}")
        files.extend(found)
    return list(dict.fromkeys(files))


def iter_documents(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike],
                   text_field: str = "text") -> Iterator[str]:
    """Yield the documents of ``paths_or_globs`` in order (see the module docstring).

    The inputs are resolved and checked now; the files are read lazily as the iterator advances.
    """
    files = resolve_files(paths_or_globs)
    return _documents(files, text_field)


def jsonl_records(text: str, where: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line of JSONL ``text``; a line that is not a
    JSON object raises ``ValueError`` naming ``where:line``."""
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}:{lineno}: not a JSON object: {e}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{where}:{lineno}: not a JSON object (a {type(record).__name__})")
        yield lineno, record


class PromptRecord(NamedTuple):
    """One record of prompted data: ``where`` it is (``"file:line"``), its ``prompt`` and its ``response``."""

    where: str
    prompt: str
    response: str


def iter_prompt_records(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike],
                        prompt_field: str = "prompt", response_field: str = "response") -> Iterator[PromptRecord]:
    """Yield the :class:`PromptRecord` of every non-blank line of the ``.jsonl`` files of
    ``paths_or_globs``, in order (files sorted as in :func:`resolve_files`).

    Every line must be a JSON object whose ``prompt_field`` and ``response_field`` are strings
    (either may be empty).  The inputs are resolved and checked now (a file that is not
    ``.jsonl`` is a ``ValueError`` naming it); the files are read lazily."""
    for name, value in (("prompt_field", prompt_field), ("response_field", response_field)):
        if not isinstance(value, str) or not value:
            raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    if prompt_field == response_field:
        raise ValueError(f"prompt_field and response_field must differ, both are {prompt_field!r}")
    files = _jsonl_files(paths_or_globs, "prompted data", f"{{{prompt_field!r}: str, {response_field!r}: str}}")
    return _prompt_records(files, prompt_field, response_field)


class ChatRecord(NamedTuple):
    """One record of chat data: ``where`` it is (``"file:line"``) and the JSON object, unchecked
    (:func:`sumi.sft.messages_of` reads it as a conversation)."""

    where: str
    record: dict


def iter_chat_records(paths_or_globs: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[ChatRecord]:
    """Yield the :class:`ChatRecord` of every non-blank line of the ``.jsonl`` files of
    ``paths_or_globs``, in order (files sorted as in :func:`resolve_files`).  Every line must be a
    JSON object (a ``ValueError`` naming ``file:line`` otherwise); its fields are checked by the
    reader (:func:`sumi.sft.messages_of`).  The inputs are resolved and checked now (a file that is
    not ``.jsonl`` is a ``ValueError`` naming it); the files are read lazily."""
    files = _jsonl_files(paths_or_globs, "chat data", "{'prompt', 'response'} or {'messages': [...]}")
    return _chat_records(files)


def _jsonl_files(paths_or_globs, what: str, records: str) -> list[Path]:
    """The files of ``paths_or_globs`` (:func:`resolve_files`), all ``.jsonl``: a ``ValueError``
    naming the first that is not, saying that ``what`` is read from JSONL files of ``records``."""
    files = resolve_files(paths_or_globs)
    other = [f for f in files if f.suffix not in JSONL_SUFFIXES]
    if other:
        raise ValueError(f"{other[0]}: {what} is read from {'/'.join(JSONL_SUFFIXES)} files of {records} records, "
                         f"not {other[0].suffix!r} files")
    return files


def _chat_records(files: list[Path]) -> Iterator[ChatRecord]:
    for path in files:
        for lineno, record in jsonl_records(_read_text(path), path):
            yield ChatRecord(f"{path}:{lineno}", record)


def _prompt_records(files: list[Path], prompt_field: str, response_field: str) -> Iterator[PromptRecord]:
    for path in files:
        for lineno, record in jsonl_records(_read_text(path), path):
            prompt = _string_field(record, prompt_field, path, lineno, "prompt_field / --prompt-field")
            response = _string_field(record, response_field, path, lineno, "response_field / --response-field")
            yield PromptRecord(f"{path}:{lineno}", prompt, response)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: {e}") from None


def _string_field(record: dict, field: str, path: Path, lineno: int, setting: str) -> str:
    """``record[field]``, a string; else a ``ValueError`` naming ``path:lineno`` (and ``setting``,
    the option that names the field, when it is missing)."""
    if field not in record:
        raise ValueError(f"{path}:{lineno}: no {field!r} field (set {setting})")
    value = record[field]
    if not isinstance(value, str):
        raise ValueError(f"{path}:{lineno}: field {field!r} is {type(value).__name__}, not a string")
    return value


def _documents(files: list[Path], text_field: str) -> Iterator[str]:
    for path in files:
        text = _read_text(path)
        if path.suffix in TEXT_SUFFIXES:
            if text:
                yield text
            continue
        for lineno, record in jsonl_records(text, path):
            doc = _string_field(record, text_field, path, lineno, "text_field / --text-field")
            if doc:
                yield doc
