"""The held-out split of the embedded standard-library corpus: fixed by a hash of each file's
path (recomputed here with hashlib), disjoint from the training split, never read by the
embedded default's tokenizer or data, and named ``stdlib:heldout`` / ``stdlib:train`` as data."""

from __future__ import annotations

import hashlib
import sys

import pytest

from sumi.data import iter_documents, stdlib_files
from sumi.data.sources import HELDOUT_ONE_IN, is_heldout, resolve_files, stdlib_root, stdlib_split
from sumi.tokenizer import SumiTokenizer
from sumi.train import embedded


def _relative(path) -> str:
    return path.relative_to(stdlib_root()).as_posix()


def test_the_splits_are_disjoint_complete_deterministic_and_follow_the_hash():
    train, heldout = stdlib_split("train"), stdlib_split("heldout")
    assert stdlib_split("train") == train and stdlib_split("heldout") == heldout  # the same on every call
    assert not set(train) & set(heldout)
    assert sorted(train + heldout) == stdlib_files()
    for path in stdlib_files():  # the rule, recomputed: blake2b-64 of the relative path, mod 50
        digest = hashlib.blake2b(_relative(path).encode(), digest_size=8).digest()
        assert (path in heldout) == (int.from_bytes(digest, "big") % 50 == 0), path
    assert HELDOUT_ONE_IN == 50
    # about 2% of the files (CPython 3.11: 20 of 734, 281 KB of 12.1 MB)
    assert 0.005 < len(heldout) / len(stdlib_files()) < 0.05
    assert 50_000 < sum(p.stat().st_size for p in heldout) < 1_000_000


def test_a_files_split_depends_on_its_relative_path_only():
    assert is_heldout("email/utils.py") and is_heldout("ipaddress.py")  # held out on every machine
    assert not is_heldout("os.py") and not is_heldout("email/message.py")
    with pytest.raises(ValueError, match="stdlib:test.*stdlib:train or stdlib:heldout"):
        stdlib_split("test")


def test_the_embedded_default_trains_model_and_tokenizer_on_the_training_split_only(monkeypatch, tmp_path):
    corpus = embedded.corpus_files()
    heldout = set(stdlib_split("heldout"))
    assert set(corpus) <= set(stdlib_split("train")) and not set(corpus) & heldout
    assert embedded.split_files("train") == corpus and embedded.split_files("heldout") == stdlib_split("heldout")
    # the tokenizer reads exactly the corpus files (stopped before the BPE is trained)
    read = []

    class Stop(Exception):
        pass

    def spy(texts, vocab_size):
        read.extend(texts)
        raise Stop

    monkeypatch.setenv("SUMI_CACHE", str(tmp_path))
    monkeypatch.setattr(SumiTokenizer, "train_byte_level", staticmethod(spy))
    with pytest.raises(Stop):
        embedded.tokenizer(progress=False)
    assert read == [p.read_text(encoding="utf-8", errors="replace") for p in corpus]


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_prepare_embedded_packs_the_files_of_the_split(monkeypatch, tmp_path, split):
    packed = {}
    monkeypatch.setenv("SUMI_CACHE", str(tmp_path))
    monkeypatch.setattr(embedded, "tokenizer", lambda progress=True: SumiTokenizer.default())
    monkeypatch.setattr(embedded, "prepare", lambda files, tok, out, seq_len, **kw: packed.update(files=files, out=out))
    data_dir, _ = embedded.prepare_embedded(64, split=split, progress=False)
    assert packed["files"] == [str(p) for p in embedded.split_files(split)]
    assert data_dir == packed["out"] and data_dir.parent == embedded._root()
    assert data_dir.name == ("data-64" if split == "train" else "data-heldout-64")  # never the same cache
    with pytest.raises(ValueError, match="split"):
        embedded.prepare_embedded(64, split="test")


def test_the_cache_key_names_the_split(monkeypatch, tmp_path):
    """A cache built before the split (key without the held-out share) trained its tokenizer on
    files now held out: the key differs, so it is never reused; another share, another key."""
    monkeypatch.setenv("SUMI_CACHE", str(tmp_path))
    root = embedded._root()
    before = f"stdlib-py{sys.version_info.major}{sys.version_info.minor}-{embedded.CORPUS_BYTES}"  # the old key
    assert root.parent == tmp_path and root.name != before
    monkeypatch.setattr(embedded, "HELDOUT_ONE_IN", 7)
    assert embedded._root() != root


def test_stdlib_names_are_data_sources():
    assert resolve_files("stdlib:heldout") == stdlib_split("heldout")
    assert resolve_files(["stdlib:train"]) == stdlib_split("train")
    heldout = stdlib_split("heldout")
    texts = list(iter_documents(["stdlib:heldout"]))
    assert texts == [t for t in (p.read_text(encoding="utf-8") for p in heldout) if t]
    with pytest.raises(ValueError, match="unknown standard-library split stdlib:valid"):
        resolve_files(["stdlib:valid"])
