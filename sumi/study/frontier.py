"""The speed-quality frontier of generation, measured: ``sumi study pareto`` as a library.

Perplexity is not comparable across diffusion families; the quality of samples reached for a
given generation cost is (Sahoo et al. 2026, arXiv 2602.15014).  For every model x sampler x
step count (a *point*) this module generates ``samples`` samples with fixed seeds and measures:

- ``gen_ppl``: generative perplexity under an autoregressive judge,
  ``exp(sum_s sum_i -ln p_judge(x_i | x_<i) / T)`` over the ``T`` sample tokens
  (:func:`sumi.study.quality.generative_perplexity`); a model is never its own judge;
- ``entropy``: the mean per-sample unigram entropy of the samples, in nats
  (:func:`sumi.study.quality.unigram_entropy`), so that low-entropy degeneration (which a judge
  rewards with a low perplexity) is visible next to ``gen_ppl``;
- ``forward_passes``: the model calls that generate one batch of samples (every sample of a
  batch shares them), the ``steps_run`` of :func:`sumi.generate`: the step count of a diffusion
  sampler, the positions decoded for an ``ar`` model; averaged over the point's batches;
- ``seconds_per_sample`` and ``tokens_per_s``: wall-clock time of :func:`sumi.generate` alone
  (after one untimed warm-up call per model), on this machine and under its load at the time.

A point is on the frontier of a cost (forward passes, or seconds per sample) when no other point
of the study has a lower-or-equal cost and a lower-or-equal ``gen_ppl``, one of the two strictly
(:func:`sumi.study.pareto.pareto_front`, over all models and samplers together).

Seeds: the samples of a point are generated in batches of ``batch_size``; the batch whose first
sample is sample ``j`` uses seed ``seed + j`` (with ``batch_size=1``, sample ``i`` uses
``seed + i``).  Every point of a study uses the same seeds.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch

from sumi._checks import check_int
from sumi.study.models import check_judge, model_name, read_model_config
from sumi.study.sampling import adaptive_tokens_per_step, draw_samples, judge_samples, sampler_applies, sync
from sumi.study.store import StudyDir, format_number, markdown_table

__all__ = ["DEFAULT_STEPS", "DEFAULT_SAMPLES", "DEFAULT_CANVAS", "default_samplers", "measure_pareto",
           "pareto_markdown", "plot_pareto", "write_pareto"]

DEFAULT_STEPS = (4, 8, 16, 32, 64, 128)
"""The step counts of a diffusion model's points (an ``ar`` model has one point per sampler)."""
DEFAULT_SAMPLES = 16
DEFAULT_CANVAS = 128

_FRONTIERS = {"passes": "forward_passes", "seconds": "seconds_per_sample"}


def default_samplers(config) -> list[str]:
    """The samplers a study measures for ``config``'s family unless told otherwise: those that
    apply (:func:`sampler_applies`) and draw samples, in the order of
    :data:`sumi.generation.SAMPLERS`: uniform: ancestral, adaptive; masked and masked-ce:
    ancestral, adaptive, confidence; ar: ancestral.  ``greedy`` (the argmax everywhere) is left
    out: its samples degenerate into repetitions that a judge scores with a very low perplexity
    (on the tiny preset, entropy 0.0 to 0.3 nats at gen PPL 1.7 to 3.5, where ancestral samples
    have 4.2 nats), so it would make a frontier of degenerate points; ask for it explicitly."""
    from sumi.generation import SAMPLERS

    return [s for s in SAMPLERS if s != "greedy" and sampler_applies(s, config)]


@dataclass
class _Model:
    path: Path
    name: str
    config: Any
    samplers: list[str]


