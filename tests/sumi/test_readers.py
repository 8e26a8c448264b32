"""The source readers (``sumi.data.readers``), each format written in ``tmp_path`` by its own
library (json + gzip / zstandard, pyarrow, ``datasets.Dataset.save_to_disk``) and checked
against the rows written, or against ``datasets`` iterating the very Dataset it saved."""

from __future__ import annotations

import gzip
import importlib
import json
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from sumi.data import readers
from sumi.data.readers import MissingExtra, data_files, format_of, is_saved_dataset, read_records
from sumi.data.readers.saved import dataset_dict_splits

# -- helpers ----------------------------------------------------------------------------------


def _compress(name: str, data: bytes) -> bytes:
    if name.endswith(".gz"):
        return gzip.compress(data, mtime=0)
    if name.endswith(".zst"):
        return zstandard.ZstdCompressor(write_checksum=True).compress(data)
    return data


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(_compress(path.name, data))
    return path


def _rows(path: Path, start: int = 0, columns=None) -> list[tuple]:
    """(index, where, value, error) of every record, plain tuples for readable assertion diffs."""
    return [tuple(r) for r in read_records(path, start, columns)]


@pytest.fixture
def hf(monkeypatch):
    """The ``datasets`` library, offline and quiet (only the tests write with it; sumi never imports it)."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    return importlib.import_module("datasets")


def _arrow_batches(file: Path) -> list[int]:
    """Row counts of the record batches of an Arrow stream file (to check a test's premise)."""
    with pa.memory_map(str(file)) as source:
        return [b.num_rows for b in pa.ipc.open_stream(source)]


# -- dispatch ---------------------------------------------------------------------------------


def test_format_of_names_the_suffix_or_a_saved_dataset(tmp_path: Path, hf):
    for name, fmt in [("a.txt", ".txt"), ("a.md", ".md"), ("a.py", ".py"), ("a.jsonl", ".jsonl"),
                      ("x.y.jsonl.gz", ".jsonl.gz"), ("a.jsonl.zst", ".jsonl.zst"), ("a.parquet", ".parquet"),
                      ("a.csv", None), ("a.gz", None), ("jsonl", None)]:
        assert format_of(tmp_path / name) == fmt, name
    hf.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "plain").mkdir()
    assert format_of(tmp_path / "saved") == "saved" and is_saved_dataset(tmp_path / "saved")
    assert format_of(tmp_path / "plain") is None and not is_saved_dataset(tmp_path / "plain")
    assert data_files(tmp_path / "a.jsonl") == [tmp_path / "a.jsonl"]
    with pytest.raises(ValueError, match=r"a\.csv: unsupported source \(expected one of .*\.jsonl\.zst"):
        read_records(_write(tmp_path / "a.csv", b"x\n"))


# -- JSON Lines -------------------------------------------------------------------------------

JSONL = ["a.jsonl", "a.jsonl.gz", "a.jsonl.zst"]


@pytest.mark.parametrize("name", JSONL)
def test_jsonl_lines_blank_lines_crlf_and_u2028(tmp_path: Path, name: str):
    lines = [b'{"text": "a"}\n',
             b"\n",  # blank lines are skipped but keep their numbers
             b"   \r\n",
             '{"text": "b\u2028c"}\n'.encode(),  # a raw U+2028 inside a string is not a line break
             b'{"text": "d", "n": [1, 2.5, null]}\r\n',
             '{"text": "\u65e5\u672c"}'.encode()]  # no newline at the end
    path = _write(tmp_path / name, b"".join(lines))
    assert _rows(path) == [(1, f"{path}:1", {"text": "a"}, None),
                           (4, f"{path}:4", {"text": "b\u2028c"}, None),
                           (5, f"{path}:5", {"text": "d", "n": [1, 2.5, None]}, None),
                           (6, f"{path}:6", {"text": "\u65e5\u672c"}, None)]


