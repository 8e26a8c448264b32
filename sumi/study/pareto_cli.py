"""``sumi study pareto``: generative perplexity against forward passes and seconds per sample,
per model and sampler, and the frontier (Sahoo et al. 2026, arXiv 2602.15014); the measures are
those of :mod:`sumi.study.frontier`.

Models and judge come from ``--models`` and ``--judge``, or from ``--preset tiny``, which trains
a uniform and a masked model and an ar judge (cached ``sumi train`` runs).  Both together: the
``--models`` are measured in addition to the trained models, and a ``--judge`` replaces the
trained judge (which is then not trained).

Light at import (argparse only): every ``sumi`` command builds this parser.
"""

from __future__ import annotations

import argparse
import sys

PRESETS = ("tiny",)
_DEFAULT_STEPS = "4,8,16,32,64,128"


def _int_list(flag: str):
    def parse(text: str) -> list[int]:
        parts = [p.strip() for p in text.split(",")]
        try:
            values = [int(p) for p in parts]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a comma list of integers >= 1, got {text!r}") from None
        if not values or any(v < 1 for v in values):
            raise argparse.ArgumentTypeError(f"{flag} takes a comma list of integers >= 1, got {text!r}")
        return values
    return parse


def _name_list(text: str) -> list[str]:
    return [p.strip() for p in text.split(",")]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", default=[], metavar="DIR",
                        help="model directories (any family). Shown by the directory's name, or its parent's when "
                             "it is called 'model' (the OUT/model of `sumi train`). With --preset they are measured "
                             "in addition to the trained ones")
    parser.add_argument("--judge", default=None, metavar="DIR",
                        help="the autoregressive (objective ar) model that scores the samples: generative perplexity; "
                             "never one of --models. Required unless --preset, where it replaces the trained judge")
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="tiny: train the models (uniform and masked, tiny recipe, seed 0) and the judge (ar, "
                             "seed 1) on the embedded corpus, then measure them; on 2 CPU cores in under 15 minutes")
    parser.add_argument("--train-steps", type=int, default=None, metavar="N",
                        help="optimizer steps of each --preset training (default: the tiny recipe's)")
    parser.add_argument("--steps", type=_int_list("--steps"), default=_int_list("--steps")(_DEFAULT_STEPS),
                        metavar="N,N,...", help=f"sampler step counts of the diffusion models (default "
                                                f"{_DEFAULT_STEPS}); an ar model has one point per sampler")
    parser.add_argument("--samplers", type=_name_list, default=None, metavar="NAME,...",
                        help="samplers (ancestral, adaptive, greedy, confidence), each run on the models it applies "
                             "to (the others are listed as skipped); default: uniform ancestral,adaptive; masked "
                             "ancestral,adaptive,confidence; ar ancestral (greedy degenerates into repetitions a "
                             "judge rewards: ask for it explicitly). adaptive commits ceil(positions / steps) "
                             "positions per step")
    parser.add_argument("--samples", type=int, default=16, metavar="N", help="samples per point (default 16)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="samples generated together (default: all of a point's samples); the batch starting at "
                             "sample j uses seed SEED + j")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first sample (default 0)")
    parser.add_argument("--canvas-length", type=int, default=128, metavar="L",
                        help="canvas positions of the diffusion models (default 128)")
    parser.add_argument("--max-new-tokens", type=int, default=None, metavar="M",
                        help="answer budget of every model (default: the whole canvas, L - 2 - the longest prompt "
                             "in tokens with BOS)")
    parser.add_argument("--prompts", default=None, metavar="FILE",
                        help="a text file, one prompt per non-empty line: sample i continues prompt i mod the count, "
                             "and the judge scores the continuation given its prompt (default: unconditional)")


def _prompts(path: str | None) -> list[str] | None:
    from sumi.cli_common import UsageError

    if path is None:
        return None
    try:
        text = open(path, encoding="utf-8").read()
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompts {path}: {getattr(e, 'strerror', None) or e}") from None
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UsageError(f"--prompts {path}: no non-empty line (one prompt per line)")
    return prompts


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sumi.cli_common import UsageError
    from sumi.study.cli import launcher

    if args.preset is None:
        if not args.models:
            raise UsageError("give --models DIR [DIR ...] and --judge DIR, or --preset tiny")
        if args.judge is None:
            raise UsageError("--judge DIR is required without --preset (an ar model that scores the samples)")
        if args.train_steps is not None:
            raise UsageError("--train-steps applies to --preset trainings only")
    if args.train_steps is not None and args.train_steps < 1:
        raise UsageError(f"--train-steps must be >= 1, got {args.train_steps}")
    for flag, value in (("--samples", args.samples), ("--batch-size", args.batch_size),
                        ("--canvas-length", args.canvas_length), ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:
            raise UsageError(f"{flag} must be >= 1, got {value}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if any(not s for s in args.samplers or ()):
        raise UsageError(f"--samplers has an empty name: {','.join(args.samplers)}")
    prompts = _prompts(args.prompts)
    for flag, paths in (("--models", args.models), ("--judge", [args.judge] if args.judge else [])):
        for p in paths:
            if not Path(p).is_dir():
                raise UsageError(f"{flag} {p}: no such model directory")

    from sumi.study.frontier import measure_pareto, write_pareto
    from sumi.study.store import open_study

    with open_study(args.out, resume=args.resume) as study:
        models, judge = list(args.models), args.judge
        if args.preset is not None:
            from sumi.study.presets import TINY_STEPS, tiny_judge, tiny_run
            from sumi.study.runs import RunCache

            cache = RunCache(args.runs or study.runs, launcher=launcher(args), threads=args.threads,
                             progress=args.progress)
            steps = args.train_steps or TINY_STEPS
            runs = [tiny_run("uniform", steps=steps), tiny_run("masked", steps=steps)]
            if judge is None:
                runs.append(tiny_judge(steps=steps))
            dirs = [cache.ensure(r, position=f"[{i + 1}/{len(runs)}] ") for i, r in enumerate(runs)]
            models = [str(d) for d in dirs[:2]] + models
            if judge is None:
                judge = str(dirs[2])
        try:
            payload = measure_pareto(study, models, judge, steps=args.steps, samplers=args.samplers,
                                     samples=args.samples, seed=args.seed, batch_size=args.batch_size,
                                     canvas_length=args.canvas_length, max_new_tokens=args.max_new_tokens,
                                     prompts=prompts, device=args.device, progress=args.progress)
        except ValueError as e:
            raise UsageError(str(e).splitlines()[0]) from None
        written = write_pareto(study, payload)
    print(f"sumi study pareto: {len(payload['rows'])} points; wrote {', '.join(map(str, written))}", file=sys.stderr)
    return 0
