"""The trainings and the bookkeeping of the studies: ``sumi.study.runs`` (each training an
ordinary ``sumi train`` process, cached by its command line, resumed when interrupted) and
``sumi.study.store`` (points kept as they finish, read back on ``--resume``)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from safetensors.torch import load_file

from sumi._fs import LockedError
from sumi.study.runs import Run, RunCache, RunFailed, model_done
from sumi.study.store import POINTS_NAME, markdown_table, open_study, point_key

SMALL = ("model.hidden_size=32", "model.intermediate_size=96", "model.num_attention_heads=2",
         "model.num_key_value_heads=1")


def test_a_run_is_its_command_line():
    run = Run("masked", steps=10, seed=3, assignments=SMALL, label="a label")
    assert run.args() == ["train", "--preset", "tiny", "--objective", "masked", "--steps", "10", "--seed", "3",
                          "--checkpoint-every", "3"] + [x for a in SMALL for x in ("--set", a)]
    # the label names the run for people only; anything on the command line changes the key
    assert Run("masked", steps=10, seed=3, assignments=SMALL).key() == run.key()
    others = [Run("uniform", steps=10, seed=3, assignments=SMALL), Run("masked", steps=11, seed=3, assignments=SMALL),
              Run("masked", steps=10, seed=4, assignments=SMALL), Run("masked", steps=10, seed=3),
              Run("masked", steps=10, seed=3, assignments=SMALL, data=("stdlib:heldout",))]
    assert len({run.key()} | {o.key() for o in others}) == 1 + len(others)
    assert Run("ar", steps=1).checkpoint_every == 1 and Run("ar", steps=2000).checkpoint_every == 500
    with pytest.raises(ValueError, match="steps"):
        Run("ar", steps=0)


def _weights(model_dir):
    return {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_an_interrupted_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, sumi_cache, monkeypatch):
    monkeypatch.setenv("SUMI_CACHE", str(sumi_cache))
    from sumi.train import embedded
    from sumi.train.loop import train

    run = Run("uniform", steps=8, assignments=SMALL)
    cache = RunCache(tmp_path / "runs", progress=False)
    # the same run, interrupted after its first checkpoint (step 2 of 8): what a kill leaves behind
    data_dir, tokenizer = embedded.prepare_embedded(128, progress=False)
    config = embedded.embedded_config(tokenizer).override(
        [f"objective={run.objective}", f"steps={run.steps}", f"seed={run.seed}",
         f"checkpoint_every={run.checkpoint_every}", *SMALL])
    train(config, data_dir, cache.path(run), progress=False, stop_at_step=2)
    assert not cache.done(run) and not model_done(cache.path(run))

    resumed = cache.ensure(run)  # in this process (the default)
    steps = [json.loads(line)["step"] for line in (cache.path(run) / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))  # steps 1-2 from the first call, 3-8 from the resumed one
    # the same command as its own process, uninterrupted: the same weights, bit for bit
    fresh = RunCache(tmp_path / "other", launcher=[sys.executable, "-m", "sumi"], progress=False).ensure(run)
    a, b = _weights(resumed), _weights(fresh)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)

    # finished: ensure returns the model without training again
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was started again")

    monkeypatch.setattr("sumi.study.runs.subprocess.run", no_training)
    monkeypatch.setattr("sumi.study.runs._train_here", no_training)
    assert cache.ensure(run) == resumed
    assert json.loads((cache.path(run) / "run.json").read_text())["args"] == run.args()


@pytest.mark.parametrize("launcher", [None, [sys.executable, "-m", "sumi"]], ids=["here", "process"])
def test_a_failed_run_says_why(launcher, tmp_path, sumi_cache, monkeypatch):
    monkeypatch.setenv("SUMI_CACHE", str(sumi_cache))
    bad = Run("uniform", steps=2, assignments=("model.num_attention_heads=3",))  # 64 is not divisible by 3
    threads = torch.get_num_threads()
    with pytest.raises(RunFailed, match="exited with status 2") as info:
        RunCache(tmp_path, launcher=launcher, progress=False).ensure(bad)
    assert "num_attention_heads" in str(info.value) and "--threads" not in str(info.value)
    assert torch.get_num_threads() == threads  # the command's thread setting does not leak into the study


def test_points_are_kept_as_they_finish_and_read_back(tmp_path):
    out = tmp_path / "study"
    calls = []

    def measure(value):
        def fn():
            calls.append(value)
            return {"value": value}
        return fn

    with open_study(out, resume=False) as study:
        assert study.point({"x": 1}, measure(1)) == {"value": 1}
        assert study.point({"x": 2}, measure(2)) == {"value": 2}
        assert study.point({"x": 1}, measure(99)) == {"value": 1}  # measured once
        with pytest.raises(LockedError):  # one study per directory at a time
            with open_study(out, resume=True):
                pass
    assert calls == [1, 2]
    with pytest.raises(FileExistsError, match="--resume"):
        with open_study(out, resume=False):
            pass
    # a kill during a write tears the last line: that point alone is measured again
    with open(out / POINTS_NAME, "a") as f:
        f.write('{"key": "' + point_key({"x": 3}) + '", "row": {"val')
    with open_study(out, resume=True) as study:
        assert len(study) == 2
        assert study.point({"x": 2}, measure(2)) == {"value": 2}
        assert study.point({"x": 3}, measure(3)) == {"value": 3}
        js, md = study.write("demo", {"rows": [1]}, "# demo")
    assert calls == [1, 2, 3]
    assert json.loads(js.read_text()) == {"rows": [1]} and md.read_text() == "# demo\n"
    assert not [p for p in os.listdir(out) if p.startswith(".") and p != ".study.lock"]  # no temporary files left


def test_markdown_table():
    text = markdown_table(["a", "b", "c"], [[1234, 0.5, None], ["x", 3.14159, True]])
    assert text.splitlines() == ["| a | b | c |", "|---|---|---|", "| 1,234 | 0.5000 | - |", "| x | 3.142 | yes |"]


@pytest.mark.parametrize("study", ["pareto", "scaling", "canvas"])
@pytest.mark.parametrize("error, status", [(RunFailed("`sumi train ...` exited with status 1"), 1),
                                           (KeyboardInterrupt(), 130)])
def test_a_failed_or_interrupted_training_stops_the_study_with_one_line(study, error, status, tmp_path, sumi_cache,
                                                                        monkeypatch, capsys):
    from sumi.cli import main

    monkeypatch.setenv("SUMI_CACHE", str(sumi_cache))

    def ensure(self, run, position=""):
        raise error

    monkeypatch.setattr(RunCache, "ensure", ensure)
    assert main(["study", study, "--preset", "tiny", "--no-progress", "--out", str(tmp_path / "out")]) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"sumi study {study}: ") and err[0].endswith("--resume"), err
    assert not (tmp_path / "out" / f"{study}.json").exists()