@pytest.mark.parametrize("name", JSONL)
def test_jsonl_bad_records_name_their_line_and_reading_goes_on(tmp_path: Path, name: str):
    lines = [b'{"text": "ok1"}\n',
             b'{"text": "\xff\xfe"}\n',  # invalid UTF-8
             b'{"text": "ok3"}\n',
             b'{"text": \n',  # invalid JSON
             b"[1, 2]\n",  # JSON, not an object
             b'"text"\n',
             b'{"text": "ok7"}\n']
    path = _write(tmp_path / name, b"".join(lines))
    records = list(read_records(path))
    assert [(r.index, r.where) for r in records] == [(i, f"{path}:{i}") for i in range(1, 8)]
    assert [r.value for r in records] == [{"text": "ok1"}, None, {"text": "ok3"}, None, None, None, {"text": "ok7"}]
    errors = [r.error for r in records]
    assert errors[0] is None and errors[2] is None and errors[6] is None
    assert "not UTF-8" in errors[1]
    assert "not a JSON object" in errors[3] and "Expecting value" in errors[3]
    assert errors[4] == "not a JSON object (a list)" and errors[5] == "not a JSON object (a str)"


def _numbered_lines(n: int) -> list[bytes]:
    return [json.dumps({"text": f"document {i} " + "x" * (i % 50)}).encode() + b"\n" for i in range(n)]


def test_zst_of_several_frames_is_read_across_frames(tmp_path: Path):
    lines = _numbered_lines(1000)
    frames = [zstandard.ZstdCompressor().compress(b"".join(lines[i:i + 300])) for i in range(0, 1000, 300)]
    path = tmp_path / "a.jsonl.zst"
    path.write_bytes(b"".join(frames))
    assert len(frames) == 4
    assert [r.value for r in read_records(path)] == [json.loads(line) for line in lines]


