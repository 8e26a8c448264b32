"""``sumi probe revision | commitment``: the generation-dynamics probes from the command line.

``add_arguments`` fills the ``probe`` sub-parser, ``run(args)`` does the work and returns the
exit status.  Prompts come from ``--prompt TEXT`` (repeatable) and/or ``--prompts FILE.jsonl``
(objects with ``"prompt"`` and optional ``"answer"``).  Results go to ``--out DIR``: the report
as JSON (``to_dict()`` plus the decoded texts) and its plots as PNG, after ``--out`` is proven
writable (checked first, before the model loads); a small table goes to stdout.  Mistakes in
user input raise ``sumi.cli_common.UsageError`` (one line on stderr, exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sumi.cli_common import UsageError, add_model_arguments, load_model, writable_dir
from sumi.data.sources import jsonl_records
from sumi.evaluate.probes import PROBE_CANVAS
from sumi.generation import SAMPLERS, canvas_length_for

DEFAULT_BUDGETS = "0,8,16,32,64"
CHECKS: dict[str, Callable[[str, str], bool]] = {
    "contains": lambda output, expected: expected.strip() in output,
    "exact": lambda output, expected: output.strip() == expected.strip(),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="probe_action", required=True, metavar="ACTION")
    revision = sub.add_parser("revision", help="extra revision steps after generating: how much is rewritten, "
                                               "and does it help",
                              description="Generate, then run extra Adaptive steps at the final log-SNR and report "
                                          "overwrite rate, net change, round trips (and accuracy) per budget.")
    _add_common(revision)
    revision.add_argument("--budgets", default=DEFAULT_BUDGETS,
                          help=f"revision budgets in steps, comma-separated (default {DEFAULT_BUDGETS})")
    revision.add_argument("--check", choices=sorted(CHECKS), default="contains",
                          help="how an answer is judged when every prompt has an \"answer\": the decoded output "
                               "contains it, or equals it (both stripped); default contains")
    commitment = sub.add_parser("commitment", help="the order in which answer positions commit to their final token",
                                description="Generate with a trace and report each answer position's commitment "
                                            "step, Spearman order correlation, left-to-right pair fraction and ink.")
    _add_common(commitment)


def _add_common(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                        help="a prompt (BOS is added); repeatable")
    parser.add_argument("--prompts", metavar="FILE.jsonl",
                        help="one JSON object per line: {\"prompt\": TEXT, \"answer\": TEXT (optional)}")
    parser.add_argument("--out", required=True, help="the directory to write the JSON report and PNG plots to")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the answer budget (default 64)")
    parser.add_argument("--canvas-length", type=int, default=None,
                        help=f"canvas positions (default: min({PROBE_CANVAS}, the model's max_position_embeddings))")
    parser.add_argument("--steps", type=int, default=64, help="denoising steps of the generation (default 64)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="ancestral",
                        help="the generation's sampler (default ancestral: every position is denoised at every step)")
    parser.add_argument("--tokens-per-step", type=int, default=None,
                        help="positions committed per step (adaptive: default 1; confidence: default the share a "
                             "masked-diffusion step unmasks)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar on stderr")


@dataclass(frozen=True)
class _Prompt:
    """A prompt's text and, from ``--prompts``, the expected answer (``None``: no check)."""

    text: str
    answer: str | None = None


def run(args: argparse.Namespace) -> int:
    prompts = _read_prompts(args)
    budgets = _parse_budgets(args.budgets) if args.probe_action == "revision" else None
    out_dir = writable_dir(args.out)  # before the model loads: a bad --out must not cost the whole run
    model, tokenizer = load_model(args)
    ids = [list(tokenizer.encode(p.text, add_bos=True)) for p in prompts]
    try:
        canvas_length = canvas_length_for(model.config, args.canvas_length, PROBE_CANVAS)
        settings = dict(max_new_tokens=args.max_new_tokens, canvas_length=canvas_length, steps=args.steps,
                        sampler=args.sampler, tokens_per_step=args.tokens_per_step, seed=args.seed,
                        progress=args.progress)
        _note_unwritten_positions(args, canvas_length, min(len(i) for i in ids))
        if args.probe_action == "revision":
            paths = _revision(model, tokenizer, prompts, ids, budgets, args.check, settings, out_dir)
        else:
            paths = _commitment(model, tokenizer, prompts, ids, settings, out_dir)
    except (ValueError, TypeError) as e:  # the probes validate every input before they sample
        raise UsageError(str(e)) from None
    for path in paths:
        print(f"wrote {path}")
    return 0


