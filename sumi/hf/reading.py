"""Validated reading of a Hugging Face checkpoint directory (docs/sumi.md, "Checkpoints").

:func:`from_pretrained` builds the model on the meta device and assigns each parameter the
tensor read (memory-mapped) from the safetensors files, converted to ``dtype`` and moved to
``device`` one tensor at a time, so the weights exist once (no random initialization pass).
Weights are read only from safetensors: never ``torch.load``, pickle or remote code.  With an
index, exactly the files it names are read; a ``model.safetensors`` beside an index is an error
(which of the two is current cannot be told).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor

from sumi.hf.config import config_from_hf
from sumi.hf.layout import CONFIG_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME, CheckpointError, parse_dtype
from sumi.model.attention import check_backend
from sumi.model.params import copy_full_
from sumi.model.transformer import Sumi

__all__ = ["checkpoint_dir", "read_config", "load_state_dict", "from_pretrained", "load_weights"]

_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
# Keys some exporters store that carry nothing (RoPE frequencies are recomputed from rope_theta).
_IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)
_SAFETENSORS_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}

# Which config.json fields fix the shape of each kind of tensor (for mismatch messages).
_SHAPE_FIELDS = {
    "embed_tokens.weight": "[vocab_size, hidden_size]",
    "lm_head.weight": "[vocab_size, hidden_size]",
    "q_proj.weight": "[num_attention_heads * head_dim, hidden_size]",
    "k_proj.weight": "[num_key_value_heads * head_dim, hidden_size]",
    "v_proj.weight": "[num_key_value_heads * head_dim, hidden_size]",
    "o_proj.weight": "[hidden_size, num_attention_heads * head_dim]",
    "gate_proj.weight": "[intermediate_size, hidden_size]",
    "up_proj.weight": "[intermediate_size, hidden_size]",
    "down_proj.weight": "[hidden_size, intermediate_size]",
    "norm.weight": "[hidden_size]",
    "layernorm.weight": "[hidden_size]",
}

# key -> (file, shape, safetensors dtype)
_Headers = Mapping[str, tuple[Path, tuple[int, ...], str]]


def _missing_help(directory: Path) -> str:
    return (f"put the checkpoint there: {CONFIG_NAME} and {WEIGHTS_NAME} (or model-0000i-of-0000N.safetensors "
            f"shards with {WEIGHTS_INDEX_NAME}), e.g. a local download of tohoku-nlp/sumi-7b "
            f"(`huggingface-cli download tohoku-nlp/sumi-7b --local-dir {directory}`)")


def checkpoint_dir(path: str | os.PathLike) -> Path:
    """``path`` as an existing directory; ``FileNotFoundError``/``NotADirectoryError`` saying
    what a checkpoint directory holds otherwise."""
    directory = Path(path)
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist; {_missing_help(directory)}")
    if not directory.is_dir():
        raise NotADirectoryError(f"from_pretrained expects a checkpoint directory, got the file {str(directory)!r}")
    return directory


def read_config(directory: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory (not yet validated)."""
    file = directory / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{str(file)!r} not found; {_missing_help(directory)}")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(file)!r} is not valid JSON: {e}") from e


@contextmanager
def _open(file: Path) -> Iterator[Any]:
    """``safe_open`` (memory-mapped, CPU) with safetensors' errors turned into ones naming the file."""
    try:
        handle = safe_open(str(file), framework="pt", device="cpu")
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{str(file)!r} is not a readable safetensors file ({e}); it may be truncated or "
                              "corrupt: download or write it again") from e
    with handle as f:
        yield f


def _weight_files(directory: Path) -> dict[Path, list[str] | None]:
    """The weight files and, for a sharded checkpoint, the keys the index assigns to each.

    With an index, exactly the files it names (a stray shard it does not name is never read);
    ``model.safetensors`` is read only when there is no index, and both at once are an error."""
    single, index = directory / WEIGHTS_NAME, directory / WEIGHTS_INDEX_NAME
    if not index.is_file():
        if single.is_file():
            return {single: None}
        found = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = (f" (found {found}: only safetensors weights are loaded, never pickled ones)" if found else "")
        raise FileNotFoundError(f"no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {str(directory)!r}{hint}; "
                                f"{_missing_help(directory)}")
    if single.exists():
        raise CheckpointError(f"{str(directory)!r} holds both {WEIGHTS_NAME} and {WEIGHTS_INDEX_NAME}: it is not "
                              "clear which weights are current (a copy or an older writer left one of them); "
                              f"delete the stale one: {WEIGHTS_NAME} for a sharded checkpoint, or "
                              f"{WEIGHTS_INDEX_NAME} and its shards for a single-file one")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{str(index)!r} is not valid JSON: {e}") from e
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"{str(index)!r} has no 'weight_map' object") from e
    if not isinstance(weight_map, Mapping) or not weight_map:
        raise CheckpointError(f"{str(index)!r}: 'weight_map' must be a non-empty object mapping keys to shard files")
    files: dict[Path, list[str]] = {}
    for key, name in weight_map.items():
        if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
            raise CheckpointError(f"{str(index)!r}: weight_map[{key!r}] = {name!r} must be a file name in the "
                                  "checkpoint directory")
        files.setdefault(directory / name, []).append(key)
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"shard {file.name!r} listed in {str(index)!r} (for "
                                    f"{files[file][0]!r} and {len(files[file]) - 1} more keys) does not exist in "
                                    f"{str(directory)!r}; the download is incomplete")
    return files


