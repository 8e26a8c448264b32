"""The embedded default of ``sumi sft``: instruction tuning shown to work on a CPU, end to end.

``sumi sft --preset tiny --out OUT [--objective FAMILY]``:

1. writes the synthetic task set (:mod:`sumi.sft.tasks`: ``add``, ``sort``, ``reverse``) to
   ``OUT/data/train.jsonl`` and ``OUT/data/heldout.jsonl`` (no held-out prompt is trained on);
2. pretrains the tiny model of that family on the embedded corpus (``sumi train --preset tiny
   --objective FAMILY --steps N``), or reuses it: the run is cached under ``$SUMI_CACHE/pretrained``
   (:class:`sumi.study.runs.RunCache`, keyed by its command line), so a second run starts tuning at once;
3. scores exact match on the held-out prompts before tuning (:func:`sumi.sft.evaluate.score`:
   deterministic decoding on the training layout of :data:`SEQ_LEN`-token rows);
4. tunes it on the training examples with ``sumi sft``'s own code path
   (:func:`sumi.sft.tuning.tune`: the same loop as ``sumi train``, checkpoints, ``--resume``);
5. scores the tuned model the same way and writes ``OUT/eval.json`` (per task: ``before``,
   ``after``, ``n``, ``examples``; the settings and wall times) and a table on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from sumi._fs import atomic_write
from sumi.cli_common import UsageError, writable_dir
from sumi.sft import tasks
from sumi.sft.evaluate import DECODING, score, table
from sumi.sft.tuning import rank0, tune

__all__ = ["run", "SEQ_LEN", "PRETRAIN_STEPS", "TASK_EXAMPLES", "HELDOUT_EXAMPLES", "SHOWN"]

SEQ_LEN = 48
"""Tokens per row (and the canvas at evaluation): the longest task example takes 41 with the chat template
and the embedded tokenizer (a five-digit `sort`)."""
PRETRAIN_STEPS = 2000
"""Pretraining steps of the tiny model (the tiny preset's, ``sumi train --preset tiny``)."""
TASK_EXAMPLES = 14_000
"""Training examples per task: 42,000 rows, so the tiny preset's tuning (3 passes, batches of 16
rows; :func:`sumi.configs.train.train_sft`) takes 7,875 steps."""
HELDOUT_EXAMPLES = 100
"""Held-out examples per task (the ``reverse`` task has about 120 held-out words)."""
SHOWN = 3
"""Example answers per task in ``eval.json``."""
TASK_SEED = 0


def run(args: argparse.Namespace) -> int:
    """``sumi sft --preset tiny`` (module docstring); the command's exit status."""
    for flag, value in (("--chat-template", args.chat_template), ("--seq-len", args.seq_len)):
        if value is not None:
            raise UsageError(f"{flag} does not apply to the embedded default (it uses Sumi's chat template and "
                             f"--seq-len {SEQ_LEN})")
    objective = args.objective or "uniform"
    counts = {}
    for flag, value, default, lo in (("--pretrain-steps", args.pretrain_steps, PRETRAIN_STEPS, 1),
                                     ("--task-examples", args.task_examples, TASK_EXAMPLES, 1),
                                     ("--heldout-examples", args.heldout_examples, HELDOUT_EXAMPLES, 1)):
        counts[flag] = default if value is None else value
        if counts[flag] < lo:
            raise UsageError(f"{flag} must be >= {lo}, got {value}")
    out = writable_dir(args.out)
    try:
        train_set, heldout = tasks.task_set(counts["--task-examples"], counts["--heldout-examples"], seed=TASK_SEED)
    except ValueError as e:
        raise UsageError(str(e)) from None
    data = out / "data"
    data.mkdir(exist_ok=True)
    tasks.write_jsonl(data / "train.jsonl", train_set)
    tasks.write_jsonl(data / "heldout.jsonl", heldout)

    began = time.perf_counter()
    try:
        pretrained, reused = _pretrained(objective, counts["--pretrain-steps"], args)
    except KeyboardInterrupt:
        print("sumi sft: interrupted while pretraining the tiny model; the same command continues it from its last "
              "checkpoint", file=sys.stderr)
        return 130
    pretrain_s = time.perf_counter() - began
    began = time.perf_counter()
    before = _score(pretrained, heldout)
    score_s = time.perf_counter() - began

    began = time.perf_counter()
    result = tune(args, pretrained, data / "train.jsonl", preset="tiny", seq_len=SEQ_LEN)
    tune_s = time.perf_counter() - began
    if isinstance(result, int):
        return result
    if not rank0():
        return 0
    began = time.perf_counter()
    after = _score(out / "model", heldout)
    score_s += time.perf_counter() - began

    report = {
        "objective": objective,
        "pretrained": {"model": str(pretrained), "steps": counts["--pretrain-steps"], "reused": reused},
        "sft": {"steps": result.steps, "seq_len": SEQ_LEN, "train_examples": len(train_set)},
        "decoding": {**DECODING["ar" if objective == "ar" else "diffusion"], "canvas_length": SEQ_LEN},
        "tasks": {task: {"before": before[task].accuracy, "after": after[task].accuracy, "n": after[task].n,
                         "examples": [{"prompt": b["prompt"], "expected": b["expected"], "before": b["answer"],
                                       "after": a["answer"]}
                                      for b, a in zip(before[task].answers[:SHOWN], after[task].answers[:SHOWN])]}
                  for task in after},
        "wall_seconds": {"pretrain": round(pretrain_s, 1), "tune": round(tune_s, 1), "evaluate": round(score_s, 1)},
    }
    atomic_write(out / "eval.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    rows = [(task, r["n"], r["before"], r["after"]) for task, r in report["tasks"].items()]
    print(f"sumi sft: held-out exact match, {objective}, before and after {result.steps} tuning steps:\n"
          f"{table(rows)}", file=sys.stderr)
    print(f"sumi sft: wrote {out / 'eval.json'} and {out / 'model'}")
    return 0


def _pretrained(objective: str, steps: int, args: argparse.Namespace) -> tuple[Path, bool]:
    """The tiny model of ``objective`` pretrained ``steps`` steps on the embedded corpus (from the
    cache when it is there), and whether it was reused."""
    from sumi.study.runs import Run, RunCache, RunFailed
    from sumi.train.embedded import cache_dir

    cache = RunCache(cache_dir() / "pretrained", threads=args.threads, progress=args.progress)
    run = Run(objective=objective, steps=steps, preset="tiny", label=f"the tiny {objective} model ({steps} steps)")
    reused = cache.done(run)
    try:
        return cache.ensure(run), reused
    except RunFailed as e:
        raise UsageError(f"pretraining the tiny model failed: {e}") from None


def _score(model_dir: Path, heldout) -> dict:
    from sumi.study.models import load_model_dir

    model, tokenizer = load_model_dir(model_dir)
    return score(model, tokenizer, heldout, SEQ_LEN)
