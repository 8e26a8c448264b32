"""Classifier-free guidance in ``sumi.generate`` (``guidance_scale = w``).

Oracles: the log-probabilities handed to the step rule against a float64 recomputation of
``(1 + w) log_softmax(cond) - w log_softmax(uncond)`` renormalized, where ``cond`` and ``uncond``
come from two plain model calls on one row's whole canvas (``uncond``: ``attention_mask`` False on
the prompt); the unconditional branch's independence of the prompt's tokens (``w = -1``); the
doubled batch's masks written out from the layout; a stub whose guided argmax is known in closed
form; each row generated alone; ``w = 0`` bit for bit the unguided run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sumi
from discdiff import NonFiniteError
from discdiff.samplers import Ancestral, Greedy, StepRule
from sumi import generation
from sumi.cli import main
from sumi.configs import tiny
from sumi.family import kernel_for
from sumi.train import count_host_syncs
from sumi.generation import generate
from tests.sumi.test_generate import Broken, Forcing

V = 64
F64 = torch.float64
UNIFORM = tiny(vocab_size=V)
FAMILIES = {"uniform": UNIFORM, "masked": UNIFORM.for_objective("masked"), "hybrid": UNIFORM.for_objective("hybrid")}
BOS, EOS = UNIFORM.bos_token_id, UNIFORM.eos_token_id
PROMPTS = [[BOS, 5, 6, 7, 8], [BOS], [BOS, 9, 10]]  # three lengths in one batch


def _sumi(config, dtype=torch.float32, seed: int = 0) -> sumi.Sumi:
    return sumi.Sumi.initialized(config, dtype=dtype, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> sumi.Sumi:
    return _sumi(UNIFORM)


class Recording(StepRule):
    """``rule``, recording the logits and the sub-canvas each step is given."""

    def __init__(self, rule: StepRule) -> None:
        self.rule, self.vocab_size, self.mask_id = rule, rule.vocab_size, rule.mask_id
        self.logits: list[torch.Tensor] = []
        self.z: list[torch.Tensor] = []

    def _step(self, logits, z_t, lam_t, lam_s, frozen, temperature, generator):
        self.logits.append(logits.clone())
        self.z.append(z_t.clone())
        return self.rule._step(logits, z_t, lam_t, lam_s, frozen, temperature, generator)


def _guided_oracle(model, canvas: torch.Tensor, mask: torch.Tensor | None, prompt_length: int, w: float):
    """float64 ``log p_w`` over one row's whole canvas ``[L, V]``, from two plain model calls."""
    cond_mask = torch.ones(canvas.shape, dtype=torch.bool) if mask is None else mask
    uncond_mask = cond_mask.clone()
    uncond_mask[:prompt_length] = False
    with torch.no_grad():
        cond = model(canvas[None], attention_mask=None if mask is None else mask[None])[0].to(F64)
        uncond = model(canvas[None], attention_mask=uncond_mask[None])[0].to(F64)
    guided = (1 + w) * torch.log_softmax(cond, -1) - w * torch.log_softmax(uncond, -1)
    return torch.log_softmax(guided, -1)


