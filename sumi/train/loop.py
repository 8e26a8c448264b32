"""The training loop: one function, the same code on one CPU process or many GPUs under torchrun.

Per step: ``grad_accumulation`` micro-batches per rank, each noised by the objective with this
rank's own generator, loss summed over tokens and divided by the GLOBAL token count of the step
(so every rank and micro-batch weighs tokens equally), one clipped AdamW step with the WSD
learning rate.  Metrics go to ``OUT/metrics.jsonl`` (rank 0) and a progress bar; checkpoints
(DCP, atomic) every ``checkpoint_every`` steps and at the end hold the model, the optimizer, the
step, the loader position and every RNG state, so ``resume=True`` continues bit for bit.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from sumi.configs.train import TrainConfig
from sumi.data import Loader
from sumi.data.spec import DataSpec, describe, open_data
from sumi.distributed import checkpoint as ckpt
from sumi.distributed import init_distributed, parallelize
from sumi.hf import load_weights
from sumi.model import Sumi, flops_per_token
from sumi.train.objective import Objective
from sumi.train.optim import WSD, build_optimizer, clip_grad_norm

# Dense bf16 tensor-core peak per GPU (vendor datasheets, no sparsity); the first name contained in
# the device name wins, so the PCIe H100 (lower clocks) is listed before the SXM part.
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "A100": 312e12}


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


def train(config: TrainConfig, data: DataSpec, out_dir: str | Path, *, resume: bool = False,
          progress: bool = True, stop_at_step: int | None = None) -> TrainResult:
    """Train ``config`` on ``data`` (a directory of packed shards, or ``{name: directory}`` mixed
    by ``config.mixture``: :func:`sumi.data.spec.open_data`); write everything under ``out_dir``.

    ``config.init_from`` starts from a previous run's exported model (the next phase of the
    recipe) with a fresh optimizer and schedule.  ``stop_at_step`` ends the run early (after a
    checkpoint at that step) as an interruption would, without changing the schedule:
    ``resume=True`` later continues exactly where it stopped.
    """
    info = init_distributed()
    out_dir, ckpt_dir = Path(out_dir), Path(out_dir) / "checkpoints"
    dataset = open_data(data, config.mixture, config.seed)
    if dataset.seq_len != config.seq_len:
        raise ValueError(f"{dataset!r} has sequence length {dataset.seq_len}, the config {config.seq_len}")
    if dataset.vocab_size > config.model.vocab_size:
        raise ValueError(f"{dataset!r} uses a vocabulary of {dataset.vocab_size} ids, "
                         f"the model has {config.model.vocab_size}")
    accumulation = config.grad_accumulation(info.world_size)
    if resume and ckpt.latest(ckpt_dir) is None:
        raise FileNotFoundError(f"--resume: no complete checkpoint under {ckpt_dir}")
    if not resume and ckpt.latest(ckpt_dir) is not None:
        raise FileExistsError(f"{ckpt_dir} already holds checkpoints: pass --resume, or choose another --out")
    if config.phase != "pretrain" and config.init_from is None and not resume:
        raise ValueError(f"phase {config.phase!r} continues a trained model: --set init_from=DIR (the previous "
                         "phase's OUT/model)")
    if config.init_from is not None and not resume and not Path(config.init_from).is_dir():
        raise FileNotFoundError(f"init_from: no model directory at {config.init_from}")

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
    objective = Objective(config.model.vocab_size, per_token_share=config.per_token_share, z_loss=config.z_loss,
                          fused=config.fused_loss)
    loader = Loader(dataset, config.micro_batch_size, seed=config.seed, rank=info.rank, world_size=info.world_size,
                    vocab_size=config.model.vocab_size)
    noise = torch.Generator(info.device).manual_seed(config.seed * 1_000_003 + 7919 * (info.rank + 1))

    start = 0
    if resume:
        extra = ckpt.load(ckpt.latest(ckpt_dir), model, optimizer)
        if extra.get("data") != describe(dataset):
            raise ValueError(f"--resume: the checkpoint was trained on {extra.get('data')}, this run reads "
                             f"{describe(dataset)}: resuming would not replay the same tokens")
        start = int(extra["step"])
        loader.load_state_dict(extra["loader"][info.rank])
        noise.set_state(torch.tensor(extra["noise"][info.rank], dtype=torch.uint8))

    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    if info.rank == 0:
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, default=str))
        if not resume and metrics_path.exists():
            metrics_path.unlink()
    global_tokens = config.global_batch_size * config.seq_len
    flops = flops_per_token(config.model, config.seq_len)
    peak = peak_flops(info.device)
    board = _tensorboard(out_dir, info.rank)
    bar = tqdm(total=config.steps, initial=start, disable=not progress or info.rank != 0, desc="train", unit="step")
    losses: list[float] = []
    end = config.steps if stop_at_step is None else min(stop_at_step, config.steps)
    for step in range(start, end):
        began = time.perf_counter()
        lr = schedule.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = (loader.next_batch().to(info.device) for _ in range(accumulation))
        sums, grad_norm = train_step(model, optimizer, objective, batches, noise, global_tokens=global_tokens,
                                     grad_clip=config.grad_clip, world_size=info.world_size)
        loss, kl, is_div, z_loss = (float(v) for v in sums)
        elapsed = time.perf_counter() - began
        tokens_per_s = global_tokens / elapsed
        losses.append(loss)
        if info.rank == 0 and ((step + 1) % config.log_every == 0 or step + 1 == config.steps):
            record = dict(step=step + 1, loss=loss, kl=kl, is_div=is_div, z_loss=z_loss, lr=lr,
                          grad_norm=float(grad_norm), tokens_per_s=tokens_per_s)
            if peak is not None:
                record["mfu"] = flops * tokens_per_s / (peak * info.world_size)
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
            if board is not None:
                for key, value in record.items():
                    if key != "step":
                        board.add_scalar(f"train/{key}", value, step + 1)
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        bar.update(1)
        if (step + 1) % config.checkpoint_every == 0 or step + 1 in (config.steps, end):
            states = _gather_states(loader, noise, info.world_size)
            ckpt.save(ckpt_dir, step + 1, model, optimizer,
                      extra={"step": step + 1, "loader": states[0], "noise": states[1], "config": config.to_dict(),
                             "data": describe(dataset)})
            ckpt.keep_last(ckpt_dir, config.keep_last)
    bar.close()
    if board is not None:
        board.close()
    if not math.isfinite(losses[-1] if losses else 0.0):
        raise FloatingPointError("the loss became non-finite")
    if end == config.steps:
        ckpt.export_safetensors(model, out_dir / "model")
    return TrainResult(steps=end, losses=losses, out_dir=out_dir)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, objective: Objective, batches,
               noise: torch.Generator, *, global_tokens: int, grad_clip: float,
               world_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step over ``batches`` (this rank's micro-batches of token ids, on the model's
    device), at the learning rate already set in ``optimizer``.

    Each micro-batch is noised with ``noise``; its summed loss is divided by ``global_tokens``
    (the step's token count over all ranks) before backward, so the accumulated gradient is the
    global token mean whatever the world size.  Returns the step's global means of (loss, KL, IS
    divergence, z-loss) as a float64 ``[4]`` tensor, all-reduced over ranks, and the gradient
    norm before clipping.  ``benchmarks/train_step.py`` times exactly this function.
    """
    sums = torch.zeros(4, dtype=torch.float64, device=noise.device)  # loss, kl, is, z_loss
    for x in batches:
        noised = objective.sample(x, noise)
        terms = objective.model_loss(model, x, noised)  # fused_loss: from hidden states, no logits
        # parallelize() SUMS gradients over ranks: dividing by the global token count makes
        # the step's gradient the global token mean, whatever the world size
        (terms.loss_sum / global_tokens).backward()
        sums += torch.stack([terms.loss_sum, terms.kl_sum, terms.is_sum, terms.z_loss_sum]).detach().double()
    grad_norm = clip_grad_norm(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return _all_reduce_sum(sums, world_size) / global_tokens, grad_norm


def _gather_states(loader: Loader, noise: torch.Generator, world_size: int) -> tuple[list, list]:
    """Every rank's loader position and noise RNG state, gathered for rank 0 to store."""
    local = (loader.state_dict(), noise.get_state().tolist())
    if world_size == 1:
        return [local[0]], [local[1]]
    gathered: list = [None] * world_size
    dist.all_gather_object(gathered, local)
    return [g[0] for g in gathered], [g[1] for g in gathered]
