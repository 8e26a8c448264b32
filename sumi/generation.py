"""Text generation for every model family, one entry point (:func:`generate`), on top of
:mod:`discdiff.samplers` (diffusion families) and :mod:`sumi.decoding` (``"ar"``).

The family is the model's (``model.config.objective``; docs/training.md, "Families"), and its
forward process is :func:`sumi.family.kernel_for` (``Uniform(V)``, ``Masked(V, m)``,
``Hybrid(V, m, shift, scale)``, or none for ``"ar"``): nothing here names a kernel.

**Diffusion families** (``uniform``, ``masked``, ``masked-ce``, ``hybrid``) share the released
inference layout (Sumi, arXiv 2606.19005; docs/math.md, "Sumi recipe facts"), per sequence of a
``[batch, canvas_length]`` canvas::

    | prompt (frozen) | answer budget (max_new_tokens) | EOS | BOS | tail ................ |
      0 .. P-1          P .. P+M-1                      P+M   P+M+1  P+M+2 .. canvas_length-1

* the prompt is frozen at the front.  It is used as given: the caller's tokenizer adds BOS
  (``SumiTokenizer.encode(text, add_bos=True)``), this module adds nothing to it;
* EOS then BOS are pinned (frozen) right after the answer budget, so an answer can be at most
  ``max_new_tokens`` long and the model sees "end of this document, start of the next";
* the tail (the rest of the canvas) starts as noise and is denoised together with the answer,
  as released (the model writes a next document there).  With ``denoise_end=False`` the tail is
  frozen to ``pad_token_id`` *and* hidden from attention (``attention_mask = 0``), so the
  answer is computed as if the canvas ended at the pinned BOS;
* everything not frozen starts as a draw from the family kernel's prior ``pi_{-inf}``
  (docs/math.md, "Prior"; :meth:`~discdiff.kernels.Kernel.sample_prior`): ``uniform``: pure
  uniform noise over the whole vocabulary, special ids included (as released); ``masked`` and
  ``masked-ce``: the mask id everywhere; ``hybrid``: its mixture at ``lambda -> -inf``, all mask
  when ``hybrid_scale > 0``.

A family with a mask state ends its step grid at ``lambda = +inf`` (``alpha = 1``, the data
end): the last step of ``"ancestral"`` and ``"confidence"`` then leaves no position masked (the
posterior at ``alpha = 1`` puts no mass on the mask; docs/math.md, "Step grids" gives the grids,
which otherwise stop at ``alpha = 1 - 1e-4``).  The uniform family keeps the released grids.

Rows may have prompts of different lengths: each row gets its own layout in one batch.  The
answer of a row is the canvas after its prompt, cut at the first EOS (excluded); the pinned
EOS guarantees a cut within the budget.

**Classifier-free guidance** (``guidance_scale = w != 0``, diffusion families): one model is
both the conditional and the unconditional denoiser (trained with condition dropout on prompted
data; docs/training.md, "Conditional training (condition dropout)").  Its unconditional branch
is the same canvas with the prompt hidden from attention: the keys at positions ``0 .. P-1``
(BOS included) are masked, as is whatever the conditional branch masks (the frozen tail of
``denoise_end=False``); RoPE positions are unchanged.  Each step runs the model once on a doubled
batch, ``[conditional rows; unconditional rows]``::

    rows 0 .. B-1     | prompt | answer | EOS | BOS | tail |   attention as without guidance
    rows B .. 2B-1    | hidden | answer | EOS | BOS | tail |   the prompt's keys masked

and the step rule samples from ``log p_w = (1 + w) log p(x | c) - w log p(x)`` renormalized
(:func:`discdiff.guidance.cfg`; docs/math.md, "Guidance").  At ``w = -1`` (the unconditional
distribution) only the unconditional rows run: ``cfg`` reads nothing else.  ``w = 0`` is the
unguided path, unchanged.

What runs per step (nothing is computed that cannot change the answer):

* the model body runs on the attended canvas only: with ``denoise_end=False`` the canvas is cut
  after the last row's pinned BOS (what follows is frozen pad that nothing attends to, so the
  kept positions' logits are the same);
* the head and the step rule run on the positions that can change only: the unfrozen positions
  of each row, gathered once per call into a ``[batch, n]`` sub-canvas (rows with fewer padded
  with a frozen position).  The rule steps the sub-canvas, which is scattered back into the
  canvas before the next model call;
* the attention mask and the RoPE tables are built once per call (:meth:`sumi.Sumi.prepare`).

**The autoregressive family** (``ar``) has no canvas: each row is its prompt followed by what
:func:`sumi.decoding.decode` writes left to right (one position per model call, a KV cache), up to
``max_new_tokens`` or its first EOS; ``prompt + max_new_tokens`` must fit the model's
``max_position_embeddings``.
"""

from __future__ import annotations

