"""Training configuration: the released recipe's numbers, derived values, overrides, errors."""

from __future__ import annotations

import pytest

from sumi.configs import PHASES, TRAIN_PRESETS, train_sumi_7b, train_tiny


def test_released_recipe_numbers():
    c = train_sumi_7b("pretrain")
    assert (c.global_batch_size, c.seq_len, c.peak_lr, c.floor_lr, c.warmup_steps) == (4608, 1184, 2e-4, 2e-5, 2000)
    assert (c.weight_decay, c.beta1, c.beta2, c.grad_clip, c.z_loss) == (0.1, 0.9, 0.95, 1.0, 1e-5)
    assert c.model.num_hidden_layers == 36 and c.mixed_precision
    # 1.3T tokens at ~5.5M tokens per step
    assert abs(c.steps * c.tokens_per_step - 1.3e12) < c.tokens_per_step
    mid, long = train_sumi_7b("mid"), train_sumi_7b("long")
    assert mid.seq_len == 1184 and long.seq_len == 4864
    assert mid.mixture == {"code": 0.325, "math": 0.297, "general": 0.210, "reasoning": 0.168}
    assert abs(sum(mid.mixture.values()) - 1.0) < 1e-9
    assert abs(long.steps * long.tokens_per_step - 120e9) < long.tokens_per_step
    assert abs(long.tokens_per_step - 4608 * 1184) / (4608 * 1184) < 1e-3


def test_grad_accumulation_and_world_size():
    c = train_sumi_7b(micro_batch_size=4)
    assert c.grad_accumulation(world_size=128) == 4608 // (4 * 128)
    with pytest.raises(ValueError, match="not divisible"):
        c.grad_accumulation(world_size=7)


def test_overrides():
    c = train_tiny().override(["steps=6", "peak_lr=1e-3", "model.hidden_size=32", "compile=true", "phase=\"mid\""])
    assert (c.steps, c.peak_lr, c.model.hidden_size, c.compile, c.phase) == (6, 1e-3, 32, True, "mid")
    assert c.effective_warmup_steps == 6 - c.decay_steps  # warmup shortened so warmup + decay fit
    with pytest.raises(ValueError, match="unknown config key 'nope'"):
        train_tiny().override(["nope=1"])
    with pytest.raises(ValueError, match="unknown model config key 'layers'"):
        train_tiny().override(["model.layers=3"])
    with pytest.raises(ValueError, match="key=value"):
        train_tiny().override(["steps"])


@pytest.mark.parametrize("bad, match", [
    (dict(seq_len=10_000), "max_position_embeddings"),
    (dict(global_batch_size=10, micro_batch_size=4), "multiple"),
    (dict(steps=0), "steps"),
    (dict(floor_lr=1.0), "floor_lr"),
    (dict(phase="warmup"), "phase"),
    (dict(per_token_share=1.5), "per_token_share"),
    (dict(fused_loss="yes"), "fused_loss"),
])
def test_invalid_configs(bad, match):
    with pytest.raises(ValueError, match=match):
        train_tiny(**bad)


def test_presets_build():
    for name, preset in TRAIN_PRESETS.items():
        assert preset().steps > 0, name
        assert preset().fused_loss, name  # the loss from hidden states: no [tokens, V] logits
    assert not train_tiny().override(["fused_loss=false"]).fused_loss
    assert set(PHASES) == {"pretrain", "mid", "long"}
