"""sumi.evaluate: canvas rows, the batched NELBO scorer against discdiff.likelihood, bits per byte,
`sumi eval nelbo`, and the lm-eval model `sumi` (in process, and through lm-eval's own command
line on local tasks, offline)."""

from __future__ import annotations

import copy
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sumi
from discdiff import NonFiniteError
from discdiff.kernels import Uniform
from discdiff.likelihood import nelbo
from sumi.cli import main
from sumi.configs import tiny
from sumi.evaluate import Row, Scorer, continuation_row, document_rows, nelbo_texts
from sumi.evaluate.harness import ModelArgumentError, SumiLM, cut_at_stop, encode_pair
from sumi.evaluate.likelihood import pad_rows
from sumi.tokenizer import SumiTokenizer

REPO = Path(__file__).resolve().parents[2]
BOS, EOS = 100, 101
# Python code the main job did not train on (it trains on the standard library's source)
HELD_OUT = ('import os\nimport sys\n\n\ndef main(argv):\n    """Print the arguments."""\n    for arg in argv:\n'
            '        print(arg)\n    return 0\n\n\nif __name__ == "__main__":\n    sys.exit(main(sys.argv))\n',
            "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n")


@pytest.fixture(scope="module")
def tok() -> SumiTokenizer:
    return SumiTokenizer.default()


@pytest.fixture(scope="module")
def model(tok) -> sumi.Sumi:
    config = tiny(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                  pad_token_id=tok.pad_id, attention_backend="eager")
    return sumi.Sumi.initialized(config, generator=torch.Generator().manual_seed(0))


class _Request:  # what lm-eval hands a model: an object with .args
    def __init__(self, *args):
        self.args = args


# -- canvas rows ------------------------------------------------------------------------------------
def test_document_rows_are_windows_of_bos_text_eos():
    rows = document_rows([1, 2, 3, 4, 5], 3, BOS, EOS)
    assert [r.tokens for r in rows] == [[BOS, 1, 2], [3, 4, 5], [EOS]]
    assert [r.scored for r in rows] == [[False, True, True], [True, True, True], [False]]
    (one,) = document_rows([7], 8, BOS, EOS)
    assert one == Row([BOS, 7, EOS], [False, True, False])
    with pytest.raises(ValueError, match="canvas_length"):
        document_rows([1], 0, BOS, EOS)


def test_continuation_row_scores_only_the_continuation_and_cuts_the_context_from_the_left():
    assert continuation_row([1, 2], [3, 4], 16, BOS, EOS) == Row([BOS, 1, 2, 3, 4, EOS], [False] * 3 + [True] * 2 + [False])
    assert continuation_row([1, 2, 5], [3, 4], 5, BOS, EOS) == Row([2, 5, 3, 4, EOS], [False, False, True, True, False])
    assert continuation_row([1], [3, 4], 3, BOS, EOS) == Row([3, 4, EOS], [True, True, False])
    with pytest.raises(ValueError, match="does not fit"):
        continuation_row([1], [3, 4, 5], 3, BOS, EOS)
    with pytest.raises(ValueError, match="empty"):
        continuation_row([1], [], 8, BOS, EOS)
    with pytest.raises(ValueError, match="as many"):
        Row([1, 2], [True])


# -- the scorer -----------------------------------------------------------------------------------------
def test_scorer_equals_discdiff_nelbo_on_one_row(model):
    """The scorer (fused loss, all 16 points in one pass) against discdiff's nelbo on the model's
    logits one point per call, with the same seed: float32 rounding apart, the same number."""
    row = continuation_row([5, 6, 7], [8, 9, 10, 11], 32, model.config.bos_token_id, model.config.eos_token_id)
    (got,) = Scorer(model, points=16, seed=3).nelbo([row])
    x = torch.tensor([row.tokens])
    with torch.no_grad():
        want = nelbo(model, Uniform(model.config.vocab_size), x, points=16, frozen=~torch.tensor([row.scored]),
                     generator=torch.Generator().manual_seed(3)).per_sequence.item()
    assert got == pytest.approx(want, rel=1e-6)
    assert Scorer(model, points=16, seed=3).nelbo([row]) == [got]  # the seed fixes the estimate
    assert Scorer(model, points=16, seed=4).nelbo([row]) != [got]


