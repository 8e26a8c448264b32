"""Training configuration and presets (Sumi, arXiv 2606.19005; docs/math.md "Sumi recipe facts").

The released recipe: AdamW (0.9, 0.95), weight decay 0.1, clip 1.0, WSD schedule with 2000
warmup steps, peak 2e-4, floor 2e-5, global batch 4608 x 1184 tokens (~5.5M); 1.3T pretraining
tokens at 1184, then 130B mid-training at 1184 and 120B at 4864 (mix: 32.5% code, 29.7% math,
21.0% general, 16.8% reasoning); pure uniform noise, lambda in [-9, 9], a share of sequences with
per-token t.  Derived values (steps per phase, gradient accumulation) are computed.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields

from sumi._checks import check_int
from sumi.configs.model import ModelConfig, sumi_1b, sumi_7b, sumi_150m, tiny

RELEASED_TOKENS_PER_STEP = 4608 * 1184
PHASES = {  # name: (tokens, sequence length, mixture weights)
    "pretrain": (1_300_000_000_000, 1184, None),
    "mid": (130_000_000_000, 1184, {"code": 0.325, "math": 0.297, "general": 0.210, "reasoning": 0.168}),
    "long": (120_000_000_000, 4864, {"code": 0.325, "math": 0.297, "general": 0.210, "reasoning": 0.168}),
}
"""The released recipe's phases: name -> (tokens, sequence length, mixture weights or None)."""
SFT_PHASE = "sft"
"""The phase of an instruction-tuning run (``sumi sft``, :func:`train_sft`): it starts from a
trained model (``init_from``), like the recipe's later phases."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs besides its data and output paths."""

    model: ModelConfig
    seq_len: int
    global_batch_size: int          # sequences per optimizer step, all ranks together
    micro_batch_size: int           # sequences per rank per forward/backward
    steps: int
    peak_lr: float
    floor_lr: float
    warmup_steps: int               # clipped to the run's length (a short --steps run still works)
    decay_fraction: float = 0.2     # share of the steps spent decaying (WSD)
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    per_token_share: float = 0.5    # share of sequences with per-token t
    z_loss: float = 1e-5
    cond_dropout: float = 0.0       # prompted data: share of rows whose prompt is hidden from attention
                                    # (one model, conditional and unconditional: classifier-free guidance)
    fused_loss: bool = True         # loss from hidden states fused with lm_head: no [tokens, V] logits
                                    # (tiny preset, 2-core CPU: model+loss fwd+bwd 18.6 vs 21.5 ms)
    seed: int = 0
    checkpoint_every: int = 1000
    keep_last: int = 3
    log_every: int = 1
    mixed_precision: bool = False   # bf16 compute; fp32 weights, gradients, optimizer (FSDP2; one process:
                                    # a one-rank mesh, sumi.distributed.single_process_group)
    activation_checkpointing: bool = False
    compile: bool = False
    phase: str = "pretrain"
    mixture: dict[str, float] | None = field(default=None)  # source name -> weight (--data NAME=DIR)
    init_from: str | None = None    # a model directory (HF layout) to start from: the previous phase
    objective: str = "uniform"      # the family (sumi.configs.model.OBJECTIVES); the model follows it

    def __post_init__(self) -> None:
        # the model's family is the objective's: mask families get their mask id (vocab_size + 1)
        object.__setattr__(self, "model", self.model.for_objective(self.objective))
        positive = ("seq_len", "global_batch_size", "micro_batch_size", "steps", "checkpoint_every", "keep_last",
                    "log_every")
        for name in positive:
            check_int(name, getattr(self, name), 1)
        if self.seq_len > self.model.max_position_embeddings:
            raise ValueError(f"seq_len ({self.seq_len}) exceeds the model's max_position_embeddings "
                             f"({self.model.max_position_embeddings})")
        check_int("warmup_steps", self.warmup_steps, 0)
        if not 0 < self.floor_lr <= self.peak_lr:
            raise ValueError(f"need 0 < floor_lr <= peak_lr, got {self.floor_lr}, {self.peak_lr}")
        for name in ("decay_fraction", "per_token_share", "cond_dropout", "beta1", "beta2"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.cond_dropout > 0 and self.objective == "ar":
            raise ValueError(f"cond_dropout ({self.cond_dropout}) needs a diffusion family, not objective 'ar': a "
                             "causal model predicts the first answer token from the prompt, so hiding the prompt "
                             "is not an unconditional branch (--set cond_dropout=0, or another --objective)")
        if self.weight_decay < 0 or self.grad_clip <= 0 or self.z_loss < 0:
            raise ValueError("weight_decay and z_loss must be >= 0 and grad_clip > 0")
        if not isinstance(self.fused_loss, bool):
            raise ValueError(f"fused_loss must be true or false, got {self.fused_loss!r}")
        if self.phase not in PHASES and self.phase != SFT_PHASE:
            raise ValueError(f"phase must be one of {sorted([*PHASES, SFT_PHASE])}, got {self.phase!r}")
        if self.mixture is not None:
            if not isinstance(self.mixture, dict) or not self.mixture:
                raise ValueError(f"mixture must be a non-empty {{name: weight}} mapping or None, got {self.mixture!r}")
            for name, w in self.mixture.items():
                if not isinstance(name, str) or isinstance(w, bool) or not isinstance(w, (int, float)) \
                        or not math.isfinite(w) or w < 0:
                    raise ValueError(f"mixture weight of {name!r} must be a finite number >= 0, got {w!r}")
            if not sum(self.mixture.values()) > 0:
                raise ValueError("at least one mixture weight must be > 0")
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ValueError(f"init_from must be a path string or None, got {self.init_from!r}")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError(f"global_batch_size ({self.global_batch_size}) must be a multiple of "
                             f"micro_batch_size ({self.micro_batch_size})")

    def grad_accumulation(self, world_size: int) -> int:
        """Micro-batches per rank per step; the world size must divide the global batch."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(f"global_batch_size ({self.global_batch_size}) is not divisible by "
                             f"micro_batch_size x world_size ({self.micro_batch_size} x {world_size})")
        return self.global_batch_size // per_step

    @property
    def decay_steps(self) -> int:
        return round(self.decay_fraction * self.steps)

    @property
    def effective_warmup_steps(self) -> int:
        """``warmup_steps``, shortened so that warmup and decay fit in the run (``--steps 6``)."""
        return min(self.warmup_steps, self.steps - self.decay_steps)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def override(self, assignments: list[str]) -> TrainConfig:
        """Apply ``key=value`` strings (``--set``); ``model.key=value`` reaches the model config.
        Values parse as JSON (numbers, true/false, strings in quotes, lists) or else as a string."""
        top, model = {}, {}
        known = {f.name: f for f in fields(self)}
        known_model = {f.name for f in fields(self.model)}
        for item in assignments:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ValueError(f"--set expects key=value, got {item!r}")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            if key.startswith("model."):
                name = key[len("model."):]
                if name == "objective":
                    raise ValueError("set the family with objective=NAME (or --objective): the model follows it")
                if name not in known_model:
                    raise ValueError(f"unknown model config key {name!r}; known: {', '.join(sorted(known_model))}")
                model[name] = value
            elif key in known and key != "model":
                top[key] = value
            else:
                raise ValueError(f"unknown config key {key!r}; known: {', '.join(sorted(set(known) - {'model'}))} "
                                 "or model.<key>")
        base = self.model.for_objective(top["objective"]) if "objective" in top else self.model
        new_model = base.replace(**model) if model else base
        return dataclasses.replace(self, model=new_model, **top)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _released(model: ModelConfig, phase: str, **overrides) -> TrainConfig:
    tokens, seq_len, mixture = PHASES[phase]
    # keep ~5.5M tokens per step at every sequence length
    global_batch = max(1, round(RELEASED_TOKENS_PER_STEP / seq_len))
    fields_ = dict(model=model, seq_len=seq_len, global_batch_size=global_batch, micro_batch_size=1,
                   steps=max(1, round(tokens / (global_batch * seq_len))), peak_lr=2e-4, floor_lr=2e-5,
                   warmup_steps=2000 if phase == "pretrain" else 0, mixed_precision=True,
                   activation_checkpointing=True, phase=phase, mixture=mixture)
    return TrainConfig(**{**fields_, **overrides})


def train_sumi_7b(phase: str = "pretrain", **overrides) -> TrainConfig:
    """The released recipe for one phase (``pretrain``, ``mid``, ``long``).  At 4864 tokens the
    global batch keeps ~5.5M tokens per step (1122 sequences); the paper does not state it."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {sorted(PHASES)}, got {phase!r}")
    return _released(sumi_7b(), phase, **overrides)


