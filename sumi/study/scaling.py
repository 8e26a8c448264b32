"""The isoFLOP scaling study: ``sumi study scaling`` as a library.

For every family (``objective``), compute budget ``C`` (training FLOPs) and model size (a
*cell*), one ordinary ``sumi train`` run of the recipe, with that size, trained for exactly the
number of steps the budget buys, then its held-out loss (Hoffmann et al. 2022, arXiv 2203.15556,
Section 3.2, "Approach 2: IsoFLOP profiles"):

- steps: ``round(C / (F(size) x tokens_per_step))`` with ``F`` the model's training FLOPs per
  token, ``6 N + 12 L H d S`` (:func:`sumi.model.flops_per_token`, Kaplan et al. 2020, arXiv
  2001.08361, Section 2.1) at the recipe's sequence length ``S``; the realized FLOPs
  ``steps x tokens_per_step x F`` are recorded next to the budget (rounding: at most half a step
  off).  A cell whose budget buys fewer than :data:`MIN_STEPS` steps is not a training: it is
  skipped, and listed as skipped in the payload and the report.
- sizes: ``HxL`` (hidden size x layers) with the recipe's shape rule (:func:`shape_overrides`).
  ``N`` (``params``) is the non-embedding parameter count of :func:`sumi.model.num_parameters`
  (``embeddings=False``: the input embedding table left out, the untied output head kept, as in
  the FLOP formula); ``params_total`` counts everything.
- loss: held-out nats per token of :func:`sumi.evaluate.likelihood.nelbo_texts` at the recipe's
  training sequence length (one canvas per row): the NELBO, an upper bound on the NLL, for the
  diffusion families; the exact NLL for ``ar`` (``bound`` says which); and its bits per byte.
  Every cell of a study is scored on the same documents with the same noise seed (common random
  numbers: the estimates' noise largely cancels between sizes).

Per family and budget with at least 3 sizes measured, :func:`sumi.study.fit.compute_optimal`
fits ``loss = c0 + c1 ln N + c2 (ln N)^2``; its minimum ``N*`` is the compute-optimal size when
it lies inside the sampled sizes.  A fit with no minimum (no upward curvature), one outside the
sizes, or a budget with fewer than 3 sizes falls back to the best measured cell, flagged
(``source: "best measured"`` with a ``note``).  With at least 3 budgets,
:func:`sumi.study.fit.fit_power_law` fits each family's loss at its optimum against the budget,
``L = a C^-b`` (Kaplan et al. 2020, the form of Eq. 1.3), and, with at least 3 optima inside
their profiles, the compute-optimal size ``N* = a C^-b`` (``b`` negative: ``N*`` grows as
``C^-b``; Hoffmann et al. 2022, Eq. 4), each with standard errors.

Every training is a :class:`sumi.study.runs.RunCache` run (cached by its command line, resumed
when interrupted, shared by studies that share the cache) and every evaluation a point of the
:class:`sumi.study.store.StudyDir`, so a study killed at any point continues with ``--resume``
and a larger grid reuses the cells it shares with a smaller one.
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sumi.configs.model import OBJECTIVES
from sumi.study.runs import Run, RunCache
from sumi.study.store import StudyDir, markdown_table, point_key

if TYPE_CHECKING:
    import torch

__all__ = ["MIN_STEPS", "TINY_OBJECTIVES", "TINY_BUDGETS", "TINY_SIZES", "TINY_POINTS", "TINY_MAX_DOCUMENTS",
           "RECIPES", "EVAL_BATCH_SIZE", "Shape", "Cell", "parse_objectives", "parse_budgets", "parse_sizes",
           "recipe_config", "shape_overrides", "plan_grid", "measure_scaling", "summarize", "scaling_markdown",
           "plot_scaling", "write_scaling"]

MIN_STEPS = 10
"""Fewer optimizer steps than this is not a training: such a cell is skipped (and listed)."""

RECIPES = ("tiny", "sumi_150m", "sumi_1b", "sumi_7b")
"""The ``sumi train --preset`` recipes a cell can follow (``tiny``: CPU, embedded corpus)."""

TINY_OBJECTIVES = ("uniform", "masked", "ar")
"""The families of ``--preset tiny`` (and the default of ``--objectives``)."""
TINY_BUDGETS = (1.5e11, 3e11, 6e11)
"""``--preset tiny``'s budgets (FLOPs): 74 to 2,112 steps per cell with :data:`TINY_SIZES` (at
2,048 tokens per step).  Chosen so that the whole preset (27 trainings and their evaluations)
takes at most 15 minutes on 2 CPU cores: the time per FLOP is worst for the smallest model (tiny
recipe on a 2-core CPU: ~20 ms per step at hidden 16, ~33 ms at 32, ~58 ms at 64, plus ~4 s of
start-up per training).  At these budgets the tiny recipe is limited by its steps more than by
its size: the smallest size wins the smaller budgets, and ``ar`` turns towards 32x2 at 6e11
(2026-11-30 pilot: held-out NLL 2.66 at 16x2 against 2.45 at 32x2)."""
TINY_SIZES = ("16x2", "32x2", "64x2")
"""``--preset tiny``'s model sizes: 14,928 / 41,120 / 131,392 non-embedding parameters (uniform)."""
TINY_POINTS = 4
"""NELBO time points per held-out row with the tiny recipe (``ar`` is exact and needs none)."""
TINY_MAX_DOCUMENTS = 8
"""Held-out documents scored with the tiny recipe (~36k tokens of ``stdlib:heldout``): a few
seconds per cell on 2 CPU cores."""
EVAL_BATCH_SIZE = 4
"""Rows per NELBO batch: fixed, because the noise of the estimate depends on it (same rows, same
order, same batch size, same seed: the same noise for every cell)."""