import math
import re
import secrets
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from discdiff.errors import NonFiniteError
from discdiff.guidance import cfg
from discdiff.guidance.classifier_free import check_scale
from discdiff.kernels import Kernel, Uniform
from discdiff.samplers import (
    Adaptive,
    Ancestral,
    Confidence,
    Filters,
    Greedy,
    StepInfo,
    StepRule,
    Trace,
    cosine_grid,
    linear_alpha_grid,
)
from discdiff.samplers.categorical import check_temperature
from sumi._checks import check_int
from sumi.decoding import decode
from sumi.family import kernel_for
from sumi.model.transformer import Sumi

SAMPLERS = ("ancestral", "adaptive", "greedy", "confidence")
AR_SAMPLERS = ("ancestral", "greedy")
"""The samplers of the ``"ar"`` family: ``"ancestral"`` draws each next token from the model's
(tempered, filtered) distribution, ``"greedy"`` takes its argmax (temperature 0)."""
SCHEDULES = ("linear", "cosine")
DEFAULT_CANVAS_LENGTH = 2048  # the released inference canvas (docs/math.md, "Sumi recipe facts")
NON_FINITE = "the model produced non-finite values (its weights may be NaN/inf)"


@dataclass(frozen=True)
class GenerationOutput:
    """``tokens``: the answer of each prompt (the ids after the prompt, cut at the first EOS,
    EOS excluded), one list per prompt.  ``canvas``: the final ``[batch, canvas_length]``
    canvas.  ``seed``: the seed of the generator that drew every random number (pass it back as
    ``seed=`` to reproduce the run).  ``trace``: the :class:`~discdiff.samplers.Trace` of every
    step run when ``trace=True`` (``trace.tokens[0]`` is the initial canvas), else ``None``.
    ``layout``: the initial :class:`Canvas` (what was frozen, the attention mask, the prompt
    lengths), so a caller can continue sampling on the same layout (the revision probe).
    ``steps_run``: the model calls made: ``steps``, or fewer when ``stop_when_stable`` stopped
    at a fixed point.

    For an ``"ar"`` model: ``canvas`` is :attr:`sumi.decoding.DecodeOutput.sequences` (long
    ``[batch, max_prompt_len + max_new_tokens]``: each row's prompt, what was decoded, then
    ``pad_token_id``), ``steps_run`` the positions decoded until the last row ended (its first
    EOS, or the budget), ``trace`` and ``layout`` are ``None``."""

    tokens: list[list[int]]
    canvas: Tensor
    seed: int
    trace: Trace | None = None
    layout: Canvas | None = None
    steps_run: int | None = None


@dataclass(frozen=True)
class Canvas:
    """An initial canvas and what stays fixed: ``tokens`` and ``frozen`` are ``[batch, L]``;
    ``attention_mask`` is ``None`` (everything attends) or bool ``[batch, L]``;
    ``prompt_lengths`` are the rows' prompt lengths ``P`` (answer budget at ``P .. P+M-1``)."""

    tokens: Tensor
    frozen: Tensor
    attention_mask: Tensor | None
    prompt_lengths: list[int]


_FIRST_AT = re.compile(r"first at batch (\d+), position (\d+)")


@contextmanager
def blame_the_model(positions: Tensor | None = None) -> Iterator[None]:
    """Re-raise discdiff's :class:`~discdiff.NonFiniteError` (the denoiser's output was NaN/inf)
    as one that says the model's weights are the likely cause (:data:`NON_FINITE`).

    ``positions`` (long ``[batch, n]``): the sampler saw a sub-canvas whose position ``j`` of row
    ``b`` is canvas position ``positions[b, j]``; the message's "first at batch b, position j"
    is rewritten to the canvas position."""
    try:
        yield
    except NonFiniteError as e:
        message = str(e)
        if positions is not None:
            message = _FIRST_AT.sub(lambda m: _canvas_position(m, positions), message)
        raise NonFiniteError(f"{NON_FINITE}: {message}") from None


def _canvas_position(match: re.Match, positions: Tensor) -> str:
    b, j = int(match[1]), int(match[2])
    if b >= positions.shape[0] or j >= positions.shape[1]:
        return match[0]  # not a sub-canvas position: leave the message as it is
    return f"first at batch {b}, position {int(positions[b, j])}"


def canvas_length_for(config, canvas_length: int | None, preferred: int = DEFAULT_CANVAS_LENGTH,
                      minimum: int = 1) -> int:
    """The canvas length to use with a model of ``config``.

    ``None`` (every default): ``min(preferred, config.max_position_embeddings)``, so a small model
    (the tiny preset has 512 positions) works without flags.  An explicit value is checked
    (an int >= ``minimum``) and must fit the model's positions: a ``ValueError`` otherwise, never
    a silent clamp (a number the caller chose is never changed behind their back).
    """
    limit = config.max_position_embeddings
    if canvas_length is None:
        return min(preferred, limit)
    canvas_length = check_int("canvas_length", canvas_length, minimum)
    if canvas_length > limit:
        raise ValueError(f"canvas_length {canvas_length} exceeds the model's max_position_embeddings ({limit}); "
                         f"leave it unset to use min({preferred}, {limit})")
    return canvas_length


