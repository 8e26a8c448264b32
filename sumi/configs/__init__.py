"""Configurations: ``ModelConfig`` and preset functions (``sumi_7b()``, ``sumi_1b()``,
``sumi_150m()``, ``tiny()``)."""

from sumi.configs.model import ATTENTION_BACKENDS, PRESETS, ModelConfig, sumi_1b, sumi_7b, sumi_150m, tiny

__all__ = ["ModelConfig", "ATTENTION_BACKENDS", "PRESETS", "sumi_7b", "sumi_1b", "sumi_150m", "tiny"]
