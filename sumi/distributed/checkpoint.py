"""Resumable training checkpoints (torch.distributed.checkpoint) and a consolidated export.

Layout under a checkpoint directory ``DIR``::

    DIR/step-00000012/            one complete checkpoint
        .metadata, __0_0.distcp   DCP: the sharded model + optimizer state (each rank its shards)
        extra.json                JSON written by rank 0: step, loader state, RNG states, config
        COMPLETE                  written last; a directory without it is not a checkpoint
    DIR/step-00000014.tmp-3f2a/   a save in progress (or one that crashed): ignored

A save writes everything into ``step-XXXXXXXX.tmp-<nonce>/``; after a barrier (every rank has
written its shards) rank 0 writes ``COMPLETE`` and renames the directory into place.  The rename
is atomic on a POSIX filesystem, so :func:`latest` sees either the whole checkpoint or none of it,
and a job killed mid-save resumes from the previous one.

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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)

from sumi._checks import check_int

__all__ = ["save", "load", "latest", "keep_last", "resolve", "step_dir", "export_safetensors",
           "rng_state", "set_rng_state", "COMPLETE"]

COMPLETE = "COMPLETE"
EXTRA_NAME = "extra.json"
_STEP_RE = re.compile(r"^step-(\d{8})$")


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _rank() -> int:
    return dist.get_rank() if _distributed() else 0


def _barrier() -> None:
    if _distributed():
        dist.barrier()


@contextmanager
def _single_process_ok() -> Iterator[None]:
    """DCP warns that it "assumes" a single process when there is no process group; here that is
    the documented intent, not an accident."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is .*assuming the intent", category=UserWarning)
        yield


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not _distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


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
    if _rank() == 0:
        found = _complete(directory)
        removed = found[:-k]
        if found:
            newest = found[-1].name
            removed += [p for p in directory.iterdir()
                        if p.is_dir() and ".tmp-" in p.name and p.name.split(".tmp-")[0] < newest]
        for p in removed:
            shutil.rmtree(p, ignore_errors=True)
    _barrier()
    return _broadcast(removed)


def _fsync_dir(path: Path) -> None:
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


def save(directory: str | os.PathLike, step: int, model: nn.Module,
         optimizer: torch.optim.Optimizer | None = None, extra: Mapping[str, Any] | None = None) -> Path:
    """Write ``{model, optimizer}`` (sharded, every rank its part) and ``extra`` (rank 0's, JSON)
    as ``DIR/step-XXXXXXXX/``; collective (every rank calls it).  Returns the final path.

    ``extra`` must be JSON-serializable (checked before anything is written): step, data loader
    state, :func:`rng_state`, the config as a dict.  An existing checkpoint of the same step is
    replaced.  If any rank fails before the final rename, the checkpoint never becomes visible.
    """
    final = step_dir(directory, step)
    # Only rank 0's extra is written, so only it is checked; every rank learns the verdict (and
    # the directory's nonce) together, so a bad extra fails everywhere instead of hanging a barrier.
    extra_text = problem = None
    if _rank() == 0:
        try:
            extra_text = json.dumps({"step": step, **dict(extra or {})}, indent=2, sort_keys=True) + "\n"
        except (TypeError, ValueError) as e:
            problem = f"extra must be JSON-serializable (lists, dicts, str, numbers; see rng_state): {e}"
    nonce, problem = _broadcast((secrets.token_hex(4), problem) if _rank() == 0 else None)
    if problem is not None:
        raise TypeError(problem)
    tmp = final.with_name(f"{final.name}.tmp-{nonce}")
    if _rank() == 0:
        tmp.mkdir(parents=True, exist_ok=False)
    _barrier()
    with _single_process_ok():
        dcp.save(_state(model, optimizer), checkpoint_id=str(tmp), no_dist=not _distributed())
    if _rank() == 0:
        _write_file(tmp / EXTRA_NAME, extra_text)
    # Every rank has written its shards (dcp.save ends with a collective; this barrier makes the
    # ordering explicit and covers extra.json); only now may the checkpoint become visible.
    _barrier()
    if _rank() == 0:
        _write_file(tmp / COMPLETE, f"{final.name}\n")
        _fsync_dir(tmp)
        if final.exists():
            old = final.with_name(f"{final.name}.old-{nonce}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    _barrier()
    return final


def load(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """Load the checkpoint at ``path`` (a ``step-*`` directory, or a directory holding them: the
    latest complete one is used) into ``model`` and ``optimizer`` in place; returns its ``extra``.

    ``model`` and ``optimizer`` must be set up as for training (parallelized the same way or not
    at all; any number of ranks).  A fresh optimizer without state gets its state allocated first.
    Raises :class:`FileNotFoundError` when there is no complete checkpoint.
    """
    found = resolve(path)
    state = _state(model, optimizer)
    with _single_process_ok():
        dcp.load(state, checkpoint_id=str(found), no_dist=not _distributed())
    if optimizer is None:
        set_state_dict(model, optimizers=(), model_state_dict=state["model"], optim_state_dict={})
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])
    return json.loads((found / EXTRA_NAME).read_text(encoding="utf-8"))


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
                       max_shard_size: int | str = "5GB") -> None:
    """Write the full weights of a (possibly sharded) Sumi ``model`` in the Hugging Face layout
    at ``path`` (loadable with :func:`sumi.from_pretrained`); collective.

    Every rank takes part in gathering the weights (offloaded to CPU, only rank 0 keeps them);
    rank 0 rebuilds a plain model around them (no copy) and writes it with
    :func:`sumi.hf.save_pretrained`.  ``dtype``: store in this dtype (default: the weights')."""
    from sumi.hf import save_pretrained
    from sumi.model.transformer import Sumi

    config = getattr(model, "config", None)
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    error: BaseException | None = None
    if _rank() == 0:
        try:
            if config is None:
                raise TypeError(f"export_safetensors expects a sumi.Sumi model, got {type(model).__name__}")
            plain = Sumi.on_meta(config)
            plain.load_state_dict(state, strict=True, assign=True)
            save_pretrained(plain, path, max_shard_size=max_shard_size, dtype=dtype)
        except BaseException as e:  # noqa: BLE001 - re-raised below, after the other ranks are released
            error = e
    del state
    failed = _broadcast(error is not None)
    if error is not None:
        raise error
    if failed:
        raise RuntimeError("export_safetensors failed on rank 0")
