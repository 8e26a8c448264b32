"""Writing a Hugging Face checkpoint directory as one atomic step, and converting one
(docs/sumi.md, "Checkpoints").

:func:`save_pretrained` writes the complete new checkpoint into a hidden sibling directory
``.NAME.tmp-XXXX`` and then swaps it in for ``NAME`` (:func:`sumi._fs.replace_dir`: atomic on
Linux), so a reader or a crash sees the whole old checkpoint or the whole new one, never a mix of
shards; the old directory's own files (tokenizer, generation config, anything of the user's) are
carried over.  A lock file ``.NAME.lock`` beside the directory keeps two writers apart, and the
writer holding it first deletes what an interrupted save left (:func:`sumi._fs.remove_leftovers`).
Files and directories get the modes the umask gives; a replaced directory keeps its own mode.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file
from torch import Tensor

from sumi._fs import (StorageError, ensure_space, exclusive_lock, fsync_dir, remove_leftovers, replace_dir,
                      reraise_storage_error, temp_dir, umask)
from sumi.configs.model import ModelConfig
from sumi.hf.config import config_to_hf
from sumi.hf.layout import (CONFIG_NAME, SIDE_FILES, WEIGHTS_INDEX_NAME, is_checkpoint_file, parse_dtype,
                            shard_names)
from sumi.hf.reading import checkpoint_dir, from_pretrained, read_config
from sumi.model.transformer import Sumi

__all__ = ["save_pretrained", "convert"]

_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
               "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
# The training values of a source config.json that convert keeps (they do not shape the model).
_KEPT_CONFIG_KEYS = ("uniform_diffusion_beta_is", "uniform_diffusion_z_loss_strength")


def _parse_size(size: int | str) -> int:
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str) and (m := re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", size)) \
            and m.group(2).upper() in _SIZE_UNITS:
        value = int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    else:
        raise ValueError(f"max_shard_size must be a byte count or a string like '5GB' or '500MiB', got {size!r}")
    if value < 1:
        raise ValueError(f"max_shard_size must be positive, got {size!r}")
    return value


def _plan_shards(sizes: Mapping[str, int], max_bytes: int) -> list[list[str]]:
    """Consecutive keys packed greedily (the HF rule): a new shard starts when the next tensor
    would overflow the current one; a tensor larger than the limit gets a shard of its own."""
    shards: list[list[str]] = [[]]
    used = 0
    for key, size in sizes.items():
        if shards[-1] and used + size > max_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += size
    return shards


def _output_dir(path: str | os.PathLike) -> Path:
    """The directory to replace: symlinks resolved (the link stays, its target is rewritten),
    never the working directory or one above it (a process would be left inside a deleted one)."""
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"save_pretrained needs a directory, {str(directory)!r} is a file")
    directory = Path(os.path.realpath(directory))
    cwd = Path.cwd()
    if directory == cwd or directory in cwd.parents:
        raise ValueError(f"cannot save into {str(directory)!r}: it is (or contains) the working directory, which "
                         "the save replaces as a whole; save into a subdirectory, e.g. './checkpoint'")
    return directory


def _write_json(data: Any, file: Path) -> None:
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _carry_over(old: Path, new: Path) -> None:
    """Copy the entries of ``old`` that are not the checkpoint's own (tokenizer, generation
    config, the user's files) into ``new``; ``old`` itself is untouched until the swap."""
    for entry in old.iterdir():
        if is_checkpoint_file(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True)
        else:
            shutil.copy2(entry, new / entry.name, follow_symlinks=False)


def _sync_tree(root: Path) -> None:
    """Flush every file under ``root`` to disk before the swap makes it the checkpoint (a power
    cut must not leave an empty file under a final name)."""
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


def save_pretrained(model: Sumi, path: str | os.PathLike, max_shard_size: int | str = "5GB",
                    dtype: str | torch.dtype | None = None, *, side_files: Iterable[str | os.PathLike] = ()) -> None:
    """Write ``model`` in the release layout: ``config.json`` and ``model.safetensors``, or shards
    ``model-0000i-of-0000N.safetensors`` with ``model.safetensors.index.json`` when the weights
    exceed ``max_shard_size``.

    The directory is replaced as a whole: the new checkpoint is written completely into a hidden
    sibling and swapped in, so a failure or a kill at any point leaves the old checkpoint (or
    none) loadable as it was, never a mix; the old directory's other files (tokenizer, generation
    config, anything of the user's) are carried over, weights of another layout are not.  What an
    interrupted save left beside the directory is deleted by the next one.

    Args:
        model: the model (a :class:`Sumi`, every parameter materialized).
        path: the checkpoint directory (created with its parents if needed).
        max_shard_size: the largest shard in bytes, or a string like ``"5GB"`` or ``"500MiB"``.
        dtype: store in this dtype (default: the model's, which must then be a single one).
        side_files: files to place in the directory with the weights, under their own names
            (e.g. the ``tokenizer.json`` the model was trained with), as part of the same swap.

    Raises:
        sumi._fs.LockedError: another process is saving into the same directory.
        sumi._fs.StorageError: the disk is full or read-only (the old checkpoint is kept).
    """
    _save(model, path, max_shard_size, dtype, side_files=[Path(f) for f in side_files])


