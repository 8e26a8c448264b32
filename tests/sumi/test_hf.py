"""The Hugging Face checkpoint layout (docs/sumi.md, "Checkpoints"): checkpoints written
independently with the ``safetensors`` library and a hand-written release-style config.json are
loaded exactly; save -> load round trips (single file and sharded); dtype/device; every error
names its key or file; weights only ever come from safetensors, straight into a meta-built model;
a save replaces the directory as a whole (a failure or a kill at any write leaves the old
checkpoint or the new one, never a mix), with the umask's modes."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import sumi
import sumi.hf as hf
import sumi.hf.writing as writing
from sumi._fs import LockedError, StorageError, exclusive_lock
from sumi.configs import tiny
from sumi.model import Sumi

CFG = tiny()  # vocab 512, hidden 64, 2 layers, 4/2 heads, head_dim 16, intermediate 192


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _release_tensors(dtype: torch.dtype = torch.bfloat16, seed: int = 0, layers: int = 2) -> dict[str, torch.Tensor]:
    """Tensors under the release key names, shapes spelled out by hand for tiny() (not taken
    from our model): Linear weights [out, in], no biases, no RoPE buffers."""
    g = _gen(seed)

    def w(*shape, scale=0.1):
        return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).to(dtype)

    t = {"model.embed_tokens.weight": w(512, 64, scale=1.0)}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "self_attn.q_proj.weight"] = w(4 * 16, 64)
        t[p + "self_attn.k_proj.weight"] = w(2 * 16, 64)
        t[p + "self_attn.v_proj.weight"] = w(2 * 16, 64)
        t[p + "self_attn.o_proj.weight"] = w(64, 4 * 16)
        t[p + "mlp.gate_proj.weight"] = w(192, 64)
        t[p + "mlp.up_proj.weight"] = w(192, 64)
        t[p + "mlp.down_proj.weight"] = w(64, 192)
        t[p + "input_layernorm.weight"] = (1 + w(64)).to(dtype)
        t[p + "post_attention_layernorm.weight"] = (1 + w(64)).to(dtype)
    t["model.norm.weight"] = (1 + w(64)).to(dtype)
    t["lm_head.weight"] = w(512, 64)
    return t


def _release_config(dtype: str = "bfloat16", **changes) -> dict:
    """config.json the way the release writes it, remote-code pointers and bookkeeping included."""
    d = {
        "architectures": ["SumiForMaskGeneration"],
        "auto_map": {"AutoConfig": "configuration_sumi.SumiConfig",
                     "AutoModel": "modeling_sumi.SumiForMaskGeneration"},
        "model_type": "sumi",
        "vocab_size": 512, "hidden_size": 64, "intermediate_size": 192, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "hidden_act": "silu",
        "rms_norm_eps": 1e-05, "max_position_embeddings": 512,
        "rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"},
        "attention_bias": False, "add_qkv_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
        "initializer_range": 0.02, "tie_word_embeddings": False, "use_cache": True, "pretraining_tp": 1,
        "bos_token_id": 509, "eos_token_id": 510, "pad_token_id": 511,
        "uniform_diffusion_beta_is": 1.0, "uniform_diffusion_z_loss_strength": 1e-05,
        "dtype": dtype, "transformers_version": "4.57.1",
    }
    d.update(changes)
    return d


def _write_release(directory: Path, tensors: dict, config: dict | None = None, shards: int = 1) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config or _release_config(), indent=2))
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return directory
    keys = list(tensors)
    per = -(-len(keys) // shards)
    weight_map = {}
    for i in range(shards):
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i * per:(i + 1) * per]}
        save_file(part, str(directory / name), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return directory


def _reference_logits(tensors: dict, dtype: torch.dtype, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits of a normally built model given the same state dict (copied in, not assigned)."""
    ref = Sumi.initialized(CFG, dtype=dtype, generator=_gen(99))
    ref.load_state_dict({k: v.to(dtype) for k, v in tensors.items()})
    ids = torch.randint(0, CFG.vocab_size, (2, 12), generator=_gen(seed))
    with torch.no_grad():
        return ids, ref(ids)


def _assert_same_weights(model: Sumi, tensors: dict, dtype: torch.dtype) -> None:
    params = dict(model.named_parameters())
    assert set(params) == set(tensors)
    for key, t in tensors.items():
        assert params[key].dtype == dtype, key
        assert torch.equal(params[key].detach(), t.to(dtype)), key


