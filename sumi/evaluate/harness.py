"""The lm-eval-harness model ``sumi`` (``pip install 'discdiff[eval]'``; importing this module registers it).

``python -m sumi.evaluate --model sumi --model_args pretrained=DIR --tasks ...`` is the
``lm_eval`` command line with this model registered (the plain ``lm_eval`` script only knows
models of processes that imported this module: lm-eval has no plugin discovery).

Protocol (the released evaluation, docs/math.md "Sumi recipe facts"; canvas rules in
:mod:`sumi.evaluate.likelihood`):

- ``loglikelihood(context, continuation)``: ``-NELBO`` of the continuation given the clean
  context (canvas 2048, or the model's positions when fewer; 128 time points, effective SNR)
  under the family's kernel (:func:`sumi.family.kernel_for`).  It lower-bounds the
  log-likelihood.  For an ``ar`` model: the exact ``log p(continuation | context)``.
  ``is_greedy``: whether one denoising pass from pure noise (the kernel's prior: uniform ids,
  the mask, or their mix) on the continuation positions (context clean) puts the
  continuation's tokens at every argmax (the mask is never a prediction); for ``ar``, whether
  the argmax at every continuation position given the true prefix is the continuation's token
  (teacher forcing);
- ``loglikelihood_rolling(text)``: ``-NELBO`` of the whole text (windows of the canvas; for
  ``ar``: the exact log-likelihood, windows overlapping by one token);
- ``generate_until(context, gen_kwargs)``: :func:`sumi.generate` with the adaptive
  sampler for ``uniform`` (the release's), ``ancestral`` for the families with a mask state (its
  last step unmasks every position, where one token per step could not cover the canvas) and for
  ``ar`` (left-to-right decoding), 256 steps and 256 new tokens by
  default (``max_gen_toks`` overrides), temperature from ``gen_kwargs`` (0, the argmax, unless
  ``do_sample``), cut at the first ``until`` string.

Model arguments (``--model_args key=value,...``): ``pretrained`` (a model directory, required),
``tokenizer`` (default ``pretrained/tokenizer.json``), ``device``, ``dtype``, ``batch_size``,
``canvas_length`` (default ``min(2048, max_position_embeddings)``; larger than the model's
positions is an error), ``points``, ``effective_snr``, ``tokens_per_pass`` (canvas positions per
forward pass of the likelihoods, see :class:`sumi.evaluate.Scorer`), ``steps``, ``max_gen_toks``,
``sampler``, ``tokens_per_step``, ``seed``.  A bad one raises :class:`ModelArgumentError`, which
``python -m sumi.evaluate`` prints in one line (exit status 2).
"""

from __future__ import annotations

from pathlib import Path

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm.auto import tqdm

from sumi._checks import check_int
from sumi.cli_common import UsageError, resolve_device
from sumi.evaluate.likelihood import DEFAULT_CANVAS, DEFAULT_POINTS, Row, Scorer, continuation_row, pad_rows, text_rows
from sumi.generation import canvas_length_for
from sumi.model import Sumi


