"""``sumi.generate`` for every family, one entry point.

Diffusion families sample the released canvas with their own kernel (``sumi.family.kernel_for``):
the canvas starts from the kernel's prior (uniform: the same ``torch.randint`` draw as released,
recomputed here; masked: the mask id everywhere; hybrid: all mask, or for ``hybrid_scale = 0``
a mask share of ``sigmoid(-shift)``, checked against the binomial), and with a mask state no
mask id survives (the grid ends at ``alpha = 1``).  Oracles: forcing models whose argmax is known
at every position (every exact rule must end on their targets), the confidence order recomputed
in float64 from the logits, the binomial share of the hybrid prior, the naive argmax loop of an
autoregressive model (full forwards without a cache), and ``sumi.decoding.decode`` itself for the
dispatch.  Then the arguments that do not apply to a family, the probes, ``sumi generate`` on
saved checkpoints of each family, and the embedded default's report."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest
import torch
from torch import nn

import sumi
from discdiff.kernels import Hybrid, Masked, Uniform
from discdiff.samplers import Adaptive, Ancestral, Greedy, linear_alpha_grid
from sumi.cli import main
from sumi.configs import tiny
from sumi.decoding import decode
from sumi.evaluate.probes import commitment_probe, revision_probe
from sumi import generation
from sumi.generation import GenerationOutput, generate, step_grid
from sumi.tokenizer import SumiTokenizer
from sumi.train.embedded import write_report
from tests.sumi.test_generate import Forcing

V = 64
F64 = torch.float64
UNIFORM = tiny(vocab_size=V)
MASKED = UNIFORM.for_objective("masked")          # vocab 65, mask id 64
MASKED_CE = UNIFORM.for_objective("masked-ce")
HYBRID = UNIFORM.for_objective("hybrid")          # shift 0, scale 1: the prior is all mask
AR = UNIFORM.for_objective("ar")
BOS, EOS, PAD, MASK = UNIFORM.bos_token_id, UNIFORM.eos_token_id, UNIFORM.pad_token_id, MASKED.mask_token_id
PROMPTS = [[BOS, 5, 6, 7, 8], [BOS], [BOS, 9, 10]]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _targets(rows: int, length: int, seed: int = 1) -> torch.Tensor:
    """Forcing targets: ordinary ids (never BOS/EOS/pad/mask), so answers run to the budget."""
    return torch.randint(0, BOS, (rows, length), generator=_gen(seed))


def _sumi(config, seed: int = 0, dtype=torch.float32) -> sumi.Sumi:
    return sumi.Sumi.initialized(config, dtype=dtype, generator=_gen(seed))


# -- the canvas starts from the kernel's prior --------------------------------------------------------
def test_the_uniform_canvas_is_the_released_draw():
    """Every unfrozen position holds the draw of ``torch.randint(0, V, (batch, L))`` from the
    seeded generator (the released canvas, bit for bit); the grid is the released one."""
    L, M = 40, 6
    out = generate(Forcing(_targets(3, L)), PROMPTS, M, canvas_length=L, steps=1, sampler="greedy", seed=9)
    released = torch.randint(0, V, (3, L), generator=_gen(9))
    movable = ~out.layout.frozen
    assert torch.equal(out.layout.tokens[movable], released[movable])
    for steps in (1, 7):
        for schedule in ("linear", "cosine"):
            assert torch.equal(step_grid(schedule, steps, Uniform(V)), step_grid(schedule, steps))
    assert torch.equal(step_grid("linear", 5), linear_alpha_grid(5))


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_a_mask_familys_grid_ends_at_the_data_end(schedule):
    """The released grid stops at ``alpha = 1 - 1e-4`` (``lambda = 9``), where an exact step
    leaves a position masked with probability ``(1 - alpha_s) / (1 - alpha_t) > 0``; with a mask
    state the last log-SNR is ``+inf`` (``alpha = 1``), every other one unchanged."""
    for steps in (1, 6):
        released = step_grid(schedule, steps)
        for kernel in (Masked(V + 1, MASK), Hybrid(V + 1, MASK, shift=-2.0, scale=0.5)):
            grid = step_grid(schedule, steps, kernel)
            assert torch.equal(grid[:-1], released[:-1]) and grid[-1].item() == math.inf
        assert released[-1].item() == 9.0


@pytest.mark.parametrize("config", [MASKED, MASKED_CE, HYBRID], ids=["masked", "masked-ce", "hybrid"])
@pytest.mark.parametrize("denoise_end", [True, False])
def test_a_mask_family_canvas_starts_all_mask(config, denoise_end):
    L, M = 40, 6
    out = generate(Forcing(_targets(3, L), config=config), PROMPTS, M, canvas_length=L, steps=2, seed=0,
                   trace=True, denoise_end=denoise_end)
    first, layout = out.trace.tokens[0], out.layout
    for b, prompt in enumerate(PROMPTS):
        P = len(prompt)
        assert first[b, :P].tolist() == prompt and first[b, P + M:P + M + 2].tolist() == [EOS, BOS]
        assert (first[b, P:P + M] == MASK).all()
        tail = first[b, P + M + 2:]
        assert (tail == MASK).all() if denoise_end else (tail == PAD).all()
    assert ((first == MASK) == ~layout.frozen).all()


def test_a_fixed_hybrid_mixture_starts_with_its_mask_share():
    """``hybrid_scale = 0``: ``pi = s u + (1 - s) e_m`` at every lambda, ``s = sigmoid(shift)``;
    the mask share of the prior canvas is binomial(n, sigmoid(-shift)), the rest uniform over
    the 64 non-mask ids."""
    shift = 0.7
    config = UNIFORM.for_objective("hybrid").replace(hybrid_shift=shift, hybrid_scale=0.0)
    out = generate(Forcing(_targets(8, 512), config=config), [[BOS]] * 8, 8, canvas_length=512, steps=1,
                   sampler="greedy", seed=2, trace=True)
    noise = out.trace.tokens[0][~out.layout.frozen]
    n, p = noise.numel(), 1 / (1 + math.exp(shift))
    masks = int((noise == MASK).sum())
    assert abs(masks - n * p) < 5 * math.sqrt(n * p * (1 - p))
    counts = torch.bincount(noise[noise != MASK], minlength=V)
    assert counts.shape == (V,) and (counts > 0).all()


# -- no mask survives ---------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [MASKED, HYBRID], ids=["masked", "hybrid"])
@pytest.mark.parametrize("sampler", ["ancestral", "confidence", "greedy"])
@pytest.mark.parametrize("steps", [1, 3, 16])
def test_exact_rules_end_on_a_forcing_models_targets(config, sampler, steps):
    """A model whose distribution is a point mass on ``targets``: whatever the steps, every
    unfrozen position ends on its target (no mask left, nothing else drawn), tail included."""
    L, M = 32, 6
    targets = _targets(3, L)
    out = generate(Forcing(targets, config=config), PROMPTS, M, canvas_length=L, steps=steps, sampler=sampler,
                   seed=4)
    movable = ~out.layout.frozen
    assert torch.equal(out.canvas[movable], targets[movable])
    assert out.tokens == [targets[b, len(p):len(p) + M].tolist() for b, p in enumerate(PROMPTS)]
    assert out.steps_run == steps


@pytest.mark.parametrize("config", [MASKED, MASKED_CE, HYBRID], ids=["masked", "masked-ce", "hybrid"])
@pytest.mark.parametrize("sampler", ["ancestral", "confidence"])
def test_a_random_model_leaves_no_mask_after_a_few_steps(config, sampler):
    """A random-weights model (its distribution is spread over every id): the last step ends at
    ``alpha = 1``, where the posterior has no mass on the mask, so no mask id is left anywhere."""
    model = _sumi(config)
    out = generate(model, PROMPTS, 8, canvas_length=48, steps=3, sampler=sampler, seed=5, trace=True)
    assert not (out.canvas == MASK).any()
    assert (out.trace.tokens[1] == MASK).any()  # the earlier steps left masks: the last one cleared them
    assert all(MASK not in answer for answer in out.tokens)
    assert step_grid("linear", 3, Masked(V + 1, MASK))[-1].item() == math.inf


@pytest.mark.parametrize("sampler", ["adaptive", "confidence"])
def test_a_fixed_tokens_per_step_unmasks_that_many_positions_per_step(sampler):
    """From an all-mask canvas adaptive (and confidence with ``tokens_per_step``) unmasks exactly
    ``tokens_per_step`` positions per step; with enough steps nothing is left, with too few it is
    an error before any model call."""
    L, M = 24, 5
    targets = _targets(3, L)
    need = L - 1 - 2  # the longest row (prompt [BOS]): answer + tail
    out = generate(Forcing(targets, config=MASKED), PROMPTS, M, canvas_length=L, steps=math.ceil(need / 3),
                   sampler=sampler, tokens_per_step=3, temperature=0.0, seed=0, trace=True)
    movable = ~out.layout.frozen
    assert torch.equal(out.canvas[movable], targets[movable])
    still_masked = (out.trace.tokens == MASK).sum(-1)  # [steps + 1, batch]
    assert still_masked[:, 1].tolist() == [max(need - 3 * i, 0) for i in range(still_masked.shape[0])]
    stub = Forcing(targets, config=MASKED)
    with pytest.raises(ValueError, match=rf"sampler '{sampler}' unmasks tokens_per_step=2 positions per step: steps x "
                                         rf"tokens_per_step = 6 < the {need} masked positions"):
        generate(stub, PROMPTS, M, canvas_length=L, steps=3, sampler=sampler, tokens_per_step=2, seed=0)
    assert stub.calls == []
    frozen_tail = generate(Forcing(targets, config=MASKED), PROMPTS, M, canvas_length=L, steps=M,
                           sampler=sampler, tokens_per_step=1, seed=0, denoise_end=False)
    assert frozen_tail.tokens == [targets[b, len(p):len(p) + M].tolist() for b, p in enumerate(PROMPTS)]


# -- confidence --------------------------------------------------------------------------------------
class Peaked(nn.Module):
    """Position ``j``'s logits: ``height[j]`` at token ``j % 50``, 0 elsewhere (and at the mask)."""

    def __init__(self, height: torch.Tensor, config=MASKED) -> None:
        super().__init__()
        self.config, self.height = config, height

    def forward(self, input_ids, attention_mask=None):
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, self.config.vocab_size, dtype=F64)
        best = (torch.arange(length) % 50).expand(batch, -1)
        return logits.scatter_(-1, best.unsqueeze(-1), self.height[:length].expand(batch, -1).unsqueeze(-1))


