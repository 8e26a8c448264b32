"""sumi.distributed: FSDP2 on two CPU ranks (gloo) against one process on the same global batch,
DCP checkpoints (save on 2 ranks, load on 2 ranks or in one process; a crash mid-save), keep_last,
parameter names after parallelize, Sumi's fused objective (loss from hidden states and the head's
weight) under FSDP2, and the consolidated safetensors export.

The multi-process tests share one 2-rank job (``python -m tests.sumi.test_distributed``, launched
like torchrun: RANK/WORLD_SIZE/MASTER_ADDR=127.0.0.1/MASTER_PORT): it runs every scenario once,
asserts what only the ranks can see, and leaves tensors in a directory for the tests to compare
with a single-process oracle.  A hung collective fails on the process-group timeout, and the
job itself on a wall-clock timeout.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import sumi
from sumi.configs import tiny
from sumi.distributed import checkpoint as ckpt
from sumi.distributed import init_distributed, parallelize

REPO = Path(__file__).resolve().parents[2]
WORLD = 2
GLOBAL_BATCH, SEQ, VOCAB = 4, 16, 128
LR = 1e-3
# Adam's first step moves a weight by lr * g / (|g| + eps): for |g| near eps, the last-bit
# difference between summing the batch in one process or in two halves (~1e-10 here) is amplified
# by up to lr / eps.  eps = 1e-5 bounds that well under the 1e-6 tolerance (1e-8 would not).
ADAM_EPS = 1e-5
JOB_TIMEOUT_S = 600  # a hang detector, with room for a busy machine
COLLECTIVE_TIMEOUT = timedelta(seconds=300)


# -- the shared recipe: same model, batch, loss and optimizer in every process ------------------
def _config():
    return tiny(vocab_size=VOCAB, attention_backend="eager")


def _model(seed: int = 0) -> sumi.Sumi:
    return sumi.Sumi.initialized(_config(), generator=torch.Generator().manual_seed(seed))


def _batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ), generator=torch.Generator().manual_seed(7))


def _loss(model, tokens: torch.Tensor, global_tokens: int) -> torch.Tensor:
    """Summed token cross-entropy over this process's tokens / the global token count: the sum
    over ranks is the global-batch mean (the objective proper is written elsewhere)."""
    logits = model(tokens)
    return F.cross_entropy(logits.float().flatten(0, 1), tokens.flatten(), reduction="sum") / global_tokens


def _objective_case():
    """Sumi's objective on the global batch: (fused objective, plain objective, tokens, noise)."""
    from sumi.train import Objective

    fused, plain = Objective(VOCAB, z_loss=1e-2, fused=True), Objective(VOCAB, z_loss=1e-2)
    tokens = _batch()
    return fused, plain, tokens, plain.add_noise(tokens, torch.Generator().manual_seed(3))


def _optimizer(model) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, eps=ADAM_EPS, weight_decay=0.1, foreach=False)


def _full(t: torch.Tensor) -> torch.Tensor:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def _step(model, optimizer, tokens: torch.Tensor, global_tokens: int) -> dict[str, torch.Tensor]:
    """One AdamW step; returns the full gradients (gathered from the shards)."""
    _loss(model, tokens, global_tokens).backward()
    grads = {name: _full(p.grad) for name, p in model.named_parameters()}
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return grads


def _full_params(model) -> dict[str, torch.Tensor]:
    return {name: _full(p) for name, p in model.named_parameters()}


def _full_optim_state(model, optimizer) -> dict[str, dict[str, torch.Tensor]]:
    names = {p: n for n, p in model.named_parameters()}
    return {names[p]: {k: _full(v) for k, v in s.items()} for p, s in optimizer.state.items()}


def _reference() -> tuple[dict, dict, dict]:
    """The single-process oracle: one step on the whole global batch."""
    model = _model()
    optimizer = _optimizer(model)
    grads = _step(model, optimizer, _batch(), GLOBAL_BATCH * SEQ)
    return grads, _full_params(model), _full_optim_state(model, optimizer)


def _assert_close(a: dict, b: dict, atol: float = 1e-6) -> None:
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_close(a[k], b[k], atol)
        else:
            diff = (a[k].double() - b[k].double()).abs().max().item()
            assert diff <= atol, f"{k}: max abs diff {diff:.3g}"


