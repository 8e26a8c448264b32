"""sumi.data: packing oracle (BOS text EOS across row boundaries), sources, manifest, atomic and
non-overwriting writes, id validation, and the loader's determinism, rank slicing, resume and
epoch rollover; mixtures by weight."""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import stat
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from sumi.cli import _Parser
from sumi.cli_common import UsageError
from sumi.data import IntegrityError, Loader, Manifest, Mixture, PackedDataset, iter_documents, prepare, stdlib_files
from sumi.data import cli as data_cli
from sumi.data.spec import describe, open_data, parse_data_args
from sumi.tokenizer import SumiTokenizer
from tests.sumi.data_helpers import hand_dataset, rows_dataset

# the package exports the function prepare(), which hides the submodule of the same name
prepare_mod = importlib.import_module("sumi.data.packing")

DOCS = ["the cat sat on the mat.", "a dog", "", "x" * 40, "end of the story\n"]


@pytest.fixture(scope="module")
def tok() -> SumiTokenizer:
    return SumiTokenizer.default()


def _write_docs(root: Path, docs=DOCS) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, d in enumerate(docs):
        (p := root / f"doc{i:02d}.txt").write_text(d, encoding="utf-8")
        paths.append(p)
    return paths


# -- packing ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seq_len,shard", [(7, 2), (5, 100), (16, 1)])
def test_packing_oracle(tmp_path, tok, seq_len, shard):
    files = _write_docs(tmp_path / "src")
    stream = []
    for d in DOCS:
        if d:  # empty documents are skipped
            stream += [tok.bos_id, *tok.encode(d, add_bos=False), tok.eos_id]
    n_rows = len(stream) // seq_len
    expected = np.array(stream[:n_rows * seq_len]).reshape(n_rows, seq_len)

    m = prepare(files, tok, tmp_path / "out", seq_len, shard_sequences=shard)
    ds = PackedDataset(tmp_path / "out")
    got = np.stack([ds[i] for i in range(len(ds))])
    np.testing.assert_array_equal(got, expected)
    assert (m.total_rows, m.dropped_tokens, m.documents) == (n_rows, len(stream) - n_rows * seq_len, 4)
    assert m.shard_rows == [min(shard, n_rows - i) for i in range(0, n_rows, shard)]
    assert all(np.load(tmp_path / "out" / s).dtype == np.uint32 for s in m.shards)
    assert tok.decode(got.ravel(), skip_special_tokens=True).startswith("the cat sat on the mat.a dog")


def test_manifest_contents(tmp_path, tok):
    files = _write_docs(tmp_path / "src")
    m = prepare(files, tok, tmp_path / "out", 8, shard_sequences=3)
    raw = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert raw["format"] == "sumi-packed-v1" and raw["dtype"] == "uint32"
    assert (raw["seq_len"], raw["vocab_size"], raw["bos_id"], raw["eos_id"]) == (8, tok.vocab_size, tok.bos_id, tok.eos_id)
    assert raw["total_tokens"] == raw["total_rows"] * 8 and sum(raw["shard_rows"]) == raw["total_rows"]
    assert raw["files"] == len(files) and raw["sources"] == [str(f) for f in files]
    assert raw["tokenizer_sha256"] == prepare_mod.tokenizer_fingerprint(tok) and len(raw["tokenizer_sha256"]) == 64
    assert Manifest.load(tmp_path / "out") == m
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["manifest.json", *m.shards, "tokenizer.json"]
    # a sha256 per shard, of the file's bytes (recomputed here with hashlib)
    assert raw["shard_sha256"] == [hashlib.sha256((tmp_path / "out" / s).read_bytes()).hexdigest() for s in m.shards]
    assert raw["tokenizer_file"] == "tokenizer.json" == m.tokenizer_file


