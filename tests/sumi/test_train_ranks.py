"""A training run does not depend on the number of processes: ``sumi train`` on 2 ranks
(torchrun, gloo) computes the same losses as one process (up to the order of floating-point
sums), and a checkpoint written on 2 ranks resumes on 1, and one written on 1 resumes on 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sumi.data import prepare
from sumi.tokenizer import SumiTokenizer, tiny_corpus

REPO = Path(__file__).resolve().parents[2]
# seq 32, 4 sequences per step: 2 micro-batches of 2 in one process, 1 of 2 per rank on two
SETTINGS = ["--set", "seq_len=32", "--set", "global_batch_size=4", "--set", "micro_batch_size=2", "--set",
            "warmup_steps=2", "--set", "peak_lr=0.01", "--set", "floor_lr=0.001", "--set", "keep_last=5",
            "--steps", "6", "--checkpoint-every", "3", "--no-progress"]
RTOL = 1e-5  # the two ways of summing a step's gradients differ in the last bits


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("corpus")
    paths = []
    for i, para in enumerate(tiny_corpus().split("\n\n")[:60]):
        (path := root / f"doc{i:03d}.txt").write_text(para)
        paths.append(str(path))
    prepare(paths, SumiTokenizer.default(), root / "packed", 32)
    return root / "packed"


def _train(data: Path, out: Path, ranks: int, *extra: str) -> list[float]:
    """``sumi train`` on ``ranks`` processes; returns the losses of metrics.jsonl."""
    command = ["-m", "sumi", "train", "--preset", "tiny", "--data", str(data), "--out", str(out), *SETTINGS, *extra]
    if ranks == 1:
        argv = [sys.executable, *command, "--threads", "1"]
    else:
        argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _resume_elsewhere(src: Path, dst: Path) -> None:
    """``dst``: ``src`` as a job killed after its step-3 checkpoint left it."""
    shutil.copytree(src, dst)
    shutil.rmtree(dst / "checkpoints" / "step-00000006")
    shutil.rmtree(dst / "model")


@pytest.mark.distributed
def test_world_size_changes_nothing_and_checkpoints_move_between_world_sizes(data, tmp_path):
    one = _train(data, tmp_path / "one", 1)
    two = _train(data, tmp_path / "two", 2)
    assert len(one) == len(two) == 6
    assert two == pytest.approx(one, rel=RTOL)  # the same rows and noise per step, split differently
    assert len(set(one)) == 6  # a real run: the losses move

    _resume_elsewhere(tmp_path / "two", tmp_path / "two_to_one")
    resumed = _train(data, tmp_path / "two_to_one", 1, "--resume")
    assert resumed[:3] == two[:3] and resumed[3:] == pytest.approx(two[3:], rel=RTOL)

    _resume_elsewhere(tmp_path / "one", tmp_path / "one_to_two")
    resumed = _train(data, tmp_path / "one_to_two", 2, "--resume")
    assert resumed[:3] == one[:3] and resumed[3:] == pytest.approx(one[3:], rel=RTOL)