def _plan(models: Sequence, judge, samplers: Sequence[str] | None) -> tuple[list[_Model], Any, list[dict]]:
    """The models with their samplers, the judge's config, and the (model, sampler) pairs left
    out because the sampler does not apply to the model's family."""
    from sumi.generation import SAMPLERS

    judge = Path(judge).resolve()
    judge_config = read_model_config(judge, "the judge")
    check_judge(judge_config, judge, models)
    if not models:
        raise ValueError("no models to measure")
    seen: dict[Path, str] = {}
    if samplers is not None:
        samplers = list(samplers)
        if not samplers:
            raise ValueError("samplers is empty; leave it unset for every sampler that applies to each model")
        for s in samplers:
            if s not in SAMPLERS:
                raise ValueError(f"unknown sampler {s!r}; choose from {', '.join(SAMPLERS)}")
        if len(set(samplers)) != len(samplers):
            raise ValueError(f"samplers {','.join(samplers)} name a sampler twice")
    planned, skipped = [], []
    for given in models:
        path = Path(given).resolve()
        if path in seen:
            raise ValueError(f"{given} is given twice (as {seen[path]})")
        seen[path] = str(given)
        config = read_model_config(path, "model")
        chosen = default_samplers(config) if samplers is None else [s for s in samplers if sampler_applies(s, config)]
        for s in samplers or ():
            if s not in chosen:
                skipped.append({"model": model_name(path), "path": str(path), "family": config.objective,
                                "sampler": s, "reason": f"does not apply to the {config.objective} family"})
        planned.append(_Model(path, model_name(path), config, chosen))
    for s in samplers or ():
        if not any(s in m.samplers for m in planned):
            raise ValueError(f"sampler {s!r} applies to none of the models "
                             f"({', '.join(sorted({m.config.objective for m in planned}))})")
    names = [m.name for m in planned]
    for m in planned:  # two runs of one family in a study cache: their directory names tell them apart
        if names.count(m.name) > 1:
            m.name = m.path.parent.name if m.path.name == "model" else str(m.path)
    return planned, judge_config, skipped


