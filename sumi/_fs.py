"""File-system helpers every writer in sumi shares: atomic files and directories that respect
the umask, an exclusive lock per output, cleanup of what a crashed run left, and errors that
name the cause (a full disk, a read-only directory) instead of a library's internal message.

Naming: a temporary entry for ``NAME`` in a directory is ``.NAME.tmp-XXXXXXXX`` and a displaced
old one ``.NAME.old-XXXXXXXX``; :func:`remove_leftovers` deletes exactly those, and only a
caller holding :func:`exclusive_lock` for ``NAME`` may call it (then no live writer owns them).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

__all__ = ["LockedError", "StorageError", "umask", "temp_file", "temp_dir", "atomic_write", "replace_dir",
           "exclusive_lock", "remove_leftovers", "check_writable_dir", "free_bytes", "explain_write_error",
           "reraise_storage_error", "ensure_space", "sha256_file", "sha256_files"]


class LockedError(RuntimeError):
    """Another live process holds the lock of an output (its pid and host are in the message)."""


class StorageError(OSError):
    """A write failed for a reason of the storage (full, read-only, not permitted), named plainly."""


# -- permissions ------------------------------------------------------------------------------
def umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_name(name: str, kind: str = "tmp") -> str:
    return f".{name}.{kind}-"


def temp_file(directory: str | os.PathLike, name: str) -> Path:
    """An empty hidden file ``.NAME.tmp-XXXX`` in ``directory`` with the mode a plain ``open``
    would give (``0o666 & ~umask``; ``mkstemp`` alone gives 0600)."""
    fd, path = tempfile.mkstemp(prefix=_temp_name(name), dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~umask())
    finally:
        os.close(fd)
    return Path(path)


def temp_dir(directory: str | os.PathLike, name: str, kind: str = "tmp") -> Path:
    """A new hidden directory ``.NAME.<kind>-XXXX`` in ``directory``, mode ``0o777 & ~umask``
    (``mkdtemp`` alone gives 0700)."""
    path = Path(tempfile.mkdtemp(prefix=_temp_name(name, kind), dir=directory))
    os.chmod(path, 0o777 & ~umask())
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside ``path`` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a
    prefix: a temporary sibling, flushed to disk, renamed over ``path``."""
    path = Path(path)
    tmp = temp_file(path.parent, path.name)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        reraise_storage_error(e, path.parent, f"writing {path.name} in")
        raise
    fsync_dir(path.parent)
    return path


# -- directories --------------------------------------------------------------------------------
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def replace_dir(staged: str | os.PathLike, final: str | os.PathLike) -> None:
    """Put the fully written directory ``staged`` at ``final``, replacing what is there as a
    whole.  Where the system can (Linux), the two are exchanged atomically: a reader or a crash
    sees the complete old directory or the complete new one.  Elsewhere the old directory is
    first renamed aside (``.NAME.old-XXXX``), leaving an instant without ``final``.
    The old contents are deleted afterwards."""
    staged, final = Path(staged), Path(final)
    if not final.exists():
        os.replace(staged, final)
    elif _exchange(staged, final):
        shutil.rmtree(staged, ignore_errors=True)  # now the old contents
    else:
        old = temp_dir(final.parent, final.name, "old")
        os.replace(final, old / "contents")
        try:
            os.replace(staged, final)
        except BaseException:
            os.replace(old / "contents", final)
            raise
        shutil.rmtree(old, ignore_errors=True)
    fsync_dir(final.parent)


