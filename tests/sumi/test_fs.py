"""sumi._fs, the file-system helpers every writer shares: modes from the umask, atomic files and
directory swaps, exclusive locks between processes, cleanup of leftovers, checksums, and errors
that name a storage failure (a real ENOSPC from /dev/full, a real file-size limit)."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sumi import _fs

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_umask_is_read_without_changing_it(umask_027):
    assert _fs.umask() == 0o027
    assert _fs.umask() == 0o027


def test_temporaries_and_atomic_files_follow_the_umask(tmp_path, umask_027):
    assert _mode(_fs.temp_file(tmp_path, "f")) == 0o640  # mkstemp alone gives 0600
    assert _mode(_fs.temp_dir(tmp_path, "d")) == 0o750   # mkdtemp alone gives 0700
    written = _fs.atomic_write(tmp_path / "a.json", "{}\n")
    assert written.read_text() == "{}\n" and _mode(written) == 0o640


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "t.txt"
    target.write_text("old")
    _fs.atomic_write(target, b"new bytes")
    assert target.read_bytes() == b"new bytes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt"]


def test_replace_dir_swaps_whole_directories(tmp_path):
    final, staged = tmp_path / "ck", tmp_path / ".ck.tmp-1"
    final.mkdir()
    (final / "a").write_text("old a")
    (final / "only-old").write_text("x")
    staged.mkdir()
    (staged / "a").write_text("new a")
    _fs.replace_dir(staged, final)
    assert sorted(p.name for p in final.iterdir()) == ["a"] and (final / "a").read_text() == "new a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]  # the old contents are gone
    fresh = tmp_path / ".new.tmp-2"
    fresh.mkdir()
    _fs.replace_dir(fresh, tmp_path / "new")  # nothing to replace
    assert (tmp_path / "new").is_dir() and not fresh.exists()


def test_exchange_is_one_atomic_step_on_linux(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "in-a").touch()
    (b / "in-b").touch()
    assert _fs._exchange(a, b)  # renameat2(RENAME_EXCHANGE): Linux 3.15+, glibc 2.28+
    assert (b / "in-a").exists() and (a / "in-b").exists()


def test_replace_dir_without_an_atomic_exchange(tmp_path, monkeypatch):
    """Where the exchange is not offered: the old directory is moved aside first, then deleted."""
    monkeypatch.setattr(_fs, "_exchange", lambda a, b: False)
    final, staged = tmp_path / "ck", tmp_path / ".ck.tmp-1"
    final.mkdir()
    (final / "old").touch()
    staged.mkdir()
    (staged / "new").touch()
    _fs.replace_dir(staged, final)
    assert [p.name for p in final.iterdir()] == ["new"] and sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_remove_leftovers_removes_only_this_names_temporaries(tmp_path):
    for name in (".ck.tmp-abc", ".ck.old-def", ".ckx.tmp-1", "ck", ".other.tmp-2"):
        (tmp_path / name).mkdir()
    (tmp_path / ".ck.tmp-file").write_text("partial")
    removed = sorted(p.name for p in _fs.remove_leftovers(tmp_path, "ck"))
    assert removed == [".ck.old-def", ".ck.tmp-abc", ".ck.tmp-file"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ckx.tmp-1", ".other.tmp-2", "ck"]


def _hold_lock(lock: Path, seconds: float) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import time
        from sumi._fs import exclusive_lock
        with exclusive_lock({str(lock)!r}, 'x'):
            print('locked', flush=True)
            time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_is_refused_and_named(tmp_path):
    lock = tmp_path / ".lock"
    holder = _hold_lock(lock, 60)
    try:
        with pytest.raises(_fs.LockedError, match=rf"the run is in use by pid {holder.pid} on \S+ since "):
            with _fs.exclusive_lock(lock, "the run"):
                pass
    finally:
        holder.kill()
        holder.wait()
    with _fs.exclusive_lock(lock, "the run"):  # a killed holder leaves no stale lock
        assert f"pid {os.getpid()}" in lock.read_text()


def test_wait_blocks_until_the_holder_is_done(tmp_path):
    lock = tmp_path / ".lock"
    holder = _hold_lock(lock, 1.5)
    began = time.monotonic()
    with _fs.exclusive_lock(lock, "the cache", wait=True):
        waited = time.monotonic() - began
    holder.wait()
    assert waited > 0.5


def test_sha256_matches_hashlib(tmp_path):
    paths = []
    for i, size in enumerate([0, 1, 9 * 2**20 + 7, 1000]):  # across the 8 MB read block
        (path := tmp_path / f"f{i}").write_bytes(os.urandom(size))
        paths.append(path)
    expected = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert _fs.sha256_files(paths) == expected == _fs.sha256_files(paths, threads=1)
    assert _fs.sha256_file(paths[2]) == expected[2]


def test_a_real_full_device_is_named(tmp_path):
    """/dev/full fails every write with ENOSPC: the explanation says so."""
    with pytest.raises(OSError) as err:
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 10)
            f.flush()
    assert err.value.errno == errno.ENOSPC
    assert _fs.explain_write_error(err.value, tmp_path).startswith("no space left on device")
    wrapped = RuntimeError("unexpected pos 704 vs 598")
    wrapped.__cause__ = err.value  # a library's own message, with the OS error behind it
    assert _fs.explain_write_error(wrapped, tmp_path).startswith("no space left on device")
    with pytest.raises(_fs.StorageError, match=r"writing x in .* failed: no space left on device"):
        _fs.reraise_storage_error(wrapped, tmp_path, "writing x in")


def test_a_short_write_without_errno_is_explained_by_a_probe(tmp_path):
    """A file-size limit (RLIMIT_FSIZE) in a child process: a library's message carries no errno,
    the probe write finds the cause."""
    code = textwrap.dedent(f"""
        import resource, signal
        from sumi import _fs
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        print(_fs.explain_write_error(RuntimeError("65536 requested and 51168 written"), {str(tmp_path)!r}))
        print(_fs.explain_write_error(RuntimeError("a bug, not storage"), {str(tmp_path)!r}, needed=100))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["file too large (a file-size limit was hit)", "None"]
    assert [p.name for p in tmp_path.iterdir()] == []  # the probe cleaned up


def test_low_free_space_is_reported_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(_fs, "free_bytes", lambda path: 5_000_000)
    with pytest.raises(_fs.StorageError, match="needs about 12.0 MB under .* only 5.0 MB are free"):
        _fs.ensure_space(tmp_path, 12_000_000, "the export")
    _fs.ensure_space(tmp_path, 1_000_000, "the export")


def test_check_writable_dir_names_the_cause(tmp_path):
    assert _fs.check_writable_dir(tmp_path / "a" / "b").is_dir()
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="exists and is not a directory"):
        _fs.check_writable_dir(tmp_path / "file")
    with pytest.raises(OSError, match="not a directory"):
        _fs.check_writable_dir(tmp_path / "file" / "sub")
    with pytest.raises(OSError, match="cannot write to /sys/sumi-test: operation not permitted"):
        _fs.check_writable_dir("/sys/sumi-test")  # sysfs refuses new entries, even to root