def measure_pareto(study: StudyDir, models: Sequence[str | os.PathLike], judge: str | os.PathLike, *,
                   steps: Sequence[int] = DEFAULT_STEPS, samplers: Sequence[str] | None = None,
                   samples: int = DEFAULT_SAMPLES, seed: int = 0, batch_size: int | None = None,
                   canvas_length: int = DEFAULT_CANVAS, max_new_tokens: int | None = None,
                   prompts: Sequence[str] | None = None, device: torch.device | str | None = None,
                   progress: bool = True) -> dict:
    """Measure every point (model x sampler x step count) of a speed-quality frontier study
    (Sahoo et al. 2026, arXiv 2602.15014; the measures are in the module docstring) and return
    the payload of ``pareto.json``.

    Each point is kept in ``study`` as soon as it is measured (:meth:`StudyDir.point`), keyed by
    everything that determines it (the model's and judge's resolved paths, sampler, steps,
    samples, seed, batch size, canvas, answer budget, prompts, device type); a resumed study
    reads finished points back, timing included, and measures only the rest.

    Samples go to the judge as the model's answer ids when the two model directories hold the
    same ``tokenizer.json``; otherwise each answer is decoded to text with the model's tokenizer
    (special tokens dropped) and encoded with the judge's.

    Args:
        study: the open study directory.
        models: model directories (any family; each is measured with the samplers that apply
            to its family, :func:`sampler_applies`).
        judge: an autoregressive (``ar``) model directory, none of ``models``.
        steps: the step counts of the diffusion models' points (ints >= 1); an ``ar`` model has
            one point per sampler (``steps`` is ``None`` in its rows).
        samplers: sampler names, each run on the models it applies to (a pair that does not
            apply is listed in the payload's ``skipped``; a sampler that applies to no model is
            an error); default: :func:`default_samplers` of each model.  ``adaptive`` commits
            ``ceil(n / steps)`` positions per step (``n``: the positions a row may change), so
            the canvas is written within the step budget; ``confidence`` uses its default share.
        samples: samples per point.
        seed: the first sample's seed (module docstring: seeds).
        batch_size: samples generated together (default: ``samples``).
        canvas_length: canvas positions of the diffusion models (must fit every model's
            positions).
        max_new_tokens: the answer budget of every model (default: the whole canvas,
            ``canvas_length - 2 - longest prompt``; the 2 are the pinned EOS and BOS).
        prompts: texts; sample ``i`` continues prompt ``i mod len(prompts)`` (encoded with BOS by
            each model's tokenizer) and the judge scores the continuation given the prompt;
            ``None``: unconditional samples (the prompt is BOS alone).
        device: where the models and the judge run (default cpu).
        progress: a progress bar over points on stderr.

    Returns:
        ``{"study": "pareto", "date", "settings", "rows", "frontier", "skipped", "excluded"}``:
        one row per point (module docstring), ``frontier`` the rows on each frontier
        (``passes``, ``seconds``) as ``(model, sampler, steps)``, ``excluded`` the points with
        no token to score (every sample empty), which are on no frontier.

    Raises:
        ValueError: bad settings (named), a judge that is not ``ar`` or is one of the models, a
            model given twice, or a point the judge cannot score (its message names the point).
    """
    device = torch.device(device or "cpu")
    steps = [check_int("steps", s, 1) for s in steps]
    if not steps:
        raise ValueError("steps is empty; give at least one step count")
    if len(set(steps)) != len(steps):
        raise ValueError(f"steps {','.join(map(str, steps))} name a step count twice")
    samples = check_int("samples", samples, 1)
    seed = check_int("seed", seed, 0)
    batch_size = samples if batch_size is None else check_int("batch_size", batch_size, 1)
    canvas_length = check_int("canvas_length", canvas_length, 3)
    prompts = None if prompts is None else [str(p) for p in prompts]
    if prompts is not None and not prompts:
        raise ValueError("prompts is empty; pass None for unconditional samples")
    from sumi.study.models import same_tokenizer
    from sumi.tokenizer import SumiTokenizer

    planned, _, skipped = _plan(models, judge, samplers)
    judge = Path(judge).resolve()
    judge_tokenizer = SumiTokenizer.from_file(judge / "tokenizer.json")
    tokenizers = {m.path: SumiTokenizer.from_file(m.path / "tokenizer.json") for m in planned}
    prompt_ids = {m.path: _prompt_rows(tokenizers[m.path], prompts, samples) for m in planned}
    same = {m.path: same_tokenizer(m.path, judge) for m in planned}
    longest = max(len(p) for rows in prompt_ids.values() for p in rows)
    budget = canvas_length - 2 - longest if max_new_tokens is None else check_int("max_new_tokens", max_new_tokens, 1)
    if budget < 1 or longest + budget + 2 > canvas_length:
        raise ValueError(f"the longest prompt ({longest} tokens with BOS) + max_new_tokens ({budget}) + EOS/BOS "
                         f"does not fit canvas_length {canvas_length}")
    for m in planned:
        limit = m.config.max_position_embeddings
        if canvas_length > limit:
            raise ValueError(f"canvas_length {canvas_length} exceeds the {limit} positions of model {m.path}")
    judge_prompts = None if prompts is None else [judge_tokenizer.encode(prompts[i % len(prompts)], add_bos=False)
                                                  for i in range(samples)]
    common = {"samples": samples, "seed": seed, "batch_size": batch_size, "canvas_length": canvas_length,
              "max_new_tokens": budget, "prompts": prompts, "device": device.type, "judge": str(judge)}
    points = [(m, s, None if m.config.causal else n) for m in planned for s in m.samplers
              for n in ([None] if m.config.causal else steps)]

    loaded: dict[Path, Any] = {}
    judge_model = None

    def model_of(m: _Model):
        nonlocal loaded
        if m.path not in loaded:
            from sumi.generation import generate
            from sumi.study.models import load_model_dir

            loaded = {}  # one generating model in memory at a time: points are ordered by model
            model, _ = load_model_dir(m.path, device=device)
            # untimed warm-up: one-time costs (allocator, kernels, lazy init) stay out of the timings
            generate(model, prompt_ids[m.path][:batch_size], min(budget, 8), canvas_length=canvas_length, steps=1,
                     sampler="ancestral", seed=seed, device=device)
            sync(device)
            loaded[m.path] = model
        return loaded[m.path]

    def judge_of():
        nonlocal judge_model
        if judge_model is None:
            from sumi.study.models import load_model_dir

            judge_model, _ = load_model_dir(judge, device=device)
        return judge_model

    rows = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(points), desc="pareto points", unit="point", file=sys.stderr)
    try:
        for m, sampler, n in points:
            label = f"{m.name} / {sampler}" + ("" if n is None else f" / {n} steps")
            if bar is not None:
                bar.set_postfix_str(label)
            tokens_per_step = None
            if sampler == "adaptive" and n is not None:
                tokens_per_step = adaptive_tokens_per_step(canvas_length, min(map(len, prompt_ids[m.path])), n)
            spec = {"study": "pareto", "model": str(m.path), "sampler": sampler, "steps": n,
                    "tokens_per_step": tokens_per_step, **common}

            def measure(m=m, sampler=sampler, n=n, tokens_per_step=tokens_per_step, label=label) -> dict:
                return _measure_point(model_of(m), judge_of(), m, sampler, n, tokens_per_step, label=label,
                                      prompt_ids=prompt_ids[m.path], judge_prompts=judge_prompts,
                                      tokenizer=tokenizers[m.path], judge_tokenizer=judge_tokenizer,
                                      same=same[m.path], samples=samples, seed=seed,
                                      batch_size=batch_size, canvas_length=canvas_length, budget=budget,
                                      device=device)

            rows.append(study.point(spec, measure))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    frontier, excluded = _mark_frontiers(rows)
    settings = {"models": [{"name": m.name, "path": str(m.path), "family": m.config.objective,
                            "samplers": m.samplers} for m in planned],
                "judge": str(judge), "steps": steps, "samplers": None if samplers is None else list(samplers),
                "samples": samples, "seed": seed, "batch_size": batch_size, "canvas_length": canvas_length,
                "max_new_tokens": budget, "prompts": prompts, "device": str(device),
                "threads": torch.get_num_threads(), "torch": torch.__version__}
    return {"study": "pareto", "date": date.today().isoformat(), "settings": settings, "rows": rows,
            "frontier": frontier, "skipped": skipped, "excluded": excluded}


