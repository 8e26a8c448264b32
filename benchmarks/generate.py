"""``sumi.generate`` at canvas 2048: this checkout against a baseline checkout, same model, prompts and seed.

The case of issue 14: the ``sumi_150m`` shapes at 2 layers (V = 100,278), canvas 2048, 256 new
tokens, a 32-token prompt, 16 steps of the ancestral sampler, batch 1, with the released layout
(``denoise_end=True``: the tail after the pinned BOS is denoised too) and with the tail frozen
(``denoise_end=False``: frozen pad hidden from attention).  The baseline is another checkout of
the repository (``--baseline DIR``, e.g. ``git worktree add /tmp/main-before HEAD`` taken before
the change): its ``sumi`` and ``discdiff`` are imported instead of this checkout's.

Every (code, layout) pair runs in its own fresh interpreter (``PYTHONPATH`` = the checkout): the
model is built from a fixed seed (the same weights in both checkouts), then one warm-up call of
2 steps, then ``--repeats`` timed calls of ``sumi.generate(model, prompts, new_tokens,
canvas_length, steps, sampler, seed=0, denoise_end=...)``; the median is reported.  Memory: on
CUDA the allocator's peak above what was allocated before the call; on CPU the resident set's
high-water mark during the call above the resident set before it (``peak_extra_bytes``; the
weights are outside it), and the process's whole high-water mark (``peak_rss_bytes``).
``answer_tokens_per_s`` is ``batch x new_tokens / time``.  ``same_canvas_as_baseline``: whether
the final canvases are equal; only deterministic samplers (``greedy``) are expected to agree,
since the new code draws only where a token may move, in another order (same distribution).

    python benchmarks/generate.py --baseline /tmp/main-before          # the issue's case, both codes
    python benchmarks/generate.py                                      # this checkout only
    python benchmarks/generate.py --quick                              # tiny preset, canvas 256, 4 steps
    python benchmarks/generate.py --device cuda --preset sumi_7b --layers 4 --dtype bfloat16 --steps 64

Prints a table, then one JSON line (the last line of stdout) with every number and metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _machine import OtherLoad, hardware, peak_rss_bytes, reset_peak_rss, rss_bytes, run_worker, warn_if_busy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = {"released": True, "frozen_tail": False}  # name -> denoise_end


# -- one measurement, in a fresh interpreter ------------------------------------------------------
def worker(args: argparse.Namespace) -> None:
    import torch

    import sumi
    from sumi.configs import PRESETS
    from sumi.model import Sumi

    torch.set_num_threads(args.threads)
    config = PRESETS[args.preset]()
    overrides = {"max_position_embeddings": max(args.canvas, config.max_position_embeddings),
                 "attention_backend": args.backend}
    if args.layers is not None:
        overrides["num_hidden_layers"] = args.layers
    if args.vocab is not None:
        overrides.update(vocab_size=args.vocab, bos_token_id=args.vocab - 3, eos_token_id=args.vocab - 2,
                         pad_token_id=args.vocab - 1)
    config = dataclasses.replace(config, **overrides)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    model = Sumi.initialized(config, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0))
    model.eval()
    g = torch.Generator().manual_seed(1)
    body = torch.randint(config.vocab_size - 3, (args.batch, args.prompt - 1), generator=g)  # no special ids
    prompts = [[config.bos_token_id, *row.tolist()] for row in body]

    def call(steps: int):
        return sumi.generate(model, prompts, args.new_tokens, canvas_length=args.canvas, steps=steps,
                             sampler=args.sampler, seed=0, denoise_end=args.denoise_end == "true")

    call(2)  # warm-up: kernels, allocator, caches
    times, extra, peak = [], [], 0
    out, peak_reset = None, device.type == "cuda"
    for _ in range(args.repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        else:
            peak_reset = reset_peak_rss()  # False: the high-water mark is the process's lifetime peak
            before = rss_bytes()
        start = time.perf_counter()
        out = call(args.steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
        high = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()
        extra.append(high - before)
        peak = max(peak, high)
    canvas = out.canvas.cpu().contiguous()
    print(json.dumps({
        "sumi_file": sumi.__file__, "torch": torch.__version__, "peak_reset": peak_reset, "times_s": times, "median_s": statistics.median(times),
        "peak_extra_bytes": max(extra), ("peak_allocated_bytes" if device.type == "cuda" else "peak_rss_bytes"): peak,
        "steps_run": getattr(out, "steps_run", None),
        "canvas_sha256": hashlib.sha256(canvas.numpy().tobytes()).hexdigest(),
        "parameters": sum(p.numel() for p in model.parameters()), "layers": config.num_hidden_layers,
        "hidden": config.hidden_size, "vocab": config.vocab_size,
    }))


def measure(args: argparse.Namespace, root: Path, denoise_end: bool) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--denoise-end", str(denoise_end).lower(),
           "--preset", args.preset, "--canvas", str(args.canvas), "--steps", str(args.steps),
           "--new-tokens", str(args.new_tokens), "--prompt", str(args.prompt), "--batch", str(args.batch),
           "--sampler", args.sampler, "--backend", args.backend, "--repeats", str(args.repeats),
           "--device", args.device, "--dtype", args.dtype, "--threads", str(args.threads)]
    if args.layers is not None:
        cmd += ["--layers", str(args.layers)]
    if args.vocab is not None:
        cmd += ["--vocab", str(args.vocab)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    result = run_worker(cmd, env=env)
    if "error" not in result and not Path(result["sumi_file"]).resolve().is_relative_to(root.resolve()):
        result = {"error": f"imported sumi from {result['sumi_file']}, not from {root}"}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="sumi_150m", help="model preset (random weights)")
    parser.add_argument("--layers", type=int, default=2, help="override the preset's depth")
    parser.add_argument("--vocab", type=int, help="override the preset's vocabulary size")
    parser.add_argument("--canvas", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=16, help="model calls per generation")
    parser.add_argument("--new-tokens", type=int, default=256, help="answer budget (max_new_tokens)")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length in tokens, BOS included")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sampler", default="ancestral", choices=["ancestral", "adaptive", "greedy"])
    parser.add_argument("--backend", default="sdpa", choices=["eager", "sdpa", "flash"], help="attention backend")
    parser.add_argument("--layouts", default="released,frozen_tail",
                        help="comma-separated: released (denoise_end=True), frozen_tail (denoise_end=False)")
    parser.add_argument("--baseline", type=Path, help="a checkout to compare against (its sumi and discdiff)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true",
                        help="tiny preset at all its layers, canvas 256, 4 steps, 32 new tokens, 1 repeat")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--denoise-end", choices=["true", "false"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.preset, args.layers, args.canvas, args.steps, args.new_tokens, args.repeats = "tiny", None, 256, 4, 32, 1
    if args.prompt < 1 or args.prompt + args.new_tokens + 2 > args.canvas:
        parser.error(f"prompt ({args.prompt}) + new tokens ({args.new_tokens}) + EOS/BOS must fit the canvas "
                     f"({args.canvas})")
    layouts = args.layouts.split(",")
    if not layouts or any(name not in LAYOUTS for name in layouts):
        parser.error(f"--layouts takes a comma-separated subset of {', '.join(LAYOUTS)}, got {args.layouts!r}")
    if args.baseline is not None and not (args.baseline / "sumi" / "generation.py").is_file() \
            and not (args.baseline / "sumi" / "generate.py").is_file():
        parser.error(f"--baseline {args.baseline}: not a checkout of this repository (no sumi/ package there)")
    codes = {"new": REPO, **({"baseline": args.baseline} if args.baseline is not None else {})}

    results = {}
    with OtherLoad() as load:
        for layout in layouts:  # per layout, new then baseline, so slow drift of the machine hits both alike
            for code, root in codes.items():
                results[f"{code}/{layout}"] = measure(args, root, LAYOUTS[layout])
    for key, r in results.items():
        if "error" not in r:
            r["answer_tokens_per_s"] = args.batch * args.new_tokens / r["median_s"]
            baseline = results.get(f"baseline/{key.split('/')[1]}")
            if key.startswith("new/") and baseline is not None and "error" not in baseline:
                r["speedup_over_baseline"] = baseline["median_s"] / r["median_s"]
                r["same_canvas_as_baseline"] = r["canvas_sha256"] == baseline["canvas_sha256"]

    hw = hardware()
    where = f"{hw['cpu']}, {args.threads} threads" if args.device == "cpu" else "cuda"
    shape = next((r for r in results.values() if "error" not in r), {})
    print(f"sumi.generate, preset {args.preset} ({shape.get('layers')} layers x hidden {shape.get('hidden')}, "
          f"V = {shape.get('vocab', 0):,}, {args.dtype}, {args.backend}); canvas {args.canvas}, {args.steps} steps "
          f"({args.sampler}), batch {args.batch}, prompt {args.prompt}, {args.new_tokens} new tokens; {where}; "
          f"median of {args.repeats}")
    warn_if_busy(load.share)
    print(f"{'code/layout':<22}{'median s':>10}{'answer tok/s':>14}{'peak extra GB':>15}{'x baseline':>12}{'same canvas':>13}")
    for key, r in results.items():
        if "error" in r:
            print(f"{key:<22}  failed: {r['error'][-200:]}")
            continue
        speed = f"{r['speedup_over_baseline']:.2f}" if "speedup_over_baseline" in r else "-"
        same = str(r["same_canvas_as_baseline"]) if "same_canvas_as_baseline" in r else "-"
        print(f"{key:<22}{r['median_s']:>10.3f}{r['answer_tokens_per_s']:>14,.1f}{r['peak_extra_bytes'] / 1e9:>15.3f}"
              f"{speed:>12}{same:>13}")
    print(json.dumps({
        "benchmark": "generate", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "hardware": hw, "device": args.device, "device_name": where, "threads": args.threads,
        "preset": args.preset, "layers": shape.get("layers"), "hidden": shape.get("hidden"), "vocab": shape.get("vocab"),
        "parameters": shape.get("parameters"), "dtype": args.dtype, "backend": args.backend, "canvas": args.canvas,
        "steps": args.steps, "sampler": args.sampler, "batch": args.batch, "prompt": args.prompt,
        "new_tokens": args.new_tokens, "repeats": args.repeats, "quick": args.quick,
        "torch": shape.get("torch"), "baseline": str(args.baseline) if args.baseline is not None else None,
        "layouts": layouts,
        "results": results, "other_cpu_share": load.share,
    }))


if __name__ == "__main__":
    main()