# -- loading an independently written release checkpoint ------------------------------------------
@pytest.mark.parametrize("st_dtype, name", [(torch.bfloat16, "bfloat16"), (torch.float32, "float32")])
@pytest.mark.parametrize("shards", [1, 3])
def test_loads_release_layout_exactly(tmp_path, st_dtype, name, shards):
    tensors = _release_tensors(st_dtype, seed=1)
    _write_release(tmp_path, tensors, _release_config(name), shards=shards)
    if shards > 1:
        assert not (tmp_path / "model.safetensors").exists() and len(list(tmp_path.glob("model-*"))) == 3
    model = hf.from_pretrained(tmp_path)
    assert model.config == CFG
    assert not model.training
    _assert_same_weights(model, tensors, st_dtype)
    assert all(p.device.type == "cpu" and p.requires_grad and isinstance(p, torch.nn.Parameter)
               for p in model.parameters())
    ids, expected = _reference_logits(tensors, st_dtype)
    with torch.no_grad():
        assert torch.equal(model(ids), expected)


def test_dtype_and_device_arguments(tmp_path):
    tensors = _release_tensors(torch.bfloat16, seed=2)
    _write_release(tmp_path, tensors)
    for dtype in (torch.float32, "float32", "fp32"):
        model = hf.from_pretrained(tmp_path, dtype=dtype, device="cpu", attention_backend="eager")
        _assert_same_weights(model, tensors, torch.float32)
        assert model.config.attention_backend == "eager"
    ids, expected = _reference_logits(tensors, torch.float32)
    with torch.no_grad():
        assert torch.equal(model(ids, backend="sdpa"), expected)  # the reference's backend
    model = hf.from_pretrained(tmp_path, dtype=torch.float64, device=torch.device("cpu"))
    assert all(p.dtype == torch.float64 for p in model.parameters())
    with pytest.raises(ValueError, match="dtype"):
        hf.from_pretrained(tmp_path, dtype="int8")
    with pytest.raises(ValueError, match="attention_backend"):
        hf.from_pretrained(tmp_path, attention_backend="xformers")


@pytest.mark.gpu
def test_loads_onto_cuda(tmp_path):
    tensors = _release_tensors(torch.bfloat16, seed=3)
    _write_release(tmp_path, tensors)
    model = hf.from_pretrained(tmp_path, device="cuda")
    assert all(p.is_cuda and p.dtype == torch.bfloat16 for p in model.parameters())
    _assert_same_weights(model.cpu(), tensors, torch.bfloat16)


def test_load_state_dict_reads_single_and_sharded(tmp_path):
    tensors = _release_tensors(torch.float32, seed=4)
    for shards in (1, 4):
        d = _write_release(tmp_path / str(shards), tensors, shards=shards)
        sd = hf.load_state_dict(d)
        assert set(sd) == set(tensors) and all(torch.equal(sd[k], tensors[k]) for k in tensors)
        sd = hf.load_state_dict(d, dtype="bfloat16")
        assert all(sd[k].dtype == torch.bfloat16 and torch.equal(sd[k], tensors[k].bfloat16()) for k in tensors)


def test_legacy_top_level_rope_theta_and_stored_inv_freq_are_accepted(tmp_path):
    config = _release_config()
    del config["rope_parameters"]
    config["rope_theta"] = 10000.0
    tensors = _release_tensors(torch.float32, seed=5)
    extra = {"model.layers.0.self_attn.rotary_emb.inv_freq": torch.ones(8)}
    _write_release(tmp_path, {**tensors, **extra}, config)
    model = hf.from_pretrained(tmp_path)
    assert model.config.rope_theta == 10000.0
    _assert_same_weights(model, tensors, torch.float32)


# -- config.json ------------------------------------------------------------------------------------
def test_config_round_trip_and_release_keys():
    d = hf.config_to_hf(CFG, "bfloat16")
    assert hf.config_from_hf(d) == CFG
    assert hf.config_from_hf(_release_config()) == CFG
    release = set(_release_config()) - {"auto_map"}
    assert set(d) == release
    assert d["architectures"] == ["SumiForMaskGeneration"] and d["model_type"] == "sumi"
    assert d["rope_parameters"] == {"rope_theta": 500000.0, "rope_type": "default"}
    assert d["dtype"] == "bfloat16" and hf.config_to_hf(CFG, torch.float32)["dtype"] == "float32"
    assert json.loads(json.dumps(d)) == d