def _save(model: Sumi, path: str | os.PathLike, max_shard_size: int | str, dtype: str | torch.dtype | None,
          config_extra: Mapping[str, Any] | None = None, side_files: Iterable[Path] = ()) -> None:
    """:func:`save_pretrained` with extra ``config.json`` keys and files copied into the new
    directory (over carried-over ones of the same name)."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError(f"save_pretrained expects a sumi.Sumi model, got {type(model).__name__}")
    max_bytes = _parse_size(max_shard_size)
    target = parse_dtype(dtype, "dtype")
    state = model.state_dict()
    expected = set(Sumi.on_meta(config).state_dict())
    if set(state) != expected:
        odd = sorted(set(state) ^ expected)
        raise ValueError(f"the model's state dict does not match its config (e.g. {odd[0]!r})")
    meta = [k for k, v in state.items() if v.is_meta]
    if meta:
        raise ValueError(f"cannot save {meta[0]!r}: it is on the meta device (materialize the model first)")
    if target is None:
        dtypes = {v.dtype for v in state.values()}
        if len(dtypes) != 1:
            raise ValueError(f"the model mixes dtypes {sorted(map(str, dtypes))}; pass dtype= to save it in one")
        target = dtypes.pop()
    parse_dtype(target, "the model's dtype")  # floating point only
    directory = _output_dir(path)

    itemsize = torch.empty((), dtype=target).element_size()
    sizes = {k: v.numel() * itemsize for k, v in state.items()}
    shards = _plan_shards(sizes, max_bytes)
    config_json = {**config_to_hf(config, target), **(config_extra or {})}
    parent = directory.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(parent / f".{directory.name}.lock", f"checkpoint directory {str(directory)!r}"):
            remove_leftovers(parent, directory.name)
            ensure_space(parent, sum(sizes.values()), f"saving the checkpoint {str(directory)!r}")
            try:
                staged = temp_dir(parent, directory.name)
                _write_weights(staged, state, shards, sizes, target)
                _write_json(config_json, staged / CONFIG_NAME)
                if directory.is_dir():
                    _carry_over(directory, staged)
                    os.chmod(staged, stat.S_IMODE(directory.stat().st_mode))
                for file in side_files:
                    shutil.copyfile(file, staged / file.name)
                _sync_tree(staged)
                replace_dir(staged, directory)
            except BaseException:
                # With the lock held, every temporary of NAME is this save's: the new files, or
                # the old ones once swapped out.
                remove_leftovers(parent, directory.name)
                raise
    except StorageError:
        raise
    except (OSError, SafetensorError) as e:  # safetensors reports a short write in its own type
        if isinstance(e, OSError) and e.errno in (errno.EBUSY, errno.EXDEV):
            raise OSError(e.errno, f"cannot replace {str(directory)!r} as a whole ({e.strerror}); it may be a "
                                   "mount point: save into a subdirectory of it") from e
        reraise_storage_error(e, parent, f"saving the checkpoint {directory.name!r} into")
        raise


def _write_weights(directory: Path, state: Mapping[str, Tensor], shards: list[list[str]], sizes: Mapping[str, int],
                   dtype: torch.dtype) -> None:
    """The safetensors files (and the index when there are several) of ``state`` in ``directory``."""
    names = shard_names(len(shards))
    for name, keys in zip(names, shards):
        # One shard at a time leaves the device (and converts); nothing else is copied.
        tensors = {k: state[k].detach().to(device="cpu", dtype=dtype).contiguous() for k in keys}
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        del tensors
        os.chmod(directory / name, 0o666 & ~umask())  # safetensors creates its files 0600
    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes.values()),
                              "total_parameters": sum(v.numel() for v in state.values())},
                 "weight_map": {k: name for name, keys in zip(names, shards) for k in keys}}
        _write_json(index, directory / WEIGHTS_INDEX_NAME)


def convert(src: str | os.PathLike, dst: str | os.PathLike, dtype: str | torch.dtype | None = None,
            max_shard_size: int | str = "5GB") -> None:
    """Rewrite the checkpoint at ``src`` into ``dst`` in another ``dtype`` and/or sharding.

    The weights are memory-mapped from ``src`` (one converted copy when ``dtype`` changes) and
    written shard by shard, as one atomic replacement of ``dst`` (:func:`save_pretrained`).  The
    ``uniform_diffusion_*`` training values of ``src``'s config are kept; ``auto_map`` is dropped
    (no remote code is copied).  Plain data side files (:data:`SIDE_FILES`: tokenizer and
    generation configs) are copied when present.  ``dst`` must not be ``src`` itself (symlinks
    resolved): converting in place would overwrite the weights being read, lossily for a
    narrower dtype.

    Args:
        src: the checkpoint directory to read.
        dst: the directory to write (created if needed, replaced as a whole if it exists).
        dtype: the dtype to store (default: keep ``src``'s).
        max_shard_size: the largest shard in bytes, or a string like ``"5GB"`` or ``"500MiB"``.
    """
    src_dir = checkpoint_dir(src)
    dst_dir = Path(dst)
    if dst_dir.exists() and os.path.samefile(src_dir, dst_dir):
        raise ValueError(f"convert: the destination {str(dst)!r} is the source directory {str(src)!r}; converting "
                         "in place would overwrite the weights being read: choose another destination")
    _parse_size(max_shard_size)  # before the (possibly converting) load
    source_config = read_config(src_dir)
    model = from_pretrained(src_dir, dtype=dtype, device="cpu", attention_backend="eager")
    keep = {k: source_config[k] for k in _KEPT_CONFIG_KEYS if k in source_config}
    side_files = [src_dir / name for name in SIDE_FILES if (src_dir / name).is_file()]
    _save(model, dst_dir, max_shard_size, dtype, keep, side_files)