# -- the distribution the rule samples -----------------------------------------------------------
@pytest.mark.parametrize("w", [1.5, -0.5, -1.0])
@pytest.mark.parametrize("denoise_end", [True, False])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_the_rule_gets_the_guided_log_probabilities_of_two_plain_model_calls(family, denoise_end, w):
    """Every step, every row (prompt lengths 5, 1, 3 in one batch), every movable position: the
    logits the rule receives equal the float64 oracle computed row by row on the whole canvas
    (no plan, no cut, no gathered head), from the canvas the trace says the step started from."""
    config = FAMILIES[family]
    model64 = _sumi(config, dtype=F64)
    rule = Recording(Ancestral(kernel_for(config)))
    M, L, steps = 5, 24, 3
    out = generate(model64, PROMPTS, M, canvas_length=L, steps=steps, sampler=rule, seed=4, trace=True,
                   denoise_end=denoise_end, guidance_scale=w)
    layout = out.layout
    assert len(rule.logits) == steps
    for i in range(steps):
        for b, prompt in enumerate(PROMPTS):
            canvas = out.trace.tokens[i, b]
            movable = (~layout.frozen[b]).nonzero().squeeze(-1)
            n = movable.numel()
            mask = None if layout.attention_mask is None else layout.attention_mask[b]
            want = _guided_oracle(model64, canvas, mask, len(prompt), w)[movable]
            got = rule.logits[i][b, :n]
            assert got.dtype == F64 and torch.equal(rule.z[i][b, :n], canvas[movable])
            torch.testing.assert_close(got, want, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("denoise_end", [True, False])
def test_at_minus_one_the_answer_ignores_the_prompts_tokens(model, denoise_end):
    """``w = -1`` samples the unconditional branch: prompts with other tokens (same lengths, same
    seed) give the same canvas after the prompt, step for step; at ``w = 0`` they do not."""
    other = [[BOS, 20, 21, 22, 23], [BOS], [BOS, 30, 31]]
    kw = dict(canvas_length=24, steps=4, seed=6, trace=True, denoise_end=denoise_end)
    for w in (-1.0, 0.0):
        a = generate(model, PROMPTS, 5, guidance_scale=w, **kw)
        b = generate(model, other, 5, guidance_scale=w, **kw)
        same = all(torch.equal(a.trace.tokens[:, r, len(p):], b.trace.tokens[:, r, len(p):])
                   for r, p in enumerate(PROMPTS))
        assert same == (w == -1.0)
        if w == -1.0:
            assert a.tokens == b.tokens


def test_guidance_scale_zero_is_the_unguided_run_bit_for_bit(model):
    kw = dict(canvas_length=24, steps=4, seed=2, trace=True)
    plain = generate(model, PROMPTS, 5, **kw)
    for w in (0, 0.0, -0.0):
        out = generate(model, PROMPTS, 5, guidance_scale=w, **kw)
        assert torch.equal(out.canvas, plain.canvas) and torch.equal(out.trace.tokens, plain.trace.tokens)
        assert out.tokens == plain.tokens


# -- what runs -------------------------------------------------------------------------------------
@pytest.mark.parametrize("denoise_end", [True, False])
def test_one_model_call_per_step_on_the_doubled_batch(model, denoise_end):
    """The body sees ``2 batch`` rows of the attended canvas once per step (``batch`` rows at
    ``w = 0`` and at ``w = -1``, where the conditional logits are not needed), the head the
    movable positions only (37 of 40 with the tail denoised; 6 without, on a canvas cut to 13)."""
    n, kept = (37, 40) if denoise_end else (6, 13)
    for w, rows in ((0.0, 3), (2.0, 6), (-0.25, 6), (-1.0, 3)):
        heads, bodies = [], []
        hooks = [model.lm_head.register_forward_hook(lambda m, args, out: heads.append(tuple(args[0].shape))),
                 model.register_forward_pre_hook(lambda m, args: bodies.append(tuple(args[0].shape)))]
        try:
            generate(model, PROMPTS, 6, canvas_length=40, steps=3, seed=2, denoise_end=denoise_end, guidance_scale=w)
        finally:
            for hook in hooks:
                hook.remove()
        assert bodies == [(rows, kept)] * 3 and heads == [(rows, n, V)] * 3, w


@pytest.mark.parametrize("denoise_end", [True, False])
def test_the_unconditional_rows_hide_the_prompt_and_whatever_the_conditional_rows_hide(denoise_end):
    M, L = 4, 24
    stub = Forcing(torch.full((6, L), 11))
    generate(stub, PROMPTS, M, canvas_length=L, steps=2, sampler="greedy", seed=0, denoise_end=denoise_end,
             guidance_scale=1.0)
    kept = L if denoise_end else max(len(p) for p in PROMPTS) + M + 2
    pos = torch.arange(kept)
    for call in stub.calls:
        mask = call["mask"]
        assert mask.shape == (6, kept)
        for b, prompt in enumerate(PROMPTS):
            P, end = len(prompt), (kept if denoise_end else len(prompt) + M + 2)
            assert torch.equal(mask[b], pos < end)                  # conditional: as without guidance
            assert torch.equal(mask[3 + b], (pos >= P) & (pos < end))  # the prompt's keys hidden too


def test_masks_and_rope_tables_are_built_once_per_call(model, mask_and_rope_builds):
    for denoise_end in (True, False):
        mask_and_rope_builds.update(mask=0, rope=0)
        generate(model, PROMPTS, 4, canvas_length=24, steps=5, seed=0, denoise_end=denoise_end, guidance_scale=1.5)
        assert mask_and_rope_builds == {"mask": 1, "rope": 1}


@pytest.mark.parametrize("w", [1.5, -1.0])
def test_a_guided_step_reads_nothing_back_from_the_device(model, w):
    """The guided denoiser of a call (its plan built outside the loop), over several steps: no host
    sync (counted on the CPU by ``sumi.train.count_host_syncs``), so the loop stays asynchronous."""
    L, M = 24, 5
    lengths = [len(p) for p in PROMPTS]
    canvas = torch.randint(V, (3, L), generator=torch.Generator().manual_seed(0))
    index = torch.stack([torch.arange(p, p + M) for p in lengths])
    guided = generation._guided_denoiser(model, canvas, None, lengths, index, w)
    z = canvas.gather(1, index)
    with torch.no_grad(), count_host_syncs() as syncs:
        for _ in range(3):
            out = guided(z)
    assert syncs.count == 0, syncs.sites
    assert out.shape == (3, M, V) and out.dtype == torch.float32


# -- a closed form: which token guidance picks -------------------------------------------------------
T1, T2 = 11, 12


class Guidable(nn.Module):
    """Logit 3 on ``T1`` everywhere; logit 2 on ``T2`` in a row that attends to position 0 (the
    prompt's BOS), 0 in a row that hides it.  Guided, ``log p_w(T1) - log p_w(T2) = (1 + w)
    (3 - 2) - w (3 - 0) = 1 - 2 w``: greedy writes ``T1`` for ``w < 1/2`` and ``T2`` above."""

    def __init__(self) -> None:
        super().__init__()
        self.config = UNIFORM
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        logits = torch.zeros(*input_ids.shape, V)
        logits[..., T1] = 3.0
        sees_prompt = torch.ones(input_ids.shape[0], dtype=torch.bool) if attention_mask is None \
            else attention_mask[:, 0]
        logits[..., T2] = torch.where(sees_prompt, 2.0, 0.0)[:, None]
        return logits


@pytest.mark.parametrize("w, token", [(0.0, T1), (0.4, T1), (-1.0, T1), (-0.5, T1), (0.6, T2), (2.0, T2)])
def test_greedy_follows_the_guided_argmax_and_stops_when_stable(w, token, capsys):
    M = 4
    stub = Guidable()
    out = generate(stub, PROMPTS, M, canvas_length=20, steps=10, sampler="greedy", seed=0, trace=True,
                   stop_when_stable=True, progress=True, guidance_scale=w)
    assert out.tokens == [[token] * M] * 3
    assert out.steps_run == 2 and stub.calls == 2 and out.trace.num_steps == 2  # the second step changes nothing
    assert "denoising" in capsys.readouterr().err
    full = generate(Guidable(), PROMPTS, M, canvas_length=20, steps=10, sampler="greedy", seed=0, guidance_scale=w)
    assert full.steps_run == 10 and torch.equal(full.canvas, out.canvas)


@pytest.mark.parametrize("denoise_end", [True, False])
def test_each_row_of_a_batch_is_the_row_generated_alone(denoise_end):
    """Masked family (the canvas starts all mask: no noise draw differs between the batch and one
    row), greedy (deterministic), float64 weights (no argmax tie is flipped by rounding)."""
    config = FAMILIES["masked"]
    model64 = _sumi(config, dtype=F64, seed=1)
    kw = dict(canvas_length=24, steps=6, sampler="greedy", seed=0, denoise_end=denoise_end, guidance_scale=1.5)
    batch = generate(model64, PROMPTS, 5, **kw)
    alone = [generate(model64, [prompt], 5, **kw).tokens[0] for prompt in PROMPTS]
    assert batch.tokens == alone
    unguided = generate(model64, PROMPTS, 5, **{**kw, "guidance_scale": 0.0})
    assert unguided.tokens != batch.tokens  # guidance changed the answers, so the comparison has teeth


# -- failures ------------------------------------------------------------------------------------
class BrokenWithoutPrompt(nn.Module):
    """NaN at position 3 of every row that hides the prompt (the unconditional branch) only."""

    def __init__(self) -> None:
        super().__init__()
        self.config, self.calls = UNIFORM, 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        logits = torch.zeros(*input_ids.shape, V)
        if attention_mask is not None:
            logits[~attention_mask[:, 0], 3] = float("nan")
        return logits


@pytest.mark.parametrize("value, token", [(float("nan"), 5), (float("inf"), 5), (-float("inf"), None)])
def test_non_finite_logits_name_the_canvas_position(value, token):
    stub = Broken(value, position=3, token=token)
    with pytest.raises(NonFiniteError, match=r"model produced non-finite values \(its weights may be NaN/inf\): "
                                             r".*first at batch 0, position 3"):
        generate(stub, [BOS], 4, canvas_length=16, steps=4, seed=0, guidance_scale=2.0)
    assert stub.calls == 1


def test_non_finite_unconditional_logits_are_reported_too():
    stub = BrokenWithoutPrompt()
    with pytest.raises(NonFiniteError, match=r"model produced non-finite values .*first at batch 0, position 3"):
        generate(stub, [[BOS, 5], [BOS]], 4, canvas_length=16, steps=4, seed=0, guidance_scale=0.5)
    assert stub.calls == 1
    assert generate(BrokenWithoutPrompt(), [[BOS, 5], [BOS]], 4, canvas_length=16, steps=2, seed=0).steps_run == 2


@pytest.mark.parametrize("value, match", [
    (-1.5, r"guidance_scale must be in \[-1\.0, inf\], got -1\.5"),
    (float("nan"), "guidance_scale must be finite, got nan"),
    (float("inf"), "guidance_scale must be finite, got inf"),
    (True, "guidance_scale must be a number, got True"),
    ("1", "guidance_scale must be a number, got '1'"),
    (None, "guidance_scale must be a number, got None"),
])
def test_bad_guidance_scales_are_refused_before_any_model_call(value, match):
    stub = Forcing(torch.zeros(1, 16, dtype=torch.long))
    with pytest.raises(ValueError, match=match):
        generate(stub, [BOS, 1], 4, canvas_length=16, guidance_scale=value)
    assert stub.calls == []


def test_guidance_on_an_ar_model_is_refused():
    stub = Forcing(torch.zeros(1, 16, dtype=torch.long), config=UNIFORM.for_objective("ar"))
    with pytest.raises(ValueError, match=r"guidance_scale=1\.0 does not apply to an 'ar' model.*"
                                         r"applies to the diffusion families"):
        generate(stub, [BOS, 1], 4, guidance_scale=1.0)
    assert stub.calls == []


# -- command line ----------------------------------------------------------------------------------
TINY_ARGS = ["generate", "--model", "tiny", "--prompt", "hello", "--steps", "2", "--canvas-length", "32",
             "--max-new-tokens", "4", "--seed", "1"]


def test_cli_passes_the_guidance_scale(monkeypatch, capsys):
    seen = []
    real = generation.generate

    def spy(*args, **kwargs):
        seen.append(kwargs["guidance_scale"])
        return real(*args, **kwargs)

    monkeypatch.setattr(generation, "generate", spy)
    assert main(TINY_ARGS + ["--guidance-scale", "1.5"]) == 0
    assert main(TINY_ARGS) == 0
    assert seen == [1.5, 0.0] and "seed 1" in capsys.readouterr().err


def test_cli_help_says_what_guidance_needs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert exc.value.code == 0 and "--guidance-scale W" in out
    assert "condition dropout (--set cond_dropout=0.1) on prompted data" in out


@pytest.mark.parametrize("value, message", [("nan", "guidance_scale must be finite"),
                                            ("-2", "guidance_scale must be in [-1.0, inf]"),
                                            ("strong", "invalid float value")])
def test_cli_bad_guidance_scale_exits_2_with_one_line(capsys, value, message):
    with pytest.raises(SystemExit) as exc:
        main(TINY_ARGS + ["--guidance-scale", value])
    captured = capsys.readouterr()
    assert exc.value.code == 2 and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert lines[-1].startswith("sumi generate: error:") and message in lines[-1] and "Traceback" not in captured.err
