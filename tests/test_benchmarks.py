"""The benchmark scripts keep working: each runs end to end on tiny sizes, prints its table and
a final JSON line whose numbers are consistent (the variants and backends it compares compute
the same thing).  Timings are never asserted: they belong to the result files, not to tests.
(``families.py`` runs end to end in the tutorial docs/tutorials/families.md, which
tests/test_docs.py executes and whose checks read its JSON line.)"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_benchmark(name: str, *args: str) -> tuple[list[str], dict]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), "--threads", "1", *args], capture_output=True,
                          text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    return lines[:-1], json.loads(lines[-1])


def test_loss_benchmark():
    table, record = run_benchmark("loss.py", "--tokens", "96", "--vocab", "100278", "--hidden", "16", "--repeats", "1")
    assert record["benchmark"] == "loss.gidd_fused_vs_plain" and record["tokens"] == 96
    assert record["loss_rel_diff"] < 1e-5 and record["grad_norm_rel_diff"] < 1e-5
    assert record["time_ratio"] > 0
    # plain holds several 96 x 100278 float32 logit-sized tensors (38.5 MB each: above glibc's largest
    # mmap threshold, so they leave RSS when freed and the peak is measurable), fused a few blocks
    assert record["mem_ratio"] is not None and 0 <= record["mem_ratio"] < 1
    assert any(line.startswith("fused") for line in table)


def test_sampler_benchmark():
    # three of the six rows (each (row, method) is its own subprocess: ~2.5 s of imports each); the
    # others' step code is the samplers' own, tested in tests/discdiff
    table, record = run_benchmark("sampler.py", "--quick", "--rows", "uniform,top_p=0.9,adaptive")
    assert record["benchmark"] == "sampler.step" and (record["positions"], record["vocab"]) == (32, 1001)
    rows = record["rows"]
    assert list(rows) == ["uniform", "top_p=0.9", "adaptive"]
    for name, row in rows.items():
        ours, naive = row["results"]["ours"], row["results"]["naive"]
        assert "error" not in ours and "error" not in naive, (name, row)
        for r in (ours, naive):
            assert r["median_s"] > 0 and len(r["times_s"]) == 1 and r["peak_extra_bytes"] >= 0
            assert 0 <= r["moved_fraction"] <= 1
        ratio = row["ratio_naive_over_ours"]
        assert ratio["time"] == pytest.approx(naive["median_s"] / ours["median_s"])
        assert ratio["memory"] == pytest.approx(naive["peak_extra_bytes"] / max(ours["peak_extra_bytes"], 1))
        assert ratio["goal_met"] == (ratio["time"] >= record["goal"] and ratio["memory"] >= record["goal"])
    assert record["all_goals_met"] == all(row["ratio_naive_over_ours"]["goal_met"] for row in rows.values())
    # adaptive rewrites 16 of the 32 positions (a draw may land on the current token)
    assert all(0 < rows["adaptive"]["results"][m]["moved_fraction"] <= 0.5 for m in ("ours", "naive"))
    assert table[0].startswith("One sampler step, V = 1,001, canvas 32")


def test_train_step_benchmark():
    table, record = run_benchmark("train_step.py", "--quick", "--variants", "plain,fused,fused+ac,eager+fused")
    results = record["results"]
    assert set(results) == {"plain", "fused", "fused+ac", "eager+fused"}
    assert not any("error" in r for r in results.values()), results
    first = [r["first_loss"] for r in results.values()]
    assert all(math.isfinite(v) for v in first)
    assert record["first_loss_spread"] < 1e-4  # every variant computes the same step
    # FLOPs per token of the tiny preset at 32 tokens, by hand (forward + backward = 6 x the
    # matmul weights, plus the attention products): per layer q, o 64x64 = 4096 each, k, v
    # 64x32 = 2048 each, MLP 3 x 64 x 192 = 36864, norms 2 x 64 -> 49280; x 2 layers, + final norm
    # 64, + head 512 x 64 = 32768 -> N = 131392, 6 N = 788352; attention 12 L heads d S =
    # 12 x 2 x 4 x 16 x 32 = 49152.  (tests/sumi/test_model.py checks the convention against a
    # FLOP counter.)
    flops = 788_352 + 49_152
    for r in results.values():
        assert r["tokens_per_step"] == 8 * 32 and len(r["times_s"]) == 2
        assert r["flops_per_token"] == flops
        assert r["tokens_per_s"] == pytest.approx(256 / r["step_s"])
        assert r["achieved_flops"] == pytest.approx(flops * 256 / r["step_s"])
        assert r["mfu"] is None  # no datasheet peak on CPU
        assert r["matmul_fraction"] == pytest.approx(flops * 256 / r["step_s"] / record["matmul_ceiling"]["flops"])
    assert record["best"] in results
    assert table[0].startswith("Sumi training step, preset tiny")
    # the step as the loop runs it reads no device value (counted on the CPU as a GPU would wait)
    for r in results.values():
        assert r["host_syncs_per_step"] == 0 and r["host_sync_sites"] == {}, r["host_sync_sites"]
        assert r["cuda_syncs_per_step"] is None and Path(r["library"]) == BENCHMARKS.parent
    assert record["baseline"] is None and record["speedup"] is None


def test_train_step_benchmark_rejects_bad_variants():
    for args, message in [(["--variants", "fused+fused"], "each at most once"),
                          (["--variants", "plain+fused"], "at most one of"), (["--variants", "fast"], "flags are"),
                          (["--baseline", str(BENCHMARKS)], "not a checkout of this repository")]:
        proc = subprocess.run([sys.executable, str(BENCHMARKS / "train_step.py"), *args],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and message in proc.stderr, (args, proc.stderr[-500:])


def test_generate_benchmark():
    """This checkout against itself as the baseline (the path a real ``--baseline DIR`` takes):
    greedy is deterministic, so both give the same canvas in both layouts."""
    root = str(BENCHMARKS.parent)
    table, record = run_benchmark("generate.py", "--quick", "--sampler", "greedy", "--baseline", root)
    results = record["results"]
    assert set(results) == {"new/released", "baseline/released", "new/frozen_tail", "baseline/frozen_tail"}
    assert not any("error" in r for r in results.values()), results
    assert record["canvas"] == 256 and record["steps"] == 4 and record["new_tokens"] == 32
    assert record["layers"] == 2 and record["vocab"] == 512 and record["baseline"] == root
    for key, r in results.items():
        assert r["answer_tokens_per_s"] == pytest.approx(32 / r["median_s"])
        assert len(r["times_s"]) == 1 and r["steps_run"] == 4 and r["peak_extra_bytes"] >= 0
        assert r["sumi_file"].startswith(root)
        if key.startswith("new/"):
            baseline = results[key.replace("new/", "baseline/")]
            assert r["same_canvas_as_baseline"] is True and r["canvas_sha256"] == baseline["canvas_sha256"]
            assert r["speedup_over_baseline"] == pytest.approx(baseline["median_s"] / r["median_s"])
    assert any(line.startswith("new/frozen_tail") for line in table)


def test_attention_benchmark():
    table, record = run_benchmark("attention.py", "--seq", "64", "--repeats", "1")
    assert record["seq"] == 64 and set(record["results"]) == {f"{m}/{c}" for m in ("forward", "train")
                                                                for c in ("none", "padding", "documents")}
    for key, row in record["results"].items():
        assert set(row) == set(record["methods"])
        for method, r in row.items():
            assert r["median_s"] > 0 and r["max_err"] < 1e-4, (key, method)  # every form is exact
        speed = record["speedups"][key]
        assert speed["sdpa"] == pytest.approx(row["sdpa+append"]["median_s"] / row["sdpa"]["median_s"])
    assert any(line.startswith("train/documents") for line in table)




def test_evaluate_benchmark():
    table, record = run_benchmark("evaluate.py", "--quick")
    assert record["benchmark"] == "evaluate.nelbo_throughput" and record["quick"]
    assert record["canvas"] == 128 and record["points"] == 4 and record["vocab"] == 512
    results = record["results"]
    assert set(results) == {"forward", "ours", "logits"}  # main needs --baseline
    assert not any("error" in r for r in results.values()), results
    forward = results["forward"]
    assert forward["tokens"] == 4 * 128 and forward["tokens_per_s"] == pytest.approx(512 / forward["median_s"])
    assert record["forward_tokens_per_s"] == forward["tokens_per_s"]
    ours, logits = results["ours"], results["logits"]
    assert ours["tokens"] == logits["tokens"] > 1000 and record["kb"] > 5
    for r in (ours, logits):
        assert r["token_points_per_s"] == pytest.approx(r["tokens"] * 4 / r["seconds"])
        assert r["over_forward"] == pytest.approx(r["token_points_per_s"] / forward["tokens_per_s"])
    # the same noise (seed, batch size) through the fused, stacked scorer and the previous algorithm:
    # the same NELBO up to float32 rounding
    assert ours["nats_rel_diff"] == 0 and logits["nats_rel_diff"] < 1e-6
    assert record["ours_over_logits"] == pytest.approx(ours["token_points_per_s"] / logits["token_points_per_s"])
    assert any(line.startswith("ours") for line in table)



@pytest.mark.parametrize("model", ["plain", "sumi"])
def test_guidance_benchmark(model):
    table, record = run_benchmark("guidance.py", "--model", model, "--quick", "--scales", "0,2")
    assert record["benchmark"] == "guidance" and record["model"] == model and record["quick"]
    settings = record["settings"]
    assert settings["kernels"] == ["uniform", "masked", "hybrid"] and settings["scales"] == [0.0, 2.0]
    assert (settings["samples"], settings["steps"], settings["train_steps"]) == (16, 8, 20)
    rows = record["rows"]
    # one row per kernel x scale, plus the unconditional model (scale -1) first for each kernel
    assert [(r["kernel"], r["scale"]) for r in rows] == [(k, w) for k in settings["kernels"] for w in (-1.0, 0.0, 2.0)]
    for r in [*rows, record["reference"]]:
        assert 0 <= r["accuracy"] <= 1 and all(0 <= a <= 1 for a in r["accuracy_by_class"])
        # 16 equal halves: the overall accuracy is the mean of the two classes'
        assert r["accuracy"] == pytest.approx(sum(r["accuracy_by_class"]) / 2)
        # sumi: a malformed answer (not 32 chain tokens) counts wrong and leaves the other measures
        malformed = r.get("malformed", 0)
        assert 0 <= malformed <= 16 and r["accuracy"] <= (16 - malformed) / 16
        if malformed == 16:
            assert r["entropy"] is None and r["log_lik"] is None and r["distinct"] is None
        else:
            assert 0 <= r["entropy"] <= math.log(16) and r["log_lik"] < 0 and 0 < r["distinct"] <= 1
    assert all(r["masked_left"] == 0 and r["sample_s"] > 0 for r in rows)  # the grid ends at lambda = +inf
    assert all(("malformed" in r) == (model == "sumi") for r in rows)
    assert set(record["training"]) == set(settings["kernels"])
    assert all(math.isfinite(t["final_loss"]) for t in record["training"].values())
    assert table[0].startswith("Classifier-free guidance on two overlapping Markov chains (V = 16, L = 32")
    if model == "sumi":
        # the mask families add their mask id to the 21 ids (chain, BOS, EOS, PAD, two classes)
        assert [record["training"][k]["vocab_size"] for k in settings["kernels"]] == [21, 22, 22]
        assert settings["seq_len"] == 36 and settings["prompt_length"] == 2


def test_prepare_benchmark(tmp_path):
    """One worker (``--threads 1``) on 1 MB: prepare wrote exactly the raw encoding's text tokens for
    every generated document, and the work directory (inputs, outputs) is gone afterwards."""
    table, record = run_benchmark("prepare.py", "--mb", "1", "--workdir", str(tmp_path))
    assert record["benchmark"] == "prepare.throughput" and record["workers"] == 1 and record["seq_len"] == 1184
    gen = record["generate"]
    assert gen["bytes"]["big"] >= 1_000_000 and 125_000 <= gen["bytes"]["small"] < gen["bytes"]["big"]
    for name in ("small", "big"):
        row = record["results"][name]
        raw, prep = row["raw"], row["prepare"]
        assert row["input_bytes"] == gen["bytes"][name]
        # the generator's own count of documents (none empty), and the raw pass's count of their text tokens
        assert raw["documents"] == prep["documents"] == gen["documents"][name]
        assert row["tokens_match"] and prep["text_tokens"] == raw["tokens"] > 0
        assert prep["tokens_written"] == raw["tokens"] + 2 * prep["documents"]  # BOS text EOS each
        assert prep["tokens_written"] == prep["rows"] * 1184 + prep["dropped_tokens"] and prep["dropped_tokens"] < 1184
        assert raw["rayon_threads"] == "1" and raw["batches"] >= 1
        assert row["ratio"] == pytest.approx(prep["tokens_per_s"] / raw["tokens_per_s"]) and row["ratio"] > 0
        assert prep["tokens_per_s"] == pytest.approx(raw["tokens"] / prep["seconds"])
        assert prep["peak_rss_bytes"] > 10_000_000 and prep["processes"] == 1  # one worker: no pool
        assert prep["main_cpu_seconds"] > 0 and prep["others_cpu_seconds"] == 0
    assert record["ratio"] == record["results"]["big"]["ratio"]
    assert record["peak_rss_ratio"] == pytest.approx(record["results"]["big"]["prepare"]["peak_rss_bytes"]
                                                     / record["results"]["small"]["prepare"]["peak_rss_bytes"])
    assert not Path(record["workdir"]).exists() and list(tmp_path.iterdir()) == []
    assert table[0].startswith("sumi data prepare vs the tokenizer's batch encoding")
