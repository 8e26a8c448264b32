"""``config.json`` <-> :class:`~sumi.configs.ModelConfig` for the released Sumi checkpoint
(tohoku-nlp/sumi-7b; docs/math.md, "Sumi recipe facts").

Keys that would change the architecture (a bias flag, another ``rope_type`` or activation, tied
embeddings, ...) are honoured only at Sumi's values and rejected otherwise; bookkeeping keys
(``transformers_version``, ``use_cache``, ``auto_map``, ...) are ignored.  ``auto_map`` points
at remote code: it is never imported or run, and ``transformers`` is not needed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import torch

from sumi._checks import check_int, check_number
from sumi.configs.model import ModelConfig
from sumi.hf.layout import CONFIG_NAME, dtype_name

__all__ = ["ARCHITECTURE", "MODEL_TYPE", "TRANSFORMERS_VERSION", "UNIFORM_DIFFUSION_BETA_IS",
           "UNIFORM_DIFFUSION_Z_LOSS_STRENGTH", "config_from_hf", "config_to_hf"]

ARCHITECTURE = "SumiForMaskGeneration"
"""The ``architectures`` entry of the release's ``config.json``."""
MODEL_TYPE = "sumi"
"""The ``model_type`` of the release's ``config.json``."""
TRANSFORMERS_VERSION = "5.0.0"
"""The transformers release whose config format (``dtype``, ``rope_parameters``) is written.
Bookkeeping only: transformers is neither imported nor needed."""
UNIFORM_DIFFUSION_BETA_IS = 1.0
"""Training bookkeeping the release stores (docs/math.md, "Sumi recipe facts"); not used to load."""
UNIFORM_DIFFUSION_Z_LOSS_STRENGTH = 1e-5
"""Training bookkeeping the release stores (docs/math.md, "Sumi recipe facts"); not used to load."""

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
    "partial_rotary_factor": (1.0, 1.0),
    "sliding_window": (None, None),
    "rope_scaling": (None, None),
}

_T = TypeVar("_T")


def _required(d: Mapping[str, Any], key: str, check: Callable[[str, object], _T], where: str = CONFIG_NAME) -> _T:
    """``d[key]`` through ``check`` (:func:`sumi._checks.check_int` / ``check_number``), with a
    missing key named as such rather than reported as a ``KeyError``."""
    if key not in d:
        raise ValueError(f"{where} is missing the required key {key!r}")
    return check(f"{where}: {key!r}", d[key])


def _int(d: Mapping[str, Any], key: str, where: str = CONFIG_NAME) -> int:
    return _required(d, key, check_int, where)


def _float(d: Mapping[str, Any], key: str, where: str = CONFIG_NAME) -> float:
    return _required(d, key, check_number, where)


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

    Args:
        d: the parsed ``config.json``.
        attention_backend: the backend of the returned config (default: the config's default).

    Raises ``ValueError`` naming the key for a missing required key, a value of the wrong type,
    or a key that would change the architecture (``attention_bias``/``add_qkv_bias``/``mlp_bias``
    true, ``rope_type`` other than ``"default"``, ``hidden_act`` other than ``"silu"``,
    ``tie_word_embeddings`` true, ``pretraining_tp`` != 1, ``attention_dropout`` != 0, ...).
    The family: ``objective`` (``{"name": ..., "shift": ..., "scale": ...}``; absent: the released
    uniform model), ``mask_token_id`` and ``is_causal`` (true for ``"ar"`` only).
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
    fields.update(_family(d))
    if d.get("head_dim") is not None:
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


def _family(d: Mapping[str, Any]) -> dict[str, Any]:
    """The family fields of :class:`ModelConfig` from ``objective`` (absent: the released uniform
    model), ``mask_token_id`` and ``is_causal`` (true exactly for ``"ar"``)."""
    entry = d.get("objective", {"name": "uniform"})
    if not isinstance(entry, Mapping) or not isinstance(entry.get("name"), str):
        raise ValueError(f"{CONFIG_NAME}: 'objective' must be an object with a 'name', got {entry!r}")
    known = {"name", "shift", "scale"} if entry["name"] == "hybrid" else {"name"}
    if set(entry) - known:
        raise ValueError(f"{CONFIG_NAME}: objective {entry['name']!r} has no parameters "
                         f"{sorted(set(entry) - known)} (it takes {sorted(known - {'name'}) or 'none'})")
    fields: dict[str, Any] = {"objective": entry["name"]}
    if "shift" in entry:
        fields["hybrid_shift"] = check_number(f"{CONFIG_NAME}: objective.shift", entry["shift"])
    if "scale" in entry:
        fields["hybrid_scale"] = check_number(f"{CONFIG_NAME}: objective.scale", entry["scale"])
    if d.get("mask_token_id") is not None:
        fields["mask_token_id"] = _int(d, "mask_token_id")
    causal = d.get("is_causal", False)
    if causal is not (entry["name"] == "ar"):
        raise ValueError(f"{CONFIG_NAME}: is_causal={json.dumps(causal)} does not fit objective {entry['name']!r} "
                         "(causal attention is the 'ar' family's, and only its)")
    return fields


def config_to_hf(c: ModelConfig, dtype: str | torch.dtype) -> dict[str, Any]:
    """The release ``config.json`` (as a dict) for ``c`` with weights stored in ``dtype``.

    Args:
        c: the model configuration.
        dtype: the dtype of the stored weights (``"bfloat16"``, ``"float32"``, ... or a ``torch.dtype``).
    """
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
        **_family_entries(c),
        "dtype": dtype_name(dtype),
        "transformers_version": TRANSFORMERS_VERSION,
    }


def _family_entries(c: ModelConfig) -> dict[str, Any]:
    """The released uniform model's bookkeeping keys, or the ``objective`` entry (with the hybrid
    kernel's parameters), ``mask_token_id`` and ``is_causal`` of another family."""
    if c.objective == "uniform":
        return {"uniform_diffusion_beta_is": UNIFORM_DIFFUSION_BETA_IS,
                "uniform_diffusion_z_loss_strength": UNIFORM_DIFFUSION_Z_LOSS_STRENGTH}
    entry: dict[str, Any] = {"name": c.objective}
    if c.objective == "hybrid":
        entry.update(shift=c.hybrid_shift, scale=c.hybrid_scale)
    out: dict[str, Any] = {"objective": entry, "is_causal": c.causal}
    if c.mask_token_id is not None:
        out["mask_token_id"] = c.mask_token_id
    return out
