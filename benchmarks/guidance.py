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

**Through Sumi** (``--model sumi``; ``--model plain``, the default, is all of the above): the same
chains, oracle, targets and measures, with Sumi's own model, objective, training step and
generation, so the guidance that ``sumi train --set cond_dropout=p`` and ``sumi generate
--guidance-scale W`` do is measured end to end (docs/training.md, "Conditional training
(condition dropout)").  The vocabulary is the chain tokens ``0 .. 15``, then BOS 16, EOS 17, PAD
18 and one token per class (19, 20): ``vocab_size`` 21, plus the mask id 21 that the masked and
hybrid families add (``TrainConfig`` / ``ModelConfig.for_objective``; kernels from
``sumi.family.kernel_for``).  A row is laid out exactly as ``sumi data prepare --prompted``
writes one (docs/training.md, "Prompted data"): ``[BOS, class token]`` (the prompt, ``P = 2``),
the 32 chain tokens, then the pinned ``EOS, BOS``: 36 tokens, the canvas ``sumi.generate`` lays
out for that prompt with ``max_new_tokens = 32``.  The model is a small :class:`sumi.Sumi`
(``sumi.configs.tiny`` with ``--width`` hidden, ``3 x --width`` SwiGLU, ``--layers`` layers, 4
query / 2 key-value heads, 36 positions), initialized by ``Sumi.initialized`` from the seeded
generator (no global RNG).  Training: ``sumi.train.objective.build_objective(TrainConfig(...,
objective=family, cond_dropout=0.1))`` (the prompt clean and uncounted, hidden from attention in
10 % of the rows; Sumi's defaults otherwise: half the rows with one ``t`` per token, z-loss
``1e-5``), one ``sumi.train.loop.train_step`` per step on ``MicroBatch(x, 0, prompt_lengths)``
with the divisor ``objective.counted_tokens`` and the noise seeded by
``sumi.train.loop.noise_seed(0, step)``, ``sumi.train.optim.build_optimizer`` (AdamW ``(0.9,
0.95)``, weight decay 0.1 on the linear weights) under the plain path's warm-up and cosine
schedule, fresh chain samples every step.  Sampling: ``sumi.generate(model, [[BOS, class
token]] * n, max_new_tokens=32, canvas_length=36, steps=--steps, sampler="ancestral",
seed=1, guidance_scale=w)`` (``sumi.generation.step_grid``: linear in alpha, ending at
``lambda = +inf`` for the mask families, at the released ``alpha = 1 - 1e-4`` for uniform), and
``w = -1`` for the unconditional row.  An answer that is not exactly 32 chain tokens (cut early
by an EOS, or holding another special id) counts as wrong and is counted in ``malformed``; the
entropy, log-likelihood and distinct share are those of the well-formed answers.  The training
losses are Sumi's (per counted token, z-loss included), not comparable with the plain path's.

    python benchmarks/guidance.py [--model plain|sumi] [--kernels uniform,masked,hybrid] [--scales 0,1,2,4]
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

import numpy as np
import torch
from torch import nn

import discdiff as dd
from discdiff.guidance import Guided
from discdiff.losses import gidd
from discdiff.samplers import Ancestral, linear_alpha_grid, sample
from discdiff.schedules import LinearAlpha
from discdiff.time_sampling import stratified
from sumi import Sumi, generate
from sumi.configs import TrainConfig, tiny
from sumi.data.loader import MicroBatch
from sumi.family import kernel_for
from sumi.train.loop import noise_seed, train_step
from sumi.train.objective import build_objective
from sumi.train.optim import build_optimizer

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
MODELS = ("plain", "sumi")
# --model sumi: the chain tokens 0 .. V-1, then BOS, EOS, PAD and one token per class
BOS, EOS, PAD = V, V + 1, V + 2
CLASS_TOKENS = (V + 3, V + 4)
SUMI_VOCAB = V + 5     # the mask families add their mask id (21) after these
PROMPT = 2             # [BOS, class token]
ROW = PROMPT + L + 2   # the prompt, the chain, the pinned EOS and BOS (docs/training.md, "Prompted data")


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


def lr_factor(step: int, steps: int) -> float:
    """The learning rate at optimizer step ``step`` (0-based) of ``steps``, as a share of the peak:
    a linear warm-up over ``max(steps // 20, 1)`` steps, then a cosine decay to 0 at ``steps``."""
    warmup = max(steps // 20, 1)
    return min((step + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(step / steps, 1.0))))


def train(kernel, P, args) -> tuple[Denoiser, dict]:
    """Train one model with the GIDD surrogate and condition dropout; returns it and its log."""
    g = torch.Generator().manual_seed(SEED)
    model = build_model(kernel.vocab_size, args.width, args.layers, g)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: lr_factor(i, args.train_steps))
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