@pytest.mark.parametrize("key, value", [
    ("attention_bias", True), ("add_qkv_bias", True), ("mlp_bias", True),
    ("rope_parameters", {"rope_theta": 500000.0, "rope_type": "linear", "factor": 2.0}),
    ("hidden_act", "gelu"), ("tie_word_embeddings", True), ("pretraining_tp", 2), ("attention_dropout", 0.1),
    ("model_type", "llama"), ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}),
])
def test_architecture_changing_keys_are_rejected(tmp_path, key, value):
    named = "rope_type" if key == "rope_parameters" else key
    with pytest.raises(ValueError, match=named):
        hf.config_from_hf(_release_config(**{key: value}))
    _write_release(tmp_path, _release_tensors(torch.float32), _release_config(**{key: value}))
    with pytest.raises(ValueError, match=named):
        hf.from_pretrained(tmp_path)


@pytest.mark.parametrize("key", ["hidden_size", "num_hidden_layers", "vocab_size", "rms_norm_eps", "pad_token_id"])
def test_missing_required_config_key_is_named(key):
    config = _release_config()
    del config[key]
    with pytest.raises(ValueError, match=key):
        hf.config_from_hf(config)


def test_missing_rope_theta_and_bad_types_are_named():
    config = _release_config(rope_parameters={"rope_type": "default"})
    with pytest.raises(ValueError, match="rope_theta"):
        hf.config_from_hf(config)
    with pytest.raises(ValueError, match="hidden_size"):
        hf.config_from_hf(_release_config(hidden_size="64"))
    with pytest.raises(ValueError, match="num_attention_heads"):
        hf.config_from_hf(_release_config(num_attention_heads=3))


# -- round trips through our writer -------------------------------------------------------------------
@pytest.mark.parametrize("max_shard_size", ["5GB", 40_000, "40KB"])
def test_save_then_load_round_trip(tmp_path, max_shard_size):
    model = Sumi.initialized(CFG, generator=_gen(11))
    hf.save_pretrained(model, tmp_path, max_shard_size=max_shard_size)
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    if max_shard_size == "5GB":
        assert shards == [] and (tmp_path / "model.safetensors").is_file()
        assert not (tmp_path / "model.safetensors.index.json").exists()
    else:
        assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
        assert shards == [f"model-{i:05d}-of-{len(shards):05d}.safetensors" for i in range(1, len(shards) + 1)]
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert set(index["weight_map"]) == set(model.state_dict())
        assert set(index["weight_map"].values()) == set(shards)
        assert index["metadata"]["total_size"] == 4 * model.num_parameters()
        for name in shards:  # read back with the safetensors library directly
            with safe_open(str(tmp_path / name), "pt") as f:
                assert f.metadata() == {"format": "pt"}
                assert set(f.keys()) == {k for k, v in index["weight_map"].items() if v == name}
                nbytes = sum(f.get_tensor(k).numel() * 4 for k in f.keys())
                # Within the limit, unless one tensor alone exceeds it (the embedding and head here).
                assert nbytes <= 40_000 or len(f.keys()) == 1, name
    config = json.loads((tmp_path / "config.json").read_text())
    assert config == hf.config_to_hf(CFG, "float32")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries left
    loaded = hf.from_pretrained(tmp_path)
    expected = model.state_dict()
    _assert_same_weights(loaded, expected, torch.float32)
    ids = torch.randint(0, CFG.vocab_size, (2, 10), generator=_gen(12))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


def test_save_in_another_dtype_and_resave_cleans_old_layout(tmp_path):
    model = Sumi.initialized(CFG, generator=_gen(13))
    hf.save_pretrained(model, tmp_path, max_shard_size=30_000, dtype="bfloat16")
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = hf.from_pretrained(tmp_path)
    _assert_same_weights(loaded, {k: v.bfloat16() for k, v in model.state_dict().items()}, torch.bfloat16)
    hf.save_pretrained(loaded, tmp_path)  # single file now: the old shards and index must go
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    _assert_same_weights(hf.from_pretrained(tmp_path), loaded.state_dict(), torch.bfloat16)


