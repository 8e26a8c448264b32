"""``sumi eval nelbo`` throughput: scored tokens x time points per second, against the model's
plain forward tokens/s on the same model and canvas, and against main before issue 14.

Input: this repository's own Python, generated here (nothing is committed): the ``.py`` files
under ``discdiff/`` and ``sumi/`` of the checkout running the benchmark, sorted by path, whole
files until ``--kb`` kilobytes, each file one document as ``sumi eval nelbo --data`` reads it.
Tokenizer: the embedded ``SumiTokenizer.default()`` (512 ids; with a larger ``--vocab`` the text
still uses ids below 512, which changes no cost).  Model: a preset (``--preset``, ``--layers``,
``--vocab``) of the family ``--objective`` (default ``uniform``; a mask family adds the mask id)
with random weights from a fixed seed (no trained weights are needed for speed; every method
scores the same weights), float32, in eval mode.  For ``ar`` the scorer computes the exact NLL
(one forward per window, no time points): its throughput is scored tokens per second, and only
``ours`` runs (``logits`` and ``main`` are NELBO algorithms).

Methods, each in a fresh interpreter (peak resident memory is per method):

- ``ours``: ``sumi.evaluate.nelbo_texts`` (what ``sumi eval nelbo`` runs after loading the model)
  with its defaults: the loss fused with the head from the hidden states, several time points
  per forward pass (``--tokens-per-pass``, default the scorer's); since issue 15 this includes
  the compressor baselines of the report (gzip, bz2, xz at their maximum levels: about 1.3 s
  for 281 KB on the 2-core VM, 0.4% of the 5 min 21 s of a 128-point estimate of those bytes);
- ``logits``: the previous algorithm on the current code, kept selectable here only: each batch
  of rows scored by ``discdiff.likelihood.nelbo`` on the model's ``[tokens, V]`` logits, one
  forward per time point;
- ``main``: the same ``nelbo_texts`` call with the code of a checkout of main before this issue
  (``--baseline PATH``, e.g. ``git worktree add --detach /tmp/sumi-main 1628ef9``), imported
  through ``PYTHONPATH`` (the worker checks that it imported that checkout);
- ``forward``: ``model(ids)`` (logits) under ``torch.no_grad()`` on ``[batch_size, canvas]``
  random ids, the rows one time point of one batch scores: the floor every evaluation pays.

Each scoring method runs once over the whole input after a warm-up on one short text; the
forward is the median of ``--repeats`` after one warm-up.  Throughput of a scoring method =
scored tokens x points / seconds; ``over_forward`` = that / forward tokens/s (the goal is >= 0.5),
``ours_over_main`` = ours / main (the goal is >= 5).  Every method also reports the CPU time
of its process (``cpu_seconds``, ``cpu_median_s``) and the same ratios from it (``*_cpu``): with
``--threads 1`` these hold on a machine that other processes keep busy, where wall time does not
(the table warns when they used more than 5% of the CPU).  All methods draw the same noise (same
seed and batch size), so their NELBOs agree up to float32 rounding (``nats_rel_diff``).

    python benchmarks/evaluate.py --baseline /tmp/sumi-main            # tiny preset, canvas 512, 8 points
    python benchmarks/evaluate.py --baseline /tmp/sumi-main --canvas 128 --points 16 --kb 100
    python benchmarks/evaluate.py --baseline /tmp/sumi-main --preset sumi_150m --layers 2 --vocab 100278 \\
        --kb 4 --points 2 --repeats 2                                   # the 150M shapes at 2 layers
    python benchmarks/evaluate.py --quick                               # a smoke run (no baseline)
    python benchmarks/evaluate.py --quick --objective masked --methods ours,logits   # another family

Prints a table, then one JSON line (the last line of stdout) with every number and metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _machine import (  # noqa: E402  (benchmarks/ is on sys.path)
    OtherLoad, hardware, peak_rss_bytes, reset_peak_rss, run_worker, sync, warn_if_busy,
)

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ours", "logits", "main")


def corpus(kb: int) -> list[str]:
    """Whole ``.py`` files of this checkout's packages, sorted by path, until ``kb`` KB."""
    files = sorted(p for package in ("discdiff", "sumi") for p in (ROOT / package).rglob("*.py"))
    texts, size = [], 0
    for path in files:
        if size >= kb * 1000:
            break
        text = path.read_text(encoding="utf-8")
        if text.strip():
            texts.append(text)
            size += len(text.encode("utf-8"))
    return texts