_SHAPE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


@dataclass(frozen=True, order=True)
class Shape:
    """A model size: ``hidden_size`` x ``num_hidden_layers`` (written ``HxL``)."""

    hidden_size: int
    num_hidden_layers: int

    @property
    def name(self) -> str:
        """``HxL``, as ``--sizes`` writes it."""
        return f"{self.hidden_size}x{self.num_hidden_layers}"


@dataclass(frozen=True)
class Cell:
    """One training of the grid: ``family`` at ``budget`` FLOPs with model size ``shape``.

    Attributes:
        family: the objective (:data:`sumi.configs.model.OBJECTIVES`).
        budget: the compute budget (training FLOPs).
        shape: the model size.
        params: non-embedding parameters ``N`` (:func:`sumi.model.num_parameters`, ``embeddings=False``).
        params_total: all parameters.
        flops_per_token: training FLOPs per token, ``6 N + 12 L H d S``.
        tokens_per_step: the recipe's global batch x sequence length.
        exact_steps: ``budget / (flops_per_token x tokens_per_step)`` before rounding.
        run: the ``sumi train`` command (``None`` when skipped: fewer than :data:`MIN_STEPS` steps).
    """

    family: str
    budget: float
    shape: Shape
    params: int
    params_total: int
    flops_per_token: int
    tokens_per_step: int
    exact_steps: float
    run: Run | None

    @property
    def steps(self) -> int:
        """The optimizer steps of the cell: ``round(exact_steps)``."""
        return round(self.exact_steps)

    @property
    def flops(self) -> int:
        """The realized training FLOPs: ``steps x tokens_per_step x flops_per_token``."""
        return self.steps * self.tokens_per_step * self.flops_per_token

    def describe(self) -> dict[str, Any]:
        """The cell as a row of the payload (without its measurement)."""
        return {"family": self.family, "budget": self.budget, "size": self.shape.name,
                "hidden_size": self.shape.hidden_size, "layers": self.shape.num_hidden_layers,
                "params": self.params, "params_total": self.params_total, "steps": self.steps,
                "tokens": self.steps * self.tokens_per_step, "flops": self.flops,
                "flops_per_token": self.flops_per_token}


# -- parsing the grid ---------------------------------------------------------------------------
def _items(flag: str, text: str) -> list[str]:
    items = [item.strip() for item in str(text).split(",")]
    if not text or not all(items):
        raise ValueError(f"{flag} must be a comma-separated list with no empty item, got {text!r}")
    if len(set(items)) != len(items):
        raise ValueError(f"{flag} lists an item twice: {text!r}")
    return items


def parse_objectives(text: str) -> list[str]:
    """``"uniform,masked,ar"`` -> the families (each one of :data:`sumi.configs.model.OBJECTIVES`).

    Raises:
        ValueError: an empty item, a repeated one, or an unknown family.
    """
    items = _items("--objectives", text)
    for item in items:
        if item not in OBJECTIVES:
            raise ValueError(f"--objectives: unknown family {item!r}; accepted: {', '.join(OBJECTIVES)}")
    return items


