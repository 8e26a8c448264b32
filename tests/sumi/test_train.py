"""The training loop and `sumi train`: exact resume, the embedded main job, clear errors, no host
sync between log steps (counted on the CPU, enforced on CUDA), mixed precision in one process."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import sumi
from sumi._fs import LockedError
from sumi.cli import main
from sumi.configs import train_tiny
from sumi.data import MicroBatch, prepare
from sumi.distributed import checkpoint as ckpt
from sumi.tokenizer import SumiTokenizer, tiny_corpus
from sumi.train import Objective, build_optimizer, count_host_syncs, optimizer_step_counters
from sumi.train.loop import ThroughputWatch, TrainingDiverged, config_changes, train, train_step

REPO = Path(__file__).resolve().parents[2]


def _pack(tok, paragraphs: list[str], root) -> object:
    root.mkdir()
    paths = []
    for i, para in enumerate(paragraphs):
        path = root / f"doc{i:03d}.txt"
        path.write_text(para)
        paths.append(str(path))
    prepare(paths, tok, root / "packed", 32)
    return root / "packed"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tok = SumiTokenizer.default()
    return _pack(tok, tiny_corpus().split("\n\n")[:60], tmp_path_factory.mktemp("corpus") / "a"), tok


@pytest.fixture(scope="module")
def second(tmp_path_factory, data):
    """Another source (the corpus's other paragraphs), for mixtures."""
    return _pack(data[1], tiny_corpus().split("\n\n")[60:], tmp_path_factory.mktemp("corpus") / "b")


def _config(tok, **overrides):
    fields = dict(seq_len=32, global_batch_size=4, micro_batch_size=2, steps=6, warmup_steps=2,
                  checkpoint_every=3, peak_lr=1e-2, floor_lr=1e-3)
    return train_tiny(tok.vocab_size, **{**fields, **overrides})


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _losses(out):
    return [r["loss"] for r in _records(out)]


def test_resume_is_bitwise_identical(data, tmp_path):
    data_dir, tok = data
    config = _config(tok)  # 2 micro-batches per step: gradient accumulation is exercised too
    straight = train(config, data_dir, tmp_path / "a", progress=False)
    assert len(straight.losses) == 6
    train(config, data_dir, tmp_path / "b", progress=False, stop_at_step=3)
    assert not (tmp_path / "b" / "model").exists()  # an interrupted run exports nothing
    resumed = train(config, data_dir, tmp_path / "b", progress=False, resume=True)
    assert len(resumed.losses) == 3
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b")  # bitwise, every step
    a = sumi.from_pretrained(tmp_path / "a" / "model")
    b = sumi.from_pretrained(tmp_path / "b" / "model")
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), name
    # the straight run wrote its step-3 checkpoint with step 4's batches already read ahead: it
    # records the position after step 3, so a resume from it replays steps 4-6 exactly too
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    shutil.rmtree(tmp_path / "c" / "checkpoints" / "step-00000006")
    shutil.rmtree(tmp_path / "c" / "model")
    train(config, data_dir, tmp_path / "c", progress=False, resume=True)
    assert _losses(tmp_path / "c") == _losses(tmp_path / "a")


def test_mixture_run_resumes_bitwise_and_refuses_other_data(data, second, tmp_path):
    data_dir, tok = data
    sources = {"prose": data_dir, "more": second}
    config = _config(tok, mixture={"prose": 0.7, "more": 0.3})
    straight = train(config, sources, tmp_path / "a", progress=False)
    train(config, sources, tmp_path / "b", progress=False, stop_at_step=3)
    with pytest.raises(ValueError, match="resuming would not replay"):
        train(config.override(['mixture={"prose": 0.5, "more": 0.5}']), sources, tmp_path / "b",
              progress=False, resume=True)
    with pytest.raises(ValueError, match="resuming would not replay"):
        train(_config(tok), data_dir, tmp_path / "b", progress=False, resume=True)
    train(config, sources, tmp_path / "b", progress=False, resume=True)
    assert _losses(tmp_path / "a") == _losses(tmp_path / "b") and len(straight.losses) == 6
    # not the single-source run: the mixture changes what is read
    assert _losses(tmp_path / "a") != train(_config(tok), data_dir, tmp_path / "c", progress=False).losses


def test_next_phase_starts_from_the_previous_model(data, tmp_path):
    data_dir, tok = data
    train(_config(tok, steps=3), data_dir, tmp_path / "pre", progress=False)
    previous = sumi.from_pretrained(tmp_path / "pre" / "model")
    with pytest.raises(ValueError, match="init_from"):
        train(_config(tok, phase="mid"), data_dir, tmp_path / "mid", progress=False)
    with pytest.raises(FileNotFoundError, match="init_from"):
        train(_config(tok, init_from=str(tmp_path / "nope")), data_dir, tmp_path / "mid", progress=False)
    # a step of lr 1e-12 barely moves the weights: the run started from the previous model
    tiny_lr = dict(steps=1, peak_lr=1e-12, floor_lr=1e-12, seed=1)
    train(_config(tok, phase="mid", init_from=str(tmp_path / "pre" / "model"), **tiny_lr), data_dir,
          tmp_path / "mid", progress=False)
    fresh = train(_config(tok, **tiny_lr), data_dir, tmp_path / "fresh", progress=False)
    assert fresh.steps == 1
    after, scratch = sumi.from_pretrained(tmp_path / "mid" / "model"), sumi.from_pretrained(tmp_path / "fresh" / "model")
    for (name, p), q, r in zip(after.named_parameters(), previous.parameters(), scratch.parameters()):
        assert (p - q).abs().max() < 1e-8, name
        assert (p - r).abs().max() > 1e-3, name