def build_model(args: argparse.Namespace, tokenizer):
    """The preset with random weights from seed 0 (``Sumi.initialized`` exists on main too)."""
    import torch

    from sumi.configs import PRESETS
    from sumi.model import Sumi

    config = PRESETS[args.preset]()
    overrides = {"max_position_embeddings": max(args.canvas, config.max_position_embeddings)}
    if args.layers is not None:
        overrides["num_hidden_layers"] = args.layers
    vocab = args.vocab or (tokenizer.vocab_size if args.preset == "tiny" else config.vocab_size)
    overrides.update(vocab_size=vocab, bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id,
                     pad_token_id=tokenizer.pad_id)
    config = dataclasses.replace(config, **overrides)
    if args.objective != "uniform":  # the argument exists on main only as uniform (the old code has no families)
        config = config.for_objective(args.objective)
    device = torch.device(args.device)
    return Sumi.initialized(config, device=device, generator=torch.Generator(device).manual_seed(0)).eval()


def previous_algorithm(model, tokenizer, texts, args) -> float:
    """The scorer before issue 14 on the current code: per batch of rows (longest first), one
    forward per time point on the logits (``discdiff.likelihood.nelbo``); returns the NELBO in nats."""
    import torch

    from discdiff.likelihood import nelbo
    from sumi.evaluate.likelihood import document_rows, pad_rows
    from sumi.family import kernel_for

    c = model.config
    rows = [row for text in texts
            for row in document_rows(tokenizer.encode(text, add_bos=False), args.canvas, c.bos_token_id,
                                     c.eos_token_id) if any(row.scored)]
    rows.sort(key=lambda row: -len(row.tokens))
    generator = torch.Generator(args.device).manual_seed(0)
    kernel, total = kernel_for(c), 0.0
    with torch.no_grad():
        for start in range(0, len(rows), args.batch_size):
            x, scored, present = pad_rows(rows[start:start + args.batch_size], c.pad_token_id, args.device)
            mask = None if bool(present.all()) else present.long()
            out = nelbo(lambda z: model(z) if mask is None else model(z, attention_mask=mask), kernel, x,
                        points=args.points, frozen=~scored, generator=generator)
            total += float(out.per_sequence.sum())
    return total


def measure(args: argparse.Namespace) -> dict:
    """One method in this interpreter (``--worker``)."""
    import torch

    import sumi
    from sumi.evaluate import nelbo_texts
    from sumi.tokenizer import SumiTokenizer

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokenizer = SumiTokenizer.default()
    model = build_model(args, tokenizer)
    texts = corpus(args.kb)
    c = model.config
    out = {"sumi_path": str(Path(sumi.__file__).resolve().parents[1]), "vocab": c.vocab_size,
           "layers": c.num_hidden_layers, "hidden": c.hidden_size,
           "parameters": sum(p.numel() for p in model.parameters())}
    if args.worker == "forward":
        ids = torch.randint(0, tokenizer.vocab_size, (args.batch_size, args.canvas),
                            generator=torch.Generator().manual_seed(1)).to(device)
        times, cpu_times = [], []
        with torch.no_grad():
            for i in range(args.repeats + 1):
                sync(device)
                start, cpu_start = time.perf_counter(), time.process_time()
                model(ids)
                sync(device)
                if i:  # the first call is the warm-up
                    times.append(time.perf_counter() - start)
                    cpu_times.append(time.process_time() - cpu_start)
        median = statistics.median(times)
        return {**out, "times_s": times, "median_s": median, "cpu_median_s": statistics.median(cpu_times),
                "tokens": ids.numel(), "tokens_per_s": ids.numel() / median}
    kwargs = {"canvas_length": args.canvas, "points": args.points, "batch_size": args.batch_size, "seed": 0,
              "device": device}
    if args.worker == "ours" and args.tokens_per_pass is not None:
        kwargs["tokens_per_pass"] = args.tokens_per_pass
    run = ((lambda t: previous_algorithm(model, tokenizer, t, args)) if args.worker == "logits"
           else (lambda t: nelbo_texts(model, tokenizer, t, **kwargs).nats))
    run([texts[0][:2000]])  # warm-up
    exact_peak = reset_peak_rss()
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    nats = run(texts)
    sync(device)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tokens = sum(len(tokenizer.encode(t, add_bos=False)) for t in texts)
    return {**out, "seconds": seconds, "cpu_seconds": cpu_seconds, "tokens": tokens, "nats": nats,
            "token_points_per_s": tokens * _points(args) / seconds,
            "peak_rss_bytes": peak_rss_bytes(), "peak_is_for_the_run": exact_peak}


