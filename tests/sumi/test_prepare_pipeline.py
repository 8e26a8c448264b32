"""``sumi data prepare`` on real corpora: every source format in one run, the same bytes for any
number of workers, bad records stopped or skipped and counted, resume after a failure at any
shard or a SIGKILL (ending with exactly the uninterrupted run's files), and the ordered worker
map's bounds.  Oracles: documents read independently here (json, gzip, zstandard, pyarrow,
datasets) and tokenized one by one; an uninterrupted run's bytes."""

from __future__ import annotations

import gzip
import importlib
import json
import operator
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sumi.cli import main
from sumi.data import Manifest, PackedDataset, chunking, prepare
from sumi.data.readers import MissingExtra
from sumi.data.resume import PROGRESS, partial_dir
from sumi.data.shards import ShardWriter
from sumi.data.sources import document_items, resolve_files
from sumi.data.workers import ordered_map
from sumi.tokenizer import SumiTokenizer, tiny_corpus
from tests.sumi.worker_helpers import exit_worker

packing = importlib.import_module("sumi.data.packing")
SEQ = 16


@pytest.fixture(scope="module")
def tok() -> SumiTokenizer:
    return SumiTokenizer.default()


def _texts(n: int, seed: int = 0) -> list[str]:
    """``n`` documents cut from the embedded corpus, of varied lengths."""
    rng = np.random.default_rng(seed)
    corpus = tiny_corpus()
    starts = rng.integers(0, len(corpus) - 400, n)
    return [corpus[s:s + int(k)] for s, k in zip(starts, rng.integers(1, 400, n))]


