"""The key/value cache of a causal Sumi: decoding a token costs one token's projections and one
row of attention, never a forward over the prefix again.

With causal attention the keys and values of position ``j`` depend on tokens ``<= j`` only, so
once computed they never change: a step writes the new tokens' keys (RoPE already applied at
their positions) and values into preallocated slots and attends to every slot written so far
(:func:`sumi.model.attention.cached_mask`).  A bidirectional (diffusion) model has no such
cache: every position's keys change with every token.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from sumi._checks import check_int
from sumi.configs.model import ModelConfig


class LayerCache(NamedTuple):
    """One layer's slice of a :class:`KVCache` for one step: its buffers and the first slot the
    step writes (``start``)."""

    keys: Tensor
    values: Tensor
    start: int

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write the step's ``k``, ``v`` (``[batch, kv_heads, n, head_dim]``) at slots
        ``start .. start + n - 1``; return the keys and values of slots ``0 .. start + n - 1``
        (views, no copy)."""
        stop = self.start + k.shape[2]
        self.keys[:, :, self.start:stop] = k
        self.values[:, :, self.start:stop] = v
        return self.keys[:, :, :stop], self.values[:, :, :stop]


class KVCache:
    """Keys and values of every token a causal :class:`~sumi.Sumi` has seen, per layer.

    ``keys[l]`` and ``values[l]`` are ``[batch, kv_heads, capacity, head_dim]`` buffers allocated
    once (so a step copies only its own tokens in); ``key_mask`` (bool ``[batch, capacity]``) says
    which written slots hold real tokens (False: padding); ``length`` slots are written.
    ``model(ids, cache=cache)`` writes the tokens of ``ids`` (``[batch, n]``) at slots
    ``length .. length + n - 1`` and advances ``length`` by ``n``: feeding a sequence in pieces
    gives the logits of one causal forward over the whole sequence.

    Args:
        config: the model's configuration (``config.causal`` must be True).
        batch: rows decoded together.
        capacity: slots per row: the longest padded prompt plus the tokens to decode.
        device: where the buffers live (the model's device).
        dtype: the buffers' dtype (the model's).
    """

    def __init__(self, config: ModelConfig, batch: int, capacity: int, *, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32) -> None:
        if not config.causal:
            raise ValueError(f"a KV cache needs a causal model (objective 'ar'); objective {config.objective!r} "
                             "attends bidirectionally, so earlier keys change with every new token")
        check_int("batch", batch, 1)
        check_int("capacity", capacity, 1, config.max_position_embeddings)
        shape = (batch, config.num_key_value_heads, capacity, config.head_dim)
        layers = range(config.num_hidden_layers)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in layers]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in layers]
        self.key_mask = torch.zeros(batch, capacity, dtype=torch.bool, device=device)
        self.batch, self.capacity, self.length = batch, capacity, 0

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch: int, capacity: int) -> KVCache:
        """An empty cache for ``model`` (a :class:`~sumi.Sumi`), on its device and in its dtype."""
        weight = model.lm_head.weight
        return cls(model.config, batch, capacity, device=weight.device, dtype=weight.dtype)

    def layer(self, index: int) -> LayerCache:
        """Layer ``index``'s buffers for the step that starts at slot ``length``."""
        return LayerCache(self.keys[index], self.values[index], self.length)
