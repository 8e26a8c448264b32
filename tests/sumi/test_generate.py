"""Generation with Sumi's canvas semantics: the layout (prompt frozen at the front, EOS then BOS
pinned after the answer budget, a noisy tail denoised or frozen), per-row layouts in a batch,
answers cut at the first EOS (checked exactly with a stub model whose logits force every
position), reproducibility from the seed alone, and the ``sumi generate`` command line.

Only what can change runs: the head and the step rule see the unfrozen positions only, the model
body the attended canvas only, masks and RoPE tables are built once per call; deterministic rules
give exactly the answers of the whole-canvas loop (recomputed here with
``discdiff.samplers.sample``), with or without ``stop_when_stable``, and the ancestral rule's
first step has the exact posterior's distribution (a dense float64 oracle)."""

from __future__ import annotations

import random
import sys
import types

import pytest
import torch
from torch import nn

import sumi
from sumi.cli import main
from discdiff import NonFiniteError
from discdiff.kernels import Uniform
from discdiff.samplers import Greedy, StepOutput, StepRule, TauLeaping, sample
from sumi import hf
from sumi.configs import tiny
from sumi.generation import GenerationOutput, answers, generate, make_sampler, step_grid

V = 64
F64 = torch.float64
CONFIG = tiny(vocab_size=V)  # max_position_embeddings 512
BOS, EOS, PAD = CONFIG.bos_token_id, CONFIG.eos_token_id, CONFIG.pad_token_id


@pytest.fixture(scope="module")
def model() -> sumi.Sumi:
    return sumi.Sumi.initialized(CONFIG, generator=torch.Generator().manual_seed(0))


class Forcing(nn.Module):
    """A denoiser whose argmax at ``(row, position)`` is ``targets[row, position]`` (a logit of
    1e4 there, 0 elsewhere); it records how it was called."""

    def __init__(self, targets: torch.Tensor, config=CONFIG) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("targets", targets)
        self.calls: list[dict] = []

    def forward(self, input_ids, attention_mask=None):
        self.calls.append(dict(mask=attention_mask, training=self.training, grad=torch.is_grad_enabled()))
        logits = torch.zeros(*input_ids.shape, self.config.vocab_size)
        return logits.scatter_(-1, self.targets[:, : input_ids.shape[1]].unsqueeze(-1), 1e4)


def _prompts():
    return [[BOS, 5, 6, 7, 8], [BOS], [BOS, 9, 10]]  # three lengths: each row its own layout


# -- layout -----------------------------------------------------------------------------------
@pytest.mark.parametrize("denoise_end", [True, False])
def test_canvas_layout_and_frozen_positions_over_the_trace(model, denoise_end):
    prompts, M, L = _prompts(), 6, 40
    out = generate(model, prompts, M, canvas_length=L, steps=6, seed=3, trace=True, denoise_end=denoise_end)
    toks = out.trace.tokens  # [steps + 1, batch, L]
    assert toks.shape == (7, 3, L) and out.canvas.shape == (3, L) and out.canvas.dtype == torch.long
    assert torch.equal(toks[-1], out.canvas)
    for b, prompt in enumerate(prompts):
        P = len(prompt)
        first = toks[0, b]
        assert first[:P].tolist() == prompt
        assert first[P + M].item() == EOS and first[P + M + 1].item() == BOS
        frozen = torch.zeros(L, dtype=torch.bool)
        frozen[:P] = frozen[P + M:P + M + 2] = True
        if not denoise_end:
            frozen[P + M + 2:] = True
            assert (toks[:, b, P + M + 2:] == PAD).all()
        # frozen positions never change; the answer (and the tail when denoised) does
        assert (toks[:, b, frozen] == first[frozen]).all()
        assert (toks[:, b, P:P + M] != first[P:P + M]).any()
        if denoise_end:
            tail = toks[:, b, P + M + 2:]
            assert len(set(tail[0].tolist())) > 1  # starts as noise, not a constant fill
            assert (tail != tail[0]).any()
        assert out.canvas[b, P + M].item() == EOS and out.canvas[b, P + M + 1].item() == BOS
        assert len(out.tokens[b]) <= M and EOS not in out.tokens[b]


