"""One sampler step at Sumi's scale (vocab 100,278, canvas 2048, batch 1), six configurations.

Each row times one reverse step from ``lambda_t = logit(1/2)`` to ``lambda_s = logit(1/2 + 1/128)``
(mid-trajectory of a 128-step linear-alpha grid) on random logits ``N(0, 1)`` (float32 unless
stated), for two implementations of the same distribution:

- ``ours``: the ``discdiff.samplers`` rule (streaming ``x_hat``: per-row statistics in chunks, no
  vocabulary-sized tensor besides the logits, draws only where a token moves).
- ``naive``: the full-posterior step released samplers take: ``softmax`` (tempered, mask column
  removed, top-p by a full sort, cumsum and scatter, then renormalized), then
  ``Kernel.posterior`` builds the ``[B, S, V]`` posterior (float32, like the logits) and
  ``torch.multinomial`` draws from it.  For the adaptive row the dense equivalent: ``softmax``,
  the confidence from it, the top positions, a ``multinomial`` draw at every position.

Rows: ``uniform`` (Ancestral, Uniform kernel, T = 1), ``hybrid`` (Ancestral, Hybrid kernel with a
mask state), ``T=0.7``, ``bf16`` (bfloat16 logits), ``top_p=0.9``, ``adaptive`` (Adaptive, Uniform
kernel, 16 tokens per step, T = 1).  Goal per row: extra peak memory of ``ours`` at most 1/8 of
``naive``'s and ``ours`` at least 8x faster.  ``--baseline DIR`` adds a ``main`` column: the
``ours`` step run from another checkout (``git worktree add DIR <commit>``), for before/after.

Each (row, method) runs in its own subprocess: build the inputs, reset the resident-set
high-water mark, warm up once, time ``--repeats`` steps and report the median.  Peak extra memory
is the RSS high-water mark (VmHWM) minus the RSS after the inputs were built; tracemalloc cannot
see torch's allocator, RSS can.  The run also reports the share of the machine's CPU that other
processes used meanwhile (``/proc/stat``), since contention inflates the timings.  If the naive
path would not fit in memory, every row runs on a smaller canvas and the output says so.

    python benchmarks/sampler.py [--positions 2048] [--vocab 100278] [--repeats 3] [--threads N]
                                 [--rows uniform,hybrid,...] [--baseline DIR] [--quick]

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
    OtherLoad, hardware, peak_rss_bytes, reset_peak_rss, rss_bytes, run_worker, warn_if_busy,
)

SEED = 0
STEPS = 128      # the grid the step is taken from: alpha = 1/2 -> 1/2 + 1/STEPS
ALPHA_T = 0.5
TOKENS_PER_STEP = 16  # adaptive: a 256-token answer in 16 steps
GOAL = 8.0            # naive / ours, in time and in extra peak memory
ROWS = {
    # name: (rule, kernel family, temperature, logits dtype, top_p)
    "uniform": ("ancestral", "uniform", 1.0, "float32", None),
    "hybrid": ("ancestral", "hybrid", 1.0, "float32", None),
    "T=0.7": ("ancestral", "uniform", 0.7, "float32", None),
    "bf16": ("ancestral", "uniform", 1.0, "bfloat16", None),
    "top_p=0.9": ("ancestral", "uniform", 1.0, "float32", 0.9),
    "adaptive": ("adaptive", "uniform", 1.0, "float32", None),
}
METHODS = ("ours", "naive")


def make_kernel(family: str, vocab: int) -> dd.kernels.Kernel:
    return dd.kernels.Uniform(vocab) if family == "uniform" else dd.kernels.Hybrid(vocab, vocab - 1)


def make_rule(row: str, kernel) -> dd.samplers.StepRule:
    rule, _, _, _, top_p = ROWS[row]
    if rule == "adaptive":
        return dd.samplers.Adaptive(kernel, TOKENS_PER_STEP, top_p=top_p)
    return dd.samplers.Ancestral(kernel, top_p=top_p)


def dense_x_hat(logits, kernel, temperature: float, top_p: float | None):
    """``x_hat`` as a dense float32 ``[B, S, V]`` tensor, the way released samplers build it."""
    lg = logits.float()  # no copy for float32 logits
    if temperature != 1.0:
        lg = lg / temperature
    if kernel.mask_id is not None:
        lg = lg.index_fill(-1, torch.tensor([kernel.mask_id]), -math.inf)
    probs = torch.softmax(lg, dim=-1)
    if top_p is not None:
        sorted_p, order = probs.sort(-1, descending=True)
        keep_sorted = (sorted_p.cumsum(-1) - sorted_p) < top_p  # mass of the strictly better tokens
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = probs * keep
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def step_naive(row, kernel, logits, z_t, lam_t, lam_s, generator):
    rule, _, temperature, _, top_p = ROWS[row]
    probs = dense_x_hat(logits, kernel, temperature, top_p)
    if rule == "adaptive":
        conf = probs.amax(-1) - probs.gather(-1, z_t.unsqueeze(-1)).squeeze(-1)
        top = conf.topk(TOKENS_PER_STEP, dim=-1).indices
        selected = torch.zeros_like(z_t, dtype=torch.bool).scatter(-1, top, True) & (conf > 0)
        new = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(z_t.shape)
        return torch.where(selected, new, z_t)
    posterior = kernel.posterior(probs, z_t, lam_t.float(), lam_s.float())  # float32, like the logits
    flat = posterior.reshape(-1, posterior.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).reshape(z_t.shape)


def step_ours(row, kernel, logits, z_t, lam_t, lam_s, generator):
    temperature = ROWS[row][2]
    return make_rule(row, kernel).step(logits, z_t, lam_t, lam_s, temperature=temperature, generator=generator,
                                       validate=False)


def measure(method: str, row: str, positions: int, vocab: int, repeats: int, threads: int) -> dict:
    """Run one (row, method) in this process and return its numbers (called in a fresh subprocess)."""
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(SEED)
    _, family, _, dtype, _ = ROWS[row]
    kernel = make_kernel(family, vocab)
    logits = torch.randn(1, positions, vocab, generator=g).to(getattr(torch, dtype))
    lam_t = torch.logit(torch.tensor([ALPHA_T], dtype=torch.float64))
    clean = torch.randint(0, vocab - (kernel.mask_id is not None), (1, positions), generator=g)  # mask is V - 1
    z_t = kernel.corrupt(clean, lam_t, generator=g)
    lam_s = torch.logit(torch.tensor([ALPHA_T + 1.0 / STEPS], dtype=torch.float64))
    step = step_ours if method in ("ours", "main") else step_naive
    base_rss = rss_bytes()
    reset_peak_rss()
    times, moved = [], []
    for i in range(repeats + 1):  # i = 0 is the warm-up
        start = time.perf_counter()
        z_s = step(row, kernel, logits, z_t, lam_t, lam_s, g)
        elapsed = time.perf_counter() - start
        if i:
            times.append(elapsed)
            moved.append((z_s != z_t).double().mean().item())
        del z_s
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "times_s": times,
        "peak_extra_bytes": max(peak_rss_bytes() - base_rss, 0),
        "input_rss_bytes": base_rss,
        "moved_fraction": statistics.mean(moved),
    }


def run_isolated(method: str, row: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--worker-row", row,
           "--positions", str(args.positions), "--vocab", str(args.vocab), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    env = None
    if method == "main":  # the same step, imported from the baseline checkout
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [args.baseline, os.environ.get("PYTHONPATH")]))}
    return run_worker(cmd, env=env)


def fitting_positions(positions: int, vocab: int) -> int:
    """Halve the canvas until the naive path's estimated footprint fits in available memory.

    Its peak is about six float32 ``[S, V]`` tensors beyond the logits (softmax, q_s, the
    transition's noise terms, numerator, posterior; measured 6.06 at 2048 x 100,278), more with
    top-p's sort (values and int64 indices); fourteen are budgeted.
    """
    with open("/proc/meminfo") as f:
        info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
    available = info.get("MemAvailable", math.inf)
    while positions > 1 and 14 * positions * vocab * 4 > 0.8 * available:
        positions //= 2
    return positions


def summarize(results: dict) -> dict:
    """Per row: naive / ours in time and extra peak memory, and whether both reach GOAL."""
    ours, naive = results["ours"], results["naive"]
    if "error" in ours or "error" in naive:
        return {"time": None, "memory": None, "goal_met": False}
    time_ratio = naive["median_s"] / ours["median_s"]
    memory_ratio = naive["peak_extra_bytes"] / max(ours["peak_extra_bytes"], 1)
    return {"time": time_ratio, "memory": memory_ratio, "goal_met": time_ratio >= GOAL and memory_ratio >= GOAL}


def report(args: argparse.Namespace, requested: int, rows: dict, other_share: float) -> None:
    gb = 1e9
    print(f"One sampler step, V = {args.vocab:,}, canvas {args.positions} x batch 1, alpha {ALPHA_T} -> "
          f"{ALPHA_T + 1 / STEPS} (lambda {math.log(ALPHA_T / (1 - ALPHA_T)):.4f} -> "
          f"{math.log((ALPHA_T + 1 / STEPS) / (1 - ALPHA_T - 1 / STEPS)):.4f}), {args.threads} threads, "
          f"median of {args.repeats} after 1 warm-up; goal: naive / ours >= {GOAL:g} in time and memory")
    warn_if_busy(other_share)
    if args.quick:
        print("NOTE: --quick runs tiny sizes to check the script; the goals are for the full size.")
    if args.positions != requested:
        print(f"NOTE: {requested} positions would not fit the naive path in memory; measured {args.positions}.")
    print(f"{'row':<11}{'method':<8}{'median s':>10}{'min s':>9}{'peak extra GB':>15}{'moved':>8}")
    for row, entry in rows.items():
        for method, r in entry["results"].items():
            if "error" in r:
                print(f"{row:<11}{method:<8}  failed: {r['error']}")
                continue
            print(f"{row:<11}{method:<8}{r['median_s']:>10.3f}{r['min_s']:>9.3f}{r['peak_extra_bytes'] / gb:>15.3f}"
                  f"{r['moved_fraction']:>8.3f}")
        ratio = entry["ratio_naive_over_ours"]
        if ratio["time"] is not None:
            verdict = "goal met" if ratio["goal_met"] else "GOAL MISSED"
            print(f"{'':<11}naive / ours: time x{ratio['time']:.1f}, "
                  f"peak extra memory x{ratio['memory']:.1f} ({verdict})")
    print("(moved: fraction of positions with z_s != z_t; both methods draw from the same distribution, so "
          "these agree up to sampling noise.)")
    record = {
        "benchmark": "sampler.step",
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
        "tokens_per_step": TOKENS_PER_STEP,
        "goal": GOAL,
        "baseline": args.baseline,
        "quick": args.quick,
        "rows": rows,
        "all_goals_met": all(entry["ratio_naive_over_ours"]["goal_met"] for entry in rows.values()),
        "other_cpu_share": other_share,
    }
    print(json.dumps(record))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--positions", type=int, default=2048)
    parser.add_argument("--vocab", type=int, default=100_278)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ", ".join(ROWS))
    parser.add_argument("--baseline", default=None, help="a checkout whose discdiff runs as the 'main' column")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (canvas 32, vocab 1001, 1 repeat), for tests")
    parser.add_argument("--worker", choices=("ours", "naive", "main"), help=argparse.SUPPRESS)
    parser.add_argument("--worker-row", choices=sorted(ROWS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(measure(args.worker, args.worker_row, args.positions, args.vocab, args.repeats, args.threads)))
        return
    rows = [r for r in args.rows.split(",") if r]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        parser.error(f"--rows takes a comma-separated subset of {', '.join(ROWS)}; got {args.rows!r}")
    if args.baseline is not None and not os.path.isdir(os.path.join(args.baseline, "discdiff")):
        parser.error(f"--baseline {args.baseline!r} holds no discdiff package (make one with git worktree add)")
    if args.quick:
        args.positions, args.vocab, args.repeats = 32, 1001, 1
    requested = args.positions
    args.positions = fitting_positions(requested, args.vocab)
    methods = METHODS + (("main",) if args.baseline else ())
    out = {}
    with OtherLoad() as load:  # contention check: CPU the rest of the machine used meanwhile
        for row in rows:
            results = {method: run_isolated(method, row, args) for method in methods}
            out[row] = {"results": results, "ratio_naive_over_ours": summarize(results)}
    report(args, requested, out, load.share)


if __name__ == "__main__":
    main()
