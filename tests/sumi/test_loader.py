"""sumi.data.Loader: determinism, rank slicing, resume (on any world size with the same global
batch), epoch rollover, and the id check against the model's vocabulary; StepFeed: a step's
micro-batches on the device, the next step read ahead without moving the checkpointed position."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sumi.data import Loader, PackedDataset
from sumi.data.loader import StepFeed
from tests.sumi.data_helpers import hand_dataset, rows_dataset


def _take(loader: Loader, n: int) -> list[torch.Tensor]:
    return [loader.next_batch() for _ in range(n)]


def test_loader_is_deterministic_and_seeded(tmp_path):
    ds = rows_dataset(tmp_path / "ds", 40)
    a, b = _take(Loader(ds, 4, seed=3), 12), _take(Loader(ds, 4, seed=3), 12)
    assert all(x.dtype == torch.int64 and x.shape == (4, 4) for x in a)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = _take(Loader(ds, 4, seed=4), 12)
    assert not all(torch.equal(x, y) for x, y in zip(a, c))
    state = torch.random.get_rng_state()
    _take(Loader(ds, 4, seed=3), 3)
    assert torch.equal(state, torch.random.get_rng_state())  # the global RNG is untouched
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a[1][:, 0], perm[4:8])  # the documented order


def test_ranks_partition_the_global_batch(tmp_path):
    ds = rows_dataset(tmp_path / "ds", 50)
    one = Loader(ds, 6, seed=0)
    r0, r1 = Loader(ds, 3, seed=0, rank=0, world_size=2), Loader(ds, 3, seed=0, rank=1, world_size=2)
    seen = []
    for _ in range(one.steps_per_epoch):
        g, a, b = one.next_batch(), r0.next_batch(), r1.next_batch()
        assert torch.equal(torch.cat([a, b]), g)
        assert not set(a[:, 0].tolist()) & set(b[:, 0].tolist())
        seen += g[:, 0].tolist()
    assert len(seen) == len(set(seen)) == 48  # 50 // 6 steps, 2 rows dropped


def test_resume_replays_exactly(tmp_path):
    ds = rows_dataset(tmp_path / "ds", 30)
    full = _take(Loader(ds, 2, seed=7, world_size=1), 10)
    first = Loader(ds, 2, seed=7)
    before = _take(first, 3)
    state = json.loads(json.dumps(first.state_dict()))  # survives a checkpoint round trip
    assert state["epoch"] == 0 and state["step"] == 3 and state["seed"] == 7
    resumed = Loader(ds, 2, seed=7)
    resumed.load_state_dict(state)
    after = _take(resumed, 7)
    assert all(torch.equal(x, y) for x, y in zip(before + after, full))
    rows = torch.cat(before + after)[:, 0].tolist()
    assert len(rows) == len(set(rows)) == 20  # nothing skipped or repeated within the epoch
    # same global batch on another world size resumes too
    r1 = Loader(ds, 1, seed=7, rank=1, world_size=2)
    r1.load_state_dict(state)
    assert torch.equal(r1.next_batch(), full[3][1:])


def _global_batches(ds, steps: int, batch_size: int, world_size: int, global_batch: int, **kw) -> list[torch.Tensor]:
    """Each step's global batch as [global_batch, seq] rows by offset, read through every rank's
    micro-batches (as the training loop reads them)."""
    loaders = [Loader(ds, batch_size, seed=5, rank=r, world_size=world_size, global_batch=global_batch, **kw)
               for r in range(world_size)]
    out = []
    for _ in range(steps):
        rows = [None] * global_batch
        for m in range(loaders[0].micro_batches):
            for loader in loaders:
                batch, start = loader.next_batch(), loader.offset(m)
                for i in range(batch_size):
                    rows[start + i] = batch[i]
        out.append(torch.stack(rows))
    return out


def test_global_batches_do_not_depend_on_ranks_or_micro_batches(tmp_path):
    """The rows at each offset of each step are the same for 1 rank x 4 micro-batches, 2 ranks x
    2, 2 ranks x 1 and 4 ranks x 1: the position and the data are functions of the global batch."""
    ds = rows_dataset(tmp_path / "ds", 37)
    reference = _global_batches(ds, 12, 8, 1, 8)  # one call per step: the documented order
    perm = lambda e: torch.randperm(37, generator=torch.Generator().manual_seed(5 + e))  # noqa: E731
    assert torch.equal(reference[0][:, 0], perm(0)[:8]) and torch.equal(reference[4][:, 0], perm(1)[:8])
    for batch_size, world_size in [(2, 1), (2, 2), (4, 2), (1, 4), (2, 4)]:
        got = _global_batches(ds, 12, batch_size, world_size, 8)
        assert all(torch.equal(a, b) for a, b in zip(got, reference)), (batch_size, world_size)


def test_resume_on_another_world_size(tmp_path):
    """A state saved by 1 rank with 2 micro-batches loads on 2 ranks with 1 (and back): the next
    steps read the same global batches as an uninterrupted run."""
    ds = rows_dataset(tmp_path / "ds", 41)
    straight = _global_batches(ds, 9, 2, 1, 4)
    one = Loader(ds, 2, seed=5, global_batch=4)
    for _ in range(3 * one.micro_batches):
        one.next_batch()
    state = json.loads(json.dumps(one.state_dict()))
    two = [Loader(ds, 2, seed=5, rank=r, world_size=2, global_batch=4) for r in range(2)]
    for loader in two:
        loader.load_state_dict(state)
    for step in range(3, 9):
        assert torch.equal(torch.cat([loader.next_batch() for loader in two]), straight[step]), step
    back = Loader(ds, 1, seed=5, global_batch=4)
    back.load_state_dict(two[1].state_dict())
    assert torch.equal(torch.cat([back.next_batch() for _ in range(4)]), _global_batches(ds, 10, 2, 1, 4)[9])


def test_state_is_taken_between_steps(tmp_path):
    ds = rows_dataset(tmp_path / "ds", 20)
    loader = Loader(ds, 2, seed=0, global_batch=4)
    loader.next_batch()
    with pytest.raises(ValueError, match="inside a step"):
        loader.state_dict()
    loader.next_batch()
    assert loader.state_dict()["step"] == 1
    with pytest.raises(ValueError, match="multiple of batch_size x world_size"):
        Loader(ds, 3, seed=0, world_size=2, global_batch=8)


def test_epoch_rollover(tmp_path):
    ds = rows_dataset(tmp_path / "ds", 10)
    loader = Loader(ds, 3, seed=1)
    assert loader.steps_per_epoch == 3
    e0 = torch.cat(_take(loader, 3))[:, 0]
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["step"] == 0
    e1 = torch.cat(_take(loader, 3))[:, 0]
    g = lambda e: torch.randperm(10, generator=torch.Generator().manual_seed(1 + e))  # noqa: E731
    assert torch.equal(e0, g(0)[:9]) and torch.equal(e1, g(1)[:9])
    keep = Loader(ds, 3, seed=1, drop_last=False)
    assert keep.steps_per_epoch == 4
    last = _take(keep, 4)[-1][:, 0]
    assert torch.equal(last, g(0)[[9, 0, 1]])  # filled up from the start of the permutation
    assert keep.state_dict()["epoch"] == 1


def test_loader_bad_inputs(tmp_path):
    ds = rows_dataset(tmp_path / "ds", 10)
    for kwargs, match in [(dict(batch_size=0), "batch_size"), (dict(world_size=0), "world_size"),
                          (dict(rank=2, world_size=2), r"rank must lie in \[0, world_size=2\)"),
                          (dict(rank=-1), "rank"), (dict(batch_size=6, world_size=2), "fewer than one global batch"),
                          (dict(global_batch=0), "global_batch"),
                          (dict(seed=1.5), "seed")]:
        args = dict(batch_size=2, seed=0) | kwargs
        with pytest.raises(ValueError, match=match):
            Loader(ds, args.pop("batch_size"), **args)
    loader = Loader(ds, 2, seed=0)
    for change, match in [({"seed": 1}, "seed=1"), ({"rows": 11}, "rows=11"), ({"global_batch": 4}, "global_batch"),
                          ({"step": 5}, "steps_per_epoch")]:
        with pytest.raises(ValueError, match=match):
            loader.load_state_dict(loader.state_dict() | change)


def test_loader_checks_ids_against_the_model_vocabulary(tmp_path):
    rows = np.zeros((8, 6), np.uint32)
    rows[5, 2] = 77  # below the manifest's vocab_size (100), above the model's (50)
    ds = PackedDataset(hand_dataset(tmp_path / "ds", [rows], vocab_size=100))
    loader = Loader(ds, 8, seed=0, vocab_size=50)
    with pytest.raises(ValueError, match=r"row 5 of PackedDataset\(.*column 2, holds id 77 >= vocab_size 50"):
        loader.next_batch()
    assert (loader.epoch, loader.step) == (0, 0)  # the failed batch did not advance the position
    assert Loader(ds, 8, seed=0, vocab_size=78).next_batch()[..., 2].max() == 77
    with pytest.raises(ValueError, match="vocab_size"):
        Loader(ds, 8, seed=0, vocab_size=0)


def test_step_feed_gives_the_loader_batches_and_checkpoints_the_taken_position(tmp_path):
    """Reading one step ahead changes neither the batches nor the position a checkpoint records:
    the feed's state after step s equals a plain loader's after s steps, whatever was prefetched."""
    ds = rows_dataset(tmp_path / "ds", 30)
    plain = Loader(ds, 2, seed=5, global_batch=6)  # 3 micro-batches per step
    feed = StepFeed(Loader(ds, 2, seed=5, global_batch=6), "cpu")
    assert feed.state_dict() == plain.state_dict()
    for step in range(7):  # past the epoch's 5 steps: the rollover too
        batches = feed.next_step()
        if step % 2 == 0:
            feed.prefetch()
            feed.prefetch()  # once: a second call reads nothing more
        expected = [(plain.next_batch(), plain.offset(m)) for m in range(3)]
        assert [b.offset for b in batches] == [offset for _, offset in expected] == [0, 2, 4]
        assert all(b.prompt_lengths is None for b in batches) and feed.prompt_lengths is None  # plain rows
        assert all(torch.equal(b.ids, y) and b.ids.device.type == "cpu" for b, (y, _) in zip(batches, expected))
        assert feed.state_dict() == plain.state_dict(), step
    resumed = Loader(ds, 2, seed=5, global_batch=6)
    resumed.load_state_dict(json.loads(json.dumps(feed.state_dict())))  # with step 7 read ahead
    assert torch.equal(resumed.next_batch(), feed.next_step()[0][0])


def test_step_feed_raises_a_read_ahead_error_at_its_own_step(tmp_path):
    """Bad ids in step 2's rows: reading ahead during step 1 does not fail step 1 (its metrics and
    checkpoint come first); taking step 2 raises the loader's error, and the position stays after step 1."""
    rows = np.zeros((8, 6), np.uint32)
    loader = Loader(PackedDataset(hand_dataset(tmp_path / "ds", [rows], vocab_size=100)), 2, seed=0, vocab_size=50)
    bad_rows = loader.indices(0, 1).tolist()  # step 1's rows (0-based): the second step
    rows[bad_rows[0], 3] = 60
    loader = Loader(PackedDataset(hand_dataset(tmp_path / "ds2", [rows], vocab_size=100)), 2, seed=0, vocab_size=50)
    feed = StepFeed(loader, "cpu")
    feed.next_step()
    feed.prefetch()  # meets the bad id: kept for later
    after_first = feed.state_dict()
    assert after_first["step"] == 1
    with pytest.raises(ValueError, match=f"row {bad_rows[0]} of .*holds id 60 >= vocab_size 50"):
        feed.next_step()
    assert feed.state_dict() == after_first
