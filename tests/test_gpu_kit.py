"""The GPU verification kit (``benchmarks/gpu/``, issue 19).

The dry run (``run.sh --dry-run``) runs as a lent GPU machine would: from a copy of the checkout
that no package installer knows (the installed ``sumi`` is this repository, so a stage that
imported it instead of the copy's would be caught by stage 0), with the test extras the GPU
image lacks hidden.  Every stage runs and is logged, the summary and the archive are
complete, and one failing stage never hides the later ones.  The attention check's sink case is
tested against a float64 oracle and against an attention that drops the sink."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from sumi.model.attention import AttentionBackend

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["environment", "pytest-gpu", "attention", "loss", "train_step", "generate", "sampler"]
NOT_ON_THE_IMAGE = ["beartype", "zstandard", "datasets", "lm_eval", "mkdocs"]  # test extras the GPU image lacks


def device_like_checkout(tmp_path: Path) -> tuple[Path, Path]:
    """A copy of the checkout (not installed anywhere), and a directory for ``PYTHONPATH`` whose
    ``sitecustomize`` hides the test extras that a lent GPU machine does not have: the path
    finder does not find them, as if they were not installed."""
    copy = tmp_path / "checkout"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "results")
    for name in ("discdiff", "sumi", "benchmarks", "tests"):
        shutil.copytree(ROOT / name, copy / name, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", copy)
    hide = tmp_path / "hide"
    hide.mkdir()
    (hide / "sitecustomize.py").write_text(
        "import sys\n"
        "from importlib.machinery import PathFinder\n\n\n"
        "class Without(PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        f"        if name.partition('.')[0] in {set(NOT_ON_THE_IMAGE)!r}:\n"
        "            return None\n"
        "        return super().find_spec(name, path, target)\n\n\n"
        "sys.meta_path[:] = [Without if f is PathFinder else f for f in sys.meta_path]\n")
    return copy, hide


def test_dry_run_as_on_a_gpu_machine_every_stage_logged_archived_and_a_failure_hides_nothing(tmp_path):
    # one dry run (each costs ~40 s): stage 5 (generate, also smoke-tested in tests/test_benchmarks.py)
    # fails on purpose; the stages before and after it must pass as they would on a GPU
    copy, hide = device_like_checkout(tmp_path)
    out, archive = tmp_path / "out", tmp_path / "fetch" / "results.tar.gz"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(hide), "GPU_KIT_FAIL_STAGE": "5"}
    proc = subprocess.run(["bash", str(copy / "benchmarks/gpu/run.sh"), "--dry-run", "--out", str(out),
                           "--archive", str(archive)], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary == json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == STAGES and summary["passed"] is False and summary["dry_run"]
    table = (out / "summary.txt").read_text()
    for s in summary["stages"]:
        assert Path(s["log"]).is_file() and Path(s["log"]).read_text().strip(), s
        assert f"{s['stage']:<6} {s['name']:<12} {s['status']:<14}" in table
    status = {s["name"]: s["status"] for s in summary["stages"]}
    assert status["generate"] == "failed(rc=1)", status
    assert "forced failure" in (out / "5-generate.log").read_text()
    assert all(status[name] == "passed" for name in STAGES if name != "generate"), (status, proc.stdout[-3000:])

    # stage 0 found the copy's packages, not the installed ones, and the missing extras
    env_result = json.loads((out / "0-environment.log").read_text().strip().splitlines()[-1])
    assert env_result["passed"] and env_result["checkout"] == str(copy)
    assert all(Path(p["file"]).is_relative_to(copy) for p in env_result["project"].values()), env_result["project"]
    assert env_result["test"]["beartype"] == {"ok": False, "error": "ModuleNotFoundError: No module named 'beartype'"}
    # stage 1 collected the GPU tests of every module that has one, without the beartype hook
    pytest_log = (out / "1-pytest-gpu.log").read_text()
    assert "-o addopts=" in pytest_log.splitlines()[0] and "tests collected" in pytest_log
    assert {"test_model.py", "test_hf.py", "test_train.py"} <= {line.split("::")[0].rsplit("/", 1)[-1]
                                                                 for line in pytest_log.splitlines() if "::" in line}
    # the helper's stages end with their own JSON result line
    for n, name in [(2, "attention"), (3, "loss"), (6, "sampler")]:
        result = json.loads((out / f"{n}-{name}.log").read_text().strip().splitlines()[-1])
        assert result["check"] == name and result["passed"] is True
    # the archive: one file holding the whole results directory as it ended
    with tarfile.open(archive) as tar:
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        assert set(members) == {f"out/{p.name}" for p in out.iterdir()}
        assert tar.extractfile(members["out/summary.json"]).read().decode() == (out / "summary.json").read_text()


def test_the_budget_skips_what_it_cannot_fit_and_still_writes_the_summary(tmp_path):
    # a 0-second budget: no stage is started, each is recorded as skipped
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--dry-run", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHON": sys.executable, "GPU_KIT_BUDGET": "0"})
    assert proc.returncode == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [s["status"] for s in summary["stages"]] == ["skipped"] * len(STAGES) and summary["passed"] is False
    assert "budget is spent" in (tmp_path / "3-loss.log").read_text()


def test_bad_arguments_are_one_line_errors(tmp_path):
    for argv, message in [(["--bogus"], "unknown argument '--bogus'"), (["--out"], "--out needs a path"),
                          (["--archive"], "--archive needs a path")]:
        proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), *argv], capture_output=True, text=True,
                              timeout=30)
        assert proc.returncode == 2 and message in proc.stderr, (argv, proc.stderr)


# -- the attention check's sink case -------------------------------------------------------------
@pytest.fixture(scope="module")
def checks():
    """benchmarks/gpu/checks.py as a module (it puts benchmarks/ on sys.path: undone after)."""
    path, modules = list(sys.path), set(sys.modules)
    spec = importlib.util.spec_from_file_location("gpu_checks", ROOT / "benchmarks/gpu/checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    sys.path[:] = path
    for name in set(sys.modules) - modules:
        if str(getattr(sys.modules[name], "__file__", "")).startswith(str(ROOT / "benchmarks")):
            del sys.modules[name]


def _args(seq: int, head_dim: int, heads: int = 4, kv_heads: int = 2) -> SimpleNamespace:
    return SimpleNamespace(batch=1, heads=heads, kv_heads=kv_heads, head_dim=head_dim, seq=seq, dtype="float32")


@pytest.mark.parametrize("seq,head_dim", [(64, 16), (2048, 128)])
def test_the_sink_case_gives_the_sink_about_half_of_each_row(checks, seq, head_dim):
    """The sink's weight in a row is ``1 / (1 + sum_j exp(s_j)) = sigmoid(-logsumexp_j s_j)``,
    computed here in float64 from the check's own inputs."""
    def sink_weight(case):
        (q, k, _), *_ = checks.attention_inputs(_args(seq, head_dim, 2, 1), case, torch.device("cpu"),
                                                torch.Generator().manual_seed(0))
        scores = q.double() @ k.double().transpose(-1, -2) / math.sqrt(head_dim)  # one KV head serves both
        return torch.sigmoid(-scores.logsumexp(-1))

    sink = sink_weight("sink")
    assert 0.3 < float(sink.mean()) < 0.7 and float(sink.min()) > 0.02 and float(sink.max()) < 0.98
    assert float(sink_weight("none").mean()) < 1 / seq  # random inputs: the sink is invisible