def test_confidence_unmasks_the_most_confident_positions_first():
    """One position per step, in descending order of ``max_j x_hat_j`` (float64, recomputed here
    from the logits with the mask excluded), each taking its argmax at temperature 0."""
    L, M = 16, 13  # prompt [BOS], 13 answer positions, EOS/BOS pinned: no tail
    height = torch.randperm(L, generator=_gen(3)).to(F64) / 2
    out = generate(Peaked(height), [[BOS]], M, canvas_length=L, steps=M, sampler="confidence", tokens_per_step=1,
                   temperature=0.0, seed=0, trace=True)
    unmasked_at = (out.trace.tokens[:, 0] != MASK).long().argmax(0)  # first step each position is clean
    answer = torch.arange(1, 1 + M)
    logits = torch.zeros(M, V + 1, dtype=F64).scatter_(-1, (answer % 50).unsqueeze(-1), height[answer].unsqueeze(-1))
    confidence = torch.softmax(logits[:, :V], -1).max(-1).values  # x_hat never takes the mask
    order = confidence.argsort(descending=True)
    assert unmasked_at[answer[order]].tolist() == list(range(1, M + 1))
    assert out.tokens == [(answer % 50).tolist()]


def test_confidence_needs_an_all_mask_prior():
    args = dict(canvas_length=16, steps=2, sampler="confidence", seed=0)
    for config in (UNIFORM, UNIFORM.for_objective("hybrid").replace(hybrid_shift=1.0, hybrid_scale=0.0)):
        stub = Forcing(_targets(1, 16), config=config)
        with pytest.raises(ValueError, match="sampler 'confidence' only unmasks, so it needs a kernel whose prior is "
                                             "all mask"):
            generate(stub, [BOS, 4], 4, **args)
        assert stub.calls == []


