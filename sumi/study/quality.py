"""Sample-quality measures of a generation study: generative perplexity under an autoregressive
judge and the unigram entropy of the samples (Sahoo et al. 2026, arXiv 2602.15014).

Generative perplexity alone rewards degeneration: a sample that repeats one token scores a low
perplexity under most judges.  The unigram entropy of the same samples shows it (it falls
towards 0), so the two are reported side by side.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sumi.evaluate.likelihood import DEFAULT_CANVAS, Scorer, continuation_row, text_rows
from sumi.generation import canvas_length_for

__all__ = ["GenerativePerplexity", "generative_perplexity", "unigram_entropy"]

_REDUCTIONS = ("mean", "pooled")


def _ids(name: str, sample) -> list[int]:
    """``sample`` (a sequence of ints or a 1-D integer tensor) as a list of Python ints."""
    if isinstance(sample, Tensor):
        if sample.dim() != 1 or sample.is_floating_point() or sample.is_complex():
            raise ValueError(f"{name} must be a 1-D integer tensor or a sequence of ints, got a {sample.dim()}-D "
                             f"tensor of dtype {sample.dtype}")
        return sample.tolist()
    ids = list(sample)
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise ValueError(f"{name} must hold token ids (ints >= 0), got {t!r}")
    return ids


def _entropy(counts: Counter) -> float:
    """``H = -sum_t p_t ln p_t`` with ``p_t = c_t / N``, as ``ln N - sum_t c_t ln c_t / N``."""
    total = sum(counts.values())
    return max(0.0, math.log(total) - math.fsum(c * math.log(c) for c in counts.values()) / total)


def unigram_entropy(samples: Sequence, *, reduction: str = "mean") -> float:
    """The entropy, in nats (divide by ``ln 2`` for bits), of the token unigram distribution of
    ``samples``: ``H = -sum_t p_t ln p_t``, ``p_t`` the frequency of id ``t``.

    Low entropy is degeneration (a sample repeating a few tokens): ``ln k`` for ``k`` distinct
    ids used equally often, 0 for one id repeated.

    Args:
        samples: token-id sequences (lists of ints or 1-D integer tensors), one per sample.
        reduction: ``"mean"`` (default): the mean over samples of each sample's own entropy, the
            measure of the diffusion LM evaluations (it sees a sample that repeats one token even
            when every sample repeats a different one); ``"pooled"``: the entropy of all samples'
            tokens counted together.

    Returns:
        The entropy in nats.

    Raises:
        ValueError: no samples, an empty sample, an id that is not an int >= 0, or an unknown
            ``reduction``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    counts = []
    for i, sample in enumerate(samples):
        ids = _ids(f"samples[{i}]", sample)
        if not ids:
            raise ValueError(f"samples[{i}] is empty: its unigram entropy is undefined")
        counts.append(Counter(ids))
    if not counts:
        raise ValueError("no samples: the unigram entropy is undefined")
    if reduction == "pooled":
        return _entropy(sum(counts, Counter()))
    return math.fsum(_entropy(c) for c in counts) / len(counts)


@dataclass(frozen=True)
class GenerativePerplexity:
    """Generative perplexity of samples under a judge.

    Attributes:
        perplexity: ``exp(nats / tokens)``.
        nats_per_token: ``nats / tokens``, the mean NLL per scored token.
        nats: the exact NLL of all scored tokens, summed.
        tokens: the number of scored tokens (every sample token).
        per_sample: each sample's NLL in nats (summed over its tokens).
    """

    perplexity: float
    nats_per_token: float
    nats: float
    tokens: int
    per_sample: list[float]


def generative_perplexity(judge: nn.Module, samples: Sequence, *, prompts: Sequence | None = None,
                          model: nn.Module | None = None, canvas_length: int | None = None, batch_size: int = 4,
                          device: torch.device | str | None = None,
                          progress: bool = False) -> GenerativePerplexity:
    """The generative perplexity of ``samples`` under an autoregressive ``judge``:
    ``exp(sum_s sum_i -ln p_judge(x_i | x_<i) / T)``, the token-weighted mean NLL over all ``T``
    sample tokens (Sahoo et al. 2026, arXiv 2602.15014).

    Each sample is scored as a document ``BOS sample EOS`` (or, with ``prompts``, as the
    continuation ``BOS prompt sample EOS``), only the sample's tokens counted, by the exact-NLL
    scorer of :class:`sumi.evaluate.Scorer` (docs/math.md, "Likelihood"): a sample longer
    than the canvas is cut into windows overlapping by one token (:func:`sumi.evaluate.text_rows`),
    so every token is scored exactly once; a prompt is cut from the left to fit
    (:func:`sumi.evaluate.continuation_row`).

    Args:
        judge: a causal (``ar``) model; its ``config.causal`` must be ``True``.
        samples: token-id sequences (lists of ints or 1-D integer tensors) in the judge's
            vocabulary, without BOS/EOS; at least one token in all.
        prompts: optional, one prompt (token ids, without BOS) per sample, as unscored context.
        model: optional, the model that generated the samples: refused as its own judge.
        canvas_length: tokens per scored row (default ``min(2048, max_position_embeddings)`` of
            the judge).
        batch_size: rows per forward pass of the judge.
        device: where the judge runs (default: the device of its parameters).
        progress: show a progress bar.

    Returns:
        The perplexity, the NLL per token, the totals and each sample's NLL.

    Raises:
        ValueError: the judge is not causal or is ``model``, the prompts do not pair with the
            samples, the samples hold no token, an id outside the judge's vocabulary, or a
            non-finite NLL (:class:`discdiff.NonFiniteError`).
    """
    config = judge.config
    if not config.causal:
        raise ValueError(f"judge must be an autoregressive model (config.causal True, objective 'ar'), got "
                         f"objective {config.objective!r}")
    if model is not None and judge is model:
        raise ValueError("judge is the model that generated the samples: a model is never its own judge")
    samples = [_ids(f"samples[{i}]", s) for i, s in enumerate(samples)]
    if prompts is not None:
        prompts = [_ids(f"prompts[{i}]", p) for i, p in enumerate(prompts)]
        if len(prompts) != len(samples):
            raise ValueError(f"prompts must give one prompt per sample: {len(prompts)} prompts for "
                             f"{len(samples)} samples")
    if sum(map(len, samples)) == 0:
        raise ValueError("the samples hold no tokens to score")
    canvas_length = canvas_length_for(config, canvas_length, DEFAULT_CANVAS, minimum=3)
    rows, owner = [], []
    for i, ids in enumerate(samples):
        if prompts is None:
            sample_rows = text_rows(ids, canvas_length, config)
        else:
            sample_rows = [continuation_row(prompts[i], ids, canvas_length, config.bos_token_id,
                                            config.eos_token_id)] if ids else []
        rows += sample_rows
        owner += [i] * len(sample_rows)
    scorer = Scorer(judge, batch_size=batch_size, device=device)
    per_sample = [0.0] * len(samples)
    for i, value in zip(owner, scorer.nelbo(rows, progress=progress)):
        per_sample[i] += value
    tokens = sum(map(len, samples))
    nats = math.fsum(per_sample)
    return GenerativePerplexity(perplexity=math.exp(nats / tokens), nats_per_token=nats / tokens, nats=nats,
                                tokens=tokens, per_sample=per_sample)
