"""The trainings behind ``--preset tiny``: the embedded default of each study.

Every run is the tiny recipe on the embedded corpus (``sumi train --preset tiny``, the standard
library's training split); a study with ``--preset tiny`` trains what it needs from nothing on
2 CPU cores.  The judge has its own seed, so no model of a study is ever its own judge, and the
studies share their runs when they share ``--runs``.
"""

from __future__ import annotations

from sumi.configs.train import train_tiny
from sumi.study.runs import Run

__all__ = ["TINY_STEPS", "tiny_run", "tiny_judge", "JUDGE_SEED"]

TINY_STEPS = train_tiny().steps
"""The tiny recipe's full length (optimizer steps): ~2 minutes per run on 2 CPU cores."""

JUDGE_SEED = 1
"""The judge's seed: a different initialization and data order from any seed-0 model."""


def tiny_run(objective: str, *, steps: int = TINY_STEPS, seed: int = 0) -> Run:
    """The tiny recipe of one family on the embedded corpus."""
    return Run(objective=objective, steps=steps, seed=seed, label=f"{objective} (tiny, {steps} steps, seed {seed})")


def tiny_judge(*, steps: int = TINY_STEPS) -> Run:
    """The autoregressive judge of the tiny studies' generative perplexity."""
    return Run(objective="ar", steps=steps, seed=JUDGE_SEED,
               label=f"judge: ar (tiny, {steps} steps, seed {JUDGE_SEED})")