# -- step rules must be built on the model's kernel -------------------------------------------------
@pytest.mark.parametrize("rule, match", [
    (Ancestral(Uniform(V + 1)), r"has mask id None but the model's kernel Masked\(vocab_size=65, mask_id=64\) has 64"),
    (Greedy(), "has mask id None but"),
    (Ancestral(Masked(V, 3)), "has 64 states but the model's vocabulary has 65"),
    (Adaptive(Masked(V + 1, 3)), "has mask id 3 but"),
])
def test_a_step_rule_must_fit_the_models_kernel(rule, match):
    stub = Forcing(_targets(1, 16), config=MASKED)
    with pytest.raises(ValueError, match=match):
        generate(stub, [BOS, 4], 4, canvas_length=16, steps=2, sampler=rule, seed=0)
    assert stub.calls == []
    ok = generate(Forcing(_targets(1, 16), config=MASKED), [BOS, 4], 4, canvas_length=16, steps=2,
                  sampler=Ancestral(Masked(V + 1, MASK)), seed=0)
    assert MASK not in ok.tokens[0]


# -- ar: left-to-right decoding ------------------------------------------------------------------
@pytest.fixture(scope="module")
def ar_model() -> sumi.Sumi:
    """A float64 causal model with a sharpened head (its next-token distributions far from uniform)."""
    model = _sumi(AR, seed=3, dtype=F64)
    with torch.no_grad():
        model.lm_head.weight.mul_(10.0)
    return model