def measure(P, x: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None = None) -> dict:
    """Accuracy, entropy, log-likelihood and diversity of samples ``x`` (``[n, L]``) drawn for
    ``target``.  ``valid`` (bool ``[n]``, default all): the samples that are ``L`` chain tokens;
    the others count as wrong, and the entropy, log-likelihood and distinct share are those of
    the valid samples (``None`` when there is none)."""
    if valid is None:
        valid = torch.ones(x.shape[0], dtype=torch.bool)
    right = (oracle(P, x.clamp(0, V - 1)) == target) & valid  # an invalid sample's class is never read
    good, good_target = x[valid], target[valid]
    ll = log_lik(P, good).gather(1, good_target[:, None]).squeeze(1) / L
    return {
        "accuracy": right.double().mean().item(),
        "accuracy_by_class": [right[target == c].double().mean().item() for c in (0, 1)],
        "entropy": unigram_entropy(good, V).mean().item() if len(good) else None,
        "log_lik": ll.mean().item() if len(good) else None,
        "distinct": len({tuple(row) for row in good.tolist()}) / len(good) if len(good) else None,
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
        masked_left = int((x >= V).sum())
        x = x.clamp(max=V - 1)  # only reached if masks were left, which is reported
        rows.append({"kernel": name, "scale": scale, **measure(P, x, target), "masked_left": masked_left,
                     "sample_s": seconds})
    return log, rows


# -- the same measurement through Sumi (--model sumi) -----------------------------------------------
def sumi_config(family: str, args) -> TrainConfig:
    """The Sumi run of ``family``: a small model over the benchmark's vocabulary (the mask
    families add their mask id), the prompted rows of ``ROW`` tokens, ``cond_dropout = P_DROP``;
    Sumi's defaults otherwise (its WSD learning-rate fields are unused: :func:`train_sumi` follows
    :func:`lr_factor`, as the plain path)."""
    model = tiny(SUMI_VOCAB, hidden_size=args.width, intermediate_size=3 * args.width, num_hidden_layers=args.layers,
                 num_attention_heads=HEADS, max_position_embeddings=ROW, bos_token_id=BOS, eos_token_id=EOS,
                 pad_token_id=PAD)
    return TrainConfig(model=model, seq_len=ROW, global_batch_size=args.batch, micro_batch_size=args.batch,
                       steps=args.train_steps, peak_lr=args.lr, floor_lr=args.lr, warmup_steps=0, objective=family,
                       cond_dropout=P_DROP, seed=SEED)


def prompted_rows(classes: torch.Tensor, chain: torch.Tensor) -> torch.Tensor:
    """The rows ``[n, ROW]`` of ``sumi data prepare --prompted`` (docs/training.md, "Prompted
    data") for the prompts ``[BOS, class token]`` and the responses ``chain`` (``[n, L]``), which
    fill the answer budget: ``| BOS class | chain | EOS | BOS |``."""
    def column(token: int) -> torch.Tensor:
        return torch.full((len(classes), 1), token, dtype=torch.long)
    return torch.cat([column(BOS), (CLASS_TOKENS[0] + classes)[:, None], chain, column(EOS), column(BOS)], 1)


def train_sumi(config: TrainConfig, P, args) -> tuple[Sumi, dict]:
    """Train ``config``'s model with Sumi's objective and training step; returns it and its log."""
    objective = build_objective(config)
    g = torch.Generator().manual_seed(SEED)
    model = Sumi.initialized(config.model, generator=g)
    optimizer = build_optimizer(model, lr=args.lr, betas=(config.beta1, config.beta2),
                                weight_decay=config.weight_decay)
    lengths = np.full(args.batch, PROMPT, dtype=np.int64)
    counted = objective.counted_tokens(ROW, lengths, args.batch)  # the loss divisor: ROW - P per row
    prompt_lengths = torch.from_numpy(lengths)
    noise = torch.Generator()
    losses, start = [], time.perf_counter()
    model.train()
    for step in range(args.train_steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * lr_factor(step, args.train_steps)
        classes = torch.randint(0, 2, (args.batch,), generator=g)
        x = prompted_rows(classes, draw(P, classes, g))
        sums, _ = train_step(model, optimizer, objective, [MicroBatch(x, 0, prompt_lengths)], noise,
                             noise_seed(SEED, step), global_batch=args.batch, global_tokens=counted,
                             grad_clip=config.grad_clip, world_size=1)
        losses.append(sums[0].item())
    model.eval()
    tail = losses[-max(len(losses) // 10, 1):]
    return model, {"seconds": time.perf_counter() - start, "first_loss": losses[0],
                   "final_loss": sum(tail) / len(tail), "vocab_size": config.model.vocab_size,
                   "parameters": model.num_parameters()}


def run_sumi(name: str, P, target: torch.Tensor, args) -> tuple[dict, list[dict]]:
    config = sumi_config(name, args)
    model, log = train_sumi(config, P, args)
    mask_id = kernel_for(config.model).mask_id
    prompts = [[BOS, CLASS_TOKENS[c]] for c in target.tolist()]
    rows = []
    for scale in [UNCOND, *args.scales]:
        start = time.perf_counter()
        # the same seed, hence the same initial canvas and draws, at every scale
        out = generate(model, prompts, L, canvas_length=ROW, steps=args.steps, sampler="ancestral", seed=SEED + 1,
                       guidance_scale=scale)
        seconds = time.perf_counter() - start
        canvas = out.canvas
        # generate's canvas is the training rows' layout: the prompt, the answer, the pinned EOS and BOS
        if not (torch.equal(canvas[:, :PROMPT], torch.tensor(prompts)) and (canvas[:, PROMPT + L] == EOS).all()
                and (canvas[:, PROMPT + L + 1] == BOS).all() and canvas.shape[1] == ROW):
            raise RuntimeError("sumi.generate laid out another canvas than the prompted rows it was trained on")
        x = canvas[:, PROMPT:PROMPT + L]
        valid = torch.tensor([len(answer) == L and max(answer) < V for answer in out.tokens])
        rows.append({"kernel": name, "scale": scale, **measure(P, x, target, valid),
                     "masked_left": 0 if mask_id is None else int((x == mask_id).sum()),
                     "malformed": int((~valid).sum()), "sample_s": seconds})
    return log, rows


def number(value: float | None, width: int) -> str:
    """``value`` to 3 decimals, right-aligned in ``width``; ``-`` for ``None`` (no valid sample)."""
    return f"{'-' if value is None else format(value, '.3f'):>{width}}"


def report(args, reference: dict, training: dict, rows: list[dict], other_share: float, total_s: float) -> None:
    sumi = args.model == "sumi"
    through = (f"; through Sumi: rows [BOS, class] + {L} chain tokens + [EOS, BOS] ({ROW} tokens, vocabulary "
               f"{SUMI_VOCAB} + the mask families' mask id), sumi.train.loop.train_step with cond_dropout = "
               f"{P_DROP}, sumi.generate with guidance_scale" if sumi else "")
    print(f"Classifier-free guidance on two overlapping Markov chains (V = {V}, L = {L}, eps = {EPS}); "
          f"{args.train_steps} training steps x {args.batch} rows per kernel (p_drop = {P_DROP}), "
          f"{args.samples} samples per scale, {args.steps} ancestral steps, {args.threads} threads{through}")
    warn_if_busy(other_share)
    if args.quick:
        print("NOTE: --quick trains for a few steps to check the script; its numbers mean nothing.")
    print(f"data (true chain samples): oracle accuracy {reference['accuracy']:.3f}, entropy "
          f"{reference['entropy']:.3f} nats, log-lik {reference['log_lik']:.3f} nats/token")
    for name, log in training.items():
        print(f"train {name:<8} {log['seconds']:7.1f} s, loss {log['first_loss']:.3f} -> {log['final_loss']:.3f}")
    print(f"{'kernel':<9}{'scale':>7}{'accuracy':>10}{'acc c=0':>9}{'acc c=1':>9}{'entropy':>9}{'log-lik':>9}"
          f"{'distinct':>10}{'masked':>8}" + (f"{'malformed':>11}" if sumi else "") + f"{'sample s':>10}")
    for r in rows:
        scale = "uncond" if r["scale"] == UNCOND else f"{r['scale']:g}"
        a0, a1 = r["accuracy_by_class"]
        print(f"{r['kernel']:<9}{scale:>7}{r['accuracy']:>10.3f}{a0:>9.3f}{a1:>9.3f}{number(r['entropy'], 9)}"
              f"{number(r['log_lik'], 9)}{number(r['distinct'], 10)}{r['masked_left']:>8d}"
              + (f"{r['malformed']:>11d}" if sumi else "") + f"{r['sample_s']:>10.2f}")
    if sumi:
        print("(scale uncond: guidance_scale -1, the prompt hidden from attention, accuracy against the same "
              "targets; malformed: answers that are not 32 chain tokens, counted wrong; entropy, log-lik and "
              "distinct: over the other answers; entropy: per-sample unigram entropy, nats; log-lik: per token "
              "under the target chain, nats; training loss: Sumi's, per counted token.)")
    else:
        print("(scale uncond: the null class only, accuracy against the same targets; entropy: per-sample unigram "
              "entropy, nats; log-lik: per token under the target chain, nats.)")
    settings = {"vocab": V, "length": L, "eps": EPS, "p_drop": P_DROP, "seed": SEED,
                "train_steps": args.train_steps, "batch": args.batch, "lr": args.lr, "width": args.width,
                "layers": args.layers, "heads": HEADS, "samples": args.samples, "steps": args.steps,
                "scales": args.scales, "kernels": args.kernels, "sampler": "ancestral",
                "grid": "linear_alpha, last lambda = +inf"}
    if sumi:
        config = sumi_config("uniform", args)
        settings.update(
            grid="sumi.generation.step_grid('linear'): last lambda = +inf (masked, hybrid), alpha = 1 - 1e-4 "
                 "(uniform)",
            row="[BOS, class token] + chain + [EOS, BOS]", seq_len=ROW, prompt_length=PROMPT,
            sumi_vocab=SUMI_VOCAB, special_ids={"bos": BOS, "eos": EOS, "pad": PAD, "classes": list(CLASS_TOKENS)},
            kv_heads=config.model.num_key_value_heads, intermediate=config.model.intermediate_size,
            per_token_share=config.per_token_share, z_loss=config.z_loss, weight_decay=config.weight_decay,
            betas=[config.beta1, config.beta2], grad_clip=config.grad_clip,
            optimizer="sumi.train.optim.build_optimizer", schedule="linear warm-up, cosine decay (as --model plain)")
    record = {
        "benchmark": "guidance",
        "model": args.model,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "hardware": hardware(),
        "torch": torch.__version__,
        "threads": args.threads,
        "settings": settings,
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
    parser.add_argument("--model", choices=MODELS, default="plain",
                        help="plain: a tiny torch transformer; sumi: Sumi's model, training step and generate")
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help="--model sumi: the families (objectives) of the same names")
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
    multiple = 2 * HEADS if args.model == "sumi" else HEADS  # Sumi's rotary head_dim must be even
    if args.samples < 2 or args.samples % 2 or args.width % multiple:
        parser.error(f"--samples must be even and >= 2 (got {args.samples}), --width a multiple of {multiple} "
                     f"(got {args.width})")
    torch.set_num_threads(args.threads)
    P = chains()
    target = (torch.arange(args.samples) >= args.samples // 2).long()  # half class 0, half class 1
    truth = draw(P, target, torch.Generator().manual_seed(SEED + 2))
    reference = measure(P, truth, target)
    run = run_sumi if args.model == "sumi" else run_kernel
    training, rows = {}, []
    start = time.perf_counter()
    with OtherLoad() as load:
        for name in args.kernels:
            training[name], kernel_rows = run(name, P, target, args)
            rows += kernel_rows
    report(args, reference, training, rows, load.share, time.perf_counter() - start)


if __name__ == "__main__":
    main()
