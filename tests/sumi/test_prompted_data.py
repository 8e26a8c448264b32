"""Prompted data (issue 17): ``{"prompt", "response"}`` JSONL records, one row each, laid out as
``BOS prompt | response | EOS fill | EOS | BOS`` with the prompt length P beside the row.

Oracle: the expected rows and P are built here from ``SumiTokenizer.encode`` calls on the
records (never from the code under test); a mixture's or a loader's P is found by looking its
row up among those expected rows."""

from __future__ import annotations

import hashlib
import importlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sumi.cli import main
from sumi.data import IntegrityError, Loader, Manifest, Mixture, PackedDataset, prepare
from sumi.data.loader import StepFeed
from sumi.data.spec import describe
from sumi.tokenizer import SumiTokenizer

SEQ = 24
# a.jsonl: 5 records (line 3 blank); b.jsonl: 4 records, its line 3 too long for SEQ
A = [{"prompt": "What is the cat doing?", "response": "It sat on the mat."},
     {"prompt": "Say nothing.", "response": ""},  # an empty response: BOS prompt EOS EOS ...
     None,
     {"prompt": "", "response": "no prompt at all"},  # an empty prompt: P = 1 (BOS only)
     {"prompt": "one", "response": "two", "extra": 3},  # other fields are ignored
     {"prompt": "a dog", "response": "barks"}]
B = [{"prompt": "the end", "response": "of the story"},
     {"prompt": "x", "response": "y"},
     {"prompt": "long " * 10, "response": "longer " * 10},
     {"prompt": "café ☕", "response": "naïve"}]


@pytest.fixture(scope="module")
def tok() -> SumiTokenizer:
    return SumiTokenizer.default()