def _argmax_loop(model, prompt: list[int], steps: int) -> list[int]:
    """The naive oracle: argmax of a full forward (no cache) over the sequence so far, ``steps``
    times, up to the first EOS (excluded)."""
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            token = int(model(torch.tensor([seq]))[0, -1].argmax())
            if token == EOS:
                break
            seq.append(token)
    return seq[len(prompt):]


def test_ar_greedy_is_the_argmax_of_full_forwards(ar_model):
    prompts, M = [[BOS, 5, 17, 33], [BOS], [BOS, 8, 2]], 10
    out = generate(ar_model, prompts, M, sampler="greedy", temperature=0.7, seed=0)
    assert out.tokens == [_argmax_loop(ar_model, p, M) for p in prompts]
    top1 = generate(ar_model, prompts, M, top_k=1, seed=5)  # sampling from the top-1 filter: the argmax
    assert top1.tokens == out.tokens


@pytest.mark.parametrize("kwargs", [dict(), dict(temperature=0.8, top_p=0.9), dict(top_k=5, min_p=0.05)])
def test_ar_dispatches_to_decode(ar_model, kwargs):
    """The same draws as :func:`sumi.decoding.decode` with a generator seeded by ``seed``, and the
    output fields of the ar layout."""
    prompts, M = [[BOS, 5, 17, 33], [BOS]], 12
    out = generate(ar_model, prompts, M, seed=11, **kwargs)
    want = decode(ar_model, prompts, M, generator=_gen(11), **kwargs)
    assert isinstance(out, GenerationOutput) and out.seed == 11
    assert out.tokens == want.tokens and torch.equal(out.canvas, want.sequences)
    assert out.canvas.shape == (2, 4 + M) and out.trace is None and out.layout is None
    assert out.steps_run == max(min(len(t) + 1, M) for t in out.tokens)
    for b, prompt in enumerate(prompts):
        assert out.canvas[b, :len(prompt)].tolist() == prompt
    again = generate(ar_model, prompts, M, seed=out.seed, **kwargs)
    assert again.tokens == out.tokens


@pytest.mark.parametrize("sampler", ["ancestral", "greedy"])
def test_ar_forwards_what_applies_to_decode(monkeypatch, ar_model, sampler):
    """What reaches ``decode`` (greedy: temperature 0, no filters), and ``steps_run``: the positions
    decoded until the last row ended (an answer shorter than the budget ended at an EOS, which
    was decoded too)."""
    seen = {}

    def fake_decode(model, prompts, max_new_tokens, *, generator, **kwargs):
        seen.update(kwargs, prompts=prompts, draw=torch.rand(1, generator=generator).item())
        return types.SimpleNamespace(tokens=[[7, 8], [9]], sequences=torch.zeros(2, 9, dtype=torch.long))

    monkeypatch.setattr(generation, "decode", fake_decode)
    out = generate(ar_model, [[BOS, 5, 6], [BOS]], 6, sampler=sampler, temperature=0.5, top_k=3, top_p=0.9,
                   min_p=0.1, seed=21, progress=True)
    greedy = sampler == "greedy"
    assert seen == dict(prompts=[[BOS, 5, 6], [BOS]], draw=torch.rand(1, generator=_gen(21)).item(),
                        temperature=0.0 if greedy else 0.5, top_k=None if greedy else 3,
                        top_p=None if greedy else 0.9, min_p=None if greedy else 0.1, progress=True)
    assert out.tokens == [[7, 8], [9]] and out.steps_run == 3
    monkeypatch.setattr(generation, "decode", lambda *a, **k: types.SimpleNamespace(
        tokens=[list(range(6)), [1]], sequences=torch.zeros(2, 9, dtype=torch.long)))
    assert generate(ar_model, [[BOS, 5, 6], [BOS]], 6, seed=0).steps_run == 6  # a row ran to the budget


