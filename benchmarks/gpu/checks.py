"""Stages 2 and 3 of the GPU verification run (``benchmarks/gpu/run.sh``), which no other script does.

``attention``: every attention backend at one precision (bf16 on the GPU) against the eager
backend in float32 on the same (rounded) inputs, for unmasked rows, right padding, packed
documents and a "sink" case: max and mean error of the output and of the q/k/v gradients.  The
attention is Sumi's off-by-one ("sink") softmax (docs/math.md, "Sumi recipe facts"); the eager
float32 form is the reference because it computes that softmax literally.  With random inputs
the sink's weight is about ``1 / (1 + e^0.5 S)``, far below bf16 rounding at S 2048, so the sink
case shifts queries and keys along one direction until the sink holds about half of each
row's weight (:func:`sink_shift`): a backend that drops or misplaces the sink is off by O(1)
there.  An error passes when its max, relative to the reference's largest magnitude, is within
four bf16 epsilons (the gradients are sums over 2048 bf16 products: the CPU kernel's dv is off by
1.5e-2 on random inputs).  It also records, per case, which kernel
``F.scaled_dot_product_attention`` picks for the sdpa backend's CUDA call (flash,
memory-efficient, cuDNN or math) and which kernels accept it (on the CPU, which takes another
path, only to exercise the code).

``loss``: the fused loss from hidden states (``discdiff.losses.gidd_from_hidden``) against the
plain loss from materialized logits (docs/math.md, "Fused cross-entropy"; ``benchmarks/loss.py``'s
two methods, same inputs): loss
value, gradient errors, peak memory and time per forward + backward.

``sampler``: ``benchmarks/sampler.py``'s six rows on one device (that script measures CPU RSS
only): median time and peak device memory of one reverse step, ``ours`` against ``naive``.  The
stage fails when ``ours`` fails on a row; a failing ``naive`` baseline is only reported.

Each prints one human-readable line per comparison, then one JSON line, and exits 1 when an
error exceeds its tolerance (so the driver records the stage as failed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # benchmarks/ (its loss.py)

import loss as loss_bench  # noqa: E402
import sampler as sampler_bench  # noqa: E402

from sumi.model.attention import BACKENDS, flash_available  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Max error over the reference's max magnitude: a few bf16 ulps (bf16 eps = 2**-8); float32 runs
# differ only by summation order.  Relative, because gradient sizes grow with the sequence.
TOLERANCE = {torch.bfloat16: 4 * torch.finfo(torch.bfloat16).eps, torch.float32: 1e-4}
CASES = ("none", "padding", "documents", "sink")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sink_shift(seq: int, head_dim: int) -> float:
    """The shift ``a`` for which the sink holds about half of a row's weight when query
    coordinate 0 gets ``+a`` and key coordinate 0 gets ``-a`` (other entries standard normal).

    A score is then ``s = (q . k - a (q_0 - k_0) - a^2) / sqrt(d)``: about normal with mean
    ``-a^2 / sqrt(d)`` and variance ``1 + 2 a^2 / d``, so ``E sum_j e^s = S exp(-a^2 / sqrt(d) +
    1/2 + a^2 / d)``, which is 1 (the sink's own ``e^0``) at ``a^2 = (log S + 1/2) / (1 / sqrt(d)
    - 1 / d)``."""
    return math.sqrt((math.log(seq) + 0.5) / (head_dim ** -0.5 - 1 / head_dim))


def attention_inputs(args, case: str, device: torch.device, g: torch.Generator):
    """q, k, v in float32 (already rounded to ``args.dtype``), the masks of ``case`` and the
    loss weights that turn the output into a scalar for the backward pass."""
    shape = lambda heads: (args.batch, heads, args.seq, args.head_dim)  # noqa: E731
    dtype = DTYPES[args.dtype]
    q, k, v, probe = (torch.randn(shape(h), generator=g) for h in (args.heads, args.kv_heads, args.kv_heads, args.heads))
    if case == "sink":
        a = sink_shift(args.seq, args.head_dim)
        q[..., 0] += a
        k[..., 0] -= a
    q, k, v, probe = (t.to(dtype).float().to(device) for t in (q, k, v, probe))
    key_mask = document_ids = None
    if case == "padding":
        key_mask = torch.ones(args.batch, args.seq, dtype=torch.bool, device=device)
        key_mask[:, args.seq - args.seq // 4:] = False
    elif case == "documents":
        document_ids = (torch.arange(args.seq, device=device) * 4 // args.seq).expand(args.batch, -1).contiguous()
    return (q, k, v), key_mask, document_ids, probe


def sdpa_kernels(qkv, key_mask, document_ids, dtype: torch.dtype, causal: bool) -> dict:
    """The call the sdpa backend makes off the CPU (keys and values with the zero sink appended,
    a boolean mask whose sink column is always allowed), on this device: the kernel
    ``F.scaled_dot_product_attention`` picks for it (``torch._fused_sdp_choice``), and for each
    kernel whether it accepts the call (forward and backward) or the first line of its refusal."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from sumi.model.attention import append_zero_sink, allowed_keys, causal_allowed, with_sink_column

    q, k, v = (t.detach().to(dtype) for t in qkv)
    allowed = allowed_keys(key_mask, document_ids)
    if causal:
        allowed = causal_allowed(allowed, q.shape[2], q.shape[2], q.device)
    mask = None if allowed is None else with_sink_column(allowed)
    k, v = append_zero_sink(k, 2), append_zero_sink(v, 2)
    gqa = k.shape[1] != q.shape[1]
    report = {}
    try:
        choice = torch._fused_sdp_choice(q, k, v, mask, 0.0, False, scale=None, enable_gqa=gqa)
        report["default"] = SDPBackend(choice).name
    except Exception as e:  # noqa: BLE001  (a private function: report, never fail on it)
        report["default"] = f"unknown ({type(e).__name__}: {e})".splitlines()[0]
    for kernel in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION,
                   SDPBackend.MATH):
        leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v)]
        with warnings.catch_warnings(record=True) as reasons, sdpa_kernel(kernel):
            warnings.simplefilter("always")  # a kernel's reasons to refuse come as warnings, then an error
            try:
                F.scaled_dot_product_attention(*leaves, attn_mask=mask, enable_gqa=gqa).sum().backward()
                report[kernel.name] = "ok"
            except Exception as e:  # noqa: BLE001
                why = [str(w.message) for w in reasons] or [f"{type(e).__name__}: {e}"]
                report[kernel.name] = " ".join(line.strip() for line in why)[:300]
    return report