def test_padding_in_a_batch_does_not_change_a_rows_score(model):
    """A short row batched with a long one is padded with pad ids that are frozen (not counted)
    and hidden from attention: the batch is scored as the hand-built padded batch, and the
    model's outputs on the short row's positions are those of the row alone.  (Comparing the
    two estimates directly would need very wide Monte-Carlo tolerances: near lambda = 9 the
    ELBO weights make single-draw estimates heavy-tailed.)"""
    c = model.config
    short = continuation_row([5, 6], [8, 9, 10, 11, 12, 13], 64, c.bos_token_id, c.eos_token_id)
    long = document_rows(list(range(20, 60)), 64, c.bos_token_id, c.eos_token_id)[0]
    got = Scorer(model, points=8, seed=2, batch_size=2).nelbo([short, long])
    n = len(short.tokens)
    x = torch.tensor([long.tokens, short.tokens + [c.pad_token_id] * (len(long.tokens) - n)])  # longest first
    counted = torch.tensor([long.scored, short.scored + [False] * (len(long.tokens) - n)])
    mask = torch.ones_like(x)
    mask[1, n:] = 0
    with torch.no_grad():
        want = nelbo(lambda z: model(z, attention_mask=mask), Uniform(c.vocab_size), x, points=8, frozen=~counted,
                     generator=torch.Generator().manual_seed(2)).per_sequence
        assert got == pytest.approx([want[1].item(), want[0].item()], rel=1e-6)  # fused loss: float32 rounding
        torch.testing.assert_close(model(x, attention_mask=mask)[1, :n], model(torch.tensor([short.tokens]))[0],
                                   rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def model64(model) -> sumi.Sumi:
    """The same weights in float64: the fused, stacked scorer and the logits path then agree to 1e-12."""
    return copy.deepcopy(model).double()


def _rows(config) -> list[Row]:
    """Rows of different lengths (padding inside a batch) and a frozen context."""
    b, e = config.bos_token_id, config.eos_token_id
    return [continuation_row([5, 6, 7], [8, 9, 10, 11], 64, b, e), document_rows(list(range(20, 60)), 64, b, e)[0],
            continuation_row([1], list(range(30, 45)), 64, b, e), continuation_row([], [3], 64, b, e),
            document_rows(list(range(100, 130)), 64, b, e)[0]]


def test_fused_stacked_scorer_is_the_previous_estimator(model64):
    """Before: one forward pass per time point and batch, the loss from the [tokens, V] logits.
    Now: the loss fused with the head and several points per pass.  The noise draws are the same
    (drawn point by point, batch by batch, from the one seeded generator), so the estimate is the
    same: recomputed here the old way, batch by batch with discdiff's nelbo on the logits, one
    point per call, in float64, it agrees to 1e-12 for every pass size."""
    c = model64.config
    rows = _rows(c)
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i].tokens))
    generator = torch.Generator().manual_seed(5)
    want = [0.0] * len(rows)
    with torch.no_grad():
        for start in range(0, len(rows), 2):
            chunk = order[start:start + 2]
            x, scored, present = pad_rows([rows[i] for i in chunk], c.pad_token_id, "cpu")
            out = nelbo(lambda z: model64(z, attention_mask=present.long()), Uniform(c.vocab_size), x, points=12,
                        effective_snr=True, frozen=~scored, generator=generator)
            for i, value in zip(chunk, out.per_sequence.tolist()):
                want[i] = value
    for tokens_per_pass in (1, 200, 10**6):  # one point per pass, a few, all 12
        got = Scorer(model64, points=12, effective_snr=True, batch_size=2, seed=5,
                     tokens_per_pass=tokens_per_pass).nelbo(rows)
        assert got == pytest.approx(want, rel=1e-12, abs=1e-12)


def test_scorer_never_builds_the_logits(model, monkeypatch):
    """A Sumi is scored from its hidden states and head weight: the head module is never called
    (with V = 100,278 its output would be [tokens, V]), and the numbers match the logits path."""
    rows = _rows(model.config)
    want = Scorer(copy.deepcopy(model), points=4, seed=1).nelbo(rows)

    def no_logits(*args, **kwargs):
        raise AssertionError("the scorer computed the logits")

    monkeypatch.setattr(model.lm_head, "forward", no_logits)
    assert Scorer(model, points=4, seed=1).nelbo(rows) == want