def test_ar_ignores_the_canvas_arguments_but_checks_canvas_length(ar_model):
    prompts, M = [[BOS, 5]], 6
    plain = generate(ar_model, prompts, M, seed=1)
    ignored = generate(ar_model, prompts, M, seed=1, steps=3, schedule="cosine", denoise_end=False, canvas_length=64,
                       tokens_per_step=1)
    assert ignored.tokens == plain.tokens and torch.equal(ignored.canvas, plain.canvas)


class _Counting:
    """Counts the forwards of a module (a forward pre-hook)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        self.handle = model.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(sampler="adaptive"), "sampler 'adaptive' does not apply to an 'ar' model"),
    (dict(sampler="confidence"), "sampler 'confidence' does not apply to an 'ar' model"),
    (dict(sampler=Ancestral(Uniform(V))), "a StepRule object .* does not apply to an 'ar' model"),
    (dict(tokens_per_step=2), "tokens_per_step=2 does not apply to an 'ar' model"),
    (dict(stop_when_stable=True), "stop_when_stable=True does not apply"),
    (dict(trace=True), "trace=True does not apply"),
    (dict(canvas_length=513), r"canvas_length 513 exceeds the model's max_position_embeddings \(512\)"),
    (dict(max_new_tokens=510), r"prompt 0 \(3 tokens\) \+ max_new_tokens \(510\) needs 513 positions, more than the "
                               r"model's max_position_embeddings \(512\)"),
    (dict(top_p=0.0), "top_p"),
    (dict(temperature=-1.0), "temperature"),
    (dict(prompt_ids=[[BOS, V]]), "outside"),
    (dict(seed=-1), "seed"),
])
def test_arguments_that_do_not_apply_to_ar_are_errors_before_any_model_call(ar_model, kwargs, match):
    args = dict(prompt_ids=[[BOS, 5, 6]], max_new_tokens=4)
    args.update(kwargs)
    counter = _Counting(ar_model)
    try:
        with pytest.raises(ValueError, match=match):
            generate(ar_model, args.pop("prompt_ids"), args.pop("max_new_tokens"), seed=args.pop("seed", 0), **args)
    finally:
        counter.handle.remove()
    assert counter.calls == 0


def test_a_bad_temperature_is_refused_before_any_model_call():
    stub = Forcing(_targets(1, 16), config=MASKED)
    with pytest.raises(ValueError, match="temperature"):
        generate(stub, [BOS, 4], 4, canvas_length=16, steps=2, temperature=-0.5, seed=0)
    assert stub.calls == []


# -- probes -------------------------------------------------------------------------------------------
def test_the_revision_probe_uses_the_models_kernel():
    """Under masked noise an unmasked token is never revisited (Adaptive's prior weight is 0 on
    it): a masked model's revision budget rewrites nothing anywhere on the canvas.  The same
    probe on a uniform model rewrites something at every step (its prior weight is 1/V)."""
    report = revision_probe(_sumi(MASKED), [[BOS, 5]], budgets=[0, 4], max_new_tokens=6, canvas_length=24, steps=4,
                            seed=0)
    tokens = report.trace.tokens  # [5, 1, 24]
    assert tokens.shape[0] == 5 and (tokens == tokens[0]).all() and not (tokens == MASK).any()
    assert [s.net_change for s in report.budgets] == [0.0, 0.0] and report.step_overwrite_rate == [0.0] * 4
    uniform = revision_probe(_sumi(UNIFORM), [[BOS, 5]], budgets=[4], max_new_tokens=6, canvas_length=24, steps=4,
                             seed=0).trace.tokens
    assert (uniform[1:] != uniform[:-1]).flatten(1).any(1).all()


def test_the_probes_refuse_an_ar_model(ar_model):
    with pytest.raises(ValueError, match="the revision probe needs a diffusion model .* family is 'ar'"):
        revision_probe(ar_model, [[BOS, 5]], budgets=[1], max_new_tokens=4, canvas_length=16, steps=2)
    with pytest.raises(ValueError, match="the commitment probe needs a diffusion model"):
        commitment_probe(ar_model, [[BOS, 5]], max_new_tokens=4, canvas_length=16, steps=2)
    report = commitment_probe(_sumi(MASKED), [[BOS, 5]], max_new_tokens=4, canvas_length=16, steps=3,
                              sampler="confidence")
    assert report.ink[0, -1].all() and MASK not in report.answers[0]


# -- the command line, on saved checkpoints of each family ---------------------------------------------
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A tiny random model of each family saved with the default tokenizer (a mask family's
    model has one more id than the tokenizer: its mask)."""
    tok = SumiTokenizer.default()
    base = tiny(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    root = tmp_path_factory.mktemp("families")
    paths = {}
    for family in ("uniform", "masked", "hybrid", "ar"):
        sumi.save_pretrained(_sumi(base.for_objective(family)), root / family)
        tok.save(root / family)
        paths[family] = root / family
    return paths


def _generate(path, *extra: str) -> list[str]:
    return ["generate", "--model", str(path), "--prompt", "def", "--max-new-tokens", "8", "--seed", "0", *extra]


@pytest.mark.parametrize("family, extra", [
    ("uniform", ["--steps", "2", "--canvas-length", "32"]),
    ("masked", ["--steps", "2", "--canvas-length", "32"]),
    ("masked", ["--steps", "3", "--canvas-length", "32", "--sampler", "confidence"]),
    ("hybrid", ["--steps", "2", "--canvas-length", "32", "--sampler", "greedy"]),
    ("ar", []),
    ("ar", ["--sampler", "greedy", "--top-k", "5"]),
])
def test_cli_generates_with_every_family(checkpoints, capsys, family, extra):
    assert main(_generate(checkpoints[family], *extra)) == 0
    captured = capsys.readouterr()
    assert captured.out.endswith("\n") and "seed 0" in captured.err


@pytest.mark.parametrize("extra, flags", [
    (["--steps", "4"], "--steps does not apply"),
    (["--no-denoise-end", "--schedule", "cosine"], "--schedule, --no-denoise-end do not apply"),
    (["--canvas-length", "64"], "--canvas-length does not apply"),
    (["--tokens-per-step", "1"], "--tokens-per-step does not apply"),
    (["--sampler", "adaptive"], "sampler 'adaptive' does not apply to an 'ar' model"),
])
def test_cli_canvas_flags_on_an_ar_model_are_one_line_errors(checkpoints, capsys, extra, flags):
    with pytest.raises(SystemExit) as exc:
        main(_generate(checkpoints["ar"], *extra))
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert exc.value.code == 2 and captured.out == "" and len(lines) == 1
    assert lines[0].startswith("sumi generate: error: ") and flags in lines[0]


@pytest.mark.parametrize("probe", ["revision", "commitment"])
def test_cli_probes_a_masked_model_with_confidence(checkpoints, capsys, tmp_path, probe):
    """``--sampler confidence`` without ``--tokens-per-step``: the share schedule, so the answers
    hold no mask id and decode with the tokenizer (which has no such id)."""
    budgets = ["--budgets", "0,2"] if probe == "revision" else []
    assert main(["probe", probe, "--model", str(checkpoints["masked"]), "--prompt", "def", "--out", str(tmp_path),
                 "--sampler", "confidence", "--steps", "3", "--max-new-tokens", "4", "--canvas-length", "16",
                 "--no-progress", *budgets]) == 0
    assert f"{probe}.json" in capsys.readouterr().out


def test_cli_probe_refuses_an_ar_model(checkpoints, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["probe", "revision", "--model", str(checkpoints["ar"]), "--prompt", "def", "--out", str(tmp_path),
              "--budgets", "1", "--steps", "1", "--max-new-tokens", "2", "--canvas-length", "16", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "\n" not in err and "needs a diffusion model" in err


# -- the embedded default's report ------------------------------------------------------------------
@pytest.mark.parametrize("family", ["masked", "ar"])
def test_the_report_samples_every_family(checkpoints, tmp_path, family):
    out_dir = tmp_path / "run"
    (out_dir / "model").parent.mkdir(parents=True)
    (out_dir / "model").symlink_to(checkpoints[family], target_is_directory=True)
    (out_dir / "metrics.jsonl").write_text("".join(f'{{"step": {i}, "loss": {5.0 - i / 10}}}\n' for i in range(5)))
    write_report(out_dir, SumiTokenizer.default(), seed=0)
    samples = (out_dir / "samples.txt").read_text()
    assert samples.count("--- prompt") == 4 and (out_dir / "loss.png").stat().st_size > 0
