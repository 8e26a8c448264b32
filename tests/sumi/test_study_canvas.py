"""``sumi study canvas`` (:mod:`sumi.study.canvas`): end to end through the CLI on the tiny
study runs (30 steps), each measure checked against an independent recomputation."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch

from sumi.cli import main
from sumi.configs.train import train_tiny
from sumi.study import canvas

from .conftest import STUDY_RUN_STEPS

LENGTHS = (16, 32)
SMALL = ["--lengths", ",".join(map(str, LENGTHS)), "--samples", "2", "--steps", "4", "--points", "2",
         "--max-heldout-documents", "2", "--seed", "3", "--device", "cpu", "--threads", "1", "--no-progress"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _study(out: Path, runs: dict, *extra: str) -> int:
    return main(["study", "canvas", "--model", str(runs["uniform"]), "--judge", str(runs["judge"]), "--out", str(out),
                 *SMALL, *extra])


@pytest.fixture(scope="module")
def canvas_run(study_runs, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("canvas") / "study"
    assert _study(out, study_runs) == 0
    return out, json.loads((out / "canvas.json").read_text())


def test_writes_reports_with_one_row_per_length(canvas_run, study_runs):
    out, payload = canvas_run
    assert payload["study"] == "canvas"
    assert [r["length"] for r in payload["rows"]] == list(LENGTHS)
    settings = payload["settings"]
    assert settings["model"] == str(study_runs["uniform"].resolve())
    assert settings["family"] == "uniform"
    # the run trained at the tiny recipe's seq_len; both lengths are within it
    assert settings["trained_length"] == train_tiny().seq_len == 128
    assert [r["extrapolated"] for r in payload["rows"]] == [False, False]
    for r in payload["rows"]:
        assert 0 <= r["mean_sample_length"] <= r["length"] - 3
        assert r["nelbo_per_token"] > 0 and r["bits_per_byte"] > 0 and r["seconds_per_sample"] > 0
    md = (out / "canvas.md").read_text()
    assert "| length |" in md and "Trained at L = 128" in md
    assert (out / "canvas.png").read_bytes().startswith(PNG_MAGIC)


def test_nelbo_row_equals_an_independent_nelbo_texts_call(canvas_run, study_runs):
    from sumi.evaluate.likelihood import nelbo_texts
    from sumi.study.models import heldout_texts, load_model_dir

    _, payload = canvas_run
    row = payload["rows"][1]
    model, tokenizer = load_model_dir(study_runs["uniform"])
    report = nelbo_texts(model, tokenizer, heldout_texts(max_documents=2), canvas_length=row["length"], points=2,
                         seed=3)
    assert row["nelbo_per_token"] == pytest.approx(report.nelbo_per_token, rel=1e-12)
    assert row["bits_per_byte"] == pytest.approx(report.bits_per_byte, rel=1e-12)
    assert row["heldout_tokens"] == report.tokens


def test_sample_row_recomputed_with_the_judge_by_hand(canvas_run, study_runs):
    """Regenerate the samples with the documented seeds, then score them with a plain causal
    forward of the judge in float64 (BOS sample EOS, only the sample's tokens counted)."""
    from sumi import generate
    from sumi.study.models import load_model_dir

    _, payload = canvas_run
    row = payload["rows"][1]
    model, _ = load_model_dir(study_runs["uniform"])
    judge, _ = load_model_dir(study_runs["judge"])
    bos = model.config.bos_token_id
    out = generate(model, [[bos]] * 2, row["length"] - 3, canvas_length=row["length"], steps=4, seed=3)
    samples = out.tokens
    assert row["mean_sample_length"] == sum(map(len, samples)) / 2
    kept = [s for s in samples if s]
    assert row["empty_samples"] == 2 - len(kept)
    assert kept, "the seeds give no non-empty sample: choose another seed for this test"
    nats, tokens = 0.0, 0
    with torch.no_grad():
        for s in kept:
            ids = torch.tensor([[bos, *s, judge.config.eos_token_id]])
            logp = judge(ids).double().log_softmax(-1)[0]
            nats -= sum(float(logp[i - 1, ids[0, i]]) for i in range(1, len(s) + 1))
            tokens += len(s)
    assert row["judged_tokens"] == tokens
    assert row["gen_ppl"] == pytest.approx(math.exp(nats / tokens), rel=1e-4)

    def entropy(s):
        n = len(s)
        return -sum(c / n * math.log(c / n) for c in Counter(s).values())

    assert row["entropy"] == pytest.approx(sum(map(entropy, kept)) / len(kept), rel=1e-12)


def test_summary_names_the_lowest_bits_per_byte(canvas_run):
    _, payload = canvas_run
    best = min(payload["rows"], key=lambda r: r["bits_per_byte"])
    assert payload["summary"]["lowest_bits_per_byte"] == {"length": best["length"],
                                                          "bits_per_byte": best["bits_per_byte"]}


def test_resume_measures_only_the_missing_points(canvas_run, study_runs, tmp_path, monkeypatch):
    from sumi.evaluate import likelihood

    _, complete = canvas_run
    out = tmp_path / "study"
    real_samples, real_nelbo = canvas._measure_samples, likelihood.nelbo_texts
    calls = Counter()

    def samples(*args, **kwargs):
        calls["samples"] += 1
        if calls["samples"] == 2 and calls["kill"]:
            raise KeyboardInterrupt  # killed while measuring the samples of the second length
        return real_samples(*args, **kwargs)

    def nelbo(*args, **kwargs):
        calls["likelihood"] += 1
        return real_nelbo(*args, **kwargs)

    monkeypatch.setattr(canvas, "_measure_samples", samples)
    monkeypatch.setattr(likelihood, "nelbo_texts", nelbo)
    calls["kill"] = 1
    assert _study(out, study_runs) == 130  # Ctrl-C: one line, what finished is kept
    assert not (out / "canvas.json").exists()
    finished = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    assert len(finished) == 3  # likelihood and samples of L=16, likelihood of L=32

    calls.clear()
    assert _study(out, study_runs, "--resume") == 0
    assert calls == Counter(samples=1)  # only the interrupted point
    rows = json.loads((out / "canvas.json").read_text())["rows"]
    first = {k: v for record in finished[:2] for k, v in record["row"].items()}
    assert {k: rows[0][k] for k in first} == first  # read back exactly
    timing = "seconds_per_sample"
    assert [{k: v for k, v in r.items() if k != timing} for r in rows] == \
        [{k: v for k, v in r.items() if k != timing} for r in complete["rows"]]

    # a finished study, reports deleted: --resume measures nothing and writes the same rows
    for name in ("canvas.json", "canvas.md", "canvas.png"):
        (out / name).unlink()
    calls.clear()
    assert _study(out, study_runs, "--resume") == 0
    assert not calls
    assert json.loads((out / "canvas.json").read_text())["rows"] == rows
    assert (out / "canvas.png").is_file()


def test_preset_reuses_the_cached_runs(study_runs, tmp_path, sumi_cache, monkeypatch):
    monkeypatch.setenv("SUMI_CACHE", str(sumi_cache))
    before = sorted(p.name for p in study_runs["runs"].iterdir())
    out = tmp_path / "study"
    assert main(["study", "canvas", "--preset", "tiny", "--train-steps", str(STUDY_RUN_STEPS), "--runs",
                 str(study_runs["runs"]), "--out", str(out), "--lengths", "8,256", "--samples", "1", "--steps", "2",
                 "--points", "1", "--max-heldout-documents", "1", "--device", "cpu", "--no-progress"]) == 0
    assert sorted(p.name for p in study_runs["runs"].iterdir()) == before  # nothing trained
    payload = json.loads((out / "canvas.json").read_text())
    assert payload["settings"]["model"] == str(study_runs["uniform"].resolve())
    assert payload["settings"]["judge"] == str(study_runs["judge"].resolve())
    # trained at 128 positions: 256 is extrapolation, marked in the rows and the table
    assert [r["extrapolated"] for r in payload["rows"]] == [False, True]
    assert "| 256* |" in (out / "canvas.md").read_text()


@pytest.mark.parametrize("sampler", ["adaptive", "confidence"])
def test_masked_family_with_its_samplers(sampler, study_runs, tmp_path):
    """adaptive writes the whole canvas within its steps (ceil((L - 3) / steps) per step): a
    masked canvas is refused otherwise; confidence applies to the masked family."""
    out = tmp_path / "study"
    assert main(["study", "canvas", "--model", str(study_runs["masked"]), "--judge", str(study_runs["judge"]),
                 "--out", str(out), "--lengths", "16", "--samples", "2", "--steps", "3", "--points", "1",
                 "--max-heldout-documents", "1", "--sampler", sampler, "--device", "cpu", "--no-progress"]) == 0
    payload = json.loads((out / "canvas.json").read_text())
    (row,) = payload["rows"]
    assert payload["settings"]["family"] == "masked"
    assert row["tokens_per_step"] == (math.ceil(13 / 3) if sampler == "adaptive" else None)
    assert 0 <= row["mean_sample_length"] <= 13 and row["nelbo_per_token"] > 0


@pytest.mark.parametrize("case", ["beyond positions", "ar model", "own judge", "not a list", "too short",
                                  "twice", "no judge", "train steps", "sampler", "samples", "heldout"])
def test_bad_input_exits_2_with_one_line(case, study_runs, tmp_path, capsys):
    model, judge = str(study_runs["uniform"]), str(study_runs["judge"])
    args = {"--model": model, "--judge": judge}
    extra, expect = [], None
    if case == "beyond positions":
        extra, expect = ["--lengths", "16,1024"], "1024 exceeds the model's max_position_embeddings (512)"
    elif case == "ar model":
        args["--model"], expect = judge, "has no canvas"
    elif case == "own judge":
        args["--judge"], expect = model, "never its own judge"
    elif case == "not a list":
        extra, expect = ["--lengths", "16,x"], "--lengths takes a comma list"
    elif case == "too short":
        extra, expect = ["--lengths", "3"], "--lengths: canvas length 3 is not an int >= 4"
    elif case == "twice":
        extra, expect = ["--lengths", "16,16"], "names a length twice"
    elif case == "no judge":
        del args["--judge"]
        expect = "--judge DIR is required"
    elif case == "train steps":
        extra, expect = ["--train-steps", "5"], "--train-steps applies to the trainings of --preset tiny only"
    elif case == "sampler":
        extra, expect = ["--sampler", "confidence"], "does not apply to the uniform family"
    elif case == "samples":
        extra, expect = ["--samples", "0"], "--samples must be an int >= 1, got 0"
    elif case == "heldout":
        extra, expect = ["--heldout", str(tmp_path / "missing.txt")], "--heldout"
    out = tmp_path / "study"
    argv = ["study", "canvas", "--out", str(out), *[x for kv in args.items() for x in kv], *extra]
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sumi study: error:") and expect in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_default_lengths_and_checks():
    assert canvas.default_lengths(512) == [32, 64, 128, 256, 512]
    assert canvas.default_lengths(4864) == [32, 64, 128, 256, 512, 1024, 2048, 4096]
    assert canvas.default_lengths(20) == [20]
    assert canvas.check_lengths([64, 16], 64) == [16, 64]
    with pytest.raises(ValueError, match="exceeds the model's max_position_embeddings"):
        canvas.check_lengths([65], 64)
    with pytest.raises(ValueError, match="is empty"):
        canvas.check_lengths([], 64)


def test_trained_length_is_none_without_a_run_config(study_runs, tmp_path):
    copy = tmp_path / "download" / "model"
    shutil.copytree(study_runs["uniform"], copy)
    assert canvas.trained_length(copy) is None
    (copy.parent / "config.json").write_text(json.dumps({"seq_len": 96}))
    assert canvas.trained_length(copy) == 96
