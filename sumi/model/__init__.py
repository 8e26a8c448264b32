"""The Sumi transformer, its attention backends, its decoding cache and its parameter/FLOP counts."""

from sumi.model.attention import (BACKENDS, AttentionBackend, check_backend, eager_attention, flash_attention,
                                  flash_available, sdpa_attention)
from sumi.model.cache import KVCache
from sumi.model.counts import flops_per_token, num_parameters
from sumi.model.transformer import ForwardPlan, Sumi

__all__ = ["Sumi", "ForwardPlan", "KVCache", "BACKENDS", "AttentionBackend", "check_backend", "eager_attention",
           "sdpa_attention", "flash_attention", "flash_available", "num_parameters", "flops_per_token"]
