"""Every family learns a distribution whose entropy is known exactly.

Data: the stationary Markov chain over 8 tokens of ``tests/sumi/test_objective.py`` (``CHAIN``),
rows of 16 tokens, drawn fresh every step from seeded generators.  Its exact entropies: the rate
``h_rate = 0.5501`` nats per token given the past, ``h_seq = 0.6417`` per token of a whole row
(the first token costs the stationary entropy, 2.0155), while a model that ignores context can do
no better than 2.0155 per token: learning means using the neighbours.

Each family trains the tiny model with its own objective (:func:`sumi.train.build_objective`)
through the loop's own step (:func:`sumi.train.loop.train_step`, the loss divided by the counted
tokens), 200 AdamW steps of 48 rows, the same schedule for every family.  Then, on 128 fresh
rows, paired with the chain's exact log-likelihood of the SAME rows (so the data's sampling noise
cancels):

- ``ar``: the exact NLL per predicted token (``F.cross_entropy`` of the causal model's logits at
  the next token, computed here, not by the objective) against the chain's exact conditional NLL.
  It cannot beat the truth (a cross-entropy is at least the entropy): mean gap >= -4 standard
  errors of the paired per-row gaps.  A model that sees the token it predicts (attention not
  causal) copies it and falls far below (measured: a bidirectional model trained 100 steps with
  this loss, -0.56 nats, 55 standard errors).  Upper tolerance 0.05 nats (measured 0.004; 0.05
  is 3 % of the 1.47-nat gap between the context-free predictor and the truth).
- diffusion families: the NELBO per token (``discdiff.likelihood.nelbo`` with the family's kernel,
  ``sumi.family.kernel_for``, 32 midpoints of the linear-alpha grid) is an upper bound on the NLL,
  so its mean gap to the chain's exact NLL is >= -4 standard errors (the estimator's time-point
  noise and the data's both sit in the per-row spread), and <= 0.6 x the entropy (measured:
  masked 0.106, masked-ce 0.106, hybrid 0.239, uniform 0.309 nats against 0.385 allowed; in 200
  steps a 2-layer model without a time input does not close the gap: the uniform family's own
  learning test reports 1.30 x the entropy after 400 steps); and the trained gap is at most 0.3 x
  the untrained model's (measured 0.07 to 0.22 x; ar 0.003 x).  Standard errors: 0.001 (ar) to
  0.016 nats.  The thresholds are the same for every family and were not set from an ordering.

Measured on a 2-core VM (torch 2.13 CPU, one thread, 2026-11-30): 5 to 6.5 s per family, about
30 s for the file (40 s with the other cores busy).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import sumi
from discdiff.likelihood import HiddenStates, nelbo
from discdiff.schedules import LinearAlpha
from sumi.configs import train_tiny
from sumi.family import kernel_for
from sumi.train import WSD, build_objective, build_optimizer
from sumi.train.loop import train_step
from tests.sumi.test_objective import CHAIN, _draw_chain, _stationary

V, L, BATCH, STEPS, PEAK_LR = 8, 16, 48, 200, 5e-3
EVAL_ROWS, EVAL_POINTS = 128, 32
PI = _stationary(CHAIN)
H_RATE = float(-(PI * torch.where(CHAIN > 0, CHAIN * CHAIN.log(), torch.zeros_like(CHAIN)).sum(1)).sum())
H_FIRST = float(-(PI * PI.log()).sum())
H_SEQ = (H_FIRST + (L - 1) * H_RATE) / L


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _true_nll(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The chain's exact NLL per row: of the first token, and of the rest given the first."""
    return -PI.log()[x[:, 0]], -CHAIN.log()[x[:, :-1], x[:, 1:]].sum(1)


def _gap(model, config, generator: torch.Generator) -> tuple[float, float]:
    """Mean and standard error over fresh rows of (model's NLL or NELBO - the chain's exact NLL)
    per counted token."""
    x = _draw_chain(CHAIN, PI, EVAL_ROWS, L, generator)
    first, rest = _true_nll(x)
    model.eval()
    with torch.no_grad():
        if config.model.causal:  # the exact NLL of the targets x[:, 1:], each given its past
            logits = model(x).double()
            nll = F.cross_entropy(logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1), reduction="none")
            per_row = (nll.view(EVAL_ROWS, L - 1).sum(1) - rest) / (L - 1)
        else:
            out = nelbo(lambda z: HiddenStates(model(z, return_hidden=True), model.lm_head.weight),
                        kernel_for(config.model), x, schedule=LinearAlpha(), points=EVAL_POINTS, generator=generator)
            per_row = (out.per_sequence.double() - first - rest) / L
    model.train()
    return float(per_row.mean()), float(per_row.std() / math.sqrt(EVAL_ROWS))


def test_the_chain_entropies():
    assert (H_RATE, H_SEQ, H_FIRST) == pytest.approx((0.5501, 0.6417, 2.0155), abs=1e-4)


@pytest.mark.parametrize("family", ["uniform", "masked", "masked-ce", "hybrid", "ar"])
def test_family_learns_a_markov_chain_of_known_entropy(family):
    config = train_tiny(V, objective=family, seq_len=L, global_batch_size=BATCH, micro_batch_size=BATCH,
                        steps=STEPS, peak_lr=PEAK_LR, floor_lr=PEAK_LR / 10, warmup_steps=STEPS // 10)
    config = config.override([f"model.max_position_embeddings={L}"])
    objective = build_objective(config)
    model = sumi.Sumi.initialized(config.model, generator=_gen(0))
    optimizer = build_optimizer(model, lr=PEAK_LR)
    schedule = WSD(config.peak_lr, config.floor_lr, config.warmup_steps, STEPS)
    untrained, _ = _gap(model, config, _gen(9))
    data, noise = _gen(1), torch.Generator()
    for step in range(STEPS):
        schedule.apply(optimizer, step)
        x = _draw_chain(CHAIN, PI, BATCH, L, data)
        train_step(model, optimizer, objective, [(x, 0)], noise, step, global_batch=BATCH,
                   global_tokens=BATCH * objective.counted_per_row(L), grad_clip=1.0, world_size=1, validate=False)
    gap, se = _gap(model, config, _gen(9))
    entropy = H_RATE if family == "ar" else H_SEQ
    assert gap >= -4 * se, f"{family}: {entropy + gap:.4f} nats per token is below the entropy {entropy:.4f}"
    assert gap <= (0.05 if family == "ar" else 0.6 * entropy), (family, gap, se)
    assert gap <= 0.3 * untrained, (family, gap, untrained)