def parse_budgets(text: str) -> list[float]:
    """``"1e11,2e11"`` -> the compute budgets in FLOPs, sorted (each a finite number >= 1).

    Raises:
        ValueError: a value that is not a number >= 1, or a repeated one.
    """
    budgets = []
    for item in _items("--budgets", text):
        try:
            value = float(item)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 1:
            raise ValueError(f"--budgets: each budget must be a number of FLOPs >= 1 (e.g. 2e11), got {item!r}")
        budgets.append(value)
    if len(set(budgets)) != len(budgets):
        raise ValueError(f"--budgets lists a budget twice: {text!r}")
    return sorted(budgets)


def parse_sizes(text: str) -> list[Shape]:
    """``"32x2,64x2"`` -> the model sizes (``HIDDENxLAYERS``, positive integers), in the order of
    :class:`Shape` (hidden size, then layers).

    Raises:
        ValueError: an item not of the form ``HxL`` with positive integers, or a repeated one.
    """
    shapes = []
    for item in _items("--sizes", text):
        match = _SHAPE.match(item)
        if not match or int(match.group(1)) < 1 or int(match.group(2)) < 1:
            raise ValueError(f"--sizes: each size must be HIDDENxLAYERS with positive integers (e.g. 64x2), "
                             f"got {item!r}")
        shapes.append(Shape(int(match.group(1)), int(match.group(2))))
    if len(set(shapes)) != len(shapes):
        raise ValueError(f"--sizes lists a size twice: {text!r}")
    return sorted(shapes)


# -- the configuration of a cell ---------------------------------------------------------------
def recipe_config(recipe: str, data: Sequence[str] = (), *, progress: bool = True):
    """The :class:`sumi.configs.train.TrainConfig` that ``sumi train --preset RECIPE [--data ...]``
    starts from before its ``--set`` overrides: for ``tiny`` on the embedded corpus (no
    ``--data``, or a ``stdlib:`` split) the tiny recipe with the embedded tokenizer's special ids
    (the tokenizer and packed data are built and cached once, as ``sumi train`` would); else the
    preset itself.

    Raises:
        ValueError: an unknown recipe, a non-tiny recipe without ``data`` or with a ``stdlib:``
            split, or bad ``data`` items.
    """
    from sumi.configs.train import TRAIN_PRESETS
    from sumi.data.spec import stdlib_split_arg

    if recipe not in RECIPES:
        raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    data = list(data)
    split = stdlib_split_arg(data) if data else ("train" if recipe == "tiny" else None)
    if recipe != "tiny":
        if not data:
            raise ValueError(f"--recipe {recipe} needs --data (a directory from `sumi data prepare`)")
        if split is not None:
            raise ValueError(f"--data {data[0]} is tokenized with the embedded 512-id tokenizer and trains "
                             f"--recipe tiny only, not {recipe}")
    if split is None:
        return TRAIN_PRESETS[recipe]()
    from sumi.train import embedded

    base = TRAIN_PRESETS["tiny"]()
    _, tokenizer = embedded.prepare_embedded(base.seq_len, split=split, progress=progress)
    return embedded.embedded_config(tokenizer)


