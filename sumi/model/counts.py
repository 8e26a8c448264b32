"""Parameter and FLOP counts from the configuration (no model needed), for MFU."""

from __future__ import annotations

from sumi.configs.model import ModelConfig


def num_parameters(config: ModelConfig, *, embeddings: bool = True) -> int:
    """Exact parameter count; ``embeddings=False`` leaves out the input embedding table (the
    untied output head is a matmul and stays in)."""
    h, d = config.hidden_size, config.head_dim
    attn = h * d * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    mlp = 3 * h * config.intermediate_size
    per_layer = attn + mlp + 2 * h
    total = config.num_hidden_layers * per_layer + h + config.vocab_size * h  # + final norm + head
    return total + (config.vocab_size * h if embeddings else 0)


def flops_per_token(config: ModelConfig, seq_len: int) -> int:
    """Training FLOPs per token (forward + backward): ``6 N + 12 L H d S``.

    ``N`` the non-embedding parameters (an embedding lookup is no matmul); the second term is
    the attention scores and their use (``QK^T`` and ``AV``: 2 x 2 S d FLOPs per head and token in
    the forward pass, times 3 for the backward), over the full sequence because attention is
    bidirectional (Kaplan et al. 2020; PaLM App. B).
    """
    return (6 * num_parameters(config, embeddings=False)
            + 12 * config.num_hidden_layers * config.num_attention_heads * config.head_dim * seq_len)