def _headers(directory: Path) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """key -> (file, shape, safetensors dtype) from the file headers, without reading any tensor."""
    headers: dict[str, tuple[Path, tuple[int, ...], str]] = {}
    for file, listed in _weight_files(directory).items():
        with _open(file) as f:
            keys = list(f.keys())
            if listed is not None:
                absent = sorted(set(listed) - set(keys))
                if absent:
                    raise CheckpointError(f"{WEIGHTS_INDEX_NAME} places {absent[0]!r} in {file.name!r} but that "
                                          f"file does not hold it ({len(absent)} such keys)")
                extra = sorted(set(keys) - set(listed))
                if extra:
                    raise CheckpointError(f"{file.name!r} holds {extra[0]!r}, which {WEIGHTS_INDEX_NAME} does not "
                                          f"assign to it ({len(extra)} such keys)")
            for key in keys:
                if key in headers:
                    raise CheckpointError(f"key {key!r} appears in both {headers[key][0].name!r} and {file.name!r}")
                sl = f.get_slice(key)
                headers[key] = (file, tuple(sl.get_shape()), sl.get_dtype())
    return headers


def _weight_headers(directory: Path) -> dict[str, tuple[Path, tuple[int, ...], str]]:
    """:func:`_headers` without the keys Sumi ignores (stored RoPE buffers)."""
    return {k: v for k, v in _headers(directory).items() if not k.endswith(_IGNORED_KEY_SUFFIXES)}


def load_state_dict(path: str | os.PathLike, *, dtype: str | torch.dtype | None = None,
                    device: str | torch.device | None = None) -> dict[str, Tensor]:
    """Every tensor of a checkpoint directory (``model.safetensors`` or the shards its index
    lists), memory-mapped from the files (no copy on the CPU unless ``dtype`` converts), then
    converted to ``dtype`` and moved to ``device`` one tensor at a time.  Validates the files and
    the index, not the keys (see :func:`from_pretrained`).

    Args:
        path: the checkpoint directory.
        dtype: convert every tensor to this floating dtype (default: keep each file's).
        device: where the tensors go (default: the CPU).
    """
    directory = checkpoint_dir(path)
    target = parse_dtype(dtype, "dtype")
    headers = _headers(directory)
    return _read(headers, headers.keys(), target, device)


def _read(headers: _Headers, keys: Iterable[str], dtype: torch.dtype | None,
          device: str | torch.device | None) -> dict[str, Tensor]:
    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(headers[key][0], []).append(key)
    out: dict[str, Tensor] = {}
    for file, file_keys in by_file.items():
        with _open(file) as f:
            for key in file_keys:
                try:
                    tensor = f.get_tensor(key)
                except (SafetensorError, OSError) as e:
                    raise CheckpointError(f"could not read {key!r} from {str(file)!r} ({e}); the file may be "
                                          "corrupt") from e
                out[key] = tensor.to(device=device, dtype=dtype)  # no copy when nothing changes
    return out