def _prompt_rows(prompt_ids) -> list[list[int]]:
    """One prompt (a list of ids or a 1-D tensor) or a batch (a list of lists, or a 2-D tensor)
    as a list of rows of Python ints."""
    if isinstance(prompt_ids, Tensor):
        if prompt_ids.is_floating_point() or prompt_ids.is_complex() or prompt_ids.dtype == torch.bool:
            raise ValueError(f"prompt_ids must hold integer token ids, got dtype {prompt_ids.dtype}")
        if prompt_ids.dim() not in (1, 2):
            raise ValueError(f"a prompt tensor must be 1-D (one prompt) or 2-D (a batch), got shape "
                             f"{tuple(prompt_ids.shape)}")
        prompt_ids = prompt_ids.tolist()
    if isinstance(prompt_ids, (str, bytes)) or not isinstance(prompt_ids, Sequence):
        raise ValueError("prompt_ids must be a list of token ids or a list of such lists (tokenize text first)")
    if len(prompt_ids) == 0:
        raise ValueError("prompt_ids is empty: a prompt needs at least one token (its BOS)")
    rows = [prompt_ids] if not isinstance(prompt_ids[0], (Sequence, Tensor)) else list(prompt_ids)
    out = []
    for i, row in enumerate(rows):
        if isinstance(row, Tensor):
            row = row.tolist()
        if isinstance(row, (str, bytes)) or not isinstance(row, Sequence):
            raise ValueError(f"prompt {i} must be a list of token ids, got {type(row).__name__}")
        if len(row) == 0:
            raise ValueError(f"prompt {i} is empty: a prompt needs at least one token (its BOS)")
        for tok in row:
            if isinstance(tok, bool) or not isinstance(tok, int):
                raise ValueError(f"prompt {i} holds {tok!r}; token ids must be ints")
        out.append([int(t) for t in row])
    return out


def build_canvas(prompts: list[list[int]], max_new_tokens: int, canvas_length: int, *, kernel: Kernel,
                 eos_id: int, bos_id: int, pad_id: int, denoise_end: bool = True,
                 generator: torch.Generator | None = None, device: torch.device | str | None = None) -> Canvas:
    """The initial canvas of the module docstring's layout (inputs already validated): every
    position not frozen is a draw from ``kernel``'s prior ``pi_{-inf}`` (docs/math.md, "Prior")."""
    batch = len(prompts)
    prior = torch.full((batch, canvas_length), -math.inf, dtype=torch.float64, device=device)
    tokens = kernel.sample_pi(prior, generator)  # pi at lambda = -inf: the prior
    frozen = torch.zeros((batch, canvas_length), dtype=torch.bool, device=device)
    attention_mask = None if denoise_end else torch.ones((batch, canvas_length), dtype=torch.bool, device=device)
    for b, prompt in enumerate(prompts):
        p, end = len(prompt), len(prompt) + max_new_tokens
        tokens[b, :p] = torch.tensor(prompt, dtype=tokens.dtype)
        tokens[b, end], tokens[b, end + 1] = eos_id, bos_id
        frozen[b, :p] = True
        frozen[b, end:end + 2] = True
        if not denoise_end:
            tokens[b, end + 2:] = pad_id
            frozen[b, end + 2:] = True
            attention_mask[b, end + 2:] = False
    return Canvas(tokens=tokens, frozen=frozen, attention_mask=attention_mask, prompt_lengths=[len(p) for p in prompts])


def make_sampler(sampler: str, kernel: Kernel | int, *, tokens_per_step: int | None = None, top_k: int | None = None,
                 top_p: float | None = None, min_p: float | None = None) -> StepRule:
    """The step rule named by ``sampler`` on ``kernel`` (an int ``V`` stands for ``Uniform(V)``,
    the released model's kernel; a model's kernel is :func:`sumi.family.kernel_for`).

    ``"ancestral"``: :class:`~discdiff.samplers.Ancestral`; ``"adaptive"``:
    :class:`~discdiff.samplers.Adaptive` committing ``tokens_per_step`` positions per step
    (default 1); ``"greedy"``: :class:`~discdiff.samplers.Greedy`, which takes no filters (they
    never remove the argmax, so they would change nothing); ``"confidence"``:
    :class:`~discdiff.samplers.Confidence` (LLaDA's unmasking), ``tokens_per_step`` positions per
    step or, by default, the share of the masked positions a masked-diffusion step unmasks.  It
    only ever writes masked positions, so it needs a kernel whose prior is all mask (the canvas
    starts fully masked): ``Masked``, or ``Hybrid`` with ``scale > 0``.
    """
    if isinstance(kernel, int) and not isinstance(kernel, bool):
        kernel = Uniform(kernel)
    if not isinstance(kernel, Kernel):
        raise TypeError(f"kernel must be a discdiff Kernel (or a vocabulary size), got {kernel!r}")
    if tokens_per_step is not None:
        check_int("tokens_per_step", tokens_per_step, 1)
    if sampler == "ancestral":
        return Ancestral(kernel, top_k=top_k, top_p=top_p, min_p=min_p)
    if sampler == "adaptive":
        return Adaptive(kernel, tokens_per_step or 1, top_k=top_k, top_p=top_p, min_p=min_p)
    if sampler == "greedy":
        return Greedy(kernel)
    if sampler == "confidence":
        if not _prior_is_all_mask(kernel):
            raise ValueError(f"sampler 'confidence' only unmasks, so it needs a kernel whose prior is all mask (the "
                             f"masked and masked-ce families, or hybrid with hybrid_scale > 0), got {kernel!r}")
        return Confidence(kernel, tokens_per_step, top_k=top_k, top_p=top_p, min_p=min_p)
    raise ValueError(f"unknown sampler {sampler!r}; choose from {', '.join(SAMPLERS)}")