def test_prepare_saves_the_tokenizer_it_used(tmp_path, tok):
    """A model trained on the prepared data can ship the tokenizer that wrote its ids."""
    files = _write_docs(tmp_path / "src")
    prepare(files, tok, tmp_path / "out", 8)
    ds = PackedDataset(tmp_path / "out")
    assert ds.tokenizer_path == tmp_path / "out" / "tokenizer.json"
    again = SumiTokenizer.from_file(ds.tokenizer_path, vocab_size=ds.vocab_size)
    assert prepare_mod.tokenizer_fingerprint(again) == ds.manifest.tokenizer_sha256
    assert all(again.encode(d) == tok.encode(d) for d in DOCS)
    assert PackedDataset(hand_dataset(tmp_path / "old", [np.zeros((2, 4))])).tokenizer_path is None  # older layout
    (tmp_path / "out" / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json listed in the manifest is missing"):
        PackedDataset(tmp_path / "out")


def test_refuses_to_overwrite(tmp_path, tok):
    files = _write_docs(tmp_path / "src")
    out = tmp_path / "out"
    prepare(files, tok, out, 8)
    before = (out / "manifest.json").read_text()
    with pytest.raises(FileExistsError, match="not empty.*overwrite"):
        prepare(files, tok, out, 4)
    assert (out / "manifest.json").read_text() == before
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        prepare(files, tok, tmp_path / "file", 4)
    m = prepare(files, tok, out, 4, overwrite=True)
    assert PackedDataset(out).seq_len == 4 == m.seq_len
    (tmp_path / "empty").mkdir()
    prepare(files, tok, tmp_path / "empty", 4)  # an empty directory is fine
    # no temporary directories left; the lock files of the two outputs stay (deleting a lock file races)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".empty.lock", ".out.lock", "empty", "file", "out", "src"]


def test_overwrite_replaces_only_a_previous_prepares_output(tmp_path, tok):
    """--overwrite must never delete what prepare did not write: a directory of other files, a
    prepared directory with extra files, a broken manifest are refused, naming what is there."""
    files = _write_docs(tmp_path / "src")
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("my notes")
    (other / "results").mkdir()
    with pytest.raises(FileExistsError, match=r"no valid manifest.json.*it holds notes.txt, results"):
        prepare(files, tok, other, 8, overwrite=True)
    assert (other / "notes.txt").read_text() == "my notes" and (other / "results").is_dir()

    out = tmp_path / "out"
    prepare(files, tok, out, 8)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"files a prepare did not write; it holds notes.txt\."):
        prepare(files, tok, out, 4, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine" and PackedDataset(out).seq_len == 8
    (out / "notes.txt").unlink()
    (out / "manifest.json").write_text("{}")
    with pytest.raises(FileExistsError, match="no valid manifest.json"):
        prepare(files, tok, out, 4, overwrite=True)

    old = hand_dataset(tmp_path / "old", [np.zeros((2, 4))])  # prepared before checksums and tokenizer.json
    prepare(files, tok, old, 4, overwrite=True)
    assert PackedDataset(old).manifest.shard_sha256 is not None
    (tmp_path / "link").symlink_to(old)
    with pytest.raises(FileExistsError, match="symbolic link"):
        prepare(files, tok, tmp_path / "link", 4, overwrite=True)


def test_interrupted_prepares_leave_nothing_behind_and_a_second_writer_is_refused(tmp_path, tok):
    from sumi._fs import LockedError, exclusive_lock

    files = _write_docs(tmp_path / "src")
    for leftover in (".out.tmp-abc123", ".out.old-def456"):  # what a killed prepare leaves
        (tmp_path / leftover).mkdir()
        (tmp_path / leftover / "shard-00000.npy").write_bytes(b"x" * 100)
    (tmp_path / ".outer.tmp-1").mkdir()  # another output's: not ours to delete
    with exclusive_lock(tmp_path / ".out.lock", "test"):  # a live prepare of the same directory
        with pytest.raises(LockedError, match=r"in use by pid \d+"):
            prepare(files, tok, tmp_path / "out", 8)
    assert (tmp_path / ".out.tmp-abc123").exists()  # never touched while another writer may own it
    prepare(files, tok, tmp_path / "out", 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", ".outer.tmp-1", "out", "src"]


def test_prepared_directory_respects_the_umask(tmp_path, tok):
    files = _write_docs(tmp_path / "src")
    old = os.umask(0o022)
    try:
        prepare(files, tok, tmp_path / "out", 8)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o755  # as mkdir gives, not mkdtemp's 0700
    assert stat.S_IMODE((tmp_path / "out" / "manifest.json").stat().st_mode) == 0o644


def test_failure_mid_write_leaves_nothing(tmp_path, tok, monkeypatch):
    files = _write_docs(tmp_path / "src", ["word " * 50] * 6)
    out = tmp_path / "out"
    prepare(files, tok, out, 8, shard_sequences=2)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    real_save, calls = np.save, []

    def failing_save(path, arr):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        real_save(path, arr)

    monkeypatch.setattr(prepare_mod.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        prepare(files, tok, tmp_path / "new", 8, shard_sequences=2)
    assert not (tmp_path / "new").exists()
    calls.clear()
    with pytest.raises(OSError, match="disk full"):
        prepare(files, tok, out, 8, shard_sequences=2, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old  # the old dataset survives intact
    assert sorted(p.name for p in tmp_path.iterdir()) == [".new.lock", ".out.lock", "out", "src"]


# -- sources ----------------------------------------------------------------------------------
def test_sources_text_jsonl_glob_dir(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("alpha")
    (tmp_path / "d" / "sub" / "b.md").write_text("beta")
    (tmp_path / "d" / "sub" / "ignored.bin").write_text("nope")
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n\n{"text": "two", "id": 2}\n{"text": ""}\n')
    (tmp_path / "e.jsonl").write_text('{"body": "three"}\n')
    assert list(iter_documents(tmp_path / "d")) == ["alpha", "beta"]
    assert list(iter_documents(str(tmp_path / "c.jsonl"))) == ["one", "two"]
    assert list(iter_documents([tmp_path / "e.jsonl"], text_field="body")) == ["three"]
    assert list(iter_documents(str(tmp_path / "d" / "**" / "*.md"))) == ["beta"]
    assert list(iter_documents([str(tmp_path / "d" / "*.txt"), tmp_path / "c.jsonl"])) == ["alpha", "one", "two"]
    assert list(iter_documents([tmp_path / "d" / "a.txt", tmp_path / "d" / "a.txt"])) == ["alpha"]


def test_stdlib_files_are_real():
    files = stdlib_files()
    assert len(files) > 100 and files == sorted(files)
    tails = {"/".join(f.parts[-2:]) for f in files}
    assert any(t.endswith("/os.py") for t in tails) and "json/__init__.py" in tails
    assert not any("site-packages" in f.parts or "test" in f.parts or "tests" in f.parts for f in files)
    assert "import" in next(iter_documents(files[:1])) or files[0].stat().st_size == 0


@pytest.mark.parametrize("arg,exc,match", [
    ([], ValueError, "no data sources"),
    ("", ValueError, "non-empty path"),
    ("MISSING/nope.txt", FileNotFoundError, "nope.txt"),
    ("MISSING/*.jsonl", FileNotFoundError, r"glob .*\*\.jsonl"),
    ("EMPTYDIR", ValueError, "EMPTYDIR holds no"),
    ("BAD.csv", ValueError, "BAD.csv: unsupported"),
])
def test_bad_sources_name_the_path(tmp_path, arg, exc, match):
    (tmp_path / "EMPTYDIR").mkdir()
    (tmp_path / "BAD.csv").write_text("a,b")
    arg = arg if arg in ("", []) else str(tmp_path / arg)
    with pytest.raises(exc, match=match):
        iter_documents(arg)  # raised at call time, before iteration


def test_bad_jsonl_lines(tmp_path):
    (p := tmp_path / "x.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2: not a JSON"):
        list(iter_documents(p))
    p.write_text('{"text": 3}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:1: field 'text' is int"):
        list(iter_documents(p))
    p.write_text('{"body": "a"}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:1: no 'text' field"):
        list(iter_documents(p))
    p.write_text('{"text": "ok"}\n\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"x.jsonl:3: not a JSON object \(a list\)"):
        list(iter_documents(p))


def test_prepare_bad_inputs(tmp_path, tok):
    files = _write_docs(tmp_path / "src", ["hi"])
    with pytest.raises(ValueError, match="seq_len"):
        prepare(files, tok, tmp_path / "o", 1)
    with pytest.raises(ValueError, match="shard_sequences"):
        prepare(files, tok, tmp_path / "o", 8, shard_sequences=0)
    with pytest.raises(ValueError, match="fewer than one row"):
        prepare(files, tok, tmp_path / "o", 1000)
    with pytest.raises(ValueError, match="no .*documents"):
        prepare(_write_docs(tmp_path / "empty", [""]), tok, tmp_path / "o", 8)
    assert not (tmp_path / "o").exists()


# -- reading ----------------------------------------------------------------------------------
def test_out_of_range_ids_detected(tmp_path):
    bad = np.zeros((5, 6), np.uint32)
    bad[3, 4] = 100
    path = hand_dataset(tmp_path / "ds", [np.zeros((2, 6)), bad], vocab_size=100)
    ds = PackedDataset(path)
    with pytest.raises(ValueError, match=r"shard-00001.npy: row 3, column 4 holds id 100 >= vocab_size 100"):
        ds.check_ids()
    ds.check_ids(101)
    with pytest.raises(ValueError, match="row 0, column 0 holds id 0 >= vocab_size 0"):
        ds.check_ids(0)


def test_dataset_validation(tmp_path):
    with pytest.raises(FileNotFoundError, match="no manifest.json in .*nowhere"):
        PackedDataset(tmp_path / "nowhere")
    path = hand_dataset(tmp_path / "ds", [np.zeros((3, 4))])
    ds = PackedDataset(path)
    assert len(ds) == 3 and ds[-1].shape == (4,) and ds[np.int64(2)].dtype == np.uint32
    with pytest.raises(IndexError):
        ds[3]
    np.save(path / "shard-00000.npy", np.zeros((3, 5), np.uint32))
    with pytest.raises(ValueError, match=r"shard-00000.npy: expected uint32 \[3, 4\]"):
        PackedDataset(path)
    np.save(path / "shard-00000.npy", np.zeros((3, 4), np.int64))
    with pytest.raises(ValueError, match="expected uint32"):
        PackedDataset(path)
    (path / "shard-00000.npy").unlink()
    with pytest.raises(FileNotFoundError, match="shard-00000.npy .*missing"):
        PackedDataset(path)
    raw = json.loads((path / "manifest.json").read_text())
    raw["total_rows"] = 4
    (path / "manifest.json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="inconsistent"):
        PackedDataset(path)


def _flip_tokens(shard: Path, fraction: float, vocab_size: int) -> int:
    """Change ``fraction`` of a shard's tokens to other in-vocabulary ids (what check_ids cannot
    see), in place; returns how many changed."""
    arr = np.load(shard)
    flat = arr.reshape(-1)
    idx = np.random.default_rng(0).choice(flat.size, max(1, int(fraction * flat.size)), replace=False)
    flat[idx] = (flat[idx] + 1) % vocab_size
    np.save(shard, arr)
    return idx.size


def test_verify_catches_in_vocabulary_corruption(tmp_path, tok):
    files = _write_docs(tmp_path / "src", ["some words here " * 40] * 6)
    m = prepare(files, tok, tmp_path / "out", 8, shard_sequences=20)
    assert len(m.shards) >= 3
    ds = PackedDataset(tmp_path / "out", verify=True)  # untouched: passes
    ds.verify(threads=1)
    assert _flip_tokens(tmp_path / "out" / m.shards[1], 0.1, tok.vocab_size) > 0
    PackedDataset(tmp_path / "out").check_ids()  # the ids are all in range: only the checksum sees it
    for threads in (1, 3):
        with pytest.raises(IntegrityError, match=rf"{m.shards[1]}: sha256 differs .* 1 of {len(m.shards)} shard"):
            PackedDataset(tmp_path / "out").verify(threads=threads)
    # the ranks of a job share the shards: part (i, n) checks shards i, i + n, ...
    PackedDataset(tmp_path / "out").verify(part=(0, 2))
    with pytest.raises(IntegrityError, match=rf"{m.shards[1]}: sha256 differs .* 1 of {len(m.shards[1::2])} shard"):
        PackedDataset(tmp_path / "out").verify(part=(1, 2))
    with pytest.raises(IntegrityError, match=m.shards[1]):
        PackedDataset(tmp_path / "out", verify=True)
    with pytest.raises(IntegrityError, match=m.shards[1]):
        open_data(tmp_path / "out", None, 0, verify=True)
    assert len(open_data(tmp_path / "out", None, 0)) == m.total_rows  # verify is asked for, not implied


def test_a_mixture_verifies_each_source(tmp_path, tok):
    files = _write_docs(tmp_path / "src", ["more words " * 30] * 4)
    for name in ("a", "b"):
        prepare(files, tok, tmp_path / name, 8)
    mix = open_data({"a": tmp_path / "a", "b": tmp_path / "b"}, {"a": 1, "b": 1}, 0, verify=True)
    mix.verify()
    _flip_tokens(tmp_path / "b" / "shard-00000.npy", 0.1, tok.vocab_size)
    with pytest.raises(IntegrityError, match=str(tmp_path / "b" / "shard-00000.npy")):
        mix.verify()
    with pytest.raises(IntegrityError, match="shard-00000.npy"):
        open_data({"a": tmp_path / "a", "b": tmp_path / "b"}, {"a": 1, "b": 1}, 0, verify=True)


def test_older_manifests_without_checksums_warn_and_bad_checksum_lists_are_rejected(tmp_path):
    path = hand_dataset(tmp_path / "ds", [np.zeros((3, 4))])  # the layout before checksums
    with pytest.warns(UserWarning, match="no shard checksums.*prepare --overwrite"):
        PackedDataset(path, verify=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PackedDataset(path)  # reading needs no checksum: no warning
    raw = json.loads((path / "manifest.json").read_text())
    for bad in (["0" * 64, "1" * 64], ["xyz"], "0" * 64):
        (path / "manifest.json").write_text(json.dumps({**raw, "shard_sha256": bad}))
        with pytest.raises(ValueError, match="shard_sha256"):
            PackedDataset(path)
    for shards in (["../shard-00000.npy"], ["/etc/passwd"], [".hidden"]):
        (path / "manifest.json").write_text(json.dumps({**raw, "shards": shards}))
        with pytest.raises(ValueError, match="plain file names"):
            Manifest.load(path)


# -- mixtures ---------------------------------------------------------------------------------
def test_mixture_weights_and_determinism(tmp_path):
    a, b, c = (rows_dataset(tmp_path / n, k, fill=v) for n, k, v in (("a", 600, 1), ("b", 300, 2), ("c", 50, 3)))
    mix = Mixture({"a": (a, 0.6), "b": (b, 0.3), "c": (c, 0.1)}, seed=5, rows=1000)
    assert mix.counts == [600, 300, 100] and len(mix) == 1000  # c is upsampled (50 rows, used twice)
    assert Counter(int(mix[j][0]) for j in range(len(mix))) == {1: 600, 2: 300, 3: 100}
    assert all(mix.source_of(j) == "abc"[int(mix[j][0]) - 1] for j in range(50))
    loader = Loader(mix, 50, seed=0)
    drawn = Counter(torch.cat([loader.next_batch() for _ in range(6)])[:, 0].tolist())  # 300 rows: a statistical sample
    for v, p in ((1, 0.6), (2, 0.3), (3, 0.1)):
        assert abs(drawn[v] / 300 - p) < 4 * (p * (1 - p) / 300) ** 0.5
    first = [mix.source_of(j) for j in range(40)]
    assert len(set(first)) == 3  # interleaved, not in blocks
    again = Mixture({"a": (a, 0.6), "b": (b, 0.3), "c": (c, 0.1)}, seed=5, rows=1000)
    assert all(np.array_equal(mix[j], again[j]) for j in range(0, 1000, 7))
    other = Mixture({"a": (a, 0.6), "b": (b, 0.3), "c": (c, 0.1)}, seed=6, rows=1000)
    assert [other.source_of(j) for j in range(40)] != first
    assert len(Mixture({"a": (a, 3), "b": (b, 1)}, seed=0)) == 800  # default: the most rows with none reused
    assert len(Mixture({"a": (a, 0.7), "b": (b, 0.3)}, seed=0)) == 857  # 600 / 0.7


def test_mixture_rows_are_distinct_until_upsampled(tmp_path):
    a = rows_dataset(tmp_path / "a", 100)
    mix = Mixture({"a": (a, 1.0)}, seed=2, rows=100)
    assert sorted(int(mix[j][0]) for j in range(100)) == list(range(100))


def test_mixture_bad_inputs(tmp_path):
    a = rows_dataset(tmp_path / "a", 10)
    b = rows_dataset(tmp_path / "b", 10, seq=5)
    c = rows_dataset(tmp_path / "c", 10, sha="other")
    for sources, match in [({}, "at least one source"), ({"a": (a, -1)}, "weight of source 'a'"),
                           ({"a": (a, 0)}, "at least one Mixture weight"), ({"a": (a, 1), "b": (b, 1)}, "seq_len"),
                           ({"a": (a, 1), "c": (c, 1)}, "another tokenizer"),
                           ({"a": (a, float("nan"))}, "finite"),
                           ({"a": (a, 1.7e308), "a2": (a, 1.7e308)}, "sum to more than a float holds")]:
        with pytest.raises(ValueError, match=match):
            Mixture(sources, seed=0)
    with pytest.raises(ValueError, match="rows"):
        Mixture({"a": (a, 1)}, seed=0, rows=0)


def test_mixture_vocab_size_is_the_largest_sources(tmp_path):
    a, b = rows_dataset(tmp_path / "a", 10), rows_dataset(tmp_path / "b", 30)
    assert Mixture({"a": (a, 1), "b": (b, 1)}, seed=0).vocab_size == 40 == b.vocab_size


# -- what a run reads: --data DIR | NAME=DIR ... ----------------------------------------------------
def test_parse_data_args():
    assert parse_data_args(["d"]) == Path("d")
    assert parse_data_args(["code=c", "math=/m=x"]) == {"code": Path("c"), "math": Path("/m=x")}
    for items, match in [([], "no --data"), (["a", "b"], "need names"), (["a=x", "b"], "either"),
                         (["=x"], "NAME=DIR"), (["a="], "NAME=DIR"), (["a=x", "a=y"], "twice")]:
        with pytest.raises(ValueError, match=match):
            parse_data_args(items)


def test_open_data(tmp_path):
    a, b = (rows_dataset(tmp_path / n, k).path for n, k in (("a", 30), ("b", 10)))
    assert isinstance(open_data(a, None, 0), PackedDataset)
    mix = open_data({"a": a, "b": b}, {"a": 0.75, "b": 0.25}, seed=3)
    assert isinstance(mix, Mixture) and mix.names == ["a", "b"] and mix.counts == [30, 10]
    assert describe(mix) == {"rows": 40, "sources": {"a": {"rows": 30, "weight": 0.75},
                                                     "b": {"rows": 10, "weight": 0.25}}, "order": ["a", "b"]}
    assert describe(open_data(a, None, 0)) == {"rows": 30, "sources": None}
    for data, weights, match in [(a, {"a": 1}, "pass --data NAME=DIR"), ({"a": a}, None, "no mixture weights"),
                                 ({"a": a}, {"a": 1, "b": 1}, r"missing \['b'\]"),
                                 ({"a": a, "b": b}, {"a": 1}, r"unweighted \['b'\]")]:
        with pytest.raises(ValueError, match=match):
            open_data(data, weights, 0)
    with pytest.raises(FileNotFoundError):
        open_data({"a": tmp_path / "nope"}, {"a": 1}, 0)


# -- command line -----------------------------------------------------------------------------
def _cli(argv: list[str]) -> int:
    parser = _Parser(prog="sumi data")
    data_cli.add_arguments(parser)
    return data_cli.run(parser.parse_args(argv))


def test_cli_prepare(tmp_path, capsys):
    files = _write_docs(tmp_path / "src")
    out = tmp_path / "out"
    assert _cli(["prepare", "--source", str(tmp_path / "src" / "*.txt"), "--out", str(out), "--seq-len", "8"]) == 0
    assert "rows x 8 tokens" in capsys.readouterr().err
    assert PackedDataset(out).manifest.files == len(files)
    with pytest.raises(UsageError, match="not empty"):
        _cli(["prepare", "--source", str(files[0]), "--out", str(out), "--seq-len", "8"])
    with pytest.raises(UsageError, match="--source PATH_OR_GLOB"):
        _cli(["prepare", "--out", str(tmp_path / "o")])
    with pytest.raises(UsageError, match="nope.txt"):
        _cli(["prepare", "--source", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")])
    with pytest.raises(UsageError, match="no tokenizer at"):
        _cli(["prepare", "--source", str(files[0]), "--out", str(tmp_path / "o"), "--tokenizer", "nope.json"])
    with pytest.raises(UsageError, match="--seq-len"):
        _cli(["prepare", "--source", str(files[0]), "--out", str(tmp_path / "o"), "--seq-len", "1"])
    with pytest.raises(SystemExit):
        _cli(["prepare", "--source", "x"])  # --out is required: argparse's one-line error


def test_cli_stdlib(tmp_path, monkeypatch):
    """--stdlib packs the training split: a held-out file among the sources stays out."""
    from sumi.data.sources import is_heldout, stdlib_root

    root = stdlib_root()
    held = [f for f in stdlib_files() if is_heldout(f.relative_to(root).as_posix())][:1]
    train = [f for f in stdlib_files() if not is_heldout(f.relative_to(root).as_posix())][:3]
    assert held and train
    few = sorted(held + train)  # the real corpus, cut short to keep the test fast
    monkeypatch.setattr("sumi.data.sources.stdlib_files", lambda: few)
    assert _cli(["prepare", "--stdlib", "--out", str(tmp_path / "out"), "--seq-len", "64"]) == 0
    ds = PackedDataset(tmp_path / "out")
    assert ds.manifest.sources == [str(f) for f in sorted(train)] and len(ds) > 0
    ds.check_ids()


def test_cli_error_starts_on_a_line_of_its_own(tmp_path, capsys):
    """An error met while tokenizing comes after the progress bar's line, not glued to it."""
    from sumi.cli import main

    (bad := tmp_path / "docs.jsonl").write_text('{"text": "fine"}\nnot json\n')
    with pytest.raises(SystemExit) as exc:
        main(["data", "prepare", "--source", str(bad), "--out", str(tmp_path / "out"), "--seq-len", "4"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "tokenizing" in err  # the bar was drawn
    (line,) = [line for line in err.split("\n") if "error:" in line]
    assert line.startswith("sumi data: error: ") and "docs.jsonl:2: not a JSON object" in line
    assert not (tmp_path / "out").exists()


def test_cli_overwrite_refuses_other_files_and_a_binary_tokenizer_is_named(tmp_path):
    files = _write_docs(tmp_path / "src")
    (out := tmp_path / "out").mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(UsageError, match="it holds keep.txt"):
        _cli(["prepare", "--source", str(files[0]), "--out", str(out), "--overwrite"])
    assert (out / "keep.txt").read_text() == "x"
    (binary := tmp_path / "tok.bin").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(UsageError, match=r"tok.bin is not a tokenizer.json"):
        _cli(["prepare", "--source", str(files[0]), "--out", str(tmp_path / "o"), "--tokenizer", str(binary)])