def test_progress_counts_every_row_and_point_once(model, monkeypatch):
    import sumi.evaluate.likelihood as likelihood

    class Bar:
        def __init__(self, total):
            self.total, self.updates = total, []

        def update(self, n):
            self.updates.append(n)

        def close(self):
            pass

    bars = []
    monkeypatch.setattr(likelihood, "_bar", lambda total, enabled: bars.append(Bar(total)) or bars[-1])
    rows = _rows(model.config)  # 9, 42, 18, 3 and 32 tokens
    Scorer(model, points=6, batch_size=2, tokens_per_pass=200).nelbo(rows, progress=True)
    (bar,) = bars
    assert bar.total == 5 * 6 and sum(bar.updates) == 30
    # longest first, 2 rows a batch: (42, 32) padded to 2 x 42 = 84 positions a point -> 2 points a
    # pass; (18, 9): 36 -> 5 points a pass (then the last 1); (3): all 6 points in one pass
    assert bar.updates == [2 * 2, 2 * 2, 2 * 2, 2 * 5, 2 * 1, 1 * 6]


def test_scorer_rejects_bad_rows_and_arguments(model):
    with pytest.raises(ValueError, match="outside"):
        Scorer(model, points=2).nelbo([Row([0, model.config.vocab_size], [True, True])])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        n = model.config.max_position_embeddings + 1
        Scorer(model, points=2).nelbo([Row([0] * n, [True] * n)])
    for kwargs in ({"points": 0}, {"batch_size": 0}, {"seed": -1}, {"tokens_per_pass": 0}):
        with pytest.raises(ValueError):
            Scorer(model, **kwargs)


def test_nelbo_texts_totals_and_bits_per_byte(model, tok):
    long_text = "abcdefgh " * 30  # several windows of a 32-token canvas
    report = nelbo_texts(model, tok, [long_text, "x"], canvas_length=32, points=8, seed=0)
    ids = tok.encode(long_text, add_bos=False)
    assert report.documents == 2 and report.tokens == len(ids) + len(tok.encode("x", add_bos=False))
    assert report.bytes == len(long_text) + 1
    assert report.per_document[0][1:] == (len(ids), len(long_text))
    assert report.nats == pytest.approx(sum(d[0] for d in report.per_document))
    assert report.nelbo_per_token == pytest.approx(report.nats / report.tokens)
    assert report.bits_per_byte == pytest.approx(report.nats / (math.log(2) * report.bytes))
    # an untrained model is about as good as uniform guessing over the vocabulary
    assert abs(report.nelbo_per_token - math.log(tok.vocab_size)) < 0.5
    assert json.loads(json.dumps(report.to_dict()))["tokens"] == report.tokens
    with pytest.raises(ValueError, match="no texts"):
        nelbo_texts(model, tok, [])
    with pytest.raises(ValueError, match="max_position_embeddings"):
        nelbo_texts(model, tok, ["a"], canvas_length=10_000)


def test_nelbo_canvas_defaults_to_the_models_positions(model, tok):
    text = "abcdefgh " * 80  # more tokens than 512: windows of the model's whole canvas
    report = nelbo_texts(model, tok, [text], points=2)
    assert model.config.max_position_embeddings == 512 and report.canvas_length == 512
    assert report.tokens == len(tok.encode(text, add_bos=False))
    with pytest.raises(ValueError, match="canvas_length 513 exceeds"):
        nelbo_texts(model, tok, [text], canvas_length=513, points=2)


class _NanAfter(torch.nn.Module):
    """Finite logits for the first ``calls`` calls, NaN afterwards."""

    def __init__(self, config, calls: int) -> None:
        super().__init__()
        self.config, self.left, self.w = config, calls, torch.nn.Parameter(torch.zeros(()))

    def forward(self, ids, attention_mask=None):
        self.left -= 1
        logits = torch.zeros(*ids.shape, self.config.vocab_size) + self.w
        return logits if self.left >= 0 else logits * float("nan")


