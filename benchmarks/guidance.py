"""Classifier-free guidance, measured: class accuracy and entropy of samples at guidance scales 0, 1, 2, 4
for the uniform, masked and hybrid kernels, on data whose class an exact likelihood ratio decides.

Data: two classes, each a first-order Markov chain over ``V = 16`` tokens, sequences of ``L = 32``
(first token uniform).  Both chains share a random base matrix ``B`` (rows ``softmax(2 N(0, 1))``,
seeded: a few likely successors per state) and differ in a small step preference,
``P_0 = (1 - eps) B + eps S_+`` and ``P_1 = (1 - eps) B + eps S_-`` (``S_+``: move to ``v + 1 mod V``,
``S_-``: to ``v - 1``; ``eps = 0.1``), so they overlap.
The oracle classifier is the exact log-likelihood ratio ``sum_t log P_0[x_t, x_{t+1}] - log P_1[x_t,
x_{t+1}]`` (class 0 when positive); its accuracy on true samples (the ``data`` row, below 100 % since
the chains overlap) is the ceiling a perfect conditional model reaches at scale 0.

Model: a tiny bidirectional transformer in plain torch (``--width`` 64, ``--layers`` 2, 4 heads),
time-conditioned (``sigmoid(lambda)`` and ``lambda / 9`` through a linear layer) and conditioned on
the class by a learned embedding added at every position; a third, "null" embedding replaces the
class with probability ``p_drop = 0.1`` in training (condition dropout), so one model is both the
conditional and the unconditional denoiser (Ho & Salimans 2022, arXiv 2207.12598).  Parameters are
built on the meta device and initialized from a seeded generator (the global RNG is never used).
Each kernel (``Uniform(V)``, ``Masked(V + 1, mask_id=V)``, ``Hybrid(V + 1, mask_id=V)``, shift 0,
scale 1 as ``sumi.family`` builds them) trains its own model with the GIDD surrogate
(``discdiff.losses.gidd``, ``beta_is = 1``, the mean over tokens; arXiv 2512.10858 Eq. 5) under the
linear-alpha schedule, ``t`` stratified over the batch, fresh chain samples every step, AdamW with a
linear warm-up and cosine decay, the same seed for every kernel.

Sampling: ``discdiff.samplers.sample`` with ``Ancestral(kernel)`` on the linear-alpha grid
(``--steps`` 64) ending at ``lambda = +inf`` (the last step leaves no mask, as ``sumi.generation``
does), from the kernel's prior, with the denoiser ``Guided.batched(model, w)`` (one forward per
step on the ``[cond; null]`` halves; ``log p_w = (1 + w) log p(x | c) - w log p(x)``, docs/math.md,
"Guidance").  ``--samples`` N per scale, half with target class 0, half class 1; every scale starts
from the same canvas and generator seed.  Scale ``-1`` is the unconditional model (the null class
only): its accuracy against the same targets is the ~50 % reference.

Measures per kernel x scale: ``accuracy`` (share of samples whose oracle class is the target; also
per target class), ``entropy`` (mean per-sample unigram entropy of the L tokens, nats; the data's
is the reference), ``log_lik`` (mean log-likelihood per token under the target chain, nats),
``distinct`` (share of distinct sequences), ``masked_left`` (mask ids left, expected 0) and the
sampling seconds.  Timings cover the sampling call only and are not the point of this benchmark.

    python benchmarks/guidance.py [--kernels uniform,masked,hybrid] [--scales 0,1,2,4]
                                  [--train-steps 1500] [--batch 128] [--samples 512] [--steps 64]
                                  [--width 64] [--layers 2] [--threads N] [--quick]

Prints a table, then one JSON line (the last line of stdout) with every number and metadata.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import time

import torch
from torch import nn

import discdiff as dd
from discdiff.guidance import Guided
from discdiff.losses import gidd
from discdiff.samplers import Ancestral, linear_alpha_grid, sample
from discdiff.schedules import LinearAlpha
from discdiff.time_sampling import stratified

from _machine import OtherLoad, hardware, warn_if_busy  # noqa: E402  (benchmarks/ is on sys.path)

SEED = 0
V, L = 16, 32          # chain states, sequence length
EPS = 0.1              # weight of each class's step preference in its transition matrix
BASE_SHARPNESS = 2.0   # the shared base matrix's rows: softmax(2 N(0, 1))
P_DROP = 0.1           # condition dropout in training
NULL = 2               # the class embedding of the unconditional model (classes are 0 and 1)
HEADS = 4
KERNELS = ("uniform", "masked", "hybrid")
UNCOND = -1.0          # Guided's scale for the unconditional distribution


def make_kernel(name: str) -> dd.kernels.Kernel:
    """The three families as ``sumi.family`` builds them: the mask families add one id (``V``)."""
    if name == "uniform":
        return dd.kernels.Uniform(V)
    if name == "masked":
        return dd.kernels.Masked(V + 1, mask_id=V)
    return dd.kernels.Hybrid(V + 1, mask_id=V, shift=0.0, scale=1.0)


def chains() -> torch.Tensor:
    """The two classes' transition matrices ``[2, V, V]`` (float64, rows sum to 1)."""
    g = torch.Generator().manual_seed(SEED)
    # peaked rows (a few likely successors per state): the context is worth about 1 nat per token
    base = torch.softmax(BASE_SHARPNESS * torch.randn(V, V, generator=g, dtype=torch.float64), -1)
    v = torch.arange(V)
    step = torch.zeros(2, V, V, dtype=torch.float64)
    step[0, v, (v + 1) % V] = 1.0
    step[1, v, (v - 1) % V] = 1.0
    return (1 - EPS) * base + EPS * step