def _prior_is_all_mask(kernel: Kernel) -> bool:
    """Whether ``pi_{-inf}`` puts all its mass on the kernel's mask state."""
    if kernel.mask_id is None:
        return False
    prior = kernel.pi_at(torch.tensor(-math.inf, dtype=torch.float64), torch.tensor(kernel.mask_id))
    return float(prior) == 1.0


def _step_rule(sampler, kernel: Kernel, tokens_per_step, top_k, top_p, min_p) -> StepRule:
    """``sampler`` as a step rule on the model's ``kernel``: a name (:func:`make_sampler`) or a rule
    object used as given (its own filters and settings: combining it with ``tokens_per_step`` or a
    filter is an error), which must be built for the model's kernel (its vocabulary and mask id)."""
    if isinstance(sampler, str):
        return make_sampler(sampler, kernel, tokens_per_step=tokens_per_step, top_k=top_k, top_p=top_p, min_p=min_p)
    if not isinstance(sampler, StepRule):
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)} or a discdiff.samplers.StepRule object, "
                         f"got {sampler!r}")
    settings = {name: value for name, value in (("top_k", top_k), ("top_p", top_p), ("min_p", min_p))
                if value is not None}
    if tokens_per_step not in (None, 1):
        settings["tokens_per_step"] = tokens_per_step
    if settings:
        given = ", ".join(f"{name}={value!r}" for name, value in settings.items())
        raise ValueError(f"{given} configure the named samplers only; a StepRule object carries its own settings "
                         f"(build it with them, e.g. Ancestral(kernel, top_p=0.9)); got sampler={sampler!r}")
    if sampler.vocab_size is not None and sampler.vocab_size != kernel.vocab_size:
        raise ValueError(f"sampler {sampler!r} has {sampler.vocab_size} states but the model's vocabulary has "
                         f"{kernel.vocab_size}")
    if sampler.mask_id != kernel.mask_id:
        raise ValueError(f"sampler {sampler!r} has mask id {sampler.mask_id} but the model's kernel {kernel!r} has "
                         f"{kernel.mask_id}: build the rule on sumi.family.kernel_for(model.config)")
    return sampler


def _check_unmasks_all(sampler: str, tokens_per_step: int, steps: int, prompts: list[list[int]], max_new_tokens: int,
                       canvas_length: int, denoise_end: bool) -> None:
    """From an all-mask canvas, a rule that commits a fixed number of positions per step unmasks
    exactly ``tokens_per_step`` of them while any remain (Confidence writes masked positions only;
    Adaptive's prior weight is 1 on a masked position and 0 on an unmasked one, which is never
    revisited): the canvas ends without a mask exactly when ``steps * tokens_per_step`` covers
    every row's unfrozen positions."""
    unfrozen = max(max_new_tokens + (canvas_length - len(p) - max_new_tokens - 2 if denoise_end else 0)
                   for p in prompts)
    written = steps * tokens_per_step
    if written < unfrozen:
        where = "answer and tail" if denoise_end else "answer"
        raise ValueError(f"sampler {sampler!r} unmasks tokens_per_step={tokens_per_step} positions per step: "
                         f"steps x tokens_per_step = {written} < the {unfrozen} masked positions of a row ({where}), "
                         "so masks would remain; raise steps or tokens_per_step"
                         + (", or pass denoise_end=False" if denoise_end else "")
                         + (", or leave tokens_per_step unset" if sampler == "confidence" else ""))


def _check_stop_when_stable(stop_when_stable, rule: StepRule, temperature) -> bool:
    """``stop_when_stable`` (a bool), allowed only for rules whose step is a function of the tokens
    alone, so that a step that changes nothing is a fixed point (every later step changes nothing
    too): :class:`~discdiff.samplers.Greedy`, and :class:`~discdiff.samplers.Adaptive` at
    temperature 0 with its prior weight (the selection does not depend on the log-SNR)."""
    if not isinstance(stop_when_stable, bool):
        raise ValueError(f"stop_when_stable must be True or False, got {stop_when_stable!r}")
    if not stop_when_stable:
        return False
    if isinstance(rule, Greedy) or (isinstance(rule, Adaptive) and rule.weight == "prior" and temperature == 0):
        return True
    raise ValueError(f"stop_when_stable=True needs a deterministic step rule that depends on the tokens only "
                     f"(sampler='greedy', or 'adaptive' at temperature=0), got {rule!r} at temperature={temperature!r}")


