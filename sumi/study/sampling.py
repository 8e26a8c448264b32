"""Samples of a study and their quality: generated in seeded batches, timed, then judged.

Shared by the frontier (:mod:`sumi.study.frontier`) and the canvas study
(:mod:`sumi.study.canvas`).  Seeds: the samples are generated in batches of ``batch_size``; the
batch whose first sample is sample ``j`` uses seed ``seed + j`` (with ``batch_size=1``, sample
``i`` uses ``seed + i``).  Timings are of :func:`sumi.generate` alone (on CUDA, synchronized).
Quality: generative perplexity under an autoregressive judge and the unigram entropy of the
samples (Sahoo et al. 2026, arXiv 2602.15014; :mod:`sumi.study.quality`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Drawn", "adaptive_tokens_per_step", "draw_samples", "judge_samples", "sampler_applies", "sync"]

_AR_SAMPLERS = ("ancestral", "greedy")


def sampler_applies(sampler: str, config) -> bool:
    """Whether ``sampler`` (a name of :data:`sumi.generation.SAMPLERS`) can generate with a model
    of ``config``'s family: ``ar`` takes ``ancestral`` and ``greedy``; ``confidence`` only unmasks,
    so it needs a family whose prior is all mask (``masked``, ``masked-ce``, ``hybrid`` with
    ``hybrid_scale > 0``); every other diffusion sampler applies to every diffusion family."""
    from sumi.family import kernel_for
    from sumi.generation import make_sampler

    kernel = kernel_for(config)
    if kernel is None:
        return sampler in _AR_SAMPLERS
    try:
        make_sampler(sampler, kernel)
    except ValueError:
        return False
    return True


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a wall-clock time is the work's."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def adaptive_tokens_per_step(canvas_length: int, prompt_length: int, steps: int) -> int:
    """``ceil(n / steps)``, ``n = canvas_length - prompt_length - 2`` the positions a row may
    change (all but the prompt and the pinned EOS/BOS): ``adaptive`` then writes the whole canvas
    within its step budget (at one position per step, few steps would leave most of a uniform
    canvas as noise, and are refused for a masked one)."""
    return max(1, math.ceil((canvas_length - prompt_length - 2) / steps))


@dataclass(frozen=True)
class Drawn:
    """``answers``: each sample's ids (cut at EOS); ``seconds``: generation wall time, all batches;
    ``passes``: each batch's model calls (``steps_run``)."""

    answers: list[list[int]]
    seconds: float
    passes: list[int]

    @property
    def forward_passes(self) -> float | int:
        """The model calls that generate one batch (the mean over batches when they differ)."""
        return self.passes[0] if len(set(self.passes)) == 1 else sum(self.passes) / len(self.passes)


def draw_samples(model, prompts: Sequence[Sequence[int]], max_new_tokens: int, *, batch_size: int, seed: int,
                 sampler: str, steps: int | None = None, canvas_length: int | None = None,
                 tokens_per_step: int | None = None, device: torch.device, progress: bool = False) -> Drawn:
    """One sample per prompt of ``prompts`` (ids, BOS included) with :func:`sumi.generate`, in
    seeded batches (module docstring), timed.  ``steps``/``canvas_length``/``tokens_per_step``
    apply to diffusion models; leave them ``None`` for an ``ar`` model."""
    from sumi.generation import generate

    canvas = {} if steps is None else {"steps": steps, "canvas_length": canvas_length,
                                       "tokens_per_step": tokens_per_step}
    answers: list[list[int]] = []
    passes, seconds = [], 0.0
    for start in range(0, len(prompts), batch_size):
        sync(device)
        began = time.perf_counter()
        out = generate(model, [list(p) for p in prompts[start:start + batch_size]], max_new_tokens, sampler=sampler,
                       seed=seed + start, progress=progress, device=device, **canvas)
        sync(device)
        seconds += time.perf_counter() - began
        answers += out.tokens
        passes.append(out.steps_run)
    return Drawn(answers, seconds, passes)


def judge_samples(judge, answers: Sequence[Sequence[int]], *, tokenizer, judge_tokenizer, same: bool,
                  prompts: Sequence[Sequence[int]] | None = None, model=None, device: torch.device) -> dict:
    """The quality of ``answers`` under ``judge``: ``gen_ppl``, ``judge_nats_per_token``,
    ``tokens`` (scored), ``entropy`` (mean per-sample unigram entropy, nats) and
    ``empty_samples``; the measures are ``None`` when every sample is empty.

    ``same``: the model and the judge share a tokenizer, and the answers are scored as they are;
    otherwise each answer is decoded with ``tokenizer`` (special tokens dropped) and encoded with
    ``judge_tokenizer``.  ``prompts``: the judge's ids of each sample's prompt (scored as context).
    ``model``: the model that generated them (never its own judge).

    Raises:
        ValueError: the judge cannot score the samples (an id beyond its vocabulary, ...).
    """
    from sumi.study.quality import generative_perplexity, unigram_entropy

    scored = [list(a) for a in answers] if same else \
        [judge_tokenizer.encode(tokenizer.decode(a), add_bos=False) for a in answers]
    kept = [i for i, a in enumerate(scored) if a]
    row = {"gen_ppl": None, "judge_nats_per_token": None, "tokens": 0, "entropy": None,
           "empty_samples": len(scored) - len(kept)}
    if kept:
        quality = generative_perplexity(judge, [scored[i] for i in kept], model=model, device=device,
                                        prompts=None if prompts is None else [prompts[i] for i in kept])
        row.update(gen_ppl=quality.perplexity, judge_nats_per_token=quality.nats_per_token, tokens=quality.tokens,
                   entropy=unigram_entropy([scored[i] for i in kept]))
    return row
