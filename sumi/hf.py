"""The Hugging Face checkpoint layout of the released Sumi model (tohoku-nlp/sumi-7b; docs/sumi.md,
"Checkpoints"): ``config.json`` plus ``model.safetensors`` or shards
``model-0000i-of-0000N.safetensors`` listed in ``model.safetensors.index.json``.

* :func:`config_from_hf` / :func:`config_to_hf`: ``config.json`` <-> :class:`ModelConfig`.
  Keys that would change the architecture (a bias flag, another ``rope_type`` or activation,
  tied embeddings, ...) are honoured only at Sumi's values and rejected otherwise; bookkeeping
  keys (``transformers_version``, ``use_cache``, ``auto_map``, ...) are ignored.  ``auto_map``
  points at remote code: it is never imported or run, and ``transformers`` is not needed.
* :func:`from_pretrained`: builds the model on the meta device and assigns each parameter the
  tensor read (memory-mapped) from the safetensors files, converted to ``dtype`` and moved to
  ``device`` one tensor at a time, so the weights exist once (no random initialization pass).
* :func:`save_pretrained`: the same layout, safetensors only, every file written to a temporary
  name and renamed into place.  :func:`convert`: load, then save with another dtype/sharding.

Weights are read only from safetensors: never ``torch.load``, pickle or remote code.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor

from sumi.configs.model import ModelConfig
from sumi.model.params import copy_full_
from sumi.model.transformer import Sumi

__all__ = [
    "CONFIG_NAME", "WEIGHTS_NAME", "WEIGHTS_INDEX_NAME", "CheckpointError",
    "config_from_hf", "config_to_hf", "load_state_dict", "load_weights", "from_pretrained", "save_pretrained",
    "convert",
]

CONFIG_NAME = "config.json"
"""The model configuration file of a checkpoint directory."""
WEIGHTS_NAME = "model.safetensors"
"""The weights file of an unsharded checkpoint."""
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
"""The index (tensor name -> shard file) of a sharded checkpoint."""
ARCHITECTURE = "SumiForMaskGeneration"
MODEL_TYPE = "sumi"
# The transformers release whose config format (``dtype``, ``rope_parameters``) we write.
# Bookkeeping only: transformers is neither imported nor needed.
TRANSFORMERS_VERSION = "5.0.0"
# Training bookkeeping the release stores (docs/math.md, "Sumi recipe facts": beta_IS = 1, z-loss 1e-5); not used to load.
UNIFORM_DIFFUSION_BETA_IS = 1.0
UNIFORM_DIFFUSION_Z_LOSS_STRENGTH = 1e-5
# Side files that :func:`convert` copies along with the weights (plain data, never code).
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")

_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")
# Keys some exporters store that carry nothing (RoPE frequencies are recomputed from rope_theta).
_IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)

_DTYPES: dict[str, torch.dtype] = {
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "float64": torch.float64, "fp64": torch.float64, "double": torch.float64,
}
_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32",
                torch.float64: "float64"}
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


class CheckpointError(ValueError):
    """A checkpoint whose files, keys, shapes or config do not describe a Sumi model."""


# -- config.json ----------------------------------------------------------------------------------
_REQUIRED_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "max_position_embeddings", "bos_token_id", "eos_token_id", "pad_token_id")
# key -> (value Sumi has, default when absent): anything else changes the architecture.
_ARCHITECTURE_FLAGS: dict[str, tuple[Any, Any]] = {
    "attention_bias": (False, False),
    "add_qkv_bias": (False, False),
    "mlp_bias": (False, False),
    "tie_word_embeddings": (False, False),
    "pretraining_tp": (1, 1),
    "attention_dropout": (0.0, 0.0),
    "is_causal": (False, False),
    "partial_rotary_factor": (1.0, 1.0),
    "sliding_window": (None, None),
    "rope_scaling": (None, None),
}


def _int(d: Mapping[str, Any], key: str, where: str = CONFIG_NAME) -> int:
    if key not in d:
        raise ValueError(f"{where} is missing the required key {key!r}")
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: {key!r} must be an integer, got {value!r}")
    return value


def _float(d: Mapping[str, Any], key: str, where: str = CONFIG_NAME) -> float:
    if key not in d:
        raise ValueError(f"{where} is missing the required key {key!r}")
    value = d[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {key!r} must be a number, got {value!r}")
    return float(value)


def _rope_theta(d: Mapping[str, Any]) -> float:
    """``rope_parameters: {rope_theta, rope_type: "default"}``, or a legacy top-level ``rope_theta``."""
    params = d.get("rope_parameters")
    if params is None:
        if "rope_theta" not in d:
            raise ValueError(f"{CONFIG_NAME} is missing the required key 'rope_parameters' "
                             "(with 'rope_theta'; a legacy top-level 'rope_theta' is also accepted)")
        return _float(d, "rope_theta")
    if not isinstance(params, Mapping):
        raise ValueError(f"{CONFIG_NAME}: 'rope_parameters' must be an object, got {params!r}")
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"{CONFIG_NAME}: rope_parameters.rope_type={rope_type!r} is not supported: Sumi uses "
                         "plain RoPE (rope_type 'default')")
    factor = params.get("partial_rotary_factor", 1.0)
    if factor != 1.0:
        raise ValueError(f"{CONFIG_NAME}: rope_parameters.partial_rotary_factor={factor!r} is not supported "
                         "(Sumi rotates the whole head, 1.0)")
    if "rope_theta" in params:
        theta = _float(params, "rope_theta", f"{CONFIG_NAME} rope_parameters")
        if "rope_theta" in d and _float(d, "rope_theta") != theta:
            raise ValueError(f"{CONFIG_NAME}: top-level 'rope_theta' ({d['rope_theta']}) contradicts "
                             f"rope_parameters.rope_theta ({theta})")
        return theta
    if "rope_theta" in d:
        return _float(d, "rope_theta")
    raise ValueError(f"{CONFIG_NAME} is missing the required key 'rope_parameters.rope_theta'")


def config_from_hf(d: Mapping[str, Any], *, attention_backend: str | None = None) -> ModelConfig:
    """The :class:`ModelConfig` a release ``config.json`` (parsed) describes.

    Raises ``ValueError`` naming the key for a missing required key, a value of the wrong type,
    or a key that would change the architecture (``attention_bias``/``add_qkv_bias``/``mlp_bias``
    true, ``rope_type`` other than ``"default"``, ``hidden_act`` other than ``"silu"``,
    ``tie_word_embeddings`` true, ``pretraining_tp`` != 1, ``attention_dropout`` != 0, ...).
    Bookkeeping keys (``dtype``, ``transformers_version``, ``use_cache``, ``auto_map``, the
    ``uniform_diffusion_*`` training values, ...) are ignored; ``auto_map`` is never followed.
    """
    if not isinstance(d, Mapping):
        raise ValueError(f"{CONFIG_NAME} must hold a JSON object, got {type(d).__name__}")
    model_type = d.get("model_type", MODEL_TYPE)
    if model_type != MODEL_TYPE:
        raise ValueError(f"{CONFIG_NAME}: model_type={model_type!r} is not a Sumi checkpoint (expected {MODEL_TYPE!r})")
    architectures = d.get("architectures")
    if architectures is not None and ARCHITECTURE not in architectures:
        raise ValueError(f"{CONFIG_NAME}: architectures={architectures!r} does not name {ARCHITECTURE!r}")
    act = d.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise ValueError(f"{CONFIG_NAME}: hidden_act={act!r} is not supported: Sumi's MLP is SwiGLU ('silu')")
    for key, (sumi_value, default) in _ARCHITECTURE_FLAGS.items():
        value = d.get(key, default)
        if key == "rope_scaling" and isinstance(value, Mapping) and \
                value.get("rope_type", value.get("type")) == "default":
            continue
        if value != sumi_value or isinstance(value, bool) != isinstance(sumi_value, bool):
            raise ValueError(f"{CONFIG_NAME}: {key}={value!r} changes the architecture and is not supported "
                             f"(Sumi has {key}={json.dumps(sumi_value)})")
    fields: dict[str, Any] = {key: _int(d, key) for key in _REQUIRED_INTS}
    head_dim = d.get("head_dim")
    if head_dim is not None:
        fields["head_dim"] = _int(d, "head_dim")
    fields["rms_norm_eps"] = _float(d, "rms_norm_eps")
    fields["rope_theta"] = _rope_theta(d)
    if "initializer_range" in d:
        fields["initializer_range"] = _float(d, "initializer_range")
    if attention_backend is not None:
        fields["attention_backend"] = attention_backend
    try:
        return ModelConfig(**fields)
    except ValueError as e:
        raise ValueError(f"{CONFIG_NAME} describes an invalid Sumi model: {e}") from e


def _dtype_name(dtype: str | torch.dtype) -> str:
    return _DTYPE_NAMES[_parse_dtype(dtype, "dtype")]


def config_to_hf(c: ModelConfig, dtype: str | torch.dtype) -> dict[str, Any]:
    """The release ``config.json`` (as a dict) for ``c`` with weights stored in ``dtype``
    (``"bfloat16"``, ``"float32"``, ... or a ``torch.dtype``)."""
    return {
        "architectures": [ARCHITECTURE],
        "model_type": MODEL_TYPE,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "num_key_value_heads": c.num_key_value_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "rope_parameters": {"rope_theta": c.rope_theta, "rope_type": "default"},
        "attention_bias": False,
        "add_qkv_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "initializer_range": c.initializer_range,
        "tie_word_embeddings": False,
        "use_cache": False,
        "pretraining_tp": 1,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "pad_token_id": c.pad_token_id,
        "uniform_diffusion_beta_is": UNIFORM_DIFFUSION_BETA_IS,
        "uniform_diffusion_z_loss_strength": UNIFORM_DIFFUSION_Z_LOSS_STRENGTH,
        "dtype": _dtype_name(dtype),
        "transformers_version": TRANSFORMERS_VERSION,
    }


# -- reading --------------------------------------------------------------------------------------
def _parse_dtype(dtype: str | torch.dtype | None, argument: str) -> torch.dtype | None:
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in _DTYPE_NAMES):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"{argument} must be a floating dtype ({', '.join(_DTYPE_NAMES.values())} or a "
                     f"torch.dtype), got {dtype!r}")


def _missing_help(directory: Path) -> str:
    return (f"put the checkpoint there: {CONFIG_NAME} and {WEIGHTS_NAME} (or model-0000i-of-0000N.safetensors "
            f"shards with {WEIGHTS_INDEX_NAME}), e.g. a local download of tohoku-nlp/sumi-7b "
            f"(`huggingface-cli download tohoku-nlp/sumi-7b --local-dir {directory}`)")


def _checkpoint_dir(path: str | os.PathLike) -> Path:
    directory = Path(path)
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint directory {str(directory)!r} does not exist; {_missing_help(directory)}")
    if not directory.is_dir():
        raise NotADirectoryError(f"from_pretrained expects a checkpoint directory, got the file {str(directory)!r}")
    return directory


def _read_config(directory: Path) -> dict[str, Any]:
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
    """The weight files and, for a sharded checkpoint, the keys the index assigns to each."""
    single, index = directory / WEIGHTS_NAME, directory / WEIGHTS_INDEX_NAME
    if single.is_file():
        return {single: None}
    if not index.is_file():
        found = sorted(p.name for p in directory.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        hint = (f" (found {found}: only safetensors weights are loaded, never pickled ones)" if found else "")
        raise FileNotFoundError(f"no {WEIGHTS_NAME} or {WEIGHTS_INDEX_NAME} in {str(directory)!r}{hint}; "
                                f"{_missing_help(directory)}")
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
    the index, not the keys (see :func:`from_pretrained`)."""
    directory = _checkpoint_dir(path)
    target = _parse_dtype(dtype, "dtype")
    headers = _headers(directory)
    return _read(headers, headers.keys(), target, device)