def _truncated_gz(lines: list[bytes]) -> bytes:
    blob = gzip.compress(b"".join(lines), mtime=0)
    return blob[: len(blob) // 2]


def _corrupt_zst(lines: list[bytes]) -> bytes:
    blob = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(b"".join(lines)))
    blob[len(blob) // 2: len(blob) // 2 + 16] = bytes(b ^ 0xFF for b in blob[len(blob) // 2: len(blob) // 2 + 16])
    return bytes(blob)


def _truncated_zst(lines: list[bytes]) -> bytes:
    """Frames of 100 lines each, the last one cut short (zstandard's own stream reader reads this
    as a complete, shorter file)."""
    frames = [zstandard.ZstdCompressor().compress(b"".join(lines[i:i + 100])) for i in range(0, len(lines), 100)]
    return b"".join(frames)[:-20]


@pytest.mark.parametrize("name,damage", [("a.jsonl.gz", _truncated_gz), ("a.jsonl.zst", _corrupt_zst),
                                         ("a.jsonl.zst", _truncated_zst)])
def test_damaged_compressed_file_ends_with_one_bad_record(tmp_path: Path, name: str, damage: Callable):
    lines = _numbered_lines(3000)
    path = tmp_path / name
    path.write_bytes(damage(lines))
    records = list(read_records(path))
    *good, last = records
    assert len(good) < len(lines)
    assert [r.value for r in good] == [json.loads(line) for line in lines[: len(good)]]
    assert all(r.error is None for r in good)
    k = len(good) + 1
    assert (last.index, last.where, last.value) == (k, f"{path}:{k}", None)
    assert last.error.startswith("corrupt compressed data")
    assert [tuple(r) for r in read_records(path, k + 5)] == [(k + 5, f"{path}:{k + 5}", None, last.error)]


# -- parquet ----------------------------------------------------------------------------------


def test_parquet_values_nulls_and_types(tmp_path: Path):
    rows = [{"text": "a", "n": 1, "x": 0.5, "ok": True, "tags": [1, 2], "meta": {"lang": "ja"}, "raw": b"\x00\xff"},
            {"text": None, "n": None, "x": None, "ok": None, "tags": None, "meta": None, "raw": None},
            {"text": "\u65e5\u672c", "n": -(2 ** 40), "x": -1e300, "ok": False, "tags": [], "meta": {"lang": None},
             "raw": b""}]
    path = tmp_path / "a.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert _rows(path) == [(i, f"{path}: row {i}", row, None) for i, row in enumerate(rows)]
    assert [r.value for r in read_records(path, 0, ["n", "text"])] == [{"text": r["text"], "n": r["n"]}
                                                                        for r in rows]


def _corrupt_row_group(path: Path, group: int) -> None:
    """Overwrite the page headers of one row group of an uncompressed, dictionary-free file."""
    meta = pq.ParquetFile(path).metadata.row_group(group)
    blob = bytearray(path.read_bytes())
    for c in range(meta.num_columns):
        offset = meta.column(c).data_page_offset
        blob[offset: offset + 32] = b"\xff" * 32
    path.write_bytes(bytes(blob))


def test_parquet_start_skips_row_groups_without_decoding_them(tmp_path: Path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": [f"t{i}" for i in range(10)]}), path, row_group_size=3, compression="NONE",
                   use_dictionary=False)
    assert pq.ParquetFile(path).metadata.num_row_groups == 4
    _corrupt_row_group(path, 1)  # rows 3..5
    assert [r.value["text"] for r in read_records(path, 6)] == ["t6", "t7", "t8", "t9"]
    *good, bad = read_records(path)
    assert [r.value["text"] for r in good] == ["t0", "t1", "t2"]
    assert (bad.index, bad.where, bad.value) == (3, f"{path}: row 3", None)
    assert bad.error.startswith("corrupt data: ") and "\n" not in bad.error
    *good, bad = read_records(path, 4)
    assert good == [] and bad.index == 4


def test_parquet_file_level_errors(tmp_path: Path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"a": [1, 2], "b": ["x", "y"], "c": [None, None]}), path)
    records = read_records(path, 100, ["b", "text"])  # raised when the generator starts, whatever start
    with pytest.raises(ValueError) as e:
        next(records)
    assert str(e.value) == f"{path}: no column 'text' (its columns: a, b, c)"
    with pytest.raises(ValueError, match="columns must be a sequence of column names, got the string 'a'"):
        list(read_records(path, 0, "a"))
    for bad in [b"not a parquet file", path.read_bytes()[:-40], b""]:
        broken = tmp_path / "broken.parquet"
        broken.write_bytes(bad)
        with pytest.raises(ValueError, match=rf"^{broken}: not a readable parquet file \(.+\)$"):
            list(read_records(broken))
    with pytest.raises(FileNotFoundError):
        list(read_records(tmp_path / "missing.parquet"))


# -- saved datasets ---------------------------------------------------------------------------


def test_saved_dataset_of_several_arrow_files(tmp_path: Path, hf, monkeypatch):
    monkeypatch.setattr(hf.config, "DEFAULT_MAX_BATCH_SIZE", 2)  # several record batches per file
    data = {"text": [f"doc {i}" if i != 4 else None for i in range(10)], "n": list(range(10))}
    path = tmp_path / "saved"
    hf.Dataset.from_dict(data).save_to_disk(str(path), num_shards=3)
    arrows = [path / f"data-0000{i}-of-00003.arrow" for i in range(3)]
    assert data_files(path) == [path / "state.json", *arrows]
    assert [_arrow_batches(f) for f in arrows] == [[2, 2], [2, 1], [2, 1]]
    expected = [{"text": t, "n": n} for t, n in zip(data["text"], data["n"])]
    assert _rows(path) == [(i, f"{path}: row {i}", row, None) for i, row in enumerate(expected)]
    assert [r.value for r in read_records(path, 7, ["text"])] == [{"text": "doc 7"}, {"text": "doc 8"},
                                                                   {"text": "doc 9"}]


