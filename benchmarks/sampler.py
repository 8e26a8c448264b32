"""One ancestral step at Sumi's scale (vocab 100,278, canvas 2048, batch 1, uniform noise).

Measures wall time and peak extra memory of a single reverse step from ``lambda_t = logit(1/2)``
to ``lambda_s = logit(1/2 + 1/128)`` (mid-trajectory of a 128-step linear-alpha grid) on random
float32 logits, for two implementations of the same distribution:

- ``ours``: ``discdiff.samplers.Ancestral(Uniform(V)).step``: stay at ``z_t`` or move to a draw
  from ``q_s(. | x_hat)``; ``x_hat`` drawn by a chunked float64 inverse CDF.  Never builds the
  ``[B, S, V]`` posterior.
- ``naive``: what released samplers do: ``Kernel.posterior(softmax(logits), ...)`` builds the
  full posterior (float32, like the logits), then ``torch.multinomial`` draws from it.

Each method runs in its own subprocess (so neither sees the other's allocations): build the
inputs, record the resident set size (RSS), warm up once, time ``--repeats`` steps and report
the median.  Peak extra memory is ``ru_maxrss`` (the process's RSS high-water mark) minus the RSS
after the inputs were built; tracemalloc cannot see torch's allocator, RSS can.  The run also
reports the share of the machine's CPU that other processes used meanwhile (``/proc/stat``), since
contention inflates the timings.  If the naive path would not fit in memory, both methods run on a
smaller canvas and the output says so.

    python benchmarks/sampler.py [--positions 2048] [--vocab 100278] [--repeats 3] [--threads N]

Prints a table, then one JSON line (the last line of stdout) with every number and metadata.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

import torch

import discdiff as dd

from _machine import (  # noqa: E402  (benchmarks/ is on sys.path)
    OtherLoad, hardware, peak_rss_bytes, rss_bytes, run_worker, warn_if_busy,
)

SEED = 0
STEPS = 128      # the grid the step is taken from: alpha = 1/2 -> 1/2 + 1/STEPS
ALPHA_T = 0.5


def step_ours(kernel, logits, z_t, lam_t, lam_s, generator):
    return dd.samplers.Ancestral(kernel).step(logits, z_t, lam_t, lam_s, generator=generator)


def step_naive(kernel, logits, z_t, lam_t, lam_s, generator):
    posterior = kernel.posterior(torch.softmax(logits, dim=-1), z_t, lam_t, lam_s)
    flat = posterior.reshape(-1, posterior.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(z_t.shape)


METHODS = {"ours": step_ours, "naive": step_naive}


def measure(method: str, positions: int, vocab: int, repeats: int, threads: int) -> dict:
    """Run one method in this process and return its numbers (called in a fresh subprocess)."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(SEED)
    kernel = dd.kernels.Uniform(vocab)
    logits = torch.randn(1, positions, vocab, generator=g)
    z_t = torch.randint(0, vocab, (1, positions), generator=g)
    lam_t = torch.logit(torch.tensor([ALPHA_T]))
    lam_s = torch.logit(torch.tensor([ALPHA_T + 1.0 / STEPS]))
    step = METHODS[method]
    base_rss = rss_bytes()
    times, moved = [], []
    for i in range(repeats + 1):  # i = 0 is the warm-up
        start = time.perf_counter()
        z_s = step(kernel, logits, z_t, lam_t, lam_s, g)
        elapsed = time.perf_counter() - start
        if i:
            times.append(elapsed)
            moved.append((z_s != z_t).double().mean().item())
        del z_s
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "peak_extra_bytes": peak_rss_bytes() - base_rss,
        "input_rss_bytes": base_rss,
        "moved_fraction": statistics.mean(moved),
    }


def run_isolated(method: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--positions", str(args.positions),
           "--vocab", str(args.vocab), "--repeats", str(args.repeats), "--threads", str(args.threads)]
    return run_worker(cmd)


def fitting_positions(positions: int, vocab: int) -> int:
    """Halve the canvas until the naive path's estimated footprint fits in available memory.

    Its peak is about six float32 ``[S, V]`` tensors beyond the logits (softmax, q_s, the
    transition's noise terms, numerator, posterior; measured 6.06 at 2048 x 100,278); eight are
    budgeted, for headroom.
    """
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    available = info.get("MemAvailable", math.inf)
    while positions > 1 and 8 * positions * vocab * 4 > 0.8 * available:
        positions //= 2
    return positions


def report(args: argparse.Namespace, requested: int, results: dict, other_share: float) -> None:
    gb = 1e9
    print(f"One ancestral step, uniform kernel, V = {args.vocab:,}, canvas {args.positions} x batch 1, "
          f"alpha {ALPHA_T} -> {ALPHA_T + 1 / STEPS} (lambda {math.log(ALPHA_T / (1 - ALPHA_T)):.4f} -> "
          f"{math.log((ALPHA_T + 1 / STEPS) / (1 - ALPHA_T - 1 / STEPS)):.4f}), {args.threads} threads, "
          f"median of {args.repeats} after 1 warm-up")
    warn_if_busy(other_share)
    if args.positions != requested:
        print(f"NOTE: {requested} positions would not fit the naive path in memory; measured {args.positions}.")
    print(f"{'method':<8}{'median s':>10}{'min s':>9}{'peak extra GB':>15}{'moved':>8}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:<8}  failed: {r['error']}")
            continue
        print(f"{name:<8}{r['median_s']:>10.3f}{r['min_s']:>9.3f}{r['peak_extra_bytes'] / gb:>15.3f}"
              f"{r['moved_fraction']:>8.3f}")
    ours, naive = results["ours"], results["naive"]
    if "error" not in ours and "error" not in naive:
        ratios = {"time": naive["median_s"] / ours["median_s"],
                  "memory": naive["peak_extra_bytes"] / max(ours["peak_extra_bytes"], 1)}
        print(f"naive / ours: time x{ratios['time']:.1f}, peak extra memory x{ratios['memory']:.1f}")
    else:
        ratios = None
    print("(moved: fraction of positions with z_s != z_t; both draw from the same distribution, so these "
          "agree up to sampling noise.)")
    record = {
        "benchmark": "sampler.ancestral_step",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "hardware": hardware(),
        "torch": torch.__version__,
        "threads": args.threads,
        "vocab": args.vocab,
        "positions": args.positions,
        "positions_requested": requested,
        "batch": 1,
        "repeats": args.repeats,
        "alpha_t": ALPHA_T,
        "alpha_s": ALPHA_T + 1 / STEPS,
        "naive_dtype": "float32",
        "results": results,
        "ratio_naive_over_ours": ratios,
        "other_cpu_share": other_share,
    }
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=100_278)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.positions, args.vocab, args.repeats, args.threads)))
        return
    requested = args.positions
    args.positions = fitting_positions(requested, args.vocab)
    with OtherLoad() as load:  # contention check: CPU the rest of the machine used meanwhile
        results = {name: run_isolated(name, args) for name in METHODS}
    report(args, requested, results, load.share)


if __name__ == "__main__":
    main()
