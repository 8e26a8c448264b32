"""Where a study keeps its work: an output directory, locked, resumable point by point.

A study measures many points (one model x sampler x step count, one training cell, one canvas
length).  Each finished point is appended to ``OUT/points.jsonl`` under its key (a hash of what
it measured) as soon as it is measured, so a study killed at any moment loses at most the point
in progress: ``--resume`` reads the finished ones back and measures only the rest (a torn last
line, from a kill during the write, is ignored and measured again).  The reports
(``OUT/NAME.json``, ``OUT/NAME.md``, ``OUT/NAME.png``) are written atomically at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = ["StudyDir", "open_study", "point_key", "markdown_table", "format_number"]

LOCK_NAME = ".study.lock"
POINTS_NAME = "points.jsonl"


def point_key(spec: dict[str, Any]) -> str:
    """A short hash of ``spec`` (JSON-serializable): the identity of one measured point."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StudyDir:
    """An open study directory (see :func:`open_study`): ``path``, ``runs`` (the default run
    cache, ``OUT/runs``) and the finished points."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.runs = path / "runs"
        self._points: dict[str, dict] = {}
        file = path / POINTS_NAME
        if file.is_file():
            for line in file.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line torn by a kill: that point is measured again
                    continue
                if isinstance(record, dict) and isinstance(record.get("key"), str):
                    self._points[record["key"]] = record["row"]

    def __len__(self) -> int:
        return len(self._points)

    def get(self, key: str) -> dict | None:
        """The row measured under ``key`` by this or an earlier (interrupted) invocation."""
        return self._points.get(key)

    def add(self, key: str, row: dict) -> dict:
        """Record ``row`` under ``key``: appended and flushed to disk before this returns."""
        line = json.dumps({"key": key, "row": row}, default=_jsonable) + "\n"
        with open(self.path / POINTS_NAME, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
        self._points[key] = row
        return row

    def point(self, spec: dict[str, Any], measure: Callable[[], dict]) -> dict:
        """The row of ``spec``: read back when already measured, else ``measure()``d and recorded."""
        key = point_key(spec)
        row = self.get(key)
        return row if row is not None else self.add(key, measure())

    def write(self, name: str, payload: dict, markdown: str) -> tuple[Path, Path]:
        """``OUT/NAME.json`` (``payload``) and ``OUT/NAME.md`` (``markdown``), each atomically."""
        from sumi._fs import atomic_write

        js = atomic_write(self.path / f"{name}.json", json.dumps(payload, indent=2, default=_jsonable) + "\n")
        md = atomic_write(self.path / f"{name}.md", markdown.rstrip("\n") + "\n")
        return js, md


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


@contextlib.contextmanager
def open_study(out: str | os.PathLike, *, resume: bool) -> Iterator[StudyDir]:
    """Open ``out`` for one study, holding its lock (one study per directory at a time).

    A directory that already holds a study's work is refused unless ``resume`` (nothing is ever
    overwritten by accident); with ``resume`` its finished points and runs are reused.

    Raises:
        FileExistsError: ``out`` holds files and ``resume`` is false.
        sumi._fs.LockedError: another process has the study open.
    """
    from sumi._fs import check_writable_dir, exclusive_lock

    path = Path(out)
    if not resume and path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()):
        raise FileExistsError(f"{path} already holds a study: pass --resume to continue it, or choose another --out")
    check_writable_dir(path)
    with exclusive_lock(path / LOCK_NAME, f"the study directory {path}"):
        yield StudyDir(path)


def format_number(value: Any, digits: int = 4) -> str:
    """A table cell: integers with thousands separators; floats with ``digits`` significant
    digits (at least), in scientific notation beyond ``[1e-3, 1e5)``; ``None`` as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 1e5 or (value != 0 and abs(value) < 1e-3):
            return f"{value:.{digits}g}"
        whole = len(str(int(abs(value)))) if abs(value) >= 1 else 0  # digits before the point
        return f"{value:,.{max(0, digits - whole)}f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; cells through :func:`format_number`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_number(v) for v in row) + " |")
    return "\n".join(lines)