def test_saved_dataset_after_shuffle_and_select_reads_in_the_datasets_order(tmp_path: Path, hf):
    ds = hf.Dataset.from_dict({"text": [f"doc {i}" for i in range(50)], "n": list(range(50))})
    picked = ds.shuffle(seed=0).select(range(0, 50, 3))
    assert picked._indices is not None  # an indices mapping, which save_to_disk must flatten
    path = tmp_path / "picked"
    picked.save_to_disk(str(path), num_shards=2)
    state = json.loads((path / "state.json").read_text())
    assert "_indices_data_files" not in state and "_indices" not in state
    oracle = list(picked)  # datasets' own iteration order
    assert [r["n"] for r in oracle] != sorted(r["n"] for r in oracle)
    assert [r.value for r in read_records(path)] == oracle
    assert [r.value for r in read_records(path, 9)] == oracle[9:]


def test_dataset_dict_directory(tmp_path: Path, hf):
    path = tmp_path / "dd"
    hf.DatasetDict({"train": hf.Dataset.from_dict({"text": ["a", "b"]}),
                    "test": hf.Dataset.from_dict({"text": ["c"]})}).save_to_disk(str(path))
    assert dataset_dict_splits(path) == ["train", "test"]
    assert not is_saved_dataset(path) and format_of(path) is None
    assert is_saved_dataset(path / "train") and dataset_dict_splits(path / "train") is None
    assert [r.value for r in read_records(path / "test")] == [{"text": "c"}]
    (path / "dataset_dict.json").write_text('{"splits": "train"}')
    with pytest.raises(ValueError, match=r"dataset_dict\.json has no 'splits' list"):
        dataset_dict_splits(path)


