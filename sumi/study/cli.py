"""``sumi study``: ``pareto`` (the speed-quality frontier), ``scaling`` (isoFLOP grids across
families), ``canvas`` (quality against canvas length).

Each study writes ``OUT/NAME.json``, ``OUT/NAME.md`` and ``OUT/NAME.png``; its trainings are
ordinary ``sumi train`` runs cached under ``OUT/runs`` (or ``--runs DIR``, shared between
studies) and its measured points are kept as they finish, so a study killed at any point
continues with the same command and ``--resume``.  ``--preset tiny`` trains everything it needs
on the embedded corpus (its judge included) and finishes on 2 CPU cores in at most 15 minutes.
"""

from __future__ import annotations

import argparse
import importlib
import shlex

from sumi.cli_common import UsageError, add_threads_argument, apply_threads, resolve_device

STUDIES = {"pareto": "sumi.study.pareto_cli", "scaling": "sumi.study.scaling_cli", "canvas": "sumi.study.canvas_cli"}
HELP = {"pareto": "generative perplexity against forward passes and seconds, per model and sampler: the frontier",
        "scaling": "an isoFLOP grid per family: compute-optimal sizes and a power law of loss against compute",
        "canvas": "held-out NELBO and sample quality against canvas length"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="study", required=True, metavar="STUDY")
    for name, module in STUDIES.items():
        p = sub.add_parser(name, help=HELP[name], description=HELP[name])
        importlib.import_module(module).add_arguments(p)
        add_common_arguments(p)


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags every study takes: ``--out``, ``--resume``, ``--runs``, ``--launcher``,
    ``--device``, ``--threads``, ``--no-progress``."""
    parser.add_argument("--out", required=True, help="the study directory (NAME.json, NAME.md, NAME.png, points)")
    parser.add_argument("--resume", action="store_true",
                        help="continue a study in OUT: finished points and trainings are reused")
    parser.add_argument("--runs", default=None, metavar="DIR",
                        help="where trainings are cached, one directory per `sumi train` command (default OUT/runs); "
                             "share it between studies to reuse their runs")
    parser.add_argument("--launcher", default=None, metavar="CMD",
                        help="run each training as its own process with this command, e.g. 'python -m sumi' or "
                             "'torchrun --nproc-per-node 8 -m sumi' (default: the `sumi train` command in this "
                             "process)")
    parser.add_argument("--device", default=None, help="where models are evaluated and sampled (default: cuda when "
                                                       "available)")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def launcher(args: argparse.Namespace) -> list[str] | None:
    """``--launcher`` as an argument list (``None``: the default)."""
    if args.launcher is None:
        return None
    parts = shlex.split(args.launcher)
    if not parts:
        raise UsageError("--launcher is empty")
    return parts


def run(args: argparse.Namespace) -> int:
    """Run the study; exit status 0 when done, 2 for a mistake in the input (one line), 1 when a
    training failed, 130 on Ctrl-C (one line each; what finished is kept for ``--resume``)."""
    import sys

    from sumi._fs import LockedError
    from sumi.study.runs import RunFailed

    apply_threads(args)
    args.device = resolve_device(args.device)
    name = f"sumi study {args.study}"
    try:
        return importlib.import_module(STUDIES[args.study]).run(args)
    except (FileExistsError, LockedError) as e:
        raise UsageError(str(e)) from None
    except RunFailed as e:
        print(f"{name}: {e}; finished trainings and points are kept: rerun with --resume", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; finished trainings and points are kept in {args.out}: continue with the same "
              "command and --resume", file=sys.stderr)
        return 130
