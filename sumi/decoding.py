"""Left-to-right decoding with a causal Sumi (the ``"ar"`` family; docs/training.md, "Families").

An autoregressive model factorizes ``p(x) = prod_t p(x_t | x_<t)``; decoding draws each new token
from the model's next-token distribution given everything before it, tempered and filtered
exactly as the diffusion samplers' denoised distribution (docs/math.md, "The denoised
distribution")::

    x_t ~ filter(softmax(logits_t / T)),    logits_t = model(x_<t)[t - 1],

with ``T = 0`` the argmax, and the filters (top-k, top-p, min-p) of
:class:`discdiff.samplers.Filters`, applied and drawn from by :class:`discdiff.samplers.Denoised`
(streamed over the vocabulary: no ``[batch, V]`` tensor beyond the current position's logits).

Prompts of different lengths share one batch by left-padding: row ``b``'s prompt ends at the last
prompt slot, its padding is masked out of attention and its positions count from its first
real token, so each row computes what it would alone.  The prompt runs once through the model
(one causal forward that fills a :class:`~sumi.model.KVCache`, the head at the last position
only); every later step feeds one token per row and attends to the cache, so a step costs the
same whatever the prefix length apart from attention itself.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from discdiff._checks import check_logits
from discdiff.samplers import Denoised, Filters
from discdiff.samplers.categorical import check_temperature
from sumi._checks import check_int
from sumi.model.cache import KVCache


@dataclass(frozen=True)
class DecodeOutput:
    """What :func:`decode` wrote.

    Attributes:
        tokens: per row, the ids decoded after the prompt, cut at the first EOS (excluded).
        sequences: long ``[batch, max_prompt_len + max_new_tokens]``: row ``b`` is its prompt,
            then what was decoded (its EOS included), then ``pad_token_id`` after its EOS or its end.
    """

    tokens: list[list[int]]
    sequences: Tensor


def decode(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, *, generator: torch.Generator,
           temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
           min_p: float | None = None, progress: bool = False) -> DecodeOutput:
    """Decode up to ``max_new_tokens`` tokens after each prompt with a causal Sumi.

    Each step draws ``x_t ~ filter(softmax(logits_t / T))`` per row (module docstring); a row
    stops at its first EOS (``config.eos_token_id``), and decoding stops when every row has or
    after ``max_new_tokens`` steps.  Runs under ``torch.no_grad()`` in eval mode (the model's
    mode is restored).  One host synchronization per step: whether every row has ended.

    Args:
        model: a :class:`~sumi.Sumi` whose ``config.causal`` is True (objective ``"ar"``).
        prompts: token ids per row (BOS included: nothing is added), already validated by the
            caller (ids in range); lengths may differ.
        max_new_tokens: the most tokens decoded per row (``>= 0``).
        generator: the only source of randomness (on the model's device); unused at ``T = 0``.
        temperature: ``T >= 0``; 0 is the argmax (greedy).
        top_k: keep the ``k`` most likely tokens (ties kept), or ``None``.
        top_p: nucleus sampling: keep the most likely tokens whose mass reaches ``p``, or ``None``.
        min_p: keep tokens at least ``min_p`` times as likely as the most likely one, or ``None``.
        progress: a tqdm bar over the decoded positions on stderr.

    Returns:
        The :class:`DecodeOutput`.
    """
    config = model.config
    if not config.causal:
        raise ValueError(f"decode needs a causal model (objective 'ar'), got objective {config.objective!r}; "
                         "diffusion models generate with sumi.generate")
    check_int("max_new_tokens", max_new_tokens, 0)
    temperature = check_temperature(temperature)
    filters = Filters(top_k, top_p, min_p)
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty lists of token ids (BOS included)")
    lengths = [len(p) for p in prompts]
    batch, width = len(prompts), max(lengths)
    if width + max_new_tokens > config.max_position_embeddings:
        raise ValueError(f"the longest prompt ({width} tokens) + max_new_tokens ({max_new_tokens}) exceeds the "
                         f"model's max_position_embeddings ({config.max_position_embeddings})")
    device = model.lm_head.weight.device
    pad, eos = config.pad_token_id, config.eos_token_id

    ids = torch.full((batch, width), pad, dtype=torch.long)
    real = torch.zeros(batch, width, dtype=torch.bool)
    for b, prompt in enumerate(prompts):  # left-padded: every prompt ends at slot width - 1
        ids[b, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
        real[b, width - len(prompt):] = True
    ids, real = ids.to(device), real.to(device)
    decoded = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=device)
    if max_new_tokens:
        training = model.training
        model.eval()
        try:
            with torch.no_grad():
                _decode_into(model, decoded, ids, real, torch.tensor(lengths, device=device), generator,
                             temperature, filters, progress)
        finally:
            model.train(training)

    rows = decoded.tolist()
    tokens = [row[:row.index(eos)] if eos in row else row for row in rows]
    sequences = torch.full((batch, width + max_new_tokens), pad, dtype=torch.long)
    for b, (prompt, row) in enumerate(zip(prompts, rows)):
        sequences[b, :len(prompt) + max_new_tokens] = torch.tensor(list(prompt) + row, dtype=torch.long)
    return DecodeOutput(tokens=tokens, sequences=sequences.to(device))


def _decode_into(model: nn.Module, decoded: Tensor, ids: Tensor, real: Tensor, lengths: Tensor,
                 generator: torch.Generator, temperature: float, filters: Filters, progress: bool) -> None:
    """Fill ``decoded`` (``[batch, max_new_tokens]``, pad) column by column: the prompt ``ids``
    (left-padded, ``real`` marks the prompt tokens, ``lengths`` per row) fill the cache once,
    then one token per row and step.  Ended rows keep their pad."""
    batch, steps = decoded.shape
    width = ids.shape[1]
    eos = model.config.eos_token_id
    cache = KVCache.for_model(model, batch, width + steps)
    positions = (real.long().cumsum(1) - 1).clamp_min(0)  # each row counts from its first prompt token
    last = torch.full((batch, 1), width - 1, dtype=torch.long, device=ids.device)
    logits = model(ids, real, position_ids=positions, cache=cache, output_index=last)[:, 0]
    # checked once, on the prompt's logits (one host sync): NaN weights show here, and later
    # steps are not checked (each would wait for the device)
    check_logits("the logits of the prompt's last position", logits, None)
    running = torch.ones(batch, dtype=torch.bool, device=ids.device)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="decoding", unit="token", file=sys.stderr, leave=False)
    try:
        for t in range(steps):
            token = Denoised(logits, None, temperature, filters).sample(generator, where=running)
            token = torch.where(running, token, decoded[:, t])  # ended rows draw nothing: -1 -> pad
            decoded[:, t] = token
            running &= token != eos
            if bar is not None:
                bar.update(1)
            if t + 1 == steps or not bool(running.any()):  # the one host sync per step
                break
            logits = model(token[:, None], position_ids=(lengths + t)[:, None], cache=cache)[:, 0]
    finally:
        if bar is not None:
            bar.close()
