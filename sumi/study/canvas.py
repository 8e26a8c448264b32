"""Held-out likelihood and sample quality against canvas length: ``sumi study canvas`` as a
library (the Sumi paper's canvas study, arXiv 2606.19005).

A diffusion model reads and writes a whole canvas at once, so its quality depends on how long
that canvas is, and on whether the length was seen in training (the tiny recipe trains at 128
tokens on 512 positions; Sumi at 1184, then 4864).  For each canvas length ``L`` (one row)
this module measures, with the same model and fixed seeds:

- ``nelbo_per_token`` (nats) and ``bits_per_byte`` of held-out documents scored on canvases of
  ``L`` tokens (:func:`sumi.evaluate.likelihood.nelbo_texts`, docs/math.md, "Likelihood"):
  each document is the stream ``BOS text EOS`` cut into consecutive windows of ``L`` tokens,
  scored independently, so every length scores the same text tokens and a shorter canvas gives
  each token less context;
- for ``samples`` unconditional samples of a full canvas (prompt ``[BOS]``, an answer budget of
  ``L - 3`` tokens, then the pinned EOS and BOS: the canvas holds exactly ``L`` positions;
  :func:`sumi.generate`): ``gen_ppl``, the generative perplexity under an autoregressive judge,
  ``exp(sum_s sum_i -ln p_judge(x_i | x_<i) / T)`` over the ``T`` sample tokens
  (:func:`sumi.study.quality.generative_perplexity`; Sahoo et al. 2026, arXiv 2602.15014), the
  judge never being the model; ``entropy``, the mean per-sample unigram entropy in nats
  (:func:`sumi.study.quality.unigram_entropy`), which exposes the low-entropy degeneration a
  judge rewards with a low perplexity; ``mean_sample_length``, the tokens before the first EOS
  (empty samples counted as 0 and left out of the two measures above); ``seconds_per_sample``,
  the wall-clock time of :func:`sumi.generate` alone on this machine, under its load (after one
  untimed warm-up call).

Seeds: the held-out NELBO uses ``seed`` for its noise at every length; the samples of a length
are generated in batches of ``batch_size``, the batch whose first sample is sample ``j`` seeded
with ``seed + j`` (the convention of :mod:`sumi.study.frontier`).  The ``adaptive`` sampler
commits ``ceil((L - 3) / steps)`` positions per step, so it writes the whole canvas within its
steps; the other samplers run with their defaults.

Lengths beyond the training length (``trained_length``: the ``seq_len`` of the ``sumi train``
run that exported the model, read from the run's ``config.json`` next to its ``model/``) are
extrapolation; rows mark them and the plot draws the training length.

Each length is two points of the study (likelihood, then samples), each cached as soon as it is
measured (:class:`sumi.study.store.StudyDir`), so a study killed at any moment resumes with
``--resume`` and loses at most the point in progress.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import torch

from sumi._checks import check_int
from sumi.study.models import HELDOUT, check_judge, model_name, read_model_config
from sumi.study.sampling import adaptive_tokens_per_step, draw_samples, judge_samples
from sumi.study.store import StudyDir, format_number, markdown_table

__all__ = ["DEFAULT_SAMPLES", "DEFAULT_STEPS", "DEFAULT_POINTS", "DEFAULT_MAX_DOCUMENTS", "MIN_LENGTH",
           "default_lengths", "check_lengths", "check_model", "trained_length",
           "measure_canvas", "canvas_markdown", "plot_canvas", "write_canvas"]

DEFAULT_SAMPLES = 16
DEFAULT_STEPS = 64
DEFAULT_POINTS = 64
"""NELBO time points per length: half the released evaluation's 128 (docs/math.md,
"Likelihood"), so the tiny preset fits its budget; every length uses the same grid."""
DEFAULT_MAX_DOCUMENTS = 2
"""Held-out documents scored per length: the first two of ``stdlib:heldout`` hold about 14,000
tokens of the tiny tokenizer, enough to rank lengths, and keep the tiny preset in its budget."""
MIN_LENGTH = 4
"""The shortest canvas: ``[BOS]``, one answer token, then the pinned EOS and BOS."""
_LADDER_START = 32


def default_lengths(max_positions: int) -> list[int]:
    """The doubling ladder ``32, 64, ...`` up to the model's ``max_position_embeddings`` (its
    last rung; ``[max_positions]`` alone when that is below 32): 32 .. 512 for the tiny model."""
    check_int("max_positions", max_positions, MIN_LENGTH)
    lengths, length = [], _LADDER_START
    while length <= max_positions:
        lengths.append(length)
        length *= 2
    return lengths or [max_positions]


def check_lengths(lengths: Sequence[int], max_positions: int, *, name: str = "lengths") -> list[int]:
    """``lengths`` as a sorted list: ints in ``[MIN_LENGTH, max_positions]``, none twice.

    Raises:
        ValueError: no length, a length out of range (named, with the limit), or a repeat.
    """
    lengths = list(lengths)
    if not lengths:
        raise ValueError(f"{name} is empty: give at least one canvas length")
    for length in lengths:
        if isinstance(length, bool) or not isinstance(length, int) or length < MIN_LENGTH:
            raise ValueError(f"{name}: canvas length {length!r} is not an int >= {MIN_LENGTH} (a canvas holds BOS, "
                             "at least one sample token, then EOS and BOS)")
        if length > max_positions:
            raise ValueError(f"{name}: canvas length {length} exceeds the model's max_position_embeddings "
                             f"({max_positions})")
    if len(set(lengths)) != len(lengths):
        raise ValueError(f"{name}: {','.join(map(str, lengths))} names a length twice")
    return sorted(lengths)


def check_model(config, lengths: Sequence[int] | None, sampler: str, *, name: str = "lengths") -> list[int]:
    """Check that a model of ``config`` can be studied: a diffusion family, ``sampler`` applies
    to it (:func:`sumi.study.sampling.sampler_applies`) and every length fits its positions.
    Returns the lengths (sorted; :func:`default_lengths` when ``None``).

    Raises:
        ValueError: an ``ar`` model (it has no canvas), a sampler that does not apply, or a bad length.
    """
    from sumi.generation import SAMPLERS
    from sumi.study.sampling import sampler_applies

    if config.causal:
        raise ValueError("the model is autoregressive (objective 'ar'): it decodes left to right and has no canvas; "
                         "give a diffusion model (uniform, masked, masked-ce, hybrid)")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler {sampler!r} is unknown; choose from {', '.join(SAMPLERS)}")
    if not sampler_applies(sampler, config):
        raise ValueError(f"sampler {sampler!r} does not apply to the {config.objective} family (confidence only "
                         "unmasks: it needs a family whose prior is all mask)")
    limit = config.max_position_embeddings
    return check_lengths(default_lengths(limit) if lengths is None else lengths, limit, name=name)


def trained_length(model_dir: str | os.PathLike) -> int | None:
    """The canvas length the model was trained at: ``seq_len`` of the ``sumi train`` run that
    exported ``model_dir`` (its ``config.json`` one level up, next to ``model/``), or ``None``
    when there is no such file (a downloaded checkpoint)."""
    file = Path(model_dir).resolve().parent / "config.json"
    try:
        seq_len = json.loads(file.read_text(encoding="utf-8")).get("seq_len")
    except (OSError, ValueError, AttributeError):
        return None
    return seq_len if isinstance(seq_len, int) and not isinstance(seq_len, bool) and seq_len > 0 else None


def _texts_digest(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(hashlib.sha256(text.encode("utf-8")).digest())
    return digest.hexdigest()[:16]


def measure_canvas(study: StudyDir, model: str | os.PathLike, judge: str | os.PathLike, *,
                   lengths: Sequence[int] | None = None, heldout: Sequence[str] = HELDOUT,
                   max_heldout_documents: int | None = DEFAULT_MAX_DOCUMENTS, points: int = DEFAULT_POINTS,
                   samples: int = DEFAULT_SAMPLES, steps: int = DEFAULT_STEPS, sampler: str = "ancestral",
                   batch_size: int | None = None, seed: int = 0, device: torch.device | str | None = None,
                   progress: bool = False) -> dict:
    """Measure every canvas length of the study (module docstring) and return its payload.

    Args:
        study: the open study directory: every measured point is recorded there at once and
            read back instead of measured again.
        model: a diffusion model directory (``sumi train``'s ``OUT/model``, or a checkpoint).
        judge: an autoregressive model directory, another model than ``model``.
        lengths: canvas lengths (default :func:`default_lengths` of the model's positions).
        heldout: held-out data (as ``sumi eval nelbo --data``).
        max_heldout_documents: score the first this many documents (``None``: all of them).
        points: NELBO time points (midpoints of the linear-alpha grid).
        samples: unconditional samples per length.
        steps: denoising steps per sample.
        sampler: a sampler of :data:`sumi.generation.SAMPLERS` that applies to the model's family.
        batch_size: samples per :func:`sumi.generate` call (default: all of them at once).
        seed: the NELBO noise seed, and the first sample seed (module docstring).
        device: where the models run (default cpu).
        progress: progress bars on stderr (the points, and each NELBO and generation).

    Returns:
        The payload ``{"study": "canvas", "date", "settings", "rows", "summary"}``; ``rows`` one
        dict per length, in increasing order.

    Raises:
        ValueError: a bad setting, an ``ar`` model, a judge that is not ``ar`` or is the model.
    """
    from sumi.evaluate.likelihood import nelbo_texts
    from sumi.study.models import heldout_texts, load_model_dir, same_tokenizer

    model_dir, judge_dir = Path(model).resolve(), Path(judge).resolve()
    config = read_model_config(model_dir)
    lengths = check_model(config, lengths, sampler)
    check_judge(read_model_config(judge_dir, "the judge"), judge_dir, [model_dir])
    points = check_int("points", points, 1)
    samples = check_int("samples", samples, 1)
    steps = check_int("steps", steps, 1)
    seed = check_int("seed", seed, 0)
    batch_size = samples if batch_size is None else check_int("batch_size", batch_size, 1)
    if max_heldout_documents is not None:
        check_int("max_heldout_documents", max_heldout_documents, 1)
    device = torch.device(device or "cpu")
    heldout = list(heldout)
    texts = heldout_texts(heldout, max_documents=max_heldout_documents)
    trained = trained_length(model_dir)

    net, tokenizer = load_model_dir(model_dir, device=device)
    judge_net, judge_tokenizer = load_model_dir(judge_dir, device=device)
    same = same_tokenizer(model_dir, judge_dir)
    common = {"study": "canvas", "model": str(model_dir), "device": device.type, "seed": seed}
    likelihood_spec = {**common, "measure": "likelihood", "heldout": heldout, "documents": len(texts),
                       "texts": _texts_digest(texts), "points": points}
    samples_spec = {**common, "measure": "samples", "judge": str(judge_dir), "samples": samples, "steps": steps,
                    "sampler": sampler, "batch_size": batch_size}

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=2 * len(lengths), desc="canvas study", unit="point", file=sys.stderr)
    rows, warm = [], []
    try:
        for length in lengths:
            def likelihood(length=length) -> dict:
                report = nelbo_texts(net, tokenizer, texts, canvas_length=length, points=points, seed=seed,
                                     progress=progress, device=device)
                return {"nelbo_per_token": report.nelbo_per_token, "bits_per_byte": report.bits_per_byte,
                        "heldout_tokens": report.tokens, "heldout_bytes": report.bytes}

            def sampled(length=length) -> dict:
                if not warm:  # one untimed call first: the first timed one would pay for setting up
                    from sumi.generation import generate

                    generate(net, [[config.bos_token_id]], length - 3, canvas_length=length, steps=steps,
                             sampler=sampler, tokens_per_step=_tokens_per_step(sampler, length, steps), seed=seed,
                             device=device)
                    warm.append(True)
                return _measure_samples(net, tokenizer, judge_net, judge_tokenizer, same, length=length,
                                        samples=samples, steps=steps, sampler=sampler, batch_size=batch_size,
                                        seed=seed, device=device, progress=progress)

            row = {"length": length, "extrapolated": None if trained is None else length > trained}
            for spec, measure in ((likelihood_spec, likelihood), (samples_spec, sampled)):
                if bar is not None:
                    bar.set_postfix_str(f"L={length} {spec['measure']}")
                row.update(study.point({**spec, "length": length}, measure))
                if bar is not None:
                    bar.update(1)
            rows.append(row)
    finally:
        if bar is not None:
            bar.close()

    settings = {"model": str(model_dir), "model_name": model_name(model_dir), "family": config.objective,
                "max_position_embeddings": config.max_position_embeddings, "trained_length": trained,
                "judge": str(judge_dir), "judge_name": model_name(judge_dir), "same_tokenizer": same,
                "lengths": lengths, "heldout": heldout, "heldout_documents": len(texts),
                "max_heldout_documents": max_heldout_documents, "points": points, "samples": samples,
                "steps": steps, "sampler": sampler, "batch_size": batch_size, "seed": seed, "device": device.type,
                "threads": torch.get_num_threads()}
    return {"study": "canvas", "date": date.today().isoformat(), "settings": settings, "rows": rows,
            "summary": _summary(rows, trained)}


def _tokens_per_step(sampler: str, length: int, steps: int) -> int | None:
    """``adaptive`` writes the whole answer of a canvas of ``L`` within its steps
    (:func:`sumi.study.sampling.adaptive_tokens_per_step`, the prompt being BOS); the other
    samplers take their default."""
    return adaptive_tokens_per_step(length, 1, steps) if sampler == "adaptive" else None


def _measure_samples(model, tokenizer, judge, judge_tokenizer, same: bool, *, length: int, samples: int, steps: int,
                     sampler: str, batch_size: int, seed: int, device: torch.device, progress: bool) -> dict:
    """``samples`` unconditional samples of a full canvas of ``length`` (timed), and their quality."""
    drawn = draw_samples(model, [[model.config.bos_token_id]] * samples, length - 3, batch_size=batch_size, seed=seed,
                         sampler=sampler, steps=steps, canvas_length=length,
                         tokens_per_step=_tokens_per_step(sampler, length, steps), device=device, progress=progress)
    quality = judge_samples(judge, drawn.answers, tokenizer=tokenizer, judge_tokenizer=judge_tokenizer, same=same,
                            model=model, device=device)
    return {"samples": samples, "tokens_per_step": _tokens_per_step(sampler, length, steps),
            "mean_sample_length": sum(map(len, drawn.answers)) / samples,
            "empty_samples": quality["empty_samples"], "seconds_per_sample": drawn.seconds / samples,
            "gen_ppl": quality["gen_ppl"], "judge_nats_per_token": quality["judge_nats_per_token"],
            "judged_tokens": quality["tokens"], "entropy": quality["entropy"]}


def _best(rows: list[dict], key: str) -> dict | None:
    measured = [r for r in rows if r.get(key) is not None]
    if not measured:
        return None
    best = min(measured, key=lambda r: r[key])
    return {"length": best["length"], key: best[key]}


def _summary(rows: list[dict], trained: int | None) -> dict:
    """The lowest bits per byte and gen PPL over the lengths, and the training length."""
    return {"trained_length": trained, "lowest_bits_per_byte": _best(rows, "bits_per_byte"),
            "lowest_gen_ppl": _best(rows, "gen_ppl")}


_COLUMNS = (("length", "canvas length L (tokens per window and per sample canvas)"),
            ("nelbo_per_token", "held-out NELBO per text token, nats (an upper bound on the NLL)"),
            ("bits_per_byte", "held-out NELBO / (ln 2 x UTF-8 bytes)"),
            ("gen_ppl", "generative perplexity of the samples under the judge"),
            ("entropy", "mean per-sample unigram entropy, nats (low: degenerate samples; at most ln(sample length), "
                        "so shorter canvases have lower entropy by construction)"),
            ("mean_sample_length", "mean tokens per sample before the first EOS (at most L - 3)"),
            ("empty_samples", "samples that end at once (left out of gen PPL and entropy)"),
            ("seconds_per_sample", "wall-clock seconds of generation per sample, this machine"))


def canvas_markdown(payload: dict) -> str:
    """``canvas.md``: the settings, what each column means, the table and the summary."""
    s = payload["settings"]
    trained = s["trained_length"]
    lines = [f"# Canvas study: {s['model_name']} ({s['family']})", "",
             f"{payload['date']}. Model `{s['model']}` ({s['max_position_embeddings']} positions), judge "
             f"`{s['judge']}`{'' if s['same_tokenizer'] else ' (samples re-encoded through text)'}.",
             f"Held-out NELBO: {s['heldout_documents']} documents of {' '.join(s['heldout'])}, {s['points']} time "
             f"points, seed {s['seed']}; each document is cut into consecutive windows of L tokens, scored "
             "independently.",
             f"Samples: {s['samples']} unconditional samples per length (prompt BOS, a full canvas of L positions), "
             f"{s['sampler']} sampler, {s['steps']} steps, batches of {s['batch_size']} (the batch from sample j is "
             f"seeded with {s['seed']} + j); device {s['device']}, torch threads: {s['threads']}.",
             ("Trained at L = " + format_number(trained) + ": rows marked * are longer (extrapolation).")
             if trained is not None else "Training length unknown (no `sumi train` run config next to the model).",
             "", "Columns:", ""]
    lines += [f"- `{name}`: {meaning}" for name, meaning in _COLUMNS]
    table = []
    for r in payload["rows"]:
        cells = [f"{r['length']}*" if r["extrapolated"] else r["length"]]
        cells += [r[name] for name, _ in _COLUMNS[1:]]
        table.append(cells)
    lines += ["", markdown_table([name for name, _ in _COLUMNS], table), ""]
    summary = payload["summary"]
    for key, label in (("lowest_bits_per_byte", "bits per byte"), ("lowest_gen_ppl", "gen PPL")):
        best = summary[key]
        if best is not None:
            value = format_number(best[key.removeprefix("lowest_")])
            lines.append(f"- Lowest {label}: {value} at L = {best['length']}.")
    return "\n".join(lines) + "\n"


def plot_canvas(payload: dict, path: str | os.PathLike) -> Path:
    """``canvas.png``: held-out bits per byte, gen PPL (log scale) and entropy against the canvas
    length (log2 axis), the training length drawn as a dashed line."""
    from matplotlib.ticker import FuncFormatter

    from sumi._plot import figure, save

    rows = payload["rows"]
    trained = payload["settings"]["trained_length"]
    panels = (("bits_per_byte", "held-out bits per byte", False), ("gen_ppl", "gen PPL (judge)", True),
              ("entropy", "unigram entropy (nats)", False))
    fig = figure(11.0, 3.4)
    for k, (key, title, log_y) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        points = [(r["length"], r[key]) for r in rows if r.get(key) is not None and math.isfinite(r[key])]
        if points:
            ax.plot(*zip(*points), marker="o")
        if trained is not None:
            ax.axvline(trained, color="tab:red", ls="--", lw=1, label=f"trained length {trained}")
            longest = max(r["length"] for r in rows)
            if longest > trained:  # the lengths the model never saw in training
                ax.axvspan(trained, longest, color="tab:red", alpha=0.06, label="extrapolation")
            ax.legend(fontsize="small")
        ax.set_xscale("log", base=2)
        if log_y and points:
            ax.set_yscale("log")
            plain = FuncFormatter(lambda v, _: f"{v:g}")  # less than a decade: label the minor ticks plainly
            ax.yaxis.set_major_formatter(plain)
            ax.yaxis.set_minor_formatter(plain)
        ax.set_xticks([r["length"] for r in rows], [str(r["length"]) for r in rows])
        ax.set_xlabel("canvas length")
        ax.set_title(title, fontsize="medium")
        ax.grid(alpha=0.3)
    return save(fig, path)


def write_canvas(study: StudyDir, payload: dict) -> list[Path]:
    """Write ``canvas.json``, ``canvas.md`` and ``canvas.png`` into the study; returns their paths."""
    js, md = study.write("canvas", payload, canvas_markdown(payload))
    return [js, md, plot_canvas(payload, study.path / "canvas.png")]

