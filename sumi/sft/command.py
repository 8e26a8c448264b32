"""``sumi sft``: instruction tuning from the command line (single process, or under torchrun).

``sumi sft --init-from DIR --data FILE_OR_DIR --out OUT`` tunes the model exported at ``DIR``
(``OUT/model`` of ``sumi train``: config, weights, ``tokenizer.json``) in its own family.  A
``.jsonl`` FILE of chat records is first prepared with the model's tokenizer and the chat
template (``sumi data prepare --sft``) into ``OUT/data/prepared`` at ``--seq-len`` (default: the
model's ``max_position_embeddings``, the canvas of :func:`sumi.sft.chat_generate`), and reused by
later runs while the file, the tokenizer, the template and the length are the same
(``OUT/data/prepared.json`` records them); a DIR is data prepared with ``--sft`` already.  The
run is then ``sumi train``'s: the same loop (:func:`sumi.train.loop.train`: FSDP2, checkpoints, exact
``--resume``, ``metrics.jsonl``), configured by :func:`sumi.configs.train.train_sft` from the
model's config (the preset of its shape, or ``--preset``), ``--steps`` and ``--set``.

``sumi sft --preset tiny --out OUT [--objective FAMILY]`` is the embedded default
(:mod:`sumi.sft.embedded`): synthetic tasks with exact answers, a tiny model pretrained on the
embedded corpus (cached), exact match on held-out prompts before and after tuning in
``OUT/eval.json``.

Exit status as ``sumi train``: 0 when done, 2 for a mistake in the input (one line on stderr),
1 when the run diverged, 130 on Ctrl-C (one line saying how to resume).
"""

from __future__ import annotations

import argparse

from sumi.cli_common import UsageError, apply_threads
from sumi.configs.train import SFT_PRESETS
from sumi.sft.tuning import rank0, tune
from sumi.train.command import add_run_arguments

__all__ = ["add_arguments", "run"]

# what the embedded default's flags are called, for the message that refuses them elsewhere
_EMBEDDED_FLAGS = {"pretrain_steps": "--pretrain-steps", "task_examples": "--task-examples",
                   "heldout_examples": "--heldout-examples"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--init-from", default=None, metavar="DIR",
                        help="the model to tune: a directory exported by `sumi train` (OUT/model: config.json, "
                             "weights, tokenizer.json); with --data")
    parser.add_argument("--data", default=None, metavar="FILE_OR_DIR",
                        help="a .jsonl file of chat records ({prompt, response} or {messages: [...]}; prepared into "
                             "OUT/data/prepared with the model's tokenizer), or a directory from `sumi data prepare "
                             "--sft`")
    parser.add_argument("--preset", choices=sorted(SFT_PRESETS), default=None,
                        help="the tuning values (batch, learning rates; default: the preset of the model's shape); "
                             "without --init-from and --data, tiny runs the embedded default: synthetic tasks, a "
                             "cached tiny model, exact match before and after tuning in OUT/eval.json")
    parser.add_argument("--out", required=True, help="output directory (data, metrics, checkpoints, model)")
    parser.add_argument("--chat-template", default=None, metavar="FILE",
                        help="a JSON file of chat template fields for a .jsonl --data (default: Sumi's chat tokens; "
                             "docs/sft.md, Chat template)")
    parser.add_argument("--seq-len", type=int, default=None,
                        help="row length when preparing a .jsonl --data (default: the model's "
                             "max_position_embeddings, the canvas of `sumi generate --chat`; generate with "
                             "--canvas-length set to it)")
    parser.add_argument("--pretrain-steps", type=int, default=None,
                        help="embedded default: steps of the tiny model's pretraining (default 2000)")
    parser.add_argument("--task-examples", type=int, default=None,
                        help="embedded default: training examples per task (default 14000)")
    parser.add_argument("--heldout-examples", type=int, default=None,
                        help="embedded default: held-out examples per task (default 100)")
    add_run_arguments(parser, objective_help="the family; the model's own with --init-from (tuning keeps it); "
                      "embedded default: the family of the tiny model pretrained and tuned (default uniform)")


def run(args: argparse.Namespace) -> int:
    apply_threads(args)
    if args.init_from is None and args.data is None:
        if args.preset != "tiny":
            raise UsageError("give --init-from DIR and --data FILE_OR_DIR (the model and the chat data to tune it "
                             "on), or --preset tiny alone for the embedded default")
        from sumi.sft import embedded

        return embedded.run(args)
    if args.init_from is None or args.data is None:
        missing = "--data" if args.data is None else "--init-from"
        raise UsageError(f"{missing} is missing: --init-from DIR and --data FILE_OR_DIR go together")
    given = [flag for name, flag in _EMBEDDED_FLAGS.items() if getattr(args, name) is not None]
    if given:
        raise UsageError(f"{given[0]} applies to the embedded default (--preset tiny without --init-from and --data)")
    result = tune(args, args.init_from, args.data)
    if isinstance(result, int):
        return result
    if not rank0():
        return 0
    last = f", final loss {result.losses[-1]:.4f}" if result.losses else " (nothing left to train)"
    print(f"sumi sft: {result.steps} steps{last}; wrote {result.out_dir}")
    return 0
