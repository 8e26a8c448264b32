"""Sumi's training step: tokens per second and MFU, for a preset, in several variants side by side.

What is timed is ``sumi.train.loop.train_step``, the function the training loop calls, as the
loop calls it (``validate=False``: the loader checked the ids): noise a micro-batch
(``add_noise`` of the family's objective, ``sumi.train.build_objective``), forward, the loss,
backward (``grad_accumulation`` micro-batches), gradient clipping, the AdamW step.
``--objective NAME`` (default ``uniform``, Sumi) times another family's step (docs/training.md,
"Families"): its noise and loss, and its model (mask families have one more vocabulary id, ``ar``
attends causally); the loss is divided by the counted tokens as in the loop (``seq_len - 1`` per
row for ``ar``), tokens/s counts every token the model reads.  The model is built as ``sumi
train`` builds it: on the meta device, ``sumi.distributed.parallelize`` (activation
checkpointing, per-block compile, FSDP2 with bf16 mixed precision on a one-rank process group),
``to_empty``, seeded init.  Token ids are uniform random ids drawn once (below the mask id of a
mask family; the data loader is not part of the step).

Host syncs per step: one more step after the timed ones, run under
``sumi.train.syncs.count_host_syncs`` (every read of a tensor value by the host: ``item``,
``bool``, ``float``, ``tolist``, ``nonzero``, ...; AdamW's step counters, CPU tensors on every
device, excepted; compiled blocks run eagerly for it); on the CPU it counts the reads a GPU would
wait for.  On CUDA also the syncs
``torch.cuda.set_sync_debug_mode("warn")`` reports.  The result names where each sync is.

Before and after: ``--baseline DIR`` runs every variant a second time with the package from
``DIR`` (a checkout of an older commit, e.g. ``git worktree add /tmp/before <commit>``) first on
``PYTHONPATH``; the same worker code, seeds and sync counter (this checkout's), so the two rows
differ only by the library.  The JSON then has ``baseline`` and ``speedup`` (after / before
tokens/s) per variant; the first losses of both must agree.

Variants are ``+``-joined flags, one subprocess each (compile caches, allocator state and memory
peaks are not shared): ``plain`` or ``fused`` (loss from the logits, or fused with the output
projection: ``TrainConfig.fused_loss``), ``ac`` (activation checkpointing), ``compile``
(``torch.compile`` per block), ``bf16`` (FSDP2 mixed precision on a one-rank process group, as
``sumi train`` runs it in one process: bf16 compute, fp32 master weights, reductions and
optimizer), and an attention backend ``sdpa`` (default), ``eager`` or ``flash``.

Per variant: ``--warmup`` steps (compilation happens there), then ``--steps`` timed steps, each
ended by reading the loss (a host sync, as the loop does; on CUDA also ``synchronize``).
Reported: median step time, tokens/s, achieved model FLOP/s = ``flops_per_token`` (the model's
own count: ``6 N + 12 L H d S``, recomputation under ``ac`` not counted, as MFU is defined) x
tokens/s, MFU against the GPU's datasheet dense bf16 peak (``sumi.train.loop.PEAK_FLOPS``;
none on CPU), and the fraction of this device's *measured* dense matmul throughput (fp32
``2048^3`` on CPU, bf16 ``8192^3`` on CUDA: an attainable ceiling where no datasheet applies).
Memory: on CUDA the allocator's peak during the timed steps, on CPU the resident-set peak above
the resident set after warm-up (``VmHWM``); both include activations, gradients and the
optimizer's transient buffers.  The first step's loss is printed: every variant computes the
same loss from the same seed, so the column must agree (to bf16 rounding with ``bf16``).

    python benchmarks/train_step.py                         # CPU: tiny preset, plain/fused/ac/compile
    python benchmarks/train_step.py --quick                 # a seconds-long smoke run (tests)
    python benchmarks/train_step.py --device cuda --preset sumi_7b --layers 4 --micro-batch 4
    python benchmarks/train_step.py --variants fused+bf16,fused+bf16+compile --device cuda
    python benchmarks/train_step.py --objective ar --variants plain,fused  # another family's step
    git worktree add /tmp/before <commit> && python benchmarks/train_step.py --baseline /tmp/before

On CUDA the default variants are the bf16 ones (plain/fused, compile on/off, ac on/off) and a
one-rank process group is started (``RANK=0 WORLD_SIZE=1``, NCCL) so that FSDP2's mixed
precision applies exactly as under ``torchrun``; ``--no-fsdp`` turns that off for the variants
without ``bf16`` (which always run on a one-rank group).

Prints a table, then one JSON line (the last line of stdout) with every number and metadata;
meanwhile each variant's result goes to stderr as it lands (one JSON line each), so a run stopped
from outside keeps the variants it finished.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import inspect
import json
import os
import socket
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

from _machine import (  # noqa: E402  (benchmarks/ is on sys.path)
    OtherLoad, hardware, peak_rss_bytes, reset_peak_rss, rss_bytes, run_worker, sync, warn_if_busy,
)

FLAGS = {"plain", "fused", "ac", "compile", "bf16", "sdpa", "eager", "flash"}
CPU_VARIANTS = "plain,fused,fused+ac,fused+compile"
ROOT = Path(__file__).resolve().parents[1]
CUDA_VARIANTS = "plain+bf16,fused+bf16,fused+bf16+compile,fused+bf16+ac,fused+bf16+ac+compile"


def parse_variant(name: str) -> dict:
    """``"fused+ac+compile"`` -> the TrainConfig / model settings it stands for."""
    flags = name.split("+")
    unknown = set(flags) - FLAGS
    if unknown or len(set(flags)) != len(flags):
        raise ValueError(f"variant {name!r}: flags are {'+'.join(sorted(FLAGS))}, each at most once")
    losses = {"plain", "fused"} & set(flags)
    backends = {"sdpa", "eager", "flash"} & set(flags)
    if len(losses) > 1 or len(backends) > 1:
        raise ValueError(f"variant {name!r}: at most one of plain/fused and one attention backend")
    return {"fused_loss": "plain" not in flags, "activation_checkpointing": "ac" in flags,
            "compile": "compile" in flags, "mixed_precision": "bf16" in flags,
            "attention_backend": backends.pop() if backends else "sdpa"}


def build_config(args: argparse.Namespace, variant: dict):
    from sumi.configs import TRAIN_PRESETS

    config = TRAIN_PRESETS[args.preset]()
    sets = {"micro_batch_size": args.micro_batch, "global_batch_size": args.micro_batch * args.accumulation,
            "fused_loss": variant["fused_loss"], "activation_checkpointing": variant["activation_checkpointing"],
            "compile": variant["compile"], "mixed_precision": variant["mixed_precision"],
            "model.attention_backend": variant["attention_backend"]}
    if args.seq_len is not None:
        sets["seq_len"] = args.seq_len
    if args.layers is not None:
        sets["model.num_hidden_layers"] = args.layers
    if args.objective != "uniform":  # left out for Sumi's own: a --baseline library may predate families
        sets = {"objective": args.objective, **sets}
    return config.override([f"{k}={json.dumps(v)}" for k, v in sets.items()])


def matmul_flops(device: torch.device, repeats: int = 5) -> dict:
    """Measured dense matmul FLOP/s on ``device`` (fp32 2048^3 on CPU, bf16 8192^3 on CUDA)."""
    n, dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    g = torch.Generator(device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device).to(dtype)
    b = torch.randn(n, n, generator=g, device=device).to(dtype)
    a @ b  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return {"flops": 2 * n**3 / statistics.median(times), "n": n, "dtype": str(dtype).removeprefix("torch.")}


def sync_counter():
    """``sumi.train.syncs`` of THIS checkout, loaded from its file: the same instrument measures
    the ``--baseline`` library (which may predate it)."""
    spec = importlib.util.spec_from_file_location("_bench_syncs", ROOT / "sumi" / "train" / "syncs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def count_syncs(step, optimizer, device: torch.device) -> dict:
    """The host syncs of one call of ``step()``: counted reads of tensor values (AdamW's CPU step
    counters excepted) and, on CUDA, the syncs ``set_sync_debug_mode("warn")`` reports."""
    counter = sync_counter()
    out = {"host_syncs_per_step": None, "host_sync_sites": {}, "cuda_syncs_per_step": None}
    try:
        # compiled blocks run eagerly while counted (dynamo does not trace under a dispatch mode);
        # a fullgraph block holds no sync either way: a sync would have been a graph break
        with torch.compiler.set_stance("force_eager"), \
                counter.count_host_syncs(ignore=counter.optimizer_step_counters(optimizer)) as counted:
            step()
        out["host_syncs_per_step"], out["host_sync_sites"] = counted.count, dict(counted.sites)
    except Exception as e:  # noqa: BLE001 - reported, not fatal: a variant the counting mode cannot trace
        out["host_sync_sites"] = {"error": f"{type(e).__name__}: {e}"[:300]}
    if device.type == "cuda":
        sync(device)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        out["cuda_syncs_per_step"] = sum("synchroniz" in str(w.message) for w in caught)
    return out


def measure(args: argparse.Namespace) -> dict:
    """One variant in this process (called in a fresh subprocess)."""
    from sumi.distributed import destroy, init_distributed, parallelize
    from sumi.model import Sumi, flops_per_token, num_parameters
    from sumi.train import objective as objectives
    from sumi.train.loop import peak_flops, train_step
    from sumi.train.optim import build_optimizer

    torch.set_num_threads(args.threads)
    variant = parse_variant(args.worker)
    config = build_config(args, variant)
    group = args.fsdp or variant["mixed_precision"]
    if group:  # a one-rank group, as torchrun --nproc_per_node 1 (or sumi train with mixed precision) starts
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(args.port))
    info = init_distributed()
    device = torch.device(args.device) if not group else info.device
    model = parallelize(Sumi.on_meta(config.model), mixed_precision=config.mixed_precision,
                        activation_checkpointing=config.activation_checkpointing, compile_blocks=config.compile)
    model.to_empty(device=device)
    model.init_weights(torch.Generator(device).manual_seed(config.seed))
    model.train()
    optimizer = build_optimizer(model, lr=config.peak_lr, betas=(config.beta1, config.beta2),
                                weight_decay=config.weight_decay)
    if hasattr(objectives, "build_objective"):
        objective = objectives.build_objective(config)
        counted = config.global_batch_size * objective.counted_per_row(config.seq_len)
    else:  # a --baseline library from before the families: Sumi's objective only
        objective = objectives.Objective(config.model.vocab_size, per_token_share=config.per_token_share,
                                         z_loss=config.z_loss, fused=config.fused_loss)
        counted = config.global_batch_size * config.seq_len
    data = torch.Generator(device).manual_seed(1)
    # clean ids: a mask family's mask is the last id of its vocabulary, and never data
    data_vocab = getattr(config.model, "mask_token_id", None) or config.model.vocab_size
    batches = [(torch.randint(data_vocab, (config.micro_batch_size, config.seq_len), generator=data,
                              device=device), m * config.micro_batch_size) for m in range(args.accumulation)]
    noise = torch.Generator(device)
    tokens = config.global_batch_size * config.seq_len  # what the model reads: tokens/s
    options = dict(global_batch=config.global_batch_size, global_tokens=counted, grad_clip=config.grad_clip,
                   world_size=info.world_size)
    if "validate" in inspect.signature(train_step).parameters:
        options["validate"] = False  # as the loop calls it: its loader checked the ids on the host

    def step():
        return train_step(model, optimizer, objective, batches, noise, 2, **options)

    times, losses = [], []
    for i in range(args.warmup + args.steps):
        if i == args.warmup:  # memory peaks count the timed steps only
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                state = torch.cuda.memory_allocated(device)
            else:
                exact = reset_peak_rss()
                state = rss_bytes()
        sync(device)
        start = time.perf_counter()
        sums, _ = step()
        losses.append(float(sums[0]))
        sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
    syncs = count_syncs(step, optimizer, device)  # after the timing: the counting slows every operator
    destroy()
    step_s = statistics.median(times)
    flops = flops_per_token(config.model, config.seq_len)
    datasheet = peak_flops(device)
    achieved = flops * tokens / step_s
    return {
        "step_s": step_s, "min_step_s": min(times), "times_s": times, "tokens_per_step": tokens,
        "tokens_per_s": tokens / step_s, "flops_per_token": flops, "achieved_flops": achieved,
        "peak_flops": datasheet, "mfu": achieved / datasheet if datasheet else None,
        "state_bytes": state, "peak_extra_bytes": peak - state,
        "peak_method": ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                        else "VmHWM after clear_refs" if exact else "lifetime VmHWM"),
        "first_loss": losses[0], "last_loss": losses[-1], "losses": losses, **syncs,
        "library": str(Path(inspect.getfile(train_step)).resolve().parents[2]),
        "parameters": num_parameters(config.model), "config": {**variant, "objective": args.objective,
                                                               "seq_len": config.seq_len,
                                                               "micro_batch_size": config.micro_batch_size,
                                                               "layers": config.model.num_hidden_layers,
                                                               "hidden_size": config.model.hidden_size,
                                                               "vocab_size": config.model.vocab_size},
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ceiling(args: argparse.Namespace) -> dict:
    """The measured matmul ceiling, once per run, in its own process (same threads and device)."""
    code = (f"import sys, json, torch; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            f"torch.set_num_threads({args.threads}); from train_step import matmul_flops; "
            f"print(json.dumps(matmul_flops(torch.device({args.device!r}))))")
    return run_worker([sys.executable, "-c", code])


def run_variant(name: str, args: argparse.Namespace, library: str | None = None) -> dict:
    """One variant in a fresh interpreter; ``library``: a checkout whose ``sumi``/``discdiff`` it imports."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--preset", args.preset,
           "--micro-batch", str(args.micro_batch), "--accumulation", str(args.accumulation),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
           "--device", args.device, "--port", str(free_port()), "--fsdp" if args.fsdp else "--no-fsdp",
           "--objective", args.objective]
    if args.seq_len is not None:
        cmd += ["--seq-len", str(args.seq_len)]
    if args.layers is not None:
        cmd += ["--layers", str(args.layers)]
    env = None
    if library is not None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([library, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return run_worker(cmd, env=env)


def report(args: argparse.Namespace, results: dict, ceiling: dict, other_share: float,
           baseline: dict | None = None) -> None:
    hw = hardware()
    ok = {k: r for k, r in results.items() if "error" not in r}
    some = next(iter(ok.values()), None)
    shape = (f"{some['config']['layers']} layers x hidden {some['config']['hidden_size']}, "
             f"V = {some['config']['vocab_size']:,}, {some['parameters'] / 1e6:,.1f}M parameters, "
             f"{args.micro_batch} x {some['config']['seq_len']} tokens x {args.accumulation} micro-batches"
             if some else "")
    where = some["device_name"] if some and some["device_name"] else f"{hw['cpu']}, {args.threads} threads"
    print(f"Sumi training step, preset {args.preset}, objective {args.objective} ({shape}); {where}; median of "
          f"{args.steps} after {args.warmup} warm-up")
    warn_if_busy(other_share)
    print(f"{'variant':<26}{'step ms':>10}{'tokens/s':>12}{'TFLOP/s':>10}{'MFU':>8}{'of matmul':>11}"
          f"{'peak extra GB':>15}{'first loss':>13}{'syncs/step':>12}")
    rows = [(name, r) for name, r in results.items()]
    rows += [(f"before: {name}", r) for name, r in (baseline or {}).items()]
    for name, r in rows:
        if "error" in r:
            print(f"{name:<26}  failed: {r['error']}")
            continue
        r["matmul_fraction"] = r["achieved_flops"] / ceiling["flops"] if "flops" in ceiling else None
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "-"
        of_matmul = f"{r['matmul_fraction']:.1%}" if r["matmul_fraction"] is not None else "-"
        syncs = "-" if r["host_syncs_per_step"] is None else str(r["host_syncs_per_step"])
        if r["cuda_syncs_per_step"] is not None:
            syncs += f" / {r['cuda_syncs_per_step']}"
        print(f"{name:<26}{r['step_s'] * 1e3:>10.1f}{r['tokens_per_s']:>12,.0f}{r['achieved_flops'] / 1e12:>10.4f}"
              f"{mfu:>8}{of_matmul:>11}{r['peak_extra_bytes'] / 1e9:>15.3f}{r['first_loss']:>13.6f}{syncs:>12}")
    if "flops" in ceiling:
        print(f"'of matmul': achieved / this device's measured dense matmul throughput, "
              f"{ceiling['flops'] / 1e12:.3f} TFLOP/s ({ceiling['dtype']} {ceiling['n']}^3); "
              f"MFU: achieved / the datasheet dense bf16 peak, known GPUs only")
    how = "; after '/': CUDA's sync debug mode" if args.device == "cuda" else ", as a GPU would wait for them"
    print(f"syncs/step: reads of device values by the host in one step (counted{how})")
    speedup = None
    if baseline is not None:
        speedup = {name: (r["tokens_per_s"] / baseline[name]["tokens_per_s"]
                          if "error" not in r and "error" not in baseline.get(name, {"error": 1}) else None)
                   for name, r in results.items()}
        print("after / before tokens/s: " + ", ".join(f"{k} x{v:.2f}" for k, v in speedup.items() if v is not None)
              + f" (before: {args.baseline})")
    best = max(ok, key=lambda k: ok[k]["tokens_per_s"]) if ok else None
    losses = [r["first_loss"] for r in [*ok.values(), *(baseline or {}).values()] if "error" not in r]
    record = {
        "benchmark": "train_step", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "hardware": hw, "torch": torch.__version__, "device": args.device, "threads": args.threads,
        "preset": args.preset, "objective": args.objective, "layers": args.layers, "seq_len": args.seq_len,
        "micro_batch": args.micro_batch,
        "accumulation": args.accumulation, "fsdp": args.fsdp, "steps": args.steps, "warmup": args.warmup,
        "quick": args.quick, "matmul_ceiling": ceiling, "results": results, "best": best,
        "best_tokens_per_s": ok[best]["tokens_per_s"] if best else None,
        "best_mfu": ok[best]["mfu"] if best else None,
        "first_loss_spread": (max(losses) - min(losses)) / abs(min(losses)) if losses else None,
        "baseline_dir": args.baseline, "baseline": baseline, "speedup": speedup,
        "other_cpu_share": other_share,
    }
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="a sumi training preset (tiny, sumi_150m, sumi_1b, sumi_7b)")
    parser.add_argument("--objective", default="uniform",
                        help="the family whose step is timed: uniform (Sumi), masked, masked-ce, hybrid or ar")
    parser.add_argument("--layers", type=int, help="override the preset's depth (the 7B blocks on one GPU: 4)")
    parser.add_argument("--seq-len", type=int, help="override the preset's sequence length")
    parser.add_argument("--micro-batch", type=int, default=None, help="sequences per forward (default: the preset's)")
    parser.add_argument("--accumulation", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--variants", help=f"comma-separated (default CPU: {CPU_VARIANTS}; CUDA: {CUDA_VARIANTS})")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=None,
                        help="a one-rank process group so FSDP2 applies (default: on CUDA only; bf16 always has one)")
    parser.add_argument("--baseline", metavar="DIR",
                        help="also run every variant with the sumi/discdiff of this checkout (before/after)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="smoke run: 32-token sequences, 2 + 1 steps")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is None:  # a --baseline worker imports a library that may predate the families
        from sumi.configs.model import OBJECTIVES

        if args.objective not in OBJECTIVES:
            parser.error(f"--objective {args.objective}: one of {', '.join(OBJECTIVES)}")
    if args.fsdp is None:
        args.fsdp = args.device == "cuda"
    if args.quick:
        args.seq_len, args.steps, args.warmup = args.seq_len or 32, 2, 1
    if args.micro_batch is None:
        from sumi.configs import TRAIN_PRESETS

        args.micro_batch = TRAIN_PRESETS[args.preset]().micro_batch_size
    if args.worker:
        print(json.dumps(measure(args)))
        return
    names = (args.variants or (CUDA_VARIANTS if args.device == "cuda" else CPU_VARIANTS)).split(",")
    for name in names:
        parse_variant(name)  # fail on a typo before any run
    if args.baseline is not None and not (Path(args.baseline) / "sumi" / "train" / "loop.py").is_file():
        parser.error(f"--baseline {args.baseline}: not a checkout of this repository (no sumi/train/loop.py)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    with OtherLoad() as load:  # contention check: CPU the rest of the machine used meanwhile
        ceiling = run_ceiling(args)
        results, baseline = {}, ({} if args.baseline else None)
        for i, name in enumerate(names, 1):  # before right after after: a drifting load hits both alike
            # each variant's result as it lands (stderr): a run stopped from outside keeps them
            print(f"[{i}/{len(names)}] {name} ...", file=sys.stderr, flush=True)
            results[name] = run_variant(name, args)
            print(f"[{i}/{len(names)}] {name}: {json.dumps(results[name])}", file=sys.stderr, flush=True)
            if baseline is not None:
                baseline[name] = run_variant(name, args, os.path.abspath(args.baseline))
                print(f"[{i}/{len(names)}] {name} (baseline): {json.dumps(baseline[name])}", file=sys.stderr, flush=True)
    report(args, results, ceiling, load.share, baseline)


if __name__ == "__main__":
    main()
