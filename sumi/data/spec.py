"""What a run trains on: one prepared directory, named directories mixed by weight, or a split
of the embedded standard-library corpus.

``--data DIR`` trains on one directory written by ``sumi data prepare``.  ``--data NAME=DIR``
(repeated) names the sources of a :class:`~sumi.data.Mixture` whose weights come from the
config's ``mixture`` (the ``mid`` and ``long`` phases of the released recipe mix code, math,
general and reasoning data; ``--set mixture='{"code": 0.5, ...}'`` sets any other).
``--data mix.toml`` (or ``.json``), alone, names the sources and their weights in one file
(:mod:`sumi.data.mixture_file`; read by :func:`mixture_file_arg`).
``--data stdlib:train`` (the embedded default's data) or ``--data stdlib:heldout`` (the files it
never trains on) names a split of the standard library (:func:`sumi.data.sources.stdlib_split`),
prepared and cached with the embedded tokenizer (:func:`stdlib_split_arg`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from sumi.data.dataset import Mixture, PackedDataset
from sumi.data.mixture_file import MixtureSpec, is_mixture_file, load_mixture_file
from sumi.data.sources import STDLIB_PREFIX, stdlib_split_name

DataSpec = str | os.PathLike | Mapping[str, str | os.PathLike]


def stdlib_split_arg(items: list[str]) -> str | None:
    """The split that ``--data stdlib:NAME`` names (``["stdlib:heldout"]`` -> ``"heldout"``), or
    ``None`` when ``items`` name no split; a split must be the only ``--data`` (``ValueError``)."""
    names = [stdlib_split_name(item) for item in items]  # checks the split names
    if all(name is None for name in names):
        return None
    if len(items) > 1:
        raise ValueError(f"--data {STDLIB_PREFIX}NAME is a whole corpus: give it alone, got {items}")
    return names[0]


def mixture_file_arg(items: list[str], assignments: Sequence[str] = ()) -> MixtureSpec | None:
    """The mixture file that ``--data FILE`` names (``.toml`` or ``.json``,
    :func:`~sumi.data.mixture_file.load_mixture_file`), or ``None`` when ``items`` name none.

    A mixture file must be the only ``--data``, and it sets the run's ``mixture``: ``assignments``
    (the ``--set KEY=VALUE`` strings) must not set it too (``ValueError`` for either)."""
    files = [item for item in items if is_mixture_file(item)]
    if not files:
        return None
    if len(items) > 1:
        raise ValueError(f"--data {files[0]} is a mixture file naming every source: give it alone, got {items}")
    if any(item.partition("=")[0] == "mixture" for item in assignments):
        raise ValueError(f"--data {files[0]} sets the mixture weights and so does --set mixture=...: use one of "
                         "the two (edit the file's weights, or pass --data NAME=DIR for each source)")
    return load_mixture_file(files[0])


def parse_data_args(items: list[str]) -> Path | dict[str, Path]:
    """``["DIR"]`` -> ``Path(DIR)``; ``["a=DIR1", "b=DIR2"]`` -> ``{"a": Path(DIR1), "b": Path(DIR2)}``
    (a ``stdlib:`` split is not a directory: see :func:`stdlib_split_arg`; nor is a mixture file:
    see :func:`mixture_file_arg`)."""
    if not items:
        raise ValueError("no --data given")
    if stdlib_split_arg(items) is not None:
        raise ValueError(f"--data {items[0]} names a standard-library split, not a prepared directory")
    if any(is_mixture_file(item) for item in items):
        raise ValueError(f"--data {items} names a mixture file, not prepared directories: read it with "
                         "mixture_file_arg")
    named = ["=" in item for item in items]
    if not any(named):
        if len(items) > 1:
            raise ValueError(f"several --data directories need names: --data NAME=DIR (got {items})")
        return Path(items[0])
    if not all(named):
        raise ValueError(f"mix either one unnamed --data DIR or only NAME=DIR sources, got {items}")
    sources: dict[str, Path] = {}
    for item in items:
        name, _, path = item.partition("=")
        if not name or not path:
            raise ValueError(f"--data expects NAME=DIR, got {item!r}")
        if name in sources:
            raise ValueError(f"--data names the source {name!r} twice")
        sources[name] = Path(path)
    return sources


def open_data(data: DataSpec, mixture: Mapping[str, float] | None, seed: int, *,
              verify: bool = False) -> PackedDataset | Mixture:
    """The dataset a run reads: a :class:`PackedDataset`, or a :class:`Mixture` of named sources
    weighted by ``mixture`` (the names must match exactly; a weight may be 0).

    ``verify``: check every shard of every source against its manifest's sha256 before returning
    (:meth:`PackedDataset.verify`; raises :class:`~sumi.data.dataset.IntegrityError`)."""
    if not isinstance(data, Mapping):
        if mixture is not None:
            raise ValueError(f"this config mixes sources {sorted(mixture)}: pass --data NAME=DIR for each "
                             "(or --set mixture=null to train on one directory)")
        return PackedDataset(data, verify=verify)
    if mixture is None:
        raise ValueError(f"--data names sources {sorted(data)} but the config has no mixture weights: "
                         "--set mixture='{\"name\": weight, ...}'")
    if set(data) != set(mixture):
        raise ValueError(f"the mixture weighs {sorted(mixture)} but --data names {sorted(data)}: "
                         f"missing {sorted(set(mixture) - set(data))}, unweighted {sorted(set(data) - set(mixture))}")
    return Mixture({name: (PackedDataset(data[name], verify=verify), mixture[name]) for name in mixture}, seed=seed)


def describe(dataset: PackedDataset | Mixture) -> dict:
    """What a checkpoint records about its data, to refuse resuming on other data: its rows, its
    sources (with their rows and weights, and for a mixture their ``order``) and, for prompted data (any source prompted),
    ``"prompted": True`` (plain data is described as before prompted data existed)."""
    if isinstance(dataset, Mixture):
        out = {"rows": len(dataset), "sources": {n: {"rows": len(d), "weight": w}
                                                  for n, d, w in zip(dataset.names, dataset.datasets, dataset.weights)},
               "order": list(dataset.names)}  # the rows' interleaving depends on it (a dict compares in any order)
    else:
        out = {"rows": len(dataset), "sources": None}
    if getattr(dataset, "prompted", False):
        out["prompted"] = True
    return out
