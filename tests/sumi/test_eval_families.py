"""`sumi eval nelbo` and the lm-eval model for every family: the NELBO under the family's kernel
(masked, hybrid) against discdiff's estimator on the logits, the exact NLL of an `ar` model
against a float64 recomputation from its full logits, the `bound` flag, and the compressor
baselines against sizes computed here with the standard library."""

from __future__ import annotations

import bz2
import copy
import gzip
import json
import lzma
import math
import random

import pytest
import torch

import sumi
from discdiff import NonFiniteError
from discdiff.kernels import Hybrid, Masked
from discdiff.likelihood import nelbo
from sumi.cli import main
from sumi.configs import tiny
from sumi.evaluate import Row, Scorer, continuation_row, document_rows, nelbo_texts
from sumi.evaluate.compressors import compressor_bits_per_byte
from sumi.evaluate.harness import SumiLM, encode_pair
from sumi.evaluate.likelihood import pad_rows, text_rows
from sumi.tokenizer import SumiTokenizer

TEXT = 'def area(r):\n    """The area of a circle."""\n    return 3.14159 * r * r\n\n\nprint(area(2.0))\n'


@pytest.fixture(scope="module")
def tok() -> SumiTokenizer:
    return SumiTokenizer.default()


def _model(tok, objective: str, **overrides) -> sumi.Sumi:
    config = tiny(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                  pad_token_id=tok.pad_id, attention_backend="eager").for_objective(objective)
    if overrides:
        config = config.replace(**overrides)
    return sumi.Sumi.initialized(config, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def ar(tok) -> sumi.Sumi:
    return _model(tok, "ar")


@pytest.fixture(scope="module")
def ar64(ar) -> sumi.Sumi:
    return copy.deepcopy(ar).double()


class _Plain(torch.nn.Module):
    """A model behind a plain module (not a `sumi.Sumi`): the scorer takes the logits path."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.config = inner, inner.config

    def forward(self, ids, attention_mask=None):
        return self.inner(ids, attention_mask=attention_mask)


def _oracle_nll(model, row: Row) -> float:
    """The exact NLL of a row, from the full logits of the row alone in float64:
    sum over scored positions i of -log softmax(logits[i - 1])[x_i]."""
    x = torch.tensor([row.tokens])
    with torch.no_grad():
        logp = model(x)[0].double().log_softmax(-1)
    return -sum(logp[i - 1, t].item() for i, (t, s) in enumerate(zip(row.tokens, row.scored)) if s)


def _ar_rows(config) -> list[Row]:
    """Rows of different lengths (padding in a batch), later windows of a document, a context."""
    b, e = config.bos_token_id, config.eos_token_id
    return [*document_rows(list(range(20, 70)), 16, b, e, overlap=1), continuation_row([5, 6, 7], [8, 9, 10], 64, b, e),
            continuation_row([], [3], 64, b, e), document_rows(list(range(100, 130)), 64, b, e)[0]]


# -- ar: the exact NLL ----------------------------------------------------------------------------------
def test_ar_nll_is_the_float64_nll_of_the_full_logits(ar, ar64):
    rows = _ar_rows(ar.config)
    want = [_oracle_nll(ar64, row) for row in rows]
    assert Scorer(ar64, batch_size=1).nelbo(rows) == pytest.approx(want, rel=1e-12, abs=1e-12)
    # padded batches (no attention mask: causality hides the pads) score each row as if it were
    # alone, up to the eager attention's float32 rounding at another sequence length
    for batch_size in (3, len(rows)):
        assert Scorer(ar64, batch_size=batch_size).nelbo(rows) == pytest.approx(want, rel=1e-7)
    assert Scorer(ar).nelbo(rows) == pytest.approx(want, rel=1e-5)  # float32 model
    scorer = Scorer(ar, points=3, seed=7, effective_snr=True)
    assert scorer.bound is False and scorer.kernel is None
    assert scorer.nelbo(rows) == Scorer(ar, seed=8).nelbo(rows)  # no noise: the seed changes nothing


def test_ar_nll_never_builds_the_logits_and_matches_the_logits_path(ar, monkeypatch):
    rows = _ar_rows(ar.config)
    want = Scorer(_Plain(copy.deepcopy(ar))).nelbo(rows)  # full logits, float32 log-softmax

    def no_logits(*args, **kwargs):
        raise AssertionError("the scorer computed the logits")

    monkeypatch.setattr(ar.lm_head, "forward", no_logits)
    assert Scorer(ar).nelbo(rows) == pytest.approx(want, rel=1e-5)


def test_ar_rows_overlap_by_one_token_and_score_each_text_token_once(ar):
    b, e = 100, 101
    rows = document_rows([1, 2, 3, 4, 5], 3, b, e, overlap=1)
    assert [r.tokens for r in rows] == [[b, 1, 2], [2, 3, 4], [4, 5, e]]
    assert [r.scored for r in rows] == [[False, True, True], [False, True, True], [False, True, False]]
    assert document_rows([1, 2, 3, 4, 5], 3, b, e) == document_rows([1, 2, 3, 4, 5], 3, b, e, overlap=0)
    with pytest.raises(ValueError, match="overlap"):
        document_rows([1], 3, b, e, overlap=3)
    ids = list(range(10, 60))
    windows = text_rows(ids, 16, ar.config)
    assert all(len(r.tokens) <= 16 and any(r.scored) and not r.scored[0] for r in windows)
    scored = [t for r in windows for t, s in zip(r.tokens, r.scored) if s]
    assert scored == ids  # every text token once, in order
    assert windows[0].tokens[0] == ar.config.bos_token_id


def test_ar_refuses_a_row_that_scores_its_first_token(ar):
    with pytest.raises(ValueError, match="row 1 scores its first token"):
        Scorer(ar).nelbo([Row([1, 2], [False, True]), Row([3, 4], [True, True])])
    assert Scorer(ar, batch_size=1).nelbo([Row([1, 2], [False, False]), Row([1, 2], [False, True])])[0] == 0.0


def test_ar_report_is_exact_with_no_noise_settings(ar, ar64, tok):
    texts = [TEXT * 3, "x = 1\n"]  # the first is several windows of 32
    report = nelbo_texts(ar64, tok, texts, canvas_length=32, points=5, seed=3, batch_size=1)
    want = [sum(_oracle_nll(ar64, row) for row in text_rows(tok.encode(t, add_bos=False), 32, ar64.config))
            for t in texts]
    assert [d[0] for d in report.per_document] == pytest.approx(want, rel=1e-12)
    assert report.tokens == sum(len(tok.encode(t, add_bos=False)) for t in texts)
    assert report.bits_per_byte == pytest.approx(sum(want) / (math.log(2) * sum(len(t.encode()) for t in texts)))
    assert (report.objective, report.bound, report.points, report.effective_snr, report.seed) == ("ar", False, None,
                                                                                                  None, None)
    assert report.canvas_length == 32


def test_ar_nll_of_a_uniform_predictor_is_log_v_per_token(ar, tok):
    """Closed form: a causal model whose every prediction is uniform over V ids has NLL ln V per
    scored token, exactly."""

    class Uniform(torch.nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config, self.w = config, torch.nn.Parameter(torch.zeros(()))

        def forward(self, ids, attention_mask=None):
            return torch.zeros(*ids.shape, self.config.vocab_size) + self.w

    report = nelbo_texts(Uniform(ar.config), tok, [TEXT, TEXT * 4], canvas_length=24)
    assert report.nelbo_per_token == pytest.approx(math.log(ar.config.vocab_size), rel=1e-6)
    assert report.bound is False


def test_ar_non_finite_logits_are_an_error(ar):
    broken = copy.deepcopy(ar)
    with torch.no_grad():
        broken.lm_head.weight[5, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"model produced non-finite values .*2 of 2 rows"):
        Scorer(broken).nelbo(_ar_rows(ar.config)[:2])


# -- diffusion families: the NELBO under the family's kernel ---------------------------------------------
@pytest.mark.parametrize("objective, overrides, kernel", [
    ("masked", {}, lambda c: Masked(c.vocab_size, c.mask_token_id)),
    ("masked-ce", {}, lambda c: Masked(c.vocab_size, c.mask_token_id)),
    ("hybrid", {"hybrid_shift": -2.0, "hybrid_scale": 0.5}, lambda c: Hybrid(c.vocab_size, c.mask_token_id, -2.0, 0.5)),
])
def test_diffusion_families_score_the_nelbo_of_their_own_kernel(tok, objective, overrides, kernel):
    """The fused, stacked scorer against discdiff's nelbo on the float64 logits, one point per
    call, under the kernel built here from the config: the same numbers to 1e-12."""
    model64 = _model(tok, objective, **overrides).double()
    c = model64.config
    assert c.mask_token_id == tok.vocab_size  # the mask is the one id added after the tokenizer's
    rows = [continuation_row([5, 6, 7], [8, 9, 10, 11], 64, c.bos_token_id, c.eos_token_id),
            document_rows(list(range(20, 60)), 64, c.bos_token_id, c.eos_token_id)[0]]
    order = [1, 0]  # longest first
    x, scored, present = pad_rows([rows[i] for i in order], c.pad_token_id, "cpu")
    with torch.no_grad():
        out = nelbo(lambda z: model64(z, attention_mask=present.long()), kernel(c), x, points=10, frozen=~scored,
                    generator=torch.Generator().manual_seed(4)).per_sequence.tolist()
    scorer = Scorer(model64, points=10, batch_size=2, seed=4)
    assert scorer.bound is True and scorer.kernel.mask_id == c.mask_token_id
    assert scorer.nelbo(rows) == pytest.approx([out[1], out[0]], rel=1e-12, abs=1e-12)
    with pytest.raises(ValueError, match="mask id"):
        scorer.nelbo([Row([c.bos_token_id, c.mask_token_id], [False, True])])
    report = nelbo_texts(model64, tok, [TEXT], canvas_length=32, points=4)
    assert (report.objective, report.bound, report.points, report.effective_snr) == (objective, True, 4, False)


def test_masked_is_greedy_starts_from_the_mask_and_never_predicts_it(tok):
    """A masked model's greedy check denoises from the kernel's prior (every scored position
    the mask) and reads the argmax without the mask: a model that prefers the mask everywhere
    and the true next id second is greedy."""
    config = _model(tok, "masked").config
    seen = []

    class Rigged(torch.nn.Module):  # logits: the mask 10, the id after the previous token 5
        def __init__(self):
            super().__init__()
            self.config, self.w = config, torch.nn.Parameter(torch.zeros(()))

        def forward(self, ids, attention_mask=None):
            seen.append(ids.clone())
            logits = torch.zeros(*ids.shape, config.vocab_size) + self.w
            logits[..., config.mask_token_id] = 10.0
            logits.scatter_(-1, (torch.arange(ids.shape[1]) + 8).expand_as(ids).unsqueeze(-1), 5.0)
            return logits

    lm = SumiLM(model=Rigged(), tokenizer_object=tok, canvas_length=32, points=2)
    b, e = config.bos_token_id, config.eos_token_id
    yes = continuation_row([], [9, 10], 32, b, e)  # positions 1 and 2: ids 9 and 10
    no = continuation_row([], [9, 11], 32, b, e)
    assert lm._is_greedy([yes, no]) == [True, False]
    x = torch.tensor([yes.tokens, no.tokens])
    scored = torch.tensor([yes.scored, no.scored])
    assert (seen[-1][scored] == config.mask_token_id).all() and (seen[-1][~scored] == x[~scored]).all()


# -- the lm-eval model for ar ----------------------------------------------------------------------------
class _Request:
    def __init__(self, *args):
        self.args = args


def test_lm_eval_model_scores_ar_exactly(ar64, tok):
    lm = SumiLM(model=ar64, tokenizer_object=tok, canvas_length=32, points=4, batch_size=1)
    c = ar64.config
    pairs = [("def f(x):", " return x"), ("import", " os"), ("", "hello world")]
    got = lm.loglikelihood([_Request(*p) for p in pairs], disable_tqdm=True)
    for (context, continuation), (value, greedy) in zip(pairs, got):
        ctx, cont = encode_pair(tok, context, continuation)
        row = continuation_row(ctx, cont, 32, c.bos_token_id, c.eos_token_id)
        assert value == pytest.approx(-_oracle_nll(ar64, row), rel=1e-12)
        assert isinstance(greedy, bool)
    (rolling,) = lm.loglikelihood_rolling([_Request(TEXT * 2)], disable_tqdm=True)
    want = sum(_oracle_nll(ar64, row) for row in text_rows(tok.encode(TEXT * 2, add_bos=False), 32, c))
    assert rolling == pytest.approx(-want, rel=1e-12)


def test_lm_eval_model_generates_with_an_ar_model(ar, tok):
    lm = SumiLM(model=ar, tokenizer_object=tok, canvas_length=64, seed=3)
    assert lm.sampler == "ancestral"  # the family's default: left to right
    requests = [_Request("def f(", {"until": [")"], "max_gen_toks": 8}),
                _Request("x", {"until": "\n", "max_gen_toks": 8, "do_sample": True})]
    out = lm.generate_until(requests, disable_tqdm=True)
    assert len(out) == 2 and ")" not in out[0] and "\n" not in out[1]
    assert lm.generate_until(requests, disable_tqdm=True) == out  # seeded
    masked = SumiLM(model=_model(tok, "masked"), tokenizer_object=tok, canvas_length=64, seed=3)
    assert masked.sampler == "ancestral"  # one token per step could not unmask the canvas
    (text,) = masked.generate_until([_Request("def f(", {"until": [")"], "max_gen_toks": 8})], disable_tqdm=True)
    assert isinstance(text, str)
    assert SumiLM(model=_model(tok, "uniform"), tokenizer_object=tok).sampler == "adaptive"  # the release's


def test_ar_is_greedy_is_teacher_forced_argmax(tok):
    """The greedy check of an ar model: the argmax at each continuation position given the true
    prefix (read one position earlier).  A rigged model predicts "previous id + 1"."""
    config = _model(tok, "ar").config

    class NextId(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config, self.w = config, torch.nn.Parameter(torch.zeros(()))

        def forward(self, ids, attention_mask=None):
            logits = torch.zeros(*ids.shape, config.vocab_size) + self.w
            return logits.scatter(-1, ((ids + 1) % config.vocab_size).unsqueeze(-1), 1.0)

    lm = SumiLM(model=NextId(), tokenizer_object=tok, canvas_length=32, batch_size=3)
    b, e = config.bos_token_id, config.eos_token_id
    rows = [continuation_row([5, 6], [7, 8, 9], 32, b, e), continuation_row([5, 6], [7, 9], 32, b, e),
            continuation_row([1, 2, 3, 4, 5, 6, 7, 8], [9], 32, b, e), continuation_row([5], [9], 32, b, e)]
    assert lm._is_greedy(rows) == [True, False, True, False]


def test_ar_is_greedy_on_a_sumi_reads_the_head_only_where_predicting(ar, tok):
    """The fused path (head on the predicting positions only) agrees with the full logits; the
    head is rigged so the argmax is id a or b by the sign of one hidden coordinate."""
    rigged = copy.deepcopy(ar)
    a, b = 65, 66
    with torch.no_grad():
        rigged.model.norm.weight.zero_()
        rigged.model.norm.weight[0] = 1.0
        rigged.lm_head.weight.zero_()
        rigged.lm_head.weight[a, 0], rigged.lm_head.weight[b, 0] = 1.0, -1.0
    c = rigged.config
    rows = [continuation_row(ctx, cont, 32, c.bos_token_id, c.eos_token_id)
            for ctx in ([5], [7, 8, 9], [])
            for cont in ([a], [b], [a, b], [b, a], [a, a], [b, b])]
    fused = SumiLM(model=rigged, tokenizer_object=tok, canvas_length=32, batch_size=4)._is_greedy(rows)
    plain = SumiLM(model=_Plain(rigged), tokenizer_object=tok, canvas_length=32, batch_size=4)._is_greedy(rows)
    assert fused == plain and set(fused) == {True, False}


# -- compressor baselines --------------------------------------------------------------------------------
def test_compressor_baselines_are_per_document_sizes():
    rng = random.Random(0)
    noise = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(20_000))
    texts = [TEXT, "ab" * 40_000, noise, ""]
    data = [t.encode("utf-8") for t in texts if t]
    size = sum(len(d) for d in data)
    want = {"gzip": sum(len(gzip.compress(d, 9)) for d in data) * 8 / size,
            "bz2": sum(len(bz2.compress(d, 9)) for d in data) * 8 / size,
            "xz": sum(len(lzma.compress(d, preset=9 | lzma.PRESET_EXTREME)) for d in data) * 8 / size}
    assert compressor_bits_per_byte(texts) == pytest.approx(want, rel=1e-12)
    assert all(v < 0.05 for v in compressor_bits_per_byte(["ab" * 40_000]).values())  # far below 1 bit/byte
    # 36 equally likely symbols: at least log2(36) = 5.17 bits per byte, and no compressor reaches it exactly
    assert all(math.log2(36) < v < 8 for v in compressor_bits_per_byte([noise]).values())
    # each document on its own: a repeat of a document is paid again, not referenced
    assert compressor_bits_per_byte([noise, noise]) == pytest.approx(compressor_bits_per_byte([noise]))
    assert compressor_bits_per_byte([noise + noise])["xz"] < 0.6 * compressor_bits_per_byte([noise])["xz"]
    with pytest.raises(ValueError, match="no bytes"):
        compressor_bits_per_byte(["", ""])


# -- the command line ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved(tmp_path_factory, tok, ar) -> dict:
    """An ar and a masked tiny model (random weights), saved with their tokenizer."""
    out = {}
    for name, model in (("ar", ar), ("masked", _model(tok, "masked"))):
        path = tmp_path_factory.mktemp(name)
        sumi.save_pretrained(model, path)
        tok.save(path)
        out[name] = path
    return out


def test_sumi_eval_nelbo_reports_the_bound_and_the_baselines(saved, tmp_path, capsys, tok):
    (tmp_path / "a.py").write_text(TEXT)
    (tmp_path / "b.py").write_text("ab" * 500)
    data = ["--data", str(tmp_path / "*.py"), "--canvas-length", "32", "--points", "4"]
    want = compressor_bits_per_byte([TEXT, "ab" * 500])
    reports = {}
    for name, model in (("ar", str(saved["ar"])), ("masked", str(saved["masked"])), ("uniform", "tiny")):
        capsys.readouterr()
        assert main(["eval", "nelbo", "--model", model, *data, "--json"]) == 0
        reports[name] = json.loads(capsys.readouterr().out)
        assert reports[name]["baselines"] == pytest.approx(want)
        assert reports[name]["bits_per_byte"] > 0 and reports[name]["objective"] == name
    assert (reports["ar"]["bound"], reports["ar"]["points"]) == (False, None)
    assert (reports["masked"]["bound"], reports["masked"]["points"]) == (True, 4)
    assert (reports["uniform"]["bound"], reports["uniform"]["points"]) == (True, 4)
    for name, kind in (("ar", "NLL (exact)"), ("masked", "NELBO (upper bound)")):
        capsys.readouterr()
        assert main(["eval", "nelbo", "--model", str(saved[name]), *data]) == 0
        out = capsys.readouterr().out
        bits = next(line for line in out.splitlines() if line.startswith("bits per byte"))
        assert kind in out and all(f"{c} {want[c]:.4f}" in bits for c in ("gzip", "bz2", "xz")), out
        assert f"{reports[name]['bits_per_byte']:.4f} (model" in bits