def _write_jsonl(path: Path, records: list) -> Path:
    """One line per record: a dict as JSON, a string as is, ``None`` as a blank line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["" if r is None else r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _expected(tok, records: list, seq_len: int) -> tuple[list[list[int]], list[int], list[tuple[int, int, int]]]:
    """The oracle: rows and P of the records that fit, and (index, P, R) of those that do not."""
    rows, lengths, skipped = [], [], []
    for i, r in enumerate(records):
        if r is None or isinstance(r, str):
            continue
        prompt = tok.encode(r["prompt"])  # BOS included
        response = tok.encode(r["response"], add_bos=False)
        assert prompt[0] == tok.bos_id and tok.bos_id not in response
        if len(prompt) + len(response) + 2 > seq_len:  # the response, then the pinned EOS and BOS
            skipped.append((i, len(prompt), len(response)))
            continue
        rows.append(prompt + response + [tok.eos_id] * (seq_len - len(prompt) - len(response) - 1) + [tok.bos_id])
        lengths.append(len(prompt))
    return rows, lengths, skipped


def _sources(root: Path) -> list[Path]:
    return [_write_jsonl(root / "a.jsonl", A), _write_jsonl(root / "b.jsonl", B)]


def _prepared(tmp_path: Path, tok, name: str = "out", shard_sequences: int = 3) -> tuple[Path, np.ndarray, np.ndarray]:
    """A prompted directory of A and B, and its expected rows and P."""
    files = _sources(tmp_path / "src")
    prepare(files, tok, tmp_path / name, SEQ, shard_sequences=shard_sequences, prompted=True)
    rows_a, p_a, _ = _expected(tok, A, SEQ)
    rows_b, p_b, _ = _expected(tok, B, SEQ)
    return tmp_path / name, np.array(rows_a + rows_b), np.array(p_a + p_b)


def _p_of(rows: torch.Tensor | np.ndarray, expected_rows: np.ndarray, expected_p: np.ndarray) -> np.ndarray:
    """The oracle P of each row, found by its tokens among the expected (distinct) rows."""
    found = []
    for row in np.asarray(rows):
        (at,) = np.flatnonzero((expected_rows == row).all(axis=1))  # exactly one match
        found.append(int(expected_p[at]))
    return np.array(found, dtype=np.int64)


# -- writing ----------------------------------------------------------------------------------
def test_round_trip_rows_and_prompt_lengths(tmp_path, tok):
    out, rows, lengths = _prepared(tmp_path, tok, shard_sequences=3)
    assert len(np.unique(rows, axis=0)) == len(rows) == 8  # 9 records, 1 skipped; rows distinct (used below)
    ds = PackedDataset(out, verify=True)
    assert ds.prompted and len(ds) == len(rows)
    np.testing.assert_array_equal(np.stack([ds[i] for i in range(len(ds))]), rows)
    got = ds.prompt_lengths(np.arange(len(ds)))
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, lengths)
    np.testing.assert_array_equal(ds.prompt_lengths(np.array([[-1, 0]])), [[lengths[-1], lengths[0]]])
    # the layout, spelled out on two rows: an empty response, an empty prompt
    p_empty_response = len(tok.encode("Say nothing."))
    assert list(rows[1][p_empty_response:]) == [tok.eos_id] * (SEQ - p_empty_response - 1) + [tok.bos_id]
    assert lengths[1] == p_empty_response
    assert lengths[2] == 1 and rows[2][0] == tok.bos_id
    assert tok.decode(rows[2][1:]) == "no prompt at all"
    # the files: shards of 3 rows and, beside each, its rows' P as uint32
    m = Manifest.load(out)
    assert m.shards == ["shard-00000.npy", "shard-00001.npy", "shard-00002.npy"] and m.shard_rows == [3, 3, 2]
    assert m.prompt_shards == ["prompt-00000.npy", "prompt-00001.npy", "prompt-00002.npy"]
    on_disk = [np.load(out / name) for name in m.prompt_shards]
    assert all(a.dtype == np.uint32 and a.ndim == 1 for a in on_disk)
    np.testing.assert_array_equal(np.concatenate(on_disk), lengths)
    assert sorted(p.name for p in out.iterdir()) == sorted(["manifest.json", "tokenizer.json", *m.shards,
                                                            *m.prompt_shards])


@pytest.mark.parametrize("chars,row_tokens", [(1, 1 << 22), (1 << 18, 2 * SEQ), (1 << 18, 1)])
def test_rows_do_not_depend_on_how_records_are_batched_for_the_tokenizer(tmp_path, tok, monkeypatch, chars,
                                                                         row_tokens):
    """Records reach the tokenizer in chunks (by characters, and by rows for short records): one
    record per chunk, two, or all give the same rows, P and skip report."""
    chunking = importlib.import_module("sumi.data.chunking")
    monkeypatch.setattr(chunking, "ENCODE_CHARS", chars)
    monkeypatch.setattr(chunking, "CHUNK_ROW_TOKENS", row_tokens)
    out, rows, lengths = _prepared(tmp_path, tok, shard_sequences=3)
    ds = PackedDataset(out)
    np.testing.assert_array_equal(np.stack([ds[i] for i in range(len(ds))]), rows)
    np.testing.assert_array_equal(ds.prompt_lengths(np.arange(len(ds))), lengths)
    assert ds.manifest.skipped_records == 1 and ds.manifest.skipped_examples[0]["where"].endswith("b.jsonl:3")


def test_manifest_of_prompted_data(tmp_path, tok):
    out, rows, _ = _prepared(tmp_path, tok)
    raw = json.loads((out / "manifest.json").read_text())
    # an older reader (which accepts only "sumi-packed-v1") refuses the directory
    assert raw["format"] == "sumi-prompted-v1" and Manifest.load(out).prompted
    assert raw["prompt_sha256"] == [hashlib.sha256((out / n).read_bytes()).hexdigest() for n in raw["prompt_shards"]]
    assert raw["shard_sha256"] == [hashlib.sha256((out / n).read_bytes()).hexdigest() for n in raw["shards"]]
    ((index, p, r),) = _expected(tok, B, SEQ)[2]
    assert raw["skipped_records"] == 1
    assert raw["skipped_examples"] == [{"where": f"{tmp_path / 'src' / 'b.jsonl'}:{index + 1}",
                                        "prompt_tokens": p, "response_tokens": r}]
    assert (raw["documents"], raw["total_rows"], raw["files"], raw["dropped_tokens"]) == (len(rows), len(rows), 2, 0)
    # a plain directory's manifest keeps the plain format and none of the prompted fields
    (tmp_path / "doc.txt").write_text("plain text " * 20)
    plain = prepare(tmp_path / "doc.txt", tok, tmp_path / "plain", 8)
    raw_plain = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    assert raw_plain["format"] == "sumi-packed-v1" and not plain.prompted and not PackedDataset(tmp_path / "plain").prompted
    assert not {"prompt_shards", "prompt_sha256", "skipped_records", "skipped_examples"} & raw_plain.keys()
    np.testing.assert_array_equal(PackedDataset(tmp_path / "plain").prompt_lengths(np.arange(3)), [0, 0, 0])


def test_bad_manifests_are_refused(tmp_path, tok):
    out, _, _ = _prepared(tmp_path, tok)
    raw = json.loads((out / "manifest.json").read_text())
    cases = [({"prompt_shards": None}, "needs"),
             ({"prompt_shards": raw["prompt_shards"][:2]}, "one file per shard"),
             ({"prompt_shards": ["../x.npy", *raw["prompt_shards"][1:]]}, "plain file names"),
             ({"prompt_shards": [raw["shards"][0], *raw["prompt_shards"][1:]]}, "distinct"),
             ({"prompt_sha256": ["0" * 64]}, "prompt_sha256 must list"),
             ({"skipped_records": -1}, "skipped_records must be"),
             ({"skipped_examples": [{"where": "x"}]}, "skipped_examples"),
             ({"skipped_records": 0}, "skipped_examples must list at most skipped_records=0"),
             ({"format": "sumi-packed-v1"}, "belong to format 'sumi-prompted-v1'"),
             ({"format": "sumi-prompted-v2"}, "format must be")]
    for change, match in cases:
        (out / "manifest.json").write_text(json.dumps({**raw, **change}))
        with pytest.raises(ValueError, match=match):
            Manifest.load(out)


def test_prompt_shards_are_checked_at_open(tmp_path, tok):
    out, _, _ = _prepared(tmp_path, tok)
    file = out / "prompt-00001.npy"
    good = np.load(file)
    for bad, match in [(np.array([1, 1, 0], np.uint32), r"row 2 has prompt length 0, outside \[1, seq_len - 1 = 23\]"),
                       (np.array([SEQ, 1, 1], np.uint32), f"row 0 has prompt length {SEQ}"),
                       (good.astype(np.int64), "expected uint32 \\[3\\]"),
                       (good[:2], "expected uint32 \\[3\\]")]:
        np.save(file, bad)
        with pytest.raises(ValueError, match=match):
            PackedDataset(out)
    file.unlink()
    with pytest.raises(FileNotFoundError, match="prompt shard prompt-00001.npy listed in the manifest is missing"):
        PackedDataset(out)
    np.save(file, good)
    ds = PackedDataset(out)
    with pytest.raises(IndexError, match="row 8 out of range"):
        ds.prompt_lengths([0, 8])
    with pytest.raises(TypeError, match="integers"):
        ds.prompt_lengths([0.5])


def test_verify_catches_an_edited_prompt_shard(tmp_path, tok):
    out, _, lengths = _prepared(tmp_path, tok)
    PackedDataset(out).verify()
    edited = np.load(out / "prompt-00002.npy")
    edited[0] += 1  # still a valid P: only the checksum can tell
    np.save(out / "prompt-00002.npy", edited)
    ds = PackedDataset(out)  # opens: the value is in range
    assert ds.prompt_lengths([6])[0] == lengths[6] + 1
    with pytest.raises(IntegrityError, match=r"prompt-00002.npy: sha256 differs .* 1 of 6 shard"):
        ds.verify(threads=1)
    with pytest.raises(IntegrityError, match="prompt-00002.npy"):
        PackedDataset(out, verify=True)
    # part (i, n) splits the shards and prompt shards among ranks: together they check all six
    caught = 0
    for i in range(4):
        try:
            ds.verify(part=(i, 4))
        except IntegrityError:
            caught += 1
    assert caught == 1


def test_overwrite_of_a_prompted_directory(tmp_path, tok):
    out, _, _ = _prepared(tmp_path, tok, shard_sequences=3)
    files = sorted((tmp_path / "src").iterdir())
    with pytest.raises(FileExistsError, match="not empty"):
        prepare(files, tok, out, SEQ, prompted=True)
    # the prompt shards are the prepare's own files: replaced, not counted as someone else's
    m = prepare(files, tok, out, 40, shard_sequences=100, prompted=True, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "prompt-00000.npy", "shard-00000.npy",
                                                     "tokenizer.json"]
    assert m.skipped_records == 0 and PackedDataset(out, verify=True).seq_len == 40  # the long record fits now
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"it holds notes.txt\."):
        prepare(files, tok, out, SEQ, prompted=True, overwrite=True)
    (out / "notes.txt").unlink()
    (tmp_path / "doc.txt").write_text("plain text " * 20)
    prepare(tmp_path / "doc.txt", tok, out, 8, overwrite=True)  # prompted -> plain: no prompt file is left
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-00000.npy", "tokenizer.json"]


# -- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize("line,match", [
    ("not json", "not a JSON object"),
    ('["prompt", "response"]', "not a JSON object \\(a list\\)"),
    ('{"response": "r"}', "no 'prompt' field \\(set prompt_field / --prompt-field\\)"),
    ('{"prompt": "p"}', "no 'response' field \\(set response_field / --response-field\\)"),
    ('{"prompt": 3, "response": "r"}', "field 'prompt' is int, not a string"),
    ('{"prompt": "p", "response": null}', "field 'response' is null, not a string"),
])
def test_a_bad_record_names_file_and_line(tmp_path, tok, capsys, line, match):
    good = {"prompt": "p", "response": "r"}
    src = _write_jsonl(tmp_path / "bad.jsonl", [good, None, line, good])
    with pytest.raises(ValueError, match=f"bad.jsonl:3: {match}"):
        prepare(src, tok, tmp_path / "out", SEQ, prompted=True)
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--prompted", "--source", str(src), "--out", str(tmp_path / "out"), "--seq-len", "24"])
    err = capsys.readouterr().err
    (error,) = [e for e in err.split("\n") if "error:" in e]  # one line, after the progress bar's
    assert exc.value.code == 2 and error.startswith("sumi data: error: ") and "bad.jsonl:3: " in error


def test_other_fields_and_their_errors(tmp_path, tok):
    src = _write_jsonl(tmp_path / "qa.jsonl", [{"q": "why?", "a": "because"}])
    m = prepare(src, tok, tmp_path / "out", SEQ, prompted=True, prompt_field="q", response_field="a")
    p, r = tok.encode("why?"), tok.encode("because", add_bos=False)
    ds = PackedDataset(tmp_path / "out")
    assert m.total_rows == 1 and list(ds[0]) == p + r + [tok.eos_id] * (SEQ - len(p) - len(r) - 1) + [tok.bos_id]
    assert list(ds.prompt_lengths([0])) == [len(p)]
    with pytest.raises(ValueError, match="prompt_field and response_field must differ"):
        prepare(src, tok, tmp_path / "o2", SEQ, prompted=True, prompt_field="q", response_field="q")
    with pytest.raises(ValueError, match="prompt_field must be a non-empty string"):
        prepare(src, tok, tmp_path / "o2", SEQ, prompted=True, prompt_field="")


def test_no_record_that_fits_and_no_record_at_all(tmp_path, tok):
    src = _write_jsonl(tmp_path / "long.jsonl", [{"prompt": "word " * 30, "response": "x"}] * 2)
    ((_, p, r), _) = _expected(tok, [{"prompt": "word " * 30, "response": "x"}] * 2, SEQ)[2]
    with pytest.raises(ValueError, match=rf"none of the 2 records fits a row of seq_len={SEQ} .*long.jsonl:1, "
                                         rf"needs {p + r + 2} tokens"):
        prepare(src, tok, tmp_path / "out", SEQ, prompted=True)
    empty = _write_jsonl(tmp_path / "empty.jsonl", [None, None])
    with pytest.raises(ValueError, match="hold no records"):
        prepare(empty, tok, tmp_path / "out", SEQ, prompted=True)
    assert not (tmp_path / "out").exists()


# -- command line -----------------------------------------------------------------------------
def test_cli_reports_skipped_records(tmp_path, tok, capsys):
    long = {"prompt": "word " * 30, "response": "x"}
    src = _write_jsonl(tmp_path / "s.jsonl", [long] * 3 + [{"prompt": "hi", "response": "there"}] + [long] * 4)
    _, _, skipped = _expected(tok, [long] * 3 + [{"prompt": "hi", "response": "there"}] + [long] * 4, SEQ)
    assert main(["data", "prepare", "--prompted", "--source", str(src), "--out", str(tmp_path / "out"),
                 "--seq-len", str(SEQ)]) == 0
    err = capsys.readouterr().err
    assert "1 prompted rows x 24 tokens" in err and "7 skipped" in err
    shown = [line for line in err.split("\n") if line.startswith("sumi: skipped ")]
    _, p, r = skipped[0]
    assert shown == [f"sumi: skipped {src}:{line}: prompt {p} tokens (BOS included) + response {r} + EOS BOS = "
                     f"{p + r + 2} > --seq-len {SEQ}" for line in (1, 2, 3, 5, 6)]
    assert "... and 2 more (skipped_records in" in err
    assert Manifest.load(tmp_path / "out").skipped_records == 7


@pytest.mark.parametrize("extra,match", [
    (["--stdlib"], "--stdlib is plain text"),
    (["--text-field", "t"], "--text-field names the text of plain data"),
    (["--source", "{txt}"], r"doc.txt: prompted data is read from .jsonl/.jsonl.gz/.jsonl.zst/.parquet files or saved datasets"),
])
def test_cli_refuses_what_prompted_data_cannot_use(tmp_path, capsys, extra, match):
    src = _write_jsonl(tmp_path / "ok.jsonl", [{"prompt": "p", "response": "r"}])
    (tmp_path / "doc.txt").write_text("text")
    extra = [a.replace("{txt}", str(tmp_path / "doc.txt")) for a in extra]
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--prompted", "--source", str(src), *extra, "--out", str(tmp_path / "out")])
    (error,) = [e for e in capsys.readouterr().err.split("\n") if "error:" in e]
    assert exc.value.code == 2 and error.startswith("sumi data: error: ")
    assert re.search(match, error), error
    assert not (tmp_path / "out").exists()


def test_cli_field_options_need_prompted(tmp_path, capsys):
    src = _write_jsonl(tmp_path / "ok.jsonl", [{"text": "t"}])
    for flag in ("--prompt-field", "--response-field"):
        with pytest.raises(SystemExit) as exc:
            main(["data", "prepare", "--source", str(src), flag, "q", "--out", str(tmp_path / "out")])
        (error,) = [e for e in capsys.readouterr().err.split("\n") if "error:" in e]
        assert exc.value.code == 2 and f"{flag} applies to prompted data only: add --prompted" in error


# -- mixtures and the loader ------------------------------------------------------------------
def test_mixture_of_prompted_and_plain_data(tmp_path, tok):
    out, rows, lengths = _prepared(tmp_path, tok)
    (tmp_path / "doc.txt").write_text("plain text without any prompt " * 30)
    prepare(tmp_path / "doc.txt", tok, tmp_path / "plain", SEQ)
    chat, plain = PackedDataset(out), PackedDataset(tmp_path / "plain")
    mix = Mixture({"chat": (chat, 1.0), "plain": (plain, 1.0)}, seed=4, rows=20)  # both upsampled
    assert mix.prompted and not Mixture({"plain": (plain, 1.0)}, seed=4).prompted
    got = mix.prompt_lengths(np.arange(len(mix)))
    assert got.dtype == np.int64 and got.shape == (20,)
    for j in range(len(mix)):
        if mix.source_of(j) == "chat":
            assert got[j] == _p_of(mix[j][None], rows, lengths)[0]
        else:
            assert got[j] == 0 and not (rows == np.asarray(mix[j])).all(axis=1).any()
    assert {mix.source_of(j) for j in range(20)} == {"chat", "plain"}
    np.testing.assert_array_equal(mix.prompt_lengths(np.array([[3, -1]])), [[got[3], got[19]]])
    with pytest.raises(IndexError, match="row 20 out of range for 20 rows"):
        mix.prompt_lengths([20])
    # a checkpoint tells prompted data apart; plain data is described as before
    assert describe(mix)["prompted"] is True and describe(chat)["prompted"] is True
    assert describe(plain) == {"rows": len(plain), "sources": None}


def test_loader_and_step_feed_carry_the_prompt_lengths_of_their_rows(tmp_path, tok):
    out, rows, lengths = _prepared(tmp_path, tok)
    ds = PackedDataset(out)
    world, batch, global_batch = 2, 1, 4  # 2 ranks x 2 micro-batches of 1 row; 8 rows: 2 steps an epoch
    loaders = [Loader(ds, batch, seed=7, rank=r, world_size=world, global_batch=global_batch) for r in range(world)]
    assert all(loader.prompted and loader.micro_batches == 2 for loader in loaders)
    for step in range(5):  # across epochs
        epoch, at = loaders[0].epoch, loaders[0].step
        expected_global = loaders[0].global_prompt_lengths(epoch, at)
        assert np.array_equal(expected_global, loaders[1].global_prompt_lengths(epoch, at))
        assembled = np.full(global_batch, -1, dtype=np.int64)
        for r, loader in enumerate(loaders):
            for m in range(loader.micro_batches):
                ids, p = loader.next_rows()
                assert p.dtype == torch.int64 and p.shape == (batch,)
                np.testing.assert_array_equal(p.numpy(), _p_of(ids, rows, lengths))  # the P of exactly these rows
                assembled[loader.offset(m):loader.offset(m) + batch] = p.numpy()
        np.testing.assert_array_equal(assembled, expected_global)
        assert expected_global.dtype == np.int64, step

    loader = Loader(ds, 2, seed=7, global_batch=4)
    feed = StepFeed(loader, "cpu")
    reference = Loader(ds, 2, seed=7, global_batch=4)
    for step in range(3):
        want = reference.global_prompt_lengths(reference.epoch, reference.step)
        batches = feed.next_step()
        feed.prefetch()  # reading ahead does not change what the step reports
        np.testing.assert_array_equal(feed.prompt_lengths, want)
        flat = np.concatenate([b.prompt_lengths.numpy() for b in batches])
        np.testing.assert_array_equal(flat, want)
        np.testing.assert_array_equal(flat, _p_of(torch.cat([b.ids for b in batches]), rows, lengths))
        assert [b.offset for b in batches] == [0, 2]
        for _ in range(reference.micro_batches):
            reference.next_rows()
