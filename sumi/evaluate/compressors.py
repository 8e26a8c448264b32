"""Bits per byte of the standard library's compressors: the baselines of ``sumi eval nelbo``.

A language model is a compressor (arithmetic coding turns ``-log2 p(text)`` bits into a file of
about that size), so its bits per byte compare directly with ``8 x compressed size / size`` of a
general-purpose compressor on the same bytes.  Each document is compressed on its own, as the
model scores each document on its own: a compressor's bits per byte is

    8 x sum_d len(compress(utf8(d))) / sum_d len(utf8(d))

over the documents ``d`` with at least one byte (an empty document costs the model nothing, and
costs a compressor only its header), with each format's maximum compression level: ``gzip``
(``gzip.compress``, level 9, ``mtime=0``), ``bz2`` (``bz2.compress``, level 9) and ``xz``
(``lzma.compress``, the ``.xz`` format, preset ``9 | PRESET_EXTREME``).  The sizes are those of
the complete files, headers and checksums included (gzip 18 bytes, xz about 60 per document),
which weighs on short documents: the cost of storing each document as its own file.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable, Sequence

COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data, compresslevel=9, mtime=0),
    "bz2": lambda data: bz2.compress(data, compresslevel=9),
    "xz": lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME),
}
"""Each baseline's compressor at its maximum level: ``bytes -> compressed bytes``."""


def compressor_bits_per_byte(texts: Sequence[str]) -> dict[str, float]:
    """``{"gzip": ..., "bz2": ..., "xz": ...}``: the bits per byte of each of :data:`COMPRESSORS`
    on ``texts``, each text compressed on its own (see the module docstring).  Raises
    ``ValueError`` when the texts hold no bytes."""
    documents = [data for data in (text.encode("utf-8") for text in texts) if data]
    size = sum(len(data) for data in documents)
    if size == 0:
        raise ValueError("the texts hold no bytes to compress (all empty?)")
    return {name: 8 * sum(len(compress(data)) for data in documents) / size for name, compress in COMPRESSORS.items()}


__all__ = ["COMPRESSORS", "compressor_bits_per_byte"]