def test_initial_noise_is_uniform_over_the_whole_vocabulary_specials_included():
    targets = torch.zeros(8, 512, dtype=torch.long)
    out = generate(Forcing(targets), [[BOS]] * 8, 8, canvas_length=512, steps=1, sampler="greedy", seed=0, trace=True)
    first = out.trace.tokens[0]
    noise = torch.cat([first[:, 1:9], first[:, 11:]], dim=1)  # everything not frozen
    counts = torch.bincount(noise.flatten(), minlength=V)
    n = noise.numel()  # 8 * 509 draws over 64 ids: ~64 each, all present
    assert counts.shape == (V,) and (counts > 0).all()
    assert counts[[BOS, EOS, PAD]].min() > 0
    assert (counts - n / V).abs().max() < 6 * (n / V) ** 0.5


def test_denoise_end_false_hides_the_tail_from_attention():
    prompts, M, L = _prompts(), 4, 24
    stub = Forcing(torch.full((3, L), 11))
    generate(stub, prompts, M, canvas_length=L, steps=2, sampler="greedy", seed=0, denoise_end=False)
    for call in stub.calls:
        for b, prompt in enumerate(prompts):
            end = len(prompt) + M + 2
            assert call["mask"][b, :end].all() and not call["mask"][b, end:].any()
    stub = Forcing(torch.full((3, L), 11))
    generate(stub, prompts, M, canvas_length=L, steps=2, sampler="greedy", seed=0)
    assert all(call["mask"] is None for call in stub.calls)


# -- answers ----------------------------------------------------------------------------------
def test_answers_are_cut_at_the_first_eos_after_the_prompt():
    M, L = 6, 16
    prompts = [[BOS, 5, 6], [BOS, 7], [BOS, 8, 9, 10]]
    targets = torch.full((3, L), 1)
    targets[0, 3:9] = torch.tensor([10, 11, EOS, 12, EOS, 13])  # cut after two tokens
    targets[1, 2:8] = torch.tensor([20, BOS, 22, 23, 24, 25])  # no EOS: the whole budget (BOS kept)
    targets[2, 4:10] = torch.tensor([EOS, 30, 31, 32, 33, 34])  # EOS first: an empty answer
    stub = Forcing(targets)
    stub.train()
    out = generate(stub, prompts, M, canvas_length=L, steps=3, sampler="greedy", seed=0)
    assert isinstance(out, GenerationOutput) and out.trace is None
    assert out.tokens == [[10, 11], [20, BOS, 22, 23, 24, 25], []]
    assert out.canvas[1, 2:8].tolist() == [20, BOS, 22, 23, 24, 25] and out.canvas[1, 8].item() == EOS
    # eval mode and no autograd during sampling; the caller's mode is restored
    assert len(stub.calls) == 3 and not any(c["training"] or c["grad"] for c in stub.calls)
    assert stub.training


def test_a_single_prompt_gives_one_answer():
    targets = torch.full((1, 12), 3)
    out = generate(Forcing(targets), [BOS, 4], 5, canvas_length=12, steps=1, sampler="greedy", seed=0)
    assert out.tokens == [[3] * 5] and out.canvas.shape == (1, 12)
    tensor_out = generate(Forcing(targets), torch.tensor([BOS, 4]), 5, canvas_length=12, steps=1, sampler="greedy", seed=0)
    assert tensor_out.tokens == out.tokens


# -- randomness -------------------------------------------------------------------------------
def test_the_seed_alone_determines_the_output_and_the_global_rng_is_untouched(model):
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    kw = dict(canvas_length=32, steps=4)
    a = generate(model, _prompts(), 6, seed=7, **kw)
    b = generate(model, _prompts(), 6, seed=7, **kw)
    c = generate(model, _prompts(), 6, seed=8, **kw)
    fresh = generate(model, _prompts(), 6, **kw)
    again = generate(model, _prompts(), 6, seed=fresh.seed, **kw)
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    assert a.seed == 7 and torch.equal(a.canvas, b.canvas) and a.tokens == b.tokens
    assert not torch.equal(a.canvas, c.canvas)
    assert isinstance(fresh.seed, int) and torch.equal(fresh.canvas, again.canvas)


