"""A resumable, rank-aware batch loader over a :class:`PackedDataset` or :class:`Mixture`.

Order (no global RNG anywhere), with ``G`` = ``global_batch`` (sequences per optimizer step,
all ranks together), ``B`` = ``batch_size`` (sequences per call, per rank), ``W`` = ``world_size``
and ``A = G / (B W)`` micro-batches per rank and step:

- epoch ``e`` visits the rows in the order ``torch.randperm(N, generator=Generator().manual_seed(seed + e))``;
- step ``s`` of the epoch takes positions ``[s G, (s + 1) G)`` of that permutation: the global
  batch.  Call ``m`` (``0 <= m < A``) of rank ``r`` within the step returns the ``B`` rows at
  offsets ``[(m W + r) B, (m W + r + 1) B)`` of the global batch (:meth:`Loader.offset`), so
  the ranks together see exactly the global batch, never overlapping;
- an epoch has ``N // G`` steps (``drop_last=True``: the remainder is skipped) or ``ceil(N / G)``
  (``drop_last=False``: the last global batch is filled up with rows from the start of the same
  permutation), so every batch is ``[B, seq_len]``;
- then the next epoch starts.

The position is ``(epoch, step)`` between steps: :meth:`Loader.state_dict` saves it with the
checkpoint and :meth:`Loader.load_state_dict` restores it, so a resumed run sees exactly the
tokens it would have seen.  The state does not depend on ``B`` or ``W``: a run checkpointed on
``W`` ranks resumes on any other number of ranks with the same global batch (each step reads the
same rows; only their split among ranks and micro-batches differs).

Token ids are checked on the host as rows are read (``vocab_size``), so the training step needs no
check on the device (each would wait for it).

Prompted data (:attr:`Loader.prompted`: rows whose first ``P`` tokens are a prompt, written by
``sumi data prepare --prompted``; docs/training.md, "Prompted data") carries each row's prompt length
``P``: :meth:`Loader.next_rows` returns it with the ids, and :meth:`Loader.global_prompt_lengths`
gives those of a whole global batch on the host, so that the training loop knows how many tokens
a step counts without reading the device.  :class:`StepFeed` hands a step's micro-batches to
the device: on CUDA from pinned memory without blocking, the next step read ahead while the
current one computes.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from sumi._checks import check_int

__all__ = ["Loader", "StepFeed", "MicroBatch"]


class MicroBatch(NamedTuple):
    """One micro-batch of a training step: ``ids`` (long ``[batch, seq_len]``), ``offset`` (its
    first row's index in the step's global batch) and ``prompt_lengths`` (long ``[batch]``, each
    row's prompt length ``P``, on the same device as ``ids``; ``None`` for data without prompts)."""

    ids: Tensor
    offset: int
    prompt_lengths: Tensor | None = None


class Loader:
    """``next_batch()`` -> ``torch.LongTensor [batch_size, seq_len]``; see the module docstring.

    ``global_batch`` defaults to ``batch_size * world_size`` (one micro-batch per step); it must
    be a multiple of it.
    """

    def __init__(self, data, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 global_batch: int | None = None, drop_last: bool = True, vocab_size: int | None = None) -> None:
        self.data = data
        # ids are checked batch by batch (reading every shard up front would take hours at scale)
        self.vocab_size = None if vocab_size is None else check_int("vocab_size", vocab_size, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.world_size = check_int("world_size", world_size, 1)
        self.rank = check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        check_int("seed", seed)
        per_call = self.batch_size * self.world_size
        self.global_batch = per_call if global_batch is None else check_int("global_batch", global_batch, 1)
        if self.global_batch % per_call:
            raise ValueError(f"global_batch ({self.global_batch}) must be a multiple of batch_size x world_size "
                             f"({self.batch_size} x {self.world_size})")
        self.micro_batches = self.global_batch // per_call
        self.seed, self.drop_last = seed, bool(drop_last)
        self.rows = len(data)
        if self.rows < self.global_batch:
            raise ValueError(f"the data has {self.rows} rows, fewer than one global batch ({self.global_batch})")
        self.steps_per_epoch = (self.rows // self.global_batch if drop_last
                                else -(-self.rows // self.global_batch))
        self.epoch = self.step = self.micro = 0
        self._perm_epoch, self._perm = None, None
        self.prompted = bool(getattr(data, "prompted", False))
        """Whether the rows carry prompt lengths (``data.prompted``; ``data.prompt_lengths(indices)``
        then gives them)."""

    def _order(self, epoch: int) -> np.ndarray:
        """The row order of ``epoch`` as a host array: batches are indexed in numpy, without reading
        tensor values one by one."""
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.rows, generator=g).numpy(), epoch
        return self._perm

    def permutation(self, epoch: int) -> torch.Tensor:
        """The row order of ``epoch`` (the same on every rank)."""
        return torch.from_numpy(self._order(epoch))

    def offset(self, micro: int) -> int:
        """Where this rank's micro-batch ``micro`` starts within the global batch of a step."""
        return (micro * self.world_size + self.rank) * self.batch_size

    def _rows(self, epoch: int, step: int, micro: int) -> np.ndarray:
        start = step * self.global_batch + self.offset(micro)
        pos = np.arange(start, start + self.batch_size) % self.rows  # wraps only when drop_last=False
        return self._order(epoch)[pos]

    def indices(self, epoch: int, step: int, micro: int = 0) -> torch.Tensor:
        """The rows (dataset indices) of this rank's micro-batch ``micro`` at ``(epoch, step)``."""
        return torch.from_numpy(self._rows(epoch, step, micro))

    def global_prompt_lengths(self, epoch: int, step: int) -> np.ndarray | None:
        """The prompt lengths (int64 ``[global_batch]``, in global-batch order) of the rows of step
        ``step`` of epoch ``epoch``, all ranks together; ``None`` when the data has no prompts."""
        if not self.prompted:
            return None
        pos = np.arange(step * self.global_batch, (step + 1) * self.global_batch) % self.rows
        return np.asarray(self.data.prompt_lengths(self._order(epoch)[pos]), dtype=np.int64)

    def next_batch(self) -> torch.Tensor:
        """This rank's next micro-batch, ``[batch_size, seq_len]`` int64 (ids checked against
        ``vocab_size`` when given: a ``ValueError`` names the row and column of the first bad id)."""
        return self.next_rows()[0]

    def next_rows(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`next_batch` and the rows' prompt lengths (int64 ``[batch_size]``; ``None`` when
        the data has no prompts)."""
        indices = self._rows(self.epoch, self.step, self.micro)
        rows = [np.asarray(self.data[int(i)]) for i in indices]
        if self.vocab_size is not None:
            for i, row in zip(indices, rows):
                if row.size and int(row.max()) >= self.vocab_size:
                    col = int(np.argmax(row >= self.vocab_size))
                    raise ValueError(f"row {int(i)} of {self.data!r}, column {col}, holds id {int(row[col])} >= "
                                     f"vocab_size {self.vocab_size}: the shards do not match the model's vocabulary")
        prompts = None
        if self.prompted:
            prompts = torch.from_numpy(np.asarray(self.data.prompt_lengths(indices), dtype=np.int64))
        self.micro += 1
        if self.micro == self.micro_batches:
            self.micro, self.step = 0, self.step + 1
            if self.step == self.steps_per_epoch:
                self.epoch, self.step = self.epoch + 1, 0
        return torch.from_numpy(np.stack(rows).astype(np.int64)), prompts

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        """The position between two steps (raises mid-step: a checkpoint is taken between steps)."""
        if self.micro:
            raise ValueError(f"the loader is inside a step ({self.micro} of {self.micro_batches} micro-batches "
                             "read): its position is saved between steps")
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "rows": self.rows,
                "global_batch": self.global_batch, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``'s position; the data, seed, global batch and drop_last must match
        (the micro-batch size and the number of ranks may differ)."""
        for key in ("seed", "rows", "global_batch", "drop_last"):
            if key not in state:
                raise ValueError(f"loader state lacks {key!r}")
            if state[key] != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has "
                                 f"{getattr(self, key)!r}: resuming would not replay the same tokens")
        epoch, step = check_int("epoch", state.get("epoch"), 0), check_int("step", state.get("step"), 0)
        if step >= self.steps_per_epoch:
            raise ValueError(f"loader state step {step} >= steps_per_epoch {self.steps_per_epoch}")
        self.epoch, self.step, self.micro = epoch, step, 0


class StepFeed:
    """The micro-batches of a :class:`Loader`, one optimizer step at a time, on ``device``.

    :meth:`next_step` returns the step's ``loader.micro_batches`` :class:`MicroBatch` objects (ids and
    prompt lengths on device, offset in the global batch); :attr:`prompt_lengths` then holds the
    prompt lengths of that step's whole global batch on the host (``None`` without prompts).
    On CUDA each batch is copied into pinned (page-locked) memory and sent
    with ``non_blocking=True``: the copy is queued behind the running kernels and the host goes
    on.  :meth:`prefetch` reads the next step ahead: called once a step's work is queued, the host
    reads and checks the next rows while the device computes instead of after the next sync.  On
    the CPU the batches are the loader's own tensors (nothing to overlap; the values are the same
    either way).

    :meth:`state_dict` is the loader's position after the last step *taken*, not prefetched, so a
    checkpoint resumes at the right rows.  An error while reading ahead (an id outside the
    vocabulary) is raised by :meth:`next_step` of that step, so the steps before it log and
    checkpoint as they would without read-ahead.
    """

    def __init__(self, loader: Loader, device: torch.device | str) -> None:
        self.loader = loader
        self.device = torch.device(device)
        self.pinned = self.device.type == "cuda"
        self._position = loader.state_dict()  # raises mid-step: a feed starts between steps
        self._ahead: tuple[dict, list[MicroBatch], np.ndarray | None] | BaseException | None = None
        self.prompt_lengths: np.ndarray | None = None
        """The prompt lengths of the global batch of the step last returned by :meth:`next_step`
        (int64 ``[global_batch]`` on the host; ``None`` for data without prompts)."""

    def _send(self, batch: Tensor | None) -> Tensor | None:
        if batch is None:
            return None
        if self.pinned:
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def prefetch(self) -> None:
        """Read the next step's micro-batches and queue their copies (once; nothing if already read)."""
        if self._ahead is not None:
            return
        try:
            loader = self.loader
            prompts = loader.global_prompt_lengths(loader.epoch, loader.step)  # before next_rows moves on
            batches = []
            for m in range(loader.micro_batches):
                ids, lengths = loader.next_rows()
                batches.append(MicroBatch(self._send(ids), loader.offset(m), self._send(lengths)))
            self._ahead = (loader.state_dict(), batches, prompts)
        except Exception as e:  # noqa: BLE001 - raised by next_step, at the step that read it
            self._ahead = e

    def next_step(self) -> list[MicroBatch]:
        """The next step's micro-batches (read now unless :meth:`prefetch` did)."""
        self.prefetch()
        ahead, self._ahead = self._ahead, None
        if isinstance(ahead, BaseException):
            raise ahead
        self._position, batches, self.prompt_lengths = ahead
        return batches

    def state_dict(self) -> dict:
        """:meth:`Loader.state_dict` after the last step taken by :meth:`next_step`."""
        return dict(self._position)