@dataclass(frozen=True)
class _Movable:
    """The positions a generation can change, gathered once per call.  ``index``: long
    ``[batch, n]``, row ``b``'s unfrozen canvas positions in order, padded with position 0 (a
    prompt token, always frozen); ``pad``: bool ``[batch, n]``, True on the padding.
    ``kept``: the canvas length the model sees (shorter than the canvas with ``denoise_end=False``:
    the frozen pad after the last row's pinned BOS is dropped)."""

    index: Tensor
    pad: Tensor
    kept: int


def _movable(prompt_lengths: list[int], max_new_tokens: int, canvas_length: int, denoise_end: bool,
             device: torch.device) -> _Movable:
    rows = []
    for p in prompt_lengths:
        tail = range(p + max_new_tokens + 2, canvas_length) if denoise_end else range(0)
        rows.append([*range(p, p + max_new_tokens), *tail])
    n = max(len(r) for r in rows)
    index = torch.tensor([r + [0] * (n - len(r)) for r in rows], dtype=torch.long, device=device)
    pad = torch.tensor([[False] * len(r) + [True] * (n - len(r)) for r in rows], device=device)
    kept = canvas_length if denoise_end else max(p + max_new_tokens + 2 for p in prompt_lengths)
    return _Movable(index=index, pad=pad, kept=kept)


def _denoiser(model: nn.Module, canvas: Tensor, attention_mask: Tensor | None, index: Tensor):
    """``z -> logits [batch, n, V]`` for a sub-canvas ``z`` at ``index`` of ``canvas`` (whose other
    positions are frozen).  A :class:`~sumi.Sumi` gets its forward plan (mask, RoPE tables) once and
    runs its head at ``index`` only; any other model runs whole and its logits are gathered."""
    full = canvas.clone()  # frozen positions never change: each step writes the sub-canvas into it

    if isinstance(model, Sumi):
        plan = model.prepare(full, attention_mask)

        def denoiser(z: Tensor) -> Tensor:
            full.scatter_(1, index, z)  # the padding entries write position 0's own (frozen) token
            return model(full, plan=plan, output_index=index)
    else:
        def denoiser(z: Tensor) -> Tensor:
            full.scatter_(1, index, z)
            logits = model(full) if attention_mask is None else model(full, attention_mask=attention_mask)
            return logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))
    return denoiser


def _guided_denoiser(model: nn.Module, canvas: Tensor, attention_mask: Tensor | None, prompt_lengths: list[int],
                     index: Tensor, scale: float):
    """``z -> log p_w [batch, n, V]``: classifier-free guidance (docs/math.md, "Guidance";
    :func:`discdiff.guidance.cfg`), ``log p_w = (1 + w) log p(x | c) - w log p(x)`` renormalized,
    ``w = scale != 0``, with ``p(x | c)`` the model on ``canvas`` as :func:`_denoiser` runs it and
    ``p(x)`` the model on the same canvas with each row's prompt (``0 .. P-1``) hidden from
    attention as well.  One model call per step, on the doubled batch ``[cond rows; uncond
    rows]`` (its mask and RoPE tables built once, by :func:`_denoiser`); at ``w = -1`` only the
    unconditional rows run (``cfg`` does not read the conditional logits there)."""
    batch, seq = canvas.shape
    cond = (torch.ones(canvas.shape, dtype=torch.bool, device=canvas.device) if attention_mask is None
            else attention_mask)
    lengths = torch.tensor(prompt_lengths, device=canvas.device)
    uncond = cond & (torch.arange(seq, device=canvas.device) >= lengths[:, None])  # the prompt's keys hidden
    if scale == -1:
        unconditional = _denoiser(model, canvas, uncond, index)

        def guided(z: Tensor) -> Tensor:
            logits = unconditional(z)
            return cfg(logits, logits, scale)  # log_softmax of the unconditional logits
    else:
        both = _denoiser(model, canvas.repeat(2, 1), torch.cat([cond, uncond]), index.repeat(2, 1))

        def guided(z: Tensor) -> Tensor:
            logits = both(torch.cat([z, z]))
            return cfg(logits[:batch], logits[batch:], scale)
    return guided


def _check_guidance_scale(guidance_scale: object) -> float:
    """``guidance_scale`` by discdiff's guidance-scale check (a finite number ``>= -1``), as a
    float; any failure is a ``ValueError`` naming ``guidance_scale`` (sumi's convention)."""
    try:
        return check_scale(guidance_scale)
    except (TypeError, ValueError) as e:
        message = str(e)  # "scale must be ...": the check names its own argument "scale"
        raise ValueError(f"guidance_{message}" if message.startswith("scale ")
                         else f"guidance_scale: {message}") from None


