"""The Sumi model configuration and its presets (Sumi, arXiv 2606.19005; docs/math.md "Sumi recipe facts").

One size knob per preset; derived values (``head_dim``, GQA group size) are computed.  Field
names follow the released Hugging Face ``config.json`` so the two map one to one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sumi._checks import check_int, check_number

ATTENTION_BACKENDS = ("eager", "sdpa", "flash")
"""The accepted values of ``ModelConfig.attention_backend`` (see :mod:`sumi.model.attention`)."""
# The fields holding special token ids (each in [0, vocab_size)).
_SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass(frozen=True)
class ModelConfig:
    """A bidirectional LLaMA-style transformer with off-by-one ("sink") attention, no time input.

    ``head_dim`` defaults to ``hidden_size // num_attention_heads``.  ``attention_backend``:
    ``"eager"`` (exact reference), ``"sdpa"`` (torch SDPA, the default) or ``"flash"``
    (flash-attn on CUDA, when installed).
    """

    vocab_size: int = 100_278
    hidden_size: int = 4096
    intermediate_size: int = 12_288
    num_hidden_layers: int = 36
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 500_000.0
    max_position_embeddings: int = 4864
    initializer_range: float = 0.02
    bos_token_id: int = 100_256
    eos_token_id: int = 100_257
    pad_token_id: int = 100_277
    attention_backend: str = "sdpa"

    def __post_init__(self) -> None:
        ints = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings")
        for name in ints:
            check_int(name, getattr(self, name), 1)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                                 f"({self.num_attention_heads}) unless head_dim is given")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        check_int("head_dim", self.head_dim, 2)
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even (rotate-half RoPE), got {self.head_dim}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                             f"num_key_value_heads ({self.num_key_value_heads})")
        specials = {name: check_int(name, getattr(self, name), 0) for name in _SPECIAL_TOKEN_FIELDS}
        if max(specials.values()) >= self.vocab_size:
            ids = ", ".join(f"{name}={value}" for name, value in specials.items())
            raise ValueError(f"vocab_size={self.vocab_size} is too small for the special token ids ({ids}), which "
                             f"must all be below it: set vocab_size to at least {max(specials.values()) + 1}, or "
                             "set bos_token_id, eos_token_id and pad_token_id below vocab_size as well")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            check_number(name, getattr(self, name), 0.0, open_lo=True)
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")

    @property
    def num_key_value_groups(self) -> int:
        """Query heads served by each key/value head (GQA)."""
        return self.num_attention_heads // self.num_key_value_heads

    def replace(self, **changes) -> ModelConfig:
        return ModelConfig(**{**asdict(self), **changes})


def _shaped(hidden_size: int, num_hidden_layers: int, **overrides) -> ModelConfig:
    """Sumi's shape rules: head_dim 128, 4 query heads per KV head, SwiGLU width 3x hidden."""
    heads = max(1, hidden_size // 128)
    fields = dict(hidden_size=hidden_size, num_hidden_layers=num_hidden_layers, num_attention_heads=heads,
                  num_key_value_heads=max(1, heads // 4), intermediate_size=3 * hidden_size)
    return ModelConfig(**{**fields, **overrides})


def sumi_7b(**overrides) -> ModelConfig:
    """The released architecture: 36 layers, hidden 4096, 32/8 heads, 7,767,543,808 parameters."""
    return _shaped(4096, 36, **overrides)


def sumi_1b(**overrides) -> ModelConfig:
    """~1.09B parameters with Sumi's shape rules (hidden 2048, 14 layers, 16/4 heads)."""
    return _shaped(2048, 14, **overrides)


def sumi_150m(**overrides) -> ModelConfig:
    """~145M parameters with Sumi's shape rules (hidden 512, 14 layers, 4/1 heads)."""
    return _shaped(512, 14, **overrides)


def tiny(vocab_size: int = 512, **overrides) -> ModelConfig:
    """A CPU-sized model for tests and the embedded default (hidden 64, 2 layers, 4/2 heads)."""
    fields = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=vocab_size - 3, eos_token_id=vocab_size - 2, pad_token_id=vocab_size - 1)
    return ModelConfig(**{**fields, **overrides})


PRESETS = {"sumi_7b": sumi_7b, "sumi_1b": sumi_1b, "sumi_150m": sumi_150m, "tiny": tiny}
"""Model presets by name: functions returning a :class:`ModelConfig` (keyword overrides accepted)."""