def run_attention(backend: str, qkv, key_mask, document_ids, probe, dtype: torch.dtype, causal: bool):
    """Output and q/k/v gradients of one backend, all returned in float32."""
    impl = BACKENDS[backend]
    leaves = [t.detach().to(dtype, copy=True).requires_grad_(True) for t in qkv]
    q = leaves[0]
    mask = impl.prepare(key_mask, document_ids, q.shape[0], q.shape[2], q.device, causal)
    out = impl.attend(*leaves, mask)
    (out.float() * probe).sum().backward()
    return [out.detach().float()] + [t.grad.float() for t in leaves]


def attention_errors(got: list[Tensor], want: list[Tensor], rows: Tensor) -> dict:
    """Max, mean and max-over-the-reference's-max error of the output (its real ``rows`` only)
    and of the q/k/v gradients (:func:`run_attention`'s lists)."""
    errors = {}
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, want):
        diff = (a - b).abs()
        if name == "out":
            diff = diff.masked_select(rows.expand_as(diff))
        errors[name] = {"max": float(diff.max()), "mean": float(diff.mean()), "rel_max": float(diff.max() / b.abs().max())}
    return errors


def attention(args) -> int:
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    backends = ["sdpa"] + (["flash"] if flash_available() and device.type == "cuda" else [])
    if "flash" not in backends:
        print("flash: not checked (needs CUDA and the flash-attn package)")
    g = torch.Generator().manual_seed(0)
    results, ok, kernels = [], True, {}
    for case in CASES:
        qkv, key_mask, document_ids, probe = attention_inputs(args, case, device, g)
        kernels[case] = sdpa_kernels(qkv, key_mask, document_ids, dtype, args.causal)
        refused = {k: v for k, v in kernels[case].items() if k != "default" and v != "ok"}
        print(f"{case:9s} sdpa picks {kernels[case]['default']}; accepted: "
              + ", ".join(k for k, v in kernels[case].items() if v == "ok")
              + "".join(f"; refused {k}: {v}" for k, v in refused.items()))
        # padded queries are don't-cares (flash returns 0 there); only real rows are compared
        rows = (torch.ones(args.batch, 1, args.seq, 1, dtype=torch.bool, device=device) if key_mask is None
                else key_mask[:, None, :, None])
        want = run_attention("eager", qkv, key_mask, document_ids, probe * rows, torch.float32, args.causal)
        for backend in backends + (["eager"] if dtype != torch.float32 else []):
            _sync(device)
            start = time.perf_counter()
            got = run_attention(backend, qkv, key_mask, document_ids, probe * rows, dtype, args.causal)
            _sync(device)
            seconds = time.perf_counter() - start
            errors = attention_errors(got, want, rows)
            worst = max(e["rel_max"] for e in errors.values())
            passed = worst <= TOLERANCE[dtype]
            ok &= passed
            row = {"case": case, "backend": backend, "dtype": args.dtype, "seconds": seconds,
                   "errors": errors, "passed": passed}
            results.append(row)
            print(f"{case:9s} {backend:5s} {args.dtype}: out max {errors['out']['max']:.2e} mean "
                  f"{errors['out']['mean']:.2e}, grads max {max(errors[n]['max'] for n in ('dq', 'dk', 'dv')):.2e}, "
                  f"worst relative {worst:.2e} ({'ok' if passed else 'FAIL'}, tolerance {TOLERANCE[dtype]:.1e})")
    print(json.dumps({"check": "attention", "device": str(device), "seq": args.seq, "heads": args.heads,
                      "kv_heads": args.kv_heads, "head_dim": args.head_dim, "causal": args.causal, "passed": ok,
                      "sdpa_kernels": kernels, "results": results}))
    return 0 if ok else 1


