"""Resumable training checkpoints (torch.distributed.checkpoint) and a consolidated export.

Layout under a checkpoint directory ``DIR``::

    DIR/step-00000012/            one complete checkpoint
        .metadata, __0_0.distcp   DCP: the sharded model + optimizer state (each rank its shards)
        extra.json                JSON written by rank 0: step, loader state, config, ...
        COMPLETE                  written last (JSON: the size and SHA-256 of every other file);
                                  a directory without it is not a checkpoint
    DIR/step-00000014.tmp-3f2a/   a save in progress (or one that crashed): ignored

A save writes everything into ``step-XXXXXXXX.tmp-<nonce>/``; after a barrier (every rank has
written its shards) the files are hashed (each rank hashes a share, several files at a time),
rank 0 writes ``COMPLETE`` and renames the directory into place.  The rename is atomic on a
POSIX filesystem, so :func:`latest` sees either the whole checkpoint or none of it, and a job
killed mid-save resumes from the previous one.  Before writing, the free space is checked
against the size of the state; a failed write names its cause (a full disk, a read-only
directory) instead of the writer's internal message.

:func:`load_latest` verifies a checkpoint's files against ``COMPLETE`` before loading it (every
rank a share) and, when the newest is damaged (a flipped byte, a truncated file, an unreadable
``extra.json``), warns naming the bad file and falls back to the previous intact checkpoint.

Sharded state goes through ``get_state_dict`` / ``set_state_dict``, which name everything by the
plain model's parameter names: a checkpoint written by N ranks loads on M ranks, or in a single
process without a process group.  :func:`export_safetensors` gathers the full weights and writes
the Hugging Face layout (:func:`sumi.hf.save_pretrained`).
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import secrets
import shutil
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from sumi._checks import check_int
from sumi._fs import ensure_space, fsync_dir, reraise_storage_error, sha256_files
from sumi.distributed.setup import barrier, broadcast_object, gather_objects, is_distributed, on_rank0, rank, world_size

__all__ = ["save", "load", "load_latest", "verify", "latest", "keep_last", "clean", "resolve", "step_dir",
           "export_safetensors", "rng_state", "set_rng_state", "CheckpointCorrupt", "COMPLETE"]

COMPLETE = "COMPLETE"
EXTRA_NAME = "extra.json"
FORMAT = "sumi-checkpoint-v1"
_STEP_RE = re.compile(r"^step-(\d{8})$")
_LEFTOVER_RE = re.compile(r"^step-\d{8}\.(tmp|old)-[0-9a-f]+$")


class CheckpointCorrupt(RuntimeError):
    """A checkpoint whose files do not match what its ``COMPLETE`` manifest recorded, or that
    cannot be read (the message names the file)."""


@contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns that it "assumes" a single process when there is no process group; here that is
    the documented intent, not an accident."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*assuming the intent", category=UserWarning)
        yield


def step_dir(directory: str | os.PathLike, step: int) -> Path:
    """``DIR/step-00000012``: the path a complete checkpoint of ``step`` has."""
    check_int("step", step, 0, 10**8 - 1)
    return Path(directory) / f"step-{step:08d}"


def _is_complete(path: Path) -> bool:
    return _STEP_RE.match(path.name) is not None and (path / COMPLETE).is_file()


def _complete(directory: Path) -> list[Path]:
    """Complete checkpoints in ``directory``, oldest step first."""
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if p.is_dir() and _is_complete(p)), key=lambda p: p.name)


def latest(directory: str | os.PathLike) -> Path | None:
    """The complete checkpoint with the highest step in ``directory`` (``None`` if there is none).
    Temporary (``.tmp-*``) directories and any without a ``COMPLETE`` marker are ignored."""
    found = _complete(Path(directory))
    return found[-1] if found else None


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint to load from ``path``: itself when it is a complete checkpoint, else the
    latest complete checkpoint inside it.  Raises :class:`FileNotFoundError` (saying what was
    looked for) when there is none, e.g. ``--resume`` before the first save."""
    p = Path(path)
    if _is_complete(p):
        return p
    if _STEP_RE.match(p.name) and p.is_dir():
        raise FileNotFoundError(f"{str(p)!r} is an incomplete checkpoint (no {COMPLETE} marker): its save did "
                                "not finish; resume from the directory that holds it to pick the latest complete one")
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint to resume from: {str(p)!r} does not exist")
    found = latest(p)
    if found is None:
        raise FileNotFoundError(f"no checkpoint to resume from: {str(p)!r} holds no complete "
                                f"'step-XXXXXXXX/' directory (with a {COMPLETE} marker)")
    return found


