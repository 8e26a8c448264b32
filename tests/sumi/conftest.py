"""Shared fixtures for the sumi tests: one real run of the main job, reused by every test that
needs a trained model (the evaluation commands, the probes)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sumi.model import attention, transformer

TINY_RUN_STEPS = 40


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, sumi_cache) -> Path:
    """``sumi train --preset tiny --out DIR --steps 40`` (the README's main job, shortened), with
    the session's temporary cache; returns DIR (``DIR/model`` holds the model and tokenizer)."""
    from sumi.cli import main

    root = tmp_path_factory.mktemp("tiny_run")
    old = os.environ.get("SUMI_CACHE")
    os.environ["SUMI_CACHE"] = str(sumi_cache)
    try:
        assert main(["train", "--preset", "tiny", "--out", str(root / "run"), "--steps", str(TINY_RUN_STEPS),
                     "--no-progress"]) == 0
    finally:
        if old is None:
            os.environ.pop("SUMI_CACHE", None)
        else:
            os.environ["SUMI_CACHE"] = old
    return root / "run"


STUDY_RUN_STEPS = 30


@pytest.fixture(scope="session")
def study_runs(tmp_path_factory, sumi_cache) -> dict[str, Path]:
    """The tiny preset's trainings of the studies, shortened to ``STUDY_RUN_STEPS`` steps, made
    by a real :class:`sumi.study.runs.RunCache` (each a ``sumi train`` process): ``{"uniform",
    "masked": model directories, "judge": the ar judge's, "runs": the cache}``.  A study given
    ``--runs`` this cache, ``--preset tiny`` and ``--train-steps STUDY_RUN_STEPS`` reuses them."""
    from sumi.study.presets import tiny_judge, tiny_run
    from sumi.study.runs import RunCache

    runs = tmp_path_factory.mktemp("study") / "runs"
    old = os.environ.get("SUMI_CACHE")
    os.environ["SUMI_CACHE"] = str(sumi_cache)
    try:
        cache = RunCache(runs, progress=False)
        found = {name: cache.ensure(tiny_run(name, steps=STUDY_RUN_STEPS)) for name in ("uniform", "masked")}
        found["judge"] = cache.ensure(tiny_judge(steps=STUDY_RUN_STEPS))
    finally:
        if old is None:
            os.environ.pop("SUMI_CACHE", None)
        else:
            os.environ["SUMI_CACHE"] = old
    return {**found, "runs": runs}


@pytest.fixture
def mask_and_rope_builds(monkeypatch) -> dict[str, int]:
    """Counts of attention-mask and RoPE-table constructions (``sumi.model``) during a test."""
    counts = {"mask": 0, "rope": 0}
    real_allowed, real_rope = attention.allowed_keys, transformer.rope_cos_sin

    def allowed(*args):
        counts["mask"] += 1
        return real_allowed(*args)

    def rope(*args):
        counts["rope"] += 1
        return real_rope(*args)

    monkeypatch.setattr(attention, "allowed_keys", allowed)
    monkeypatch.setattr(transformer, "rope_cos_sin", rope)
    return counts
