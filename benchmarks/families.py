"""Every family of the recipe trained and scored by the same code: uniform (Sumi), masked,
masked-ce, hybrid and autoregressive on the embedded corpus, one table.

For each family, two real command lines, each in its own process:

1. ``sumi train --preset tiny --objective NAME --out OUT/NAME`` (the embedded default: the
   standard library's training split, the cached 512-id tokenizer, the same model, optimizer,
   schedule, data order and seed for every family; ``--steps`` shortens it);
2. ``sumi eval nelbo --model OUT/NAME/model --data stdlib:heldout --json`` on the held-out split
   (files never trained on, nor seen by the tokenizer; ``--data`` scores other held-out text): bits per byte, a NELBO upper bound for the
   diffusion families, the exact NLL for ``ar``; and on the same bytes the standard library's
   compressors (gzip, bz2, xz), so the table says at once whether a model beats a compressor.

Training throughput is the median ``tokens_per_s`` of the logged steps after the first tenth
(the first steps pay for warm-up); ``train_s`` is the training command's wall time (the
embedded default's samples and loss curve included).  Compare families only within one run (same
machine, same load): ``other_cpu_share`` says how much of the CPU other processes used.

    python benchmarks/families.py                       # the full tiny recipe per family (~2 min each on 2 cores)
    python benchmarks/families.py --steps 20 --points 4 --families uniform,ar   # a smoke run
    python benchmarks/families.py --data heldout/     # scored on other held-out text
    python benchmarks/families.py --out runs/families   # keep the runs (default: a temporary directory)

Prints a table, then one JSON line (the last line of stdout) with every number and metadata.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import OtherLoad, hardware, warn_if_busy  # noqa: E402

FAMILIES = ("uniform", "masked", "masked-ce", "hybrid", "ar")


def _sumi(args: list[str], threads: int | None) -> tuple[str, float]:
    """Run ``python -m sumi ARGS`` to completion; its stdout and wall time (stderr passes through
    on failure)."""
    cmd = [sys.executable, "-m", "sumi", *args] + ([] if threads is None else ["--threads", str(threads)])
    began = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"families: `{' '.join(cmd[2:])}` failed with exit status {proc.returncode}")
    return proc.stdout, time.perf_counter() - began


def _tokens_per_s(metrics: Path) -> float | None:
    rates = [r["tokens_per_s"] for r in map(json.loads, metrics.read_text().splitlines())
             if isinstance(r.get("tokens_per_s"), (int, float))]
    rates = rates[len(rates) // 10:]
    return statistics.median(rates) if rates else None


def run_family(name: str, out: Path, args: argparse.Namespace) -> dict:
    run = out / name
    train = ["train", "--preset", "tiny", "--objective", name, "--out", str(run), "--seed", str(args.seed),
             "--no-progress"] + ([] if args.steps is None else ["--steps", str(args.steps)])
    _, train_s = _sumi(train, args.threads)
    report, _ = _sumi(["eval", "nelbo", "--model", str(run / "model"), "--data", *args.data, "--json",
                       "--points", str(args.points), "--seed", str(args.seed)], args.threads)
    scored = json.loads(report.strip().splitlines()[-1])
    return {"objective": name, "train_s": train_s, "tokens_per_s": _tokens_per_s(run / "metrics.jsonl"),
            "bits_per_byte": scored["bits_per_byte"], "bound": scored["bound"], "baselines": scored["baselines"],
            "bytes": scored["bytes"], "tokens": scored["tokens"], "points": scored.get("points")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, from {', '.join(FAMILIES)}")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the tiny preset's)")
    parser.add_argument("--points", type=int, default=32, help="time points of the diffusion NELBO (default 32)")
    parser.add_argument("--data", nargs="+", default=["stdlib:heldout"], metavar="PATH_OR_GLOB",
                        help="the held-out text every family is scored on (default stdlib:heldout: the standard "
                             "library files the tiny preset never trains on); files never trained on, or the "
                             "scores are not held-out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="passed to sumi (default: sumi's choice)")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temporary directory)")
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    if not families or any(f not in FAMILIES for f in families):
        parser.error(f"--families takes names from {', '.join(FAMILIES)}, got {args.families!r}")
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty: choose a new directory (runs are never overwritten)")

    with OtherLoad() as load, tempfile.TemporaryDirectory(prefix="sumi-families-") as tmp:
        out = args.out if args.out is not None else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        rows = []
        for name in families:
            print(f"families: {name} ...", file=sys.stderr, flush=True)
            rows.append(run_family(name, out, args))
    other = load.share

    baselines = rows[0]["baselines"]
    print(f"Every family on the embedded corpus: tiny preset, {args.steps or 'the preset s'} steps, seed {args.seed}; "
          f"held-out {' '.join(args.data)} ({rows[0]['bytes']:,} bytes); diffusion NELBO at {args.points} points")
    print(f"{'family':<11}{'bits/byte':>10}{'kind':>14}{'train tokens/s':>16}{'train s':>9}")
    for r in rows:
        kind = "NELBO (bound)" if r["bound"] else "NLL (exact)"
        rate = f"{r['tokens_per_s']:,.0f}" if r["tokens_per_s"] else "-"
        print(f"{r['objective']:<11}{r['bits_per_byte']:>10.4f}{kind:>14}{rate:>16}{r['train_s']:>9.1f}")
    for name, value in baselines.items():
        print(f"{name:<11}{value:>10.4f}{'compressor':>14}")
    order = sorted(rows, key=lambda r: r["bits_per_byte"])
    print("ordering (best first): " + " < ".join(r["objective"] for r in order))
    warn_if_busy(other)
    print(json.dumps({"benchmark": "families", "date": datetime.date.today().isoformat(), "hardware": hardware(),
                      "steps": args.steps, "points": args.points, "seed": args.seed, "data": args.data, "rows": rows,
                      "baselines": baselines, "ordering": [r["objective"] for r in order],
                      "other_cpu_share": other}))


if __name__ == "__main__":
    main()