def loss(args) -> int:
    device = torch.device(args.device)
    case = loss_bench.inputs(args.tokens, args.vocab, args.hidden)
    kernel, hidden, weight, x, z, lam = case
    hidden = hidden.detach().to(device).requires_grad_(True)
    weight = weight.detach().to(device).requires_grad_(True)
    x, z, lam = x.to(device), z.to(device), lam.to(device)
    out = {}
    for method, fn in loss_bench.METHODS.items():
        hidden.grad = weight.grad = None
        _sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        start = time.perf_counter()
        value = fn(kernel, hidden, weight, x, z, lam)
        value.backward()
        _sync(device)
        seconds = time.perf_counter() - start
        peak = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else None
        out[method] = {"loss": float(value.detach()), "seconds": seconds, "peak_bytes": peak,
                       "grads": (hidden.grad.clone(), weight.grad.clone())}
    plain, fused = out["plain"], out["fused"]
    rel_loss = abs(fused["loss"] - plain["loss"]) / abs(plain["loss"])
    rel_grads = [float((a - b).norm() / b.norm()) for a, b in zip(fused["grads"], plain["grads"])]
    passed = rel_loss <= 1e-4 and max(rel_grads) <= 1e-3  # float32 both ways: summation order only
    for method in out:
        del out[method]["grads"]
        mem = out[method]["peak_bytes"]
        print(f"{method:5s}: loss {out[method]['loss']:.6e}, {out[method]['seconds'] * 1e3:.1f} ms, "
              f"peak {'n/a (cpu)' if mem is None else f'{mem / 2**20:.0f} MiB'}")
    print(f"fused vs plain: loss rel err {rel_loss:.2e}, grad rel err hidden {rel_grads[0]:.2e} weight "
          f"{rel_grads[1]:.2e} ({'ok' if passed else 'FAIL'})")
    print(json.dumps({"check": "loss", "device": str(device), "tokens": args.tokens, "vocab": args.vocab,
                      "hidden": args.hidden, "rel_loss": rel_loss, "rel_grad_hidden": rel_grads[0],
                      "rel_grad_weight": rel_grads[1], "passed": passed, "methods": out}))
    return 0 if passed else 1