def step_grid(schedule: str, steps: int, kernel: Kernel | None = None) -> Tensor:
    """Sumi's step grids (docs/math.md, "Step grids"): ``"linear"`` in alpha or ``"cosine"``;
    ``steps + 1`` ascending log-SNRs.  With a ``kernel`` that has a mask state the last one is
    ``+inf`` (``alpha = 1``, the data end), so the last step of an exact rule unmasks every
    position that is still masked; without one (``uniform``) the grid is the released one."""
    check_int("steps", steps, 1)
    if schedule == "linear":
        grid = linear_alpha_grid(steps)
    elif schedule == "cosine":
        grid = cosine_grid(steps)
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose from {', '.join(SCHEDULES)}")
    if kernel is not None and kernel.mask_id is not None:
        grid[-1] = math.inf
    return grid


def _model_device(model: nn.Module, device) -> torch.device:
    param = next(model.parameters(), None)
    if device is None:
        return param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if param is not None and (param.device.type != device.type or
                              (device.index is not None and param.device.index != device.index)):
        raise ValueError(f"the model is on {param.device} but device={device} was asked for; move the model first")
    return device


def answers(canvas: Tensor, prompt_lengths: list[int], eos_id: int) -> list[list[int]]:
    """Per row: the ids after the prompt, up to (excluding) the first EOS."""
    out = []
    for row, p in zip(canvas.tolist(), prompt_lengths):
        rest = row[p:]
        out.append(rest[:rest.index(eos_id)] if eos_id in rest else rest)
    return out


