"""The Sumi transformer: a plain ``nn.Module`` whose parameter names are the released Hugging
Face keys (``model.layers.{i}.self_attn.q_proj.weight``, ..., ``lm_head.weight``).

Bidirectional, no time input, RMSNorm in float32, rotate-half RoPE, GQA, SwiGLU, untied head,
no biases, off-by-one attention (:mod:`sumi.model.attention`).  The ``"ar"`` family
(``config.causal``) is the same network with causal attention, and decodes with a
:class:`~sumi.model.KVCache`.  Build it on the meta device and call :meth:`Sumi.init_weights`
after moving it (``to_empty``): a 7B model is then described without allocating it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from sumi.configs.model import ModelConfig
from sumi.model.attention import BACKENDS, cached_mask, check_backend
from sumi.model.cache import KVCache, LayerCache
from sumi.model.layers import RMSNorm, SwiGLU, apply_rope, rope_cos_sin
from sumi.model.params import normal_


class SelfAttention(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        h, d = config.hidden_size, config.head_dim
        self.q_proj = nn.Linear(h, config.num_attention_heads * d, bias=False)
        self.k_proj = nn.Linear(h, config.num_key_value_heads * d, bias=False)
        self.v_proj = nn.Linear(h, config.num_key_value_heads * d, bias=False)
        self.o_proj = nn.Linear(config.num_attention_heads * d, h, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask, backend: str,
                cache: LayerCache | None = None) -> Tensor:
        batch, seq, _ = x.shape
        c = self.config
        q = self.q_proj(x).view(batch, seq, c.num_attention_heads, c.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, c.num_key_value_heads, c.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # attend to every cached token and these
            k, v = cache.append(k, v)
        out = BACKENDS[backend].attend(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, -1))


class Block(nn.Module):
    """One pre-norm transformer block; ``mask`` is the backend's prepared mask (:class:`ForwardPlan`),
    ``cache`` this layer's part of a :class:`~sumi.model.KVCache` (decoding) or ``None``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = SelfAttention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask, backend: str,
                cache: LayerCache | None = None) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, backend, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


@dataclass(frozen=True)
class ForwardPlan:
    """What a forward pass needs besides the tokens, built once by :meth:`Sumi.prepare`: the
    ``batch x seq`` shape it is for, the attention ``backend``, the RoPE tables ``cos``/``sin``
    (float32, ``[seq, head_dim]`` or ``[batch, seq, head_dim]``) and the backend's prepared
    ``mask`` (:class:`~sumi.model.attention.AttentionBackend`; ``None``: nothing masked).

    Every forward builds one itself; a caller that runs many forwards over the same shape, mask
    and positions (:func:`sumi.generate`: one per step) builds it once and passes ``plan=``."""

    batch: int
    seq: int
    backend: str
    cos: Tensor
    sin: Tensor
    mask: Any


