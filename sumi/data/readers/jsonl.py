"""JSON Lines, plain or compressed (``.jsonl``, ``.jsonl.gz``, ``.jsonl.zst``): one JSON object per
non-blank line, read as a stream (one line in memory at a time, whatever the file's size).

Lines end at ``\\n`` only (JSON Lines; a raw U+2028 inside a string is text, not a line break).
Gzip is read with the standard library, zstd with ``zstandard`` (the ``[data]`` extra; files of
several frames, as ``zstd`` and parallel compressors write, are read across frames, and a last
frame cut short is an error, as a truncated gzip file is).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path

from sumi.data.readers._optional import require
from sumi.data.readers.record import Record

SUFFIXES = (".jsonl", ".jsonl.gz", ".jsonl.zst")
_BUFFER = 1 << 20


@contextlib.contextmanager
def open_lines(path: Path) -> Iterator[io.BufferedIOBase]:
    """``path`` opened for reading its (decompressed) bytes line by line."""
    name = path.name
    if name.endswith(".gz"):
        with gzip.open(path, "rb") as f:
            yield f
    elif name.endswith(".zst"):
        zstandard = require("zstandard", ".zst files")
        with open(path, "rb") as raw:
            with io.BufferedReader(_ZstdFrames(zstandard, raw), _BUFFER) as f:
                yield f
    else:
        with open(path, "rb", buffering=_BUFFER) as f:
            yield f


def read_jsonl(path: Path, start: int = 0) -> Iterator[Record]:
    """A record per non-blank line with line number ``>= start``: the JSON object, or an error
    (invalid UTF-8, invalid JSON, a JSON value that is not an object).  Lines before ``start`` are
    skipped unparsed.  Compressed data that cannot be decompressed (truncated, corrupt) ends the
    file with one last bad record, at the line it would have been."""
    lineno = 0
    with open_lines(path) as f:
        while True:
            try:
                raw = f.readline()
            except Exception as e:  # noqa: BLE001 - gzip.BadGzipFile, EOFError (truncated), zstandard.ZstdError
                at = max(lineno + 1, start)  # every record has index >= start, this one too
                yield Record(at, f"{path}:{at}", None, f"corrupt compressed data: {e}")
                return
            if not raw:
                return
            lineno += 1
            if lineno >= start and raw.strip():
                yield _record(raw, f"{path}:{lineno}", lineno)


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of every zstd frame of ``raw``, in order.  Unlike zstandard's
    ``stream_reader`` (which just ends there), input that stops inside a frame (a truncated file)
    raises ``zstandard.ZstdError``."""

    _READ = 1 << 16  # compressed bytes decoded at once, so that one step's output stays small

    def __init__(self, zstandard, raw: io.RawIOBase) -> None:
        super().__init__()
        self._zstd = zstandard
        self._dctx = zstandard.ZstdDecompressor()
        self._raw = raw
        self._frame = None  # the decompressor of the frame begun and not yet ended
        self._out = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._out:
            data = self._raw.read(self._READ)
            if not data:
                if self._frame is not None:
                    raise self._zstd.ZstdError("the file ends inside a zstd frame (truncated)")
                return 0
            self._out = memoryview(self._decode(data))
        n = min(len(buffer), len(self._out))
        buffer[:n] = self._out[:n]
        self._out = self._out[n:]
        return n

    def _decode(self, data: bytes) -> bytes:
        out = []
        while data:
            if self._frame is None:
                self._frame = self._dctx.decompressobj()
            out.append(self._frame.decompress(data))
            data = b""
            if self._frame.eof:  # the frame ended: what followed it begins the next one
                data, self._frame = self._frame.unused_data, None
        return b"".join(out)


def _record(raw: bytes, where: str, lineno: int) -> Record:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Record(lineno, where, None, f"not UTF-8: {e}")
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        return Record(lineno, where, None, f"not a JSON object: {e}")
    if not isinstance(value, dict):
        return Record(lineno, where, None, f"not a JSON object (a {type(value).__name__})")
    return Record(lineno, where, value)