def generate(model: nn.Module, prompt_ids, max_new_tokens: int, *, canvas_length: int | None = None, steps: int = 128,
             sampler: str | StepRule = "ancestral", tokens_per_step: int | None = None, schedule: str = "linear",
             temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None, seed: int | None = None, denoise_end: bool = True, trace: bool = False,
             stop_when_stable: bool = False, progress: bool = False, guidance_scale: float = 0.0,
             device: torch.device | str | None = None) -> GenerationOutput:
    """Generate an answer to each prompt with a Sumi model of any family (layouts: module docstring).

    ``model``: a :class:`sumi.Sumi` (or any module whose ``config`` is a
    :class:`sumi.configs.ModelConfig`, called as ``model(input_ids, attention_mask=None) ->
    logits``; such a module runs its head everywhere and the logits of the positions that can
    change are gathered); it runs in eval mode under ``torch.no_grad()`` and its train/eval mode
    is restored afterwards.  Its family (``config.objective``) picks the path: diffusion
    families sample a canvas, ``"ar"`` decodes left to right (below).
    ``prompt_ids``: one prompt (a list of ids, BOS included: this function adds nothing) or a
    batch (a list of lists, lengths may differ).  ``max_new_tokens``: the answer budget.
    ``canvas_length``: canvas positions (default ``min(2048, max_position_embeddings)`` of the
    model; an explicit value beyond the model's positions is a ``ValueError``).
    ``sampler``: ``"ancestral"`` (exact posterior, the default), ``"adaptive"``
    (``tokens_per_step`` most confident positions per step, default 1), ``"greedy"`` (argmax
    everywhere, every step; ignores ``temperature`` and the filters) or ``"confidence"`` (LLaDA's
    unmasking: ``tokens_per_step`` masked positions per step, by default the share a
    masked-diffusion step unmasks; families whose prior is all mask only), each on the model's
    kernel (:func:`sumi.family.kernel_for`); or any :class:`discdiff.samplers.StepRule` object
    built on that kernel (its vocabulary and mask id are checked: ``TauLeaping(Uniform(V))``, an
    ``Adaptive`` with other settings, your own rule), used as given: its filters and settings are
    its own, so ``tokens_per_step`` and the filters must be left unset.  The rule steps the
    ``[batch, n]`` sub-canvas of the positions that can change (module docstring), with the
    padding marked frozen; the canvas starts from the kernel's prior.  A family with a mask state
    leaves no mask id in the canvas after ``"ancestral"``, ``"greedy"`` and ``"confidence"`` by
    share (its grid ends at ``alpha = 1``); from an all-mask prior, ``"adaptive"`` and
    ``"confidence"`` with ``tokens_per_step`` unmask exactly that many positions per step, so
    ``steps * tokens_per_step`` below a row's unfrozen positions (answer, plus the tail when it
    is denoised) is a ``ValueError``.  Under uniform noise ``"adaptive"`` writes at most
    ``steps * tokens_per_step`` positions, and those it never writes keep their noise.
    ``schedule``: ``"linear"`` (linear in alpha) or ``"cosine"`` (:func:`step_grid`); ``steps``
    model calls.  ``top_k``, ``top_p``, ``min_p``: truncation of the model's distribution before
    sampling.  ``seed``: seeds a private ``torch.Generator`` (a fresh random seed when ``None``,
    returned in the output); the global RNGs are never used.  ``denoise_end``: denoise the tail
    after the pinned BOS with the answer (released behaviour), or freeze it to pad ids hidden
    from attention (the model then runs on the canvas up to the last pinned BOS only).
    ``stop_when_stable``: stop after the first step that changes no token and report the steps
    run in ``GenerationOutput.steps_run``; allowed for deterministic rules whose step depends on
    the tokens only (``"greedy"``, and ``"adaptive"`` at ``temperature=0``), for which such a step
    is a fixed point, so the answer is exactly that of the full run.  It reads one bool from the
    device per step (a host sync, only when on).  ``progress``: a tqdm bar over steps on stderr.
    ``guidance_scale``: ``w``, a finite number ``>= -1``, for classifier-free guidance (module
    docstring; docs/math.md, "Guidance"): the rule samples from
    ``log p_w = (1 + w) log p(x | c) - w log p(x)`` renormalized (:func:`discdiff.guidance.cfg`),
    ``p(x)`` being the model on the same canvas with each row's prompt hidden from attention,
    both from one model call per step on ``2 batch`` rows.  ``0`` (the default): no guidance, the unguided path; ``-1``: the
    unconditional distribution; ``> 0``: pushed toward what the prompt makes more likely.  It
    needs a model trained with condition dropout on prompted data (docs/training.md,
    "Conditional training (condition dropout)"); diffusion families only.
    ``device``: where the canvas lives (default: the model's device; the model is not moved).

    An ``"ar"`` model (``config.causal``) is decoded by :func:`sumi.decoding.decode`, one new
    position per model call with a KV cache.  What applies: ``max_new_tokens`` (each answer
    stops at its first EOS or there), ``temperature``, ``top_k``, ``top_p``, ``min_p``,
    ``seed``, ``progress``, ``device``, and ``sampler`` ``"ancestral"`` (draw each token; the
    default) or ``"greedy"`` (the argmax: temperature 0).  ``prompt + max_new_tokens`` must fit
    the model's ``max_position_embeddings``.  ``steps``, ``schedule``, ``denoise_end`` and
    ``canvas_length`` do not apply and are ignored (a ``canvas_length`` is still checked to fit
    the model's positions); ``"adaptive"``, ``"confidence"``, a StepRule object,
    ``tokens_per_step`` other than 1, ``stop_when_stable=True``, ``trace=True`` and
    ``guidance_scale`` other than 0 are errors.

    Raises ``ValueError`` for bad inputs (before any model call), and
    :class:`discdiff.NonFiniteError` (a ``ValueError``) starting with :data:`NON_FINITE` when the
    model's first logits hold NaN/inf (checked once, by the sampler's first step; the position
    named is the canvas position).
    """
    config = model.config
    vocab_size = config.vocab_size
    prompts = _prompt_rows(prompt_ids)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, 1)
    for i, prompt in enumerate(prompts):
        lo, hi = min(prompt), max(prompt)
        if lo < 0 or hi >= vocab_size:
            raise ValueError(f"prompt {i} holds ids in [{lo}, {hi}], outside [0, {vocab_size}) of the model's vocabulary")
    temperature = check_temperature(temperature)
    guidance_scale = _check_guidance_scale(guidance_scale)
    kernel = kernel_for(config)
    if kernel is None:
        return _decode(model, prompts, max_new_tokens, canvas_length=canvas_length, sampler=sampler,
                       tokens_per_step=tokens_per_step, temperature=temperature, top_k=top_k, top_p=top_p,
                       min_p=min_p, seed=seed, trace=trace, stop_when_stable=stop_when_stable, progress=progress,
                       guidance_scale=guidance_scale, device=device)
    canvas_length = canvas_length_for(config, canvas_length)
    for i, prompt in enumerate(prompts):
        need = len(prompt) + max_new_tokens + 2
        if need > canvas_length:
            raise ValueError(f"prompt {i} ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) + EOS/BOS "
                             f"needs {need} positions, more than canvas_length={canvas_length}")
    log_snrs = step_grid(schedule, steps, kernel)
    rule = _step_rule(sampler, kernel, tokens_per_step, top_k, top_p, min_p)
    if sampler in ("adaptive", "confidence") and rule.tokens_per_step is not None and _prior_is_all_mask(kernel):
        _check_unmasks_all(sampler, rule.tokens_per_step, steps, prompts, max_new_tokens, canvas_length, denoise_end)
    stop_when_stable = _check_stop_when_stable(stop_when_stable, rule, temperature)
    device = _model_device(model, device)
    seed, generator = _seeded(seed, device)

    canvas = build_canvas(prompts, max_new_tokens, canvas_length, kernel=kernel,
                          eos_id=config.eos_token_id, bos_id=config.bos_token_id, pad_id=config.pad_token_id,
                          denoise_end=denoise_end, generator=generator, device=device)
    movable = _movable(canvas.prompt_lengths, max_new_tokens, canvas_length, denoise_end, device)
    index = movable.index
    mask = None
    if not denoise_end and any(p + max_new_tokens + 2 < movable.kept for p in canvas.prompt_lengths):
        mask = canvas.attention_mask[:, :movable.kept]  # some row ends before the kept canvas does
    log_snrs = log_snrs.to(device=device, dtype=torch.float64)
    recorder = Trace(canvas.tokens) if trace else None

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="denoising", unit="step", file=sys.stderr, leave=False)
    was_training = model.training
    model.eval()
    z = canvas.tokens.gather(1, index)
    steps_run = 0
    try:
        with torch.no_grad(), blame_the_model(index):
            if guidance_scale == 0:
                denoiser = _denoiser(model, canvas.tokens[:, :movable.kept], mask, index)
            else:
                denoiser = _guided_denoiser(model, canvas.tokens[:, :movable.kept], mask, canvas.prompt_lengths,
                                            index, guidance_scale)
            before = canvas.tokens
            for i in range(steps):
                lam_t, lam_s = log_snrs[i], log_snrs[i + 1]
                out = rule.step_info(denoiser(z), z, lam_t, lam_s, movable.pad, temperature, generator,
                                     validate=i == 0)  # inputs checked once; later steps reuse the shapes
                steps_run += 1
                if recorder is not None:
                    after = canvas.tokens.scatter(1, index, out.tokens)
                    selected = torch.zeros_like(canvas.frozen).scatter_(1, index, out.selected)
                    recorder(StepInfo(index=i, lam_t=lam_t, lam_s=lam_s, before=before, after=after,
                                      changed=after != before, selected=selected))
                    before = after
                if bar is not None:
                    bar.update(1)
                # a fixed point of a deterministic rule: every later step would change nothing
                stable = stop_when_stable and not bool((out.tokens != z).any())  # host sync, only when asked
                z = out.tokens
                if stable:
                    break
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    final = canvas.tokens.scatter(1, index, z)
    return GenerationOutput(tokens=answers(final, canvas.prompt_lengths, config.eos_token_id), canvas=final,
                            seed=seed, trace=recorder, layout=canvas, steps_run=steps_run)