# -- the 2-rank job ------------------------------------------------------------------------------
def _worker(out: Path) -> None:
    """Every scenario, on each rank of a gloo process group started from the torchrun environment."""
    torch.set_num_threads(1)
    info = init_distributed("gloo", timeout=COLLECTIVE_TIMEOUT)
    assert (info.world_size, info.device) == (WORLD, torch.device("cpu")) and torch.distributed.is_initialized()
    rank = info.rank
    per_rank = GLOBAL_BATCH // WORLD
    tokens = _batch()[rank * per_rank:(rank + 1) * per_rank]

    # (5) names: FSDP2 + checkpointing rename nothing.
    plain = _model()
    model = parallelize(_model(), mixed_precision=False, activation_checkpointing=True, compile_blocks=False)
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert list(model.state_dict()) == list(plain.state_dict())
    assert all(hasattr(p, "full_tensor") for p in model.parameters()), "parameters are not sharded"
    model_sd, optim_sd = ckpt.get_state_dict(model, _optimizer(model))
    assert list(model_sd) == list(plain.state_dict())
    assert list(optim_sd["param_groups"][0]["params"]) == [n for n, _ in plain.named_parameters()]

    # (1) one step on half the global batch per rank.
    optimizer = _optimizer(model)
    grads = _step(model, optimizer, tokens, GLOBAL_BATCH * SEQ)
    params, optim_state = _full_params(model), _full_optim_state(model, optimizer)
    if rank == 0:
        torch.save({"grads": grads, "params": params, "optim": optim_state}, out / "step.pt")

    # (2) DCP save on 2 ranks, load into a fresh 2-rank model + optimizer.
    ckdir = out / "ckpt"
    extra = {"loader": {"shard": 3, "offset": 17}, "config": {"hidden_size": 64},
             "rng": ckpt.rng_state(torch.Generator().manual_seed(0))}
    saved = ckpt.save(ckdir, 1, model, optimizer, extra=extra)
    assert saved == ckdir / "step-00000001" and (saved / ckpt.COMPLETE).is_file()
    assert ckpt.latest(ckdir) == saved
    fresh = parallelize(_model(seed=99), mixed_precision=False, activation_checkpointing=False, compile_blocks=False)
    fresh_opt = _optimizer(fresh)
    got = ckpt.load(ckdir, fresh, fresh_opt)
    # rank 0's extra, as JSON, on every rank (Python's RNG differs per rank: not compared).
    assert (got["step"], got["loader"], got["config"]) == (1, extra["loader"], extra["config"])
    assert got["rng"]["generators"] == extra["rng"]["generators"]
    _assert_close(_full_params(fresh), params, atol=0.0)
    _assert_close(_full_optim_state(fresh, fresh_opt), optim_state, atol=0.0)
    # The loaded run continues exactly like the original one.
    _step(model, optimizer, tokens, GLOBAL_BATCH * SEQ)
    _step(fresh, fresh_opt, tokens, GLOBAL_BATCH * SEQ)
    _assert_close(_full_params(fresh), _full_params(model), atol=0.0)

    # (3) a failure after the shards are written, before the marker and the rename.
    real_save = ckpt.dcp.save

    def crashing_save(*args, **kwargs):
        real_save(*args, **kwargs)
        raise RuntimeError("simulated crash")

    ckpt.dcp.save = crashing_save
    try:
        ckpt.save(ckdir, 2, model, optimizer)
        raise AssertionError("the simulated crash did not happen")
    except RuntimeError as e:
        assert "simulated crash" in str(e)
    finally:
        ckpt.dcp.save = real_save
    torch.distributed.barrier()
    assert ckpt.latest(ckdir) == saved
    # a failure the ranks see (not a kill) removes its partial directory
    assert not list(ckdir.glob("step-00000002.tmp-*")), "the failed save left its temporary directory"
    ckpt.save(ckdir, 3, model, optimizer)
    ckpt.save(ckdir, 4, model, optimizer)
    assert ckpt.latest(ckdir) == ckdir / "step-00000004"
    removed = ckpt.keep_last(ckdir, 2)
    assert sorted(p.name for p in removed)[0] == "step-00000001"
    assert sorted(p.name for p in ckdir.iterdir()) == ["step-00000003", "step-00000004"]

    # bfloat16 compute with float32 master weights, gradients and reductions.
    mixed = parallelize(_model(), mixed_precision=True, activation_checkpointing=True, compile_blocks=False)
    loss = _loss(mixed, tokens, GLOBAL_BATCH * SEQ)
    loss.backward()
    assert {p.dtype for p in mixed.parameters()} == {p.grad.dtype for p in mixed.parameters()} == {torch.float32}
    assert abs(loss.item() - _loss(plain, tokens, GLOBAL_BATCH * SEQ).item()) < 2e-2

    # (8) the fused objective (hidden states + the root's lm_head.weight, gathered by FSDP2 from
    # the forward until the backward) on half the batch per rank.
    fused_obj, _, all_tokens, noised = _objective_case()
    half = slice(rank * per_rank, (rank + 1) * per_rank)
    local = type(noised)(z=noised.z[half], lam=noised.lam[half], t=noised.t[half], per_token=noised.per_token[half])
    fused_model = parallelize(_model(), mixed_precision=False, activation_checkpointing=True, compile_blocks=False)
    terms = fused_obj.model_loss(fused_model, all_tokens[half], local)
    (terms.loss_sum / (GLOBAL_BATCH * SEQ)).backward()
    fused_grads = {name: _full(p.grad) for name, p in fused_model.named_parameters()}
    if rank == 0:
        torch.save(fused_grads, out / "fused_grads.pt")

    # (7) meta -> shard -> allocate -> initialize: the shards hold the single-process init.
    sharded = parallelize(sumi.Sumi.on_meta(_config()), mixed_precision=False, activation_checkpointing=False,
                          compile_blocks=False)
    sharded.to_empty(device="cpu")
    sharded.init_weights(torch.Generator().manual_seed(0))
    assert all(p.to_local().shape[0] < p.shape[0] for p in sharded.parameters()), "not sharded"
    init = _full_params(sharded)
    if rank == 0:
        torch.save(init, out / "init.pt")
        sumi.hf.save_pretrained(_model(seed=3), out / "seed3")
    torch.distributed.barrier()
    # ... and a previous phase's model loads into the shards (each rank copies its slice).
    sumi.hf.load_weights(sharded, out / "seed3")
    _assert_close(_full_params(sharded), _full_params(_model(seed=3)), atol=0.0)

    # (6) consolidated export of the sharded model (rank 0 writes).
    ckpt.export_safetensors(model, out / "export")
    final = _full_params(model)  # a collective: every rank gathers
    if rank == 0:
        torch.save(final, out / "final.pt")
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out: Path) -> float:
    """Start WORLD ranks as torchrun would (loopback only); fail on a nonzero exit or a timeout."""
    base = {**os.environ, "WORLD_SIZE": str(WORLD), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
            "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    if any(name == "lo" for _, name in socket.if_nameindex()):
        base["GLOO_SOCKET_IFNAME"] = "lo"
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "tests.sumi.test_distributed", str(out)], cwd=REPO,
                              env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(WORLD)]
    logs = []
    try:
        for p in procs:
            remaining = max(1.0, JOB_TIMEOUT_S - (time.perf_counter() - start))
            logs.append(p.communicate(timeout=remaining)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the {WORLD}-rank job did not finish in {JOB_TIMEOUT_S} s (a hung collective?)")
    failed = [f"rank {r} exited with {p.returncode}:\n{log[-4000:]}"
              for r, (p, log) in enumerate(zip(procs, logs)) if p.returncode != 0]
    assert not failed, "\n\n".join(failed)
    return time.perf_counter() - start


@pytest.fixture(scope="module")
def job(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _launch(out)
    return out


@pytest.fixture(scope="module")
def reference():
    return _reference()


# -- (1) the key test ----------------------------------------------------------------------------
@pytest.mark.distributed
def test_two_ranks_match_one_process_on_the_global_batch(job, reference):
    """Two CPU ranks under FSDP2 (gloo, activation checkpointing on) produce the same gradients,
    parameters and AdamW state after a step as one process on the same global batch (fp32)."""
    grads, params, optim_state = reference
    got = torch.load(job / "step.pt", weights_only=True)
    _assert_close(got["grads"], grads)
    _assert_close(got["params"], params)
    _assert_close(got["optim"], optim_state)
    # Not vacuous: the step moved every parameter.
    plain = _full_params(_model())
    assert all((params[k] - plain[k]).abs().max() > 1e-4 for k in plain)


# -- (2), (3) DCP on two ranks (asserted on the ranks), read back here -----------------------------
@pytest.mark.distributed
def test_fused_objective_on_two_ranks_matches_the_plain_one_in_one_process(job):
    """Sumi's fused objective under FSDP2 (the head's weight read outside the model's forward)
    gives the gradients of the plain objective on the whole global batch in one process."""
    _, plain, tokens, noised = _objective_case()
    model = _model()
    terms = plain.model_loss(model, tokens, noised)
    (terms.loss_sum / (GLOBAL_BATCH * SEQ)).backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    _assert_close(torch.load(job / "fused_grads.pt", weights_only=True), expected, atol=1e-6)


@pytest.mark.distributed
def test_two_rank_checkpoint_survives_a_crash_and_loads_in_one_process(job):
    ckdir = job / "ckpt"
    assert ckpt.latest(ckdir) == ckdir / "step-00000004"
    assert not list(ckdir.glob("*.tmp-*")), "keep_last should drop the crashed save's leftovers"
    # Saved by 2 ranks, loaded without a process group.
    model = _model(seed=5)
    extra = ckpt.load(ckdir, model)
    assert extra["step"] == 4
    _assert_close(_full_params(model), torch.load(job / "final.pt", weights_only=True), atol=0.0)


# -- (6) export ------------------------------------------------------------------------------------
@pytest.mark.distributed
def test_export_safetensors_from_two_ranks_loads_with_from_pretrained(job):
    loaded = sumi.from_pretrained(job / "export", attention_backend="eager")
    assert loaded.config == _config()
    _assert_close(_full_params(loaded), torch.load(job / "final.pt", weights_only=True), atol=0.0)


# -- (7) sharded initialization ------------------------------------------------------------------
@pytest.mark.distributed
def test_sharded_init_on_two_ranks_equals_the_single_process_init(job):
    """Built on meta and sharded before allocation, each rank initializes only its slice, yet the
    gathered weights are bitwise those of ``Sumi.initialized`` with the same seed."""
    _assert_close(torch.load(job / "init.pt", weights_only=True), _full_params(_model()), atol=0.0)


# -- single process, no process group -------------------------------------------------------------
def test_init_distributed_without_torchrun_is_a_single_process(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed()
    assert (info.rank, info.world_size, info.local_rank) == (0, 1, 0) and info.is_main
    assert not torch.distributed.is_initialized()
    sumi.distributed.destroy()  # nothing to tear down


def test_parallelize_without_process_group_keeps_names_and_numbers():
    """(5) in one process: checkpointing (and no sharding) changes neither names nor results."""
    plain, model = _model(), _model()
    assert parallelize(model, mixed_precision=False, activation_checkpointing=True, compile_blocks=False) is model
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert list(model.state_dict()) == list(plain.state_dict())
    tokens = _batch()
    _loss(plain, tokens, tokens.numel()).backward()
    _loss(model, tokens, tokens.numel()).backward()
    _assert_close({n: p.grad for n, p in model.named_parameters()},
                  {n: p.grad for n, p in plain.named_parameters()}, atol=1e-7)


def test_mixed_precision_needs_a_mesh_and_one_process_gets_a_one_rank_group():
    """No process group: ``mixed_precision=True`` is an error naming the way out (it was silently
    float32), and the model is left untouched.  Inside ``single_process_group`` it is FSDP2's bf16
    policy on one rank: bf16 compute, float32 parameters and gradients, the float32 loss to bf16
    rounding; the group is gone afterwards, and an existing group is left alone."""
    from sumi.distributed import single_process_group

    model = _model()
    forward = model.model.layers[0].forward
    with pytest.raises(ValueError, match=r"mixed_precision=True needs a device mesh .*single_process_group"):
        parallelize(model, mixed_precision=True, activation_checkpointing=True, compile_blocks=False)
    assert model.model.layers[0].forward == forward and not hasattr(model.model.layers[0], "_sumi_checkpointed")
    tokens = _batch()
    with single_process_group("cpu") as info:
        assert (info.rank, info.world_size, info.device) == (0, 1, torch.device("cpu"))
        assert torch.distributed.get_world_size() == 1
        with single_process_group("cpu") as inner:  # already in a group: nothing started or destroyed
            assert inner.world_size == 1
        assert torch.distributed.is_initialized()
        mixed = parallelize(_model(), mixed_precision=True, activation_checkpointing=False, compile_blocks=False)
        dtypes = []
        mixed.lm_head.register_forward_hook(lambda m, i, o: dtypes.append((m.weight.dtype, i[0].dtype, o.dtype)))
        loss = _loss(mixed, tokens, tokens.numel())
        loss.backward()
        assert dtypes == [(torch.bfloat16,) * 3]
        assert {p.dtype for p in mixed.parameters()} == {p.grad.dtype for p in mixed.parameters()} == {torch.float32}
        reference = _loss(_model(), tokens, tokens.numel())
        assert loss.item() != reference.item() and abs(loss.item() - reference.item()) < 2e-2
    assert not torch.distributed.is_initialized()


def test_parallelize_on_meta_then_initialize():
    """The torchtitan order: build on meta, parallelize, allocate, initialize (one process)."""
    model = sumi.Sumi.on_meta(_config())
    parallelize(model, mixed_precision=False, activation_checkpointing=True, compile_blocks=False)
    model.to_empty(device="cpu")
    model.init_weights(torch.Generator().manual_seed(0))
    _assert_close(_full_params(model), _full_params(_model()), atol=0.0)


def _compile_with(monkeypatch, backend: str) -> list[dict]:
    """Route ``Module.compile`` to ``backend``; returns the recorded keyword arguments."""
    calls: list[dict] = []
    original = torch.nn.Module.compile

    def compile_(self, *args, **kwargs):
        calls.append(dict(kwargs))
        return original(self, *args, **{**kwargs, "backend": backend})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_)
    return calls


def _check_compiled_blocks(calls: list[dict], atol: float) -> None:
    plain, model = _model(), _model()
    parallelize(model, mixed_precision=False, activation_checkpointing=True, compile_blocks=True)
    assert calls == [{"fullgraph": True}] * _config().num_hidden_layers
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in plain.named_parameters()]
    assert list(model.state_dict()) == list(plain.state_dict())
    tokens = _batch()
    for m in (plain, model):
        _loss(m, tokens, tokens.numel()).backward()
    _assert_close({n: p.grad for n, p in model.named_parameters()},
                  {n: p.grad for n, p in plain.named_parameters()}, atol=atol)


_JIT_DEPRECATION = "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"  # torch's, at dynamo import


@pytest.mark.filterwarnings(_JIT_DEPRECATION)
def test_compiled_checkpointed_blocks_trace_in_one_graph(monkeypatch):
    """Per-block compile sits outside the checkpointing: dynamo must capture each block (with its
    recomputation) as one graph (``fullgraph=True`` fails on a break).  aot_eager keeps it fast."""
    torch._dynamo.reset()
    _check_compiled_blocks(_compile_with(monkeypatch, "aot_eager"), atol=1e-7)


@pytest.mark.slow
@pytest.mark.filterwarnings(_JIT_DEPRECATION)
def test_compiled_blocks_with_inductor(monkeypatch):
    """The real thing on CPU (inductor, ~30 s): same names, same gradients."""
    torch._dynamo.reset()
    _check_compiled_blocks(_compile_with(monkeypatch, "inductor"), atol=1e-6)


def test_single_process_save_load_roundtrip(tmp_path):
    """(4) no process group: save, crash a later save, resume the latest, continue identically."""
    model = _model()
    optimizer = _optimizer(model)
    tokens = _batch()
    _step(model, optimizer, tokens, tokens.numel())
    gen = torch.Generator().manual_seed(3)
    extra = {"loader": [1, 2], "rng": ckpt.rng_state(gen)}
    path = ckpt.save(tmp_path, 12, model, optimizer, extra=extra)
    assert path == tmp_path / "step-00000012" and ckpt.latest(tmp_path) == path
    expected_draw = torch.rand(3, generator=gen)

    fresh = _model(seed=1)
    fresh_opt = _optimizer(fresh)
    got = ckpt.load(tmp_path, fresh, fresh_opt)
    assert got["step"] == 12 and got["loader"] == [1, 2]
    _assert_close(_full_params(fresh), _full_params(model), atol=0.0)
    _assert_close(_full_optim_state(fresh, fresh_opt), _full_optim_state(model, optimizer), atol=0.0)
    restored = torch.Generator()
    ckpt.set_rng_state(got["rng"], restored)
    assert torch.equal(torch.rand(3, generator=restored), expected_draw)
    _step(model, optimizer, tokens, tokens.numel())
    _step(fresh, fresh_opt, tokens, tokens.numel())
    _assert_close(_full_params(fresh), _full_params(model), atol=0.0)


def test_single_process_crash_mid_save_and_keep_last(tmp_path, monkeypatch):
    """(3) in one process: shards written, then a crash: the previous checkpoint stays latest."""
    model = _model()
    first = ckpt.save(tmp_path, 1, model)
    real_save = ckpt.dcp.save

    def crashing_save(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # e.g. the job was killed

    monkeypatch.setattr(ckpt.dcp, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(tmp_path, 2, model)
    monkeypatch.setattr(ckpt.dcp, "save", real_save)
    partial = list(tmp_path.glob("step-00000002.tmp-*"))
    assert len(partial) == 1 and (partial[0] / ".metadata").is_file() and not (partial[0] / ckpt.COMPLETE).exists()
    assert ckpt.latest(tmp_path) == first
    # A step directory without its marker (e.g. copied by hand) is not a checkpoint either.
    (tmp_path / "step-00000009").mkdir()
    assert ckpt.latest(tmp_path) == first
    with pytest.raises(FileNotFoundError, match="incomplete"):
        ckpt.load(tmp_path / "step-00000009", model)
    for step in (3, 4, 5):
        ckpt.save(tmp_path, step, model)
    ckpt.save(tmp_path, 5, model)  # the same step again replaces it
    assert ckpt.latest(tmp_path) == tmp_path / "step-00000005"
    removed = ckpt.keep_last(tmp_path, 2)
    assert sorted(p.name for p in removed) == ["step-00000001", "step-00000002." + partial[0].name.split(".", 1)[1],
                                               "step-00000003"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000004", "step-00000005", "step-00000009"]
    with pytest.raises(ValueError):
        ckpt.keep_last(tmp_path, 0)


@pytest.mark.parametrize("cleanup_fails", [False, True], ids=["interrupt", "interrupt-then-cleanup-error"])
def test_ctrl_c_inside_dcp_is_an_interruption_not_a_failed_or_damaged_checkpoint(tmp_path, monkeypatch,
                                                                                 cleanup_fails):
    """DCP catches a KeyboardInterrupt in its writer or reader and wraps it in its own
    CheckpointException: ``save`` and ``load`` raise it again as KeyboardInterrupt (the training
    loop's one-line Ctrl-C), the save leaves no temporary directory, the load claims no damage.
    ``cleanup_fails``: the interrupt hits inside ``torch.save``, whose zip writer then fails on the
    half-written file while unwinding (seen in CI: a Ctrl-C during a save exited 1 with
    ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598``)."""
    import torch.distributed.checkpoint.filesystem as dcp_fs

    model = _model()
    first = ckpt.save(tmp_path, 1, model)

    def interrupted(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        finally:
            if cleanup_fails:
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(dcp_fs, "_write_files_from_queue", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save(tmp_path, 2, model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
    monkeypatch.setattr(dcp_fs.FileSystemReader, "read_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ckpt.load(first, model)


def test_resume_without_checkpoint_fails_clearly(tmp_path):
    model = _model()
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume from"):
        ckpt.load(tmp_path / "missing", model)
    with pytest.raises(FileNotFoundError, match="no complete"):
        ckpt.load(tmp_path, model)
    (tmp_path / "step-00000003.tmp-abcd").mkdir()
    assert ckpt.latest(tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no complete"):
        ckpt.load(tmp_path, model)


def test_extra_must_be_json(tmp_path):
    with pytest.raises(TypeError):
        ckpt.save(tmp_path, 1, _model(), extra={"tensor": torch.zeros(1)})
    assert not list(tmp_path.iterdir())


def test_single_process_export_safetensors(tmp_path):
    model = _model()
    ckpt.export_safetensors(model, tmp_path / "hf", dtype="bfloat16")
    loaded = sumi.from_pretrained(tmp_path / "hf", attention_backend="eager")
    assert loaded.config == _config()
    assert all(p.dtype == torch.bfloat16 for p in loaded.parameters())
    _assert_close(_full_params(loaded), {k: v.bfloat16() for k, v in _full_params(model).items()}, atol=0.0)


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