def test_save_failure_leaves_nothing_half_written(tmp_path, monkeypatch):
    model = Sumi.initialized(CFG, generator=_gen(14))
    calls = []

    def failing_save_file(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 2:
            Path(filename).write_bytes(b"partial")
            raise OSError("disk full")
        save_file(tensors, filename, metadata=metadata)

    monkeypatch.setattr(writing, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        hf.save_pretrained(model, tmp_path / "out", max_shard_size=30_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock"]  # no directory, no temporaries


def test_save_arguments_are_checked(tmp_path):
    model = Sumi.initialized(CFG, generator=_gen(15))
    for bad in ("5 parsecs", 0, -1, "GB"):
        with pytest.raises(ValueError, match="max_shard_size"):
            hf.save_pretrained(model, tmp_path, max_shard_size=bad)
    with pytest.raises(ValueError, match="meta"):
        hf.save_pretrained(Sumi.on_meta(CFG), tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        hf.save_pretrained(model, tmp_path, dtype="int8")
    assert writing._parse_size("5GB") == 5 * 10**9 and writing._parse_size("1MiB") == 2**20
    assert writing._parse_size(7) == 7


def test_save_pretrained_is_the_package_function(tmp_path):
    """``sumi.save_pretrained(model, path)`` is sumi.hf's (the model has no method of that name:
    it would make sumi.model import sumi.hf, which imports sumi.model)."""
    assert sumi.save_pretrained is hf.save_pretrained and not hasattr(Sumi, "save_pretrained")
    model = Sumi.initialized(CFG, generator=_gen(16))
    sumi.save_pretrained(model, tmp_path / "ck", max_shard_size=30_000)
    _assert_same_weights(hf.from_pretrained(tmp_path / "ck"), model.state_dict(), torch.float32)


def test_convert_changes_dtype_and_sharding(tmp_path):
    tensors = _release_tensors(torch.bfloat16, seed=17)
    config = _release_config(uniform_diffusion_z_loss_strength=3e-5)
    src = _write_release(tmp_path / "src", tensors, config)
    (src / "tokenizer.json").write_text('{"version": "1.0"}')
    (src / "modeling_sumi.py").write_text("raise SystemExit('remote code must never run')\n")
    hf.convert(src, tmp_path / "dst", dtype="float32", max_shard_size=30_000)
    dst = tmp_path / "dst"
    written = json.loads((dst / "config.json").read_text())
    assert written["dtype"] == "float32" and written["uniform_diffusion_z_loss_strength"] == 3e-5
    assert "auto_map" not in written
    assert (dst / "tokenizer.json").read_text() == '{"version": "1.0"}' and not (dst / "modeling_sumi.py").exists()
    assert (dst / "model.safetensors.index.json").is_file()
    _assert_same_weights(hf.from_pretrained(dst), tensors, torch.float32)
    hf.convert(dst, tmp_path / "back", dtype="bfloat16")
    _assert_same_weights(hf.from_pretrained(tmp_path / "back"), tensors, torch.bfloat16)


def test_load_weights_into_an_existing_model(tmp_path):
    """The next training phase starts from a release-layout directory: weights copied in place
    (cast to the model's dtype, sharded or not), the architecture checked."""
    tensors = _release_tensors(torch.bfloat16)
    d = _write_release(tmp_path / "bf16", tensors, shards=3)
    model = Sumi.initialized(CFG, generator=_gen(5))
    before = {n: p for n, p in model.named_parameters()}
    hf.load_weights(model, d)
    assert {n: p for n, p in model.named_parameters()} == before  # in place: the same Parameter objects
    _assert_same_weights(model, tensors, torch.float32)
    other = Sumi.initialized(tiny(vocab_size=256), generator=_gen(5))
    with pytest.raises(hf.CheckpointError, match=r"another architecture: vocab_size=512 \(model: 256\)"):
        hf.load_weights(other, d)
    with pytest.raises(FileNotFoundError):
        hf.load_weights(model, tmp_path / "nowhere")
    del tensors["lm_head.weight"]
    with pytest.raises(ValueError, match="missing 'lm_head.weight'"):
        hf.load_weights(model, _write_release(tmp_path / "partial", tensors))


# -- errors name the key or the file ----------------------------------------------------------------------
def _error_case(tmp_path, tensors=None, config=None, shards=1):
    return _write_release(tmp_path, _release_tensors(torch.float32) if tensors is None else tensors, config, shards)


def test_unknown_key_is_named(tmp_path):
    tensors = {**_release_tensors(torch.float32), "model.layers.0.self_attn.q_proj.bias": torch.zeros(64)}
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj\.bias.*model\.safetensors"):
        hf.from_pretrained(_error_case(tmp_path, tensors))


def test_missing_key_is_named(tmp_path):
    tensors = _release_tensors(torch.float32)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    with pytest.raises(ValueError, match=r"missing 'model\.layers\.1\.mlp\.up_proj\.weight'"):
        hf.from_pretrained(_error_case(tmp_path, tensors))


def test_wrong_shape_is_named(tmp_path):
    tensors = _release_tensors(torch.float32)
    tensors["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(64, 64)
    with pytest.raises(ValueError, match=r"k_proj\.weight.*\[64, 64\].*\[32, 64\].*num_key_value_heads"):
        hf.from_pretrained(_error_case(tmp_path, tensors))


def test_config_that_does_not_match_the_tensors(tmp_path):
    with pytest.raises(ValueError, match="num_hidden_layers=3"):
        hf.from_pretrained(_error_case(tmp_path / "a", config=_release_config(num_hidden_layers=3)))
    with pytest.raises(ValueError, match=r"embed_tokens\.weight.*hidden_size"):
        hf.from_pretrained(_error_case(tmp_path / "b", config=_release_config(
            hidden_size=128, num_attention_heads=8, num_key_value_heads=4, head_dim=16)))


def test_truncated_file_is_named(tmp_path):
    d = _error_case(tmp_path, shards=2)
    shard = d / "model-00002-of-00002.safetensors"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"model-00002-of-00002\.safetensors.*truncated or corrupt"):
        hf.from_pretrained(d)
    with pytest.raises(ValueError, match=r"model-00002-of-00002\.safetensors"):
        hf.load_state_dict(d)
    shard.write_bytes(b"\x00\x01")
    with pytest.raises(ValueError, match=r"model-00002-of-00002\.safetensors"):
        hf.from_pretrained(d)


def test_index_pointing_to_a_missing_shard(tmp_path):
    d = _error_case(tmp_path, shards=3)
    (d / "model-00002-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"model-00002-of-00003\.safetensors"):
        hf.from_pretrained(d)


def test_index_inconsistent_with_shards_is_named(tmp_path):
    d = _error_case(tmp_path, shards=2)
    index = json.loads((d / "model.safetensors.index.json").read_text())
    index["weight_map"]["lm_head.weight"] = "model-00001-of-00002.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"lm_head\.weight"):
        hf.from_pretrained(d)
    index["weight_map"]["lm_head.weight"] = "../elsewhere.safetensors"
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"lm_head\.weight"):
        hf.from_pretrained(d)


def test_missing_directory_config_or_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*config.json"):
        hf.from_pretrained(tmp_path / "nowhere")
    d = _error_case(tmp_path / "noconfig")
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json.*tohoku-nlp/sumi-7b"):
        hf.from_pretrained(d)
    d = tmp_path / "pickled"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(_release_config()))
    (d / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*pytorch_model\.bin"):
        hf.from_pretrained(d)


def test_mixed_dtypes_need_an_explicit_dtype(tmp_path):
    tensors = _release_tensors(torch.bfloat16)
    tensors["model.norm.weight"] = tensors["model.norm.weight"].float()
    d = _error_case(tmp_path, tensors)
    with pytest.raises(ValueError, match="mixes dtypes"):
        hf.from_pretrained(d)
    assert all(p.dtype == torch.float32 for p in hf.from_pretrained(d, dtype="float32").parameters())


# -- safety and memory ---------------------------------------------------------------------------------------
def test_loading_never_unpickles_or_runs_remote_code(tmp_path, monkeypatch):
    d = _error_case(tmp_path)
    sentinel = tmp_path / "remote_code_ran"
    (d / "modeling_sumi.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    (d / "configuration_sumi.py").write_text(f"open({str(sentinel)!r}, 'w').close()\n")

    def forbidden(*args, **kwargs):
        raise AssertionError("unpickling during from_pretrained")

    for target, name in [(torch, "load"), (torch.serialization, "load"), (pickle, "load"), (pickle, "loads"),
                         (pickle, "Unpickler")]:
        monkeypatch.setattr(target, name, forbidden)
    monkeypatch.syspath_prepend(str(d))
    model = hf.from_pretrained(d)
    hf.save_pretrained(model, tmp_path / "again")
    hf.convert(d, tmp_path / "converted", dtype="bfloat16")
    assert not sentinel.exists()
    assert "modeling_sumi" not in sys.modules and "configuration_sumi" not in sys.modules


def test_no_random_initialization_and_no_second_copy(tmp_path, monkeypatch):
    tensors = _release_tensors(torch.float32, seed=21)
    d = _error_case(tmp_path, tensors)

    def forbidden(*args, **kwargs):
        raise AssertionError("from_pretrained must not allocate or initialize a model of its own")

    monkeypatch.setattr(Sumi, "init_weights", forbidden)
    monkeypatch.setattr(Sumi, "initialized", classmethod(forbidden))
    monkeypatch.setattr(torch.nn.Module, "to_empty", forbidden)
    model = hf.from_pretrained(d)
    _assert_same_weights(model, tensors, torch.float32)
    if sys.platform.startswith("linux"):
        # Same dtype on the CPU: every parameter lives inside the memory map of the file itself.
        maps = []
        for line in Path("/proc/self/maps").read_text().splitlines():
            if line.endswith(str((d / "model.safetensors").resolve())):
                lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                maps.append((lo, hi))
        assert maps, "model.safetensors is not memory-mapped"
        for name, p in model.named_parameters():
            ptr = p.data_ptr()
            assert any(lo <= ptr and ptr + p.numel() * p.element_size() <= hi for lo, hi in maps), name


# -- the directory is replaced as a whole ------------------------------------------------------------------
# Writes a save can make, as Python's audit events name them.  safetensors writes from Rust and is
# wrapped instead; the exchange of the two directories (renameat2 through ctypes) raises no event,
# but the chmod of the new directory just before it and the removal of the old files after it do.
_WRITE_EVENTS = {"os.rename", "os.remove", "os.rmdir", "os.mkdir", "os.chmod", "os.link", "os.symlink",
                 "os.truncate", "os.utime", "shutil.copyfile", "shutil.copymode", "shutil.copystat",
                 "shutil.copytree", "shutil.rmtree"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _is_write(event: str, args: tuple) -> bool:
    if event == "open":
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        return bool(flags & _WRITE_FLAGS)
    return event in _WRITE_EVENTS


def _save_with_fault(model: Sumi, path: Path, max_shard_size: int, fault_at: int, mode: str) -> tuple[str, int]:
    """Save in a forked child that dies (``kill``: SIGKILL, nothing cleaned up) or fails
    (``raise``: an ENOSPC ``OSError``) at its ``fault_at``-th write.  Returns ``"killed"``,
    ``"raised"`` or ``"done"`` (the save completed: the fault was absorbed, e.g. by
    ``mkdir(exist_ok=True)``, or came after the last write) and the number of writes the
    completed save made (0 otherwise)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        status = 4
        try:
            signal.alarm(60)  # a hung save ends the child (SIGALRM) instead of the test run
            os.close(read_end)
            count = [0]

            def write_point() -> None:
                count[0] += 1
                if count[0] == fault_at:
                    if mode == "kill":
                        os.kill(os.getpid(), signal.SIGKILL)
                    raise OSError(errno.ENOSPC, "injected: no space left on device")

            def hook(event: str, args: tuple) -> None:
                if _is_write(event, args):
                    write_point()

            real_save_file = writing.save_file

            def save_file(tensors, filename, metadata=None):
                write_point()
                with open(filename, "wb") as f:  # a half-written shard on disk, then the whole one
                    f.write(b"\0" * 64)
                write_point()
                real_save_file(tensors, filename, metadata=metadata)
                write_point()

            writing.save_file = save_file
            sys.addaudithook(hook)
            try:
                hf.save_pretrained(model, path, max_shard_size=max_shard_size)
                os.write(write_end, str(count[0]).encode())  # os.write is no audit event
                status = 0
            except OSError:
                status = 3
        finally:
            os._exit(status)
    os.close(write_end)
    _, wait_status = os.waitpid(pid, 0)
    with os.fdopen(read_end, "rb") as f:
        writes = int(f.read() or 0)
    if os.WIFSIGNALED(wait_status):
        assert os.WTERMSIG(wait_status) != signal.SIGALRM, f"the save with a fault at write {fault_at} hung"
        assert os.WTERMSIG(wait_status) == signal.SIGKILL and mode == "kill"
        return "killed", writes
    code = os.WEXITSTATUS(wait_status)
    assert code in (0, 3), f"the child failed unexpectedly (status {code}) at write {fault_at}"
    return ("done" if code == 0 else "raised"), writes


def _which(directory: Path, old: dict, new: dict) -> str:
    state = hf.from_pretrained(directory).state_dict()
    if all(torch.equal(state[k], old[k]) for k in old):
        return "old"
    assert all(torch.equal(state[k], new[k]) for k in new), "a mix of old and new tensors"
    return "new"


@pytest.mark.parametrize("mode", ["kill", "raise"])
@pytest.mark.parametrize("old_shard_size", [200_000, "5GB"], ids=["over-4-shards", "over-single-file"])
def test_a_save_interrupted_at_any_write_leaves_old_or_new(tmp_path, old_shard_size, mode):
    """A save in 4 shards over an existing checkpoint (other tensors under the same 4 names, or
    one file), with a tokenizer and a user's folder beside it, killed or failing at each of its
    writes in turn (a forked child each time): the directory then loads as the whole old model
    or the whole new one, keeps the user's files, and the next save removes whatever the
    interrupted one left."""
    old = Sumi.initialized(CFG, generator=_gen(40))
    new = Sumi.initialized(CFG, generator=_gen(41))
    old_state, new_state = old.state_dict(), new.state_dict()
    template = tmp_path / "template"
    hf.save_pretrained(old, template, max_shard_size=old_shard_size)
    (template / "tokenizer.json").write_text('{"version": "1.0"}')
    (template / "notes").mkdir()
    (template / "notes" / "run.txt").write_text("lr 2e-4")
    work = tmp_path / "work"
    outcomes = []
    for fault_at in range(1, 500):
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        shutil.copytree(template, work / "ck")
        result, writes = _save_with_fault(new, work / "ck", 200_000, fault_at, mode)
        loaded = _which(work / "ck", old_state, new_state)
        outcomes.append((result, loaded))
        assert (work / "ck" / "tokenizer.json").read_text() == '{"version": "1.0"}'
        assert (work / "ck" / "notes" / "run.txt").read_text() == "lr 2e-4"
        weights = sorted(p.name for p in (work / "ck").glob("model*"))
        assert ("model.safetensors" in weights) == (loaded == "old" and old_shard_size == "5GB"), weights
        leftovers = sorted(p.name for p in work.iterdir() if p.name not in ("ck", ".ck.lock"))
        assert all(name.startswith(".ck.tmp-") for name in leftovers), leftovers
        if result == "raised":
            assert leftovers == []  # a failure cleans up after itself
        if leftovers:
            hf.save_pretrained(new, work / "ck", max_shard_size=200_000)  # the next save removes them
            assert sorted(p.name for p in work.iterdir()) == [".ck.lock", "ck"]
        if result == "done":
            assert loaded == "new"
            if fault_at > writes:  # every write of the save was interrupted once
                break
    else:
        raise AssertionError("the save never completed")
    faults = [loaded for result, loaded in outcomes if result != "done"]
    assert len(faults) > 20 and "old" in faults
    if mode == "kill":
        assert "new" in faults  # killed after the swap, before the old files were deleted


def test_resave_keeps_the_users_files_and_drops_old_temporaries(tmp_path):
    model = Sumi.initialized(CFG, generator=_gen(42))
    d = tmp_path / "ck"
    hf.save_pretrained(model, d)
    (d / "tokenizer.json").write_text("{}")
    (d / "generation_config.json").write_text('{"steps": 128}')
    (d / ".model.safetensors.k2j4h1x9.tmp").write_bytes(b"\0" * 1000)  # what earlier writers left
    (d / ".config.json.abcdefgh.tmp").write_text("{")
    (d / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    hf.save_pretrained(model, d, max_shard_size=30_000)
    names = sorted(p.name for p in d.iterdir())
    assert "tokenizer.json" in names and "generation_config.json" in names
    assert not [n for n in names if n.startswith(".") or n == "model.safetensors" or n.endswith("of-00002.safetensors")]
    _assert_same_weights(hf.from_pretrained(d), model.state_dict(), torch.float32)


def test_failures_are_named_and_keep_the_old_checkpoint(tmp_path, monkeypatch):
    old = Sumi.initialized(CFG, generator=_gen(47))
    new = Sumi.initialized(CFG, generator=_gen(48))
    hf.save_pretrained(old, tmp_path / "ck")

    def full_disk(tensors, filename, metadata=None):
        raise OSError(errno.ENOSPC, "No space left on device")

    def mount_point(staged, final):
        raise OSError(errno.EBUSY, "Device or resource busy")

    cases = [("save_file", full_disk, StorageError, r"saving the checkpoint 'ck' into .* failed: no space left"),
             ("replace_dir", mount_point, OSError, r"cannot replace .*ck.* as a whole .*mount point: save into a sub")]
    for name, fake, error, message in cases:
        with monkeypatch.context() as m:
            m.setattr(writing, name, fake)
            with pytest.raises(error, match=message):
                hf.save_pretrained(new, tmp_path / "ck", max_shard_size=200_000)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".ck.lock", "ck"]
        _assert_same_weights(hf.from_pretrained(tmp_path / "ck"), old.state_dict(), torch.float32)


def test_a_second_writer_is_refused(tmp_path):
    model = Sumi.initialized(CFG, generator=_gen(43))
    with exclusive_lock(tmp_path / ".ck.lock", "a test"):
        with pytest.raises(LockedError, match="checkpoint directory .*ck.* is in use by pid"):
            hf.save_pretrained(model, tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_saving_over_the_working_directory_is_refused(tmp_path, monkeypatch):
    model = Sumi.initialized(CFG, generator=_gen(44))
    (tmp_path / "inner").mkdir()
    monkeypatch.chdir(tmp_path / "inner")
    for target in (".", "..", str(tmp_path)):
        with pytest.raises(ValueError, match="working directory"):
            hf.save_pretrained(model, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inner"]


def test_a_save_through_a_symlink_rewrites_its_target(tmp_path):
    model = Sumi.initialized(CFG, generator=_gen(45))
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    hf.save_pretrained(model, tmp_path / "link")
    assert (tmp_path / "link").is_symlink() and (tmp_path / "real" / "model.safetensors").is_file()


def test_files_follow_the_umask(tmp_path):
    model = Sumi.initialized(CFG, generator=_gen(46))
    previous = os.umask(0o027)
    try:
        hf.save_pretrained(model, tmp_path / "new", max_shard_size=30_000)
        existing = tmp_path / "existing"
        existing.mkdir()
        existing.chmod(0o755)
        (existing / "tokenizer.json").write_text("{}")
        (existing / "tokenizer.json").chmod(0o600)
        hf.save_pretrained(model, existing)
        hf.convert(tmp_path / "new", tmp_path / "converted", dtype="bfloat16")
    finally:
        os.umask(previous)

    def mode(path: Path) -> int:
        return path.stat().st_mode & 0o777

    for d in (tmp_path / "new", tmp_path / "converted"):
        assert mode(d) == 0o750, d
        assert {p.name: mode(p) for p in d.iterdir()} == {p.name: 0o640 for p in d.iterdir()}
    assert mode(existing) == 0o755  # a replaced directory keeps its own mode ...
    assert mode(existing / "tokenizer.json") == 0o600  # ... and so do the user's files
    assert mode(existing / "model.safetensors") == mode(existing / "config.json") == 0o640


# -- reading exactly what the index names ------------------------------------------------------------------
def test_a_single_file_beside_an_index_is_an_error(tmp_path):
    """A stray ``model.safetensors`` next to an index (left by a copy or an older writer) is
    never silently preferred or mixed in."""
    d = _write_release(tmp_path, _release_tensors(torch.float32, seed=50), shards=3)
    save_file(_release_tensors(torch.float32, seed=51), str(d / "model.safetensors"))
    with pytest.raises(hf.CheckpointError, match=r"both model\.safetensors and model\.safetensors\.index\.json"):
        hf.from_pretrained(d)
    with pytest.raises(hf.CheckpointError, match="delete the stale one"):
        hf.load_state_dict(d)


def test_shards_the_index_does_not_name_are_not_read(tmp_path):
    tensors = _release_tensors(torch.float32, seed=52)
    d = _write_release(tmp_path, tensors, shards=3)
    (d / "model-00004-of-00004.safetensors").write_bytes(b"not even safetensors")
    _assert_same_weights(hf.from_pretrained(d), tensors, torch.float32)


# -- convert ---------------------------------------------------------------------------------------------------
def test_convert_refuses_to_overwrite_its_source(tmp_path):
    src = _write_release(tmp_path / "src", _release_tensors(torch.float32, seed=53), _release_config("float32"))
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    (tmp_path / "link").symlink_to(src)
    for dst in (src, tmp_path / "src" / ".", tmp_path / "link"):
        with pytest.raises(ValueError, match="is the source directory"):
            hf.convert(src, dst, dtype="bfloat16")
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_cli_convert_onto_itself_is_a_one_line_error(tmp_path, capsys):
    from sumi.cli import main

    src = _write_release(tmp_path / "src", _release_tensors(torch.float32, seed=54), _release_config("float32"))
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", str(src), str(src), "--dtype", "bfloat16"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sumi convert: error: cannot convert")
    assert "is the source directory" in err
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before
    assert main(["convert", str(src), str(tmp_path / "bf16"), "--dtype", "bfloat16"]) == 0
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


# -- the attention backend -------------------------------------------------------------------------------------
def test_from_pretrained_refuses_a_backend_that_cannot_run_before_reading(tmp_path):
    with pytest.raises(ValueError, match="attention_backend='flash' runs on CUDA only"):
        hf.from_pretrained(tmp_path / "nowhere", attention_backend="flash")  # not even the directory is looked at
    with pytest.raises(ValueError, match="attention_backend must be one of"):
        hf.from_pretrained(tmp_path / "nowhere", attention_backend="xformers")
