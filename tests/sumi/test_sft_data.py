"""SFT data (issue 18): chat records rendered by the template into prompted rows, and the rows
equal the generation canvas token for token.

Oracle: ``sumi.generation.build_canvas`` for the template's rendered prompt with the largest
answer budget ``max_new_tokens = L - P - 2`` (its frozen prompt and pinned EOS BOS), with the
answer (response ids, then EOS fill) written into its budget; never the writer's own code.  The
template itself is proven against hand-spelled ids in test_sft_template.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from discdiff.kernels import Uniform
from sumi.cli import main
from sumi.configs import tiny
from sumi.data import Manifest, PackedDataset, prepare
from sumi.generation import build_canvas, generate
from sumi.model import Sumi
from sumi.sft import DEFAULT_TEMPLATE, ChatTemplate, chat_generate
from sumi.sft import chat as chat_module
from sumi.tokenizer import SumiTokenizer
from tests.sumi.test_sft_template import without_chat_tokens

SEQ = 64
SYSTEM = {"role": "system", "content": "Answer in one word."}
# chat.jsonl: prompt/response records and messages records, a blank line, one record too long
RECORDS = [{"prompt": "What is 2 + 3?", "response": "5", "task": "add"},
           {"messages": [SYSTEM, {"role": "user", "content": "Sky colour?"}, {"role": "assistant", "content": "Blue"}]},
           None,
           {"prompt": "Say nothing.", "response": ""},
           {"prompt": "x " * 40, "response": "x"},  # 80 tokens
           {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                         {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}]


@pytest.fixture(scope="module")
def tok() -> SumiTokenizer:
    return SumiTokenizer.default()


def _write_jsonl(path: Path, records: list) -> Path:
    """One line per record: a dict as JSON, a string as is, ``None`` as a blank line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("" if r is None else r if isinstance(r, str) else json.dumps(r) for r in records) + "\n",
                    encoding="utf-8")
    return path


def _conversation(record: dict) -> list[dict]:
    if "messages" in record:
        return record["messages"]
    return [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]


def _canvas_row(tok, template: ChatTemplate, record: dict, seq_len: int) -> tuple[np.ndarray, int, np.ndarray] | None:
    """The oracle: the generation canvas of the record's prompt (``L = seq_len``, budget
    ``L - P - 2``) with the answer written into the budget; its P and frozen mask.  ``None``
    when the record does not fit."""
    prompt, response = template.render(tok, _conversation(record))
    P, R = len(prompt), len(response)
    if P + R + 2 > seq_len:
        return None
    canvas = build_canvas([prompt], seq_len - P - 2, seq_len, kernel=Uniform(tok.vocab_size), eos_id=tok.eos_id,
                          bos_id=tok.bos_id, pad_id=tok.pad_id, generator=torch.Generator().manual_seed(0))
    row, frozen = canvas.tokens[0].clone(), canvas.frozen[0]
    budget = (~frozen).nonzero().flatten()
    assert budget.tolist() == list(range(P, seq_len - 2))  # no tail: the pinned EOS BOS end the canvas
    row[budget] = torch.tensor(response + [tok.eos_id] * (len(budget) - R))  # the answer, then EOS fill
    return row.numpy(), P, frozen.numpy()


def _rows(directory: Path) -> tuple[np.ndarray, np.ndarray]:
    ds = PackedDataset(directory, verify=True)
    return np.stack([ds[i] for i in range(len(ds))]), ds.prompt_lengths(np.arange(len(ds)))


# -- the rows ---------------------------------------------------------------------------------
def test_sft_rows_are_the_generation_canvas(tmp_path, tok):
    src = _write_jsonl(tmp_path / "chat.jsonl", RECORDS)
    m = prepare(src, tok, tmp_path / "out", SEQ, sft=True, shard_sequences=2)
    expected = [_canvas_row(tok, DEFAULT_TEMPLATE, r, SEQ) for r in RECORDS if r is not None]
    kept = [e for e in expected if e is not None]
    assert len(kept) == 4 and m.prompted and m.total_rows == 4 and m.shard_rows == [2, 2]
    rows, lengths = _rows(tmp_path / "out")
    np.testing.assert_array_equal(rows, np.stack([row for row, _, _ in kept]))
    np.testing.assert_array_equal(lengths, [P for _, P, _ in kept])
    # every row opens with BOS and the first marker, and the empty answer is <|im_end|> then fill
    assert (rows[:, 0] == tok.bos_id).all() and (rows[:, -2:] == [tok.eos_id, tok.bos_id]).all()
    p_empty = lengths[2]
    assert rows[2, p_empty] == tok.backend.token_to_id("<|im_end|>") and (rows[2, p_empty + 1:-1] == tok.eos_id).all()