def shape_overrides(model_config, shape: Shape) -> tuple[str, ...]:
    """The ``--set`` overrides that give ``model_config`` (the recipe's model) the size ``shape``.

    The shape rule keeps the recipe's proportions: its ``head_dim`` (16 for ``tiny``, 128 for the
    Sumi presets, as in ``sumi.configs.model``), its query heads per key/value head (2 for
    ``tiny``, 4 for Sumi) and its MLP width (3 x hidden for both): ``heads = hidden / head_dim``,
    ``kv_heads = max(1, heads / group)``, ``intermediate = 3 x hidden``.

    Raises:
        ValueError: a hidden size that is not a multiple of ``head_dim``, or a head count that the
            key/value heads do not divide.
    """
    head_dim = model_config.head_dim
    group = model_config.num_key_value_groups
    ratio = model_config.intermediate_size / model_config.hidden_size
    hidden, layers = shape.hidden_size, shape.num_hidden_layers
    if hidden % head_dim:
        raise ValueError(f"--sizes {shape.name}: the hidden size must be a multiple of the recipe's head_dim "
                         f"({head_dim})")
    heads = hidden // head_dim
    kv_heads = max(1, heads // group)
    if heads % kv_heads:
        raise ValueError(f"--sizes {shape.name}: {heads} query heads do not split into groups of {group} per "
                         f"key/value head (the recipe's); use a hidden size of {head_dim} x a multiple of {group}")
    return (f"model.hidden_size={hidden}", f"model.num_hidden_layers={layers}",
            f"model.num_attention_heads={heads}", f"model.num_key_value_heads={kv_heads}",
            f"model.intermediate_size={round(ratio * hidden)}")


def plan_grid(base, objectives: Sequence[str], budgets: Sequence[float], shapes: Sequence[Shape], *,
              recipe: str = "tiny", seed: int = 0, data: Sequence[str] = ()) -> list[Cell]:
    """Every cell of the grid (families x budgets x sizes, in that order), each with the steps its
    budget buys; cells of fewer than :data:`MIN_STEPS` steps have ``run`` ``None``.

    ``base``: :func:`recipe_config`.  Each cell's configuration is built the way ``sumi train``
    builds it: ``base.override(["objective=F", *shape_overrides(...)])`` (a mask family's
    vocabulary holds one more id, which its FLOPs count).

    Raises:
        ValueError: a size the shape rule or the configuration refuses.
    """
    from sumi.model import flops_per_token, num_parameters

    cells = []
    for family in objectives:
        for budget in budgets:
            for shape in shapes:
                sets = shape_overrides(base.model, shape)
                try:
                    config = base.override([f"objective={family}", *sets])
                except ValueError as e:
                    raise ValueError(f"--sizes {shape.name}: {e}") from None
                fpt = flops_per_token(config.model, config.seq_len)
                exact = budget / (fpt * config.tokens_per_step)
                run = None
                if round(exact) >= MIN_STEPS:
                    run = Run(objective=family, steps=round(exact), preset=recipe, seed=seed, data=tuple(data),
                              assignments=sets,
                              label=f"{family} {shape.name} at {budget:.3g} FLOPs ({round(exact)} steps)")
                cells.append(Cell(family=family, budget=float(budget), shape=shape,
                                  params=num_parameters(config.model, embeddings=False),
                                  params_total=num_parameters(config.model), flops_per_token=fpt,
                                  tokens_per_step=config.tokens_per_step, exact_steps=exact, run=run))
    return cells


# -- measuring ------------------------------------------------------------------------------------
def measure_scaling(study: StudyDir, cells: Sequence[Cell], *, heldout: Sequence[str], canvas_length: int,
                    points: int, seed: int = 0, max_documents: int | None = None, runs: RunCache | None = None,
                    device: torch.device | str | None = None, settings: dict | None = None,
                    progress: bool = True) -> dict:
    """Train every cell (through ``runs``, default ``RunCache(study.runs)``), score each on the
    held-out documents, and return the payload (``{"study": "scaling", "date", "settings",
    "rows", "skipped", "baselines", "families"}``; ``families``: :func:`summarize`).

    Trainings come first (each prints its own progress line and bar), then the evaluations (one
    bar); a cell already measured (a point of ``study``) is neither trained nor scored again.

    Args:
        study: the open study directory.
        cells: :func:`plan_grid`.
        heldout: the held-out data (as ``sumi eval nelbo --data``: paths, globs, ``stdlib:heldout``).
        canvas_length: tokens per scored row (the recipe's training sequence length).
        points: NELBO time points per row (diffusion families; ``ar`` is exact).
        seed: the NELBO noise seed (the trainings' seed is in each cell's run).
        max_documents: score the first this many documents only (``None``: all).
        runs: the run cache.
        device: where the models are scored (default cpu).
        settings: recorded in the payload as given (the command's flags).
        progress: progress bars on stderr.

    Raises:
        sumi.study.runs.RunFailed: a training failed (finished cells stay cached).
        ValueError: no held-out document.
    """
    import torch

    from sumi.study.models import heldout_texts, load_model_dir

    runs = runs if runs is not None else RunCache(study.runs, progress=progress)
    device = torch.device(device or "cpu")
    texts = heldout_texts(list(heldout), max_documents=max_documents)
    trained = [c for c in cells if c.run is not None]
    specs = [{"study": "scaling", "run": c.run.key(), "heldout": list(heldout), "max_documents": max_documents,
              "canvas_length": canvas_length, "points": None if c.family == "ar" else points, "seed": seed,
              "batch_size": EVAL_BATCH_SIZE, "device": device.type} for c in trained]
    todo = [(c, s) for c, s in zip(trained, specs) if study.get(point_key(s)) is None]
    for i, (cell, _) in enumerate(todo):
        runs.ensure(cell.run, position=f"[{i + 1}/{len(todo)}] ")

    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), desc="held-out loss", unit="cell", file=sys.stderr)
    rows = []
    for cell, spec in zip(trained, specs):
        def measure(cell=cell):
            from sumi.evaluate.likelihood import nelbo_texts

            model, tokenizer = load_model_dir(runs.path(cell.run) / "model", device=device)
            report = nelbo_texts(model, tokenizer, texts, canvas_length=canvas_length, points=points,
                                 batch_size=EVAL_BATCH_SIZE, seed=seed, device=device)
            if bar is not None:
                bar.update(1)
            return {"loss": report.nelbo_per_token, "bits_per_byte": report.bits_per_byte, "bound": report.bound,
                    "documents": report.documents, "heldout_tokens": report.tokens, "heldout_bytes": report.bytes,
                    "baselines": report.baselines}

        measured = study.point(spec, measure)
        rows.append({**cell.describe(), **measured, "run": str(runs.path(cell.run))})
    if bar is not None:
        bar.close()
    skipped = [{**c.describe(), "exact_steps": c.exact_steps,
                "reason": f"{c.budget:.3g} FLOPs buy {c.exact_steps:.1f} steps of {c.shape.name}, fewer than "
                          f"{MIN_STEPS}"} for c in cells if c.run is None]
    baselines = rows[0]["baselines"] if rows else None
    return {"study": "scaling", "date": date.today().isoformat(), "settings": dict(settings or {}),
            "rows": rows, "skipped": skipped, "baselines": baselines, "families": summarize(rows)}


