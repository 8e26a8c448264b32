"""``sumi sft``: tuning a model on a chat JSONL file with the training loop of ``sumi train``
(exact resume after Ctrl-C, the prepared rows reused), one-line errors for bad input, the SFT
configuration, and the embedded default end to end at tiny settings."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch

import sumi
import sumi.train.loop as loop
from sumi.cli import main
from sumi.configs import sumi_7b, tiny
from sumi.configs.train import SFT_EPOCHS, SFT_PHASE, SFT_PRESETS, sft_preset_for, train_sft
from sumi.data import Manifest, prepare
from sumi.hf import save_pretrained
from sumi.model import Sumi
from sumi.sft.tasks import TASKS, read_jsonl, task_set, write_jsonl
from sumi.sft.template import DEFAULT_TEMPLATE, messages_of
from sumi.tokenizer import SumiTokenizer, tiny_corpus

SEQ = 48
RUN = ["--seq-len", str(SEQ), "--set", "global_batch_size=4", "--set", "micro_batch_size=2", "--no-progress",
       "--threads", "1"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny uniform model with seeded random weights, exported with the embedded tokenizer."""
    tok = SumiTokenizer.default()
    root = tmp_path_factory.mktemp("init") / "model"
    model = Sumi.initialized(tiny(tok.vocab_size), generator=torch.Generator().manual_seed(0))
    save_pretrained(model, root)
    tok.save(root)
    return root


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    train, _ = task_set(14, 1, seed=0)  # 42 chat records {prompt, response, task}
    return write_jsonl(tmp_path_factory.mktemp("chat") / "train.jsonl", train)


def _records(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_sft_trains_on_a_jsonl_file_and_an_interrupted_run_resumes_bit_for_bit(model_dir, chat_file, tmp_path,
                                                                               monkeypatch, capsys):
    argv = ["sft", "--init-from", str(model_dir), "--data", str(chat_file), "--steps", "6", "--checkpoint-every", "3"]
    assert main(argv + ["--out", str(tmp_path / "a")] + RUN) == 0
    a = tmp_path / "a"
    # the rows: the chat records rendered by the template, at --seq-len, with the model's tokenizer
    manifest = Manifest.load(a / "data" / "prepared")
    tok = SumiTokenizer.from_file(model_dir)
    assert manifest.prompted and manifest.seq_len == SEQ and manifest.total_rows == 42
    rows = sumi.data.PackedDataset(a / "data" / "prepared")
    first = read_jsonl(chat_file)[0]
    prompt, response = DEFAULT_TEMPLATE.render(tok, messages_of(first.record()))
    expected = prompt + response + [tok.eos_id] * (SEQ - len(prompt) - len(response) - 1) + [tok.bos_id]
    assert rows[0].tolist() == expected and rows.prompt_lengths([0]).tolist() == [len(prompt)]
    config = json.loads((a / "config.json").read_text())
    assert (config["phase"], config["init_from"], config["steps"], config["seq_len"]) == (SFT_PHASE, str(model_dir),
                                                                                          6, SEQ)
    assert config["peak_lr"] == SFT_PRESETS["tiny"]["peak_lr"] and config["objective"] == "uniform"
    assert len(_records(a)) == 6 and (a / "model" / "tokenizer.json").read_bytes() == (model_dir /
                                                                                       "tokenizer.json").read_bytes()
    assert "sumi sft: 6 steps, final loss" in capsys.readouterr().out

    # Ctrl-C during step 5 (after the step-3 checkpoint): status 130 and one line saying how to go on
    b = tmp_path / "b"
    real, calls = loop.train_step, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "train_step", interrupted)
    assert main(argv + ["--out", str(b)] + RUN) == 130
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"sumi sft: interrupted during step 5 of 6; the last checkpoint is \S+step-00000003; "
                        r"continue with the same command and --resume", line), line
    monkeypatch.setattr(loop, "train_step", real)
    prepared = (b / "data" / "prepared" / "manifest.json").stat().st_mtime_ns
    assert main(argv + ["--out", str(b), "--resume"] + RUN) == 0
    assert "prepared" not in capsys.readouterr().err  # the rows were reused, not prepared again
    assert (b / "data" / "prepared" / "manifest.json").stat().st_mtime_ns == prepared
    assert _records(b) == [{**r, "tokens_per_s": s["tokens_per_s"]} for r, s in zip(_records(a), _records(b))]
    tuned_a, tuned_b = sumi.from_pretrained(a / "model"), sumi.from_pretrained(b / "model")
    for (name, p), q in zip(tuned_a.named_parameters(), tuned_b.parameters()):
        assert torch.equal(p, q), name
    initial = sumi.from_pretrained(model_dir)  # and the run did start from the model and change it
    assert not torch.equal(initial.lm_head.weight, tuned_a.lm_head.weight)


