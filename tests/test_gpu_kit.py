"""The GPU verification kit's plumbing (``benchmarks/gpu/run.sh --dry-run``, issue 19): every stage
runs and is logged, the summary is complete, and one failing stage never hides the later ones."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["pytest-gpu", "attention", "loss", "train_step", "generate", "sampler"]


def dry_run(out: Path, **env) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(["bash", str(ROOT / "benchmarks/gpu/run.sh"), "--dry-run", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, **env})
    last = proc.stdout.strip().splitlines()[-1]
    summary = json.loads(last)
    assert summary == json.loads((out / "summary.json").read_text())
    assert [s["name"] for s in summary["stages"]] == STAGES
    table = (out / "summary.txt").read_text()
    for s in summary["stages"]:
        assert Path(s["log"]).is_file() and Path(s["log"]).read_text().strip(), s
        assert f"{s['stage']:<6} {s['name']:<12} {s['status']:<14}" in table
    return proc, summary


def test_dry_run_runs_every_stage_logs_it_and_a_failing_stage_hides_none_after_it(tmp_path):
    # one dry run (each costs ~30 s): stage 5 (generate, also smoke-tested in tests/test_benchmarks.py) fails
    # on purpose; the four before it and the one after it must pass as they would on a GPU
    proc, summary = dry_run(tmp_path, GPU_KIT_FAIL_STAGE="5")
    assert proc.returncode != 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["passed"] is False and summary["dry_run"] is True
    status = {s["name"]: s["status"] for s in summary["stages"]}
    assert status["generate"] == "failed(rc=1)", status
    assert "forced failure" in (tmp_path / "5-generate.log").read_text()
    assert all(status[name] == "passed" for name in STAGES if name != "generate"), status
    # the helper's stages end with their own JSON result line
    for n, name in [(2, "attention"), (3, "loss"), (6, "sampler")]:
        result = json.loads((tmp_path / f"{n}-{name}.log").read_text().strip().splitlines()[-1])
        assert result["check"] == name and result["passed"] is True
    assert "tests collected" in (tmp_path / "1-pytest-gpu.log").read_text()