# -- the fits ---------------------------------------------------------------------------------------
def _law(law) -> dict:
    return asdict(law)


def summarize(rows: Sequence[dict]) -> dict[str, dict]:
    """Per family (in order of appearance): the optimum of each budget's isoFLOP profile and the
    power laws across budgets (see the module docstring).

    Args:
        rows: measured cells, each with ``family``, ``budget``, ``params``, ``size`` and ``loss``
            (and ``bound``: whether the loss is an upper bound).

    Returns:
        ``{family: {"bound", "budgets": [{"budget", "sizes", "params", "losses", "parabola" (the
        :class:`sumi.study.fit.IsoFlopMinimum` fields, or ``None``), "optimum": {"params", "loss",
        "size", "source": "parabola" | "best measured"}, "note"}], "loss_law", "loss_law_note",
        "params_law", "params_law_note"}}``; a law is the :class:`sumi.study.fit.PowerLaw` fields
        plus the ``compute`` and ``values`` fitted, or ``None`` with its note saying why.
    """
    from sumi.study.fit import compute_optimal, fit_power_law

    families: dict[str, dict] = {}
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in rows if r["family"] == family]
        profiles = []
        for budget in sorted({r["budget"] for r in mine}):
            cells = sorted((r for r in mine if r["budget"] == budget), key=lambda r: r["params"])
            params, losses = [r["params"] for r in cells], [r["loss"] for r in cells]
            best = min(cells, key=lambda r: r["loss"])
            fallback = {"params": best["params"], "loss": best["loss"], "size": best["size"], "source": "best measured"}
            parabola, optimum, note = None, fallback, None
            if len(set(params)) < 3:
                note = f"{len(set(params))} size(s) measured: an isoFLOP fit needs 3; the best measured size is shown"
            else:
                try:
                    fit = compute_optimal(params, losses)
                except ValueError as e:
                    note = f"no isoFLOP minimum ({e}); the best measured size is shown"
                else:
                    parabola = asdict(fit)
                    if fit.inside:
                        optimum = {"params": fit.size, "loss": fit.loss, "size": None, "source": "parabola"}
                    else:
                        note = (f"the parabola's minimum ({fit.size:.4g} params) lies outside the sizes measured; "
                                "the best measured size is shown")
            profiles.append({"budget": budget, "sizes": [r["size"] for r in cells], "params": params,
                             "losses": losses, "parabola": parabola, "optimum": optimum, "note": note})
        entry = {"bound": bool(mine[0].get("bound", True)), "budgets": profiles}
        compute = [p["budget"] for p in profiles]
        values = [p["optimum"]["loss"] for p in profiles]
        entry["loss_law"], entry["loss_law_note"] = None, None
        if len(compute) >= 3:
            entry["loss_law"] = {**_law(fit_power_law(compute, values)), "compute": compute, "values": values}
        else:
            entry["loss_law_note"] = f"{len(compute)} budget(s) measured: a power law needs 3"
        inside = [p for p in profiles if p["optimum"]["source"] == "parabola"]
        entry["params_law"], entry["params_law_note"] = None, None
        if len(inside) >= 3:
            c, n = [p["budget"] for p in inside], [p["optimum"]["params"] for p in inside]
            entry["params_law"] = {**_law(fit_power_law(c, n)), "compute": c, "values": n}
        else:
            entry["params_law_note"] = (f"{len(inside)} budget(s) with a minimum inside the sizes measured: the "
                                        "compute-optimal size law needs 3")
        families[family] = entry
    return families