def draw(P: torch.Tensor, classes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Sequences ``[n, L]`` of the given classes: first token uniform, then the class's chain."""
    cdf = P.cumsum(-1)
    x = torch.randint(0, V, classes.shape, generator=generator)
    out = [x]
    for _ in range(L - 1):
        u = torch.rand(classes.shape + (1,), generator=generator, dtype=torch.float64)
        x = torch.searchsorted(cdf[classes, x], u).squeeze(-1).clamp_(max=V - 1)
        out.append(x)
    return torch.stack(out, 1)


def log_lik(P: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p_c(x)`` under each chain ``[n, 2]`` (nats, float64)."""
    lp = P.log()
    return -math.log(V) + lp[:, x[:, :-1], x[:, 1:]].sum(-1).T


def oracle(P: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The exact likelihood-ratio class of each sequence (0 where ``log p_0 > log p_1``)."""
    ll = log_lik(P, x)
    return (ll[:, 1] > ll[:, 0]).long()


def unigram_entropy(x: torch.Tensor, vocab: int) -> torch.Tensor:
    """Entropy (nats) of each sequence's token histogram, ``[n]``."""
    ones = torch.ones_like(x, dtype=torch.float64)
    counts = torch.zeros(x.shape[0], vocab, dtype=torch.float64).scatter_add_(1, x, ones)
    p = counts / x.shape[1]
    return -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(1)


class Denoiser(nn.Module):
    """Bidirectional transformer ``(z, lambda, class) -> logits [batch, L, vocab]``."""

    def __init__(self, vocab: int, width: int, layers: int) -> None:
        super().__init__()
        self.tokens = nn.Embedding(vocab, width)
        self.positions = nn.Parameter(torch.empty(L, width))
        self.classes = nn.Embedding(3, width)  # 0, 1 and NULL
        self.time = nn.Linear(2, width)
        layer = nn.TransformerEncoderLayer(width, HEADS, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab)

    def forward(self, z: torch.Tensor, lam: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        lam = lam.float()[:, None]
        time_features = torch.cat([torch.sigmoid(lam), lam / 9.0], -1)
        h = self.tokens(z) + self.positions + (self.classes(labels) + self.time(time_features))[:, None]
        return self.head(self.norm(self.blocks(h)))


def build_model(vocab: int, width: int, layers: int, generator: torch.Generator) -> Denoiser:
    """The model, initialized from ``generator`` only: built on the meta device (no draw from the
    global RNG), then weights ``N(0, 1 / fan_in)`` (the input embeddings, time's included,
    ``N(0, 0.02^2)``: one scale, so the time features do not drown the tokens), biases 0, norms 1."""
    with torch.device("meta"):
        model = Denoiser(vocab, width, layers)
    model = model.to_empty(device="cpu")
    for name, p in model.named_parameters():
        with torch.no_grad():
            if "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif p.dim() == 1:
                p.zero_()
            elif name.startswith(("tokens", "positions", "classes", "time")):  # inputs on one scale
                nn.init.normal_(p, 0.0, 0.02, generator=generator)
            else:
                nn.init.normal_(p, 0.0, p.shape[1] ** -0.5, generator=generator)
    return model


def train(kernel, P, args) -> tuple[Denoiser, dict]:
    """Train one model with the GIDD surrogate and condition dropout; returns it and its log."""
    g = torch.Generator().manual_seed(SEED)
    model = build_model(kernel.vocab_size, args.width, args.layers, g)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    warmup = max(args.train_steps // 20, 1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: min((i + 1) / warmup, 0.5 * (1 + math.cos(
        math.pi * min(i / args.train_steps, 1.0)))))
    schedule = LinearAlpha()
    losses, start = [], time.perf_counter()
    model.train()
    for _ in range(args.train_steps):
        classes = torch.randint(0, 2, (args.batch,), generator=g)
        x = draw(P, classes, g)
        labels = torch.where(torch.rand(args.batch, generator=g) < P_DROP, NULL, classes)
        lam = schedule.log_snr(stratified(args.batch, generator=g, dtype=torch.float64), validate=False)
        z = kernel.corrupt(x, lam[:, None], generator=g, validate=False)
        loss = gidd(kernel, model(z, lam, labels), x, z, lam, reduction="mean", validate=False).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    model.eval()
    tail = losses[-max(len(losses) // 10, 1):]
    return model, {"seconds": time.perf_counter() - start, "first_loss": losses[0],
                   "final_loss": sum(tail) / len(tail)}


def guided_denoiser(model: Denoiser, target: torch.Tensor):
    """``denoiser(z2, lam2, conditional=flags)`` for :meth:`Guided.batched`: the target class on the
    rows ``flags`` marks, the null class on the others."""
    def denoiser(z: torch.Tensor, lam: torch.Tensor, *, conditional: torch.Tensor) -> torch.Tensor:
        labels = torch.where(conditional, target.repeat(z.shape[0] // target.shape[0]), NULL)
        return model(z, lam, labels)
    return denoiser


def measure(P, x: torch.Tensor, target: torch.Tensor, vocab: int) -> dict:
    """Accuracy, entropy, log-likelihood and diversity of samples ``x`` drawn for ``target``."""
    masked_left = int((x >= V).sum())
    x = x.clamp(max=V - 1)  # only reached if masks were left, which is reported
    right = oracle(P, x) == target
    ll = log_lik(P, x).gather(1, target[:, None]).squeeze(1) / L
    return {
        "accuracy": right.double().mean().item(),
        "accuracy_by_class": [right[target == c].double().mean().item() for c in (0, 1)],
        "entropy": unigram_entropy(x, vocab).mean().item(),
        "log_lik": ll.mean().item(),
        "distinct": len({tuple(row) for row in x.tolist()}) / x.shape[0],
        "masked_left": masked_left,
    }


def run_kernel(name: str, P, target: torch.Tensor, args) -> tuple[dict, list[dict]]:
    kernel = make_kernel(name)
    model, log = train(kernel, P, args)
    grid = linear_alpha_grid(args.steps)
    grid[-1] = math.inf  # the data end: the last step leaves no position masked
    rows = []
    for scale in [UNCOND, *args.scales]:
        g = torch.Generator().manual_seed(SEED + 1)  # the same canvas and draws at every scale
        canvas = kernel.sample_prior((target.shape[0], L), generator=g)
        start = time.perf_counter()
        with torch.inference_mode():
            x = sample(Guided.batched(guided_denoiser(model, target), scale), Ancestral(kernel), canvas, grid,
                       generator=g).tokens
        seconds = time.perf_counter() - start
        rows.append({"kernel": name, "scale": scale, **measure(P, x, target, V), "sample_s": seconds})
    return log, rows


def report(args, reference: dict, training: dict, rows: list[dict], other_share: float, total_s: float) -> None:
    print(f"Classifier-free guidance on two overlapping Markov chains (V = {V}, L = {L}, eps = {EPS}); "
          f"{args.train_steps} training steps x {args.batch} rows per kernel (p_drop = {P_DROP}), "
          f"{args.samples} samples per scale, {args.steps} ancestral steps, {args.threads} threads")
    warn_if_busy(other_share)
    if args.quick:
        print("NOTE: --quick trains for a few steps to check the script; its numbers mean nothing.")
    print(f"data (true chain samples): oracle accuracy {reference['accuracy']:.3f}, entropy "
          f"{reference['entropy']:.3f} nats, log-lik {reference['log_lik']:.3f} nats/token")
    for name, log in training.items():
        print(f"train {name:<8} {log['seconds']:7.1f} s, loss {log['first_loss']:.3f} -> {log['final_loss']:.3f}")
    print(f"{'kernel':<9}{'scale':>7}{'accuracy':>10}{'acc c=0':>9}{'acc c=1':>9}{'entropy':>9}{'log-lik':>9}"
          f"{'distinct':>10}{'masked':>8}{'sample s':>10}")
    for r in rows:
        scale = "uncond" if r["scale"] == UNCOND else f"{r['scale']:g}"
        a0, a1 = r["accuracy_by_class"]
        print(f"{r['kernel']:<9}{scale:>7}{r['accuracy']:>10.3f}{a0:>9.3f}{a1:>9.3f}{r['entropy']:>9.3f}"
              f"{r['log_lik']:>9.3f}{r['distinct']:>10.3f}{r['masked_left']:>8d}{r['sample_s']:>10.2f}")
    print("(scale uncond: the null class only, accuracy against the same targets; entropy: per-sample unigram "
          "entropy, nats; log-lik: per token under the target chain, nats.)")
    record = {
        "benchmark": "guidance",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "hardware": hardware(),
        "torch": torch.__version__,
        "threads": args.threads,
        "settings": {"vocab": V, "length": L, "eps": EPS, "p_drop": P_DROP, "seed": SEED,
                     "train_steps": args.train_steps, "batch": args.batch, "lr": args.lr, "width": args.width,
                     "layers": args.layers, "heads": HEADS, "samples": args.samples, "steps": args.steps,
                     "scales": args.scales, "kernels": args.kernels, "sampler": "ancestral",
                     "grid": "linear_alpha, last lambda = +inf"},
        "quick": args.quick,
        "reference": reference,
        "training": training,
        "rows": rows,
        "total_s": total_s,
        "other_cpu_share": other_share,
    }
    print(json.dumps(record))


def parse_list(parser, flag: str, text: str, allowed=None, convert=str) -> list:
    items = [item for item in text.split(",") if item]
    try:
        values = [convert(item) for item in items]
    except ValueError:
        values = []
    if not values or (allowed is not None and any(v not in allowed for v in values)) \
            or (convert is float and any(not math.isfinite(v) or v < 0 for v in values)):
        accepted = f"a subset of {', '.join(allowed)}" if allowed else "finite numbers >= 0"
        parser.error(f"{flag} takes comma-separated {accepted}; got {text!r}")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernels", default=",".join(KERNELS))
    parser.add_argument("--scales", default="0,1,2,4", help="guidance scales w (0: plain conditional sampling)")
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--samples", type=int, default=512, help="per scale, half for each target class")
    parser.add_argument("--steps", type=int, default=64, help="ancestral steps")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quick", action="store_true", help="tiny settings (20 training steps, 16 samples, 8 steps)")
    args = parser.parse_args()
    args.kernels = parse_list(parser, "--kernels", args.kernels, KERNELS)
    args.scales = parse_list(parser, "--scales", args.scales, convert=float)
    if args.quick:
        args.train_steps, args.batch, args.samples, args.steps = 20, 32, 16, 8
    for flag in ("train_steps", "batch", "width", "layers", "steps", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1; got {getattr(args, flag)}")
    if args.samples < 2 or args.samples % 2 or args.width % HEADS:
        parser.error(f"--samples must be even and >= 2 (got {args.samples}), --width a multiple of {HEADS} "
                     f"(got {args.width})")
    torch.set_num_threads(args.threads)
    P = chains()
    target = (torch.arange(args.samples) >= args.samples // 2).long()  # half class 0, half class 1
    truth = draw(P, target, torch.Generator().manual_seed(SEED + 2))
    reference = {k: v for k, v in measure(P, truth, target, V).items() if k != "masked_left"}
    training, rows = {}, []
    start = time.perf_counter()
    with OtherLoad() as load:
        for name in args.kernels:
            training[name], kernel_rows = run_kernel(name, P, target, args)
            rows += kernel_rows
    report(args, reference, training, rows, load.share, time.perf_counter() - start)


if __name__ == "__main__":
    main()
