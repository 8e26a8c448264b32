"""``sumi study scaling``: an isoFLOP grid per family (see :mod:`sumi.study.scaling`).

Light at import (argparse only): every ``sumi`` command builds this parser.
"""

from __future__ import annotations

import argparse
import sys

from sumi.cli_common import UsageError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=["tiny"], default=None,
                        help="tiny: the embedded default, on 2 CPU cores in at most 15 minutes from nothing: families "
                             "uniform,masked,ar, budgets 1.5e11,3e11,6e11 FLOPs, sizes 16x2,32x2,64x2 of the tiny "
                             "recipe (--objectives, --budgets and --sizes override them)")
    parser.add_argument("--objectives", default=None, metavar="F1,F2,...",
                        help="the families, from uniform, masked, masked-ce, hybrid, ar (default uniform,masked,ar)")
    parser.add_argument("--budgets", default=None, metavar="C1,C2,...",
                        help="compute budgets in training FLOPs (6 N + 12 L H d S per token), e.g. 1e11,3e11,1e12; "
                             "each cell trains round(C / (FLOPs per token x tokens per step)) steps, and a cell of "
                             "fewer than 10 steps is skipped (listed in the report). Required without --preset")
    parser.add_argument("--sizes", default=None, metavar="HxL,...",
                        help="the model sizes of every budget, HIDDENxLAYERS (e.g. 16x2,32x2,64x2), shaped like "
                             "the recipe: its head_dim (tiny 16, Sumi 128), its query heads per key/value head "
                             "(tiny 2, Sumi 4), MLP width 3 x hidden; the hidden size must be a multiple of "
                             "head_dim. Required without --preset")
    parser.add_argument("--recipe", default="tiny", choices=["tiny", "sumi_150m", "sumi_1b", "sumi_7b"],
                        help="the `sumi train --preset` of every cell (default tiny, on the embedded corpus); the "
                             "others need --data and --heldout")
    parser.add_argument("--data", action="append", default=[], metavar="DIR | NAME=DIR | stdlib:SPLIT",
                        help="passed to every training as `sumi train --data` (repeatable)")
    parser.add_argument("--heldout", action="extend", nargs="+", default=None, metavar="DATA",
                        help="held-out documents for the loss: files, globs or stdlib:heldout, as `sumi eval nelbo "
                             "--data` (several after one flag, or the flag repeated; default "
                             "stdlib:heldout with the tiny recipe, required with the others)")
    parser.add_argument("--max-heldout-documents", type=int, default=None, metavar="N",
                        help="score the first N held-out documents only (default 8 with the tiny recipe, all with "
                             "the others; 0: all)")
    parser.add_argument("--points", type=int, default=None,
                        help="NELBO time points per held-out row, diffusion families (default 4 with the tiny "
                             "recipe, 128 with the others); ar's loss is the exact NLL")
    parser.add_argument("--seed", type=int, default=0,
                        help="the seed of every training and of the NELBO noise (default 0)")


def run(args: argparse.Namespace) -> int:
    from sumi.configs.train import TRAIN_PRESETS
    from sumi.evaluate.likelihood import DEFAULT_POINTS
    from sumi.study import scaling
    from sumi.study.cli import launcher
    from sumi.study.models import HELDOUT, heldout_texts
    from sumi.study.runs import RunCache
    from sumi.study.store import open_study

    tiny = args.recipe == "tiny"
    if args.preset == "tiny" and not tiny:
        raise UsageError(f"--preset tiny trains the tiny recipe; drop --recipe {args.recipe}, or --preset")
    if args.preset is None and (args.budgets is None or args.sizes is None):
        raise UsageError("give --budgets and --sizes (or --preset tiny for the embedded default grid)")
    if not tiny and args.heldout is None:
        raise UsageError(f"--recipe {args.recipe} needs --heldout (documents its trainings never saw)")
    for flag, value, lo in (("--points", args.points, 1), ("--seed", args.seed, 0),
                            ("--max-heldout-documents", args.max_heldout_documents, 0)):
        if value is not None and value < lo:
            raise UsageError(f"{flag} must be an integer >= {lo}, got {value}")
    try:
        objectives = scaling.parse_objectives(args.objectives or ",".join(scaling.TINY_OBJECTIVES))
        budgets = scaling.parse_budgets(args.budgets or ",".join(map(repr, scaling.TINY_BUDGETS)))
        shapes = scaling.parse_sizes(args.sizes or ",".join(scaling.TINY_SIZES))
        # the sizes are checked against the preset first: before the embedded corpus is built
        scaling.plan_grid(TRAIN_PRESETS[args.recipe](), objectives, budgets, shapes, recipe=args.recipe)
        base = scaling.recipe_config(args.recipe, args.data, progress=args.progress)
        cells = scaling.plan_grid(base, objectives, budgets, shapes, recipe=args.recipe, seed=args.seed,
                                  data=args.data)
        heldout = list(args.heldout or HELDOUT)
        heldout_texts(heldout, max_documents=1)  # fails here, before any training, when there is none
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from None
    points = args.points or (scaling.TINY_POINTS if tiny else DEFAULT_POINTS)
    max_documents = args.max_heldout_documents
    if max_documents is None:
        max_documents = scaling.TINY_MAX_DOCUMENTS if tiny else 0
    settings = {"preset": args.preset, "recipe": args.recipe, "objectives": objectives, "budgets": budgets,
                "sizes": [s.name for s in shapes], "data": list(args.data), "heldout": heldout,
                "max_documents": max_documents or None, "points": points, "seed": args.seed,
                "canvas_length": base.seq_len, "tokens_per_step": base.tokens_per_step,
                "min_steps": scaling.MIN_STEPS, "eval_batch_size": scaling.EVAL_BATCH_SIZE,
                "device": args.device.type,
                "params": "non-embedding (input embedding table left out, output head kept)"}
    with open_study(args.out, resume=args.resume) as study:
        cache = RunCache(args.runs or study.runs, launcher=launcher(args), threads=args.threads,
                         progress=args.progress)
        payload = scaling.measure_scaling(study, cells, heldout=heldout, canvas_length=base.seq_len, points=points,
                                          seed=args.seed, max_documents=max_documents or None, runs=cache,
                                          device=args.device, settings=settings, progress=args.progress)
        written = scaling.write_scaling(study, payload)
    print(f"sumi study scaling: wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0
