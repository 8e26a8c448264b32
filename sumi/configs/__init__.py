"""Configurations: ``ModelConfig`` and preset functions (``sumi_7b()``, ``sumi_1b()``,
``sumi_150m()``, ``tiny()``); ``TrainConfig`` and training presets (``train_sumi_7b(phase)``, ...)."""

from sumi.configs.model import ATTENTION_BACKENDS, PRESETS, ModelConfig, sumi_1b, sumi_7b, sumi_150m, tiny
from sumi.configs.train import (PHASES, TRAIN_PRESETS, TrainConfig, train_sumi_1b, train_sumi_7b, train_sumi_150m,
                                train_tiny)

__all__ = ["ModelConfig", "ATTENTION_BACKENDS", "PRESETS", "sumi_7b", "sumi_1b", "sumi_150m", "tiny",
           "TrainConfig", "TRAIN_PRESETS", "PHASES", "train_sumi_7b", "train_sumi_1b", "train_sumi_150m",
           "train_tiny"]