def test_ids_beyond_the_model_vocabulary_stop_the_run(data, tmp_path):
    data_dir, tok = data
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    shard = np.load(bad / "shard-00000.npy", mmap_mode="r+")
    shard[:, 5] = tok.vocab_size + 3  # every row: the first batch meets it
    shard.flush()
    del shard
    # consistent data (its manifest's checksum updated), only the ids exceed the model's vocabulary
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["shard_sha256"] = [hashlib.sha256((bad / "shard-00000.npy").read_bytes()).hexdigest()]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    config = _config(tok).override([f"model.vocab_size={tok.vocab_size + 2}"])
    with pytest.raises(ValueError, match=f"holds id {tok.vocab_size + 3} >= vocab_size {tok.vocab_size + 2}"):
        train(config, bad, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_metrics_and_learning_signal(data, tmp_path):
    data_dir, tok = data
    result = train(_config(tok, steps=30, checkpoint_every=30, global_batch_size=8, micro_batch_size=8),
                   data_dir, tmp_path / "run", progress=False)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 31))
    for key in ("step", "loss", "kl", "is_div", "z_loss", "lr", "grad_norm", "tokens_per_s"):
        assert all(key in r for r in records), key
    assert all(abs(r["loss"] - (r["kl"] + r["is_div"] + r["z_loss"])) < 1e-5 for r in records)
    # learning: the last 5 steps average clearly below the first 5 (noise levels are random)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.9 * first, (first, last)


def test_fused_loss_flag_picks_the_loss_path(data, tmp_path, monkeypatch):
    """``fused_loss`` (the default) computes the loss from hidden states; ``false`` from logits;
    the two runs agree to float32 rounding."""
    import sumi.train.objective as objective

    calls = []
    fused_loss = objective.gidd_from_hidden
    monkeypatch.setattr(objective, "gidd_from_hidden", lambda *a, **k: calls.append(1) or fused_loss(*a, **k))
    data_dir, tok = data
    fused = train(_config(tok, steps=2), data_dir, tmp_path / "fused", progress=False).losses
    assert len(calls) == 4  # 2 steps x 2 micro-batches
    plain = train(_config(tok, steps=2, fused_loss=False), data_dir, tmp_path / "plain", progress=False).losses
    assert len(calls) == 4
    assert plain == pytest.approx(fused, rel=1e-5)


def test_errors_leave_checkpoints_alone(data, tmp_path):
    data_dir, tok = data
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        train(_config(tok), data_dir, tmp_path / "none", progress=False, resume=True)
    train(_config(tok, steps=3), data_dir, tmp_path / "run", progress=False)
    before = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    with pytest.raises(FileExistsError, match="--resume"):
        train(_config(tok, steps=3), data_dir, tmp_path / "run", progress=False)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == before
    with pytest.raises(ValueError, match="sequence length"):
        train(_config(tok, seq_len=64), data_dir, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match="vocabulary"):
        train(_config(tok).override(["model.vocab_size=100", "model.bos_token_id=1", "model.eos_token_id=2",
                                     "model.pad_token_id=3"]), data_dir, tmp_path / "y", progress=False)