def train_sumi_1b(**overrides) -> TrainConfig:
    """A ~1B GPU preset: released hyperparameters, 20B tokens at 1184 (global batch 512)."""
    fields_ = dict(model=sumi_1b(), seq_len=1184, global_batch_size=512, micro_batch_size=8,
                   steps=33_000, peak_lr=3e-4, floor_lr=3e-5, warmup_steps=1000, mixed_precision=True)
    return TrainConfig(**{**fields_, **overrides})


def train_sumi_150m(**overrides) -> TrainConfig:
    """A ~150M GPU preset: 3B tokens at 1184 (global batch 256)."""
    fields_ = dict(model=sumi_150m(), seq_len=1184, global_batch_size=256, micro_batch_size=16,
                   steps=10_000, peak_lr=6e-4, floor_lr=6e-5, warmup_steps=500, mixed_precision=True)
    return TrainConfig(**{**fields_, **overrides})


def train_tiny(vocab_size: int = 512, **overrides) -> TrainConfig:
    """The CPU embedded default: the tiny model, 128-token sequences, 2000 steps (1.5 to 2
    minutes on an idle 2-core VM, 2026-11-29; ``--steps`` shortens it)."""
    fields_ = dict(model=tiny(vocab_size), seq_len=128, global_batch_size=16, micro_batch_size=8, steps=2000,
                   peak_lr=3e-3, floor_lr=3e-4, warmup_steps=100, checkpoint_every=500)
    return TrainConfig(**{**fields_, **overrides})


