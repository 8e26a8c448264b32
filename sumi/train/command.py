"""``sumi train``: the recipe from the command line (single process, or under torchrun).

``sumi train --preset tiny --out DIR`` is the embedded default (the main job): the Python
standard library as corpus, a cached byte-level tokenizer, a tiny Sumi, samples and a loss
curve in DIR.  Other presets need ``--data`` (a directory written by ``sumi data prepare``).
"""

from __future__ import annotations

import argparse

from sumi.cli_common import UsageError
from sumi.configs.train import PHASES, TRAIN_PRESETS, train_sumi_7b


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", required=True, choices=sorted(TRAIN_PRESETS),
                        help="tiny (CPU, embedded corpus), sumi_150m, sumi_1b, sumi_7b")
    parser.add_argument("--out", required=True, help="output directory (metrics, checkpoints, model, samples)")
    parser.add_argument("--data", action="append", default=[], metavar="DIR | NAME=DIR",
                        help="packed data from `sumi data prepare`; NAME=DIR (repeatable) names the sources "
                             "of a mixture weighted by the config's `mixture` (sumi_7b --phase mid/long: "
                             "code, math, general, reasoning).  Default for tiny: the Python standard "
                             "library, prepared and cached")
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--checkpoint-every", type=int, default=None)
    parser.add_argument("--phase", choices=sorted(PHASES), default=None, help="sumi_7b: pretrain, mid or long")
    parser.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in OUT")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override any TrainConfig field, or model.<field> (repeatable)")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from sumi.data.spec import parse_data_args
    from sumi.train import embedded
    from sumi.train.loop import train

    tokenizer = None
    try:
        if args.phase is not None and args.preset != "sumi_7b":
            raise UsageError(f"--phase applies to the sumi_7b recipe, not to preset {args.preset}")
        if args.preset == "tiny" and not args.data:
            base = TRAIN_PRESETS["tiny"]()
            data_dir, tokenizer = embedded.prepare_embedded(base.seq_len, progress=args.progress)
            config = embedded.embedded_config(tokenizer)
        elif not args.data:
            raise UsageError(f"--data is required for preset {args.preset} (prepare it with `sumi data prepare`)")
        else:
            data_dir = parse_data_args(args.data)
            config = train_sumi_7b(args.phase or "pretrain") if args.preset == "sumi_7b" else TRAIN_PRESETS[args.preset]()
        flags = {"steps": args.steps, "seed": args.seed, "checkpoint_every": args.checkpoint_every}
        config = config.override([f"{k}={v}" for k, v in flags.items() if v is not None] + args.assignments)
        result = train(config, data_dir, args.out, resume=args.resume, progress=args.progress)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise UsageError(str(e)) from None
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_rank() != 0:
        return 0
    if tokenizer is not None:  # the main job: a few samples and the loss curve
        tokenizer.save(result.out_dir / "model")
        embedded.write_report(result.out_dir, tokenizer)
    last = f", final loss {result.losses[-1]:.4f}" if result.losses else " (nothing left to train)"
    print(f"sumi train: {result.steps} steps{last}; wrote {result.out_dir}")
    return 0