def test_non_finite_nelbo_is_an_error_not_a_number(model, tok):
    rows = document_rows(list(range(10)), 16, model.config.bos_token_id, model.config.eos_token_id)
    with pytest.raises(NonFiniteError, match=r"model produced non-finite values \(its weights may be NaN/inf\): "
                                             r".*first at time point 0 of 2"):
        Scorer(_NanAfter(model.config, 0), points=2).nelbo(rows)
    # NaN only at a later call (one point per pass): refused too (discdiff.likelihood.nelbo names the time point)
    with pytest.raises(NonFiniteError, match="first at time point 1 of 2"):
        Scorer(_NanAfter(model.config, 1), points=2, tokens_per_pass=1).nelbo(rows)
    with pytest.raises(ValueError, match="NaN"):
        nelbo_texts(_NanAfter(model.config, 3), tok, ["some text", "more text"], points=2, batch_size=1,
                    tokens_per_pass=1)


@pytest.mark.parametrize("where", ["head", "layer"])
def test_non_finite_weights_are_an_error_on_the_fused_path(model, where):
    """A Sumi is scored from its hidden states: NaN in the head or in a layer is still caught."""
    broken = copy.deepcopy(model)
    with torch.no_grad():
        weight = broken.lm_head.weight if where == "head" else broken.model.layers[0].mlp.down_proj.weight
        weight[7, 3] = float("nan")
    rows = document_rows(list(range(10)), 16, model.config.bos_token_id, model.config.eos_token_id)
    with pytest.raises(NonFiniteError, match=r"model produced non-finite values .*first at time point 0 of 4"):
        Scorer(broken, points=4).nelbo(rows)


def test_sumi_eval_nelbo_tokens_per_pass_changes_speed_not_the_estimate(tmp_path, capsys):
    (tmp_path / "a.py").write_text(HELD_OUT[0])
    base = ["eval", "nelbo", "--model", "tiny", "--data", str(tmp_path / "a.py"), "--canvas-length", "16",
            "--points", "6", "--json"]
    reports = []
    for extra in ([], ["--tokens-per-pass", "16"], ["--tokens-per-pass", "100000"]):
        capsys.readouterr()
        assert main(base + extra) == 0
        reports.append(json.loads(capsys.readouterr().out))
    assert reports[0]["tokens"] > 16  # several windows
    for other in reports[1:]:
        assert other["nats"] == pytest.approx(reports[0]["nats"], rel=1e-6)
    capsys.readouterr()
    with pytest.raises(SystemExit) as err:
        main(base + ["--tokens-per-pass", "0"])
    assert err.value.code == 2 and "--tokens-per-pass must be >= 1" in capsys.readouterr().err


