"""Conditional training (docs/training.md, "Conditional training (condition dropout)"): on
prompted rows every family keeps the prompt clean and out of the loss, and the diffusion families
hide the prompt of a ``cond_dropout`` share of the rows from attention (the unconditional branch
of classifier-free guidance).  The oracles are written out here: the counted positions and
token counts by plain Python loops over the prompt lengths, "the loss does not depend on X" by
perturbing X, attention hiding by a real tiny model whose logits must not move, the dropout share
by a binomial bound.  All randomness goes through seeded generators.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sumi
from sumi.configs import train_tiny
from sumi.train import AutoregressiveObjective, Objective, build_objective, count_host_syncs

F64 = torch.float64
FAMILIES = ("uniform", "masked", "masked-ce", "hybrid", "ar")
DIFFUSION = ("uniform", "masked", "masked-ce", "hybrid")
V = 12  # the data's vocabulary; the mask families add the mask id 12


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _family(objective: str, **train):
    config = train_tiny(V, objective=objective, seq_len=16, **train)
    return config, build_objective(config)


def _counted_oracle(prompt_lengths, seq: int, objective: str) -> torch.Tensor:
    """bool [batch, seq]: position i of a row counts iff it is no prompt position and, for ar, a
    target (i >= 1: position 0 is predicted by nothing)."""
    first = 1 if objective == "ar" else 0
    return torch.tensor([[i >= max(int(p), first) for i in range(seq)] for p in prompt_lengths])


def _data(batch: int, seq: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    x = torch.randint(0, V, (batch, seq), generator=g)
    lengths = torch.randint(0, seq, (batch,), generator=g)
    lengths[0] = 0  # a row without a prompt
    lengths[1] = seq - 1  # the longest prompt: one token left to score
    return x, lengths


class FixedLogits:
    """A model that returns the given logits whatever it reads, noting each call's attention mask."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.masks: list = []

    def __call__(self, z: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        self.masks.append(attention_mask)
        return self.logits


# -- noise ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective, cond_dropout", [(f, 0.0) for f in FAMILIES] + [(f, 0.5) for f in DIFFUSION])
def test_prompts_stay_clean_and_every_other_draw_is_unchanged(objective, cond_dropout):
    """z == x on each row's prompt; elsewhere z, and everywhere lam, t and per_token, are exactly
    those drawn without prompts (the dropout draw comes after them all), whatever cond_dropout
    is; a row without a prompt (P = 0) is noised exactly as without the feature."""
    _, obj = _family(objective, cond_dropout=cond_dropout)
    x, lengths = _data(24, 16, 1)
    plain = obj.add_noise(x, _gen(2))
    prompted = obj.add_noise(x, _gen(2), prompt_lengths=lengths)
    assert plain.counted is None and plain.attention_mask is None
    for f in ("lam", "t", "per_token"):
        assert torch.equal(getattr(prompted, f), getattr(plain, f)), f
    prompt = torch.tensor([[i < int(p) for i in range(16)] for p in lengths])
    assert torch.equal(prompted.z[prompt], x[prompt])
    assert torch.equal(prompted.z[~prompt], plain.z[~prompt])
    assert torch.equal(prompted.z[0], plain.z[0])  # P = 0
    assert torch.equal(prompted.counted, _counted_oracle(lengths, 16, objective))
    if objective != "ar":
        assert not torch.equal(plain.z[prompt], x[prompt])  # the noise would have changed the prompts
    if objective == "ar" or cond_dropout == 0:
        assert prompted.attention_mask is None  # nothing can be hidden: the model gets no mask


@pytest.mark.parametrize("objective", DIFFUSION)
def test_dropout_and_noise_of_a_row_do_not_depend_on_how_the_batch_is_split(objective):
    """Rows ``offset .. offset + b`` noised on their own equal the same rows of the whole global
    batch noised at once, for every split, the condition dropout included."""
    _, obj = _family(objective, cond_dropout=0.5)
    x, lengths = _data(8, 16, 3)
    lengths = lengths.clamp(min=1)
    whole = obj.add_noise(x, _gen(4), prompt_lengths=lengths)
    hidden = ~whole.attention_mask[:, 0]
    assert hidden.any() and not hidden.all()  # both kinds of row in the batch
    for size in (1, 2, 4):
        for offset in range(0, 8, size):
            rows = slice(offset, offset + size)
            part = obj.add_noise(x[rows], _gen(4), offset=offset, global_batch=8, prompt_lengths=lengths[rows])
            for f in ("z", "lam", "t", "per_token", "counted", "attention_mask"):
                assert torch.equal(getattr(part, f), getattr(whole, f)[rows]), (size, offset, f)


def test_dropout_share_is_binomial_and_the_same_draw_decides_every_rate():
    """A row's prompt is hidden (attention_mask False on its first P positions, True elsewhere)
    with probability cond_dropout: the share of 4000 rows lies within 4 standard errors; p = 0
    hides nothing (no mask at all), p = 1 every prompt; the rows hidden at p = 0.3 are among
    those hidden at p = 0.6 (one uniform per row, drawn whatever the rate)."""
    x = torch.randint(0, V, (4000, 8), generator=_gen(5))
    lengths = torch.randint(1, 8, (4000,), generator=_gen(6))
    prompt = torch.arange(8) < lengths.unsqueeze(-1)
    hidden = {}
    for p in (0.3, 0.6, 1.0):
        mask = Objective(V, cond_dropout=p).add_noise(x, _gen(7), prompt_lengths=lengths).attention_mask
        rows = ~mask[:, 0]
        assert torch.equal(mask, ~(prompt & rows.unsqueeze(-1))), p  # the whole prompt, nothing else
        hidden[p] = rows
        share = rows.double().mean().item()
        assert abs(share - p) <= 4 * math.sqrt(p * (1 - p) / 4000), (p, share)
    assert bool(hidden[1.0].all())
    assert bool((hidden[0.6] | ~hidden[0.3]).all()) and hidden[0.6].sum() > hidden[0.3].sum()
    assert Objective(V).add_noise(x, _gen(7), prompt_lengths=lengths).attention_mask is None


def test_prompt_lengths_are_checked():
    obj = Objective(V)
    x = torch.randint(0, V, (3, 8), generator=_gen(8))
    for bad, row in (([0, 8, 1], 1), ([0, 1, -1], 2)):
        with pytest.raises(ValueError, match=rf"prompt_lengths\[{row}\] is -?\d, outside \[0, seq_len=8\)"):
            obj.add_noise(x, _gen(0), prompt_lengths=torch.tensor(bad))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        obj.add_noise(x, _gen(0), prompt_lengths=torch.tensor([1, 2]))
    with pytest.raises(TypeError, match="torch.long"):
        obj.add_noise(x, _gen(0), prompt_lengths=torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ValueError, match="prompt_lengths is on meta"):
        obj.add_noise(x, _gen(0), prompt_lengths=torch.zeros(3, dtype=torch.long, device="meta"))
    with pytest.raises(ValueError, match=r"prompt_lengths\[0\]"):
        AutoregressiveObjective(V).add_noise(x, _gen(0), prompt_lengths=torch.tensor([8, 0, 0]))
    # validate=False (the loop's: the host checked them) reads nothing and checks nothing
    assert obj.add_noise(x, _gen(0), prompt_lengths=torch.tensor([0, 8, 1]), validate=False).counted.shape == (3, 8)


def test_ar_refuses_condition_dropout():
    with pytest.raises(ValueError, match=r"cond_dropout must be 0 for the autoregressive objective.*got 0.1"):
        AutoregressiveObjective(V, cond_dropout=0.1)
    with pytest.raises(ValueError, match=r"cond_dropout \(0.1\) needs a diffusion family, not objective 'ar'"):
        train_tiny(V, objective="ar", cond_dropout=0.1)
    with pytest.raises(ValueError, match="needs a diffusion family"):
        train_tiny(V, objective="ar").override(["cond_dropout=0.1"])
    with pytest.raises(ValueError, match=r"cond_dropout must be in \[0, 1\]"):
        train_tiny(V, cond_dropout=1.5)
    with pytest.raises(ValueError, match="cond_dropout"):
        Objective(V, cond_dropout=-0.1)
    # build_objective passes the config's rate (and a repr shows it when set)
    for objective in DIFFUSION:
        obj = _family(objective, cond_dropout=0.25)[1]
        assert obj.cond_dropout == 0.25 and "cond_dropout=0.25" in repr(obj), objective
    assert _family("ar")[1].cond_dropout == 0.0


# -- the loss ------------------------------------------------------------------------------------
@pytest.mark.parametrize("objective", FAMILIES)
@pytest.mark.parametrize("with_mask", [False, True])
def test_the_loss_never_reads_the_prompt_and_counts_the_rest(objective, with_mask):
    """model_loss (logits path) with a model whose logits are fixed: num_tokens is the count of
    positions the oracle counts (and ``mask`` selects); replacing every logit the loss must not
    read (diffusion: the prompt positions; ar: positions before the last prompt token, which
    predicts the first answer token, and the last position) leaves every term bit for bit; changing
    a logit it reads changes the loss.  The model gets the attention mask of the noise."""
    config, obj = _family(objective, z_loss=1e-2, fused_loss=False, cond_dropout=0.0 if objective == "ar" else 0.5)
    vocab = config.model.vocab_size
    x, lengths = _data(6, 16, 9)
    noised = obj.add_noise(x, _gen(10), prompt_lengths=lengths)
    logits = 3 * torch.randn(6, 16, vocab, generator=_gen(11), dtype=F64)
    mask = torch.rand(6, 16, generator=_gen(12)) < 0.7 if with_mask else None
    model = FixedLogits(logits)
    terms = obj.model_loss(model, x, noised, mask)
    assert model.masks[-1] is noised.attention_mask
    counted = _counted_oracle(lengths, 16, objective)
    if mask is not None:
        counted &= mask
    if objective == "ar":
        counted[:, 0] = False
    assert int(terms.num_tokens) == int(counted.sum()) > 0
    # positions whose logits are read: a counted position (diffusion) or the one before it (ar)
    read = counted if objective != "ar" else torch.cat([counted[:, 1:], torch.zeros(6, 1, dtype=torch.bool)], 1)
    other = logits.clone()
    other[~read] = 100 * torch.randn(int((~read).sum()), vocab, generator=_gen(13), dtype=F64)
    again = obj.model_loss(FixedLogits(other), x, noised, mask)
    for f in ("loss_sum", "kl_sum", "is_sum", "z_loss_sum", "num_tokens"):
        assert torch.equal(getattr(again, f), getattr(terms, f)), f
    changed = logits.clone()
    b, i = read.nonzero()[0].tolist()
    changed[b, i] += 5 * torch.randn(vocab, generator=_gen(14), dtype=F64)
    assert not torch.equal(obj.model_loss(FixedLogits(changed), x, noised, mask).loss_sum, terms.loss_sum)


@pytest.mark.parametrize("objective", DIFFUSION)
@pytest.mark.parametrize("fused", [True, False])
def test_a_hidden_prompt_changes_nothing_a_visible_one_changes_its_row(objective, fused):
    """A real tiny Sumi (float64): replacing every prompt token of the batch leaves the logits of
    the answer positions of the rows whose prompt is hidden unchanged (to float64 rounding) and
    their loss too, while the rows whose prompt is visible see their answer logits move (so the
    test can fail).  The answer's noise does not depend on the prompt's tokens."""
    config, obj = _family(objective, z_loss=1e-2, fused_loss=fused, cond_dropout=0.5)
    model = sumi.Sumi.initialized(config.model, generator=_gen(15), dtype=F64)
    x, lengths = _data(8, 16, 16)
    lengths = lengths.clamp(min=1)
    prompt = torch.arange(16) < lengths.unsqueeze(-1)
    other_x = torch.where(prompt, (x + 1 + torch.randint(0, V - 1, x.shape, generator=_gen(17))) % V, x)
    a = obj.add_noise(x, _gen(18), prompt_lengths=lengths)
    b = obj.add_noise(other_x, _gen(18), prompt_lengths=lengths)
    assert torch.equal(a.attention_mask, b.attention_mask) and torch.equal(a.z[~prompt], b.z[~prompt])
    assert not torch.equal(a.z[prompt], b.z[prompt])
    hidden = ~a.attention_mask[:, 0]
    assert hidden.any() and not hidden.all()
    with torch.no_grad():
        la, lb = model(a.z, attention_mask=a.attention_mask), model(b.z, attention_mask=b.attention_mask)
    answer = ~prompt
    for row in range(8):
        diff = (la[row][answer[row]] - lb[row][answer[row]]).abs().max().item()
        if hidden[row]:
            assert diff < 1e-12, (row, diff)
        else:
            assert diff > 1e-4, (row, diff)
    for rows, same in ((hidden, True), (~hidden, False)):
        ta = obj.model_loss(model, x[rows], _select(a, rows))
        tb = obj.model_loss(model, other_x[rows], _select(b, rows))
        la_sum, lb_sum = float(ta.loss_sum.detach()), float(tb.loss_sum.detach())
        assert math.isclose(la_sum, lb_sum, rel_tol=1e-12, abs_tol=1e-12) is same, (la_sum, lb_sum)
        assert int(ta.num_tokens) == int(answer[rows].sum())


def _select(noised, rows):
    """The rows ``rows`` (bool) of every tensor field of ``noised``."""
    import dataclasses

    return dataclasses.replace(noised, **{f.name: getattr(noised, f.name)[rows] for f in dataclasses.fields(noised)})


@pytest.mark.parametrize("objective", ["masked", "hybrid", "ar"])
def test_fused_and_logits_paths_agree_on_prompted_rows(objective):
    """The fused loss (hidden states + lm_head) and the logits path count the same tokens and give
    the same sums and gradients on prompted rows with hidden prompts (float64)."""
    dropout = 0.0 if objective == "ar" else 0.5
    config, plain = _family(objective, z_loss=1e-2, fused_loss=False, cond_dropout=dropout)
    fused = build_objective(config.override(["fused_loss=true"]))
    model = sumi.Sumi.initialized(config.model, generator=_gen(19), dtype=F64)
    x, lengths = _data(4, 16, 20)
    noised = plain.add_noise(x, _gen(21), prompt_lengths=lengths)
    params = list(model.parameters())
    got = []
    for obj in (plain, fused):
        t = obj.model_loss(model, x, noised)
        got.append((t, torch.autograd.grad(t.loss_sum, params)))
    (tp, gp), (tf, gf) = got
    for f in ("loss_sum", "kl_sum", "is_sum", "z_loss_sum"):
        torch.testing.assert_close(getattr(tf, f), getattr(tp, f), rtol=1e-10, atol=1e-12, msg=f)
    assert int(tf.num_tokens) == int(tp.num_tokens) == int(_counted_oracle(lengths, 16, objective).sum())
    for a, b in zip(gf, gp):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


# -- counted tokens on the host ------------------------------------------------------------------
@pytest.mark.parametrize("objective", FAMILIES)
def test_counted_tokens_is_the_host_count_of_the_batch(objective):
    """counted_tokens (numpy, no device) equals the count written out, and the num_tokens the loss
    counts on the rows; without prompts it is rows x counted_per_row."""
    _, obj = _family(objective, fused_loss=False)
    x, lengths = _data(10, 16, 22)
    first = 1 if objective == "ar" else 0
    expected = sum(16 - max(int(p), first) for p in lengths)
    host = lengths.numpy()
    assert obj.counted_tokens(16, host, 10) == expected == int(_counted_oracle(lengths, 16, objective).sum())
    assert obj.counted_tokens(16, host.astype(np.int32), 10) == expected
    model = FixedLogits(torch.zeros(10, 16, obj.vocab_size))
    assert int(obj.model_loss(model, x, obj.add_noise(x, _gen(0), prompt_lengths=lengths)).num_tokens) == expected
    assert obj.counted_tokens(16, None, 10) == 10 * (16 - first) == 10 * obj.counted_per_row(16)
    with pytest.raises(ValueError, match=r"prompt_lengths\[2\] is 16, outside \[0, seq_len=16\)"):
        obj.counted_tokens(16, np.array([0, 1, 16]), 3)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        obj.counted_tokens(16, np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="integer array"):
        obj.counted_tokens(16, np.array([0.0, 1.0, 2.0]), 3)


@pytest.mark.parametrize("objective", FAMILIES)
@pytest.mark.parametrize("fused", [True, False])
def test_prompted_noise_and_loss_read_no_device_value(objective, fused):
    """With validate=False a prompted micro-batch's noise, hiding and loss (and the backward) read
    no device value; with validate=True the prompt lengths are checked, once, in _prompt_masks."""
    config, obj = _family(objective, fused_loss=fused, cond_dropout=0.0 if objective == "ar" else 0.5)
    model = sumi.Sumi.initialized(config.model, generator=_gen(0))
    x, lengths = _data(4, 16, 23)
    with count_host_syncs() as syncs:
        noised = obj.add_noise(x, _gen(2), validate=False, prompt_lengths=lengths)
        obj.model_loss(model, x, noised, validate=False).loss_sum.backward()
    assert syncs.count == 0, syncs.sites
    with count_host_syncs() as checked:
        obj.add_noise(x, _gen(2), validate=True, prompt_lengths=lengths)
    prompt_checks = [s for s in checked.sites if "in _prompt_masks" in s]
    assert sum(checked.sites[s] for s in prompt_checks) == 1
    assert all("in check_tokens" in s or "in _prompt_masks" in s for s in checked.sites), checked.sites
