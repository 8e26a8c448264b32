"""Training data: local files -> packed uint32 shards -> mixtures -> a resumable loader.

- :mod:`sumi.data.sources`: documents from ``.txt``/``.md``/``.py`` files (one each),
  ``.jsonl``/``.jsonl.gz``/``.jsonl.zst`` (one per line), ``.parquet`` files and saved datasets
  (one per row; :mod:`sumi.data.readers`, one reader per format), directories and globs;
  :func:`stdlib_files`, a corpus every Python has.
- :mod:`sumi.data.packing`: documents packed as ``BOS text EOS`` into rows of ``seq_len`` tokens
  (docs/math.md "Sumi recipe facts"), tokenized in parallel worker processes (the same bytes for
  any number), bad records stopped or skipped and counted, resumable after a failure
  (:mod:`sumi.data.resume`), written atomically with a ``manifest.json`` (a sha256 per shard)
  and the ``tokenizer.json`` used.
- :mod:`sumi.data.mixture_file`: a mixture's sources and weights in one TOML or JSON file
  (:func:`load_mixture_file`).
- :mod:`sumi.data.dataset`: :class:`PackedDataset` (memory-mapped; ``verify=True`` checks every
  shard's sha256, raising :class:`IntegrityError`) and :class:`Mixture` (weights per source; one
  mixture per phase).
- :mod:`sumi.data.loader`: :class:`Loader`, seeded per epoch, sliced per rank, resumable from its
  ``state_dict``.
"""

from typing import TYPE_CHECKING

from sumi._lazy import lazy_exports

if TYPE_CHECKING:  # imported on first use (sumi._lazy): the tokenizing workers import no torch
    from sumi.data.dataset import IntegrityError, Mixture, PackedDataset
    from sumi.data.loader import Loader, MicroBatch
    from sumi.data.mixture_file import MixtureSpec, load_mixture_file
    from sumi.data.packing import Manifest, prepare
    from sumi.data.sources import iter_documents, stdlib_files

__all__ = ["IntegrityError", "Loader", "Manifest", "MicroBatch", "Mixture", "MixtureSpec", "PackedDataset",
           "iter_documents", "load_mixture_file", "prepare", "stdlib_files"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "IntegrityError": "sumi.data.dataset", "Mixture": "sumi.data.dataset", "PackedDataset": "sumi.data.dataset",
    "Loader": "sumi.data.loader", "MicroBatch": "sumi.data.loader", "MixtureSpec": "sumi.data.mixture_file",
    "load_mixture_file": "sumi.data.mixture_file", "Manifest": "sumi.data.manifest", "prepare": "sumi.data.packing",
    "iter_documents": "sumi.data.sources", "stdlib_files": "sumi.data.sources"})