def test_sumi_eval_nelbo_cli_trained_beats_untrained(tiny_run, tmp_path, capsys):
    """`sumi eval nelbo` on the main job's model: JSON output, and 40 training steps already
    compress held-out Python clearly better than the untrained tiny model (bits per byte, so
    the two tokenizers compare; measured 3.7 vs 7.1 on the first text)."""
    for i, text in enumerate(HELD_OUT):
        (tmp_path / f"held{i}.txt").write_text(text)
    reports = {}
    for name, target in (("trained", str(tiny_run / "model")), ("untrained", "tiny")):
        capsys.readouterr()
        assert main(["eval", "nelbo", "--model", target, "--data", str(tmp_path / "*.txt"), "--canvas-length", "128",
                     "--points", "16", "--json"]) == 0
        reports[name] = json.loads(capsys.readouterr().out)
    assert reports["trained"]["documents"] == 2 and reports["trained"]["bytes"] == sum(len(t) for t in HELD_OUT)
    assert reports["trained"]["bits_per_byte"] < 0.75 * reports["untrained"]["bits_per_byte"], reports
    # the same texts as the rows of a parquet file (any format the data readers know): the same report
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"text": t} for t in HELD_OUT]), tmp_path / "held.parquet")
    capsys.readouterr()
    assert main(["eval", "nelbo", "--model", str(tiny_run / "model"), "--data", str(tmp_path / "held.parquet"),
                 "--canvas-length", "128", "--points", "16", "--json"]) == 0
    from_parquet = json.loads(capsys.readouterr().out)
    same = ("documents", "bytes", "tokens", "nats", "bits_per_byte", "per_document", "baselines")
    assert {k: from_parquet[k] for k in same} == {k: reports["trained"][k] for k in same}
    capsys.readouterr()
    assert main(["eval", "nelbo", "--model", str(tiny_run / "model"), "--data", str(tmp_path / "held0.txt"),
                 "--canvas-length", "64", "--points", "4"]) == 0
    assert "bits per byte" in capsys.readouterr().out
    # the README's next command: no --canvas-length, so the tiny preset's 512 positions, not 2048
    assert main(["eval", "nelbo", "--model", str(tiny_run / "model"), "--data", str(tmp_path / "held0.txt"),
                 "--points", "4", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["canvas_length"] == 512
    for argv, match in [(["--data", str(tmp_path / "nope.txt")], "nope.txt"), (["--points", "0"], "--points"),
                        (["--canvas-length", "100000"], "max_position_embeddings"),
                        (["--model", str(tmp_path / "none")], "no model directory")]:
        base = ["eval", "nelbo", "--model", str(tiny_run / "model"), "--data", str(tmp_path / "held0.txt")]
        capsys.readouterr()
        with pytest.raises(SystemExit) as err:
            main(base + argv)
        assert err.value.code == 2 and match in capsys.readouterr().err


# -- the lm-eval model ----------------------------------------------------------------------------------
def test_encode_pair_and_stop_strings(tok):
    ctx, cont = encode_pair(tok, "The cat sat on the ", "mat")
    assert ctx + cont == tok.encode("The cat sat on the mat", add_bos=False)
    assert tok.decode(cont) == " mat"  # the trailing space moved to the continuation
    assert encode_pair(tok, "", "hello") == ([], tok.encode("hello", add_bos=False))
    assert cut_at_stop("abc. def\n", [".", "\n"]) == "abc"
    assert cut_at_stop("abc", ["x", ""]) == "abc"


def test_lm_methods_follow_the_protocol(model, tok):
    lm = SumiLM(model=model, tokenizer_object=tok, canvas_length=64, points=8, steps=8, batch_size=2)
    c = model.config
    pairs = [("The cat sat on the", " mat"), ("A dog", " barks at night"), ("", "hello")]
    got = lm.loglikelihood([_Request(*p) for p in pairs], disable_tqdm=True)
    rows = [continuation_row(*encode_pair(tok, *p), 64, c.bos_token_id, c.eos_token_id) for p in pairs]
    want = Scorer(model, points=8, effective_snr=True, batch_size=2, seed=0).nelbo(rows)
    assert [g[0] for g in got] == [-w for w in want]
    assert all(isinstance(g[1], bool) for g in got)
    assert all(g[0] < 0 for g in got)
    rolling = lm.loglikelihood_rolling([_Request(t) for t in HELD_OUT], disable_tqdm=True)
    report = nelbo_texts(model, tok, HELD_OUT, canvas_length=64, points=8, effective_snr=True, batch_size=2, seed=0)
    assert sum(rolling) == pytest.approx(-report.nats, rel=1e-9)
    out = lm.generate_until([_Request("def f(", {"until": [")"], "max_gen_toks": 8}),
                             _Request("x", {"until": "\n", "max_gen_toks": 8, "do_sample": True})], disable_tqdm=True)
    assert len(out) == 2 and ")" not in out[0] and "\n" not in out[1]
    again = lm.generate_until([_Request("def f(", {"until": [")"], "max_gen_toks": 8})], disable_tqdm=True)
    assert again[0] == out[0]  # seeded


def test_is_greedy_is_true_for_a_model_that_predicts_the_continuation(tok):
    """A denoiser that puts all mass on one token: its argmax gives back a continuation of that
    token, never another one."""

    class Constant(torch.nn.Module):
        def __init__(self, config, token):
            super().__init__()
            self.config, self.token, self.w = config, token, torch.nn.Parameter(torch.zeros(()))

        def forward(self, ids, attention_mask=None):
            logits = torch.full((*ids.shape, self.config.vocab_size), -10.0)
            logits[..., self.token] = 10.0
            return logits + self.w

    config = tiny(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    a = tok.encode("a", add_bos=False)[0]
    lm = SumiLM(model=Constant(config, a), tokenizer_object=tok, canvas_length=32, points=4)
    (yes, no) = lm.loglikelihood([_Request("b", "a"), _Request("b", "b")], disable_tqdm=True)
    assert yes[1] is True and no[1] is False
    assert yes[0] > no[0]


def test_is_greedy_on_a_sumi_model_reads_the_head_only_where_scored_and_agrees_with_full_logits(tok, model):
    """For a Sumi model the greedy check runs the head on the scored positions only; a wrapper
    that hides the class (so the check takes the generic path: full logits, argmax) must give
    the same answers.  The head is rigged so the argmax is token a or b, by the sign of one
    hidden coordinate, so both answers occur."""
    rigged = copy.deepcopy(model)
    a, b = tok.encode("a", add_bos=False)[0], tok.encode("b", add_bos=False)[0]
    with torch.no_grad():
        rigged.model.norm.weight.zero_()
        rigged.model.norm.weight[0] = 1.0
        rigged.lm_head.weight.zero_()
        rigged.lm_head.weight[a, 0], rigged.lm_head.weight[b, 0] = 1.0, -1.0

    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, ids, attention_mask=None):
            return self.inner(ids, attention_mask=attention_mask)

    pairs = [(c, t) for c in ("x", "the", "a b a") for t in ("a", "b", "ab", "ba", "aa", "bb")]
    requests = [_Request(*p) for p in pairs]
    fused = SumiLM(model=rigged, tokenizer_object=tok, canvas_length=32, points=2, batch_size=4)
    plain = SumiLM(model=Plain(rigged), tokenizer_object=tok, canvas_length=32, points=2, batch_size=4)

    def head_calls(lm):
        shapes = []
        handle = rigged.lm_head.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape)))
        try:
            return [g for _, g in lm.loglikelihood(requests, disable_tqdm=True)], shapes
        finally:
            handle.remove()

    (got, shapes), (want, _) = head_calls(fused), head_calls(plain)
    assert got == want
    assert set(want) == {True, False}
    assert all(len(s) == 2 for s in shapes)  # [scored positions, V], never [batch, canvas, V]