def _lines(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode("utf-8")


def _all_formats(root: Path, records: list[dict]) -> list[Path]:
    """``records`` split over a .jsonl, a .jsonl.gz, a .jsonl.zst (two frames), a .parquet (row
    groups of 7) and a saved dataset (3 Arrow files), named so that sorted order is this order."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    root.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(records)), 5)
    part = [[records[i] for i in p] for p in parts]
    (root / "a.jsonl").write_bytes(_lines(part[0]))
    (root / "b.jsonl.gz").write_bytes(gzip.compress(_lines(part[1])))
    half = len(part[2]) // 2
    cctx = zstandard.ZstdCompressor()
    (root / "c.jsonl.zst").write_bytes(cctx.compress(_lines(part[2][:half])) + cctx.compress(_lines(part[2][half:])))
    pq.write_table(pa.Table.from_pylist(part[3]), root / "d.parquet", row_group_size=7)
    datasets.Dataset.from_list(part[4]).save_to_disk(str(root / "e_saved"), num_shards=3)
    return [root / "a.jsonl", root / "b.jsonl.gz", root / "c.jsonl.zst", root / "d.parquet", root / "e_saved"]


def _files(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# -- every format, any number of workers ---------------------------------------------------------
def test_every_format_packs_its_documents_in_order_with_any_number_of_workers(tmp_path, tok, monkeypatch, offline):
    texts = _texts(60)
    sources = _all_formats(tmp_path / "src", [{"text": t, "id": i} for i, t in enumerate(texts)])
    stream = np.concatenate([[tok.bos_id, *tok.encode(t, add_bos=False), tok.eos_id] for t in texts])  # the oracle
    monkeypatch.setattr(chunking, "ENCODE_CHARS", 700)  # many chunks, so that the workers share them
    assert len(list(chunking.chunked(document_items(resolve_files([tmp_path / "src"])), "documents", SEQ))) > 5
    outs = {}
    for workers in (1, 3):
        outs[workers] = tmp_path / f"w{workers}"
        m = prepare([tmp_path / "src"], tok, outs[workers], SEQ, shard_sequences=5, workers=workers)
        assert (m.documents, m.files, m.bad_records) == (60, 5, 0)
    assert _files(outs[1]) == _files(outs[3])
    ds = PackedDataset(outs[1])
    rows = len(stream) // SEQ
    assert np.array_equal(np.stack([ds[i] for i in range(len(ds))]), stream[:rows * SEQ].reshape(rows, SEQ))
    assert sorted(sources) == sources


@pytest.mark.parametrize("sft", [False, True])
def test_prompted_and_chat_rows_are_the_same_with_any_number_of_workers(tmp_path, tok, monkeypatch, sft, offline):
    texts = _texts(40, seed=1)
    records = [{"prompt": a[:60], "response": b[:40 if i % 5 else 400]}  # every fifth too long for a row
               for i, (a, b) in enumerate(zip(texts[::2], texts[1::2]))]
    _all_formats(tmp_path / "src", records)
    monkeypatch.setattr(chunking, "ENCODE_CHARS", 300)
    outs = [tmp_path / f"w{w}" for w in (1, 2)]
    manifests = [prepare(tmp_path / "src", tok, out, 96, shard_sequences=3, workers=w, prompted=not sft, sft=sft)
                 for out, w in zip(outs, (1, 2))]
    assert _files(outs[0]) == _files(outs[1])
    m = manifests[0]
    assert m.prompted and m.skipped_records >= 4 and m.documents + m.skipped_records == 20
    assert [e["where"].rsplit("/", 1)[-1] for e in m.skipped_examples][0] == "a.jsonl:1"


# -- bad records --------------------------------------------------------------------------------
def test_bad_records_stop_the_prepare_or_are_skipped_and_counted(tmp_path, tok, capsys, offline):
    import pyarrow as pa
    import pyarrow.parquet as pq

    good = _texts(6, seed=2)
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_bytes(b"".join([
        json.dumps({"text": good[0]}).encode() + b"\n",
        b'{"text": "caf\xe9"}\n',  # line 2: Latin-1, not UTF-8
        b"{not json\n",  # line 3
        b"\n",  # blank: not a record
        json.dumps({"body": "x"}).encode() + b"\n",  # line 5: no text field
        json.dumps({"text": good[1]}).encode() + b"\n",
        json.dumps({"text": 7}).encode() + b"\n",  # line 7: not a string
        b"[1, 2]\n",  # line 8: not an object
        json.dumps({"text": good[2]}).encode() + b"\n",
    ]))
    pq.write_table(pa.Table.from_pylist([{"text": good[3]}, {"text": None}, {"text": good[4]}]), src / "b.parquet")
    (src / "c.jsonl.gz").write_bytes(gzip.compress(_lines([{"text": good[5]}]))[:-8])  # truncated: a bad tail
    with pytest.raises(ValueError, match=r"a\.jsonl:2: not UTF-8.*--skip-bad"):
        prepare(src, tok, tmp_path / "out", SEQ, workers=1)
    assert not (tmp_path / "out").exists() and not partial_dir(tmp_path / "out").exists()

    m = prepare(src, tok, tmp_path / "out", SEQ, workers=1, skip_bad=True)
    wheres = [e["where"].rsplit("/", 1)[-1] for e in m.bad_examples]
    assert m.bad_records == 7 and wheres == ["a.jsonl:2", "a.jsonl:3", "a.jsonl:5", "a.jsonl:7", "a.jsonl:8"]
    assert "no 'text' field" in m.bad_examples[2]["error"] and "is int" in m.bad_examples[3]["error"]
    assert m.documents == 6  # the truncated gzip's line is whole: only its missing end is a bad record
    (tmp_path / "clean").mkdir()
    (tmp_path / "clean" / "a.jsonl").write_bytes(_lines([{"text": t} for t in good]))
    clean = prepare(tmp_path / "clean", tok, tmp_path / "clean_out", SEQ, workers=1)
    assert clean.total_rows == m.total_rows
    assert all(np.array_equal(PackedDataset(tmp_path / "out")[i], PackedDataset(tmp_path / "clean_out")[i])
               for i in range(m.total_rows))
    assert Manifest.load(tmp_path / "out").bad_examples == m.bad_examples

    rc = main(["data", "prepare", "--source", str(src), "--out", str(tmp_path / "cli"), "--seq-len", str(SEQ),
               "--skip-bad", "--workers", "1"])
    err = capsys.readouterr().err
    assert rc == 0 and "skipped 7 bad records" in err and "a.jsonl:3: not a JSON object" in err
    assert "b.parquet: row 1: field 'text' is null" not in err and "... and 2 more" in err


def test_chat_records_the_template_cannot_read_are_bad_records_in_order(tmp_path, tok, monkeypatch):
    records = [{"prompt": "p0", "response": "r0"}, {"messages": "not a list"}, {"prompt": "p2", "response": "r2"},
               {"prompt": "p3"}, {"prompt": "p4", "response": "r4"}]
    (tmp_path / "chat.jsonl").write_bytes(_lines(records[:3]) + b"oops\n" + _lines(records[3:]))
    monkeypatch.setattr(chunking, "CHUNK_ROW_TOKENS", 2 * 64)  # two records per chunk: bad ones on both sides
    for workers in (1, 2):
        m = prepare(tmp_path / "chat.jsonl", tok, tmp_path / f"o{workers}", 64, sft=True, skip_bad=True,
                    workers=workers)
        assert [e["where"].rsplit(":", 1)[-1] for e in m.bad_examples] == ["2", "4", "5"]
        assert m.documents == 3
    with pytest.raises(ValueError, match=r"chat\.jsonl:2: "):
        prepare(tmp_path / "chat.jsonl", tok, tmp_path / "o3", 64, sft=True, workers=2)


# -- resume -------------------------------------------------------------------------------------
def _fail_at(monkeypatch, shard: int | None = None, progress: int | None = None):
    """Make the ``shard``-th shard save (or the ``progress``-th progress save, after its carry is
    written) raise, as a crash there would stop the process."""
    calls = {"shard": 0, "progress": 0}
    real_save = ShardWriter.save
    real_atomic = packing.save_progress.__globals__["atomic_write"]

    def save(self, *a, **k):
        calls["shard"] += 1
        if calls["shard"] == shard:
            raise OSError("disk full (simulated)")
        return real_save(self, *a, **k)

    def atomic(path, data):
        if Path(path).name == PROGRESS:
            calls["progress"] += 1
            if calls["progress"] == progress:
                raise KeyboardInterrupt
        return real_atomic(path, data)

    monkeypatch.setattr(ShardWriter, "save", save)
    monkeypatch.setitem(packing.save_progress.__globals__, "atomic_write", atomic)


@pytest.mark.parametrize("prompted", [False, True])
def test_a_prepare_stopped_at_any_shard_resumes_to_exactly_the_uninterrupted_files(tmp_path, tok, monkeypatch,
                                                                                 prompted):
    texts = _texts(80, seed=3)
    records = [{"text": t} for t in texts] if not prompted else \
        [{"prompt": a[:30], "response": b[:30]} for a, b in zip(texts[::2], texts[1::2])]
    (tmp_path / "a.jsonl").write_bytes(_lines(records[:30]))
    (tmp_path / "b.jsonl.gz").write_bytes(gzip.compress(_lines(records[30:])))
    src = [tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"]
    monkeypatch.setattr(chunking, "ENCODE_CHARS", 400)
    kw = dict(shard_sequences=4, workers=1, prompted=prompted)
    seq = 48 if prompted else SEQ
    ref = prepare(src, tok, tmp_path / "ref", seq, **kw)
    expected = _files(tmp_path / "ref")
    assert len(ref.shards) >= 8
    out = tmp_path / "out"
    n = len(ref.shards)  # every early shard, then a sample, and the last (the finished output's)
    shards = sorted({*range(1, 6), *range(6, n, 7), n - 1, n})
    for where in [dict(shard=k) for k in shards] + [dict(progress=k) for k in (1, 3)]:
        with monkeypatch.context() as m:
            _fail_at(m, **where)
            with pytest.raises((OSError, KeyboardInterrupt)):
                prepare(src, tok, out, seq, **kw)
        assert not out.exists()
        partial = partial_dir(out)
        assert partial.exists() == (partial / PROGRESS).is_file()  # kept only when there is progress to resume
        if partial.exists():
            with pytest.raises(FileExistsError, match="--resume"):
                prepare(src, tok, out, seq, **kw)
        # the number of workers is not a setting: the last failure resumes with two
        resumed = prepare(src, tok, out, seq, resume=True, **{**kw, "workers": 2 if where == dict(progress=3) else 1})
        assert _files(out) == expected and resumed == ref, where
        assert not partial.exists()
        for p in out.iterdir():
            p.unlink()
        out.rmdir()


def test_resume_refuses_other_settings_and_changed_inputs_and_overwrite_starts_over(tmp_path, tok, monkeypatch):
    (tmp_path / "a.jsonl").write_bytes(_lines([{"text": t} for t in _texts(60, seed=4)]))
    monkeypatch.setattr(chunking, "ENCODE_CHARS", 400)
    out, partial = tmp_path / "out", partial_dir(tmp_path / "out")
    kw = dict(shard_sequences=4, workers=1)
    with monkeypatch.context() as m:
        _fail_at(m, shard=20)
        with pytest.raises(OSError):
            prepare(tmp_path / "a.jsonl", tok, out, SEQ, **kw)
    assert (partial / PROGRESS).is_file()
    with pytest.raises(ValueError, match=r"other settings \(seq_len: 16 then, 8 now\)"):
        prepare(tmp_path / "a.jsonl", tok, out, 8, resume=True, **kw)
    with pytest.raises(ValueError, match=r"other settings \(fields: \['text'\] then, \['body'\] now"):
        prepare(tmp_path / "a.jsonl", tok, out, SEQ, resume=True, text_field="body", **kw)
    os.utime(tmp_path / "a.jsonl", ns=(1, 1))
    with pytest.raises(ValueError, match=r"inputs changed since it started \(.*a\.jsonl"):
        prepare(tmp_path / "a.jsonl", tok, out, SEQ, resume=True, **kw)
    m = prepare(tmp_path / "a.jsonl", tok, out, SEQ, overwrite=True, **kw)  # starts over
    assert not partial.exists() and m.total_rows > 8
    before = _files(out)
    assert prepare(tmp_path / "a.jsonl", tok, out, SEQ, resume=True, **kw) == m  # complete: nothing to do
    assert _files(out) == before
    with pytest.raises(ValueError, match="complete but was prepared with other settings"):
        prepare(tmp_path / "a.jsonl", tok, out, 8, resume=True, **kw)


def test_a_prepare_complete_but_not_yet_swapped_in_is_finished_by_resume(tmp_path, tok, monkeypatch):
    (tmp_path / "a.jsonl").write_bytes(_lines([{"text": t} for t in _texts(40, seed=5)]))
    ref = prepare(tmp_path / "a.jsonl", tok, tmp_path / "ref", SEQ, shard_sequences=4, workers=1)
    with monkeypatch.context() as m:
        def crash(*a):
            raise KeyboardInterrupt

        m.setattr(packing, "replace_dir", crash)
        with pytest.raises(KeyboardInterrupt):
            prepare(tmp_path / "a.jsonl", tok, tmp_path / "out", SEQ, shard_sequences=4, workers=1)
    assert (partial_dir(tmp_path / "out") / "manifest.json").is_file()
    assert prepare(tmp_path / "a.jsonl", tok, tmp_path / "out", SEQ, shard_sequences=4, workers=1, resume=True) == ref
    assert _files(tmp_path / "out") == _files(tmp_path / "ref")


def _descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found += [int(child), *_descendants(int(child))]
    return found


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_killed_prepare_leaves_no_workers_and_resumes_to_the_same_bytes(tmp_path, tok):
    corpus = tiny_corpus()
    (tmp_path / "a.jsonl").write_bytes(_lines([{"text": corpus[i % 30000:i % 30000 + 2000]} for i in range(0, 1500)]))
    args = ["--source", str(tmp_path / "a.jsonl"), "--seq-len", "64", "--shard-rows", "100", "--workers", "2"]
    assert main(["data", "prepare", *args, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "sumi", "data", "prepare", *args, "--out", str(out)],
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (partial_dir(out) / PROGRESS).is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the prepare ended before its first shard"
        time.sleep(0.01)
    workers = _descendants(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert workers
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{w}").exists() and "Z" not in Path(f"/proc/{w}/stat").read_text().split()[2]
              for w in workers):
        assert time.monotonic() < deadline, "worker processes outlived the killed prepare"
        time.sleep(0.1)
    assert not out.exists()
    assert main(["data", "prepare", *args, "--out", str(out), "--resume"]) == 0
    assert _files(out) == _files(tmp_path / "ref")


# -- errors ---------------------------------------------------------------------------------------
def test_a_missing_format_library_is_one_line_naming_the_extra(tmp_path, tok, monkeypatch, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": "hello"}]), tmp_path / "a.parquet")
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(MissingExtra, match=r"discdiff\[data\]"):
        prepare(tmp_path / "a.parquet", tok, tmp_path / "out", 4, workers=1)
    with pytest.raises(SystemExit) as e:
        main(["data", "prepare", "--source", str(tmp_path / "a.parquet"), "--out", str(tmp_path / "o"), "--seq-len",
              "4", "--workers", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "pip install 'discdiff[data]'" in err and len(err.strip().splitlines()) == 1


def test_cli_reports_kept_progress_and_refuses_bad_workers(tmp_path, monkeypatch, capsys):
    (tmp_path / "a.jsonl").write_bytes(_lines([{"text": t} for t in _texts(60, seed=6)]) + b"{bad\n")
    monkeypatch.setattr(chunking, "ENCODE_CHARS", 400)
    args = ["data", "prepare", "--source", str(tmp_path / "a.jsonl"), "--out", str(tmp_path / "o"), "--seq-len",
            str(SEQ), "--shard-rows", "4", "--workers", "1"]
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err
    assert "a.jsonl:61: not a JSON object" in err and "kept in" in err and "--resume" in err
    assert main([*args, "--resume", "--skip-bad"]) == 0  # skipping bad records may be switched on to resume
    assert Manifest.load(tmp_path / "o").bad_records == 1
    with pytest.raises(SystemExit):
        main([*args[:-1], "0"])
    assert "--workers must be >= 1, got 0" in capsys.readouterr().err


# -- the ordered map ------------------------------------------------------------------------------
def test_ordered_map_keeps_order_bounds_the_tasks_in_flight_and_raises_at_the_failing_task():
    # fn(context, task) = context // task: a builtin, so the workers import nothing heavy to run it
    pulled = []

    def tasks(values):
        for v in values:
            pulled.append(v)
            yield v

    got = []
    for i, y in enumerate(ordered_map(operator.floordiv, 10**6, tasks(range(1, 41)), workers=2)):
        got.append(y)
        assert len(pulled) <= i + 1 + 2 * 2  # read ahead by at most the window
    assert got == [10**6 // i for i in range(1, 41)]
    assert list(ordered_map(operator.floordiv, 9, iter([3]), workers=4)) == [3]  # one task: no pool
    results = []
    with pytest.raises(ZeroDivisionError):
        for y in ordered_map(operator.floordiv, 60, [1, 2, 3, 4, 5, 0, 6, 7, 8, 9, 10], workers=2):
            results.append(y)
    assert results == [60, 30, 20, 15, 12]  # every result before the failing task, in order
    # a worker that dies (here: os._exit in a module the workers import cheaply) is one error saying what may
    # have happened
    with pytest.raises(RuntimeError, match=r"a worker process died.*__main__.*workers=1"):
        list(ordered_map(exit_worker, 3, [1, 1, 1], workers=2))


def test_a_pickled_tokenizer_still_encodes_special_strings_as_text(tok):
    import pickle

    copy = pickle.loads(pickle.dumps(tok))
    text = "a <|endoftext|> b <|beginoftext|>"
    assert copy.encode(text) == tok.encode(text) and tok.eos_id not in tok.encode(text)


def test_the_tokenizing_workers_import_no_torch():
    """A worker imports the encoding module and the tokenizer only: the package's exports are lazy
    (torch and the model would cost each worker about 1 s and 200 MB)."""
    code = ("import pickle, sys; import sumi.data.encoding, sumi.data.workers, sumi.tokenizer; "
            "pickle.loads(pickle.dumps(sumi.tokenizer.SumiTokenizer.default())); "
            "assert 'torch' not in sys.modules, 'torch imported'; import sumi, sumi.data; "
            "assert 'torch' not in sys.modules; print(sumi.data.prepare.__module__, sumi.Sumi.__module__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["sumi.data.packing", "sumi.model.transformer"]  # the exports still resolve
