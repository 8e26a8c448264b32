"""The Sumi model configuration and its presets (Sumi, arXiv 2606.19005; docs/math.md "Sumi recipe facts").

One size knob per preset; derived values (``head_dim``, GQA group size) are computed.  Field
names follow the released Hugging Face ``config.json`` so the two map one to one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sumi._checks import check_int, check_number

ATTENTION_BACKENDS = ("eager", "sdpa", "flash")
"""The accepted values of ``ModelConfig.attention_backend`` (see :mod:`sumi.model.attention`)."""
OBJECTIVES = ("uniform", "masked", "masked-ce", "hybrid", "ar")
"""The model families (``ModelConfig.objective``, ``sumi train --objective``): ``uniform`` (Sumi),
``masked`` (the MDLM ELBO), ``masked-ce`` (masked noise, plain cross-entropy), ``hybrid`` (GIDD's
log-SNR hybrid of uniform and mask noise) and ``ar`` (causal attention, next-token prediction).
The discdiff objects they stand for are built in :mod:`sumi.family`."""
MASK_OBJECTIVES = ("masked", "masked-ce", "hybrid")
"""The families whose noise has a mask state: their vocabulary holds one more id, ``mask_token_id``."""
# The fields holding special token ids (each in [0, vocab_size)).
_SPECIAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


@dataclass(frozen=True)
class ModelConfig:
    """A bidirectional LLaMA-style transformer with off-by-one ("sink") attention, no time input.

    ``head_dim`` defaults to ``hidden_size // num_attention_heads``.  ``attention_backend``:
    ``"eager"`` (exact reference), ``"sdpa"`` (torch SDPA, the default) or ``"flash"``
    (flash-attn on CUDA, when installed).

    The family (docs/training.md, "Families"): ``objective`` is one of :data:`OBJECTIVES`
    (``"uniform"``, the released Sumi, by default).  The families of :data:`MASK_OBJECTIVES` need
    ``mask_token_id``, an id of their own (no other family may have one); ``sumi train`` adds it
    as the last id of the vocabulary (``vocab_size`` grows by one).  ``hybrid_shift`` and
    ``hybrid_scale`` are the hybrid kernel's ``b`` and ``a`` (``pi = s u + (1 - s) e_m``,
    ``s = sigmoid(a lambda + b)``; ``a`` in ``[0, 1]``), unused by the other families.  ``"ar"``
    makes attention causal (:attr:`causal`).
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
    objective: str = "uniform"
    mask_token_id: int | None = None
    hybrid_shift: float = 0.0
    hybrid_scale: float = 1.0

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
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.objective in MASK_OBJECTIVES:
            if self.mask_token_id is None:
                raise ValueError(f"objective {self.objective!r} needs mask_token_id (an id of its own, below "
                                 f"vocab_size={self.vocab_size})")
            check_int("mask_token_id", self.mask_token_id, 0, self.vocab_size - 1)
            if self.mask_token_id in specials.values():
                raise ValueError(f"mask_token_id={self.mask_token_id} is also a special token id ({specials}); the "
                                 "mask needs an id of its own")
        elif self.mask_token_id is not None:
            raise ValueError(f"objective {self.objective!r} has no mask state, but mask_token_id="
                             f"{self.mask_token_id} is set (only {', '.join(MASK_OBJECTIVES)} use one)")
        object.__setattr__(self, "hybrid_shift", check_number("hybrid_shift", self.hybrid_shift))
        object.__setattr__(self, "hybrid_scale", check_number("hybrid_scale", self.hybrid_scale, 0.0, 1.0))
        if self.objective != "hybrid" and (self.hybrid_shift, self.hybrid_scale) != (0.0, 1.0):
            raise ValueError(f"hybrid_shift and hybrid_scale configure objective 'hybrid', not {self.objective!r}: "
                             "leave them at 0 and 1")
        for name in ("rms_norm_eps", "rope_theta", "initializer_range"):
            check_number(name, getattr(self, name), 0.0, open_lo=True)
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend must be one of {ATTENTION_BACKENDS}, got {self.attention_backend!r}")

    @property
    def causal(self) -> bool:
        """Whether attention is causal (the ``"ar"`` family); every diffusion family is bidirectional."""
        return self.objective == "ar"

    def for_objective(self, objective: str) -> ModelConfig:
        """This configuration for ``objective``: the vocabulary gains ``mask_token_id`` as its last
        id (``vocab_size + 1``) when the family needs a mask and has none, and loses it again when
        a family without a mask replaces one that had it; leaving ``"hybrid"`` resets its
        parameters.  An unchanged family is returned as is."""
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        if objective == self.objective:
            return self
        changes: dict = {"objective": objective}
        if objective != "hybrid":
            changes.update(hybrid_shift=0.0, hybrid_scale=1.0)
        needs, has = objective in MASK_OBJECTIVES, self.mask_token_id is not None
        if needs and not has:
            changes.update(vocab_size=self.vocab_size + 1, mask_token_id=self.vocab_size)
        elif has and not needs:
            if self.mask_token_id != self.vocab_size - 1:
                raise ValueError(f"cannot drop mask_token_id={self.mask_token_id} for objective {objective!r}: it is "
                                 f"not the last id of the vocabulary ({self.vocab_size})")
            changes.update(vocab_size=self.vocab_size - 1, mask_token_id=None)
        return self.replace(**changes)

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
