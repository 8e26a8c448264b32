"""The training loop and `sumi train`: exact resume, the embedded main job, clear errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

import sumi
from sumi.cli import main
from sumi.configs import train_tiny
from sumi.data import prepare
from sumi.tokenizer import SumiTokenizer, tiny_corpus
from sumi.train.loop import train


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


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


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