# -- every sampler and grid -------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("sampler", ["ancestral", "adaptive", "greedy"])
def test_every_sampler_and_schedule(model, sampler, schedule):
    prompts, M, L = _prompts(), 5, 24
    out = generate(model, prompts, M, canvas_length=L, steps=3, sampler=sampler, schedule=schedule,
                   tokens_per_step=2, temperature=0.7, top_k=20, top_p=0.95, min_p=0.01, seed=1, trace=True)
    assert out.trace.num_steps == 3 and len(out.tokens) == 3
    for b, prompt in enumerate(prompts):
        P = len(prompt)
        assert out.canvas[b, :P].tolist() == prompt and out.canvas[b, P + M:P + M + 2].tolist() == [EOS, BOS]
        assert len(out.tokens[b]) <= M
    if sampler == "adaptive":
        assert (out.trace.selected.sum(-1) <= 2).all()


def test_progress_bar_goes_to_stderr(model, capsys):
    generate(model, [[BOS]], 4, canvas_length=16, steps=3, seed=0, progress=True)
    captured = capsys.readouterr()
    assert captured.out == "" and "denoising" in captured.err and "/3" in captured.err


# -- only what can change runs ----------------------------------------------------------------
@pytest.fixture(scope="module")
def model64() -> sumi.Sumi:
    """float64 weights: rounding differences between the whole canvas and the cut or gathered
    one stay far below any argmax gap."""
    return sumi.Sumi.initialized(CONFIG, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def _whole_canvas_run(model, out, sampler, steps, tokens_per_step=1, trace=False):
    """main before issue 14, recomputed: ``discdiff.samplers.sample`` over the whole canvas (the
    model, its head and the rule everywhere, the tail kept), from generate's initial canvas."""
    layout = out.layout
    rule = make_sampler(sampler, model.config.vocab_size, tokens_per_step=tokens_per_step)
    with torch.no_grad():
        return sample(lambda z: model(z, attention_mask=layout.attention_mask), rule, layout.tokens,
                      step_grid("linear", steps), layout.frozen, temperature=0.0,
                      generator=torch.Generator().manual_seed(0), trace=trace)


@pytest.mark.parametrize("denoise_end", [True, False])
@pytest.mark.parametrize("sampler", ["greedy", "adaptive"])
def test_deterministic_rules_give_the_whole_canvas_answers(model64, sampler, denoise_end):
    prompts, M, L, steps = _prompts(), 6, 40, 8
    out = generate(model64, prompts, M, canvas_length=L, steps=steps, sampler=sampler, tokens_per_step=2,
                   temperature=0.0, seed=5, denoise_end=denoise_end)
    want = _whole_canvas_run(model64, out, sampler, steps, tokens_per_step=2).tokens
    assert torch.equal(out.canvas, want) and out.steps_run == steps
    assert out.tokens == answers(want, out.layout.prompt_lengths, EOS)
    assert not torch.equal(want, out.layout.tokens)


@pytest.mark.parametrize("denoise_end", [True, False])
def test_the_head_runs_on_movable_positions_and_the_body_on_the_attended_canvas(model64, denoise_end):
    """Rows of prompt lengths 5, 1, 3 with a budget of 6 on a canvas of 40: the head sees the
    most movable positions of a row (the budget, plus the tail when it is denoised: 40 - 1 - 2 =
    37), the body the canvas up to the last pinned BOS when the tail is frozen (5 + 6 + 2 = 13)."""
    heads, bodies = [], []
    hooks = [model64.lm_head.register_forward_hook(lambda m, args, out: heads.append(tuple(args[0].shape))),
             model64.register_forward_pre_hook(lambda m, args: bodies.append(tuple(args[0].shape)))]
    try:
        out = generate(model64, _prompts(), 6, canvas_length=40, steps=3, seed=2, denoise_end=denoise_end)
    finally:
        for hook in hooks:
            hook.remove()
    n, kept = (37, 40) if denoise_end else (6, 13)
    assert heads == [(3, n, 64)] * 3 and bodies == [(3, kept)] * 3
    assert out.canvas.shape == (3, 40)


def test_cutting_the_hidden_tail_keeps_the_logits(model64):
    """The model on the canvas up to the last pinned BOS gives the logits it gives there on the
    whole canvas with the tail hidden: what generate relies on for denoise_end=False."""
    out = generate(model64, _prompts(), 6, canvas_length=40, steps=1, sampler="greedy", seed=3, denoise_end=False)
    layout, kept = out.layout, 13
    with torch.no_grad():
        whole = model64(layout.tokens, attention_mask=layout.attention_mask)
        cut = model64(layout.tokens[:, :kept], attention_mask=layout.attention_mask[:, :kept])
    torch.testing.assert_close(cut, whole[:, :kept], atol=1e-12, rtol=1e-12)


def test_masks_and_rope_tables_are_built_once_per_call(model, mask_and_rope_builds):
    counts = mask_and_rope_builds
    generate(model, _prompts(), 4, canvas_length=24, steps=5, seed=0, denoise_end=False)  # rows need the mask
    assert counts == {"mask": 1, "rope": 1}


class Fixed(nn.Module):
    """The same logits ``w`` at every position, whatever the input."""

    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.config, self.w = CONFIG, w

    def forward(self, input_ids, attention_mask=None):
        return self.w.expand(*input_ids.shape, V).clone()


def test_the_ancestral_first_step_has_the_exact_posterior():
    """One ancestral step on the gathered sub-canvas: token counts over every movable position
    against the dense float64 posterior ``p(j | z_t) = q_s(j | x) q_{t|s}(z_t | j) / q_t(z_t | x)``
    (uniform kernel: ``q_a(j | x) = a x_j + (1 - a) / V``), per position from its initial token."""
    w = torch.linspace(-3.0, 3.0, V)
    x = torch.softmax(w.double(), -1)
    B, L, M = 16, 512, 8
    out = generate(Fixed(w), [[BOS]] * B, M, canvas_length=L, steps=1, seed=11)
    lam_t, lam_s = step_grid("linear", 1).tolist()
    a_t, a_s = torch.sigmoid(torch.tensor(lam_t, dtype=F64)), torch.sigmoid(torch.tensor(lam_s, dtype=F64))
    a_ts = a_t / a_s
    movable = ~out.layout.frozen
    z_t = out.layout.tokens[movable]                                  # [n]
    eye = torch.nn.functional.one_hot(z_t, V).double()
    q_s = a_s * x + (1 - a_s) / V                                     # [V]
    q_ts = a_ts * eye + (1 - a_ts) / V                                # [n, V]: q_{t|s}(z_t | j)
    q_t = a_t * x[z_t] + (1 - a_t) / V                                # [n]
    posterior = q_s * q_ts / q_t[:, None]
    torch.testing.assert_close(posterior.sum(-1), torch.ones(z_t.numel(), dtype=F64))
    expected = posterior.sum(0)
    observed = torch.bincount(out.canvas[movable], minlength=V).double()
    chi2 = float(((observed - expected) ** 2 / expected).sum())
    assert chi2 < 63 + 5 * (2 * 63) ** 0.5, chi2                      # 63 degrees of freedom: mean 63, sd 11.2


# -- any step rule ----------------------------------------------------------------------------
class Shift(StepRule):
    """A user's rule: every position moves to the next id; it records what it was given."""

    def __init__(self) -> None:
        self.seen = []

    def _step(self, logits, z_t, lam_t, lam_s, frozen, temperature, generator):
        self.seen.append((tuple(logits.shape), frozen.clone()))
        return StepOutput(tokens=(z_t + 1) % V, selected=torch.ones_like(frozen))


def test_a_user_step_rule_steps_the_movable_sub_canvas():
    prompts, M, L = _prompts(), 4, 20
    rule = Shift()
    out = generate(Forcing(torch.zeros(3, L, dtype=torch.long)), prompts, M, canvas_length=L, steps=3, sampler=rule,
                   seed=0, trace=True)
    n = L - 1 - 2  # the longest row: prompt [BOS], budget and tail movable
    assert [shape for shape, _ in rule.seen] == [(3, n, V)] * 3
    pad = rule.seen[0][1]
    assert pad.tolist() == [[False] * (n - 4) + [True] * 4, [False] * n, [False] * (n - 2) + [True] * 2]
    first = out.trace.tokens[0]
    frozen = out.layout.frozen
    assert torch.equal(out.canvas[~frozen], (first[~frozen] + 3) % V)
    assert torch.equal(out.canvas[frozen], first[frozen])
    assert torch.equal(out.trace.selected[-1], ~frozen)


def test_tau_leaping_and_rule_objects_work(model):
    out = generate(model, _prompts(), 5, canvas_length=24, steps=3, sampler=TauLeaping(Uniform(V), top_k=10), seed=1)
    for b, prompt in enumerate(_prompts()):
        P = len(prompt)
        assert out.canvas[b, :P].tolist() == prompt and out.canvas[b, P + 5:P + 7].tolist() == [EOS, BOS]
    greedy = generate(model, _prompts(), 5, canvas_length=24, steps=3, sampler=Greedy(Uniform(V)), seed=1)
    assert torch.equal(greedy.canvas, generate(model, _prompts(), 5, canvas_length=24, steps=3, sampler="greedy",
                                               seed=1).canvas)


# -- stop when stable -------------------------------------------------------------------------
def test_stop_when_stable_stops_at_the_fixed_point_of_a_stub():
    """Step 1 writes the forced tokens, step 2 changes nothing: 2 model calls instead of 10, the
    same canvas."""
    targets = torch.randint(V, (3, 20), generator=torch.Generator().manual_seed(1))  # not the noise's stream
    stub = Forcing(targets)
    out = generate(stub, _prompts(), 4, canvas_length=20, steps=10, sampler="greedy", seed=0, trace=True,
                   stop_when_stable=True)
    assert out.steps_run == 2 and len(stub.calls) == 2 and out.trace.num_steps == 2
    full = generate(Forcing(targets), _prompts(), 4, canvas_length=20, steps=10, sampler="greedy", seed=0)
    assert full.steps_run == 10 and torch.equal(out.canvas, full.canvas) and out.tokens == full.tokens


@pytest.mark.parametrize("tokens_per_step", [1, 3])
@pytest.mark.parametrize("sampler", ["greedy", "adaptive"])
def test_stop_when_stable_gives_the_full_runs_answer(tiny_run, sampler, tokens_per_step):
    """On the trained tiny model (float64; a random model's argmax map tends to cycle): the steps
    run are those up to the first step of the whole-canvas loop that changed nothing (read from
    its trace), and the canvas is that loop's final one."""
    model = hf.from_pretrained(tiny_run / "model", dtype=F64)
    bos = model.config.bos_token_id
    steps = 24
    out = generate(model, [[bos, 5, 6, 7, 8], [bos], [bos, 9, 10]], 4, canvas_length=16, steps=steps, sampler=sampler,
                   tokens_per_step=tokens_per_step, temperature=0.0, seed=4, denoise_end=False, stop_when_stable=True)
    whole = _whole_canvas_run(model, out, sampler, steps, tokens_per_step=tokens_per_step, trace=True)
    changes = (whole.trace.tokens[1:] != whole.trace.tokens[:-1]).flatten(1).any(1).tolist()
    assert False in changes  # the run settles, so stopping saves steps
    assert out.steps_run == changes.index(False) + 1 < steps
    assert torch.equal(out.canvas, whole.tokens)


# -- validation -------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt_ids=[]), "empty"),
    (dict(prompt_ids=[[BOS], []]), "prompt 1 is empty"),
    (dict(prompt_ids=[[BOS, 1.5]]), "ints"),
    (dict(prompt_ids="hello"), "tokenize"),
    (dict(prompt_ids=[[BOS, V]]), "outside"),
    (dict(prompt_ids=[[-1, 2]]), "outside"),
    (dict(prompt_ids=[BOS] * 11, max_new_tokens=4, canvas_length=16), "canvas_length"),
    (dict(canvas_length=513), "max_position_embeddings"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(steps=0), "steps"),
    (dict(sampler="beam"), "unknown sampler"),
    (dict(schedule="sqrt"), "unknown schedule"),
    (dict(sampler="adaptive", tokens_per_step=0), "tokens_per_step"),
    (dict(seed=-1), "seed"),
    (dict(top_p=1.5), "top_p"),
    (dict(sampler=object()),
     "sampler must be one of ancestral, adaptive, greedy, confidence or a discdiff.samplers.StepRule"),
    (dict(sampler=Greedy(Uniform(V + 1))), "65 states but the model's vocabulary has 64"),
    (dict(sampler=TauLeaping(Uniform(V)), top_p=0.9), r"top_p=0\.9 configure the named samplers only"),
    (dict(sampler=TauLeaping(Uniform(V)), tokens_per_step=2), "tokens_per_step=2 configure"),
    (dict(stop_when_stable=True), "stop_when_stable=True needs a deterministic step rule"),
    (dict(sampler="adaptive", stop_when_stable=True), r"temperature=1\.0"),
    (dict(sampler="greedy", stop_when_stable="yes"), "stop_when_stable must be True or False"),
])
def test_validation_errors(kwargs, match):
    stub = Forcing(torch.zeros(1, 512, dtype=torch.long))
    args = dict(prompt_ids=[BOS, 1], max_new_tokens=4, canvas_length=16)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        generate(stub, args.pop("prompt_ids"), args.pop("max_new_tokens"), **args)
    assert stub.calls == []  # nothing ran


