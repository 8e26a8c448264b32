"""``sumi study canvas``: held-out NELBO and sample quality against canvas length (the Sumi
paper's canvas study); the measures are those of :mod:`sumi.study.canvas`.

The model and the judge come from ``--model`` and ``--judge``, or from ``--preset tiny``, which
trains the tiny uniform model (seed 0) and an ar judge (seed 1) as cached ``sumi train`` runs.
With ``--preset``, a ``--model`` or ``--judge`` given replaces that training (it is then not
trained); ``--train-steps`` applies to the preset's trainings only.

Light at import (argparse only): every ``sumi`` command builds this parser.
"""

from __future__ import annotations

import argparse
import sys

PRESETS = ("tiny",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="the diffusion model directory to study (an ar model has no canvas). Required unless "
                             "--preset, where it replaces the trained model")
    parser.add_argument("--judge", default=None, metavar="DIR",
                        help="the autoregressive (objective ar) model that scores the samples (generative "
                             "perplexity); never the model itself. Required unless --preset, where it replaces the "
                             "trained judge")
    parser.add_argument("--preset", choices=PRESETS, default=None,
                        help="tiny: train the tiny uniform model (seed 0) and the ar judge (seed 1) on the embedded "
                             "corpus, then measure; on 2 CPU cores in under 15 minutes")
    parser.add_argument("--train-steps", type=int, default=None, metavar="N",
                        help="optimizer steps of each --preset training (default: the tiny recipe's)")
    parser.add_argument("--lengths", default=None, metavar="L,L,...",
                        help="canvas lengths, each an integer >= 4 within the model's max_position_embeddings "
                             "(default: 32, 64, ... doubling up to the model's positions: 32..512 for the tiny model)")
    parser.add_argument("--heldout", action="extend", nargs="+", default=None, metavar="DATA",
                        help="held-out documents for the NELBO: files, globs or stdlib:heldout, as `sumi eval nelbo "
                             "--data` (default stdlib:heldout); a document longer than L is scored in consecutive "
                             "windows of L tokens")
    parser.add_argument("--max-heldout-documents", type=int, default=None, metavar="N",
                        help="score the first N held-out documents (default 2: about 14,000 tokens of "
                             "stdlib:heldout for the tiny tokenizer)")
    parser.add_argument("--points", type=int, default=None, metavar="P",
                        help="NELBO time points per length (default 64)")
    parser.add_argument("--samples", type=int, default=None, metavar="N",
                        help="unconditional samples per length (default 16), each a full canvas: BOS, L - 3 tokens, "
                             "EOS, BOS")
    parser.add_argument("--steps", type=int, default=None, metavar="S", help="denoising steps per sample (default 64)")
    parser.add_argument("--sampler", default="ancestral",
                        help="ancestral (default), adaptive (ceil((L - 3) / steps) positions per step), greedy, or "
                             "confidence (families with an all-mask prior)")
    parser.add_argument("--batch-size", type=int, default=None, metavar="B",
                        help="samples generated together (default: all of a length's samples); the batch starting at "
                             "sample j uses seed SEED + j")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the NELBO noise and of the first sample (default 0)")


def _lengths(text: str | None) -> list[int] | None:
    from sumi.cli_common import UsageError

    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"--lengths takes a comma list of integers (canvas lengths), got {text!r}") from None


def run(args: argparse.Namespace) -> int:
    from sumi._checks import check_int
    from sumi.cli_common import UsageError
    from sumi.study import canvas

    lengths = _lengths(args.lengths)
    defaults = {"max_heldout_documents": canvas.DEFAULT_MAX_DOCUMENTS, "points": canvas.DEFAULT_POINTS,
                "samples": canvas.DEFAULT_SAMPLES, "steps": canvas.DEFAULT_STEPS}
    for name, default in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    try:
        for name in (*defaults, "batch_size", "train_steps", "seed"):
            value = getattr(args, name)
            if value is not None:
                check_int("--" + name.replace("_", "-"), value, 0 if name == "seed" else 1)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.preset is None:
        for flag, value in (("--model", args.model), ("--judge", args.judge)):
            if value is None:
                raise UsageError(f"{flag} DIR is required (or --preset tiny, which trains it)")
        if args.train_steps is not None:
            raise UsageError("--train-steps applies to the trainings of --preset tiny only")
    from sumi.study.models import check_judge, read_model_config

    try:
        if args.model is not None:
            lengths = canvas.check_model(read_model_config(args.model, "--model"), lengths, args.sampler,
                                         name="--lengths")
        else:  # checked against the preset's model now, before minutes of training
            from sumi.configs.train import train_tiny

            lengths = canvas.check_model(train_tiny().model, lengths, args.sampler, name="--lengths")
        if args.judge is not None:
            check_judge(read_model_config(args.judge, "--judge"), args.judge, [args.model] if args.model else [])
    except ValueError as e:
        raise UsageError(str(e)) from None
    from sumi.study.models import HELDOUT, heldout_texts

    heldout = args.heldout or list(HELDOUT)
    try:  # the held-out data exist and hold a document, before any training
        heldout_texts(heldout, max_documents=1)
    except (OSError, ValueError) as e:
        raise UsageError(f"--heldout {' '.join(heldout)}: {e}") from None

    from sumi.study.cli import launcher
    from sumi.study.presets import TINY_STEPS, tiny_judge, tiny_run
    from sumi.study.runs import RunCache
    from sumi.study.store import open_study

    with open_study(args.out, resume=args.resume) as study:
        cache = RunCache(args.runs or study.runs, launcher=launcher(args), threads=args.threads,
                         progress=args.progress)
        steps = args.train_steps or TINY_STEPS
        wanted = [r for r, given in ((tiny_run("uniform", steps=steps), args.model),
                                     (tiny_judge(steps=steps), args.judge)) if given is None]
        trained = [cache.ensure(run_, position=f"[{i + 1}/{len(wanted)}] ") for i, run_ in enumerate(wanted)]
        model = args.model if args.model is not None else trained.pop(0)
        judge = args.judge if args.judge is not None else trained.pop(0)
        payload = canvas.measure_canvas(study, model, judge, lengths=lengths, heldout=heldout,
                                        max_heldout_documents=args.max_heldout_documents, points=args.points,
                                        samples=args.samples, steps=args.steps, sampler=args.sampler,
                                        batch_size=args.batch_size, seed=args.seed, device=args.device,
                                        progress=args.progress)
        paths = canvas.write_canvas(study, payload)
    print(f"sumi study canvas: wrote {', '.join(map(str, paths))}", file=sys.stderr)
    return 0