def keep_last(directory: str | os.PathLike, k: int) -> list[Path]:
    """Delete all but the ``k`` newest complete checkpoints, and leftovers of crashed saves that
    are older than the newest complete one.  Rank 0 deletes; every rank returns the deleted paths
    after a barrier.  A save in progress (newer than every complete checkpoint) is left alone."""
    check_int("keep_last", k, 1)
    directory = Path(directory)
    removed: list[Path] = []
    if rank() == 0:
        found = _complete(directory)
        removed = found[:-k]
        if found:
            newest = found[-1].name
            removed += [p for p in directory.iterdir()
                        if p.is_dir() and _LEFTOVER_RE.match(p.name) and p.name.split(".")[0] < newest]
        for p in removed:
            shutil.rmtree(p, ignore_errors=True)
    barrier()
    return broadcast_object(removed)


def clean(directory: str | os.PathLike) -> list[Path]:
    """Delete every leftover of an interrupted save in ``directory`` (``step-*.tmp-*`` and
    ``step-*.old-*``).  Only for a caller that knows no save is in progress: the training loop
    calls it on start, holding the lock of its output directory.  Rank 0 deletes."""
    def remove() -> list[Path]:
        directory_ = Path(directory)
        gone = [p for p in directory_.iterdir() if _LEFTOVER_RE.match(p.name)] if directory_.is_dir() else []
        for p in gone:
            shutil.rmtree(p, ignore_errors=True)
        return gone

    return on_rank0(remove)