def _seeded(seed: int | None, device: torch.device) -> tuple[int, torch.Generator]:
    """``seed`` (checked; a fresh random one when ``None``) and a private generator seeded with it."""
    if seed is None:
        seed = secrets.randbits(63)  # not torch.seed(): that would reseed the global RNG
    else:
        check_int("seed", seed, 0)
    return seed, torch.Generator(device=device).manual_seed(seed)


def _decode(model: nn.Module, prompts: list[list[int]], max_new_tokens: int, *, canvas_length, sampler, tokens_per_step,
            temperature: float, top_k, top_p, min_p, seed, trace, stop_when_stable, progress,
            guidance_scale: float, device) -> GenerationOutput:
    """:func:`generate` for an ``"ar"`` model: the arguments that apply go to
    :func:`sumi.decoding.decode`; those that cannot are refused before any model call."""
    config = model.config
    if canvas_length is not None:
        canvas_length_for(config, canvas_length)  # it does not apply, but is never a size the model cannot hold
    limit = config.max_position_embeddings
    for i, prompt in enumerate(prompts):
        if len(prompt) + max_new_tokens > limit:
            raise ValueError(f"prompt {i} ({len(prompt)} tokens) + max_new_tokens ({max_new_tokens}) needs "
                             f"{len(prompt) + max_new_tokens} positions, more than the model's "
                             f"max_position_embeddings ({limit})")
    refuse = "does not apply to an 'ar' model, which decodes left to right, one token per model call"
    if not isinstance(sampler, str):
        raise ValueError(f"a StepRule object (sampler={sampler!r}) {refuse}; use sampler='ancestral' (sample) or "
                         "'greedy' (argmax)")
    if sampler not in AR_SAMPLERS:
        raise ValueError(f"sampler {sampler!r} {refuse}; choose from ancestral (sample), greedy (argmax)")
    if tokens_per_step not in (None, 1):
        raise ValueError(f"tokens_per_step={tokens_per_step!r} {refuse}; leave it unset")
    for name, value in (("stop_when_stable", stop_when_stable), ("trace", trace)):
        if value is not False:
            raise ValueError(f"{name}={value!r} {refuse}; leave it False")
    if guidance_scale != 0:
        raise ValueError(f"guidance_scale={guidance_scale!r} {refuse}: classifier-free guidance applies to the "
                         "diffusion families (uniform, masked, masked-ce, hybrid), whose unconditional branch hides "
                         "the prompt from attention; leave it 0")
    Filters(top_k, top_p, min_p)  # checked here, before any model call
    device = _model_device(model, device)
    seed, generator = _seeded(seed, device)
    greedy = sampler == "greedy"  # the argmax: filters never remove it
    with blame_the_model():
        out = decode(model, prompts, max_new_tokens, generator=generator, temperature=0.0 if greedy else temperature,
                     top_k=None if greedy else top_k, top_p=None if greedy else top_p,
                     min_p=None if greedy else min_p, progress=progress)
    # a row ends at its first EOS (decoded, not kept) or at the budget
    steps_run = max(min(len(tokens) + 1, max_new_tokens) for tokens in out.tokens)
    return GenerationOutput(tokens=out.tokens, canvas=out.sequences, seed=seed, steps_run=steps_run)