def test_saved_dataset_errors_name_the_directory_and_the_file(tmp_path: Path, hf):
    path = tmp_path / "saved"
    hf.Dataset.from_dict({"text": ["a", "b", "c"]}).save_to_disk(str(path), num_shards=3)
    state = json.loads((path / "state.json").read_text())

    def fails(pattern: str) -> None:
        with pytest.raises(ValueError, match=pattern):
            list(read_records(path))
        with pytest.raises(ValueError, match=pattern):
            data_files(path)

    with pytest.raises(ValueError, match=rf"^{path}/data-00000-of-00003\.arrow: no column 'body' \(its columns: text\)"):
        list(read_records(path, 0, ["body"]))
    # the layout of datasets 1.x after a select or shuffle: the rows as stored, and their order apart
    (path / "state.json").write_text(json.dumps({**state, "_indices_data_files": [{"filename": "indices.arrow"}]}))
    fails(rf"^{path}: state\.json lists an indices mapping")
    (path / "state.json").write_text('{"_data_files": ')
    fails(rf"^{path}: cannot read state\.json")
    (path / "state.json").write_text('{"_data_files": "data-00000-of-00003.arrow"}')
    fails(rf"^{path}: state\.json has no '_data_files' list")
    outside = tmp_path / "elsewhere.arrow"
    outside.write_bytes((path / "data-00000-of-00003.arrow").read_bytes())
    (path / "state.json").write_text(json.dumps({**state, "_data_files": [{"filename": "../elsewhere.arrow"}]}))
    fails(rf"^{path}: state\.json lists '\.\./elsewhere\.arrow', not a file name in the directory")
    (path / "state.json").write_text(json.dumps(state))
    (path / "data-00001-of-00003.arrow").unlink()
    fails(rf"^{path}: state\.json lists 'data-00001-of-00003\.arrow', which is not a file there")
    (path / "data-00001-of-00003.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(ValueError, match=rf"^{path}: data-00001-of-00003\.arrow is not an Arrow stream"):
        list(read_records(path))


def test_saved_dataset_cut_short_ends_with_one_bad_record(tmp_path: Path, hf, monkeypatch):
    monkeypatch.setattr(hf.config, "DEFAULT_MAX_BATCH_SIZE", 2)
    path = tmp_path / "saved"
    hf.Dataset.from_dict({"text": [f"t{i}" for i in range(10)]}).save_to_disk(str(path))
    arrow = path / "data-00000-of-00001.arrow"
    assert _arrow_batches(arrow) == [2] * 5
    arrow.write_bytes(arrow.read_bytes()[: arrow.stat().st_size // 2])
    *good, bad = read_records(path)
    assert [r.value["text"] for r in good] == [f"t{i}" for i in range(len(good))] and 0 < len(good) < 10
    assert (bad.index, bad.where, bad.value) == (len(good), f"{path}: row {len(good)}", None)
    assert bad.error.startswith("corrupt data: ")
    assert [(r.index, r.error) for r in read_records(path, 9)] == [(9, bad.error)]


# -- text files -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a.txt", "a.md", "a.py"])
def test_text_file_is_one_document(tmp_path: Path, name: str):
    text = "line one\r\nline two\u2028still two\n\n"
    path = _write(tmp_path / name, text.encode())
    assert _rows(path) == [(0, str(path), text, None)]
    assert _rows(path, 1) == []
    path.write_bytes(b"ok\n\xff\xfe\n")
    [(index, where, value, error)] = _rows(path)
    assert (index, where, value) == (0, str(path), None) and error.startswith("not UTF-8 text")


# -- resume: start ----------------------------------------------------------------------------


Built = tuple[Path, "range | list[int]", list[tuple[int, object]]]
"""A source, the starts to try, and what its full read holds: (index, value) of each record."""


def _texts(n: int) -> list[tuple[int, object]]:
    return [(i, {"text": f"t{i}"}) for i in range(n)]


def _jsonl_source(name: str) -> Callable[..., Built]:
    def build(tmp_path: Path, hf, monkeypatch) -> Built:
        lines = [b'{"text": "a"}\n', b"\n", b'{"text": "b"}\n', b"not json\n", b'{"text": "c"}\r\n', b"\n", b"\n",
                 b'{"text": "d"}\n', b'{"text": "e"}']
        oracle = [(1, {"text": "a"}), (3, {"text": "b"}), (4, None), (5, {"text": "c"}), (8, {"text": "d"}),
                  (9, {"text": "e"})]
        return _write(tmp_path / name, b"".join(lines)), range(12), oracle
    return build


def _zst_frames(tmp_path: Path, hf, monkeypatch) -> Built:
    lines = [json.dumps({"text": f"t{i}"}).encode() + b"\n" for i in range(7)]
    path = tmp_path / "f.jsonl.zst"
    path.write_bytes(b"".join(zstandard.ZstdCompressor().compress(b"".join(lines[i:i + 2])) for i in range(0, 7, 2)))
    return path, range(10), [(i + 1, {"text": f"t{i}"}) for i in range(7)]


def _parquet(rows: int, group: int, starts: "range | list[int]") -> Callable[..., Built]:
    def build(tmp_path: Path, hf, monkeypatch) -> Built:
        path = tmp_path / "a.parquet"
        pq.write_table(pa.table({"text": [f"t{i}" for i in range(rows)]}), path, row_group_size=group)
        assert pq.ParquetFile(path).metadata.num_row_groups == -(-rows // group)
        return path, starts, _texts(rows)
    return build


def _saved(rows: int, shards: int, batch: int, starts: "range | list[int]") -> Callable[..., Built]:
    def build(tmp_path: Path, hf, monkeypatch) -> Built:
        monkeypatch.setattr(hf.config, "DEFAULT_MAX_BATCH_SIZE", batch)  # save_to_disk's record batch size
        path = tmp_path / "saved"
        hf.Dataset.from_dict({"text": [f"t{i}" for i in range(rows)]}).save_to_disk(str(path), num_shards=shards)
        batches = [_arrow_batches(f) for f in data_files(path)[1:]]
        assert len(batches) == shards and max(max(b) for b in batches) == min(batch, -(-rows // shards))
        return path, starts, _texts(rows)
    return build


def _text(tmp_path: Path, hf, monkeypatch) -> Built:
    return _write(tmp_path / "a.txt", b"hello\n"), range(3), [(0, "hello\n")]


SOURCES = {**{name: _jsonl_source(name) for name in JSONL}, "zst-frames": _zst_frames,
           "parquet": _parquet(10, 3, range(13)),  # row groups of 3 rows: a start in each
           "parquet-big": _parquet(6000, 3000, [0, 1, 1023, 1024, 1025, 2999, 3000, 3001, 4100, 5999, 6000, 6001]),
           "saved": _saved(10, 3, 2, range(13)),  # files of 4, 3, 3 rows in batches of 2
           # one record batch of 3000 rows, converted 1024 rows at a time
           "saved-big": _saved(3000, 1, 5000, [0, 1, 1023, 1024, 1025, 2047, 2048, 2049, 2999, 3000, 3001]),
           "txt": _text}


@pytest.mark.parametrize("source", SOURCES)
def test_start_skips_exactly_the_records_before_it(tmp_path: Path, hf, monkeypatch, source: str):
    path, starts, oracle = SOURCES[source](tmp_path, hf, monkeypatch)
    full = _rows(path)
    assert [(r[0], r[2]) for r in full] == oracle
    for start in starts:
        assert _rows(path, start) == [r for r in full if r[0] >= start], start


# -- the [data] extra -------------------------------------------------------------------------


def _block(monkeypatch, *modules: str) -> None:
    """Make ``import module`` fail, as when the library is not installed."""
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def test_missing_extra_names_it(tmp_path: Path, hf, monkeypatch):
    table = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a"]}), table)
    saved = tmp_path / "saved"
    hf.Dataset.from_dict({"text": ["a"]}).save_to_disk(str(saved))
    zst = _write(tmp_path / "a.jsonl.zst", b'{"text": "a"}\n')
    gz = _write(tmp_path / "a.jsonl.gz", b'{"text": "a"}\n')
    _block(monkeypatch, "pyarrow", "pyarrow.parquet", "pyarrow.ipc", "zstandard")
    for path, library in [(table, "pyarrow"), (saved, "pyarrow"), (zst, "zstandard")]:
        with pytest.raises(MissingExtra, match=rf"needs {library}, which is not installed: pip install 'discdiff\[data\]'"):
            list(read_records(path))
    assert data_files(saved)[0] == saved / "state.json" and is_saved_dataset(saved)  # no pyarrow needed
    assert [r.value for r in read_records(gz)] == [{"text": "a"}]  # the standard library's formats still read


def test_reader_modules_import_without_the_extra(monkeypatch):
    for short in ("_arrow", "parquet", "saved"):
        name = f"sumi.data.readers.{short}"
        importlib.import_module(name)
        monkeypatch.setattr(readers, short, getattr(readers, short))  # restored, as sys.modules is
        monkeypatch.delitem(sys.modules, name)
    _block(monkeypatch, "pyarrow", "pyarrow.parquet", "pyarrow.ipc")
    for short in ("_arrow", "parquet", "saved"):
        assert importlib.import_module(f"sumi.data.readers.{short}").__name__ == f"sumi.data.readers.{short}"


# -- bounded memory ---------------------------------------------------------------------------

ROWS = 40_000


def _peak_while_reading(path: Path) -> tuple[int, int, int]:
    """(records read, peak Python memory, peak Arrow memory) over reading ``path`` without keeping
    the records."""
    n = arrow_peak = 0
    tracemalloc.start()
    try:
        for _ in read_records(path):
            n += 1
            if n % 512 == 0:
                arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return n, peak, arrow_peak


def test_memory_stays_bounded_whatever_the_file_size(tmp_path: Path):
    texts = [f"document number {i} " + "abc" * (i % 200) for i in range(ROWS)]  # ~320 bytes a row
    table = tmp_path / "big.parquet"
    pq.write_table(pa.table({"text": texts}), table, row_group_size=4000, compression="NONE")
    lines = tmp_path / "big.jsonl"
    lines.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    del texts
    for path in (table, lines):
        assert path.stat().st_size > 12e6
        n, peak, arrow_peak = _peak_while_reading(path)
        assert n == ROWS
        # all the records at once would take ~25 MB of Python objects (and a whole-file read the
        # file's 12 MB); a batch of 1024 rows, or the 1 MB line buffer, is what may stay alive
        assert peak < 3e6, (path.name, peak)
        assert arrow_peak < 6e6, (path.name, arrow_peak)  # a row group of 4000 rows, not the 13 MB file
