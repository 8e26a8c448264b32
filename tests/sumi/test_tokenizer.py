"""The Sumi tokenizer: exact byte-level round trips, BOS/EOS/pad conventions, the embedded default
(deterministic, laid out like ``tiny()``, the chat tokens right before BOS/EOS/pad), save/load, a
Sumi-like sparse vocab (special ids: every token the file marks special), and clear errors."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from sumi.configs import tiny
from sumi.tokenizer import (BOS_TOKEN, CHAT_TOKENS, DEFAULT_VOCAB_SIZE, EOS_TOKEN, PAD_TOKEN, SUMI_VOCAB_SIZE,
                            SumiTokenizer, tiny_corpus)

REPO = Path(__file__).resolve().parents[2]
SUMI_IDS = {BOS_TOKEN: 100_256, EOS_TOKEN: 100_257, PAD_TOKEN: 100_277}


def _sha(tok: SumiTokenizer) -> str:
    return hashlib.sha256(tok.backend.to_str().encode()).hexdigest()


def _small() -> SumiTokenizer:
    return SumiTokenizer.train_byte_level(["the cat sat on the mat. the dog sat on the log."] * 4, vocab_size=300)


def _sumi_like_json(tmp_path: Path, specials: dict[str, int] | None = SUMI_IDS) -> Path:
    """A tokenizer.json shaped like the release: specials at their Sumi ids, far above the merges.

    Ids are sparse (the small BPE ends near 300), which also exercises sizing by the largest id.
    ``specials=None`` drops the three special tokens, so the ids must be given by hand.
    """
    spec = json.loads(_small().backend.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if specials and t["content"] in specials]
    for entry in spec["added_tokens"]:
        entry["id"] = specials[entry["content"]]
        spec["model"]["vocab"][entry["content"]] = entry["id"]  # a model-vocab id survives loading
    (tmp_path / "model").mkdir()
    path = tmp_path / "model" / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


# -- the embedded default ---------------------------------------------------------------------
def test_default_is_cached_and_laid_out_like_tiny():
    tok = SumiTokenizer.default()
    assert SumiTokenizer.default() is tok
    assert tok.vocab_size == DEFAULT_VOCAB_SIZE == tok.backend.get_vocab_size()
    assert len({tok.bos_id, tok.eos_id, tok.pad_id}) == 3
    assert all(0 <= i < tok.vocab_size for i in (tok.bos_id, tok.eos_id, tok.pad_id))
    c = tiny(tok.vocab_size)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (c.bos_token_id, c.eos_token_id, c.pad_token_id)
    tokens = [tok.backend.id_to_token(i) for i in (tok.bos_id, tok.eos_id, tok.pad_id)]
    assert tokens == [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]


def test_default_has_the_chat_tokens_right_before_bos_eos_pad():
    """The six specials are the last six ids, chat tokens first; the merges fill the rest:
    256 bytes + 250 merges + 6 specials = 512 (three merges fewer than with three specials)."""
    tok = SumiTokenizer.default()
    V = tok.vocab_size
    assert [tok.backend.id_to_token(i) for i in range(V - 6, V)] == [*CHAT_TOKENS, BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]
    assert tok.special_ids == frozenset(range(V - 6, V))
    assert len(json.loads(tok.backend.to_str())["model"]["merges"]) == V - 256 - 6
    # decode drops them (special), or shows them as written
    body = tok.encode("hi", add_bos=False)
    ids = [tok.bos_id, V - 6, *body, V - 5, V - 4, tok.eos_id]
    assert tok.decode(ids) == "hi"
    start, end, prompt_end = CHAT_TOKENS
    assert tok.decode(ids, skip_special_tokens=False) == f"{BOS_TOKEN}{start}hi{end}{prompt_end}{EOS_TOKEN}"


def test_default_is_deterministic_within_and_across_processes():
    lines = tiny_corpus().splitlines(keepends=True)
    a = SumiTokenizer.train_byte_level(lines, DEFAULT_VOCAB_SIZE)
    b = SumiTokenizer.train_byte_level(reversed(lines), DEFAULT_VOCAB_SIZE)  # order must not matter
    assert _sha(a) == _sha(b) == _sha(SumiTokenizer.default())
    text = tiny_corpus()[:2000]
    assert a.encode(text) == b.encode(text)
    # Rust seeds its hash maps per process: only a fresh process can show a seed-dependent tie-break.
    code = "import hashlib; from sumi.tokenizer import SumiTokenizer as S; " \
           "print(hashlib.sha256(S.default().backend.to_str().encode()).hexdigest())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _sha(a)


def test_default_compresses_its_own_corpus():
    # A trained BPE, not bytes: under half a token per character on the English it was trained on.
    text = tiny_corpus()
    assert len(SumiTokenizer.default().encode(text, add_bos=False)) < 0.5 * len(text)


# -- encode / decode --------------------------------------------------------------------------
@given(st.text())
@example("")
@example(f"a{EOS_TOKEN}b{BOS_TOKEN}{PAD_TOKEN}\r\n\x00 \u00e9\U0001f600")
@example("".join(CHAT_TOKENS) + "user\nhi")
def test_byte_level_round_trip_is_exact(text):
    tok = SumiTokenizer.default()
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id and ids[1:] == tok.encode(text, add_bos=False)
    # Text is always text: special strings typed in the text never become special ids.
    assert not tok.special_ids & set(ids[1:])
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == tok.decode(ids[1:]) == text


def test_bos_only_when_asked_and_never_eos():
    tok = SumiTokenizer.default()
    assert tok.encode("") == [tok.bos_id] and tok.encode("", add_bos=False) == []
    assert tok.encode("hello")[-1] != tok.eos_id
    texts = ["The weather", "", "bread and salt", "\u00fcber"]
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]
    assert tok.encode_batch(texts, add_bos=False) == [tok.encode(t, add_bos=False) for t in texts]


def test_decode_skips_specials_only_when_asked_and_takes_tensors():
    tok = SumiTokenizer.default()
    body = tok.encode("a document", add_bos=False)
    packed = [tok.bos_id, *body, tok.eos_id, tok.pad_id, tok.pad_id]
    assert tok.decode(packed) == "a document"
    assert tok.decode(torch.tensor(packed)) == "a document"  # a model's output row, as is
    assert tok.decode(packed, skip_special_tokens=False) == f"{BOS_TOKEN}a document{EOS_TOKEN}{PAD_TOKEN}{PAD_TOKEN}"


@pytest.mark.parametrize("bad", [-1, DEFAULT_VOCAB_SIZE])
def test_decode_rejects_ids_outside_the_vocab(bad):
    with pytest.raises(ValueError, match="vocab_size"):
        SumiTokenizer.default().decode([5, bad])


def test_encode_rejects_non_text():
    tok = SumiTokenizer.default()
    with pytest.raises(TypeError, match="text"):
        tok.encode(b"bytes")
    with pytest.raises(TypeError, match="texts"):
        tok.encode_batch("one string")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        tok.encode_batch(["ok", 3])


# -- training ----------------------------------------------------------------------------------
def test_train_puts_specials_last_and_reports_what_was_built():
    tok = _small()  # too little text for 300 ids: the trainer stops early
    assert tok.vocab_size < 300
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == tuple(range(tok.vocab_size - 3, tok.vocab_size))
    assert tok.decode(tok.encode("the cat \u732b")) == "the cat \u732b"  # unseen bytes still encode


def test_train_rejects_a_vocab_below_bytes_plus_specials():
    with pytest.raises(ValueError, match="vocab_size must be an int >= 262 \\(256 bytes \\+ 6 specials\\), got 261"):
        SumiTokenizer.train_byte_level(["abc"], vocab_size=261)
    tok = SumiTokenizer.train_byte_level(["abc"], vocab_size=262)  # bytes and specials only
    assert tok.vocab_size == 262 and tok.special_ids == frozenset(range(256, 262))


# -- files ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["tok.json", "model_dir", "nested/dir"])
def test_save_then_from_file(tmp_path, target):
    tok = SumiTokenizer.default()
    written = tok.save(tmp_path / target)
    assert written.name == ("tok.json" if target.endswith(".json") else "tokenizer.json") and written.is_file()
    for source in (written, written.parent) if written.name == "tokenizer.json" else (written,):
        loaded = SumiTokenizer.from_file(source)
        assert (loaded.vocab_size, loaded.bos_id, loaded.eos_id, loaded.pad_id) == \
               (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id)
        text = "Fog is a cloud that touches the ground. <|pad|> \u2603"
        assert loaded.encode(text) == tok.encode(text) and loaded.decode(loaded.encode(text)) == text


def test_sumi_like_file_finds_specials_by_string(tmp_path):
    path = _sumi_like_json(tmp_path)
    tok = SumiTokenizer.from_file(path.parent)  # the model directory
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (100_256, 100_257, 100_277)
    assert tok.vocab_size == SUMI_VOCAB_SIZE  # one past the largest id, not the number of tokens
    assert SumiTokenizer.from_file(path, vocab_size=SUMI_VOCAB_SIZE).vocab_size == SUMI_VOCAB_SIZE
    ids = tok.encode("the cat")
    assert ids[0] == 100_256 and max(ids[1:]) < 300
    assert tok.decode([*ids, 100_257, 100_277]) == "the cat"
    assert tok.decode([*ids, 50_000]) == "the cat"  # a model row no token maps to decodes to nothing


def test_special_ids_are_every_token_the_file_marks_special(tmp_path):
    """A released-like file with the chat tokens as specials at their own ids (and one added token
    that is not special): special_ids holds BOS, EOS, pad and the marked ones, decode skips them."""
    path = _sumi_like_json(tmp_path)
    spec = json.loads(path.read_text())
    extra = {"<|im_start|>": 100_264, "<|im_end|>": 100_265, "<|endofprompt|>": 100_276, "word": 100_300}
    for content, i in extra.items():
        spec["added_tokens"].append({"id": i, "content": content, "single_word": False, "lstrip": False,
                                     "rstrip": False, "normalized": False, "special": content != "word"})
        spec["model"]["vocab"][content] = i  # a model-vocab id survives loading
    path.write_text(json.dumps(spec))
    tok = SumiTokenizer.from_file(path)
    assert tok.special_ids == {100_256, 100_257, 100_277, 100_264, 100_265, 100_276}
    ids = tok.encode("the cat")
    assert tok.decode([*ids, 100_265, 100_276]) == "the cat"
    assert tok.decode([*ids, 100_300]) == "the catword"  # added, not special: kept


def test_sumi_like_file_with_ids_given_by_hand(tmp_path):
    path = _sumi_like_json(tmp_path, specials=None)
    with pytest.raises(ValueError, match="bos_id"):
        SumiTokenizer.from_file(path)
    tok = SumiTokenizer.from_file(path, vocab_size=SUMI_VOCAB_SIZE, bos_id=100_256, eos_id=100_257, pad_id=100_277)
    assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id) == (SUMI_VOCAB_SIZE, 100_256, 100_257, 100_277)
    ids = tok.encode("the dog")
    assert ids[0] == 100_256 and tok.decode([*ids, 100_257]) == "the dog"  # stripped though unknown to the file


@pytest.mark.parametrize("kwargs, name", [
    (dict(bos_id=DEFAULT_VOCAB_SIZE), "bos_id"),
    (dict(eos_id=-1), "eos_id"),
    (dict(pad_id=True), "pad_id"),
    (dict(vocab_size=SUMI_VOCAB_SIZE, pad_id=SUMI_VOCAB_SIZE), "pad_id"),
    (dict(vocab_size=DEFAULT_VOCAB_SIZE - 1), "vocab_size"),  # the model could not embed every id
])
def test_bad_ids_and_sizes_name_the_argument(tmp_path, kwargs, name):
    path = SumiTokenizer.default().save(tmp_path)
    with pytest.raises(ValueError, match=name):
        SumiTokenizer.from_file(path, **kwargs)


@pytest.mark.parametrize("where", ["sumi-7b", "sumi-7b/tokenizer.json"])
def test_missing_file_says_where_to_put_it(tmp_path, where):
    with pytest.raises(FileNotFoundError) as info:
        SumiTokenizer.from_file(tmp_path / where)
    message = str(info.value)
    assert str(tmp_path / where) in message
    assert "tokenizer.json" in message and "tohoku-nlp/sumi-7b" in message and "--tokenizer" in message


def test_malformed_file_is_a_value_error(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="tokenizer.json"):
        SumiTokenizer.from_file(tmp_path)


def test_save_is_atomic(tmp_path, monkeypatch):
    """A save that fails before its rename (the disk full at fsync) keeps the previous file whole
    and leaves no temporary file: the embedded cache can never hold a truncated tokenizer."""
    import errno

    from sumi import _fs

    tok = SumiTokenizer.default()
    file = tok.save(tmp_path)
    before = file.read_bytes()
    assert SumiTokenizer.from_file(file).encode("def f():") == tok.encode("def f():")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_fs.os, "fsync", full)
    with pytest.raises(_fs.StorageError, match="no space left on device"):
        SumiTokenizer.train_byte_level(["other text " * 50], 300).save(file)
    assert file.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["tokenizer.json"]