# -- defaults from the model, non-finite logits ----------------------------------------------------
@pytest.mark.parametrize("positions, expected", [(512, 512), (4096, 2048)])
def test_default_canvas_is_the_models_up_to_2048(positions, expected):
    config = tiny(vocab_size=V, max_position_embeddings=positions)
    stub = Forcing(torch.zeros(1, positions, dtype=torch.long), config=config)
    out = generate(stub, [BOS, 4], 3, steps=1, sampler="greedy", seed=0)
    assert out.canvas.shape == (1, expected)
    assert generate(stub, [BOS, 4], 3, canvas_length=64, steps=1, sampler="greedy", seed=0).canvas.shape == (1, 64)
    with pytest.raises(ValueError, match=rf"canvas_length {positions + 1} exceeds .*\({positions}\)"):
        generate(stub, [BOS, 4], 3, canvas_length=positions + 1, steps=1, seed=0)  # never clamped


class Broken(nn.Module):
    """Logits of ``value`` at ``(0, position, token)``, 0 elsewhere."""

    def __init__(self, value: float, position: int = 3, token: int | None = None) -> None:
        super().__init__()
        self.config, self.value, self.position, self.token = CONFIG, value, position, token
        self.calls = 0

    def forward(self, input_ids, attention_mask=None):
        self.calls += 1
        logits = torch.zeros(*input_ids.shape, V)
        if self.token is None:
            logits[0, self.position] = self.value
        else:
            logits[0, self.position, self.token] = self.value
        return logits


