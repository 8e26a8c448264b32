"""``sumi.generate`` throughput at canvas 2048, per attention backend: same model, same steps, same seed.

One randomly initialized Sumi model (a model preset, optionally with fewer layers or another
vocabulary; weights from a fixed seed) is copied into one model per backend: ``eager`` (the
float32 reference), ``sdpa`` (``scaled_dot_product_attention``, the default) and ``flash``
(flash-attn's varlen kernel, only where it is installed and CUDA is present).  Each call is
``sumi.generate(model, prompts, max_new_tokens, canvas_length=2048, steps=S, sampler=...,
seed=0)`` on ``--batch`` prompts of ``--prompt`` random ids (BOS first): ``S`` model calls over
the whole canvas plus the sampler's steps, with the released layout (the tail after the answer
is denoised too).  A short warm-up call per backend, then ``--repeats`` rounds, each round
timing every backend once in turn (so slow drift of the machine hits all backends alike);
the median is reported.

Reported per backend: median seconds per call, answer tokens per second
(``batch x max_new_tokens / time``), canvas positions per second (``batch x canvas x steps /
time``: what the model processes), on CUDA the allocator's peak, and the share of canvas
positions equal to the eager backend's final canvas (same seed: backends differ only by
rounding, which can flip a draw now and then, and a flip changes what follows).

    python benchmarks/generate.py                           # CPU: tiny model at canvas 2048, 32 steps
    python benchmarks/generate.py --quick                   # canvas 256, 4 steps (a smoke run)
    python benchmarks/generate.py --device cuda --preset sumi_7b --layers 4 --dtype bfloat16 --steps 64

Prints a table, then one JSON line (the last line of stdout) with every number and metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import time

import torch

from _machine import OtherLoad, hardware, sync, warn_if_busy  # noqa: E402  (benchmarks/ is on sys.path)

import sumi
from sumi.configs import PRESETS
from sumi.generation import SAMPLERS
from sumi.model import Sumi, flash_available


def build_models(args: argparse.Namespace, backends: list[str]) -> dict[str, Sumi]:
    config = PRESETS[args.preset]()
    overrides = {"max_position_embeddings": max(args.canvas, config.max_position_embeddings)}
    if args.layers is not None:
        overrides["num_hidden_layers"] = args.layers
    config = dataclasses.replace(config, **overrides)
    if args.vocab is not None:
        config = dataclasses.replace(config, vocab_size=args.vocab, bos_token_id=args.vocab - 3,
                                     eos_token_id=args.vocab - 2, pad_token_id=args.vocab - 1)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    base = Sumi.initialized(config, device=device, dtype=dtype, generator=torch.Generator(device).manual_seed(0))
    models = {}
    for backend in backends:  # the same weights behind each backend
        model = Sumi.on_meta(dataclasses.replace(config, attention_backend=backend)).to_empty(device=device).to(dtype)
        model.load_state_dict(base.state_dict())
        models[backend] = model.eval()
    return models


def prompts(args: argparse.Namespace, config) -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    body = torch.randint(config.vocab_size - 3, (args.batch, args.prompt - 1), generator=g)  # no special ids
    return [[config.bos_token_id, *row.tolist()] for row in body]


def run(model: Sumi, ids: list[list[int]], args: argparse.Namespace, steps: int):
    return sumi.generate(model, ids, args.new_tokens, canvas_length=args.canvas, steps=steps, sampler=args.sampler,
                         seed=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model preset (random weights)")
    parser.add_argument("--layers", type=int, help="override the preset's depth")
    parser.add_argument("--vocab", type=int, help="override the preset's vocabulary size")
    parser.add_argument("--canvas", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=32, help="model calls per generation")
    parser.add_argument("--new-tokens", type=int, default=256, help="answer budget (max_new_tokens)")
    parser.add_argument("--prompt", type=int, default=32, help="prompt length in tokens, BOS included")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sampler", default="ancestral", choices=SAMPLERS)
    parser.add_argument("--backends", help="comma-separated (default: eager,sdpa, plus flash when available)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="canvas 256, 4 steps, 32 new tokens, 1 repeat")
    args = parser.parse_args()
    if args.quick:
        args.canvas, args.steps, args.new_tokens, args.repeats = 256, 4, 32, 1
    if args.prompt < 1 or args.prompt + args.new_tokens + 2 > args.canvas:
        parser.error(f"prompt ({args.prompt}) + new tokens ({args.new_tokens}) + EOS/BOS must fit the canvas "
                     f"({args.canvas})")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device")
    default = ["eager", "sdpa"] + (["flash"] if flash_available() else [])
    backends = args.backends.split(",") if args.backends else default
    if "flash" in backends and not flash_available():
        parser.error("flash needs CUDA and the flash-attn package (pip install .[gpu])")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    with OtherLoad() as load:
        models = build_models(args, backends)
        config = next(iter(models.values())).config
        ids = prompts(args, config)
        for model in models.values():  # warm-up: kernels, allocator, caches
            run(model, ids, args, steps=2)
        times = {b: [] for b in backends}
        peaks, canvases = {}, {}
        for _ in range(args.repeats):
            for backend, model in models.items():
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sync(device)
                start = time.perf_counter()
                out = run(model, ids, args, steps=args.steps)
                sync(device)
                times[backend].append(time.perf_counter() - start)
                canvases[backend] = out.canvas.cpu()
                if device.type == "cuda":
                    peaks[backend] = torch.cuda.max_memory_allocated(device)

    reference = canvases.get("eager", next(iter(canvases.values())))
    results = {}
    for backend in backends:
        median = statistics.median(times[backend])
        results[backend] = {
            "median_s": median, "min_s": min(times[backend]), "times_s": times[backend],
            "answer_tokens_per_s": args.batch * args.new_tokens / median,
            "canvas_positions_per_s": args.batch * args.canvas * args.steps / median,
            "peak_bytes": peaks.get(backend),
            "agreement_with_reference": float((canvases[backend] == reference).double().mean()),
        }
    hw = hardware()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{hw['cpu']}, {args.threads} threads"
    params = sum(p.numel() for p in next(iter(models.values())).parameters())
    print(f"sumi.generate, preset {args.preset} ({config.num_hidden_layers} layers x hidden {config.hidden_size}, "
          f"V = {config.vocab_size:,}, {params / 1e6:,.1f}M parameters, {args.dtype}); canvas {args.canvas}, "
          f"{args.steps} steps ({args.sampler}), batch {args.batch}, prompt {args.prompt}, "
          f"{args.new_tokens} new tokens; "
          f"{where}; median of {args.repeats}")
    warn_if_busy(load.share)
    print(f"{'backend':<9}{'median s':>10}{'answer tok/s':>14}{'canvas pos/s':>14}{'peak GB':>9}{'same as eager':>15}")
    for backend, r in results.items():
        peak = f"{r['peak_bytes'] / 1e9:.2f}" if r["peak_bytes"] is not None else "-"
        print(f"{backend:<9}{r['median_s']:>10.3f}{r['answer_tokens_per_s']:>14,.1f}{r['canvas_positions_per_s']:>14,.0f}"
              f"{peak:>9}{r['agreement_with_reference']:>15.4f}")
    ratios = {f"{b}_over_eager_speed": results["eager"]["median_s"] / results[b]["median_s"]
              for b in backends if b != "eager" and "eager" in results}
    print(", ".join(f"{b.removesuffix('_over_eager_speed')}: x{v:.2f} the eager speed" for b, v in ratios.items()))
    print(json.dumps({
        "benchmark": "generate", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "hardware": hw, "torch": torch.__version__, "device": args.device, "device_name": where,
        "threads": args.threads, "preset": args.preset, "layers": config.num_hidden_layers,
        "hidden": config.hidden_size, "vocab": config.vocab_size, "parameters": params, "dtype": args.dtype,
        "canvas": args.canvas, "steps": args.steps, "sampler": args.sampler, "batch": args.batch,
        "prompt": args.prompt, "new_tokens": args.new_tokens, "repeats": args.repeats, "quick": args.quick,
        "results": results, **ratios, "other_cpu_share": load.share,
    }))


if __name__ == "__main__":
    main()