class Backbone(nn.Module):
    """``model.*`` in the checkpoint: embeddings, blocks, final norm."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)


class Sumi(nn.Module):
    """``model(input_ids, attention_mask=None) -> logits [batch, seq, vocab]``.

    ``attention_mask``: 1/True for real tokens (keys with 0 are ignored).  ``document_ids``:
    packed documents attend only within themselves.  ``position_ids``: default ``0..seq-1``.
    ``return_hidden=True`` returns the final normed hidden states ``[batch, seq, hidden]``
    instead of logits (for a fused loss that never builds the logits).  ``backend`` overrides
    ``config.attention_backend`` for one call.  ``output_index`` (long ``[batch, n]``): the
    final norm and the head run only at these positions, and the result is ``[batch, n, vocab]``
    (or ``[batch, n, hidden]``): ``model(ids, output_index=i)`` equals
    ``model(ids).gather(1, i[..., None].expand(-1, -1, V))`` without the other positions' logits.

    The RoPE tables and the attention mask are built once per forward (never per layer), by
    :meth:`prepare`; ``plan=model.prepare(ids, mask, ...)`` passes them in instead, so many
    forwards over one shape (the steps of :func:`sumi.generate`) build them once.

    ``config.causal`` (the ``"ar"`` family): position ``i`` attends to positions ``<= i`` only
    (and the sink), in every backend.  ``cache`` (a :class:`~sumi.model.KVCache`, causal models
    only): ``input_ids`` are the next ``n`` tokens after the ``cache.length`` tokens it holds;
    their keys and values are appended to it and they attend to every cached real token and to
    the new ones before them.  ``attention_mask`` then marks which new tokens are real (padding
    is never attended to, now or later), ``position_ids`` (``[n]`` or ``[batch, n]``) default to
    ``cache.length .. cache.length + n - 1``; ``document_ids`` and ``plan`` are not taken.  Such
    steps run ``eager`` or ``sdpa`` (``flash`` runs them through ``sdpa``).

    ``input_ids`` must be ``torch.long`` or ``torch.int32``.  An id outside ``[0, vocab_size)`` is
    a ``ValueError`` naming it on the CPU; on CUDA the embedding kernel's device-side assertion
    fires instead (reported asynchronously, and the CUDA context is unusable afterwards), because
    a range check on every forward would synchronize with the device: check ids of uncertain
    origin once where they enter.  To write the model in the Hugging Face layout use
    :func:`sumi.save_pretrained` (``sumi.hf.save_pretrained``).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.model = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def prepare(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                document_ids: Tensor | None = None, position_ids: Tensor | None = None,
                backend: str | None = None) -> ForwardPlan:
        """The :class:`ForwardPlan` of ``forward(input_ids, attention_mask, document_ids=...,
        position_ids=..., backend=...)``: the arguments are checked and the RoPE tables and the
        backend's mask are built here, once, for any number of forwards over tokens of
        ``input_ids``'s shape (only its shape, dtype and device are read)."""
        backend = self._check_inputs(input_ids, attention_mask, backend)
        batch, seq = input_ids.shape
        if seq > self.config.max_position_embeddings:
            raise ValueError(f"sequence length {seq} exceeds max_position_embeddings "
                             f"({self.config.max_position_embeddings})")
        if document_ids is not None and document_ids.shape != input_ids.shape:
            raise ValueError(f"document_ids must have shape {tuple(input_ids.shape)}, got {tuple(document_ids.shape)}")
        if position_ids is None:
            position_ids = torch.arange(seq, device=input_ids.device)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        key_mask = None if attention_mask is None else attention_mask.bool()
        mask = BACKENDS[backend].prepare(key_mask, document_ids, batch, seq, input_ids.device, self.config.causal)
        return ForwardPlan(batch=batch, seq=seq, backend=backend, cos=cos, sin=sin, mask=mask)

    def _check_inputs(self, input_ids: Tensor, attention_mask: Tensor | None, backend: str | None) -> str:
        """Check the token ids' shape and dtype and the mask's shape; the backend to run."""
        backend = check_backend(backend or self.config.attention_backend, input_ids.device)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seq], got shape {tuple(input_ids.shape)}")
        if input_ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"input_ids must hold integer token ids (torch.long or torch.int32), got "
                             f"{input_ids.dtype}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must have shape {tuple(input_ids.shape)}, got {tuple(attention_mask.shape)}")
        return backend

    def _cached_plan(self, input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None,
                     backend: str | None, cache: KVCache) -> ForwardPlan:
        """The plan of a step with ``cache`` (see the class docstring): RoPE tables at the new
        tokens' positions and the mask over the cached and new keys; the new tokens' entries of
        ``cache.key_mask`` are written here."""
        if not self.config.causal:
            raise ValueError(f"cache= needs a causal model (objective 'ar'), not objective {self.config.objective!r}")
        backend = self._check_inputs(input_ids, attention_mask, backend)
        batch, n = input_ids.shape
        start, stop = cache.length, cache.length + n
        if batch != cache.batch:
            raise ValueError(f"input_ids have {batch} rows but the cache holds {cache.batch}")
        if stop > cache.capacity:
            raise ValueError(f"{n} more tokens do not fit in the cache: {start} of its {cache.capacity} slots are "
                             "used (make a larger KVCache)")
        if position_ids is None:
            position_ids = torch.arange(start, stop, device=input_ids.device)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta)
        cache.key_mask[:, start:stop] = True if attention_mask is None else attention_mask.bool()
        backend, mask = cached_mask(backend, cache.key_mask[:, :stop], n)
        return ForwardPlan(batch=batch, seq=n, backend=backend, cos=cos, sin=sin, mask=mask)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                document_ids: Tensor | None = None, position_ids: Tensor | None = None,
                return_hidden: bool = False, backend: str | None = None, plan: ForwardPlan | None = None,
                output_index: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        if cache is not None:
            if plan is not None or document_ids is not None:
                raise ValueError("cache= takes no plan= and no document_ids= (a decoding step builds its own mask)")
            plan = self._cached_plan(input_ids, attention_mask, position_ids, backend, cache)
        elif plan is None:
            plan = self.prepare(input_ids, attention_mask, document_ids=document_ids, position_ids=position_ids,
                                backend=backend)
        else:
            if attention_mask is not None or document_ids is not None or position_ids is not None or backend is not None:
                raise ValueError("with plan=, give the attention mask, documents, positions and backend to "
                                 "Sumi.prepare instead (the plan holds them)")
            if input_ids.dim() != 2 or tuple(input_ids.shape) != (plan.batch, plan.seq):
                raise ValueError(f"input_ids have shape {tuple(input_ids.shape)} but the plan was prepared for "
                                 f"{(plan.batch, plan.seq)}")
        x = self._embed(input_ids)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, plan.cos, plan.sin, plan.mask, plan.backend, None if cache is None else cache.layer(i))
        if cache is not None:
            cache.length += plan.seq
        if output_index is not None:
            # the head (V columns per position) only where the caller reads it; the final norm
            # is per position, so gathering before it changes no value
            x = x.gather(1, output_index.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = self.model.norm(x)
        return x if return_hidden else self.lm_head(x)

    def _embed(self, input_ids: Tensor) -> Tensor:
        """The embedding lookup, with an id outside ``[0, vocab_size)`` named in a ``ValueError``.

        The range is checked only once the lookup has failed (on the CPU it raises
        ``IndexError``): checking every forward would synchronize the host with the device.
        On CUDA the lookup's own device-side assertion fires instead."""
        try:
            return self.model.embed_tokens(input_ids)
        except IndexError:
            vocab = self.config.vocab_size
            bad = input_ids[(input_ids < 0) | (input_ids >= vocab)]
            if bad.numel() == 0:
                raise
            raise ValueError(f"input_ids holds {bad.numel()} id(s) outside [0, vocab_size={vocab}), e.g. "
                             f"{int(bad[0])}: token ids must come from this model's vocabulary") from None

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, initializer_range) for embeddings and linear layers, ones for norms (the
        LLaMA/HF initialization).  Call after ``to_empty(device=...)`` on a meta-built model.

        Sharded (FSDP2) parameters get exactly the values the unsharded model would get from
        the same ``generator``, whatever the world size: see :func:`sumi.model.params.normal_`."""
        std = self.config.initializer_range
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                normal_(module.weight, std, generator)
            elif isinstance(module, RMSNorm):
                module.reset_parameters()

    @classmethod
    def on_meta(cls, config: ModelConfig) -> Sumi:
        """The model with every parameter on the meta device (no memory)."""
        with torch.device("meta"):
            return cls(config)

    @classmethod
    def initialized(cls, config: ModelConfig, *, device: str | torch.device = "cpu",
                    dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None) -> Sumi:
        """Build on meta, allocate on ``device`` in ``dtype``, initialize (one copy of the weights)."""
        model = cls.on_meta(config).to_empty(device=device)
        model.init_weights(generator)
        return model.to(dtype)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