def _int_arg(name: str, value, minimum: int) -> int:
    """A model argument (``--model_args`` passes strings) as an int >= ``minimum``."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    return check_int(f"sumi model argument {name}", value, minimum)


def _load(pretrained: str | None, tokenizer: str | None, device: str | None, dtype: str | None) -> tuple:
    """``(model, tokenizer)`` from the model arguments; the tokenizer is read first (cheap, and a
    bad file is then reported as a tokenizer, not as a model)."""
    from sumi.hf import from_pretrained
    from sumi.tokenizer import SumiTokenizer

    if pretrained is None:
        raise ValueError("needs pretrained=DIR (a model directory)")
    directory = Path(pretrained)
    if not directory.is_dir():
        raise FileNotFoundError(f"no model directory {pretrained}")
    tokenizer_path = Path(tokenizer) if tokenizer else directory / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise FileNotFoundError(f"no tokenizer at {tokenizer_path}; pass tokenizer=PATH")
    tokenizer_object = SumiTokenizer.from_file(tokenizer_path)
    try:
        device = resolve_device(device)
    except UsageError as e:  # a device this torch build cannot use (lm-eval's --device sets it)
        raise ValueError(str(e)) from None
    model = from_pretrained(directory, dtype=dtype, device=device)  # dtype names checked there
    return model, tokenizer_object


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Token ids of ``context`` and of ``continuation`` as they follow it: the pair is encoded
    whole and split at the context's length (trailing context spaces move to the continuation,
    as lm-eval does for causal models), so word boundaries tokenize as in running text."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    ctx = tokenizer.encode(context, add_bos=False) if context else []
    whole = tokenizer.encode(context + continuation, add_bos=False)
    if whole[:len(ctx)] != ctx:  # the boundary merged into one token: encode the parts apart
        return ctx, tokenizer.encode(continuation, add_bos=False)
    return ctx, whole[len(ctx):]


class ModelArgumentError(ValueError):
    """A ``sumi`` model argument that cannot work (no or a wrong ``pretrained``, an unreadable
    tokenizer, a value out of range): ``python -m sumi.evaluate`` reports it in one line."""


@register_model("sumi")
class SumiLM(LM):
    """A Sumi checkpoint as an lm-eval ``LM`` (see the module docstring).

    Raises :class:`ModelArgumentError` (a ``ValueError``) for a bad argument.  ``canvas_length``
    defaults to ``min(2048, max_position_embeddings)`` of the model; an explicit value beyond the
    model's positions is an error (never silently clamped).
    """

    def __init__(self, pretrained: str | None = None, tokenizer: str | None = None, device: str | None = None,
                 dtype: str | None = None, batch_size: int | str = 4, max_batch_size: int | None = None,
                 canvas_length: int | str | None = None, points: int = DEFAULT_POINTS, effective_snr: bool = True,
                 steps: int = 256, max_gen_toks: int = 256, sampler: str | None = None, tokens_per_step: int = 1,
                 seed: int = 0, tokens_per_pass: int | str | None = None, *, model=None,
                 tokenizer_object=None) -> None:
        super().__init__()
        try:
            if model is None:
                model, tokenizer_object = _load(pretrained, tokenizer, device, dtype)
            elif tokenizer_object is None:
                raise ValueError("pass tokenizer_object with model")
            self.model, self.tokenizer = model, tokenizer_object
            self._device = next(model.parameters()).device
            config = model.config
            if batch_size == "auto" or (isinstance(batch_size, str) and batch_size.startswith("auto")):
                batch_size = 4  # no memory probing: a fixed, safe default
            self.batch_size = _int_arg("batch_size", batch_size, 1)
            if canvas_length is not None:
                canvas_length = _int_arg("canvas_length", canvas_length, 3)
            self.canvas_length = canvas_length_for(config, canvas_length, DEFAULT_CANVAS, minimum=3)
            self.steps = _int_arg("steps", steps, 1)
            self.max_gen_toks = _int_arg("max_gen_toks", max_gen_toks, 1)
            self.tokens_per_step = _int_arg("tokens_per_step", tokens_per_step, 1)
            # the family's default: adaptive denoising, or left-to-right draws for ar
            self.sampler = str(sampler) if sampler is not None else \
                "adaptive" if config.objective == "uniform" else "ancestral"
            self.seed = _int_arg("seed", seed, 0)
            if tokens_per_pass is not None:
                tokens_per_pass = _int_arg("tokens_per_pass", tokens_per_pass, 1)
            self.scorer = Scorer(model, points=_int_arg("points", points, 1), effective_snr=bool(effective_snr),
                                 batch_size=self.batch_size, seed=self.seed, device=self._device,
                                 tokens_per_pass=tokens_per_pass)
        except (OSError, ValueError) as e:
            raise ModelArgumentError(f"sumi model: {e}") from e

    @property
    def device(self) -> torch.device:
        return self._device

    # -- likelihoods ------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        config = self.model.config
        rows = []
        for request in requests:
            context, continuation = request.args
            ctx, cont = encode_pair(self.tokenizer, context, continuation)
            rows.append(continuation_row(ctx, cont, self.canvas_length, config.bos_token_id, config.eos_token_id))
        nats = self.scorer.nelbo(rows, progress=not disable_tqdm)
        greedy = self._is_greedy(rows)
        results = [(-n, g) for n, g in zip(nats, greedy)]
        for request, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", request.args, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        config = self.model.config
        rows, owner = [], []
        for i, request in enumerate(requests):
            (text,) = request.args[:1]
            for row in text_rows(self.tokenizer.encode(text, add_bos=False), self.canvas_length, config):
                rows.append(row)
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, n in zip(owner, self.scorer.nelbo(rows, progress=not disable_tqdm)):
            totals[i] -= n
        for request, result in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, result)
        return totals

    @torch.no_grad()
    def _is_greedy(self, rows: list[Row]) -> list[bool]:
        """Does the argmax give every scored token back?  Diffusion: in one pass from the
        kernel's prior (pure noise) on the scored positions, the mask never a prediction.
        ``ar``: at each scored position given the true tokens before it (read one position
        earlier)."""
        generator = torch.Generator(self._device).manual_seed(self.seed + 1)
        kernel = self.scorer.kernel
        pad = self.model.config.pad_token_id
        out = []
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(rows), self.batch_size):
                chunk = rows[start:start + self.batch_size]
                x, scored, present = pad_rows(chunk, pad, self._device)
                if kernel is None:  # teacher forcing: the prediction of position i is read at i - 1
                    z, read = x, torch.roll(scored, -1, dims=1)
                else:
                    noise = kernel.sample_prior(x.shape, generator, self._device)
                    z, read = torch.where(scored, noise, x), scored
                if isinstance(self.model, Sumi):
                    # the head only where a prediction is read: never [batch, canvas, V] logits
                    logits = self.model.lm_head(self.model(z, attention_mask=present.long(), return_hidden=True)[read])
                else:
                    logits = self.model(z, attention_mask=present.long())[read]
                if kernel is not None and kernel.mask_id is not None:
                    logits[:, kernel.mask_id] = float("-inf")
                wrong = torch.zeros_like(scored)
                wrong[scored] = logits.argmax(-1) != x[scored]
                out += (~wrong.any(-1)).tolist()
        finally:
            self.model.train(was_training)
        return out

    # -- generation -------------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from sumi.generation import generate

        config = self.model.config
        results: list[str | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        settings = []
        for i, request in enumerate(requests):
            context, gen_kwargs = request.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = _int_arg("max_gen_toks", gen_kwargs.pop("max_gen_toks", self.max_gen_toks), 1)
            do_sample = bool(gen_kwargs.pop("do_sample", False))
            temperature = float(gen_kwargs.pop("temperature", 1.0 if do_sample else 0.0))
            room = self.canvas_length - max_new - 2  # the pinned EOS and BOS
            if room < 1:
                raise ValueError(f"max_gen_toks={max_new} leaves no room for a prompt on a canvas of "
                                 f"{self.canvas_length}")
            prompt = [config.bos_token_id, *self.tokenizer.encode(context, add_bos=False)][-room:]
            settings.append((prompt, until))
            groups.setdefault((max_new, temperature), []).append(i)
        bar = tqdm(total=len(requests), desc="generate", disable=disable_tqdm)
        for (max_new, temperature), members in groups.items():
            for start in range(0, len(members), self.batch_size):
                chunk = members[start:start + self.batch_size]
                out = generate(self.model, [settings[i][0] for i in chunk], max_new,
                               canvas_length=self.canvas_length, steps=self.steps, sampler=self.sampler,
                               tokens_per_step=self.tokens_per_step, temperature=temperature, seed=self.seed)
                for i, ids in zip(chunk, out.tokens):
                    text = self.tokenizer.decode(ids, skip_special_tokens=True)
                    results[i] = cut_at_stop(text, settings[i][1])
                    self.cache_hook.add_partial("generate_until", requests[i].args, results[i])
                bar.update(len(chunk))
        bar.close()
        return results


def cut_at_stop(text: str, until: list[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string (excluded)."""
    cut = min((i for i in (text.find(s) for s in until if s) if i >= 0), default=len(text))
    return text[:cut]
