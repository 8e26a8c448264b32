"""Training data: local files -> packed uint32 shards -> mixtures -> a resumable loader.

- :mod:`sumi.data.sources`: documents from ``.txt``/``.md``/``.py`` files (one each) and ``.jsonl``
  (one per line), directories and globs; :func:`stdlib_files`, a corpus every Python has.
- :mod:`sumi.data.packing`: documents packed as ``BOS text EOS`` into rows of ``seq_len`` tokens
  (docs/math.md "Sumi recipe facts"), written atomically with a ``manifest.json`` (a sha256 per
  shard) and the ``tokenizer.json`` used.
- :mod:`sumi.data.dataset`: :class:`PackedDataset` (memory-mapped; ``verify=True`` checks every
  shard's sha256, raising :class:`IntegrityError`) and :class:`Mixture` (weights per source; one
  mixture per phase).
- :mod:`sumi.data.loader`: :class:`Loader`, seeded per epoch, sliced per rank, resumable from its
  ``state_dict``.
"""

from sumi.data.dataset import IntegrityError, Mixture, PackedDataset
from sumi.data.loader import Loader, MicroBatch
from sumi.data.packing import Manifest, prepare
from sumi.data.sources import iter_documents, stdlib_files

__all__ = ["IntegrityError", "Loader", "Manifest", "MicroBatch", "Mixture", "PackedDataset", "iter_documents", "prepare",
           "stdlib_files"]
