"""The names, dtypes and error type of the Hugging Face checkpoint layout (docs/sumi.md,
"Checkpoints"), shared by :mod:`sumi.hf.config`, :mod:`sumi.hf.reading` and
:mod:`sumi.hf.writing`.

A checkpoint directory holds ``config.json`` and either ``model.safetensors`` or shards
``model-0000i-of-0000N.safetensors`` listed in ``model.safetensors.index.json``; the other files
in it (tokenizer, generation config, a user's notes) belong to the user and are kept.
"""

from __future__ import annotations

import re

import torch

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "WEIGHTS_INDEX_NAME", "SIDE_FILES", "CheckpointError",
           "is_checkpoint_file", "shard_names", "parse_dtype", "dtype_name"]

CONFIG_NAME = "config.json"
"""The model configuration file of a checkpoint directory."""
WEIGHTS_NAME = "model.safetensors"
"""The weights file of an unsharded checkpoint."""
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
"""The index (tensor name -> shard file) of a sharded checkpoint."""
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
"""Plain data files that :func:`sumi.hf.convert` copies along with the weights (never code)."""

_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
# What the writer of earlier releases left after a crash: ``.NAME.XXXXXXXX.tmp`` beside NAME.
_OLD_TEMPORARY_RE = re.compile(r"^\.(?:config\.json|model\.safetensors(?:\.index\.json)?|"
                               r"model-\d{5}-of-\d{5}\.safetensors)\.\w+\.tmp$")


class CheckpointError(ValueError):
    """A checkpoint whose files, keys, shapes or config do not describe a Sumi model."""


def is_checkpoint_file(name: str) -> bool:
    """Whether a directory entry is the checkpoint's own (config, weights, index, or a temporary
    an interrupted earlier save left), as opposed to a file of the user's."""
    return (name in (CONFIG_NAME, WEIGHTS_NAME, WEIGHTS_INDEX_NAME) or bool(_SHARD_RE.match(name))
            or bool(_OLD_TEMPORARY_RE.match(name)))


def shard_names(count: int) -> list[str]:
    """The weight file names of a checkpoint cut into ``count`` shards (``model.safetensors``
    when ``count == 1``): ``model-00001-of-0000N.safetensors``, ... (the Hugging Face rule)."""
    if count == 1:
        return [WEIGHTS_NAME]
    return [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]


_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32",
                torch.float64: "float64"}


def parse_dtype(dtype: str | torch.dtype | None, argument: str = "dtype") -> torch.dtype | None:
    """A floating ``torch.dtype`` from a name (``"bfloat16"``, ``"bf16"``, ``"float32"``, ...) or a
    dtype; ``None`` stays ``None``.  Raises ``ValueError`` naming ``argument`` otherwise."""
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in _DTYPE_NAMES):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"{argument} must be a floating dtype ({', '.join(_DTYPE_NAMES.values())} or a "
                     f"torch.dtype), got {dtype!r}")


def dtype_name(dtype: str | torch.dtype) -> str:
    """The ``config.json`` spelling of a floating dtype (``"bfloat16"``, ``"float32"``, ...)."""
    parsed = parse_dtype(dtype)
    if parsed is None:
        raise ValueError("dtype must be a floating dtype, got None")
    return _DTYPE_NAMES[parsed]