def _prompt_rows(tokenizer, prompts: Sequence[str] | None, samples: int) -> list[list[int]]:
    """The prompt of each sample (BOS included): prompt ``i mod len(prompts)``, or BOS alone."""
    if prompts is None:
        return [[tokenizer.bos_id] for _ in range(samples)]
    return [tokenizer.encode(prompts[i % len(prompts)], add_bos=True) for i in range(samples)]


def _measure_point(model, judge, m: _Model, sampler: str, steps: int | None, tokens_per_step: int | None, *,
                   label: str, prompt_ids, judge_prompts, tokenizer, judge_tokenizer, same: bool, samples: int,
                   seed: int, batch_size: int, canvas_length: int, budget: int, device: torch.device) -> dict:
    """Generate the point's samples (timed) and measure them: one row."""
    drawn = draw_samples(model, prompt_ids, budget, batch_size=batch_size, seed=seed, sampler=sampler, steps=steps,
                         canvas_length=None if steps is None else canvas_length, tokens_per_step=tokens_per_step,
                         device=device)
    generated = sum(map(len, drawn.answers))
    row = {"model": m.name, "path": str(m.path), "family": m.config.objective, "sampler": sampler, "steps": steps,
           "tokens_per_step": tokens_per_step, "samples": samples, "forward_passes": drawn.forward_passes,
           "seconds_per_sample": drawn.seconds / samples,
           "tokens_per_s": generated / drawn.seconds if drawn.seconds > 0 else None, "generated_tokens": generated,
           "threads": torch.get_num_threads()}
    try:
        row.update(judge_samples(judge, drawn.answers, tokenizer=tokenizer, judge_tokenizer=judge_tokenizer, same=same,
                                 prompts=judge_prompts, model=model, device=device))
    except ValueError as e:
        raise ValueError(f"point {label}: the judge cannot score its samples: {e}") from None
    return row


def _mark_frontiers(rows: list[dict]) -> tuple[dict, list[dict]]:
    """Set ``on_frontier_passes`` / ``on_frontier_seconds`` of every row (over all rows with a
    ``gen_ppl``); returns each frontier as ``(model, sampler, steps)`` and the excluded points."""
    from sumi.study.pareto import pareto_front

    scored = [r for r in rows if r["gen_ppl"] is not None]
    frontier = {}
    for name, cost in _FRONTIERS.items():
        front = {id(r) for r in pareto_front(scored, key=lambda r, cost=cost: (r[cost], r["gen_ppl"]))}
        for r in rows:
            r[f"on_frontier_{name}"] = id(r) in front
        frontier[name] = [[r["model"], r["sampler"], r["steps"]] for r in sorted(
            (r for r in scored if id(r) in front), key=lambda r: (r[cost], r["gen_ppl"]))]
    excluded = [{"model": r["model"], "sampler": r["sampler"], "steps": r["steps"],
                 "reason": "every sample was empty (EOS first): no token to score"} for r in rows
                if r["gen_ppl"] is None]
    return frontier, excluded


_COLUMNS = [("model", "model", "the model directory's name"),
            ("family", "family", "its objective"),
            ("sampler", "sampler", "the sampling rule"),
            ("steps", "steps", "sampler steps (- for ar: one position per call)"),
            ("passes", "forward_passes", "model calls per generated batch (the cost of one sample's canvas)"),
            ("s/sample", "seconds_per_sample", "wall-clock seconds of generation per sample"),
            ("tokens/s", "tokens_per_s", "generated answer tokens per second of generation"),
            ("gen PPL", "gen_ppl", "generative perplexity under the judge (lower is better)"),
            ("entropy", "entropy", "mean per-sample unigram entropy in nats (low: degenerate samples)"),
            ("tokens", "tokens", "sample tokens scored by the judge"),
            ("front (passes)", "on_frontier_passes", "on the frontier of gen PPL against forward passes"),
            ("front (s)", "on_frontier_seconds", "on the frontier of gen PPL against seconds per sample")]


