"""A resumable, rank-aware batch loader over a :class:`PackedDataset` or :class:`Mixture`.

Order (no global RNG anywhere):

- epoch ``e`` visits the rows in the order ``torch.randperm(N, generator=Generator().manual_seed(seed + e))``;
- global step ``g`` of the epoch takes positions ``[g*B*W, (g+1)*B*W)`` of that permutation
  (``B`` = per-rank ``batch_size``, ``W`` = ``world_size``), and rank ``r`` takes the ``r``-th
  ``B``-slice of them, so the ranks together see exactly the global batch, never overlapping;
- an epoch has ``N // (B*W)`` steps (``drop_last=True``: the remainder is skipped) or
  ``ceil(N / (B*W))`` (``drop_last=False``: the last global batch is filled up with rows from the
  start of the same permutation), so every batch is ``[B, seq_len]``;
- then the next epoch starts.

The position is ``(epoch, step)``: :meth:`Loader.state_dict` saves it with the checkpoint and
:meth:`Loader.load_state_dict` restores it, so a resumed run sees exactly the tokens it would
have seen.  Only the global batch ``B*W`` must stay the same across a restart.
"""

from __future__ import annotations

import numpy as np
import torch

from sumi._checks import check_int


class Loader:
    """``next_batch()`` -> ``torch.LongTensor [batch_size, seq_len]``; see the module docstring."""

    def __init__(self, data, batch_size: int, *, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, vocab_size: int | None = None) -> None:
        self.data = data
        # ids are checked batch by batch (reading every shard up front would take hours at scale)
        self.vocab_size = None if vocab_size is None else check_int("vocab_size", vocab_size, 1)
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.world_size = check_int("world_size", world_size, 1)
        self.rank = check_int("rank", rank, 0)
        if rank >= world_size:
            raise ValueError(f"rank must lie in [0, world_size={world_size}), got {rank}")
        check_int("seed", seed)
        self.seed, self.drop_last = seed, bool(drop_last)
        self.rows, self.global_batch = len(data), self.batch_size * self.world_size
        if self.rows < self.global_batch:
            raise ValueError(f"the data has {self.rows} rows, fewer than one global batch "
                             f"(batch_size {batch_size} x world_size {world_size} = {self.global_batch})")
        self.steps_per_epoch = (self.rows // self.global_batch if drop_last
                                else -(-self.rows // self.global_batch))
        self.epoch = self.step = 0
        self._perm_epoch, self._perm = None, None

    def permutation(self, epoch: int) -> torch.Tensor:
        """The row order of ``epoch`` (the same on every rank)."""
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.rows, generator=g), epoch
        return self._perm

    def indices(self, epoch: int, step: int) -> torch.Tensor:
        """The rows (dataset indices) of this rank's batch at ``(epoch, step)``."""
        start = step * self.global_batch + self.rank * self.batch_size
        pos = torch.arange(start, start + self.batch_size) % self.rows  # wraps only when drop_last=False
        return self.permutation(epoch)[pos]

    def next_batch(self) -> torch.Tensor:
        indices = self.indices(self.epoch, self.step)
        rows = [np.asarray(self.data[int(i)]) for i in indices]
        if self.vocab_size is not None:
            for i, row in zip(indices, rows):
                if row.size and int(row.max()) >= self.vocab_size:
                    col = int(np.argmax(row >= self.vocab_size))
                    raise ValueError(f"row {int(i)} of {self.data!r}, column {col}, holds id {int(row[col])} >= "
                                     f"vocab_size {self.vocab_size}: the shards do not match the model's vocabulary")
        self.step += 1
        if self.step == self.steps_per_epoch:
            self.epoch, self.step = self.epoch + 1, 0
        return torch.from_numpy(np.stack(rows).astype(np.int64))

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "step": self.step, "seed": self.seed, "rows": self.rows,
                "global_batch": self.global_batch, "drop_last": self.drop_last}

    def load_state_dict(self, state: dict) -> None:
        """Resume at ``state``'s position; the data, seed, global batch and drop_last must match."""
        for key in ("seed", "rows", "global_batch", "drop_last"):
            if key not in state:
                raise ValueError(f"loader state lacks {key!r}")
            if state[key] != getattr(self, key):
                raise ValueError(f"loader state has {key}={state[key]!r} but this loader has "
                                 f"{getattr(self, key)!r}: resuming would not replay the same tokens")
        epoch, step = check_int("epoch", state.get("epoch"), 0), check_int("step", state.get("step"), 0)
        if step >= self.steps_per_epoch:
            raise ValueError(f"loader state step {step} >= steps_per_epoch {self.steps_per_epoch}")
        self.epoch, self.step = epoch, step