def test_the_training_row_is_chat_generates_canvas(tmp_path, tok, monkeypatch):
    """The same conversation through prepare(sft=True) and chat_generate(canvas_length=L): the
    canvas equals the row at every frozen position (prompt, pinned EOS BOS), and the positions
    it samples are exactly the row's answer and EOS fill."""
    record = RECORDS[1]
    src = _write_jsonl(tmp_path / "one.jsonl", [record])
    prepare(src, tok, tmp_path / "out", SEQ, sft=True)
    (row,), (P,) = _rows(tmp_path / "out")
    outputs = []

    def recording(*args, **kwargs):
        outputs.append(generate(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(chat_module, "generate", recording)
    model = Sumi.initialized(tiny(tok.vocab_size, max_position_embeddings=96),
                             generator=torch.Generator().manual_seed(0))
    (answer,) = chat_generate(model, tok, [record["messages"][:-1]], canvas_length=SEQ, steps=2, seed=0)
    assert isinstance(answer, str)
    layout = outputs[0].layout
    frozen = layout.frozen[0].numpy()
    assert layout.tokens.shape == (1, SEQ) and layout.prompt_lengths == [P]
    np.testing.assert_array_equal(layout.tokens[0].numpy()[frozen], row[frozen])
    assert (~frozen).nonzero()[0].tolist() == list(range(P, SEQ - 2))


def test_a_template_file_renders_the_rows(tmp_path, tok):
    template_file = tmp_path / "template.json"
    template_file.write_text(json.dumps({"message_format": "[{role}] {content}", "separator": " ",
                                         "answer_header": "[assistant]", "bos": False}))
    template = ChatTemplate.from_file(template_file)
    src = _write_jsonl(tmp_path / "chat.jsonl", RECORDS[:2])
    prepare(src, tok, tmp_path / "api", SEQ, sft=True, template=template)
    rows, lengths = _rows(tmp_path / "api")
    kept = [_canvas_row(tok, template, r, SEQ) for r in RECORDS[:2]]
    np.testing.assert_array_equal(rows, np.stack([row for row, _, _ in kept]))
    np.testing.assert_array_equal(lengths, [P for _, P, _ in kept])
    assert rows[0, 0] != tok.bos_id  # bos: false
    assert main(["data", "prepare", "--sft", "--chat-template", str(template_file), "--source", str(src), "--out",
                 str(tmp_path / "cli"), "--seq-len", str(SEQ)]) == 0
    np.testing.assert_array_equal(_rows(tmp_path / "cli")[0], rows)


# -- what does not fit ------------------------------------------------------------------------
def test_records_too_long_are_skipped_and_reported(tmp_path, tok, capsys):
    src = _write_jsonl(tmp_path / "chat.jsonl", RECORDS)
    prompt, response = DEFAULT_TEMPLATE.render(tok, _conversation(RECORDS[4]))
    assert main(["data", "prepare", "--sft", "--source", str(src), "--out", str(tmp_path / "out"),
                 "--seq-len", str(SEQ)]) == 0
    err = capsys.readouterr().err
    assert f"4 prompted rows x {SEQ} tokens" in err and "1 skipped" in err
    assert (f"sumi: skipped {src}:5: prompt {len(prompt)} tokens (BOS included) + response {len(response)} + EOS BOS "
            f"= {len(prompt) + len(response) + 2} > --seq-len {SEQ}") in err
    m = Manifest.load(tmp_path / "out")
    assert m.skipped_records == 1 and m.skipped_examples == [
        {"where": f"{src}:5", "prompt_tokens": len(prompt), "response_tokens": len(response)}]
    with pytest.raises(ValueError, match=rf"none of the 1 records fits a row of seq_len=16 .*long.jsonl:1, needs "
                                         rf"{len(prompt) + len(response) + 2} tokens"):
        prepare(_write_jsonl(tmp_path / "long.jsonl", [RECORDS[4]]), tok, tmp_path / "o2", 16, sft=True)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("line, match", [
    ("not json", "not a JSON object"),
    ('{"prompt": "p"}', "the record has no 'response' field"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', r"messages\[0\].role is 'bot'"),
    ('{"messages": [{"role": "user", "content": "x"}]}', r"messages\[0\].role is 'user': the last message of a "
                                                         "training conversation is the assistant's answer"),
    ('{"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}',
     r"messages holds no user message \(roles \['system'\]\)"),
])
def test_a_bad_record_names_file_line_and_field(tmp_path, tok, capsys, line, match):
    good = {"prompt": "p", "response": "r"}
    src = _write_jsonl(tmp_path / "bad.jsonl", [good, None, line, good])
    with pytest.raises(ValueError, match=f"bad.jsonl:3: {match}"):
        prepare(src, tok, tmp_path / "out", SEQ, sft=True)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--sft", "--source", str(src), "--out", str(tmp_path / "out")])
    (error,) = [e for e in capsys.readouterr().err.split("\n") if "error:" in e]
    assert exc.value.code == 2 and error.startswith("sumi data: error: ") and re.search(f"bad.jsonl:3: {match}", error)
    assert not (tmp_path / "out").exists()


def test_a_tokenizer_without_the_chat_tokens(tmp_path, tok, capsys):
    src = _write_jsonl(tmp_path / "chat.jsonl", RECORDS[:1])
    path = without_chat_tokens(tmp_path / "bare")
    with pytest.raises(ValueError, match="'<|im_end|>', '<|endofprompt|>' tokens"):
        prepare(src, SumiTokenizer.from_file(path), tmp_path / "out", SEQ, sft=True)
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--sft", "--tokenizer", str(path), "--source", str(src), "--out",
              str(tmp_path / "out")])
    (error,) = [e for e in capsys.readouterr().err.split("\n") if "error:" in e]
    assert exc.value.code == 2 and "'<|im_end|>', '<|endofprompt|>' tokens" in error and "--chat-template FILE" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kwargs, match", [
    (dict(sft=True, prompted=True), "sft=True reads chat records into prompted rows already"),
    (dict(sft=True, prompt_field="q"), "chat records have fixed fields"),
    (dict(sft=True, template={"bos": False}), "template must be a sumi.sft.ChatTemplate, got dict"),
    (dict(template=DEFAULT_TEMPLATE), "template renders chat records: it applies with sft=True only"),
])
def test_prepare_refuses_what_sft_cannot_use(tmp_path, tok, kwargs, match):
    src = _write_jsonl(tmp_path / "chat.jsonl", RECORDS[:1])
    with pytest.raises(ValueError, match=match):
        prepare(src, tok, tmp_path / "out", SEQ, **kwargs)
    (tmp_path / "doc.txt").write_text("text")
    with pytest.raises(ValueError, match=r"doc.txt: chat data is read from .jsonl/.jsonl.gz/.jsonl.zst/.parquet files or saved datasets"):
        prepare(tmp_path / "doc.txt", tok, tmp_path / "out", SEQ, sft=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra, match", [
    (["--sft", "--prompted"], "--prompted does not apply with --sft"),
    (["--sft", "--stdlib"], "--stdlib does not apply with --sft"),
    (["--sft", "--text-field", "t"], "--text-field does not apply with --sft"),
    (["--sft", "--prompt-field", "q"], "--prompt-field does not apply with --sft"),
    (["--chat-template", "t.json"], "--chat-template renders chat records: add --sft"),
    (["--sft", "--chat-template", "{missing}"], "cannot read the chat template"),
])
def test_cli_refuses_what_sft_cannot_use(tmp_path, capsys, extra, match):
    src = _write_jsonl(tmp_path / "chat.jsonl", RECORDS[:1])
    extra = [a.replace("{missing}", str(tmp_path / "none.json")) for a in extra]
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--source", str(src), *extra, "--out", str(tmp_path / "out")])
    (error,) = [e for e in capsys.readouterr().err.split("\n") if "error:" in e]
    assert exc.value.code == 2 and error.startswith("sumi data: error: ") and match in error
    assert not (tmp_path / "out").exists()


def test_the_embedded_tokenizer_cached_before_the_chat_tokens_is_not_reused(monkeypatch, tmp_path):
    """The embedded default caches its tokenizer: one cached under the key used before the chat
    tokens (no chat tokens, other merges) must not be read back."""
    import sys

    from sumi.data.sources import HELDOUT_ONE_IN
    from sumi.train import embedded

    monkeypatch.setenv("SUMI_CACHE", str(tmp_path))
    version = f"py{sys.version_info.major}{sys.version_info.minor}"
    stale = tmp_path / f"stdlib-{version}-{embedded.CORPUS_BYTES}-heldout1in{HELDOUT_ONE_IN}" / "tokenizer.json"
    assert embedded.tokenizer_path() != stale and embedded.tokenizer_path().parent.parent == tmp_path