def test_an_attention_without_the_sink_fails_the_sink_case_only(checks, monkeypatch):
    """A backend with a plain softmax (no sink) is within bf16 tolerance of the reference on random
    inputs, which is why the sink case exists: there it is off by O(1)."""
    plain = AttentionBackend(lambda *_: None, lambda q, k, v, _: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    monkeypatch.setitem(checks.BACKENDS, "plain", plain)
    args, cpu = _args(64, 16), torch.device("cpu")
    worst = {}
    for case in ("none", "sink"):
        qkv, key_mask, document_ids, probe = checks.attention_inputs(args, case, cpu, torch.Generator().manual_seed(1))
        rows = torch.ones(1, 1, args.seq, 1, dtype=torch.bool)
        want = checks.run_attention("eager", qkv, key_mask, document_ids, probe, torch.float32, False)
        got = checks.run_attention("plain", qkv, key_mask, document_ids, probe, torch.float32, False)
        same = checks.run_attention("sdpa", qkv, key_mask, document_ids, probe, torch.float32, False)
        worst[case] = max(e["rel_max"] for e in checks.attention_errors(got, want, rows).values())
        assert max(e["rel_max"] for e in checks.attention_errors(same, want, rows).values()) < 1e-5
    bf16 = checks.TOLERANCE[torch.bfloat16]
    assert worst["none"] < bf16 < 10 * bf16 < worst["sink"], worst