# -- reports ----------------------------------------------------------------------------------------
def _law_text(law: dict, what: str) -> str:
    return (f"{what} = a C^-b with a = {law['a']:.4g} +- {law['a_stderr']:.2g}, b = {law['b']:.4g} +- "
            f"{law['b_stderr']:.2g} (standard errors; residual sd of ln {what} {law['sigma']:.2g}, "
            f"{law['points']} points)")


def scaling_markdown(payload: dict) -> str:
    """``scaling.md``: the settings, the table of cells (with what each column means), the skipped
    cells, each family's optima and fitted laws with their standard errors."""
    s = payload["settings"]
    lines = ["# sumi study scaling", "",
             f"{payload['date']}; recipe `{s.get('recipe')}`, families {', '.join(s.get('objectives', []))}, "
             f"budgets {', '.join(f'{b:.3g}' for b in s.get('budgets', []))} FLOPs, sizes "
             f"{', '.join(s.get('sizes', []))}; held-out {' '.join(s.get('heldout', []))} (first "
             f"{s.get('max_documents') or 'all'} documents), canvas {s.get('canvas_length')} tokens, "
             f"{s.get('points')} NELBO time points, seed {s.get('seed')}.", "",
             "Columns: `params` N, non-embedding parameters (the input embedding table left out, the output head "
             "kept); `steps` = round(budget / (FLOPs per token x tokens per step)); `flops` the realized training "
             "FLOPs (steps x tokens x (6 N + 12 L H d S)); `loss` held-out nats per token: the NELBO (an upper "
             "bound on the NLL) for the diffusion families, the exact NLL for `ar`; `bits/byte` the same in bits "
             "per UTF-8 byte.", ""]
    headers = ["family", "budget", "size", "params", "steps", "tokens", "flops", "loss", "bits/byte"]
    lines.append(markdown_table(headers, [[r["family"], r["budget"], r["size"], r["params"], r["steps"], r["tokens"],
                                          float(r["flops"]), r["loss"], r["bits_per_byte"]]
                                         for r in payload["rows"]]))
    if payload.get("baselines"):
        lines += ["", "Compressors on the same documents (bits/byte): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in payload["baselines"].items()) + "."]
    if payload.get("skipped"):
        lines += ["", "Skipped cells (not a training):", ""]
        lines += [f"- {c['family']} {c['size']} at {c['budget']:.3g} FLOPs: {c['reason']}" for c in payload["skipped"]]
    for family, entry in payload["families"].items():
        kind = "NELBO, an upper bound" if entry["bound"] else "exact NLL"
        lines += ["", f"## {family} ({kind})", ""]
        lines.append(markdown_table(["budget", "optimal params", "loss", "source", "note"],
                                    [[p["budget"], float(p["optimum"]["params"]), p["optimum"]["loss"],
                                      p["optimum"]["source"], p["note"] or ""] for p in entry["budgets"]]))
        lines.append("")
        lines.append("- " + (_law_text(entry["loss_law"], "loss") if entry["loss_law"] else
                             f"no loss law: {entry['loss_law_note']}"))
        if entry["params_law"]:
            law = entry["params_law"]
            lines.append("- " + _law_text(law, "N*") + f": N* grows as C^{-law['b']:.3g}")
        else:
            lines.append(f"- no compute-optimal size law: {entry['params_law_note']}")
    return "\n".join(lines)


def _ticks_at(axis, values: Sequence[float]) -> None:
    """Label a log axis at ``values`` only (the measured sizes or budgets span less than a decade
    or two: the default decade ticks would label nothing, and labelled minor ticks overlap)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    axis.set_major_locator(FixedLocator(list(values)))
    axis.set_major_formatter(lambda v, _: f"{v:.3g}")
    axis.set_minor_locator(NullLocator())
    axis.set_minor_formatter(NullFormatter())


def plot_scaling(payload: dict, path: str | os.PathLike) -> Path:
    """``scaling.png``: one panel per family with its isoFLOP profiles (loss against
    non-embedding parameters, log x, one curve per budget, the fitted parabola dashed and the
    optimum starred; a hollow star: the best measured fallback), and one panel of loss against
    compute (log-log) with each family's optima, fitted law and its 1-sigma band of the fitted
    law (:meth:`sumi.study.fit.PowerLaw.predict`)."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    from sumi._plot import figure, save
    from sumi.study.fit import PowerLaw

    families = payload["families"]
    panels = len(families) + 1
    fig = figure(4.0 * panels, 3.8)
    budgets = sorted({p["budget"] for e in families.values() for p in e["budgets"]})
    cmap = colormaps["viridis"]
    colour = {b: cmap(i / max(1, len(budgets) - 1) * 0.85) for i, b in enumerate(budgets)}
    for k, (family, entry) in enumerate(families.items()):
        ax = fig.add_subplot(1, panels, k + 1)
        for p in entry["budgets"]:
            c = colour[p["budget"]]
            ax.plot(p["params"], p["losses"], marker="o", color=c, label=f"{p['budget']:.3g} FLOPs")
            if p["parabola"] is not None:
                c0, c1, c2 = p["parabola"]["coefficients"]
                xs = np.geomspace(min(p["params"]), max(p["params"]), 50)
                ax.plot(xs, c0 + c1 * np.log(xs) + c2 * np.log(xs) ** 2, ls="--", lw=0.8, color=c)
            opt = p["optimum"]
            ax.plot([opt["params"]], [opt["loss"]], marker="*", ms=13, color=c,
                    mfc=c if opt["source"] == "parabola" else "none")
        ax.set_xscale("log")
        _ticks_at(ax.xaxis, sorted({n for p in entry["budgets"] for n in p["params"]}))
        ax.set_xlabel("non-embedding parameters N")
        ax.set_ylabel("held-out " + ("NELBO" if entry["bound"] else "NLL") + " (nats/token)")
        ax.set_title(f"{family}: isoFLOP profiles", fontsize="medium")
        ax.legend(fontsize="small")
        ax.grid(alpha=0.3, which="both")
    ax = fig.add_subplot(1, panels, panels)
    for k, (family, entry) in enumerate(families.items()):
        colour_f = f"C{k}"
        opts = [(p["budget"], p["optimum"]["loss"]) for p in entry["budgets"]]
        ax.plot([c for c, _ in opts], [v for _, v in opts], marker="o", ls="none", color=colour_f,
                label=family if entry["loss_law"] is None else None)
        law = entry["loss_law"]
        if law is not None:
            fit = PowerLaw(**{f: law[f] for f in PowerLaw.__dataclass_fields__})
            xs = np.geomspace(min(law["compute"]), max(law["compute"]), 50)
            mean, se = zip(*(fit.predict(float(x)) for x in xs))
            mean, se = np.array(mean), np.array(se)
            ax.plot(xs, mean, color=colour_f, label=f"{family}: {fit.a:.3g} C^-{fit.b:.3g}")
            ax.fill_between(xs, mean * np.exp(-se), mean * np.exp(se), color=colour_f, alpha=0.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    _ticks_at(ax.xaxis, budgets)
    ax.yaxis.set_minor_formatter(NullFormatter())
    ax.yaxis.set_major_formatter(ScalarFormatter())  # losses span less than a decade: plain numbers
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 3, 4, 5, 6, 7, 8, 9)))
    ax.set_xlabel("training FLOPs C")
    ax.set_ylabel("loss at the optimum (nats/token)")
    ax.set_title("loss against compute (band: 1 sigma of the fit)", fontsize="medium")
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, which="both")
    return save(fig, path)


def write_scaling(study: StudyDir, payload: dict) -> list[Path]:
    """``scaling.json``, ``scaling.md`` and ``scaling.png`` in the study directory."""
    js, md = study.write("scaling", payload, scaling_markdown(payload))
    return [js, md, plot_scaling(payload, study.path / "scaling.png")]
