"""``sumi train``: the recipe from the command line (single process, or under torchrun).

``sumi train --preset tiny --out DIR`` is the embedded default (the main job): the Python
standard library's training split as corpus (``--data stdlib:train``, the same thing said
explicitly; ``--data stdlib:heldout`` trains on the held-out files instead), a cached byte-level
tokenizer, a tiny Sumi, samples and a loss curve in DIR.  Other presets need ``--data`` (a
directory written by ``sumi data prepare``).

Exit status: 0 when done, 2 for a mistake in the input (one line on stderr), 1 when the run
diverged (non-finite loss), 130 on Ctrl-C (one line saying where it stopped and how to resume).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

from sumi.cli_common import UsageError, add_threads_argument, apply_threads, writable_dir
from sumi.configs.model import OBJECTIVES
from sumi.configs.train import PHASES, TRAIN_PRESETS, train_sumi_7b

if TYPE_CHECKING:
    from sumi.train.loop import TrainResult


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, choices=sorted(TRAIN_PRESETS),
                        help="tiny (CPU, embedded corpus), sumi_150m, sumi_1b, sumi_7b")
    parser.add_argument("--out", required=True, help="output directory (metrics, checkpoints, model, samples)")
    parser.add_argument("--data", action="append", default=[], metavar="DIR | NAME=DIR | MIX.toml | stdlib:SPLIT",
                        help="packed data from `sumi data prepare`; NAME=DIR (repeatable) names the sources "
                             "of a mixture weighted by the config's `mixture` (sumi_7b --phase mid/long: "
                             "code, math, general, reasoning); a .toml or .json mixture file (alone) names each "
                             "source's directory and weight (docs/training.md, \"Data\"; its weights become the "
                             "run's `mixture`); stdlib:train or stdlib:heldout (tiny only): a "
                             "split of the Python standard library, prepared and cached with the embedded "
                             "tokenizer.  Default for tiny: stdlib:train")
    add_run_arguments(parser, objective_help="the family: uniform (Sumi, the default), masked (MDLM ELBO), masked-ce "
                      "(masked noise, plain cross-entropy), hybrid (GIDD hybrid noise; --set model.hybrid_shift=, "
                      "model.hybrid_scale=) or ar (causal, next-token); mask families add one id, the mask, at the "
                      "end of the vocabulary")
    parser.add_argument("--phase", choices=sorted(PHASES), default=None, help="sumi_7b: pretrain, mid or long")


def add_run_arguments(parser: argparse.ArgumentParser, *, objective_help: str) -> None:
    """The flags every training command shares (``sumi train``, ``sumi sft``): ``--objective``,
    ``--steps``, ``--seed``, ``--checkpoint-every`` (read by :func:`config_overrides`),
    ``--resume``, ``--allow-config-change``, ``--set``, ``--threads`` and ``--no-progress`` (read
    by :func:`train_command`)."""
    parser.add_argument("--objective", choices=OBJECTIVES, default=None, help=objective_help)
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--resume", action="store_true", help="continue from the newest intact checkpoint in OUT")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue although the configuration differs from the checkpoint's "
                             "in a way that changes the computation (steps, learning rates, ...)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override any TrainConfig field, or model.<field> (repeatable)")
    add_threads_argument(parser)
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def config_overrides(args: argparse.Namespace) -> list[str]:
    """``--objective``, ``--steps``, ``--seed``, ``--checkpoint-every`` (those given) as ``key=value``
    overrides, followed by the ``--set`` ones (so ``--set`` wins)."""
    flags = {"objective": args.objective, "steps": args.steps, "seed": args.seed,
             "checkpoint_every": args.checkpoint_every}
    return [f"{k}={v}" for k, v in flags.items() if v is not None] + args.assignments


def train_command(name: str, args: argparse.Namespace, build: Callable[[], tuple]) -> TrainResult | int:
    """Build a run and train it as the command ``sumi NAME`` does: ``build()`` returns
    ``(config, data, tokenizer_file)`` (see :func:`sumi.train.loop.train`), then the run trains
    into ``args.out`` with ``--resume``, ``--allow-config-change`` and ``--no-progress``.

    Returns the :class:`~sumi.train.loop.TrainResult`, or the exit status of a run that did not
    finish, its one line printed on stderr (rank 0): 1 when it diverged, 130 when interrupted
    (Ctrl-C; the line says how to resume).  A mistake in the input, found by ``build`` or by the
    loop before the first step, raises :class:`UsageError`.
    """
    from sumi._fs import LockedError, StorageError
    from sumi.distributed.checkpoint import CheckpointCorrupt
    from sumi.train.loop import TrainingDiverged, TrainingInterrupted, train

    try:
        config, data, tokenizer_file = build()
        return train(config, data, args.out, resume=args.resume, allow_config_change=args.allow_config_change,
                     progress=args.progress, tokenizer_file=tokenizer_file)
    except (FileNotFoundError, FileExistsError, ValueError, LockedError, CheckpointCorrupt, StorageError) as e:
        raise UsageError(str(e)) from None
    except TrainingDiverged as e:
        _rank0_print(f"sumi {name}: {e}")
        return 1
    except TrainingInterrupted as e:
        _rank0_print(f"sumi {name}: {e}; continue with the same command and --resume")
        return 130


def run(args: argparse.Namespace) -> int:
    import torch.distributed as dist

    from sumi.data.spec import mixture_file_arg, parse_data_args, stdlib_split_arg
    from sumi.train import embedded

    apply_threads(args)
    tokenizer = None
    overrides = config_overrides(args)

    def build() -> tuple:
        nonlocal tokenizer
        if args.phase is not None and args.preset != "sumi_7b":
            raise UsageError(f"--phase applies to the sumi_7b recipe, not to preset {args.preset}")
        split = stdlib_split_arg(args.data) if args.data else "train"  # a split: the embedded corpus
        if args.preset != "tiny" and not args.data:
            raise UsageError(f"--data is required for preset {args.preset} (prepare it with `sumi data prepare`)")
        if args.preset != "tiny" and split is not None:
            raise UsageError(f"--data {args.data[0]} is tokenized with the embedded 512-id tokenizer and trains "
                             f"--preset tiny only, not {args.preset}")
        writable_dir(args.out)  # before any data is prepared or a model built
        if split is None:
            mix = mixture_file_arg(args.data, args.assignments)  # --data FILE.toml: directories and weights
            data_dir = parse_data_args(args.data) if mix is None else mix.paths
            config = train_sumi_7b(args.phase or "pretrain") if args.preset == "sumi_7b" else TRAIN_PRESETS[args.preset]()
            if mix is not None:  # the file's weights, before --set (recorded in the run's config.json)
                config = dataclasses.replace(config, mixture=dict(mix.weights))
        else:  # the embedded corpus, prepared (and cached) at the sequence length asked for
            seq_len = TRAIN_PRESETS["tiny"]().override(overrides).seq_len  # also checks --set before the work
            data_dir, tokenizer = embedded.prepare_embedded(seq_len, split=split, progress=args.progress)
            config = embedded.embedded_config(tokenizer)
        return config.override(overrides), data_dir, embedded.tokenizer_path() if tokenizer else None

    result = train_command("train", args, build)
    if isinstance(result, int):
        return result
    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
    if tokenizer is not None:  # the main job: a few samples and the loss curve
        embedded.write_report(result.out_dir, tokenizer)
    last = f", final loss {result.losses[-1]:.4f}" if result.losses else " (nothing left to train)"
    print(f"sumi train: {result.steps} steps{last}; wrote {result.out_dir}")
    return 0


def _rank0_print(message: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(message, file=sys.stderr)

