"""Generation-dynamics probes: two open questions of the Sumi paper (arXiv 2606.19005) about
uniform diffusion, measured on a model's own generations.

* **Revision budget** (:func:`revision_probe`).  A uniform-noise model never locks a token in:
  at the clean end of the grid it can still rewrite its answer.  After an ordinary generation we
  give it ``b`` extra :class:`~discdiff.samplers.Adaptive` steps at the final log-SNR (the grid
  stops moving, so every extra step is a pure "revise the least settled position" step) and
  measure how much of the answer it rewrites, whether the rewrites stick or oscillate, and, with
  a checker, whether they help.
* **Commitment order** (:func:`commitment_probe`).  In what order do answer positions take their
  final token: left to right like an autoregressive model, or some other way?  We record when
  each position commits and how the "ink" (positions already holding their final token) spreads.

Both read the :class:`~discdiff.samplers.Trace` of :func:`sumi.generate` and count only
answer positions ``P_i .. P_i + max_new_tokens - 1`` of row ``i`` (the prompt, the pinned EOS/BOS
and the tail are left out).  The statistics are the Trace's own; nothing is re-implemented here.
Both need a diffusion model (every family but ``"ar"``, which has no denoising steps to trace),
and sample with the model's own kernel (:func:`sumi.family.kernel_for`): under masked noise a
token, once unmasked, is never revisited, so a masked model's revision budget rewrites nothing.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from discdiff.samplers import Trace, sample
from sumi._checks import check_int
from sumi.family import is_diffusion, kernel_for
from sumi.generation import Canvas, GenerationOutput, answers, canvas_length_for, generate, make_sampler, step_grid

Checker = Callable[[int, list[int]], bool]

# the revision run draws from its own stream: seed + a 64-bit golden-ratio increment, so it is
# neither the first pass's stream nor the first pass of a nearby seed (seed + 1, ...)
_REVISION_SEED_OFFSET = 0x9E3779B97F4A7C15
_SCHEDULE = "linear"  # generate's default grid, used for every first pass here
PROBE_CANVAS = 256  # the probes' default canvas: room for a prompt and a 64-token answer, fast to trace


# -- reports ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class BudgetStats:
    """What ``budget`` revision steps did to the answers (answer positions only).

    ``overwrite_rate``: mean over the ``budget`` steps of the fraction of answer positions
    rewritten at that step (0 for budget 0).  ``net_change``: fraction of answer positions whose
    token differs from the first pass's.  ``round_trips``: A -> B -> A round trips per answer
    position (rewrites that were undone).  ``answers``: the answers after the budget, cut at the
    first EOS.  ``correct`` / ``accuracy``: the checker's verdicts and their mean (``None``
    without a checker)."""

    budget: int
    overwrite_rate: float
    net_change: float
    round_trips: float
    answers: list[list[int]]
    correct: list[bool] | None = None
    accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(budget=self.budget, overwrite_rate=self.overwrite_rate, net_change=self.net_change,
                    round_trips=self.round_trips, accuracy=self.accuracy, correct=self.correct, answers=self.answers)


@dataclass(frozen=True, eq=False)
class RevisionReport:
    """:func:`revision_probe`'s result.  ``budgets``: one :class:`BudgetStats` per budget,
    ascending.  ``step_overwrite_rate``: ``[max budget]`` the fraction of answer positions
    rewritten at each revision step (budget ``b``'s ``overwrite_rate`` is the mean of its first
    ``b`` entries).  ``trace``: the revision run (``trace.tokens[0]`` is the first pass's final
    canvas; budget ``b``'s canvas is ``trace.tokens[b]``), on the CPU.  ``answer_mask``: bool
    ``[batch, canvas_length]``, the counted positions."""

    settings: dict[str, Any]
    prompts: list[list[int]]
    budgets: tuple[BudgetStats, ...]
    step_overwrite_rate: list[float]
    trace: Trace = field(repr=False)
    answer_mask: Tensor = field(repr=False)

    def budget(self, b: int) -> BudgetStats:
        """The stats of budget ``b`` (one of ``settings["budgets"]``)."""
        for stats in self.budgets:
            if stats.budget == b:
                return stats
        raise KeyError(f"budget {b} was not probed; probed: {[s.budget for s in self.budgets]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings (seed included), prompts, per-step and per-budget statistics."""
        return dict(probe="revision", settings=dict(self.settings), prompts=self.prompts,
                    step_overwrite_rate=self.step_overwrite_rate, budgets=[s.to_dict() for s in self.budgets])


@dataclass(frozen=True, eq=False)
class CommitmentReport:
    """:func:`commitment_probe`'s result, over answer positions ``j = 0 .. M-1`` of each prompt.

    ``commitment_steps``: long ``[batch, M]``, the step after which position ``j`` never changed
    again (0: never changed; :meth:`~discdiff.samplers.Trace.commitment_step`).
    ``order_correlation``: ``[batch]`` Spearman's rho between position and commitment step (1:
    left to right; NaN when undefined).  ``left_to_right_fraction``: ``[batch]`` the fraction of
    position pairs committed left first (ties 1/2).  ``ink``: bool ``[batch, steps + 1, M]``,
    True where a position already holds its final token at that step (row 0 is the noise canvas;
    the last row is all True).  ``trace``: the whole generation, on the CPU."""

    settings: dict[str, Any]
    prompts: list[list[int]]
    answers: list[list[int]]
    commitment_steps: Tensor
    order_correlation: Tensor
    left_to_right_fraction: Tensor
    ink: Tensor
    trace: Trace = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: settings (seed included), per-prompt statistics and ink, and their means
        (NaN is written as ``null``)."""
        per_prompt = [dict(index=i, prompt=self.prompts[i], answer=self.answers[i],
                           commitment_steps=self.commitment_steps[i].tolist(),
                           order_correlation=_json_float(self.order_correlation[i]),
                           left_to_right_fraction=_json_float(self.left_to_right_fraction[i]),
                           ink=self.ink[i].int().tolist())
                      for i in range(len(self.prompts))]
        summary = dict(order_correlation=_json_float(self.order_correlation.nanmean()),
                       left_to_right_fraction=_json_float(self.left_to_right_fraction.nanmean()),
                       mean_commitment_step=self.commitment_steps.double().mean(0).tolist())
        return dict(probe="commitment", settings=dict(self.settings), summary=summary, prompts=per_prompt)


# -- the probes -------------------------------------------------------------------------------
def revision_probe(model: nn.Module, prompts: list[list[int]], *, budgets: Iterable[int], max_new_tokens: int = 64,
                   canvas_length: int | None = None, steps: int = 64, sampler: str = "ancestral",
                   tokens_per_step: int | None = None, revision_tokens_per_step: int = 1, seed: int = 0,
                   checker: Checker | None = None, progress: bool = False) -> RevisionReport:
    """How much a model rewrites its own answer when given extra steps, and whether it helps.

    First pass: :func:`sumi.generate` (``steps`` steps of ``sampler``, linear grid,
    temperature 1, the tail denoised as released; ``seed`` seeds it).  Then one revision run of
    ``max(budgets)`` :class:`~discdiff.samplers.Adaptive` steps (``revision_tokens_per_step``
    positions each) on the grid ``[lambda_end] * (max(budgets) + 1)``, ``lambda_end`` the last
    log-SNR of the released linear grid (the first pass's final one for the uniform family; a
    family with a mask state ends its first pass at ``+inf``, :func:`sumi.generation.step_grid`,
    and Adaptive's prior weight does not depend on lambda), from the first pass's final canvas
    with its frozen and attention masks.
    Adaptive rewrites the positions where the model most prefers another token regardless of
    lambda, so these are pure revision steps; like the first pass they may spend themselves on the
    tail after the pinned EOS/BOS, which is part of what is measured.  Budget ``b`` is the first
    ``b`` steps of that one run (so budgets are nested: a larger budget continues a smaller one).
    The revision run's generator is seeded from ``seed`` but distinct from the first pass's.
    Adaptive's weight is the model's kernel's prior (:func:`sumi.family.kernel_for`), so under
    masked noise (and hybrid noise with an all-mask prior) an unmasked token is never rewritten.

    ``checker(prompt_index, answer_ids) -> bool`` (optional) judges each answer (cut at the first
    EOS, as :func:`~sumi.generation.answers`); its mean is each budget's accuracy.
    ``canvas_length``: default ``min(256, max_position_embeddings)`` of the model (an explicit
    value beyond the model's positions is a ``ValueError``); the report's settings hold the value used.
    """
    _check_diffusion(model, "revision")
    canvas_length = canvas_length_for(model.config, canvas_length, PROBE_CANVAS)
    budgets = _check_budgets(budgets)
    revision_tokens_per_step = check_int("revision_tokens_per_step", revision_tokens_per_step, 1)
    seed = check_int("seed", seed, 0)
    if checker is not None and not callable(checker):
        raise ValueError(f"checker must be callable(prompt_index, answer_ids) -> bool, got {type(checker).__name__}")
    first = generate(model, prompts, max_new_tokens, canvas_length=canvas_length, steps=steps, sampler=sampler,
                     tokens_per_step=tokens_per_step, schedule=_SCHEDULE, seed=seed, progress=progress)
    lam_end = float(step_grid(_SCHEDULE, steps)[-1])
    trace = _revise(model, first, budgets[-1], revision_tokens_per_step, lam_end, _revision_seed(seed), progress)
    tokens = trace.tokens  # [max budget + 1, batch, L]
    index = _answer_index(first.layout, max_new_tokens)
    # the answer columns only ([max budget + 1, batch, M]): the same statistics as the full trace
    # under the answer mask, without walking the tail's histories for round trips
    answer_tokens = tokens.gather(2, index.expand(tokens.shape[0], -1, -1))
    eos = model.config.eos_token_id
    stats = []
    for b in budgets:
        prefix = Trace.from_tokens(answer_tokens[: b + 1])  # the first b revision steps
        outs = answers(tokens[b], first.layout.prompt_lengths, eos)
        correct = None if checker is None else [bool(checker(i, ans)) for i, ans in enumerate(outs)]
        stats.append(BudgetStats(
            budget=b,
            overwrite_rate=float(prefix.overwrite_rate().mean()) if b else 0.0,
            net_change=float(prefix.net_change()),
            round_trips=float(prefix.round_trips().double().mean()),
            answers=outs, correct=correct,
            accuracy=None if correct is None else sum(correct) / len(correct)))
    settings = dict(max_new_tokens=max_new_tokens, canvas_length=canvas_length, steps=steps, sampler=sampler,
                    schedule=_SCHEDULE, tokens_per_step=tokens_per_step, budgets=list(budgets),
                    revision_tokens_per_step=revision_tokens_per_step, revision_log_snr=lam_end, seed=seed,
                    revision_seed=_revision_seed(seed))
    return RevisionReport(settings=settings, prompts=_rows(first), budgets=tuple(stats),
                          step_overwrite_rate=Trace.from_tokens(answer_tokens).overwrite_rate().tolist(), trace=trace,
                          answer_mask=_answer_mask(first.layout, max_new_tokens))


def commitment_probe(model: nn.Module, prompts: list[list[int]], *, max_new_tokens: int = 64,
                     canvas_length: int | None = None, steps: int = 64, sampler: str = "ancestral",
                     tokens_per_step: int | None = None, seed: int = 0, progress: bool = False) -> CommitmentReport:
    """In what order answer positions commit to their final token, and how the ink spreads.

    One :func:`sumi.generate` run (linear grid, temperature 1, ``seed``) with its trace.
    Per prompt, over its answer positions: the commitment step of each position, Spearman's rho
    between position and commitment step, the left-to-right pair fraction
    (:meth:`~discdiff.samplers.Trace.left_to_right_fraction`), and the ink matrix
    ``ink[s, j] = [z_s(P + j) = z_final(P + j)]`` over steps ``s = 0 .. steps``.  A position may
    hold its final token early by chance and lose it again; from its commitment step on it is
    inked for good.  ``canvas_length``: as in :func:`revision_probe`.
    """
    _check_diffusion(model, "commitment")
    canvas_length = canvas_length_for(model.config, canvas_length, PROBE_CANVAS)
    seed = check_int("seed", seed, 0)
    out = generate(model, prompts, max_new_tokens, canvas_length=canvas_length, steps=steps, sampler=sampler,
                   tokens_per_step=tokens_per_step, schedule=_SCHEDULE, seed=seed, trace=True, progress=progress)
    trace = Trace.from_tokens(out.trace.tokens.cpu())  # host-side statistics (round trips, ranks) run on the CPU
    tokens = trace.tokens  # [steps + 1, batch, L]
    index = _answer_index(out.layout, max_new_tokens)  # [batch, M]
    mask = _answer_mask(out.layout, max_new_tokens)
    inked = (tokens == tokens[-1]).gather(2, index.expand(tokens.shape[0], -1, -1))  # [steps + 1, batch, M]
    settings = dict(max_new_tokens=max_new_tokens, canvas_length=canvas_length, steps=steps, sampler=sampler,
                    schedule=_SCHEDULE, tokens_per_step=tokens_per_step, seed=seed)
    return CommitmentReport(settings=settings, prompts=_rows(out), answers=out.tokens,
                            commitment_steps=trace.commitment_step().gather(1, index),
                            order_correlation=trace.order_correlation(mask),
                            left_to_right_fraction=trace.left_to_right_fraction(mask),
                            ink=inked.permute(1, 0, 2).contiguous(), trace=trace)


# -- helpers ----------------------------------------------------------------------------------
def _check_diffusion(model: nn.Module, probe: str) -> None:
    if not is_diffusion(model.config):
        raise ValueError(f"the {probe} probe needs a diffusion model (it traces denoising steps); this model's family "
                         f"is {model.config.objective!r}, which decodes left to right")


def _check_budgets(budgets: Iterable[int]) -> tuple[int, ...]:
    """Distinct non-negative ints, returned ascending."""
    if isinstance(budgets, (str, bytes)) or not isinstance(budgets, Iterable):
        raise ValueError(f"budgets must be a list of non-negative ints, got {budgets!r}")
    values = list(budgets)
    if not values:
        raise ValueError("budgets is empty: give at least one revision budget, e.g. [0, 8, 16]")
    for b in values:
        check_int("a revision budget (steps)", b, 0)
    if len(set(values)) != len(values):
        raise ValueError(f"budgets repeat a value: {values}")
    return tuple(sorted(values))


def _revision_seed(seed: int) -> int:
    return (seed + _REVISION_SEED_OFFSET) % 2**64


def _rows(out: GenerationOutput) -> list[list[int]]:
    """The prompts as generate used them (validated rows of ints)."""
    layout = out.layout
    return [row[:p] for row, p in zip(layout.tokens.tolist(), layout.prompt_lengths)]


def _answer_index(layout: Canvas, max_new_tokens: int) -> Tensor:
    """Long ``[batch, M]`` on the CPU (where the statistics run): the canvas positions
    ``P_i + j`` of each row's answer budget."""
    return torch.tensor(layout.prompt_lengths, dtype=torch.long).unsqueeze(1) + torch.arange(max_new_tokens)


def _answer_mask(layout: Canvas, max_new_tokens: int) -> Tensor:
    """Bool ``[batch, L]`` on the CPU: True on each row's answer budget."""
    index = _answer_index(layout, max_new_tokens)
    return torch.zeros(layout.tokens.shape, dtype=torch.bool).scatter_(1, index, True)


@contextmanager
def _inference(model: nn.Module) -> Iterator[None]:
    """Eval mode without autograd, restoring the caller's train/eval mode (as generate does)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _revise(model: nn.Module, first: GenerationOutput, budget: int, tokens_per_step: int, lam_end: float,
            seed: int, progress: bool) -> Trace:
    """``budget`` Adaptive steps at ``lam_end`` from the first pass's final canvas; the CPU trace."""
    canvas = first.canvas
    if budget == 0:
        return Trace(canvas.cpu())
    layout = first.layout
    mask = layout.attention_mask

    def denoiser(z: Tensor) -> Tensor:
        return model(z) if mask is None else model(z, attention_mask=mask)

    rule = make_sampler("adaptive", kernel_for(model.config), tokens_per_step=tokens_per_step)
    grid = torch.full((budget + 1,), lam_end, dtype=torch.float64)  # lambda stays put: revision only
    generator = torch.Generator(device=canvas.device).manual_seed(seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=budget, desc="revising", unit="step", file=sys.stderr, leave=False)
    try:
        with _inference(model):
            out = sample(denoiser, rule, canvas, grid, layout.frozen, generator=generator, trace=True,
                         callback=(lambda info: bar.update(1)) if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    return Trace.from_tokens(out.trace.tokens.cpu())


def _json_float(value: Tensor | float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value
