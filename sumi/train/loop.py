"""The training loop: one function, the same code on one CPU process or many GPUs under torchrun.

Per step: the global batch (``global_batch_size`` sequences, :class:`sumi.data.Loader`) split
into ``grad_accumulation`` micro-batches per rank, each noised by the family's objective
(:func:`sumi.train.objective.build_objective`; docs/training.md, "Families") with draws that
depend only on (seed, step, row of the global batch), the loss summed over tokens and divided by
the GLOBAL count of counted tokens of the step (``seq_len`` per row, ``seq_len - 1`` for ``ar``,
less each row's prompt on prompted data: counted on the host from the config and the loader's
prompt lengths, :meth:`~sumi.train.objective.TrainingObjective.counted_tokens`, so every rank and
micro-batch weighs tokens equally without a host sync), one clipped AdamW step with the WSD
learning rate.  On prompted data (docs/training.md, "Conditional training (condition dropout)")
the prompts stay clean and uncounted, and ``cond_dropout`` hides a share of them from attention.
A step therefore computes the same thing on any number of processes, up to the order of
floating-point sums.

Output directory ``OUT`` (rank 0 holds an exclusive lock on it for the whole run):
``metrics.jsonl`` (one record per logged step), ``config.json``, ``checkpoints/`` (DCP, atomic,
verified on resume; they hold the model, the optimizer, the step and the loader position, so
``resume=True`` continues bit for bit), ``model/`` (the exported weights and the data's tokenizer).

A non-finite loss or gradient norm is noted on the device at the step it happens (no host sync)
and read at the next log step or checkpoint: the run stops with :class:`TrainingDiverged`,
naming the step and the last checkpoint, and never writes a checkpoint from non-finite state.

No host sync between log steps: token ids are checked by the loader on the host as they are
read, so :func:`train_step` runs with ``validate=False`` (no device-side value checks), and the
metrics are read once per logged step.  On CUDA the batches come from pinned memory with
non-blocking copies, the next step's read ahead while the current one computes
(:class:`sumi.data.loader.StepFeed`).  ``mixed_precision=True`` in a single process runs on a
one-rank FSDP2 mesh (:func:`sumi.distributed.single_process_group`), the same bf16 compute and
float32 weights, gradients and optimizer state as under torchrun.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import sys
import time
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from sumi._fs import atomic_write, check_writable_dir, exclusive_lock, reraise_storage_error
from sumi.configs.model import ModelConfig
from sumi.configs.train import TrainConfig
from sumi.data import IntegrityError, Loader
from sumi.data.loader import MicroBatch, StepFeed
from sumi.data.spec import DataSpec, describe, open_data
from sumi.distributed import checkpoint as ckpt
from sumi.distributed import gather_objects, init_distributed, on_rank0, parallelize, single_process_group
from sumi.hf import load_weights
from sumi.model import Sumi, check_backend, flops_per_token
from sumi.train.objective import TrainingObjective, build_objective
from sumi.train.optim import WSD, build_optimizer, clip_grad_norm

# Dense bf16 tensor-core peak per GPU (vendor datasheets, no sparsity); the first name contained in
# the device name wins, so the PCIe H100 (lower clocks) is listed before the SXM part.
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}
LOCK_NAME = ".lock"
# TrainConfig fields that may differ on resume without changing what the steps compute
RESUME_FREE = {"checkpoint_every", "keep_last", "log_every", "init_from", "compile", "activation_checkpointing",
               "fused_loss", "micro_batch_size"}
# ... and those that can never differ: the data position or the weights would not carry over
RESUME_FIXED = {"seq_len", "global_batch_size", "mixture", "seed"}


class TrainingDiverged(RuntimeError):
    """The loss or the gradient norm became non-finite; nothing was checkpointed from then on."""


class TrainingInterrupted(RuntimeError):
    """The run was interrupted (Ctrl-C); ``step`` steps were done, the last checkpoint is kept."""

    def __init__(self, message: str, step: int) -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class TrainResult:
    steps: int
    losses: list[float]
    out_dir: Path


def peak_flops(device: torch.device) -> float | None:
    """The datasheet dense bf16 FLOP/s of a known CUDA device (for MFU), else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def noise_seed(seed: int, step: int) -> int:
    """The seed of the noise generator at ``step`` (0-based): a hash of (run seed, step), so the
    noise of a step depends on neither the world size nor the history (torch's CPU generator uses
    its low 32 bits: seeds of two steps collide about once per 9e4 steps, harmlessly)."""
    digest = hashlib.blake2b(f"sumi-noise:{seed}:{step}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def _tensorboard(out_dir: Path, rank: int):
    """A SummaryWriter under ``OUT/tensorboard`` when TensorBoard is installed (rank 0), else None."""
    if rank != 0:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional: metrics.jsonl always has everything
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _all_reduce_sum(values: torch.Tensor, world_size: int) -> torch.Tensor:
    if world_size > 1:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


# -- resume checks --------------------------------------------------------------------------------
def _saved_value(saved: dict, key: str, cls: type) -> object:
    """``saved[key]``; for a key an older version did not save, the default of ``cls``'s field
    ``key`` (a field added since, with its default, changes nothing), else ``None``."""
    if key in saved:
        return saved[key]
    field = next((f for f in fields(cls) if f.name == key), None)
    if field is None:
        return None
    if field.default is not MISSING:
        return field.default
    return None if field.default_factory is MISSING else field.default_factory()


def config_changes(saved: dict, config: TrainConfig) -> tuple[list[str], list[str]]:
    """``(fixed, changed)``: differences between a checkpoint's config and ``config`` that can
    never be resumed (the model's shape, the data layout) and those that change what the
    remaining steps compute (the schedule, the objective, ...).  Fields of :data:`RESUME_FREE`
    and the attention backend are free to change.  A field the checkpoint's (older) config lacks
    counts as its default (``cond_dropout`` 0 for runs saved before it existed)."""
    new = config.to_dict()
    fixed, changed = [], []
    saved_model, new_model = saved.get("model", {}), new["model"]
    for key in sorted(set(saved_model) | set(new_model)):
        old = _saved_value(saved_model, key, ModelConfig)
        if key != "attention_backend" and old != new_model.get(key):
            fixed.append(f"model.{key} {old!r} -> {new_model.get(key)!r}")
    for key in sorted((set(saved) | set(new)) - {"model"} - RESUME_FREE):
        old = _saved_value(saved, key, TrainConfig)
        if old != new.get(key):
            (fixed if key in RESUME_FIXED else changed).append(f"{key} {old!r} -> {new.get(key)!r}")
    return fixed, changed


def _check_resume(extra: dict, path: Path, config: TrainConfig, allow_config_change: bool) -> None:
    step = extra.get("step")
    if not isinstance(extra.get("loader"), dict):
        raise ValueError(f"--resume: {path} was written by an earlier version of sumi (one loader state per "
                         "rank); resume it with the version that wrote it")
    if step > config.steps:
        raise ValueError(f"--resume: the checkpoint {path.name} is at step {step}, past --steps {config.steps}: "
                         "a run cannot end before its checkpoint (raise --steps, or start a new run)")
    fixed, changed = config_changes(extra.get("config", {}), config)
    if fixed:
        raise ValueError(f"--resume: {path} was trained with another model or data layout ({', '.join(fixed)}): "
                         "resuming would not replay the same tokens into the same weights; start a new run "
                         "(another --out) or resume with the old values")
    if changed and not allow_config_change:
        raise ValueError(f"--resume: {path} was trained with another configuration ({', '.join(changed)}); the "
                         "steps already taken followed the old values (learning-rate schedule, objective, ...). "
                         "Pass --allow-config-change to continue with the new ones, or resume with the old ones")


def _peek_extra(path: Path) -> dict | None:
    try:
        return json.loads((path / ckpt.EXTRA_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # damaged: load_latest will say so and fall back


# -- metrics --------------------------------------------------------------------------------------
def _finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None  # strict JSON has no NaN


def _truncate_metrics(path: Path, step: int) -> int:
    """Keep the records of steps <= ``step`` (those the checkpoint covers) and drop anything else,
    a partial last line included; returns the number of records kept."""
    if not path.exists():
        return 0
    kept = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a crash or a full disk
        if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
            kept.append(line)
    atomic_write(path, "".join(f"{line}\n" for line in kept))
    return len(kept)


def _append(path: Path, record: dict) -> None:
    try:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        reraise_storage_error(e, path.parent, f"appending to {path.name} in")
        raise


class ThroughputWatch:
    """Notices when tokens/s collapse (another process taking the CPU, thread oversubscription):
    after ``warmup`` steps, ``patience`` steps in a row below ``1 / factor`` of the best seen."""

    def __init__(self, warmup: int = 3, factor: float = 3.0, patience: int = 5) -> None:
        self.warmup, self.factor, self.patience = warmup, factor, patience
        self.best = 0.0
        self.seen = self.slow = 0
        self.fired = False

    def __call__(self, tokens_per_s: float) -> str | None:
        """Feed one step; returns a one-time hint when throughput has collapsed."""
        self.seen += 1
        if self.seen <= self.warmup:
            return None
        self.best = max(self.best, tokens_per_s)
        self.slow = self.slow + 1 if tokens_per_s * self.factor < self.best else 0
        if self.slow < self.patience or self.fired:
            return None
        self.fired = True
        return (f"throughput fell from {self.best:,.0f} to {tokens_per_s:,.0f} tokens/s: another process may be "
                f"competing for the CPUs ({torch.get_num_threads()} threads here); on a shared machine fewer "
                "threads are often faster (--threads 1)")


# -- the loop -------------------------------------------------------------------------------------
def train(config: TrainConfig, data: DataSpec, out_dir: str | Path, *, resume: bool = False,
          allow_config_change: bool = False, progress: bool = True, stop_at_step: int | None = None,
          tokenizer_file: str | Path | None = None) -> TrainResult:
    """Train ``config`` on ``data`` (a directory of packed shards, or ``{name: directory}`` mixed
    by ``config.mixture``: :func:`sumi.data.spec.open_data`); write everything under ``out_dir``.

    ``config.init_from`` starts from a previous run's exported model (the next phase of the
    recipe) with a fresh optimizer and schedule.  ``resume=True`` continues from the newest intact
    checkpoint; a configuration that differs from the checkpoint's in a way that changes the
    computation is refused unless ``allow_config_change``.  ``stop_at_step`` ends the run early
    (after a checkpoint at that step) as an interruption would, without changing the schedule.
    ``tokenizer_file``: exported next to the model (default: the data's ``tokenizer.json``).
    ``config.mixed_precision`` without torchrun: the run holds a one-rank process group
    (:func:`sumi.distributed.single_process_group`, destroyed when it returns) so that FSDP2's
    bf16 policy applies as on many ranks.
    Raises :class:`TrainingDiverged` on a non-finite loss or gradient norm and
    :class:`TrainingInterrupted` on Ctrl-C.
    """
    info = init_distributed()
    out_dir = Path(out_dir)
    with contextlib.ExitStack() as stack:
        if config.mixed_precision and info.world_size == 1:  # FSDP2's policy needs a mesh, even on one rank
            info = stack.enter_context(single_process_group(info.device))
        on_rank0(check_writable_dir, out_dir)

        def lock() -> None:  # one writer per output directory: rank 0 holds the lock for the whole run
            stack.enter_context(exclusive_lock(out_dir / LOCK_NAME, f"the output directory {out_dir}"))

        on_rank0(lock)  # every rank learns the verdict
        return _train(config, data, out_dir, info, resume=resume, allow_config_change=allow_config_change,
                      progress=progress, stop_at_step=stop_at_step, tokenizer_file=tokenizer_file)


def _train(config: TrainConfig, data: DataSpec, out_dir: Path, info, *, resume: bool, allow_config_change: bool,
           progress: bool, stop_at_step: int | None, tokenizer_file: str | Path | None) -> TrainResult:
    ckpt_dir = out_dir / "checkpoints"
    ckpt.clean(ckpt_dir)  # what a crashed save left (the lock says no save is running)
    check_backend(config.model.attention_backend, info.device)
    dataset = open_data(data, config.mixture, config.seed)
    if dataset.seq_len != config.seq_len:
        raise ValueError(f"{dataset!r} has sequence length {dataset.seq_len}, the config {config.seq_len}")
    if dataset.vocab_size > config.model.vocab_size:
        raise ValueError(f"{dataset!r} uses a vocabulary of {dataset.vocab_size} ids, "
                         f"the model has {config.model.vocab_size}")
    if config.cond_dropout > 0 and not getattr(dataset, "prompted", False):
        raise ValueError(f"cond_dropout={config.cond_dropout} hides the prompts of prompted rows, but {dataset!r} "
                         "has no prompts (prepare it with `sumi data prepare --prompted`, or --set cond_dropout=0)")
    config.grad_accumulation(info.world_size)  # the world size must divide the global batch: say so now
    newest = ckpt.latest(ckpt_dir)
    if resume and newest is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint under {ckpt_dir}")
    if not resume and newest is not None:
        raise FileExistsError(f"{ckpt_dir} already holds checkpoints: pass --resume, or choose another --out")
    if resume and (extra := _peek_extra(newest)) is not None:
        _check_resume(extra, newest, config, allow_config_change)  # before loading anything
    if config.phase != "pretrain" and config.init_from is None and not resume:
        raise ValueError(f"phase {config.phase!r} continues a trained model: --set init_from=DIR (the previous "
                         "phase's OUT/model)")
    if config.init_from is not None and not resume and not Path(config.init_from).is_dir():
        raise FileNotFoundError(f"init_from: no model directory at {config.init_from}")
    _verify(dataset, info)

    # meta -> shard -> allocate -> initialize: each rank holds only its shard (plus one transient
    # full parameter), and the weights equal a single process's from the same seed
    model = parallelize(Sumi.on_meta(config.model), mixed_precision=config.mixed_precision,
                        activation_checkpointing=config.activation_checkpointing, compile_blocks=config.compile)
    model.to_empty(device=info.device)
    if config.init_from is not None and not resume:
        load_weights(model, config.init_from)  # every parameter: no random init needed
    else:
        model.init_weights(torch.Generator(info.device).manual_seed(config.seed))
    model.train()
    optimizer = build_optimizer(model, lr=config.peak_lr, betas=(config.beta1, config.beta2),
                                weight_decay=config.weight_decay)
    schedule = WSD(config.peak_lr, config.floor_lr, config.effective_warmup_steps, config.steps, config.decay_fraction)
    objective = build_objective(config)
    loader = Loader(dataset, config.micro_batch_size, seed=config.seed, rank=info.rank, world_size=info.world_size,
                    global_batch=config.global_batch_size, vocab_size=config.model.vocab_size)

    start = 0
    if resume:
        path, extra = ckpt.load_latest(ckpt_dir, model, optimizer)
        _check_resume(extra, path, config, allow_config_change)  # the one loaded may be an older one
        saved, now = dict(extra.get("data") or {}), describe(dataset)
        saved_order, order = saved.pop("order", None), now.pop("order", None)  # older checkpoints have none
        if saved != now:
            raise ValueError(f"--resume: the checkpoint was trained on {saved}, this run reads "
                             f"{now}: resuming would not replay the same tokens")
        if saved_order is not None and saved_order != order:
            raise ValueError(f"--resume: the checkpoint's mixture names its sources in the order {saved_order}, this "
                             f"run in another order, {order}: the rows would interleave otherwise; name them in the "
                             "checkpoint's order")
        start = int(extra["step"])
        loader.load_state_dict(extra["loader"])

    metrics_path = out_dir / "metrics.jsonl"
    if info.rank == 0:
        atomic_write(out_dir / "config.json", json.dumps(config.to_dict(), indent=2, default=str) + "\n")
        if resume:
            _truncate_metrics(metrics_path, start)
        else:
            metrics_path.unlink(missing_ok=True)
    end = config.steps if stop_at_step is None else min(stop_at_step, config.steps)
    losses = _loop(model, optimizer, schedule, objective, loader, config, info, out_dir, start, end,
                   progress)
    if end == config.steps:
        tokenizer = _tokenizer_file(dataset, tokenizer_file) if info.rank == 0 else None
        ckpt.export_safetensors(model, out_dir / "model", side_files=[tokenizer] if tokenizer else [])
    return TrainResult(steps=end, losses=losses, out_dir=out_dir)


def _verify(dataset, info) -> None:
    """Every shard against its manifest's SHA-256 before a step reads it, the ranks sharing the
    shards; a bad shard found by any rank stops every rank with the same error."""
    try:
        dataset.verify(part=(info.rank, info.world_size))
        error = None
    except IntegrityError as e:
        error = e
    errors = [e for e in gather_objects(error) if e is not None]
    if errors:
        raise errors[0]


def _loop(model, optimizer, schedule: WSD, objective: TrainingObjective, loader: Loader, config: TrainConfig, info,
          out_dir: Path, start: int, end: int, progress: bool) -> list[float]:
    ckpt_dir, metrics_path = out_dir / "checkpoints", out_dir / "metrics.jsonl"
    global_tokens = config.global_batch_size * config.seq_len  # the tokens the model reads: tokens/s, MFU
    feed = StepFeed(loader, info.device)  # on CUDA: pinned, non-blocking, one step read ahead
    flops = flops_per_token(config.model, config.seq_len)
    peak = peak_flops(info.device)
    board = _tensorboard(out_dir, info.rank)
    watch = ThroughputWatch() if info.device.type == "cpu" else None
    bar = tqdm(total=config.steps, initial=start, disable=not progress or info.rank != 0, desc="train", unit="step")
    noise = torch.Generator(info.device)
    # the first step whose loss or gradient norm was not finite (0: none), and its values
    bad_step = torch.zeros((), dtype=torch.float64, device=info.device)
    bad_values = torch.zeros(2, dtype=torch.float64, device=info.device)
    losses: list[float] = []
    step = start
    try:
        for step in range(start, end):
            began = time.perf_counter()
            lr = schedule.lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batches = feed.next_step()
            # the loss divisor, on the host (prompts checked there too: 0 <= P < seq_len)
            counted_tokens = objective.counted_tokens(config.seq_len, feed.prompt_lengths, config.global_batch_size)
            # validate=False: the loader checked every id on the host; nothing here waits for the device
            sums, grad_norm = train_step(model, optimizer, objective, batches, noise, noise_seed(config.seed, step),
                                         global_batch=config.global_batch_size, global_tokens=counted_tokens,
                                         grad_clip=config.grad_clip, world_size=info.world_size, validate=False)
            finite = torch.isfinite(sums[0]) & torch.isfinite(grad_norm)
            first = (bad_step == 0) & ~finite
            bad_step = torch.where(first, torch.full_like(bad_step, step + 1), bad_step)
            bad_values = torch.where(first, torch.stack([sums[0], grad_norm.double()]), bad_values)
            done = step + 1
            if done < end:  # read the next rows while the device works (before this step's sync, if logged)
                feed.prefetch()
            checkpoint_due = done % config.checkpoint_every == 0 or done in (config.steps, end)
            if done % config.log_every == 0 or done == config.steps or checkpoint_due:
                # the one host sync of a logged step
                loss, kl, is_div, z_loss, norm, bad = torch.cat([sums, grad_norm.reshape(1).double(),
                                                                 bad_step.reshape(1)]).tolist()
                tokens_per_s = global_tokens / (time.perf_counter() - began)
                losses.append(loss)
                if info.rank == 0:
                    record = dict(step=done, loss=loss, kl=kl, is_div=is_div, z_loss=z_loss, lr=lr, grad_norm=norm,
                                  tokens_per_s=tokens_per_s)
                    if peak is not None:
                        record["mfu"] = flops * tokens_per_s / (peak * info.world_size)
                    _append(metrics_path, {k: _finite_or_none(v) if isinstance(v, float) else v
                                           for k, v in record.items()})
                    if board is not None:
                        for key, value in record.items():
                            if key != "step":
                                board.add_scalar(f"train/{key}", value, done)
                    hint = watch(tokens_per_s) if watch is not None else None
                    if hint is not None:
                        tqdm.write(f"sumi train: {hint}", file=sys.stderr)
                if bad:
                    _diverged(int(bad), bad_values.tolist(), ckpt_dir)
                bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
            if checkpoint_due:
                ckpt.save(ckpt_dir, done, model, optimizer,
                          extra={"step": done, "loader": feed.state_dict(), "config": config.to_dict(),
                                 "data": describe(loader.data)})
                ckpt.keep_last(ckpt_dir, config.keep_last)
    except KeyboardInterrupt:
        bar.close()
        last = ckpt.latest(ckpt_dir)
        where = f"the last checkpoint is {last}" if last else "no checkpoint was written yet"
        raise TrainingInterrupted(f"interrupted during step {step + 1} of {config.steps}; {where}", step) from None
    finally:
        bar.close()
        if board is not None:
            board.close()
    return losses


def _diverged(step: int, values: list[float], ckpt_dir: Path) -> None:
    last = ckpt.latest(ckpt_dir)
    where = (f"the last checkpoint, {last}, was written before it (resume from it with --resume after lowering "
             "peak_lr or raising warmup_steps, with --allow-config-change)" if last else
             "no checkpoint was written")
    raise TrainingDiverged(f"the loss or gradient norm became non-finite at step {step} (loss {values[0]:.4g}, "
                           f"gradient norm {values[1]:.4g}); no checkpoint was written from then on; {where}")


def _tokenizer_file(dataset, tokenizer_file: str | Path | None) -> Path | None:
    """The tokenizer exported next to the model, so ``sumi generate --model OUT/model`` finds it:
    ``tokenizer_file``, else the one the data was prepared with (``None``, with a warning, for
    data prepared before prepare saved it)."""
    if tokenizer_file is not None:
        return Path(tokenizer_file)
    sources = getattr(dataset, "datasets", [dataset])
    found = next((p for p in (getattr(d, "tokenizer_path", None) for d in sources) if p), None)
    if found is None:
        print(f"sumi train: warning: {dataset!r} holds no tokenizer.json (prepared by an earlier version): copy "
              "the tokenizer it was prepared with into OUT/model to generate with the model", file=sys.stderr)
    return found


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, objective: TrainingObjective, batches,
               noise: torch.Generator, seed: int, *, global_batch: int, global_tokens: int, grad_clip: float,
               world_size: int, validate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over ``batches``, this rank's micro-batches as
    :class:`~sumi.data.MicroBatch` ``(token ids, offset in the global batch, prompt lengths or
    None)`` (or plain ``(ids, offset)`` pairs) on the model's device, at the learning rate already
    set in ``optimizer``.

    Each micro-batch is noised with ``noise`` seeded with ``seed`` and drawn for the whole global
    batch of ``global_batch`` sequences (:meth:`TrainingObjective.add_noise`, with the prompt
    lengths: prompts stay clean, uncounted, and hidden from attention in a ``cond_dropout`` share
    of the rows), so a row's noise depends only on ``seed`` and its offset.  Its summed loss is
    divided by ``global_tokens`` (the step's count of counted tokens over all ranks:
    ``objective.counted_tokens(seq_len, prompt_lengths_of_the_global_batch, global_batch)``)
    before backward, so the accumulated gradient is the global token mean whatever the world size.
    Returns the step's global means of (loss, KL, IS divergence, z-loss) as a float64 ``[4]``
    tensor, all-reduced over ranks (what the parts hold per family:
    :class:`sumi.train.objective.ObjectiveTerms`), and the gradient norm before clipping.
    ``benchmarks/train_step.py`` times exactly this function.

    ``validate``: check each micro-batch's ids against the vocabulary (a host sync per
    micro-batch on an accelerator), and the prompt lengths.  The training loop passes ``False``:
    its loader checked the ids on the host, and ``counted_tokens`` the prompt lengths.  Either
    way the noised tokens and log-SNRs the step makes itself are not checked again, and nothing
    else reads a device value: with ``validate=False`` the step queues
    its work without waiting for the device (``sumi.train.syncs.count_host_syncs`` counts 0).
    """
    sums = torch.zeros(4, dtype=torch.float64, device=noise.device)  # loss, kl, is, z_loss
    for batch in batches:
        x, offset, prompt_lengths = MicroBatch(*batch)  # a plain (ids, offset) pair has no prompts
        noise.manual_seed(seed)
        noised = objective.add_noise(x, noise, offset=offset, global_batch=global_batch, validate=validate,
                                     prompt_lengths=prompt_lengths)
        # fused_loss: from hidden states, no logits; z and lambda were drawn valid just above
        terms = objective.model_loss(model, x, noised, validate=False)
        # parallelize() SUMS gradients over ranks: dividing by the global token count makes
        # the step's gradient the global token mean, whatever the world size
        (terms.loss_sum / global_tokens).backward()
        sums += torch.stack([terms.loss_sum, terms.kl_sum, terms.is_sum, terms.z_loss_sum]).detach().double()
    grad_norm = clip_grad_norm(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return _all_reduce_sum(sums, world_size) / global_tokens, grad_norm


__all__ = ["train", "train_step", "TrainResult", "TrainingDiverged", "TrainingInterrupted", "ThroughputWatch",
           "config_changes", "noise_seed", "peak_flops", "PEAK_FLOPS"]