@pytest.mark.parametrize("value, token", [(float("nan"), 5), (float("inf"), 5), (-float("inf"), None)])
def test_non_finite_logits_stop_generation_at_the_first_step(value, token):
    stub = Broken(value, position=3, token=token)
    with pytest.raises(NonFiniteError, match=r"model produced non-finite values \(its weights may be NaN/inf\): "
                                             r".*first at batch 0, position 3"):
        generate(stub, [BOS], 4, canvas_length=16, steps=4, seed=0)
    assert stub.calls == 1


def test_forbidden_tokens_at_minus_inf_are_legitimate():
    stub = Broken(-float("inf"), position=3, token=5)  # one token banned at one position: fine
    out = generate(stub, [BOS], 4, canvas_length=16, steps=2, seed=0)
    assert stub.calls == 2 and out.canvas.shape == (1, 16)


# -- command line -----------------------------------------------------------------------------
TINY_ARGS = ["generate", "--model", "tiny", "--prompt", "hello", "--steps", "4", "--canvas-length", "64",
             "--max-new-tokens", "8"]


def test_cli_generates_with_the_embedded_tiny_model(capsys):
    assert main(TINY_ARGS + ["--seed", "5"]) == 0
    first = capsys.readouterr()
    assert first.out.endswith("\n") and first.out.count("\n") >= 1
    assert "random weights" in first.err and "seed 5" in first.err
    assert main(TINY_ARGS + ["--seed", "5"]) == 0
    assert capsys.readouterr().out == first.out


