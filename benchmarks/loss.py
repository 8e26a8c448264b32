"""Sumi's training loss at vocabulary 100,278: fused from hidden states vs plain from logits.

One forward + backward of the loss part of Sumi's objective (uniform kernel, the GIDD surrogate
with ``beta_IS = 1``, z-loss ``1e-5 * logsumexp^2``, summed over tokens), starting from the
final hidden states ``h`` ``[1, tokens, H]`` and the head ``W`` ``[V, H]`` (both float32, both
needing gradients), for two implementations of the same numbers:

- ``plain``: ``logits = h @ W.T``, then ``discdiff.losses.gidd`` plus the z-loss on the
  logits, as ``sumi.train.Objective.loss`` does; autograd through all of it.
- ``fused``: ``discdiff.losses.gidd_from_hidden(..., z_loss=1e-5)``, as
  ``Objective.loss_from_hidden`` does: chunks of tokens x vocabulary, never the whole logits.

Noise as in Sumi's training: ``t ~ U(0, 1)`` per token, ``lambda = logit(1 - t)`` clamped to
``[-9, 9]``, ``z ~ q_lambda(. | x)``; ``h ~ N(0, 1)``, ``W ~ N(0, 0.02^2)`` (Sumi's init).

Each implementation runs in its own subprocess, so neither sees the other's allocations: build
the inputs, run the whole computation once on small inputs and once on the real ones (warm-up),
reset the process's resident-set high-water mark (``/proc/self/clear_refs``), then time
``--repeats`` forward + backward passes and report the median.  Peak extra memory is the
high-water mark (``VmHWM``) minus the resident set size before the timed passes (inputs built,
no gradients held); it includes the gradients of ``h`` and ``W`` (the same ``V x H`` float32
buffer in both), so the table also shows it without them.  tracemalloc cannot see torch's CPU
allocator, and torch offers no CPU allocator statistics; RSS sees everything.  The run also
reports the share of the machine's CPU that other processes used meanwhile (``/proc/stat``).

    python benchmarks/loss.py [--tokens 1184] [--vocab 100278] [--hidden 512] [--repeats 3] [--threads N]
    python benchmarks/loss.py --quick        # 384 tokens, 3 repeats: under a minute on 2 cores

Prints a table, then one JSON line (the last line of stdout) with every number and metadata,
including ``mem_ratio`` (fused / plain peak extra memory) and ``time_ratio`` (fused / plain
median time).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import torch

import discdiff as dd

from _machine import (  # noqa: E402  (benchmarks/ is on sys.path)
    OtherLoad, hardware, peak_rss_bytes, reset_peak_rss, rss_bytes, run_worker, warn_if_busy,
)

SEED = 0
Z_LOSS = 1e-5
INIT_STD = 0.02


def loss_plain(kernel, hidden, weight, x, z, lam):
    logits = hidden @ weight.T
    out = dd.losses.gidd(kernel, logits, x, z, lam, reduction="sum", validate=False)
    return out.loss + Z_LOSS * torch.logsumexp(logits, dim=-1).square().sum()


def loss_fused(kernel, hidden, weight, x, z, lam):
    return dd.losses.gidd_from_hidden(kernel, hidden, weight, x, z, lam, reduction="sum", z_loss=Z_LOSS,
                                      validate=False).loss


METHODS = {"plain": loss_plain, "fused": loss_fused}


def inputs(tokens: int, vocab: int, hidden_size: int, seed: int = SEED):
    g = torch.Generator().manual_seed(seed)
    kernel = dd.kernels.Uniform(vocab)
    x = torch.randint(vocab, (1, tokens), generator=g)
    t = torch.rand(1, tokens, generator=g, dtype=torch.float64)
    lam = dd.schedules.LinearAlpha().log_snr(t)
    z = kernel.corrupt(x, lam, g)
    hidden = torch.randn(1, tokens, hidden_size, generator=g).requires_grad_(True)
    weight = torch.randn(vocab, hidden_size, generator=g).mul_(INIT_STD).requires_grad_(True)  # in place: no copy
    return kernel, hidden, weight, x, z, lam.float()


def step(method: str, case) -> tuple[float, float]:
    """One forward + backward; returns the loss and the gradient norm (read without copies)."""
    kernel, hidden, weight, x, z, lam = case
    loss = METHODS[method](kernel, hidden, weight, x, z, lam)
    loss.backward()
    value = float(loss.detach())
    grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(hidden.grad),
                                                             torch.linalg.vector_norm(weight.grad)])))
    hidden.grad = weight.grad = None
    return value, grad_norm


def measure(method: str, tokens: int, vocab: int, hidden_size: int, repeats: int, threads: int) -> dict:
    """Run one method in this process and return its numbers (called in a fresh subprocess)."""
    torch.set_num_threads(threads)
    step(method, inputs(min(tokens, 8), min(vocab, 4099), min(hidden_size, 16)))  # code paths, libraries
    case = inputs(tokens, vocab, hidden_size)
    loss, grad_norm = step(method, case)  # warm-up at full size
    exact_peak = reset_peak_rss()
    base = rss_bytes()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(method, case)
        times.append(time.perf_counter() - start)
    peak = peak_rss_bytes()
    grads = (tokens * hidden_size + vocab * hidden_size) * 4
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "peak_extra_bytes": peak - base,
        "peak_extra_without_grads_bytes": peak - base - grads,
        "grads_bytes": grads,
        "input_rss_bytes": base,
        "peak_method": "VmHWM after clear_refs" if exact_peak else "ru_maxrss (not reset)",
        "loss": loss,
        "grad_norm": grad_norm,
    }


def run_isolated(method: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--tokens", str(args.tokens),
           "--vocab", str(args.vocab), "--hidden", str(args.hidden), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    return run_worker(cmd)


def _ratio(num: float, den: float) -> float | None:
    return max(num, 0) / den if den > 0 else None


def report(args: argparse.Namespace, results: dict, other_share: float) -> None:
    gb = 1e9
    hw = hardware()
    print(f"Sumi loss forward + backward from hidden states: uniform kernel, V = {args.vocab:,}, {args.tokens} tokens, "
          f"hidden {args.hidden}, float32, z-loss {Z_LOSS}; {hw['cpu']}, {args.threads} threads, "
          f"median of {args.repeats} after 1 warm-up")
    warn_if_busy(other_share)
    print(f"{'method':<7}{'median s':>10}{'min s':>9}{'peak extra GB':>15}{'w/o grads GB':>14}{'loss':>16}"
          f"{'|grad|':>12}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<7}  failed: {r['error']}")
            continue
        print(f"{name:<7}{r['median_s']:>10.3f}{r['min_s']:>9.3f}{r['peak_extra_bytes'] / gb:>15.3f}"
              f"{r['peak_extra_without_grads_bytes'] / gb:>14.3f}{r['loss']:>16.6f}{r['grad_norm']:>12.6f}")
    plain, fused = results["plain"], results["fused"]
    ratios = {}
    if "error" not in plain and "error" not in fused:
        ratios = {  # None where the plain path's extra memory is below what RSS pages resolve
            "mem_ratio": _ratio(fused["peak_extra_bytes"], plain["peak_extra_bytes"]),
            "mem_ratio_without_grads": _ratio(fused["peak_extra_without_grads_bytes"],
                                              plain["peak_extra_without_grads_bytes"]),
            "time_ratio": fused["median_s"] / plain["median_s"],
            "loss_rel_diff": abs(fused["loss"] - plain["loss"]) / abs(plain["loss"]),
            "grad_norm_rel_diff": abs(fused["grad_norm"] - plain["grad_norm"]) / plain["grad_norm"],
        }
        mem, mem_ng = (f"x{v:.3f}" if v is not None else "unmeasurable" for v in
                       (ratios["mem_ratio"], ratios["mem_ratio_without_grads"]))
        print(f"fused / plain: time x{ratios['time_ratio']:.3f}, peak extra memory {mem} "
              f"({mem_ng} without the {fused['grads_bytes'] / gb:.3f} GB of "
              f"gradients both return); loss agrees to {ratios['loss_rel_diff']:.1e} relative")
    record = {
        "benchmark": "loss.gidd_fused_vs_plain",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "hardware": hw,
        "torch": torch.__version__,
        "threads": args.threads,
        "vocab": args.vocab,
        "tokens": args.tokens,
        "hidden": args.hidden,
        "dtype": "float32",
        "z_loss": Z_LOSS,
        "repeats": args.repeats,
        "quick": args.quick,
        "results": results,
        **ratios,
        "other_cpu_share": other_share,
    }
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1184, help="tokens in the batch (default: one Sumi sequence)")
    parser.add_argument("--vocab", type=int, default=100_278)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="384 tokens, 3 repeats")
    parser.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.tokens, args.vocab, args.hidden, args.repeats, args.threads)))
        return
    if args.quick:
        args.tokens, args.repeats = 384, 3
    with OtherLoad() as load:  # contention check: CPU the rest of the machine used meanwhile
        results = {name: run_isolated(name, args) for name in METHODS}
    report(args, results, load.share)


if __name__ == "__main__":
    main()