def pareto_markdown(payload: dict) -> str:
    """``pareto.md``: settings, what each column means, the table, the frontiers and what was
    left out."""
    s = payload["settings"]
    lines = ["# Speed-quality frontier (sumi study pareto)", "",
             f"Date {payload['date']}. Judge: `{s['judge']}` (autoregressive). "
             f"{s['samples']} samples per point (batches of {s['batch_size']}, seeds from {s['seed']}: the batch "
             f"starting at sample j uses seed {s['seed']} + j), canvas {s['canvas_length']}, answer budget "
             f"{s['max_new_tokens']} tokens, "
             + ("unconditional (prompt: BOS)." if s["prompts"] is None
                else f"continuations of {len(s['prompts'])} prompts (sample i continues prompt i mod "
                     f"{len(s['prompts'])})."), "",
             f"Timings are wall-clock seconds on this machine under its load at the time: device {s['device']}, "
             f"{s['threads']} torch threads, torch {s['torch']}; they compare points of this run, not machines.", "",
             "Columns: " + "; ".join(f"**{h}**: {d}" for h, _, d in _COLUMNS) + ".", "",
             "A point whose entropy is far below the others' holds degenerate samples (repetitions): its low gen "
             "PPL is the judge rewarding repetition, not quality.", ""]
    rows = payload["rows"]
    lines.append(markdown_table([h for h, _, _ in _COLUMNS], [[r.get(k) for _, k, _ in _COLUMNS] for r in rows]))
    for name, title in (("passes", "forward passes"), ("seconds", "seconds per sample")):
        front = payload["frontier"][name]
        points = ", ".join(f"{m} / {sm}" + ("" if n is None else f" / {n}") for m, sm, n in front) or "none"
        lines += ["", f"Frontier of gen PPL against {title} (cheapest first): {points}."]
    for r in payload["skipped"]:
        lines += ["", f"Skipped: sampler {r['sampler']} for {r['model']} ({r['reason']})."]
    for r in payload["excluded"]:
        lines += ["", f"Excluded from the frontiers: {r['model']} / {r['sampler']} / {format_number(r['steps'])} "
                      f"({r['reason']})."]
    return "\n".join(lines) + "\n"


def plot_pareto(payload: dict, path: str | os.PathLike) -> Path:
    """``pareto.png``: gen PPL against forward passes and against seconds per sample (log axes),
    one line per (model, sampler) through its step counts, each frontier as a black step line;
    a third panel shows the samples' unigram entropy against forward passes (degeneration)."""
    from sumi._plot import figure, save

    rows = [r for r in payload["rows"] if r["gen_ppl"] is not None]
    curves: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        curves.setdefault((r["model"], r["sampler"]), []).append(r)
    fig = figure(15.0, 4.6)
    panels = [("forward_passes", "gen_ppl", "forward passes per sample", "generative perplexity", "passes"),
              ("seconds_per_sample", "gen_ppl", "seconds per sample", "generative perplexity", "seconds"),
              ("forward_passes", "entropy", "forward passes per sample", "unigram entropy (nats)", None)]
    for k, (x, y, xlabel, ylabel, front) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), k + 1)
        for (model, sampler), points in curves.items():
            points = sorted(points, key=lambda r: (r[x], r["steps"] or 0))
            ax.plot([r[x] for r in points], [r[y] for r in points], marker="o", ms=4, lw=1,
                    label=f"{model} / {sampler}")
        if front is not None:
            on = sorted((r for r in rows if r[f"on_frontier_{front}"]), key=lambda r: (r[x], r[y]))
            if on:  # a staircase: the best quality reachable at each cost, to the costliest point
                xs, ys = [r[x] for r in on], [r[y] for r in on]
                ax.step(xs + [max(r[x] for r in rows)], ys + ys[-1:], where="post", color="black", lw=1.2,
                        ls="--", zorder=3, label="frontier")
                ax.plot(xs, ys, ls="none", marker="o", ms=9, mfc="none", mec="black", zorder=3)
            ax.set_yscale("log")
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
    fig.axes[0].legend(fontsize="x-small", loc="best")
    fig.suptitle(f"speed-quality frontier (judge {model_name(payload['settings']['judge'])}, "
                 f"{payload['settings']['samples']} samples per point, {payload['settings']['device']})",
                 fontsize="medium")
    return save(fig, path)


def write_pareto(study: StudyDir, payload: dict) -> list[Path]:
    """Write ``OUT/pareto.json``, ``OUT/pareto.md`` and ``OUT/pareto.png``; returns their paths."""
    js, md = study.write("pareto", payload, pareto_markdown(payload))
    return [js, md, plot_pareto(payload, study.path / "pareto.png")]
