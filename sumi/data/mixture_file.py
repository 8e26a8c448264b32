"""A mixture config file: every source's prepared directory and weight in one TOML or JSON file.

The released mid-training mix (docs/math.md, "Sumi recipe facts"; ``docs/examples/mid.toml``)::

    # The released mid-training mix (Sumi, arXiv 2606.19005): 32.5% code, 29.7% math,
    # 21.0% general, 16.8% reasoning
    [sources.code]
    path = "data/code-1184"   # a directory written by `sumi data prepare`; relative to this file
    weight = 0.325

    [sources.math]
    path = "data/math-1184"
    weight = 0.297

    # ... one [sources.NAME] table per source

or the same as JSON: ``{"sources": {"code": {"path": "data/code-1184", "weight": 0.325}, ...}}``.
The suffix says which (``.toml`` or ``.json``).  ``sumi train --data mix.toml`` trains on it.

Rules: the only top-level key is ``sources``, a non-empty table of named sources (names
non-empty); each source has exactly ``path`` (a non-empty string; a relative path resolves
against the directory holding the file) and ``weight`` (a finite number >= 0, not a boolean;
at least one weight > 0).  Weights are shares and need not sum to 1: source ``s`` gets the
share ``p_s = w_s / sum_r w_r`` of the rows, as :class:`sumi.data.Mixture` normalizes them.
Any other key, at any level, is an error (a misspelt ``wieght`` must not be ignored), and so is
a key written twice.  Every error is one ``ValueError`` naming the file (and, for bad syntax, the
parser's line and column).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from sumi._checks import check_number

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, as a package before 3.11
    import tomli as tomllib

MIXTURE_SUFFIXES = (".toml", ".json")
"""The suffixes of a mixture file (case-insensitive): TOML or JSON."""


@dataclass(frozen=True)
class MixtureSpec:
    """A parsed mixture file: ``paths`` maps each source name to its prepared directory (relative
    paths already resolved against the file's directory), ``weights`` maps it to its weight as
    written (shares: :class:`sumi.data.Mixture` normalizes them to ``w_s / sum_r w_r``).  Both
    hold the same names, in the file's order."""

    paths: dict[str, Path]
    weights: dict[str, float]


def is_mixture_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a mixture file: its suffix is ``.toml`` or ``.json`` and it is not a
    directory (a prepared directory may be called anything)."""
    return Path(path).suffix.lower() in MIXTURE_SUFFIXES and not Path(path).is_dir()


def load_mixture_file(path: str | os.PathLike) -> MixtureSpec:
    """Read the mixture file at ``path`` (format: module docstring).

    Raises ``ValueError`` naming the file for anything wrong: an unknown suffix, a file that
    cannot be read, bad TOML/JSON (with the parser's line), a missing or unknown key, a bad name,
    path or weight, or weights that are all 0.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in MIXTURE_SUFFIXES:
        raise ValueError(f"mixture file {file}: unknown suffix {file.suffix!r}, expected .toml or .json")
    try:
        text = file.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"mixture file {file}: no such file") from None
    except OSError as e:
        raise ValueError(f"mixture file {file}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"mixture file {file}: not UTF-8 text ({e})") from None
    try:
        document = tomllib.loads(text) if suffix == ".toml" else json.loads(text, object_pairs_hook=_no_duplicates)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, _DuplicateKey) as e:
        raise ValueError(f"mixture file {file}: invalid {suffix[1:].upper()}: {e}") from None

    def fail(message: str) -> ValueError:
        return ValueError(f"mixture file {file}: {message}")

    _check_keys(document, {"sources"}, "the top level", fail)
    sources = document["sources"]
    if not isinstance(sources, dict) or not sources:
        raise fail(f"'sources' must be a non-empty table of named sources, got {sources!r}")
    base = file.absolute().parent
    paths: dict[str, Path] = {}
    weights: dict[str, float] = {}
    for name, source in sources.items():
        if not name.strip():
            raise fail(f"a source name must be non-empty, got {name!r}")
        where = f"source {name!r}"
        _check_keys(source, {"path", "weight"}, where, fail)
        raw = source["path"]
        if not isinstance(raw, str) or not raw:
            raise fail(f"the path of {where} must be a non-empty string, got {raw!r}")
        try:
            weights[name] = check_number(f"the weight of {where}", source["weight"], 0.0)
        except ValueError as e:
            raise fail(str(e)) from None
        paths[name] = base / raw  # an absolute path stays itself
    if not sum(weights.values()) > 0:
        raise fail(f"at least one weight must be > 0, got {weights}")
    return MixtureSpec(paths=paths, weights=weights)


def _check_keys(table: object, keys: set[str], where: str, fail) -> None:
    """``table`` is a table holding exactly ``keys``: a missing or unknown one is named."""
    if not isinstance(table, dict):
        raise fail(f"{where} must be a table with keys {sorted(keys)}, got {table!r}")
    missing, unknown = sorted(keys - set(table)), sorted(set(table) - keys)
    if unknown:
        raise fail(f"unknown key{'s' if len(unknown) > 1 else ''} {unknown} in {where} (accepted: {sorted(keys)})")
    if missing:
        raise fail(f"{where} lacks {missing}")


class _DuplicateKey(ValueError):
    """A JSON object with a key twice (``json`` would keep the last one silently; TOML refuses)."""


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    out = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"the key {key!r} appears twice in one object")
        out[key] = value
    return out