def test_lm_arguments_are_checked(tiny_run, tok, model):
    with pytest.raises(ModelArgumentError, match="pretrained"):
        SumiLM()
    with pytest.raises(ModelArgumentError, match="no model directory"):
        SumiLM(pretrained=str(tiny_run / "missing"))
    with pytest.raises(ModelArgumentError, match="no tokenizer at"):
        SumiLM(pretrained=str(tiny_run))  # the run directory, not its model
    with pytest.raises(ModelArgumentError, match="points"):
        SumiLM(model=model, tokenizer_object=tok, points=0)
    lm = SumiLM(pretrained=str(tiny_run / "model"), batch_size="auto", canvas_length="64", device="cpu")
    assert (lm.batch_size, lm.canvas_length) == (4, 64)
    with pytest.raises(ValueError, match="leaves no room"):
        lm.generate_until([_Request("x", {"max_gen_toks": 63})], disable_tqdm=True)


def test_lm_tokens_per_pass_argument(tok, model):
    assert SumiLM(model=model, tokenizer_object=tok, tokens_per_pass="64").scorer.tokens_per_pass == 64
    assert SumiLM(model=model, tokenizer_object=tok).scorer.tokens_per_pass == 8192  # the CPU default
    with pytest.raises(ModelArgumentError, match="tokens_per_pass"):
        SumiLM(model=model, tokenizer_object=tok, tokens_per_pass="0")


def test_lm_canvas_defaults_to_the_models_positions_and_is_never_clamped(tok, model):
    assert model.config.max_position_embeddings == 512
    assert SumiLM(model=model, tokenizer_object=tok).canvas_length == 512  # min(2048, 512)
    assert SumiLM(model=model, tokenizer_object=tok, canvas_length="512").canvas_length == 512
    with pytest.raises(ModelArgumentError, match=r"canvas_length 1024 exceeds the model's max_position_embeddings"):
        SumiLM(model=model, tokenizer_object=tok, canvas_length="1024")


_TASKS = {
    "mc": ("multiple_choice", {"doc_to_text": "{{question}}", "doc_to_choice": "{{choices}}",
                               "doc_to_target": "{{label}}", "metric_list": [{"metric": "acc"}]}),
    "rolling": ("loglikelihood_rolling", {"doc_to_text": "", "doc_to_target": "{{text}}",
                                          "metric_list": [{"metric": "bits_per_byte"}]}),
    "gen": ("generate_until", {"doc_to_text": "{{question}}", "doc_to_target": "{{answer}}",
                               "generation_kwargs": {"until": ["."], "max_gen_toks": 8},
                               "metric_list": [{"metric": "exact_match"}]}),
}