@pytest.mark.parametrize("extra", [["--max-new-tokens", "70"], ["--steps", "0"], ["--canvas-length", "5000"]])
def test_cli_input_errors_after_loading_exit_2(capsys, extra):
    with pytest.raises(SystemExit) as exc:
        main(TINY_ARGS + extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and err[-1].startswith("sumi generate: error:") and "Traceback" not in "".join(err)


@pytest.mark.parametrize("argv", [
    [],
    ["train"],
    ["generate", "--prompt", "hi"],
    ["generate", "--model", "tiny"],
    ["generate", "--model", "tiny", "--prompt", "hi", "--sampler", "beam"],
    ["generate", "--model", "tiny", "--prompt", "hi", "--steps", "many"],
    ["generate", "--model", "/nonexistent/sumi-dir", "--prompt", "hi"],
    ["generate", "--model", "tiny", "--prompt", "hi", "--tokenizer", "/nonexistent/tokenizer.json"],
])
def test_bad_cli_arguments_exit_2_with_one_line(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    assert exc.value.code == 2 and captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "error" in captured.err


def test_cli_loads_a_checkpoint_directory_and_its_tokenizer(tmp_path, monkeypatch, capsys):
    """The directory path, with stand-ins for ``sumi.hf`` and ``sumi.tokenizer`` (so this test
    needs neither): the model comes from ``from_pretrained(DIR)``, the tokenizer from
    ``DIR/tokenizer.json``, and stdout is the decoded answer."""
    (tmp_path / "tokenizer.json").write_text("{}")
    loaded = {}

    class Tokenizer:
        bos_id, eos_id, pad_id, vocab_size = BOS, EOS, PAD, V

        @classmethod
        def from_file(cls, path):
            loaded["tokenizer"] = str(path)
            return cls()

        def encode(self, text, add_bos=True):
            return [BOS] * add_bos + [ord(c) % 26 for c in text]

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(ord("a") + i) for i in ids if i < 26)

    def from_pretrained(path, dtype=None, device=None):
        loaded["model"] = str(path)
        targets = torch.full((1, 64), 7)  # every answer position says "h"
        return Forcing(targets)

    monkeypatch.setitem(sys.modules, "sumi.hf", types.SimpleNamespace(from_pretrained=from_pretrained))
    monkeypatch.setitem(sys.modules, "sumi.tokenizer", types.SimpleNamespace(SumiTokenizer=Tokenizer))
    rc = main(["generate", "--model", str(tmp_path), "--prompt", "hi", "--sampler", "greedy", "--steps", "2",
               "--canvas-length", "32", "--max-new-tokens", "3", "--device", "cpu"])
    assert rc == 0 and capsys.readouterr().out == "hhh\n"
    assert loaded == {"model": str(tmp_path), "tokenizer": str(tmp_path / "tokenizer.json")}


def test_cli_convert_rewrites_a_checkpoint(tmp_path, model, capsys):
    hf.save_pretrained(model, tmp_path / "src")
    assert main(["convert", str(tmp_path / "src"), str(tmp_path / "dst"), "--dtype", "bfloat16",
                 "--max-shard-size", "100KB"]) == 0
    converted = hf.from_pretrained(tmp_path / "dst")
    assert len(list((tmp_path / "dst").glob("model-*-of-*.safetensors"))) > 1
    for (name, p), q in zip(model.named_parameters(), converted.parameters()):
        assert q.dtype == torch.bfloat16 and torch.equal(q, p.to(torch.bfloat16)), name
    assert "wrote" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["convert", str(tmp_path / "missing"), str(tmp_path / "out")])
    assert exc.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_cli_on_the_trained_tiny_model_takes_the_canvas_from_the_model(tiny_run, capsys):
    """The README's next command after training: the tiny preset has 512 positions, so the
    default canvas is 512 (not 2048); an explicit canvas that does not fit stays an error."""
    model = str(tiny_run / "model")
    assert main(["generate", "--model", model, "--prompt", "def", "--steps", "2", "--max-new-tokens", "8",
                 "--seed", "0"]) == 0
    assert "seed 0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", model, "--prompt", "def", "--canvas-length", "1024"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err.endswith("leave it unset to use min(2048, 512)") and "\n" not in err