def sampler_step(method: str, row: str, args, device: torch.device) -> dict:
    """Median seconds and peak extra device memory of one reverse step (``sampler.py``'s inputs)."""
    g = torch.Generator(device).manual_seed(sampler_bench.SEED)
    _, family, _, dtype, _ = sampler_bench.ROWS[row]
    kernel = sampler_bench.make_kernel(family, args.vocab)
    logits = torch.randn(1, args.positions, args.vocab, generator=g, device=device).to(getattr(torch, dtype))
    alpha = torch.tensor([sampler_bench.ALPHA_T, sampler_bench.ALPHA_T + 1.0 / sampler_bench.STEPS],
                         dtype=torch.float64, device=device)
    lam_t, lam_s = torch.logit(alpha).split(1)
    clean = torch.randint(0, args.vocab - (kernel.mask_id is not None), (1, args.positions), generator=g,
                          device=device)
    z_t = kernel.corrupt(clean, lam_t, generator=g)
    step = sampler_bench.step_ours if method == "ours" else sampler_bench.step_naive
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    times = []
    for i in range(args.repeats + 1):  # i = 0 is the warm-up
        _sync(device)
        start = time.perf_counter()
        step(row, kernel, logits, z_t, lam_t, lam_s, g)
        _sync(device)
        if i:
            times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else None
    return {"median_s": sorted(times)[len(times) // 2], "peak_extra_bytes": peak}


def sampler(args) -> int:
    device = torch.device(args.device)
    results, ok = {}, True
    for row in sampler_bench.ROWS:
        results[row] = {}
        for method in sampler_bench.METHODS:
            try:
                r = sampler_step(method, row, args, device)
                mem = r["peak_extra_bytes"]
                print(f"{row:10s} {method:5s}: {r['median_s'] * 1e3:8.2f} ms, peak extra "
                      f"{'n/a (cpu)' if mem is None else f'{mem / 2**20:.0f} MiB'}")
            except Exception as e:  # noqa: BLE001  (recorded, and fatal only for ours)
                r = {"error": f"{type(e).__name__}: {e}"}
                ok &= method != "ours"
                print(f"{row:10s} {method:5s}: ERROR {r['error']}")
            results[row][method] = r
    print(json.dumps({"check": "sampler", "device": str(device), "positions": args.positions, "vocab": args.vocab,
                      "passed": ok, "rows": results}))
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    a = sub.add_parser("attention", help="backends against eager float32 (7B block shapes by default)")
    a.add_argument("--device", default="cuda")
    a.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
    a.add_argument("--batch", type=int, default=1)
    a.add_argument("--heads", type=int, default=32)
    a.add_argument("--kv-heads", type=int, default=8)
    a.add_argument("--head-dim", type=int, default=128)
    a.add_argument("--seq", type=int, default=2048)
    a.add_argument("--causal", action="store_true")
    l_ = sub.add_parser("loss", help="fused loss against the plain loss (one Sumi sequence by default)")
    l_.add_argument("--device", default="cuda")
    l_.add_argument("--tokens", type=int, default=2048)
    l_.add_argument("--vocab", type=int, default=100_278)
    l_.add_argument("--hidden", type=int, default=4096)
    s = sub.add_parser("sampler", help="sampler.py's rows on one device (canvas 2048, vocab 100,278 by default)")
    s.add_argument("--device", default="cuda")
    s.add_argument("--positions", type=int, default=2048)
    s.add_argument("--vocab", type=int, default=100_278)
    s.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    return {"attention": attention, "loss": loss, "sampler": sampler}[args.check](args)


if __name__ == "__main__":
    sys.exit(main())