TRAIN_PRESETS = {"tiny": train_tiny, "sumi_150m": train_sumi_150m, "sumi_1b": train_sumi_1b, "sumi_7b": train_sumi_7b}
"""Training presets by name (``sumi train --preset``): functions returning a :class:`TrainConfig`."""


SFT_EPOCHS = 3
"""Passes over the prepared rows of an instruction-tuning run unless ``steps`` is given."""
SFT_PRESETS: dict[str, dict] = {
    # tuned on the embedded default (docs/sft.md, "The embedded default"): with the tiny model's pretraining
    # peak learning rate, sort reached 81% exact where 1e-3 reached 69% (uniform, 7,875 steps, greedy decoding)
    "tiny": dict(global_batch_size=16, micro_batch_size=8, peak_lr=3e-3, floor_lr=3e-4, warmup_steps=20),
    # the GPU presets: a tenth of the pretraining peak learning rate, a short warm-up
    "sumi_150m": dict(global_batch_size=64, micro_batch_size=16, peak_lr=6e-5, floor_lr=6e-6, warmup_steps=50),
    "sumi_1b": dict(global_batch_size=128, micro_batch_size=8, peak_lr=3e-5, floor_lr=3e-6, warmup_steps=50),
    "sumi_7b": dict(global_batch_size=256, micro_batch_size=1, peak_lr=2e-5, floor_lr=2e-6, warmup_steps=50),
}
"""Instruction-tuning values per preset (``sumi sft --preset``): the batch and the learning-rate
schedule; the rest (precision, activation checkpointing, optimizer) is the training preset's."""
_SHAPE = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
          "head_dim")


def sft_preset_for(model: ModelConfig) -> str | None:
    """The preset whose model has ``model``'s shape (hidden size, widths, layers, heads), or None."""
    for name in SFT_PRESETS:
        preset = TRAIN_PRESETS[name]().model
        if all(getattr(preset, key) == getattr(model, key) for key in _SHAPE):
            return name
    return None


def train_sft(preset: str, model: ModelConfig, seq_len: int, rows: int, init_from: str,
              **overrides) -> TrainConfig:
    """The configuration of an instruction-tuning run (``sumi sft``; docs/sft.md, "Training").

    The training preset ``preset`` with the values of :data:`SFT_PRESETS` (a smaller batch, a
    short warm-up and, on the GPU presets, a lower peak learning rate), phase :data:`SFT_PHASE`,
    and by default :data:`SFT_EPOCHS` passes over the rows:
    ``steps = ceil(SFT_EPOCHS * rows / global_batch_size)``.

    Args:
        preset: a name of :data:`SFT_PRESETS`.
        model: the configuration of the trained model at ``init_from`` (its family included).
        seq_len: the length of the prepared rows.
        rows: how many rows the prepared data holds.
        init_from: the model directory the run starts from.
        **overrides: any :class:`TrainConfig` field.
    """
    if preset not in SFT_PRESETS:
        raise ValueError(f"preset must be one of {', '.join(SFT_PRESETS)}, got {preset!r}")
    check_int("rows", rows, 1)
    values = SFT_PRESETS[preset]
    steps = math.ceil(SFT_EPOCHS * rows / values["global_batch_size"])
    base = TRAIN_PRESETS[preset]()
    fields_ = dict(values, model=model, seq_len=seq_len, steps=steps, checkpoint_every=max(1, math.ceil(steps / 4)),
                   phase=SFT_PHASE, mixture=None, init_from=init_from, objective=model.objective)
    return dataclasses.replace(base, **{**fields_, **overrides})
