"""NELBO and bits per byte of text under a Sumi model (the released evaluation's canvas handling).

The NELBO is :func:`discdiff.likelihood.nelbo` under the training kernel (uniform noise over the
full vocabulary): a time grid of ``points`` midpoints under the linear-alpha schedule (128 in
the Sumi and GIDD evaluations), optionally at the effective SNR.  It upper-bounds the negative
log-likelihood, so ``-NELBO`` is what a log-likelihood benchmark receives.

Canvas handling (as in training, where documents are packed ``BOS text EOS``): a row holds
at most ``canvas_length`` tokens.  A document is the stream ``BOS text EOS`` cut into
consecutive windows of ``canvas_length`` tokens, scored independently; only text tokens count,
BOS and EOS are held clean as delimiters (frozen).  A continuation given a context is the row
``BOS context continuation EOS`` (the context cut from the left to fit), with only the
continuation noised and counted: the conditional NELBO.  Rows shorter than the batch's
longest are padded with ``pad_token_id`` hidden from attention (``attention_mask = 0``), so a
row scores as if it were alone on its canvas.

Bits per byte = total NELBO / (ln 2 x total UTF-8 bytes of the texts).

Throughput: a :class:`sumi.Sumi` is scored from its final hidden states and its head
(:class:`discdiff.likelihood.HiddenStates`, the fused loss of ``discdiff.losses.gidd_from_hidden``:
the ``[tokens, V]`` logits are never built), and several time points of a batch share one
forward pass (``tokens_per_pass``, :func:`default_tokens_per_pass`).  Neither changes the
estimate: the noise is drawn point by point as before, so the numbers agree with one point per
pass on the logits up to float32 rounding.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from discdiff.kernels import Uniform
from discdiff.likelihood import HiddenStates, nelbo
from sumi._checks import check_int
from sumi.generation import DEFAULT_CANVAS_LENGTH, blame_the_model, canvas_length_for
from sumi.model import Sumi

DEFAULT_POINTS = 128
DEFAULT_CANVAS = DEFAULT_CANVAS_LENGTH  # preferred; a model with fewer positions gets all of its own
# Tokens per forward pass when not given.  CPU: passes of 512 to 32,768 positions scored the tiny
# model at the same speed within noise (canvas 128 and 512), and 1 or 2 points of [4, 512] the
# 150M shapes at V = 100,278 (2-core AMD EPYC VM, 1 thread, CPU time); memory grows with the
# pass.  Accelerators: large passes keep the device busy (a 7B forward at 65,536 tokens holds a
# few GB of activations in bfloat16; not measured on a GPU).
_DEFAULT_TOKENS_PER_PASS = {"cpu": 8192, "accelerator": 65536}


def default_tokens_per_pass(device: torch.device | str) -> int:
    """Canvas positions per forward pass of the :class:`Scorer` when not given: 8192 on the CPU,
    65,536 on an accelerator."""
    return _DEFAULT_TOKENS_PER_PASS["cpu" if torch.device(device).type == "cpu" else "accelerator"]


@dataclass(frozen=True)
class Row:
    """One canvas row: ``tokens`` (at most ``canvas_length``) and which of them are scored."""

    tokens: list[int]
    scored: list[bool]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.scored) or not self.tokens:
            raise ValueError("a row needs as many scored flags as tokens, and at least one token")


def document_rows(ids: Sequence[int], canvas_length: int, bos_id: int, eos_id: int) -> list[Row]:
    """The windows of ``BOS ids EOS`` (``canvas_length`` tokens each, the last shorter), with the
    text tokens scored and the delimiters frozen."""
    check_int("canvas_length", canvas_length, 1)
    stream = [bos_id, *ids, eos_id]
    scored = [False, *([True] * len(ids)), False]
    return [Row(stream[i:i + canvas_length], scored[i:i + canvas_length])
            for i in range(0, len(stream), canvas_length)]


def continuation_row(context: Sequence[int], continuation: Sequence[int], canvas_length: int, bos_id: int,
                     eos_id: int) -> Row:
    """``BOS context continuation EOS`` with only the continuation scored; the context (BOS
    first) is cut from the left when the row would exceed ``canvas_length``."""
    check_int("canvas_length", canvas_length, 1)
    if not continuation:
        raise ValueError("the continuation is empty (nothing to score)")
    room = canvas_length - len(continuation) - 1  # the EOS after the continuation
    if room < 0:
        raise ValueError(f"the continuation ({len(continuation)} tokens) + EOS does not fit a canvas of "
                         f"{canvas_length} positions")
    prefix = [bos_id, *context][-room:] if room else []
    tokens = [*prefix, *continuation, eos_id]
    return Row(tokens, [False] * len(prefix) + [True] * len(continuation) + [False])


def pad_rows(rows: Sequence[Row], pad_id: int, device: torch.device | str) -> tuple[Tensor, Tensor, Tensor]:
    """``rows`` as one batch padded to the longest: token ids ``[batch, L]`` (``pad_id`` after each
    row's end), which positions are scored, and which hold a token (bool ``[batch, L]``)."""
    length = max(len(r.tokens) for r in rows)
    x = torch.full((len(rows), length), pad_id, dtype=torch.long)
    scored = torch.zeros((len(rows), length), dtype=torch.bool)
    present = torch.zeros((len(rows), length), dtype=torch.bool)
    for b, row in enumerate(rows):
        n = len(row.tokens)
        x[b, :n] = torch.tensor(row.tokens)
        scored[b, :n] = torch.tensor(row.scored)
        present[b, :n] = True
    return x.to(device), scored.to(device), present.to(device)


class Scorer:
    """NELBO (nats, summed over scored tokens) of canvas rows under ``model``, in batches.

    ``model``: a :class:`sumi.Sumi` (called as ``model(ids, attention_mask=mask,
    return_hidden=True)``, its loss fused with ``model.lm_head.weight``), or any module called
    as ``model(ids, attention_mask=mask)`` that returns logits; it runs in eval mode under
    ``torch.no_grad()`` and its mode is restored.  ``points``: time points; ``effective_snr``:
    evaluate each point at the realized clean fraction (docs/math.md, "Likelihood"); ``seed``:
    the noise of every estimate (the same rows in the same order and batch size give the same
    numbers).  Rows are scored longest first, ``batch_size`` at a time; one forward pass holds
    as many time points of those rows as fit in ``tokens_per_pass`` canvas positions (at least
    one; default :func:`default_tokens_per_pass` of the device).  ``tokens_per_pass`` changes
    the speed and the memory, not the estimate (up to float32 rounding).

    Non-finite numbers are errors, not results: a batch whose NELBO is NaN (the model's logits
    were NaN/inf at some point) raises :class:`discdiff.NonFiniteError` (a ``ValueError``)
    starting with :data:`sumi.generation.NON_FINITE`, checked once per batch.
    """

    def __init__(self, model: nn.Module, *, points: int = DEFAULT_POINTS, effective_snr: bool = False,
                 batch_size: int = 4, seed: int = 0, device: torch.device | str | None = None,
                 tokens_per_pass: int | None = None) -> None:
        self.model = model
        self.points = check_int("points", points, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.seed = check_int("seed", seed, 0)
        self.effective_snr = bool(effective_snr)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.tokens_per_pass = (default_tokens_per_pass(self.device) if tokens_per_pass is None
                                else check_int("tokens_per_pass", tokens_per_pass, 1))
        self.kernel = Uniform(model.config.vocab_size)

    def nelbo(self, rows: Sequence[Row], *, progress: bool = False) -> list[float]:
        """The NELBO of each row in nats (its scored tokens summed), in the order given."""
        config = self.model.config
        for i, row in enumerate(rows):
            if len(row.tokens) > config.max_position_embeddings:
                raise ValueError(f"row {i} has {len(row.tokens)} tokens, more than the model's "
                                 f"max_position_embeddings ({config.max_position_embeddings})")
            lo, hi = min(row.tokens), max(row.tokens)
            if lo < 0 or hi >= config.vocab_size:
                raise ValueError(f"row {i} holds ids in [{lo}, {hi}], outside [0, {config.vocab_size})")
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
        out = [0.0] * len(rows)
        generator = torch.Generator(self.device).manual_seed(self.seed)
        bar = _bar(len(rows) * self.points, progress)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start:start + self.batch_size]
                    totals = self._batch([rows[i] for i in chunk], generator, None if bar is None else bar.update)
                    for i, value in zip(chunk, totals.tolist()):
                        out[i] = value
        finally:
            self.model.train(was_training)
            if bar is not None:
                bar.close()
        return out

    def _batch(self, rows: list[Row], generator: torch.Generator, progress: Callable[[int], object] | None) -> Tensor:
        """The NELBO of each of ``rows`` (one padded batch); ``progress(n)`` after each pass, ``n``
        the (row, point) pairs it scored."""
        x, counted, present = pad_rows(rows, self.model.config.pad_token_id, self.device)
        points_per_pass = min(self.points, max(1, self.tokens_per_pass // x.numel()))
        padded = any(len(row.tokens) < x.shape[1] for row in rows)
        # one mask for the largest pass (points stacked point-major); a smaller last pass takes its head
        mask = present.long().repeat(points_per_pass, 1) if padded else None
        model, fused = self.model, isinstance(self.model, Sumi)

        def denoiser(z: Tensor) -> Tensor | HiddenStates:
            kwargs = {} if mask is None else {"attention_mask": mask[:z.shape[0]]}
            if fused:  # the loss from the hidden states and the head: no [tokens, V] logits
                return HiddenStates(model(z, return_hidden=True, **kwargs), model.lm_head.weight)
            return model(z, **kwargs)

        scored = 0  # time points scored so far

        def callback(done: int, points: int) -> None:
            nonlocal scored
            progress(len(rows) * (done - scored))
            scored = done

        with blame_the_model():
            result = nelbo(denoiser, self.kernel, x, points=self.points, effective_snr=self.effective_snr,
                           frozen=~counted, generator=generator, callback=None if progress is None else callback,
                           points_per_call=points_per_pass)
        return result.per_sequence.double().cpu()


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="nelbo", unit="pass", file=sys.stderr, leave=False)


@dataclass(frozen=True)
class NelboReport:
    """Totals over the texts: ``nats`` (the NELBO), ``tokens`` (scored), ``bytes`` (UTF-8);
    ``nelbo_per_token`` = nats / tokens; ``bits_per_byte`` = nats / (ln 2 x bytes);
    ``per_document``: (nats, tokens, bytes) of each text; the settings used."""

    documents: int
    tokens: int
    bytes: int
    nats: float
    nelbo_per_token: float
    bits_per_byte: float
    per_document: list[tuple[float, int, int]]
    canvas_length: int
    points: int
    effective_snr: bool
    seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def nelbo_texts(model: nn.Module, tokenizer, texts: Sequence[str], *, canvas_length: int | None = None,
                points: int = DEFAULT_POINTS, effective_snr: bool = False, batch_size: int = 4, seed: int = 0,
                progress: bool = False, device: torch.device | str | None = None,
                tokens_per_pass: int | None = None) -> NelboReport:
    """NELBO per token and bits per byte of ``texts`` (each one document; see the module docstring).

    ``tokenizer``: a :class:`sumi.SumiTokenizer` (``encode(text, add_bos=False)``); the model's
    BOS/EOS ids delimit the documents.  ``canvas_length``: tokens per window (default
    ``min(2048, max_position_embeddings)`` of the model; an explicit value beyond the model's
    positions is a ``ValueError``).  ``batch_size``, ``seed`` and ``tokens_per_pass``: as in
    :class:`Scorer`.  A non-finite NELBO is a ``ValueError`` (see :class:`Scorer`)."""
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to score")
    config = model.config
    canvas_length = canvas_length_for(config, canvas_length, DEFAULT_CANVAS, minimum=3)
    rows, owner = [], []
    for d, text in enumerate(texts):
        ids = tokenizer.encode(text, add_bos=False)
        for row in document_rows(ids, canvas_length, config.bos_token_id, config.eos_token_id):
            if any(row.scored):  # a window holding only a delimiter scores nothing
                rows.append(row)
                owner.append(d)
    scorer = Scorer(model, points=points, effective_snr=effective_snr, batch_size=batch_size, seed=seed,
                    device=device, tokens_per_pass=tokens_per_pass)
    values = scorer.nelbo(rows, progress=progress) if rows else []
    nats = [0.0] * len(texts)
    tokens = [0] * len(texts)
    for d, row, value in zip(owner, rows, values):
        nats[d] += value
        tokens[d] += sum(row.scored)
    sizes = [len(t.encode("utf-8")) for t in texts]
    total_nats, total_tokens, total_bytes = sum(nats), sum(tokens), sum(sizes)
    if total_tokens == 0:
        raise ValueError("the texts hold no tokens to score (all empty?)")
    return NelboReport(documents=len(texts), tokens=total_tokens, bytes=total_bytes, nats=total_nats,
                       nelbo_per_token=total_nats / total_tokens,
                       bits_per_byte=total_nats / (math.log(2) * total_bytes),
                       per_document=list(zip(nats, tokens, sizes)), canvas_length=canvas_length, points=points,
                       effective_snr=bool(effective_snr), seed=seed)