def _local_tasks(tmp_path: Path) -> Path:
    """Three lm-eval tasks (multiple choice, rolling likelihood, generation) on a local JSONL file."""
    data = tmp_path / "data.jsonl"
    docs = [{"question": "def add(a, b):", "choices": ["\n    return a + b", " banana"], "label": 0,
             "text": "import os\nprint(os.getcwd())\n", "answer": "return"},
            {"question": "import", "choices": [" os", " the"], "label": 0, "text": "x = [1, 2, 3]\n",
             "answer": "os"}]
    data.write_text("\n".join(json.dumps(d) for d in docs) + "\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    for name, (output_type, fields) in _TASKS.items():
        spec = {"task": f"sumi_local_{name}", "dataset_path": "json",
                "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test",
                "output_type": output_type, **fields}
        (tasks / f"{name}.yaml").write_text(json.dumps(spec))  # JSON is YAML
    return tasks


def _offline_env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def test_lm_eval_command_line_runs_local_tasks_offline(tiny_run, tmp_path):
    """The documented ``sumi eval harness --model sumi --model_args ... --tasks ...`` (lm-eval's
    own options passed through, `sumi` registered) on three tasks defined from a local JSONL
    file, with the Hugging Face hubs forced offline."""
    tasks = _local_tasks(tmp_path)
    args = [sys.executable, "-m", "sumi", "eval", "harness", "--model", "sumi", "--model_args",
            f"pretrained={tiny_run / 'model'},points=8,steps=8,canvas_length=64", "--device", "cpu",
            "--tasks", "sumi_local_mc,sumi_local_rolling,sumi_local_gen", "--include_path", str(tasks),
            "--output_path", str(tmp_path / "out")]
    proc = subprocess.run(args, env=_offline_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result_file,) = (tmp_path / "out").rglob("results*.json")
    results = json.loads(result_file.read_text())["results"]
    assert 0 <= results["sumi_local_mc"]["acc,none"] <= 1
    assert 0 < results["sumi_local_rolling"]["bits_per_byte,none"] < 20
    assert 0 <= results["sumi_local_gen"]["exact_match,none"] <= 1


@pytest.mark.parametrize("entry", [["sumi.evaluate"], ["sumi", "eval", "harness"]])
def test_a_bad_pretrained_is_one_line_and_exit_2(tiny_run, tmp_path, entry):
    """A missing or wrong ``pretrained=`` (or a canvas the model cannot hold) stops before any
    task runs, with one line on stderr instead of a traceback from inside lm-eval."""
    tasks = _local_tasks(tmp_path)
    # every message is unit-tested in-process (test_lm_arguments_are_checked, ...); here, through the lm-eval
    # command line, one error found after loading (python -m sumi.evaluate) and one before (sumi eval harness):
    # both entry points reach the same checks, and lm-eval starts slowly (about 8 s a run)
    cases = [(f"pretrained={tiny_run / 'model'},canvas_length=1024", "exceeds the model's")] \
        if entry == ["sumi.evaluate"] else [(f"pretrained={tmp_path / 'missing'}", "no model directory")]
    for model_args, message in cases:
        args = [sys.executable, "-m", *entry, "--model", "sumi", "--model_args", model_args, "--device", "cpu",
                "--tasks", "sumi_local_mc", "--include_path", str(tasks)]
        proc = subprocess.run(args, env=_offline_env(tmp_path), cwd=tmp_path, capture_output=True, text=True,
                              timeout=240)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("sumi: error: sumi model: ") and message in last, proc.stderr[-3000:]


def test_missing_lm_eval_names_the_distributions_extra(monkeypatch, capsys):
    from sumi.evaluate.__main__ import main as harness_main

    monkeypatch.setitem(sys.modules, "lm_eval.__main__", None)  # what an install without lm-eval raises
    with pytest.raises(SystemExit) as exc:
        harness_main(["--tasks", "x"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "pip install 'discdiff[eval]'" in err and "sumi[eval]" not in err


def test_importing_sumi_evaluate_registers_sumi_lazily_and_keeps_lm_evals_models():
    """In a fresh interpreter: `import sumi.evaluate` makes `sumi` known to lm-eval without
    importing the adapter, and lm-eval's own models stay reachable (its get_model only loads
    them while the registry is empty)."""
    code = ("import sys, sumi.evaluate\n"
            "from lm_eval.api.registry import get_model\n"
            "assert 'sumi.evaluate.harness' not in sys.modules\n"
            "assert get_model('dummy').__name__ == 'DummyLM'\n"
            "assert get_model('sumi').__name__ == 'SumiLM'\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