def _write_file(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optimizer": optim_state}


def _local_bytes(state: Any) -> int:
    """Bytes this rank writes for ``state`` (the local shard of a DTensor)."""
    if isinstance(state, Mapping):
        return sum(_local_bytes(v) for v in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_local_bytes(v) for v in state)
    if isinstance(state, torch.Tensor):
        local = state.to_local() if hasattr(state, "to_local") else state
        return local.numel() * local.element_size()
    return 0


def _files(path: Path) -> list[str]:
    """Every regular file of a checkpoint directory but ``COMPLETE``, sorted."""
    return sorted(f.name for f in path.iterdir() if f.is_file() and f.name != COMPLETE)


def _digests(path: Path, names: list[str]) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of ``names`` in ``path``, every rank hashing its share (rank ``r`` the
    names ``r, r + W, ...``), gathered on every rank."""
    mine = names[rank()::world_size()]
    local = dict(zip(mine, ({"bytes": (path / n).stat().st_size, "sha256": h}
                             for n, h in zip(mine, sha256_files(path / n for n in mine)))))
    merged: dict[str, dict[str, Any]] = {}
    for part in gather_objects(local):
        merged.update(part)
    return merged


def save(directory: str | os.PathLike, step: int, model: nn.Module,
         optimizer: torch.optim.Optimizer | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``{model, optimizer}`` (sharded, every rank its part) and ``extra`` (rank 0's, JSON)
    as ``DIR/step-XXXXXXXX/``; collective (every rank calls it).  Returns the final path.

    ``extra`` must be JSON-serializable (checked before anything is written): step, data loader
    state, :func:`rng_state`, the config as a dict.  An existing checkpoint of the same step is
    replaced.  If any rank fails before the final rename, the checkpoint never becomes visible;
    too little free space is reported before anything is written (:class:`sumi._fs.StorageError`).
    """
    final = step_dir(directory, step)
    state = _state(model, optimizer)
    need = sum(gather_objects(_local_bytes(state)))

    def prepare() -> tuple[str, str]:
        # Only rank 0's extra is written, so only it is checked; every rank learns the verdict (and
        # the directory's nonce) together, so a bad extra fails everywhere instead of hanging a barrier.
        try:
            text = json.dumps({"step": step, **dict(extra or {})}, indent=2, sort_keys=True) + "\n"
        except (TypeError, ValueError) as e:
            raise TypeError(f"extra must be JSON-serializable (lists, dicts, str, numbers; see rng_state): {e}") from None
        final.parent.mkdir(parents=True, exist_ok=True)
        ensure_space(final.parent, need + len(text) + 2**20, f"checkpoint {final.name}")
        nonce = secrets.token_hex(4)
        final.with_name(f"{final.name}.tmp-{nonce}").mkdir()
        return text, nonce

    extra_text, nonce = on_rank0(prepare)
    tmp = final.with_name(f"{final.name}.tmp-{nonce}")
    try:
        with _single_process_ok():
            dcp.save(state, checkpoint_id=str(tmp), no_dist=not is_distributed())
        on_rank0(_write_file, tmp / EXTRA_NAME, extra_text)
        # Every rank has written its shards (dcp.save ends with a collective; this barrier makes the
        # ordering explicit and covers extra.json); only now may the checkpoint be hashed and shown.
        barrier()
        names = broadcast_object(_files(tmp) if rank() == 0 else None)
        manifest = {"format": FORMAT, "step": step, "files": _digests(tmp, names)}
        on_rank0(_publish, tmp, final, nonce, json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    except (Exception, CheckpointException) as e:  # DCP's CheckpointException is a BaseException
        if rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        _reraise_interrupt(e)
        reraise_storage_error(e, final.parent, f"writing checkpoint {final.name} under", need)
        raise
    barrier()
    return final


def _reraise_interrupt(error: BaseException) -> None:
    """A Ctrl-C that DCP caught and wrapped into its ``CheckpointException`` (it gathers every
    rank's failure) is raised again as the ``KeyboardInterrupt`` it was: an interruption, not a
    failed write or a damaged checkpoint.  Also when the interrupt hit inside ``torch.save`` and
    the zip writer's cleanup then failed on the half-written file (a ``RuntimeError`` "unexpected
    pos" whose context is the ``KeyboardInterrupt``): the chain of each failure is searched."""
    failures = getattr(error, "failures", None) if isinstance(error, CheckpointException) else None
    if failures and any(_interrupted(pair[0]) for pair in failures.values()):
        raise KeyboardInterrupt from error


def _interrupted(error: BaseException | None) -> bool:
    """Whether ``error`` is a ``KeyboardInterrupt`` or was raised while handling one."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _publish(tmp: Path, final: Path, nonce: str, manifest: str) -> None:
    _write_file(tmp / COMPLETE, manifest)
    fsync_dir(tmp)
    if final.exists():
        old = final.with_name(f"{final.name}.old-{nonce}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def _manifest(path: Path) -> dict[str, Any] | None:
    """The file table recorded in ``COMPLETE``; ``None`` for a checkpoint written before
    checksums were recorded (``COMPLETE`` then holds only the directory name)."""
    text = (path / COMPLETE).read_text(encoding="utf-8", errors="replace")
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        if text.strip() == path.name:
            return None  # the older marker: nothing recorded to check
        raise CheckpointCorrupt(f"{path / COMPLETE} is not the manifest a save writes (damaged?)") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or not isinstance(data.get("files"), dict):
        raise CheckpointCorrupt(f"{path / COMPLETE} is not the manifest a save writes (damaged?)")
    return data["files"]


def verify(path: str | os.PathLike) -> list[str]:
    """The problems of the checkpoint at ``path`` (a ``step-*`` directory): files missing, of
    another size or another SHA-256 than ``COMPLETE`` recorded, or unexpected; empty when
    intact.  Collective under a process group (each rank hashes a share of the files)."""
    path = Path(path)

    def table() -> tuple[dict | None, list[str], str | None]:
        try:
            return _manifest(path), _files(path), None
        except (OSError, CheckpointCorrupt) as e:
            return None, [], str(e)

    recorded, present, problem = broadcast_object(table() if rank() == 0 else None)
    if problem is not None:
        return [problem]
    if recorded is None:
        return []  # nothing to compare with: loading will tell
    problems = [f"{path / name} is missing" for name in sorted(set(recorded) - set(present))]
    problems += [f"{path / name} was not written by the save" for name in sorted(set(present) - set(recorded))]
    common = sorted(set(recorded) & set(present))
    sized = [n for n in common if (path / n).stat().st_size == recorded[n]["bytes"]]
    problems += [f"{path / n} has {(path / n).stat().st_size} bytes, {recorded[n]['bytes']} were written"
                 for n in common if n not in sized]
    found = _digests(path, sized)
    problems += [f"{path / n} does not match its recorded SHA-256 (the file was changed or damaged)"
                 for n in sized if found[n]["sha256"] != recorded[n]["sha256"]]
    return problems


def load(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load the checkpoint at ``path`` (a ``step-*`` directory, or a directory holding them: the
    latest complete one is used) into ``model`` and ``optimizer`` in place; returns its ``extra``.

    The files are verified against ``COMPLETE`` first.  ``model`` and ``optimizer`` must be set
    up as for training (parallelized the same way or not at all; any number of ranks).  A fresh
    optimizer without state gets its state allocated first.  Raises :class:`FileNotFoundError`
    when there is no complete checkpoint and :class:`CheckpointCorrupt` (naming the file) when it
    is damaged; :func:`load_latest` falls back to an older one instead.
    """
    found = resolve(path)
    problems = verify(found)
    if problems:
        raise CheckpointCorrupt(f"checkpoint {found} is damaged: " + "; ".join(problems[:3])
                                + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))
    try:
        extra = json.loads((found / EXTRA_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointCorrupt(f"{found / EXTRA_NAME} cannot be read: {e}") from None
    state = _state(model, optimizer)
    try:
        with _single_process_ok():
            dcp.load(state, checkpoint_id=str(found), no_dist=not is_distributed())
    except (Exception, CheckpointException) as e:  # DCP gathers every rank's failure: all ranks raise here
        _reraise_interrupt(e)
        raise CheckpointCorrupt(f"checkpoint {found} cannot be loaded ({type(e).__name__}: "
                                f"{str(e).splitlines()[0] if str(e) else ''}); its files may be damaged") from e
    if optimizer is None:
        set_state_dict(model, optimizers=(), model_state_dict=state["model"], optim_state_dict={})
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return extra


def load_latest(directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                ) -> tuple[Path, dict[str, Any]]:
    """Load the newest intact checkpoint of ``directory``: ``(its path, its extra)``.

    A damaged checkpoint (see :func:`load`) is skipped with a warning naming the bad file, and
    the previous one is tried.  Raises :class:`FileNotFoundError` when there is no complete
    checkpoint and :class:`CheckpointCorrupt` (listing every checkpoint's problem) when none is
    intact."""
    found = _complete(Path(directory))
    if not found:
        raise FileNotFoundError(f"no checkpoint to resume from: {str(directory)!r} holds no complete "
                                f"'step-XXXXXXXX/' directory (with a {COMPLETE} marker)")
    failures = []
    for path in reversed(found):
        try:
            return path, load(path, model, optimizer)
        except CheckpointCorrupt as e:
            failures.append(str(e))
            if rank() == 0:
                warnings.warn(f"{e}; trying the previous checkpoint", RuntimeWarning, stacklevel=2)
    raise CheckpointCorrupt("no intact checkpoint to resume from:\n  " + "\n  ".join(failures))


# -- RNG state as JSON ----------------------------------------------------------------------------
def _b64(t: torch.Tensor) -> str:
    # RNG states are uint8 tensors of a few KB (no numpy needed: it is not a dependency).
    return base64.b64encode(bytes(t.cpu().to(torch.uint8).tolist())).decode("ascii")


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state(*generators: torch.Generator) -> dict[str, Any]:
    """This process's RNG states as JSON-able data: Python's, torch's CPU and CUDA default
    generators, and ``generators`` (in order).  Restore with :func:`set_rng_state`."""
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {"python": [version, list(internal), gauss], "torch": _b64(torch.get_rng_state()),
                             "generators": [_b64(g.get_state()) for g in generators]}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping[str, Any], *generators: torch.Generator) -> None:
    """Restore what :func:`rng_state` captured (the same ``generators``, in the same order)."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(_unb64(state["torch"]))
    saved = state.get("generators", [])
    if len(saved) != len(generators):
        raise ValueError(f"the RNG state holds {len(saved)} generators, {len(generators)} were given")
    for g, s in zip(generators, saved):
        g.set_state(_unb64(s))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


# -- consolidated export --------------------------------------------------------------------------
def export_safetensors(model: nn.Module, path: str | os.PathLike, *, dtype: str | torch.dtype | None = None,
                       max_shard_size: int | str = "5GB", side_files: Sequence[str | os.PathLike] = ()) -> None:
    """Write the full weights of a (possibly sharded) Sumi ``model`` in the Hugging Face layout
    at ``path`` (loadable with :func:`sumi.from_pretrained`); collective.

    Every rank takes part in gathering the weights (offloaded to CPU, only rank 0 keeps them);
    rank 0 rebuilds a plain model around them (no copy) and writes it with
    :func:`sumi.hf.save_pretrained`.  ``dtype``: store in this dtype (default: the weights');
    ``side_files``: files placed beside the weights (the tokenizer)."""
    from sumi.hf import save_pretrained
    from sumi.model.transformer import Sumi

    config = getattr(model, "config", None)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    error: BaseException | None = None
    if rank() == 0:
        try:
            if config is None:
                raise TypeError(f"export_safetensors expects a sumi.Sumi model, got {type(model).__name__}")
            plain = Sumi.on_meta(config)
            plain.load_state_dict(state, strict=True, assign=True)
            save_pretrained(plain, path, max_shard_size=max_shard_size, dtype=dtype, side_files=side_files)
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks are released
            error = e
    del state
    failed = broadcast_object(error is not None)
    if error is not None:
        raise error
    if failed:
        raise RuntimeError("export_safetensors failed on rank 0")