def _points(args: argparse.Namespace) -> int:
    """Time points per scored token: ``--points``, or 1 for ``ar`` (one forward, no noise)."""
    return 1 if args.objective == "ar" else args.points


def worker(method: str, args: argparse.Namespace, root: Path) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", method, "--preset", args.preset,
           "--objective", args.objective,
           "--canvas", str(args.canvas), "--points", str(args.points), "--batch-size", str(args.batch_size),
           "--kb", str(args.kb), "--repeats", str(args.repeats), "--threads", str(args.threads),
           "--device", args.device]
    for flag, value in (("--layers", args.layers), ("--vocab", args.vocab), ("--tokens-per-pass", args.tokens_per_pass)):
        if value is not None:
            cmd += [flag, str(value)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    result = run_worker(cmd, env=env)
    if "error" not in result and Path(result["sumi_path"]) != root.resolve():
        result = {"error": f"imported sumi from {result['sumi_path']}, not from {root}"}
    return result


def main() -> None:
    try:
        from sumi.configs.model import OBJECTIVES
    except ImportError:  # a --baseline worker's library predates the families: uniform only
        OBJECTIVES = ("uniform",)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="model preset (random weights)")
    parser.add_argument("--objective", default="uniform", choices=OBJECTIVES, help="the model's family")
    parser.add_argument("--layers", type=int, help="override the preset's depth")
    parser.add_argument("--vocab", type=int, help="override the vocabulary size (default: the tokenizer's for "
                                                  "tiny, the preset's otherwise)")
    parser.add_argument("--canvas", type=int, default=512, help="canvas length (tokens per row)")
    parser.add_argument("--points", type=int, default=8, help="time points")
    parser.add_argument("--batch-size", type=int, default=4, help="rows scored together (the CLI's default)")
    parser.add_argument("--tokens-per-pass", type=int, help="ours only (default: the scorer's)")
    parser.add_argument("--kb", type=int, default=200, help="kilobytes of Python to score")
    parser.add_argument("--repeats", type=int, default=5, help="forward passes timed (median)")
    parser.add_argument("--baseline", help="a checkout of main before issue 14 (omit to skip the main method)")
    parser.add_argument("--methods", default="ours,logits", help="comma-separated from ours,logits "
                                                                 "(main is added by --baseline)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="8 KB, canvas 128, 4 points, 2 forward repeats")
    parser.add_argument("--worker", choices=[*METHODS, "forward"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.kb, args.canvas, args.points, args.repeats = 8, 128, 4, 2
    if args.worker:
        print(json.dumps(measure(args)))
        return
    methods = args.methods.split(",")
    if not set(methods) <= {"ours", "logits"}:
        parser.error(f"--methods: choose from ours,logits, got {args.methods}")
    if args.objective == "ar" and methods != ["ours"]:
        parser.error("--objective ar: only the method ours scores an ar model (--methods ours)")
    if args.baseline is not None:
        if args.objective != "uniform":
            parser.error(f"--baseline: main before issue 14 scores uniform models only, not {args.objective}")
        if not (Path(args.baseline) / "sumi" / "evaluate" / "likelihood.py").is_file():
            parser.error(f"--baseline {args.baseline}: not a checkout of this repository")
        methods.append("main")

    with OtherLoad() as load:
        results = {"forward": worker("forward", args, ROOT)}
        for method in methods:
            results[method] = worker(method, args, Path(args.baseline) if method == "main" else ROOT)
    fw = results["forward"]
    forward = fw.get("tokens_per_s")
    forward_cpu = fw["tokens"] / fw["cpu_median_s"] if "cpu_median_s" in fw else None
    scored = {m: r for m, r in results.items() if m != "forward" and "error" not in r}
    for r in scored.values():
        r["token_points_per_cpu_s"] = r["tokens"] * _points(args) / r["cpu_seconds"]
        r["over_forward"] = r["token_points_per_s"] / forward if forward else None
        r["over_forward_cpu"] = r["token_points_per_cpu_s"] / forward_cpu if forward_cpu else None
    reference = scored.get("ours")
    for r in scored.values():
        r["nats_rel_diff"] = abs(r["nats"] - reference["nats"]) / abs(reference["nats"]) if reference else None
    ratios = {}
    for m in scored:
        if m != "ours" and "ours" in scored:
            ratios[f"ours_over_{m}"] = scored["ours"]["token_points_per_s"] / scored[m]["token_points_per_s"]
            ratios[f"ours_over_{m}_cpu"] = scored[m]["cpu_seconds"] / scored["ours"]["cpu_seconds"]

    hw = hardware()
    texts = corpus(args.kb)
    shape = {k: results["forward"].get(k) for k in ("vocab", "layers", "hidden", "parameters")}
    kb = sum(len(t.encode("utf-8")) for t in texts) / 1000
    print(f"sumi eval nelbo throughput, {args.objective} preset {args.preset} ({shape['layers']} layers x hidden "
          f"{shape['hidden']}, V = {shape['vocab']}, random weights), {len(texts)} files ({kb:.0f} KB) of this repository's Python; canvas "
          f"{args.canvas}, {_points(args)} points, batch {args.batch_size}; {args.device}, {args.threads} threads")
    warn_if_busy(load.share)
    print(f"{'method':<9}{'seconds':>9}{'cpu s':>8}{'tokens x points/s':>19}{'x forward':>11}{'(cpu)':>7}"
          f"{'peak GB':>9}{'nats':>16}")
    if "error" in fw:
        print(f"forward  failed: {fw['error']}")
    else:
        print(f"{'forward':<9}{fw['median_s']:>9.3f}{fw['cpu_median_s']:>8.3f}{forward:>19,.0f}{1:>11.2f}{1:>7.2f}"
              f"{'-':>9}{'-':>16}")
    for method in methods:
        r = results[method]
        if "error" in r:
            print(f"{method:<9}failed: {r['error']}")
            continue
        over, over_cpu = (f"{v:.2f}" if v is not None else "-" for v in (r["over_forward"], r["over_forward_cpu"]))
        print(f"{method:<9}{r['seconds']:>9.1f}{r['cpu_seconds']:>8.1f}{r['token_points_per_s']:>19,.0f}{over:>11}"
              f"{over_cpu:>7}{r['peak_rss_bytes'] / 1e9:>9.2f}{r['nats']:>16.2f}")
    if ratios:
        print("ours: " + ", ".join(f"x{v:.2f} {k.removeprefix('ours_over_').replace('_cpu', ' in CPU time')}"
                                   for k, v in ratios.items()))
    import torch

    print(json.dumps({
        "benchmark": "evaluate.nelbo_throughput",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"), "hardware": hw,
        "torch": torch.__version__, "device": args.device, "threads": args.threads, "preset": args.preset,
        "objective": args.objective,
        **shape, "weights": "random (seed 0)", "files": len(texts), "kb": kb,
        "canvas": args.canvas, "points": args.points, "batch_size": args.batch_size,
        "tokens_per_pass": args.tokens_per_pass, "baseline": args.baseline, "quick": args.quick,
        "forward_tokens_per_s": forward, "forward_tokens_per_cpu_s": forward_cpu, "results": results, **ratios, "other_cpu_share": load.share,
    }))


if __name__ == "__main__":
    main()