def _read(headers: Mapping[str, tuple[Path, tuple[int, ...], str]], keys, dtype: torch.dtype | None,
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


def _check_against(model: Sumi, headers: Mapping[str, tuple[Path, tuple[int, ...], str]]) -> None:
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

    ``dtype``: convert the weights (default: keep the checkpoint's dtype).  ``device``: where the
    parameters live (default CPU).  ``attention_backend``: ``"eager"``, ``"sdpa"`` (default) or
    ``"flash"``.  The model is built on the meta device and each parameter is assigned its tensor
    read from the memory-mapped file, so the weights are never held twice and never randomly
    initialized.  Returns the model in eval mode.  Errors name the offending key or file.
    """
    directory = _checkpoint_dir(path)
    target = _parse_dtype(dtype, "dtype")
    config = config_from_hf(_read_config(directory), attention_backend=attention_backend)
    model = Sumi.on_meta(config)
    headers = _weight_headers(directory)
    _check_against(model, headers)
    if target is None:
        dtypes = {}
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
    cast to each parameter's dtype; a sharded parameter keeps only its rank's slice."""
    directory = _checkpoint_dir(path)
    found = config_from_hf(_read_config(directory), attention_backend=model.config.attention_backend)
    if found != model.config:
        diff = [f"{f.name}={getattr(found, f.name)!r} (model: {getattr(model.config, f.name)!r})"
                for f in dataclasses.fields(found) if getattr(found, f.name) != getattr(model.config, f.name)]
        raise CheckpointError(f"{str(directory)!r} holds another architecture: {', '.join(diff)}")
    headers = _weight_headers(directory)
    _check_against(Sumi.on_meta(found), headers)
    params = dict(model.named_parameters())
    for key, tensor in _read(headers, list(params), None, None).items():
        copy_full_(params[key], tensor)


# -- writing --------------------------------------------------------------------------------------
_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def _parse_size(size: int | str) -> int:
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size)) \
            and m.group(2).upper() in _SIZE_UNITS:
        value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    else:
        raise ValueError(f"max_shard_size must be a byte count or a string like '5GB' or '500MiB', got {size!r}")
    if value < 1:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _plan_shards(sizes: Mapping[str, int], max_bytes: int) -> list[list[str]]:
    """Consecutive keys packed greedily (the HF rule): a new shard starts when the next tensor
    would overflow the current one; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, size in sizes.items():
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size
    return shards


def _temp_path(directory: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    return Path(tmp)


def _write_json(data: Any, file: Path) -> None:
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_pretrained(model: Sumi, path: str | os.PathLike, max_shard_size: int | str = "5GB",
                    dtype: str | torch.dtype | None = None) -> None:
    """Write ``model`` in the release layout: ``config.json`` and ``model.safetensors``, or shards
    ``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json`` when the weights
    exceed ``max_shard_size`` (bytes, or ``"5GB"``/``"500MiB"``...).  ``dtype``: store in this
    dtype (default: the model's).  Each file is written under a temporary name and renamed into
    place, so a failure leaves no half-written file; shards of an earlier save are removed."""
    _save(model, Path(path), max_shard_size, dtype, {})


def _save(model: Sumi, directory: Path, max_shard_size: int | str, dtype: str | torch.dtype | None,
          config_extra: Mapping[str, Any]) -> None:
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"save_pretrained expects a sumi.Sumi model, got {type(model).__name__}")
    max_bytes = _parse_size(max_shard_size)
    target = _parse_dtype(dtype, "dtype")
    state = model.state_dict()
    expected = set(Sumi.on_meta(config).state_dict())
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)
        raise ValueError(f"the model's state dict does not match its config (e.g. {odd[0]!r})")
    meta = [k for k, v in state.items() if v.is_meta]
    if meta:
        raise ValueError(f"cannot save {meta[0]!r}: it is on the meta device (materialize the model first)")
    if target is None:
        dtypes = {v.dtype for v in state.values()}
        if len(dtypes) != 1:
            raise ValueError(f"the model mixes dtypes {sorted(map(str, dtypes))}; pass dtype= to save it in one")
        target = dtypes.pop()
    if target not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be floating point, the model holds {target}")
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"save_pretrained needs a directory, {str(directory)!r} is a file")
    directory.mkdir(parents=True, exist_ok=True)

    itemsize = torch.empty((), dtype=target).element_size()
    sizes = {k: v.numel() * itemsize for k, v in state.items()}
    shards = _plan_shards(sizes, max_bytes)
    names = ([WEIGHTS_NAME] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    staged: list[tuple[Path, Path]] = []  # (temporary, final)
    try:
        for name, keys in zip(names, shards):
            tmp = _temp_path(directory, name)
            staged.append((tmp, directory / name))
            # One shard at a time leaves the CPU (and converts); nothing else is copied.
            tensors = {k: state[k].detach().to(device="cpu", dtype=target).contiguous() for k in keys}
            save_file(tensors, str(tmp), metadata={"format": "pt"})
            del tensors
        if len(shards) > 1:
            index = {"metadata": {"total_size": sum(sizes.values()),
                                  "total_parameters": sum(v.numel() for v in state.values())},
                     "weight_map": {k: name for name, keys in zip(names, shards) for k in keys}}
            tmp = _temp_path(directory, WEIGHTS_INDEX_NAME)
            staged.append((tmp, directory / WEIGHTS_INDEX_NAME))
            _write_json(index, tmp)
        tmp = _temp_path(directory, CONFIG_NAME)
        staged.append((tmp, directory / CONFIG_NAME))
        _write_json({**config_to_hf(config, target), **config_extra}, tmp)
        for tmp, final in staged:
            os.replace(tmp, final)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    # Weights of an earlier save in another layout would contradict the new files.
    written = set(names)
    for stale in directory.iterdir():
        if stale.name not in written and (_SHARD_RE.match(stale.name) or stale.name == WEIGHTS_NAME):
            stale.unlink()
    if len(shards) == 1:
        (directory / WEIGHTS_INDEX_NAME).unlink(missing_ok=True)


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | torch.dtype | None = None,
            max_shard_size: int | str = "5GB") -> None:
    """Rewrite the checkpoint at ``src`` into ``dst`` in another ``dtype`` and/or sharding.

    The weights are memory-mapped from ``src`` (one converted copy when ``dtype`` changes) and
    written shard by shard.  The ``uniform_diffusion_*`` training values of ``src``'s config are
    kept; ``auto_map`` is dropped (no remote code is copied).  Plain data side files
    (:data:`SIDE_FILES`: tokenizer and generation configs) are copied when present.
    """
    src_dir = _checkpoint_dir(src)
    source_config = _read_config(src_dir)
    model = from_pretrained(src_dir, dtype=dtype, device="cpu", attention_backend="eager")
    keep = {k: source_config[k] for k in ("uniform_diffusion_beta_is", "uniform_diffusion_z_loss_strength")
            if k in source_config}
    dst_dir = Path(dst)
    _save(model, dst_dir, max_shard_size, dtype, keep)
    if dst_dir.resolve() != src_dir.resolve():
        for name in SIDE_FILES:
            if (src_dir / name).is_file():
                shutil.copyfile(src_dir / name, dst_dir / name)
