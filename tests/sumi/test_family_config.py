"""The family in the configuration: ModelConfig.objective, the mask id the vocabulary gains,
config.json round trips, and the kernels the names stand for."""

from __future__ import annotations

import json

import pytest

from discdiff.kernels import Hybrid, Masked, Uniform
from sumi.configs import tiny
from sumi.configs.model import MASK_OBJECTIVES, OBJECTIVES
from sumi.configs.train import train_tiny
from sumi.family import kernel_for
from sumi.hf.config import config_from_hf, config_to_hf


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_train_config_gives_the_model_its_family(objective):
    config = train_tiny(objective=objective)
    model = config.model
    assert model.objective == objective
    if objective in MASK_OBJECTIVES:  # one more id, the last, for the mask
        assert (model.vocab_size, model.mask_token_id) == (513, 512)
    else:
        assert (model.vocab_size, model.mask_token_id) == (512, None)
    assert model.causal is (objective == "ar")
    # the same config through --set, and back to the released family
    assert train_tiny().override([f"objective={objective}"]) == config
    assert config.override(["objective=uniform"]).model == tiny()


def test_kernels_of_the_families():
    def kernel(objective, *extra):
        return kernel_for(train_tiny().override([f"objective={objective}", *extra]).model)

    assert repr(kernel("uniform")) == repr(Uniform(512))
    assert repr(kernel("masked")) == repr(Masked(513, 512)) == repr(kernel("masked-ce"))
    assert repr(kernel("hybrid", "model.hybrid_shift=-2", "model.hybrid_scale=0.5")) == \
        repr(Hybrid(513, 512, shift=-2.0, scale=0.5))
    assert kernel("ar") is None


def test_family_fields_are_checked():
    with pytest.raises(ValueError, match="objective must be one of"):
        train_tiny(objective="diffusion")
    with pytest.raises(ValueError, match="needs mask_token_id"):
        tiny(objective="masked")
    with pytest.raises(ValueError, match="no mask state"):
        tiny(mask_token_id=3)
    with pytest.raises(ValueError, match="id of its own"):
        tiny(objective="masked", mask_token_id=tiny().bos_token_id)
    with pytest.raises(ValueError, match="mask_token_id"):
        tiny(objective="hybrid", mask_token_id=512)  # outside the vocabulary
    with pytest.raises(ValueError, match="hybrid_scale"):
        train_tiny(objective="hybrid").override(["model.hybrid_scale=1.5"])
    with pytest.raises(ValueError, match="configure objective 'hybrid'"):
        train_tiny().override(["model.hybrid_shift=1"])
    with pytest.raises(ValueError, match="objective=NAME"):
        train_tiny().override(["model.objective=masked"])


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_config_json_round_trips_every_family(objective):
    extra = ["model.hybrid_shift=1.5"] if objective == "hybrid" else []
    model = train_tiny().override([f"objective={objective}", *extra]).model
    d = json.loads(json.dumps(config_to_hf(model, "float32")))
    assert config_from_hf(d) == model
    if objective == "uniform":  # the released file: no family keys
        assert "objective" not in d and "mask_token_id" not in d and "is_causal" not in d
    else:
        assert d["objective"]["name"] == objective
        assert d["is_causal"] is (objective == "ar")
        assert ("shift" in d["objective"]) is (objective == "hybrid")


def test_config_json_family_entries_are_checked():
    d = config_to_hf(train_tiny(objective="hybrid").model, "float32")
    with pytest.raises(ValueError, match="is_causal"):
        config_from_hf({**d, "is_causal": True})
    with pytest.raises(ValueError, match="no parameters"):
        config_from_hf({**d, "objective": {"name": "masked", "shift": 1.0}})
    with pytest.raises(ValueError, match="'objective' must be an object"):
        config_from_hf({**d, "objective": "hybrid"})
    released = config_to_hf(tiny(), "float32")
    with pytest.raises(ValueError, match="is_causal"):
        config_from_hf({**released, "is_causal": True})
