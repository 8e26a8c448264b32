"""NELBO (or exact NLL) and bits per byte of text under a Sumi model of any family (the released
evaluation's canvas handling).

What is scored depends on the model's family (``config.objective``, docs/training.md, "Families"):

- diffusion families (``uniform``, ``masked``, ``masked-ce``, ``hybrid``): the NELBO,
  :func:`discdiff.likelihood.nelbo` under the family's kernel (:func:`sumi.family.kernel_for`:
  uniform noise over the full vocabulary for Sumi, the mask for MDLM, GIDD's hybrid) on a time
  grid of ``points`` midpoints under the linear-alpha schedule (128 in the Sumi and GIDD
  evaluations), optionally at the effective SNR (docs/math.md, "Likelihood").  It
  upper-bounds the negative log-likelihood (``bound`` is ``True``), so ``-NELBO`` is what a
  log-likelihood benchmark receives.  ``masked-ce`` trains with a different loss but has the
  same forward process as ``masked``, hence the same NELBO;
- ``ar``: the exact negative log-likelihood ``-sum_i log p(x_i | x_<i)`` over the scored
  positions (``bound`` is ``False``): one causal forward per row, the prediction of position
  ``i`` read at position ``i - 1``, so a row's first position is never scored.

Canvas handling (as in training, where documents are packed ``BOS text EOS``): a row holds
at most ``canvas_length`` tokens.  A document is the stream ``BOS text EOS`` cut into
consecutive windows of ``canvas_length`` tokens, scored independently; only text tokens count,
BOS and EOS are held clean as delimiters (frozen).  For a causal (``ar``) model consecutive
windows overlap by one token, the last of a window being the unscored context of the next, so
that every text token has a token before it and is scored exactly once.  A continuation given a context is the row
``BOS context continuation EOS`` (the context cut from the left to fit), with only the
continuation noised and counted: the conditional NELBO.  Rows shorter than the batch's
longest are padded with ``pad_token_id`` hidden from attention (``attention_mask = 0``), so a
row scores as if it were alone on its canvas.

Bits per byte = total NELBO (or NLL) / (ln 2 x total UTF-8 bytes of the texts); the report
also gives the bits per byte of gzip, bz2 and xz on the same documents
(:mod:`sumi.evaluate.compressors`).

Throughput: a :class:`sumi.Sumi` is scored from its final hidden states and its head
(:class:`discdiff.likelihood.HiddenStates`, the fused loss of ``discdiff.losses.gidd_from_hidden``:
the ``[tokens, V]`` logits are never built), and several time points of a batch share one
forward pass (``tokens_per_pass``, :func:`default_tokens_per_pass`).  Neither changes the
estimate: the noise is drawn point by point as before, so the numbers agree with one point per
pass on the logits up to float32 rounding.  The exact NLL of a causal Sumi is computed the same
way, from the hidden states at the predicting positions and the head
(:func:`discdiff.losses.fused.cross_entropy_from_hidden`, in blocks of the logits).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from discdiff import NonFiniteError
from discdiff.likelihood import HiddenStates, nelbo
from discdiff.losses.fused import cross_entropy_from_hidden
from sumi._checks import check_int
from sumi.evaluate.compressors import compressor_bits_per_byte
from sumi.family import kernel_for
from sumi.generation import DEFAULT_CANVAS_LENGTH, NON_FINITE, blame_the_model, canvas_length_for
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


def document_rows(ids: Sequence[int], canvas_length: int, bos_id: int, eos_id: int, *, overlap: int = 0) -> list[Row]:
    """The windows of ``BOS ids EOS`` (``canvas_length`` tokens each, the last shorter), with the
    text tokens scored and the delimiters frozen.  ``overlap``: each window after the first
    starts with the last ``overlap`` tokens of the one before, as unscored context (1 for a
    causal model, whose first position predicts nothing); every text token is scored once."""
    check_int("canvas_length", canvas_length, 1)
    check_int("overlap", overlap, 0, canvas_length - 1)
    stream = [bos_id, *ids, eos_id]
    scored = [False, *([True] * len(ids)), False]
    rows = []
    for start in range(0, max(len(stream) - overlap, 1), canvas_length - overlap):
        flags = scored[start:start + canvas_length]
        if start:
            flags[:overlap] = [False] * overlap
        rows.append(Row(stream[start:start + canvas_length], flags))
    return rows


def text_rows(ids: Sequence[int], canvas_length: int, config) -> list[Row]:
    """The windows of one document (``ids``, its text tokens) that a model of ``config`` scores:
    :func:`document_rows` with the model's BOS/EOS, overlapping by one token for a causal model,
    without the windows that score nothing (a lone delimiter)."""
    rows = document_rows(ids, canvas_length, config.bos_token_id, config.eos_token_id, overlap=int(config.causal))
    return [row for row in rows if any(row.scored)]


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
    """NELBO (nats, summed over scored tokens) of canvas rows under ``model``, in batches; for a
    causal (``ar``) model the exact NLL instead (see the module docstring): :attr:`bound` says
    which.

    ``model``: a :class:`sumi.Sumi` (called as ``model(ids, attention_mask=mask,
    return_hidden=True)``, its loss fused with ``model.lm_head.weight``), or any module called
    as ``model(ids, attention_mask=mask)`` that returns logits; its family is
    ``model.config.objective``.  It runs in eval mode under ``torch.no_grad()`` and its mode is
    restored.  The rest applies to the diffusion families (the NLL has no time points and no
    noise: they are ignored for ``ar``).  ``points``: time points; ``effective_snr``:
    evaluate each point at the realized clean fraction (docs/math.md, "Likelihood"); ``seed``:
    the noise of every estimate (the same rows in the same order and batch size give the same
    numbers).  Rows are scored longest first, ``batch_size`` at a time; one forward pass holds
    as many time points of those rows as fit in ``tokens_per_pass`` canvas positions (at least
    one; default :func:`default_tokens_per_pass` of the device).  ``tokens_per_pass`` changes
    the speed and the memory, not the estimate (up to float32 rounding).

    Non-finite numbers are errors, not results: a batch whose NELBO (or NLL) is NaN or infinite
    (the model's logits were NaN/inf) raises :class:`discdiff.NonFiniteError` (a ``ValueError``)
    starting with :data:`sumi.generation.NON_FINITE`, checked once per batch.

    Attributes:
        kernel: the family's forward process (:func:`sumi.family.kernel_for`), ``None`` for ``ar``.
        bound: ``True`` when :meth:`nelbo` returns an upper bound on the NLL (the diffusion
            families), ``False`` when it returns the exact NLL (``ar``).
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
        self.kernel = kernel_for(model.config)
        self.bound = self.kernel is not None

    def nelbo(self, rows: Sequence[Row], *, progress: bool = False) -> list[float]:
        """The NELBO of each row in nats (its scored tokens summed), in the order given; for an
        ``ar`` model the exact NLL (:attr:`bound` is ``False``)."""
        config = self.model.config
        mask_id = None if self.kernel is None else self.kernel.mask_id
        for i, row in enumerate(rows):
            if len(row.tokens) > config.max_position_embeddings:
                raise ValueError(f"row {i} has {len(row.tokens)} tokens, more than the model's "
                                 f"max_position_embeddings ({config.max_position_embeddings})")
            lo, hi = min(row.tokens), max(row.tokens)
            if lo < 0 or hi >= config.vocab_size:
                raise ValueError(f"row {i} holds ids in [{lo}, {hi}], outside [0, {config.vocab_size})")
            if mask_id is not None and mask_id in row.tokens:
                raise ValueError(f"row {i} holds the mask id {mask_id}, the noise state of objective "
                                 f"{config.objective!r}, which clean text never holds")
            if self.kernel is None and row.scored[0]:
                raise ValueError(f"row {i} scores its first token, which a causal model cannot predict (no token "
                                 "precedes it): give every scored token some context")
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
        out = [0.0] * len(rows)
        if self.kernel is None:
            score, bar = self._exact_batch, _bar(len(rows), progress, "nll", "row")
        else:
            generator = torch.Generator(self.device).manual_seed(self.seed)
            bar = _bar(len(rows) * self.points, progress)

            def score(batch, report):
                return self._batch(batch, generator, report)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), self.batch_size):
                    chunk = order[start:start + self.batch_size]
                    totals = score([rows[i] for i in chunk], None if bar is None else bar.update)
                    for i, value in zip(chunk, totals.tolist()):
                        out[i] = value
        finally:
            self.model.train(was_training)
            if bar is not None:
                bar.close()
        return out

    def _exact_batch(self, rows: list[Row], progress: Callable[[int], object] | None) -> Tensor:
        """The exact NLL of each of ``rows`` under a causal model, float64 ``[len(rows)]``: the
        target at each scored position ``i``, the prediction read at ``i - 1``
        (``-log softmax(l_{i-1})_{x_i}``, float32 or wider).  The positions come from the rows
        (host lists), so nothing waits for the device until the totals are read."""
        x, _, _ = pad_rows(rows, self.model.config.pad_token_id, self.device)
        # causal attention: a position sees itself and the positions before it, so the pads after
        # a row's end change nothing before it and need no attention mask
        where = [(b, i) for b, row in enumerate(rows) for i, s in enumerate(row.scored) if s]
        row_of = torch.tensor([b for b, _ in where], dtype=torch.long, device=self.device)
        at = torch.tensor([i for _, i in where], dtype=torch.long, device=self.device)
        targets = x[row_of, at]
        if isinstance(self.model, Sumi):  # from the hidden states and the head: no [tokens, V] logits
            hidden = self.model(x, return_hidden=True)[row_of, at - 1]
            nll = cross_entropy_from_hidden(hidden, self.model.lm_head.weight, targets, validate=False).cross_entropy
        else:
            logits = self.model(x)[row_of, at - 1]
            nll = -logits.float().log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        totals = torch.zeros(len(rows), dtype=torch.float64, device=self.device)
        totals = totals.index_add(0, row_of, nll.double()).cpu()
        finite = torch.isfinite(totals)
        if not bool(finite.all()):
            raise NonFiniteError(f"{NON_FINITE}: the NLL is not finite for {int((~finite).sum())} of {len(rows)} rows "
                                 "(NaN or infinite logits at the predicting positions)")
        if progress is not None:
            progress(len(rows))
        return totals

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