def remove_leftovers(directory: str | os.PathLike, name: str) -> list[Path]:
    """Delete ``.NAME.tmp-*`` and ``.NAME.old-*`` in ``directory``: what an interrupted write of
    ``NAME`` left.  Call only while holding :func:`exclusive_lock` for ``NAME``."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in directory.iterdir():
        if entry.name.startswith((_temp_name(name, "tmp"), _temp_name(name, "old"))):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


# -- locking ------------------------------------------------------------------------------------
@contextmanager
def exclusive_lock(lock_file: str | os.PathLike, what: str, *, wait: bool = False) -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``lock_file`` (created if needed) for the ``with`` block.

    The file records the holder's pid and host.  A second process gets a :class:`LockedError`
    naming them and ``what`` is locked, or with ``wait=True`` waits for the holder to finish (a
    cache that one process builds while the others wait).  The lock dies with its process (no
    stale lock after a crash or SIGKILL)."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", "replace").strip() or "another process"
            raise LockedError(f"{what} is in use by {holder}; wait for it to finish or choose another "
                              "directory") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        yield lock_file
    finally:
        os.close(fd)  # releases the flock


# -- storage errors -------------------------------------------------------------------------------
def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes on the file system holding ``path`` (its nearest existing ancestor)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


_CAUSES = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large (a file-size limit was hit)",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "not a directory (a part of the path is a file)",
}


def _cause(errnum: int | None, path: str | os.PathLike) -> str | None:
    if errnum not in _CAUSES:
        return None
    cause = _CAUSES[errnum]
    if errnum in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(path)
        cause += f" ({_size(free)} free)" if free is not None else ""
    return cause


def _probe_write(directory: str | os.PathLike, size: int) -> int | None:
    """Write ``size`` bytes to a probe file in ``directory``: the errno if that fails, else None."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
    except OSError as e:
        return e.errno
    try:
        block = b"\0" * min(size, 2**20)
        written = 0
        while written < size:
            written += os.write(fd, block[: size - written])
        os.fsync(fd)
        return None
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)
        os.unlink(probe)


def explain_write_error(error: BaseException, path: str | os.PathLike, needed: int | None = None) -> str | None:
    """A plain cause for a failed write under the directory ``path``, or None when storage is not
    to blame.

    An ``OSError`` in the exception chain says its errno.  Other libraries report a short write
    in their own words (``unexpected pos``, ``requested and written``), so the file system is
    asked: fewer than ``needed`` bytes (default 64 MB) free is a full disk; else a probe file of
    up to 8 MB is written there, and its error, if any, is the cause (a file-size limit, ...)."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:  # the cause may sit in the exception chain
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _CAUSES:
            return _cause(e.errno, path)
        e = e.__cause__ or e.__context__
    free = free_bytes(path)
    if free is not None and free < (needed if needed is not None else 64 * 10**6):
        return f"no space left on device (only {_size(free)} free)"
    if Path(path).is_dir():
        return _cause(_probe_write(path, min(needed or 2**23, 2**23)), path)
    return None


def reraise_storage_error(error: BaseException, path: str | os.PathLike, what: str = "writing",
                          needed: int | None = None) -> None:
    """Raise a :class:`StorageError` saying why ``what`` ``path`` failed, from ``error``, when
    storage is to blame; return otherwise (the caller re-raises ``error``)."""
    cause = explain_write_error(error, path, needed)
    if cause is not None:
        errnum = error.errno if isinstance(error, OSError) and error.errno else errno.EIO
        raise StorageError(errnum, f"{what} {path} failed: {cause}") from error


def ensure_space(path: str | os.PathLike, needed: int, what: str) -> None:
    """Raise a :class:`StorageError` before writing ``needed`` bytes under ``path`` when the file
    system has fewer free."""
    free = free_bytes(path)
    if free is not None and free < needed:
        raise StorageError(errno.ENOSPC, f"{what} needs about {_size(needed)} under {path} but only {_size(free)} "
                                         "are free: no space left on device")


def check_writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` (and parents) if needed and prove it writable with a probe file; raises an
    ``OSError`` whose message names the cause (read-only, permission, not a directory)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        cause = _CAUSES.get(e.errno, e.strerror or str(e))
        raise type(e)(e.errno, f"cannot write to {path}: {cause}") from None
    return path


# -- checksums ------------------------------------------------------------------------------------
_READ_BLOCK = 8 * 2**20


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, hex (what ``sha256sum`` prints), read in 8 MB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        block = bytearray(_READ_BLOCK)
        view = memoryview(block)
        while n := f.readinto(block):
            digest.update(view[:n])
    return digest.hexdigest()


def sha256_files(paths: Iterable[str | os.PathLike], threads: int | None = None) -> list[str]:
    """:func:`sha256_file` of each path, in order, hashed by ``threads`` threads at once
    (hashlib releases the GIL on large blocks; default: up to 8, one per CPU)."""
    paths = list(paths)
    if not paths:
        return []
    threads = threads or min(8, os.cpu_count() or 1, len(paths))
    if threads == 1:
        return [sha256_file(p) for p in paths]
    with ThreadPoolExecutor(threads) as pool:
        return list(pool.map(sha256_file, paths))