def test_a_prepared_directory_is_used_as_is_and_other_data_is_refused_on_resume(model_dir, chat_file, tmp_path,
                                                                                capsys):
    tok = SumiTokenizer.from_file(model_dir)
    rows = tmp_path / "rows"
    prepare([chat_file], tok, rows, SEQ, sft=True)
    out = tmp_path / "run"
    argv = ["sft", "--init-from", str(model_dir), "--data", str(rows), "--out", str(out), "--steps", "2",
            "--set", "global_batch_size=4", "--set", "micro_batch_size=2", "--no-progress", "--threads", "1"]
    assert main(argv) == 0
    assert json.loads((out / "config.json").read_text())["seq_len"] == SEQ and not (out / "data").exists()
    # a file changed under a run: --resume refuses to prepare it again (its checkpoints read the old rows)
    changed = tmp_path / "changed.jsonl"
    changed.write_text(chat_file.read_text(encoding="utf-8").replace('"2', '"3', 1), encoding="utf-8")
    run2 = tmp_path / "run2"
    base = ["sft", "--init-from", str(model_dir), "--out", str(run2), "--steps", "2", "--checkpoint-every", "1"] + RUN
    assert main(base + ["--data", str(chat_file)]) == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(base + ["--data", str(changed), "--resume", "--steps", "3", "--allow-config-change"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "was not prepared from this --data" in err[0], err
    with pytest.raises(SystemExit):  # and a new run into it would replace them: refused too
        main(base + ["--data", str(changed)])
    assert "already holds checkpoints" in capsys.readouterr().err


def _error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sumi sft: error: ") and "Traceback" not in err, err
    return err


def test_bad_input_exits_2_with_one_line(model_dir, chat_file, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o"), "--no-progress"]
    tune = ["sft", "--init-from", str(model_dir), "--data", str(chat_file)] + out
    plain = tmp_path / "plain"
    (tmp_path / "doc.txt").write_text(tiny_corpus()[:4000])
    prepare([tmp_path / "doc.txt"], SumiTokenizer.default(), plain, 32)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "response": "there"}\n{"messages": [{"role": "bot", "content": "x"}]}\n')
    cases = [
        (["sft"] + out, "give --init-from DIR and --data FILE_OR_DIR"),
        (["sft", "--preset", "sumi_7b"] + out, "or --preset tiny alone for the embedded default"),
        (["sft", "--init-from", str(model_dir)] + out, "--data is missing"),
        (["sft", "--init-from", str(tmp_path / "none"), "--data", str(chat_file)] + out,
         r"--init-from \S+none: no such model directory"),
        (["sft", "--init-from", str(model_dir), "--data", str(tmp_path / "none.jsonl")] + out,
         r"--data \S+none\.jsonl: no such file or directory"),
        (tune + ["--objective", "masked"], "is a 'uniform' model, and tuning keeps its family"),
        (tune + ["--seq-len", "9999"], r"--seq-len 9999: expected 3 \.\. 512"),
        (tune + ["--pretrain-steps", "3"], "--pretrain-steps applies to the embedded default"),
        (tune + ["--chat-template", str(tmp_path / "none.json")], "cannot read the chat template"),
        (["sft", "--init-from", str(model_dir), "--data", str(plain)] + out, "holds plain packed text"),
        (["sft", "--init-from", str(model_dir), "--data", str(plain), "--seq-len", "32"] + out,
         "--seq-len applies when --data is a .jsonl file"),
        (["sft", "--init-from", str(model_dir), "--data", str(bad)] + out, r"bad\.jsonl:2"),
        (tune + ["--set", "peak_lr=-1"], "floor_lr <= peak_lr"),
        (["sft", "--preset", "tiny", "--seq-len", "64"] + out, "--seq-len does not apply to the embedded default"),
        (["sft", "--preset", "tiny", "--heldout-examples", "0"] + out, "--heldout-examples must be >= 1"),
    ]
    for argv, message in cases:
        assert re.search(message, _error(argv, capsys)), (argv, message)


def test_the_sft_configuration_follows_the_model_and_its_preset():
    model = tiny(512)
    config = train_sft("tiny", model, 48, 100, "init")
    values = SFT_PRESETS["tiny"]
    assert (config.global_batch_size, config.micro_batch_size, config.peak_lr, config.floor_lr,
            config.warmup_steps) == tuple(values[k] for k in ("global_batch_size", "micro_batch_size", "peak_lr",
                                                                "floor_lr", "warmup_steps"))
    assert config.steps == math.ceil(SFT_EPOCHS * 100 / values["global_batch_size"]) == 19
    assert (config.phase, config.init_from, config.seq_len, config.model) == ("sft", "init", 48, model)
    masked = tiny(512).for_objective("masked")
    assert train_sft("tiny", masked, 48, 100, "init", steps=5).objective == "masked"
    assert sft_preset_for(tiny(100)) == "tiny" and sft_preset_for(sumi_7b(vocab_size=1000, bos_token_id=1,
                                                                          eos_token_id=2, pad_token_id=3)) == "sumi_7b"
    assert sft_preset_for(tiny(512, num_hidden_layers=3)) is None
    with pytest.raises(ValueError, match="preset must be one of tiny, sumi_150m, sumi_1b, sumi_7b, got 'big'"):
        train_sft("big", model, 48, 100, "init")
    with pytest.raises(ValueError, match="phase must be one of"):
        config.override(["phase=finetune"])


@pytest.mark.parametrize("objective", ["uniform", "ar"])
def test_the_embedded_default_end_to_end_at_tiny_settings(tmp_path, monkeypatch, sumi_cache, objective, capsys):
    """``sumi sft --preset tiny`` with a few steps: the task files (disjoint), ``eval.json`` with
    every documented key, the table on stderr; a second run reuses the cached pretrained model."""
    monkeypatch.setenv("SUMI_CACHE", str(sumi_cache))
    argv = ["sft", "--preset", "tiny", "--objective", objective, "--pretrain-steps", "3", "--steps", "3",
            "--task-examples", "8", "--heldout-examples", "4", "--no-progress", "--threads", "1"]
    out = tmp_path / "out"
    assert main(argv + ["--out", str(out)]) == 0
    train, heldout = read_jsonl(out / "data" / "train.jsonl"), read_jsonl(out / "data" / "heldout.jsonl")
    assert (len(train), len(heldout)) == (24, 12) and not {e.prompt for e in train} & {e.prompt for e in heldout}
    report = json.loads((out / "eval.json").read_text())
    assert set(report) == {"objective", "pretrained", "sft", "decoding", "tasks", "wall_seconds"}
    assert report["objective"] == objective and report["sft"] == {"steps": 3, "seq_len": 48, "train_examples": 24}
    assert report["pretrained"]["steps"] == 3 and report["decoding"]["canvas_length"] == 48
    assert report["decoding"]["sampler"] == ("greedy" if objective == "ar" else "adaptive")
    assert list(report["tasks"]) == list(TASKS)
    for task, result in report["tasks"].items():
        assert set(result) == {"before", "after", "n", "examples"} and result["n"] == 4
        assert 0 <= result["before"] <= 1 and 0 <= result["after"] <= 1
        shown = [e for e in heldout if e.task == task][:3]
        assert [(x["prompt"], x["expected"]) for x in result["examples"]] == [(e.prompt, e.response) for e in shown]
        assert all(isinstance(x["before"], str) and isinstance(x["after"], str) for x in result["examples"])
    err = capsys.readouterr().err
    assert re.search(r"task\s+n\s+before\s+after\nadd\s+4\s", err), err
    assert sumi.from_pretrained(out / "model").config.objective == objective
    assert main(argv + ["--out", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "eval.json").read_text())
    assert again["pretrained"]["reused"] and again["pretrained"]["model"] == report["pretrained"]["model"]
    assert again["tasks"] == report["tasks"]  # decoding draws nothing, the same weights: the same answers