def _bar(total: int, enabled: bool, desc: str = "nelbo", unit: str = "pass"):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)


@dataclass(frozen=True)
class NelboReport:
    """Totals over the texts: ``nats`` (the NELBO, or for ``ar`` the exact NLL), ``tokens``
    (scored), ``bytes`` (UTF-8); ``nelbo_per_token`` = nats / tokens; ``bits_per_byte`` =
    nats / (ln 2 x bytes); ``per_document``: (nats, tokens, bytes) of each text; the settings
    used (``points``, ``effective_snr`` and ``seed`` are ``None`` for ``ar``, which has no
    noise); ``objective``: the model's family; ``bound``: whether ``nats`` is an upper bound
    (the NELBO of a diffusion family) or the exact NLL (``ar``); ``baselines``: the bits per byte
    of gzip, bz2 and xz on the same documents
    (:func:`sumi.evaluate.compressors.compressor_bits_per_byte`)."""

    documents: int
    tokens: int
    bytes: int
    nats: float
    nelbo_per_token: float
    bits_per_byte: float
    per_document: list[tuple[float, int, int]]
    canvas_length: int
    points: int | None
    effective_snr: bool | None
    seed: int | None
    objective: str
    bound: bool
    baselines: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def nelbo_texts(model: nn.Module, tokenizer, texts: Sequence[str], *, canvas_length: int | None = None,
                points: int = DEFAULT_POINTS, effective_snr: bool = False, batch_size: int = 4, seed: int = 0,
                progress: bool = False, device: torch.device | str | None = None,
                tokens_per_pass: int | None = None) -> NelboReport:
    """NELBO (exact NLL for ``ar``) per token and bits per byte of ``texts`` (each one document;
    see the module docstring), with the compressors' bits per byte on the same documents.

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
        for row in text_rows(tokenizer.encode(text, add_bos=False), canvas_length, config):
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
    noisy = scorer.bound  # the settings of the noise apply to the diffusion families only
    return NelboReport(documents=len(texts), tokens=total_tokens, bytes=total_bytes, nats=total_nats,
                       nelbo_per_token=total_nats / total_tokens,
                       bits_per_byte=total_nats / (math.log(2) * total_bytes),
                       per_document=list(zip(nats, tokens, sizes)), canvas_length=canvas_length,
                       points=points if noisy else None, effective_snr=bool(effective_snr) if noisy else None,
                       seed=seed if noisy else None, objective=config.objective, bound=scorer.bound,
                       baselines=compressor_bits_per_byte(texts))
