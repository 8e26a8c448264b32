"""``sumi eval``: ``nelbo`` (NELBO per token and bits per byte of local text, or the exact NLL of
an ``ar`` model, next to the bits per byte of gzip, bz2 and xz) and ``harness`` (the lm-eval
command line with the ``sumi`` model registered).

``sumi eval harness ARGS...`` passes ``ARGS`` to lm-eval verbatim: :func:`sumi.cli.main` hands it
everything after ``eval harness`` (argparse alone cannot: its ``REMAINDER`` stops at a leading
option such as ``--model``)."""

from __future__ import annotations

import argparse
import json
import sys

from sumi.cli_common import UsageError, add_model_arguments, load_model
from sumi.evaluate.likelihood import DEFAULT_CANVAS, DEFAULT_POINTS, default_tokens_per_pass


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="eval_command", required=True, metavar="ACTION")
    p = sub.add_parser("nelbo", help="NELBO (exact NLL for ar) per token and bits per byte of local text",
                       description="NELBO per token and bits per byte of local text files under a Sumi model of any "
                                   "family (each file one document; .jsonl: one per line): diffusion families report "
                                   "their NELBO (an upper bound), ar its exact NLL; gzip, bz2 and xz on the same "
                                   "documents are the baselines.")
    add_model_arguments(p)
    p.add_argument("--data", nargs="+", required=True, metavar="PATH_OR_GLOB",
                   help=".txt/.md/.py files (one document each), .jsonl/.jsonl.gz/.jsonl.zst (one per line), "
                        ".parquet files or saved datasets (one per row; pip install 'discdiff[data]'), directories "
                        "or globs; "
                        "stdlib:heldout (the standard-library files the embedded default never trains on) or "
                        "stdlib:train (those it trains on)")
    p.add_argument("--text-field", default="text", help="the JSON field or table column holding the text (default 'text')")
    p.add_argument("--canvas-length", type=int, default=None,
                   help="tokens per canvas row; longer documents are scored in windows (default: "
                        f"min({DEFAULT_CANVAS}, the model's max_position_embeddings))")
    p.add_argument("--points", type=int, default=DEFAULT_POINTS,
                   help=f"time points of the linear-alpha grid (default {DEFAULT_POINTS}; unused for ar)")
    p.add_argument("--effective-snr", action="store_true", help="evaluate each point at the realized clean fraction")
    p.add_argument("--batch-size", type=int, default=4,
                   help="canvas rows scored together, sharing the noise draws of a seed (default 4)")
    p.add_argument("--tokens-per-pass", type=int, default=None, metavar="N",
                   help="canvas positions per forward pass: time points of the rows are stacked up to N "
                        f"(default {default_tokens_per_pass('cpu')} on CPU, {default_tokens_per_pass('cuda')} on "
                        "an accelerator); changes speed and memory, not the estimate")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise draws (default 0)")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    h = sub.add_parser("harness", help="lm-eval-harness with the `sumi` model (needs pip install 'discdiff[eval]')",
                       description="The lm_eval command line with the `sumi` model registered; every argument "
                                   "is passed on, e.g. sumi eval harness --model sumi --model_args "
                                   "pretrained=DIR --tasks TASK.")
    h.add_argument("harness_args", nargs=argparse.REMAINDER, help="lm_eval arguments (passed on verbatim)")


def run(args: argparse.Namespace) -> int:
    if args.eval_command == "harness":
        from sumi.evaluate.__main__ import main as harness_main

        return harness_main(args.harness_args)
    if args.canvas_length is not None and args.canvas_length < 3:  # checked before the model loads
        raise UsageError(f"--canvas-length must be >= 3, got {args.canvas_length}")
    for name in ("points", "batch_size", "tokens_per_pass"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    from sumi.data.sources import iter_documents

    try:
        texts = list(iter_documents(args.data, text_field=args.text_field))
    except (OSError, ValueError, ImportError) as e:  # ImportError: a format's library (the [data] extra) missing
        raise UsageError(str(e)) from None
    if not texts:
        raise UsageError(f"no non-empty documents in {' '.join(args.data)}")
    from sumi.evaluate.likelihood import nelbo_texts

    model, tokenizer = load_model(args)
    try:
        report = nelbo_texts(model, tokenizer, texts, canvas_length=args.canvas_length, points=args.points,
                             effective_snr=args.effective_snr, batch_size=args.batch_size, seed=args.seed,
                             progress=True, tokens_per_pass=args.tokens_per_pass)
    except ValueError as e:  # a canvas beyond the model's positions, ...
        raise UsageError(str(e)) from None
    if args.json:
        print(json.dumps(report.to_dict()))
    else:
        print(human_report(report))
        noise = f", {report.points} points, effective SNR {report.effective_snr}, seed {report.seed}"
        print(f"(canvas {report.canvas_length}{noise if report.bound else ''})", file=sys.stderr)
    return 0


def human_report(report) -> str:
    """The lines ``sumi eval nelbo`` prints for a :class:`~sumi.evaluate.NelboReport`: what was
    measured (``NELBO (upper bound)`` or ``NLL (exact)``), the totals, and the model's bits per
    byte next to the compressors'."""
    kind, name = ("NELBO (upper bound)", "NELBO") if report.bound else ("NLL (exact)", "NLL")
    baselines = ", ".join(f"{compressor} {bits:.4f}" for compressor, bits in report.baselines.items())
    return (f"objective        {report.objective}: {kind}\n"
            f"documents        {report.documents}\ntokens           {report.tokens}\nbytes            {report.bytes}\n"
            f"{name + ' per token':<17}{report.nelbo_per_token:.4f} nats\n"
            f"bits per byte    {report.bits_per_byte:.4f} (model; {baselines})")