def test_cli_main_job_and_user_errors(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUMI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "job"
    assert main(["train", "--preset", "tiny", "--out", str(out), "--steps", "6", "--no-progress"]) == 0
    for name in ("metrics.jsonl", "loss.png", "samples.txt", "config.json"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    model = sumi.from_pretrained(out / "model")
    assert sumi.SumiTokenizer.from_file(out / "model").vocab_size == model.config.vocab_size
    for argv, match in [
        (["train", "--preset", "tiny", "--out", str(out), "--steps", "6", "--no-progress"], "--resume"),
        (["train", "--preset", "tiny", "--out", str(tmp_path / "r"), "--resume", "--no-progress"], "no complete checkpoint"),
        (["train", "--preset", "tiny", "--out", str(tmp_path / "s"), "--set", "bogus=1", "--no-progress"], "bogus"),
        (["train", "--preset", "sumi_1b", "--out", str(tmp_path / "t")], "--data is required"),
        (["train", "--preset", "sumi_1b", "--out", str(tmp_path / "t"), "--data", str(tmp_path / "missing")], "missing"),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 2
        assert match in capsys.readouterr().err
    for argv, match in [
        (["train", "--preset", "tiny", "--out", str(tmp_path / "u"), "--phase", "mid"], "--phase applies"),
        (["train", "--preset", "sumi_7b", "--phase", "mid", "--out", str(tmp_path / "v"), "--data", "x"],
         "pass --data NAME=DIR"),
        (["train", "--preset", "tiny", "--out", str(tmp_path / "w"), "--data", "a=x", "--data", "y"], "either"),
    ]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 2
        assert match in capsys.readouterr().err
    with pytest.raises(SystemExit) as err:
        main(["train", "--preset", "huge", "--out", str(out)])
    assert err.value.code == 2


# -- robustness: divergence, resume checks, metrics, locks, interrupts, threads ------------------
def test_a_diverging_run_stops_at_the_step_and_never_checkpoints_it(data, tmp_path):
    """A learning rate of 1e3 makes the gradient norm NaN within a few steps: the run stops there,
    naming the step and the last checkpoint, every checkpoint holds finite weights and is older
    than the divergence, and nothing is exported."""
    data_dir, tok = data
    config = _config(tok, steps=12, warmup_steps=0, checkpoint_every=1, keep_last=2, peak_lr=1e3, floor_lr=1e2)
    with pytest.raises(TrainingDiverged, match=r"non-finite at step (\d+)") as err:
        train(config, data_dir, tmp_path / "run", progress=False)
    bad = int(re.search(r"at step (\d+)", str(err.value)).group(1))
    checkpoints = sorted((tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints and all(int(p.name[5:]) < bad for p in checkpoints)
    assert str(checkpoints[-1]) in str(err.value)
    for path in checkpoints:  # finite weights in every checkpoint that was kept
        model = sumi.Sumi.initialized(config.model)
        ckpt.load(path, model)
        assert all(bool(torch.isfinite(p).all()) for p in model.parameters()), path
    records = _records(tmp_path / "run")
    assert records[-1]["step"] == bad and (records[-1]["grad_norm"] is None or records[-1]["loss"] is None)
    assert not (tmp_path / "run" / "model").exists()


def test_non_finite_weights_stop_at_the_first_step(data, tmp_path):
    """A previous phase whose weights hold an inf: the first step's loss is not finite, no
    checkpoint is written, and the command line says so in one line (exit status 1)."""
    data_dir, tok = data
    model = sumi.Sumi.initialized(_config(tok).model, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model.lm_head.weight[3, 5] = float("inf")
    sumi.save_pretrained(model, tmp_path / "broken")
    config = _config(tok, init_from=str(tmp_path / "broken"))
    with pytest.raises(TrainingDiverged, match="at step 1 .*no checkpoint was written$"):
        train(config, data_dir, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists() or not list((tmp_path / "run" / "checkpoints").iterdir())


def test_resume_refuses_a_changed_configuration_unless_allowed(data, tmp_path):
    data_dir, tok = data
    config = _config(tok, steps=6)
    train(config, data_dir, tmp_path / "run", progress=False, stop_at_step=3)
    cases = [(config.override(["steps=8", "peak_lr=0.02"]), r"another configuration \(peak_lr 0.01 -> 0.02, "
                                                           r"steps 6 -> 8\).*--allow-config-change"),
             (config.override(["steps=2"]), "at step 3, past --steps 2"),
             (config.override(["model.hidden_size=32", "model.intermediate_size=96"]),
              r"another model or data layout \(model.hidden_size 64 -> 32, model.intermediate_size 192 -> 96\)"),
             (config.override(["global_batch_size=8"]), "another model or data layout")]
    for changed, match in cases:
        with pytest.raises(ValueError, match=match):
            train(changed, data_dir, tmp_path / "run", progress=False, resume=True)
        with pytest.raises(ValueError, match=match if "allow" not in match else "never"):
            if "allow" in match:  # the flag accepts what only changes the computation
                raise ValueError("never")
            train(changed, data_dir, tmp_path / "run", progress=False, resume=True, allow_config_change=True)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000003"]
    # free to change: checkpointing, logging, the micro-batch split; then the run matches a straight one
    free = config.override(["checkpoint_every=2", "micro_batch_size=1", "keep_last=5"])
    resumed = train(free, data_dir, tmp_path / "run", progress=False, resume=True)
    straight = train(config, data_dir, tmp_path / "straight", progress=False)
    assert resumed.losses == pytest.approx(straight.losses[3:], rel=1e-5)
    allowed = train(config.override(["steps=8"]), data_dir, tmp_path / "run", progress=False, resume=True,
                    allow_config_change=True)
    assert allowed.steps == 8 and len(allowed.losses) == 2


def test_metrics_are_cut_back_to_the_checkpoint_on_resume(data, tmp_path):
    """A run killed after its step-3 checkpoint had logged steps 4 and 5 and half a line: the
    resumed run's metrics.jsonl holds every step once, the same records as a straight run."""
    data_dir, tok = data
    config = _config(tok)
    train(config, data_dir, tmp_path / "straight", progress=False)
    run = tmp_path / "run"
    train(config, data_dir, run, progress=False, stop_at_step=3)
    straight = (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()
    with (run / "metrics.jsonl").open("a") as f:
        f.write("\n".join(straight[3:5]) + "\n" + straight[5][:17])  # the crash cut the last line
    train(config, data_dir, run, progress=False, resume=True)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert [json.loads(line)["loss"] for line in lines] == [json.loads(line)["loss"] for line in straight]


def test_one_writer_per_output_directory(data, tmp_path):
    """Another live process holding the output's lock: the run refuses, naming its pid."""
    data_dir, tok = data
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from sumi._fs import exclusive_lock
        with exclusive_lock({str(out / '.lock')!r}, 'x'):
            print('locked', flush=True)
            time.sleep(60)
    """)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(LockedError, match=rf"the output directory {re.escape(str(out))} is in use by pid "
                                              rf"{holder.pid} on "):
            train(_config(tok), data_dir, out, progress=False)
    finally:
        holder.kill()
        holder.wait()
    assert train(_config(tok, steps=1), data_dir, out, progress=False).steps == 1  # the lock died with it


def test_leftovers_of_a_crashed_save_are_removed_on_resume(data, tmp_path):
    data_dir, tok = data
    train(_config(tok), data_dir, tmp_path / "run", progress=False, stop_at_step=3)
    leftover = tmp_path / "run" / "checkpoints" / "step-00000006.tmp-0badc0de"
    leftover.mkdir()
    (leftover / "__0_0.distcp").write_bytes(b"\0" * 4096)
    train(_config(tok), data_dir, tmp_path / "run", progress=False, resume=True)
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["step-00000003", "step-00000006"]


def test_ctrl_c_stops_with_one_line_and_the_run_resumes(data, tmp_path):
    """SIGINT to a real ``sumi train`` after its first checkpoint: exit status 130, one line on
    stderr naming the last checkpoint and how to continue; --resume then finishes the run."""
    data_dir, tok = data
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "sumi", "train", "--preset", "tiny", "--data", str(data_dir), "--out", str(out),
            "--set", "seq_len=32", "--set", "global_batch_size=4", "--set", "micro_batch_size=2", "--steps", "100000",
            "--checkpoint-every", "2", "--no-progress", "--threads", "1"]
    # a child of a background job inherits an ignored SIGINT (and Python then installs no
    # KeyboardInterrupt handler): give it the default disposition a terminal would
    proc = subprocess.Popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        # any complete checkpoint (step-00000002 itself is deleted by keep_last a few steps later:
        # a poll that missed it would wait out the deadline while the run trains on)
        deadline = time.monotonic() + 600
        def saved() -> bool:  # a complete checkpoint: renamed into place from its temporary name
            return out.joinpath("checkpoints").is_dir() and any(
                re.fullmatch(r"step-\d{8}", p.name) for p in (out / "checkpoints").iterdir())

        while not saved() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        err = proc.communicate(timeout=300)[1]
    finally:
        proc.kill()  # whatever failed above, never leave it running
        proc.wait()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(r"sumi train: interrupted during step \d+ of 100000; the last checkpoint is \S+step-\d{8}; "
                        r"continue with the same command and --resume", line), line
    done = subprocess.run(argv[:argv.index("--steps") + 1] + ["6"] + argv[argv.index("--steps") + 2:] +
                          ["--resume", "--allow-config-change"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "model" / "tokenizer.json").is_file()


def test_throughput_watch_hints_once_when_tokens_per_s_collapse():
    watch = ThroughputWatch(warmup=2, factor=3.0, patience=3)
    speeds = [10, 50, 100, 98, 102, 40, 30, 20, 25, 20, 20, 20]
    hints = [watch(s) for s in speeds]
    fired = [i for i, h in enumerate(hints) if h is not None]
    assert fired == [8]  # 40 is above 102 / 3; 30, 20, 25 are the three in a row below; once
    assert "fell from 102 to 25 tokens/s" in hints[8] and "--threads 1" in hints[8]
    steady = ThroughputWatch(warmup=2, factor=3.0, patience=3)
    assert not any(steady(s) for s in [10, 50, 100, 90, 60, 100, 40, 100])


def test_cli_threads_seq_len_and_unwritable_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUMI_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "job"
    argv = ["train", "--preset", "tiny", "--out", str(out), "--steps", "2", "--no-progress", "--threads", "1",
            "--set", "seq_len=64", "--set", "global_batch_size=4", "--set", "micro_batch_size=4"]
    try:
        assert main(argv) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(1)  # the test session's setting (tests/conftest.py)
    assert json.loads((out / "config.json").read_text())["seq_len"] == 64
    assert (tmp_path / "cache").rglob("data-64/manifest.json")
    for argv, match in [(["train", "--preset", "tiny", "--out", "/sys/sumi-no-such-dir", "--steps", "1"],
                         "--out /sys/sumi-no-such-dir: cannot write to /sys/sumi-no-such-dir: operation not permitted"),
                        (["train", "--preset", "tiny", "--out", str(out / "metrics.jsonl" / "x"), "--steps", "1"],
                         "not a directory"),
                        (["train", "--preset", "tiny", "--out", str(tmp_path / "t"), "--threads", "0"],
                         "--threads must be >= 1")]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as err:
            main(argv)
        assert err.value.code == 2
        message = capsys.readouterr().err
        assert match in message and len(message.strip().splitlines()) == 1, message


def test_changed_tokens_in_a_shard_stop_the_run_before_training(data, tmp_path):
    """In-vocabulary changes to 10% of a shard's rows: the run refuses to start (and to resume),
    naming the shard; the same run on the intact copy trains."""
    data_dir, tok = data
    bad = tmp_path / "bad"
    shutil.copytree(data_dir, bad)
    shard = np.load(bad / "shard-00000.npy", mmap_mode="r+")
    rows = range(0, shard.shape[0], 10)
    shard[rows, 3] = (shard[rows, 3] + 1) % tok.vocab_size  # valid ids, wrong tokens
    shard.flush()
    del shard
    with pytest.raises(ValueError, match=r"shard-00000.npy: sha256 differs"):
        train(_config(tok), bad, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()
    train(_config(tok), data_dir, tmp_path / "ok", progress=False, stop_at_step=3)
    shutil.rmtree(tmp_path / "ok" / "model", ignore_errors=True)
    with pytest.raises(ValueError, match=r"shard-00000.npy: sha256 differs"):
        train(_config(tok), bad, tmp_path / "ok", progress=False, resume=True)


def test_own_data_exports_its_tokenizer(data, tmp_path):
    """``--data`` prepared with a tokenizer: the exported model directory holds that tokenizer,
    so it generates without --tokenizer."""
    data_dir, tok = data
    train(_config(tok, steps=2), data_dir, tmp_path / "run", progress=False)
    exported = tmp_path / "run" / "model" / "tokenizer.json"
    assert exported.read_bytes() == (data_dir / "tokenizer.json").read_bytes()
    model = sumi.from_pretrained(tmp_path / "run" / "model")
    out = sumi.generate(model, SumiTokenizer.from_file(exported).encode("the "), max_new_tokens=4,
                        canvas_length=16, steps=2, seed=0)
    assert len(out.tokens[0]) <= 4


def test_default_threads_share_the_usable_cpus(monkeypatch):
    from sumi import cli_common

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(cli_common.os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setattr(cli_common, "_cgroup_cpu_quota", lambda: None)
    monkeypatch.setattr(cli_common.os, "getloadavg", lambda: (0.2, 0.1, 0.1))
    assert cli_common.default_threads() == 8
    monkeypatch.setattr(cli_common.os, "getloadavg", lambda: (5.6, 1.0, 1.0))  # six other busy processes
    assert cli_common.default_threads() == 2
    monkeypatch.setattr(cli_common.os, "getloadavg", lambda: (30.0, 1.0, 1.0))
    assert cli_common.default_threads() == 1
    monkeypatch.setattr(cli_common.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    monkeypatch.setattr(cli_common, "_cgroup_cpu_quota", lambda: 2.5)  # a container's CPU limit
    assert cli_common.available_cpus() == 3 and cli_common.default_threads() == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two torchrun workers on this node
    assert cli_common.default_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "4")  # an explicit setting wins
    assert cli_common.default_threads() == 4


def test_cli_flash_without_flash_attn_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SUMI_CACHE", str(tmp_path / "cache"))
    with pytest.raises(SystemExit) as err:
        main(["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress",
              "--set", "model.attention_backend=flash"])
    message = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(message) == 1 and "attention_backend='flash'" in message[0], message
    assert not (tmp_path / "run" / "checkpoints").exists()


# -- host syncs and mixed precision ---------------------------------------------------------------
def test_the_sync_counter_counts_reads_of_values_and_nothing_else():
    """The instrument itself: each read of a value (item, bool, float, int, tolist, numpy, an
    f-string), each value-dependent size (nonzero, boolean-mask indexing, unique) counts once;
    arithmetic, integer indexing and the ignored tensors do not."""
    t = torch.arange(6.0)
    counter = torch.tensor(3.0)
    with count_host_syncs(ignore=lambda x: x is counter) as syncs:
        y = (t * 2 + 1)[torch.tensor([0, 2])]
        assert counter.item() == 3.0
        reads = [t.sum().item(), bool(t[1] > 0), float(t[2]), int(t[3]), t.tolist(), t.numpy(), f"{t[0]:.1f}",
                 t.nonzero(), t[t > 2], torch.unique(t)]
    assert len(reads) == 10 and syncs.count == 10, syncs.sites
    assert all(site.endswith(" in test_the_sync_counter_counts_reads_of_values_and_nothing_else")
               for site in syncs.sites), syncs.sites
    assert y.tolist() == [1.0, 5.0] and torch.Tensor.tolist is torch._C.TensorBase.tolist  # unpatched on exit


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("prompted", [False, True])
def test_a_training_step_queues_its_work_without_reading_the_device(fused, prompted):
    """With ``validate=False`` (the loop's: its loader checked the ids) a whole step, both
    micro-batches, the backward, clipping and AdamW, reads no device value (AdamW's step counters
    are CPU tensors on every device: bookkeeping), also on prompted rows with condition dropout
    (clean prompts, hidden ones: an attention mask).  ``validate=True`` checks each micro-batch's
    ids (and prompt lengths), and nothing else."""
    config = train_tiny(512, seq_len=32)
    model = sumi.Sumi.initialized(config.model, generator=torch.Generator().manual_seed(0))
    optimizer = build_optimizer(model, lr=1e-3)
    objective = Objective(512, fused=fused, cond_dropout=0.5 if prompted else 0.0)
    x = torch.randint(512, (4, 32), generator=torch.Generator().manual_seed(1))
    lengths = torch.tensor([3, 0, 17, 31]) if prompted else None
    batches = [MicroBatch(x[:2], 0, None if lengths is None else lengths[:2]),
               MicroBatch(x[2:], 2, None if lengths is None else lengths[2:])]
    counted = 128 - (51 if prompted else 0)
    counts = []
    for validate in (False, True, False):
        with count_host_syncs(ignore=optimizer_step_counters(optimizer)) as syncs:
            sums, norm = train_step(model, optimizer, objective, batches, torch.Generator(), 3, global_batch=4,
                                    global_tokens=counted, grad_clip=1.0, world_size=1, validate=validate)
        counts.append(syncs)
        assert bool(torch.isfinite(sums).all()) and float(norm) > 0
    assert counts[0].count == counts[2].count == 0, (counts[0].sites, counts[2].sites)
    checks = ("in check_tokens", "in _prompt_masks") if prompted else ("in check_tokens",)
    assert counts[1].count > 0 and all(any(c in site for c in checks) for site in counts[1].sites), counts[1].sites


@pytest.mark.parametrize("mixed_precision", [False, True])
def test_the_loop_reads_the_device_only_at_log_steps(data, tmp_path, monkeypatch, mixed_precision):
    """Two more steps between the same log and checkpoint steps add no host sync: the loop's own
    per-step work (the batches, the divergence flag, reading ahead) waits for nothing, also on a
    one-rank FSDP2 mesh (mixed precision)."""
    import sumi.train.loop as loop

    optimizers = []
    monkeypatch.setattr(loop, "build_optimizer", lambda *a, **k: optimizers.append(build_optimizer(*a, **k))
                        or optimizers[-1])

    def is_step_counter(tensor):
        return any(optimizer_step_counters(o)(tensor) for o in optimizers)

    data_dir, tok = data
    counts = {}
    for steps in (2, 4):  # one log and one checkpoint, at the last step, in both runs
        config = _config(tok, steps=steps, log_every=100, checkpoint_every=100, mixed_precision=mixed_precision)
        with count_host_syncs(ignore=is_step_counter) as syncs:
            result = train(config, data_dir, tmp_path / f"run{steps}", progress=False)
        assert len(result.losses) == 1
        counts[steps] = syncs.sites
    assert counts[4] == counts[2]


def test_mixed_precision_takes_effect_in_one_process(data, tmp_path, monkeypatch):
    """``mixed_precision=True`` without torchrun: the matmuls inside the model take bf16 weights
    and inputs while the parameters, their gradients and AdamW's moments stay float32 (a one-rank
    FSDP2 mesh, gone when the run returns); the losses follow the float32 run to bf16 rounding
    without equalling it, and the run resumes bit for bit."""
    import torch.distributed as dist

    import sumi.train.loop as loop

    seen = {}
    real_step = loop.train_step

    def spy(model, optimizer, *args, **kwargs):
        def matmul(module, inputs, output):
            seen.setdefault("matmul", (module.weight.dtype, inputs[0].dtype, output.dtype))

        def gradients(optim, *_):
            seen.setdefault("gradients", {p.grad.dtype for group in optim.param_groups for p in group["params"]})

        if not seen:
            model.model.layers[0].mlp.down_proj.register_forward_hook(matmul)
            optimizer.register_step_pre_hook(gradients)
        out = real_step(model, optimizer, *args, **kwargs)
        seen["distributed"] = dist.is_initialized() and dist.get_world_size() == 1
        seen["parameters"] = {p.dtype for p in model.parameters()}
        seen["moments"] = {v.dtype for s in optimizer.state.values() for k, v in s.items() if k != "step"}
        return out

    monkeypatch.setattr(loop, "train_step", spy)
    data_dir, tok = data
    config = _config(tok, steps=4, checkpoint_every=2, mixed_precision=True)
    mixed = train(config, data_dir, tmp_path / "mixed", progress=False).losses
    assert seen["matmul"] == (torch.bfloat16,) * 3
    assert seen["distributed"] and not dist.is_initialized()
    assert seen["parameters"] == seen["gradients"] == seen["moments"] == {torch.float32}
    full = train(_config(tok, steps=4, checkpoint_every=2), data_dir, tmp_path / "fp32", progress=False).losses
    assert mixed != full and mixed == pytest.approx(full, rel=2e-2)
    train(config, data_dir, tmp_path / "resumed", progress=False, stop_at_step=2)
    assert not dist.is_initialized()
    train(config, data_dir, tmp_path / "resumed", progress=False, resume=True)
    assert _losses(tmp_path / "resumed") == _losses(tmp_path / "mixed")


@pytest.mark.gpu
@pytest.mark.parametrize("mixed_precision", [False, True])
def test_cuda_training_and_generation_steps_never_wait_for_the_device(data, tmp_path, monkeypatch, mixed_precision):
    """Under ``torch.cuda.set_sync_debug_mode("error")`` every host sync raises.  Training: steps
    2 and 3 of 4 of the real loop run under it, batches included (pinned, non-blocking, read
    ahead); the first step is left out (it creates AdamW's state, cuBLAS handles and FSDP's
    buffers) and the last (it logs and checkpoints: the one sync of a logged step).  Generation:
    model calls 2 and 3 of 4 and the sampler steps after them; the first step checks the model's
    logits once (a documented sync) and after the last ``sumi.generate`` reads the canvas back."""
    import sumi.train.loop as loop

    calls = []
    real_step = loop.train_step

    def checked_step(*args, **kwargs):
        calls.append(len(calls) + 1)
        if calls[-1] == 2:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        elif calls[-1] == 4:
            torch.cuda.set_sync_debug_mode("default")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", checked_step)
    data_dir, tok = data
    config = _config(tok, steps=4, log_every=4, checkpoint_every=4, mixed_precision=mixed_precision)
    try:
        result = train(config, data_dir, tmp_path / "run", progress=False)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert calls == [1, 2, 3, 4] and len(result.losses) == 1 and np.isfinite(result.losses[0])

    model = sumi.Sumi.initialized(config.model, device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    forwards = []

    def check_from_the_second_call(module, args):
        forwards.append(len(forwards) + 1)
        if forwards[-1] == 2:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        elif forwards[-1] == 4:
            torch.cuda.set_sync_debug_mode("default")

    model.model.embed_tokens.register_forward_pre_hook(check_from_the_second_call)  # once per model call
    try:
        out = sumi.generate(model, tok.encode("the "), max_new_tokens=8, canvas_length=32, steps=4, seed=0)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert forwards == [1, 2, 3, 4] and len(out.tokens[0]) <= 8


# -- families (uniform, masked, masked-ce, hybrid, ar) -------------------------------------------
FAMILIES = ("uniform", "masked", "masked-ce", "hybrid", "ar")


@pytest.mark.parametrize("objective", FAMILIES)
def test_every_family_trains_and_its_model_records_the_family(data, tmp_path, monkeypatch, objective):
    """The loop builds the family's objective, divides each step's loss by the global count of
    COUNTED tokens (4 rows x 31 next-token targets for ``ar``, 4 x 32 otherwise: a number from the
    config, passed to every step), logs the same metrics, and exports a model whose config.json
    records the family (no ``objective`` entry for the released uniform family)."""
    import sumi.train.loop as loop

    divisors = []
    real_step = loop.train_step

    def spy(*args, **kwargs):
        divisors.append(kwargs["global_tokens"])
        return real_step(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", spy)
    data_dir, tok = data
    config = _config(tok, steps=2, objective=objective)
    train(config, data_dir, tmp_path / "run", progress=False)
    assert divisors == [4 * (31 if objective == "ar" else 32)] * 2
    for r in _records(tmp_path / "run"):
        assert all(np.isfinite(r[k]) for k in ("loss", "kl", "is_div", "z_loss", "grad_norm")), r
        assert abs(r["loss"] - (r["kl"] + r["is_div"] + r["z_loss"])) < 1e-5
        # no IS term for the CE families, and exactly 0 under pure masked noise (docs/math.md, "Memory-light form")
        assert (r["is_div"] == 0.0) is (objective in ("masked", "masked-ce", "ar"))
    hf = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert hf.get("objective", {"name": "uniform"})["name"] == objective
    assert ("objective" in hf) is (objective != "uniform")
    model = sumi.from_pretrained(tmp_path / "run" / "model")
    assert model.config.replace(attention_backend=config.model.attention_backend) == config.model
    assert model.config.vocab_size == tok.vocab_size + (objective in ("masked", "masked-ce", "hybrid"))


def test_resuming_with_another_objective_is_refused(data, tmp_path):
    """The family is part of the model (its vocabulary, its attention): a checkpoint of one
    objective never resumes under another, not even with --allow-config-change."""
    data_dir, tok = data
    config = _config(tok, steps=4)
    train(config, data_dir, tmp_path / "run", progress=False, stop_at_step=2)
    for other in ("masked", "ar"):
        with pytest.raises(ValueError, match=rf"another model or data layout \(.*model\.objective 'uniform' -> "
                                             rf"'{other}'"):
            train(config.override([f"objective={other}"]), data_dir, tmp_path / "run", progress=False, resume=True,
                  allow_config_change=True)
    masked = _config(tok, steps=4, objective="masked")
    train(masked, data_dir, tmp_path / "masked", progress=False, stop_at_step=2)
    with pytest.raises(ValueError, match=r"model\.objective 'masked' -> 'masked-ce'"):
        train(masked.override(["objective=masked-ce"]), data_dir, tmp_path / "masked", progress=False, resume=True,
              allow_config_change=True)
    assert train(masked, data_dir, tmp_path / "masked", progress=False, resume=True).steps == 4


@pytest.fixture(scope="module")
def embedded_cache(tmp_path_factory):
    """One SUMI_CACHE for the module's command-line runs: the embedded data is prepared once."""
    return tmp_path_factory.mktemp("sumi-cache")


@pytest.mark.parametrize("objective", FAMILIES)
def test_cli_trains_every_family_on_the_embedded_default(tmp_path, monkeypatch, embedded_cache, objective):
    """``sumi train --preset tiny --objective NAME --steps 20`` runs for every family and exports
    a model whose config.json records it, with the report (samples through ``sumi.generate``)."""
    monkeypatch.setenv("SUMI_CACHE", str(embedded_cache))
    out = tmp_path / objective
    assert main(["train", "--preset", "tiny", "--objective", objective, "--steps", "20", "--out", str(out),
                 "--no-progress"]) == 0
    assert len(_records(out)) == 20 and (out / "samples.txt").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["objective"] == objective
    model = sumi.from_pretrained(out / "model")
    assert model.config.objective == objective and model.config.causal is (objective == "ar")


# -- prompted data: conditional training with condition dropout ----------------------------------
class PromptedRows:
    """Prompted rows in memory, as :class:`sumi.data.Loader` reads them (``prompted``,
    ``prompt_lengths(indices)``, rows as uint32): ``[BOS, prompt..., answer..., EOS...]``-like
    rows of random ids whose prompt lengths the test knows."""

    prompted = True

    def __init__(self, rows: int, seq_len: int, vocab_size: int, seed: int) -> None:
        g = np.random.default_rng(seed)
        self.rows = g.integers(0, vocab_size, (rows, seq_len)).astype(np.uint32)
        self.lengths = g.integers(1, seq_len, rows).astype(np.int64)
        self.seq_len, self.vocab_size = seq_len, vocab_size

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.rows[i]

    def prompt_lengths(self, indices: np.ndarray) -> np.ndarray:
        return self.lengths[np.asarray(indices)]

    def verify(self, part=None) -> None:
        """In memory: no shards, no manifest to check them against."""

    def __repr__(self) -> str:
        return f"PromptedRows({len(self)} rows)"


@pytest.mark.parametrize("objective", ["uniform", "ar"])
def test_prompted_data_divides_by_the_count_without_prompts_and_never_syncs(tmp_path, monkeypatch, objective):
    """``sumi.train.train`` on prompted rows: each step's loss divisor is the number of positions
    its global batch counts, written out from the prompt lengths the step's micro-batches carry
    (``seq_len - P`` per row; ``seq_len - max(P, 1)`` for ``ar``), and two more steps between the
    same log and checkpoint steps add no host sync (the divisor is host arithmetic)."""
    import sumi.train.loop as loop

    dataset = PromptedRows(48, 32, 64, seed=0)
    monkeypatch.setattr(loop, "open_data", lambda *a, **k: dataset)
    optimizers, seen = [], []
    monkeypatch.setattr(loop, "build_optimizer", lambda *a, **k: optimizers.append(build_optimizer(*a, **k))
                        or optimizers[-1])
    real_step = loop.train_step

    def spy(*args, **kwargs):
        seen.append((kwargs["global_tokens"], [b.prompt_lengths for b in args[3]]))  # read after the run
        return real_step(*args, **kwargs)

    def is_step_counter(tensor):  # AdamW's step counts: CPU bookkeeping on every device
        return any(optimizer_step_counters(o)(tensor) for o in optimizers)

    monkeypatch.setattr(loop, "train_step", spy)
    first = 1 if objective == "ar" else 0
    dropout = [] if objective == "ar" else ["cond_dropout=0.5"]
    sites = {}
    for steps in (2, 4):
        config = train_tiny(64, seq_len=32, global_batch_size=4, micro_batch_size=2, steps=steps, warmup_steps=1,
                            log_every=100, checkpoint_every=100, objective=objective).override(dropout)
        seen.clear()
        with count_host_syncs(ignore=is_step_counter) as syncs:
            result = train(config, "in-memory", tmp_path / f"run{steps}", progress=False)
        sites[steps] = syncs.sites
        assert len(seen) == steps and np.isfinite(result.losses).all()
        for divisor, micro_batches in seen:
            lengths = torch.cat(micro_batches).tolist()
            assert len(lengths) == 4 and divisor == sum(32 - max(p, first) for p in lengths) < 4 * (32 - first)
    assert sites[4] == sites[2]


def test_condition_dropout_needs_prompted_data(data, tmp_path):
    data_dir, tok = data
    with pytest.raises(ValueError, match=r"cond_dropout=0.1 hides the prompts of prompted rows, but .* has no "
                                         r"prompts .*--prompted"):
        train(_config(tok, cond_dropout=0.1), data_dir, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_field_an_older_checkpoint_lacks_counts_as_its_default():
    """A checkpoint written before ``cond_dropout`` existed has no such key: with the default
    (0) that is no change, so old runs resume; with another value it is one.  The same for a
    model field."""
    config = train_tiny(64)
    old = config.to_dict()
    del old["cond_dropout"]
    del old["model"]["hybrid_shift"]
    assert config_changes(old, config) == ([], [])
    assert config_changes(old, config.override(["cond_dropout=0.1"])) == ([], ["cond_dropout 0.0 -> 0.1"])
    fixed, _ = config_changes(old, config.override(["objective=hybrid", "model.hybrid_shift=-1"]))
    assert "model.hybrid_shift 0.0 -> -1.0" in fixed
    # a key the older config has and this one lacks is still a change
    assert config_changes({**config.to_dict(), "retired": 1}, config) == ([], ["retired 1 -> None"])