def _check_against(model: Sumi, headers: _Headers) -> None:
    """Keys and shapes of the checkpoint against the meta model its config.json describes."""
    c = model.config
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    layers = {int(m.group(1)) for k in headers if (m := _LAYER_RE.match(k))}
    if layers and layers != set(range(c.num_hidden_layers)):
        raise CheckpointError(f"{CONFIG_NAME} says num_hidden_layers={c.num_hidden_layers} but the weights hold "
                              f"layers {sorted(layers)[:3]}{'...' if len(layers) > 3 else ''} "
                              f"({len(layers)} layers, highest index {max(layers)}): the config does not match "
                              "the tensors")
    missing = [k for k in expected if k not in headers]
    if missing:
        raise CheckpointError(f"the checkpoint is missing {missing[0]!r}"
                              + (f" and {len(missing) - 1} more keys" if len(missing) > 1 else ""))
    unexpected = sorted(k for k in headers if k not in expected)
    if unexpected:
        file = headers[unexpected[0]][0].name
        hint = " (Sumi has no biases)" if unexpected[0].endswith(".bias") else ""
        raise CheckpointError(f"unexpected key {unexpected[0]!r} in {file!r}{hint}"
                              + (f", and {len(unexpected) - 1} more" if len(unexpected) > 1 else ""))
    for key, shape in expected.items():
        file, found, st_dtype = headers[key]
        if found != shape:
            fields = next((v for s, v in _SHAPE_FIELDS.items() if key.endswith(s)), "")
            raise CheckpointError(f"{key!r} in {file.name!r} has shape {list(found)} but {CONFIG_NAME} implies "
                                  f"{list(shape)} {fields}: the config does not match the tensors")
        if st_dtype not in _SAFETENSORS_DTYPES:
            raise CheckpointError(f"{key!r} in {file.name!r} has dtype {st_dtype}; Sumi weights must be floating "
                                  f"point ({', '.join(_SAFETENSORS_DTYPES)})")


def from_pretrained(path: str | os.PathLike, dtype: str | torch.dtype | None = None,
                    device: str | torch.device | None = None, attention_backend: str | None = None) -> Sumi:
    """A :class:`Sumi` from a Hugging Face checkpoint directory (the tohoku-nlp/sumi-7b layout).

    The model is built on the meta device and each parameter is assigned its tensor read from
    the memory-mapped file, so the weights are never held twice and never randomly initialized.
    Errors name the offending key or file; a requested ``attention_backend`` that cannot run on
    ``device`` (``"flash"`` without CUDA or flash-attn) is refused before anything is read
    (:func:`sumi.model.attention.check_backend`).

    Args:
        path: the checkpoint directory.
        dtype: convert the weights (default: keep the checkpoint's dtype).
        device: where the parameters live (default: the CPU).
        attention_backend: ``"eager"``, ``"sdpa"`` (default) or ``"flash"``.

    Returns:
        The model, in eval mode.
    """
    if attention_backend is not None:
        check_backend(attention_backend, device if device is not None else "cpu")
    directory = checkpoint_dir(path)
    target = parse_dtype(dtype, "dtype")
    config = config_from_hf(read_config(directory), attention_backend=attention_backend)
    model = Sumi.on_meta(config)
    headers = _weight_headers(directory)
    _check_against(model, headers)
    if target is None:
        dtypes: dict[str, str] = {}
        for key, (_, _, st_dtype) in headers.items():
            dtypes.setdefault(st_dtype, key)
        if len(dtypes) > 1:
            example = ", ".join(f"{k!r} is {d}" for d, k in dtypes.items())
            raise CheckpointError(f"the checkpoint mixes dtypes ({example}); pass dtype= to load it in one dtype")
    state = _read(headers, list(model.state_dict()), target, device)
    model.load_state_dict(state, strict=True, assign=True)
    still_meta = [name for name, p in model.named_parameters() if p.is_meta]
    if still_meta and torch.device(device or "cpu").type != "meta":
        raise CheckpointError(f"parameter {still_meta[0]!r} was not loaded")
    return model.eval()


def load_weights(model: Sumi, path: str | os.PathLike) -> None:
    """Copy a checkpoint directory's weights into ``model`` in place (plain or FSDP2-sharded).

    For training that starts from a previous run (a later phase of the recipe): the checkpoint's
    ``config.json`` must describe ``model.config`` (attention backend aside), keys and shapes
    are checked as in :func:`from_pretrained`, tensors are read memory-mapped one at a time and
    cast to each parameter's dtype; a sharded parameter keeps only its rank's slice.

    Args:
        model: the model to fill (its parameters keep their identity, dtype and placement).
        path: the checkpoint directory.
    """
    directory = checkpoint_dir(path)
    found = config_from_hf(read_config(directory), attention_backend=model.config.attention_backend)
    if found != model.config:
        diff = [f"{f.name}={getattr(found, f.name)!r} (model: {getattr(model.config, f.name)!r})"
                for f in dataclasses.fields(found) if getattr(found, f.name) != getattr(model.config, f.name)]
        raise CheckpointError(f"{str(directory)!r} holds another architecture: {', '.join(diff)}")
    headers = _weight_headers(directory)
    _check_against(Sumi.on_meta(found), headers)
    params = dict(model.named_parameters())
    for key, tensor in _read(headers, list(params), None, None).items():
        copy_full_(params[key], tensor)
