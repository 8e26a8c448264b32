"""Generation with Sumi's canvas semantics: the layout (prompt frozen at the front, EOS then BOS
pinned after the answer budget, a noisy tail denoised or frozen), per-row layouts in a batch,
answers cut at the first EOS (checked exactly with a stub model whose logits force every
position), reproducibility from the seed alone, and the ``sumi generate`` command line."""

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
from sumi import hf
from sumi.configs import tiny
from sumi.generation import GenerationOutput, generate

V = 64
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