def _revision(model, tokenizer, prompts: list[_Prompt], ids: list[list[int]], budgets: list[int], check: str,
              settings: dict, out_dir: Path) -> list[Path]:
    from sumi.evaluate.plots import plot_revision
    from sumi.evaluate.probes import revision_probe

    checker = None
    if all(p.answer is not None for p in prompts):
        judge = CHECKS[check]

        def checker(i: int, answer_ids: list[int]) -> bool:
            return judge(tokenizer.decode(answer_ids, skip_special_tokens=True), prompts[i].answer)
    elif any(p.answer is not None for p in prompts):
        print("sumi probe: some prompts have no \"answer\": accuracy is not computed", file=sys.stderr)
    report = revision_probe(model, ids, budgets=budgets, checker=checker, **settings)
    data = report.to_dict()
    data["settings"]["check"] = check if checker is not None else None
    data["prompt_texts"] = [p.text for p in prompts]
    data["expected_answers"] = [p.answer for p in prompts]
    for entry in data["budgets"]:
        entry["texts"] = [tokenizer.decode(a, skip_special_tokens=True) for a in entry["answers"]]
    _table(["budget", "overwrite/step", "net change", "round trips", "accuracy"],
           [[s.budget, s.overwrite_rate, s.net_change, s.round_trips, s.accuracy] for s in report.budgets])
    return [_write_json(data, out_dir / "revision.json"), plot_revision(report, out_dir / "revision.png")]


def _commitment(model, tokenizer, prompts: list[_Prompt], ids: list[list[int]], settings: dict,
                out_dir: Path) -> list[Path]:
    from sumi.evaluate.plots import plot_commitment, plot_ink
    from sumi.evaluate.probes import commitment_probe

    report = commitment_probe(model, ids, **settings)
    data = report.to_dict()
    for entry, prompt, answer in zip(data["prompts"], prompts, report.answers):
        entry["prompt_text"] = prompt.text
        entry["text"] = tokenizer.decode(answer, skip_special_tokens=True)
    _table(["prompt", "spearman", "left-to-right", "mean commit"],
           [[i, float(report.order_correlation[i]), float(report.left_to_right_fraction[i]),
             float(report.commitment_steps[i].double().mean())] for i in range(len(prompts))])
    return [_write_json(data, out_dir / "commitment.json"), plot_commitment(report, out_dir / "commitment.png"),
            plot_ink(report, out_dir / "ink.png")]


def _read_prompts(args: argparse.Namespace) -> list[_Prompt]:
    prompts = [_Prompt(text) for text in args.prompt]
    if args.prompts is not None:
        path = Path(args.prompts)
        if not path.is_file():
            raise UsageError(f"no prompts file {args.prompts}")
        try:
            records = list(jsonl_records(path))
        except ValueError as e:
            raise UsageError(str(e)) from None
        for n, record in records:
            if not isinstance(record.get("prompt"), str):
                raise UsageError(f"{args.prompts}:{n}: expected an object with a string \"prompt\"")
            answer = record.get("answer")
            if answer is not None and not isinstance(answer, str):
                raise UsageError(f"{args.prompts}:{n}: \"answer\" must be a string")
            prompts.append(_Prompt(record["prompt"], answer))
    if not prompts:
        raise UsageError("no prompts: give --prompt TEXT (repeatable) and/or --prompts FILE.jsonl")
    return prompts


def _parse_budgets(text: str) -> list[int]:
    try:
        budgets = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--budgets must be comma-separated integers, got {text!r}") from None
    if not budgets or any(b < 0 for b in budgets) or len(set(budgets)) != len(budgets):
        raise UsageError(f"--budgets must be distinct non-negative integers, got {text!r}")
    return budgets


def _note_unwritten_positions(args: argparse.Namespace, canvas_length: int, shortest_prompt: int) -> None:
    """Adaptive writes at most ``steps * tokens_per_step`` positions: with fewer than the canvas
    has to denoise, part of the answer stays noise and its statistics describe noise."""
    tokens_per_step = 1 if args.tokens_per_step is None else args.tokens_per_step  # adaptive's default
    if args.sampler != "adaptive" or args.steps < 1 or tokens_per_step < 1:
        return  # the probes reject bad values with a clearer message
    free = canvas_length - shortest_prompt - 2  # answer + tail; EOS/BOS are pinned
    if args.steps * tokens_per_step < free:
        print(f"sumi probe: note: adaptive writes at most steps x tokens-per-step = "
              f"{args.steps * tokens_per_step} positions but up to {free} are noise at the start; positions "
              f"never written stay noise (raise --steps or --tokens-per-step)", file=sys.stderr)


def _table(header: list[str], rows: list[list]) -> None:
    cells = [header] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[k]) for row in cells) for k in range(len(header))]
    for row in cells:
        print("  ".join(c.rjust(w) for c, w in zip(row, widths)))


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _write_json(data: dict, path: Path) -> Path:
    # allow_nan=False: NaN is not JSON; the reports already write undefined values as null
    path.write_text(json.dumps(data, indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return path
