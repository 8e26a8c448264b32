"""Checkpoint integrity and storage faults (one process): a manifest of sizes and SHA-256 in
``COMPLETE``, verification before loading, fallback to the previous intact checkpoint, cleanup of
crashed saves, and storage errors that name their cause (a full disk, a file-size limit)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import sumi
from sumi import _fs
from sumi.configs import tiny
from sumi.distributed import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[2]


def _model(seed: int) -> sumi.Sumi:
    return sumi.Sumi.initialized(tiny(vocab_size=64), generator=torch.Generator().manual_seed(seed))


def _params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _two_checkpoints(tmp_path: Path) -> tuple[dict, dict]:
    """Checkpoints at steps 1 and 2 of two different models; returns their weights."""
    a, b = _model(1), _model(2)
    ckpt.save(tmp_path, 1, a, extra={"tag": "a"})
    ckpt.save(tmp_path, 2, b, extra={"tag": "b"})
    return _params(a), _params(b)


def _flip_bytes(file: Path, offset: int, count: int = 16) -> None:
    data = bytearray(file.read_bytes())
    for i in range(offset, offset + count):
        data[i] ^= 0xFF
    file.write_bytes(bytes(data))


def _shard(path: Path) -> Path:
    (shard,) = path.glob("*.distcp")
    return shard


def test_complete_records_every_file_with_its_sha256(tmp_path):
    path = ckpt.save(tmp_path, 3, _model(0), extra={"x": 1})
    manifest = json.loads((path / ckpt.COMPLETE).read_text())
    files = sorted(f.name for f in path.iterdir() if f.name != ckpt.COMPLETE)
    assert manifest["format"] == ckpt.FORMAT and manifest["step"] == 3 and sorted(manifest["files"]) == files
    for name in files:  # an independent hash of each file
        assert manifest["files"][name] == {"bytes": (path / name).stat().st_size,
                                           "sha256": hashlib.sha256((path / name).read_bytes()).hexdigest()}
    assert ckpt.verify(path) == []


def test_flipped_bytes_are_found_and_the_previous_checkpoint_is_loaded(tmp_path):
    weights_a, weights_b = _two_checkpoints(tmp_path)
    shard = _shard(tmp_path / "step-00000002")
    _flip_bytes(shard, shard.stat().st_size // 2)  # inside the tensor data, same size
    assert ckpt.verify(tmp_path / "step-00000002") == [
        f"{shard} does not match its recorded SHA-256 (the file was changed or damaged)"]
    with pytest.raises(ckpt.CheckpointCorrupt, match="distcp does not match"):
        ckpt.load(tmp_path / "step-00000002", _model(5))
    model = _model(5)
    with pytest.warns(RuntimeWarning, match=r"step-00000002.*distcp does not match.*trying the previous"):
        path, extra = ckpt.load_latest(tmp_path, model)
    assert path.name == "step-00000001" and extra["tag"] == "a"
    for name, value in _params(model).items():
        assert torch.equal(value, weights_a[name]), name
    assert not torch.equal(weights_a["lm_head.weight"], weights_b["lm_head.weight"])


@pytest.mark.parametrize("damage", ["truncate_shard", "delete_metadata", "garble_extra", "garble_complete",
                                    "extra_file"])
def test_every_kind_of_damage_falls_back(tmp_path, damage):
    weights_a, _ = _two_checkpoints(tmp_path)
    bad = tmp_path / "step-00000002"
    if damage == "truncate_shard":
        shard = _shard(bad)
        shard.write_bytes(shard.read_bytes()[:1000])
    elif damage == "delete_metadata":
        (bad / ".metadata").unlink()
    elif damage == "garble_extra":
        (bad / ckpt.EXTRA_NAME).write_text("{not json")
    elif damage == "garble_complete":
        (bad / ckpt.COMPLETE).write_text("\x00\x01")
    else:
        (bad / "stray.bin").write_bytes(b"x")
    assert ckpt.verify(bad), damage
    model = _model(5)
    with pytest.warns(RuntimeWarning, match="step-00000002"):
        path, _ = ckpt.load_latest(tmp_path, model)
    assert path.name == "step-00000001"
    assert all(torch.equal(v, weights_a[k]) for k, v in _params(model).items())


def test_no_intact_checkpoint_is_an_error_listing_each(tmp_path):
    _two_checkpoints(tmp_path)
    for step in (1, 2):
        shard = _shard(tmp_path / f"step-{step:08d}")
        _flip_bytes(shard, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        with pytest.raises(ckpt.CheckpointCorrupt, match=r"no intact checkpoint(.|\n)*step-00000002(.|\n)*step-00000001"):
            ckpt.load_latest(tmp_path, _model(5))


def test_a_checkpoint_without_checksums_still_loads(tmp_path):
    """``COMPLETE`` of an earlier version holds only the directory name: nothing to verify."""
    weights = _params(model := _model(3))
    path = ckpt.save(tmp_path, 4, model)
    (path / ckpt.COMPLETE).write_text(f"{path.name}\n")
    assert ckpt.verify(path) == []
    fresh = _model(9)
    assert ckpt.load_latest(tmp_path, fresh)[0] == path
    assert all(torch.equal(v, weights[k]) for k, v in _params(fresh).items())


def test_clean_removes_only_leftovers(tmp_path):
    _two_checkpoints(tmp_path)
    for name in ("step-00000003.tmp-0a1b2c3d", "step-00000001.old-deadbeef"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x").write_text("partial")
    (tmp_path / "notes").mkdir()
    assert sorted(p.name for p in ckpt.clean(tmp_path)) == ["step-00000001.old-deadbeef", "step-00000003.tmp-0a1b2c3d"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "step-00000001", "step-00000002"]


def test_too_little_free_space_is_reported_before_writing(tmp_path, monkeypatch):
    model = _model(0)
    first = ckpt.save(tmp_path, 1, model)
    monkeypatch.setattr(_fs, "free_bytes", lambda path: 10_000)
    with pytest.raises(_fs.StorageError, match=r"checkpoint step-00000002 needs about .* only 10.0 KB are free: no "
                                               r"space left on device"):
        ckpt.save(tmp_path, 2, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]  # nothing half-written


def test_a_write_that_fails_names_its_cause(tmp_path):
    """A real short write (a file-size limit, RLIMIT_FSIZE, in a child process): torch's writer
    says only "unexpected pos"; the error names the cause and no checkpoint appears."""
    code = textwrap.dedent(f"""
        import resource, signal, sys, torch
        import sumi
        from sumi.configs import tiny
        from sumi.distributed import checkpoint as ckpt
        from sumi._fs import StorageError
        model = sumi.Sumi.initialized(tiny(vocab_size=64), generator=torch.Generator().manual_seed(0))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
        try:
            ckpt.save({str(tmp_path)!r}, 1, model)
        except StorageError as e:
            print("STORAGE", e)
            sys.exit(3)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "writing checkpoint step-00000001 under" in proc.stdout and "file too large" in proc.stdout
    assert list(tmp_path.iterdir()) == []
