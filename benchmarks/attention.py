"""Two exact forms of Sumi's off-by-one attention, per backend: one appended zero key/value (the
sink as an extra key, main before issue 14) against plain attention scaled by ``sigmoid(lse)``
(``softmax_1(s)_j = softmax(s)_j sigmoid(lse)``, ``lse`` the log-sum-exp of a query row's
allowed scores; docs/math.md, "Sumi recipe facts"; :mod:`sumi.model.attention`).

Methods, each timing one attention layer (``q, k, v`` in, output out) on the same inputs:

- ``eager``: the library's eager backend (the reference): float32 scores, a zero logit column
  concatenated, softmax, dropped (main's form, unchanged);
- ``eager+lse``: float32 ``softmax(s) @ v`` scaled by ``sigmoid(logsumexp(s))`` (masked scores
  at the float32 minimum instead of ``-inf``, so a row with every key masked scales 0 by 0);
- ``sdpa+append``: main's sdpa backend: a zero key and value concatenated to ``k``/``v`` and,
  with a mask, the ``[batch, 1, seq, seq + 1]`` boolean mask rebuilt at every call (main rebuilt
  it in every layer), then ``scaled_dot_product_attention``;
- ``sdpa+append+premask``: the same with the mask built once outside the timed call (the form
  alone, without main's per-layer mask building);
- ``sdpa``: the library's sdpa backend: on the CPU torch's flash kernel
  (``aten._scaled_dot_product_flash_attention_for_cpu``) scaled by ``sigmoid(lse)``, its mask
  prepared once per forward (outside the timed call, as the model does).

Cases: no mask; padding (the last quarter of every sequence masked out as keys); four packed
documents per sequence.  ``--causal``: every method attends causally (the ``"ar"`` family; the
library's sdpa then runs the CPU kernel's own ``is_causal`` in the unmasked case, the triangle in
its bias otherwise).  Modes: ``forward`` (under ``torch.no_grad``, as in generation) and
``train`` (forward + backward of a fixed random projection of the output).  Each timing is the
median of ``--repeats`` calls after one warm-up call.  ``max_err``: the largest absolute
difference from a float64 evaluation of the eager form over the query rows that have keys
(forward) or over the gradients of ``q``, ``k``, ``v`` (train).  Default shapes: one layer of
``sumi_150m`` (4 query heads, 1 KV head, head_dim 128) at sequence 2048, batch 1.

    python benchmarks/attention.py                 # 150M shapes, seq 2048
    python benchmarks/attention.py --quick         # seq 256, 2 repeats (a smoke run)
    python benchmarks/attention.py --heads 32 --kv-heads 8 --seq 1024   # 7B head layout
    python benchmarks/attention.py --causal        # causal attention (the "ar" family)

Prints a table, then one JSON line (the last line of stdout) with every number and metadata.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

from _machine import OtherLoad, hardware, warn_if_busy  # noqa: E402  (benchmarks/ is on sys.path)

from sumi.model.attention import BACKENDS, allowed_keys, causal_allowed, eager_attend

CASES = ("none", "padding", "documents")
MODES = ("forward", "train")
METHODS = ("eager", "eager+lse", "sdpa+append", "sdpa+append+premask", "sdpa")


# -- the forms the library does not use -----------------------------------------------------------
def eager_lse(q, k, v, allowed):
    rep = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(rep, dim=1).float()
    v = v.repeat_interleave(rep, dim=1).float()
    scores = q.float() @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if allowed is not None:
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
    scale = torch.sigmoid(torch.logsumexp(scores, dim=-1, keepdim=True))
    return ((torch.softmax(scores, dim=-1) @ v) * scale).to(q.dtype)


def _with_sink(x, dim):
    shape = list(x.shape)
    shape[dim] = 1
    return torch.cat([x, x.new_zeros(shape)], dim=dim)


def sink_mask(allowed, q):
    if allowed is None:
        return None
    allowed = allowed.expand(q.shape[0], 1, q.shape[2], q.shape[2])
    return torch.cat([allowed, allowed.new_ones(*allowed.shape[:-1], 1)], dim=-1)


def sdpa_append(q, k, v, mask):
    k, v = _with_sink(k, 2), _with_sink(v, 2)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


# -- the measurement -----------------------------------------------------------------------------
def inputs(args, case: str, dtype: torch.dtype):
    g = torch.Generator().manual_seed(0)
    shape = lambda heads: (args.batch, heads, args.seq, args.head_dim)  # noqa: E731
    q, k, v = (torch.randn(shape(h), generator=g, dtype=torch.float64) for h in (args.heads, args.kv_heads, args.kv_heads))
    key_mask = document_ids = None
    if case == "padding":
        key_mask = torch.ones(args.batch, args.seq, dtype=torch.bool)
        key_mask[:, args.seq - args.seq // 4:] = False
    elif case == "documents":
        document_ids = (torch.arange(args.seq) * 4 // args.seq).expand(args.batch, -1).contiguous()
    probe = torch.randn(shape(args.heads), generator=g, dtype=torch.float64)  # the train mode's loss weights
    return [t.to(dtype) for t in (q, k, v)], key_mask, document_ids, probe


def allowed_for(key_mask, document_ids, q, causal: bool):
    """The bool mask every method but the library's sdpa uses (the library's eager mask)."""
    allowed = allowed_keys(key_mask, document_ids)
    return causal_allowed(allowed, q.shape[2], q.shape[2], q.device) if causal else allowed


def methods(key_mask, document_ids, q, causal: bool):
    allowed = allowed_for(key_mask, document_ids, q, causal)
    sdpa = BACKENDS["sdpa"]
    prepared = sdpa.prepare(key_mask, document_ids, q.shape[0], q.shape[2], q.device, causal)
    premask = sink_mask(allowed, q)
    return {
        "eager": lambda q, k, v: eager_attend(q, k, v, allowed),
        "eager+lse": lambda q, k, v: eager_lse(q, k, v, allowed),
        "sdpa+append": lambda q, k, v: sdpa_append(q, k, v, sink_mask(allowed, q)),
        "sdpa+append+premask": lambda q, k, v: sdpa_append(q, k, v, premask),
        "sdpa": lambda q, k, v: sdpa.attend(q, k, v, prepared),
    }


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def measure(args, case: str, mode: str, dtype: torch.dtype) -> dict:
    (q, k, v), key_mask, document_ids, probe = inputs(args, case, dtype)
    rows = torch.ones(args.batch, 1, args.seq, 1, dtype=torch.bool) if key_mask is None else key_mask[:, None, :, None]
    fns = methods(key_mask, document_ids, q, args.causal)
    allowed = allowed_for(key_mask, document_ids, q, args.causal)

    def reference_run(fn, q, k, v):
        if mode == "forward":
            with torch.no_grad():
                return [fn(q, k, v)]
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
        (fn(q, k, v).to(probe.dtype) * probe.to(q.device)).sum().backward()
        return [q.grad, k.grad, v.grad]

    def f64(q, k, v):  # the eager form in float64: scores, softmax with the sink column
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if allowed is not None:
            s = s.masked_fill(~allowed, -math.inf)
        p = torch.softmax(torch.cat([s, s.new_zeros(*s.shape[:-1], 1)], -1), -1)[..., :-1]
        return p @ v

    want = reference_run(f64, *(t.double() for t in (q, k, v)))
    out = {}
    for name in METHODS:
        fn = fns[name]
        got = reference_run(fn, q, k, v)
        if mode == "forward":
            err = float((got[0].double() - want[0]).abs().masked_fill(~rows, 0).max())
        else:
            err = max(float((g.double() - w).abs().max()) for g, w in zip(got, want))
        if mode == "forward":
            def call(fn=fn):
                with torch.no_grad():
                    fn(q, k, v)
        else:
            leaves = [t.detach().requires_grad_(True) for t in (q, k, v)]
            weights = probe.to(dtype)

            def call(fn=fn, leaves=leaves, weights=weights):
                for t in leaves:
                    t.grad = None
                (fn(*leaves) * weights).sum().backward()
        times = timed(call, args.repeats)
        out[name] = {"median_s": statistics.median(times), "times_s": times, "max_err": err}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--kv-heads", type=int, default=1)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="seq 256, 2 repeats")
    parser.add_argument("--causal", action="store_true", help="causal attention (the 'ar' family)")
    args = parser.parse_args()
    if args.quick:
        args.seq, args.repeats = 256, 2
    if args.heads % args.kv_heads:
        parser.error(f"--heads ({args.heads}) must be a multiple of --kv-heads ({args.kv_heads})")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)

    results = {}
    with OtherLoad() as load:
        for mode in MODES:
            for case in CASES:
                results[f"{mode}/{case}"] = measure(args, case, mode, dtype)
    hw = hardware()
    print(f"Off-by-one {'causal' if args.causal else 'bidirectional'} attention, one layer: batch {args.batch}, {args.heads} heads / {args.kv_heads} KV heads of "
          f"{args.head_dim}, seq {args.seq}, {args.dtype}; {hw['cpu']}, {args.threads} threads; "
          f"median of {args.repeats} (ms)")
    warn_if_busy(load.share)
    print(f"{'mode/case':<20}" + "".join(f"{m:>22}" for m in METHODS))
    for key, row in results.items():
        print(f"{key:<20}" + "".join(f"{row[m]['median_s'] * 1e3:>13.2f} ({row[m]['max_err']:.0e})" for m in METHODS))
    speedups = {key: {"eager": row["eager"]["median_s"] / row["eager+lse"]["median_s"],
                      "sdpa": row["sdpa+append"]["median_s"] / row["sdpa"]["median_s"],
                      "sdpa_form_only": row["sdpa+append+premask"]["median_s"] / row["sdpa"]["median_s"]}
                for key, row in results.items()}
    print("sigmoid(lse) form over the appended key (time ratio, > 1: the new form is faster):")
    for key, s in speedups.items():
        print(f"  {key:<20} eager x{s['eager']:.2f}, sdpa x{s['sdpa']:.2f} (x{s['sdpa_form_only']:.2f} with main's "
              f"mask prebuilt)")
    print(json.dumps({
        "benchmark": "attention", "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "hardware": hw, "torch": torch.__version__, "threads": args.threads, "batch": args.batch,
        "heads": args.heads, "kv_heads": args.kv_heads, "head_dim": args.head_dim, "seq": args.seq,
        "dtype": args.dtype, "repeats": args.repeats, "quick": args.quick, "causal": args.causal, "methods": list(METHODS),
        "results": results, "speedups": speedups, "other_cpu_share": load.share,
    }))


if __name__ == "__main__":
    main()
