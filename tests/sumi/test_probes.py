"""The generation-dynamics probes (:mod:`sumi.evaluate.probes`), their plots and ``sumi probe``.

Oracles: statistics recomputed here from the revision trace's tokens with plain Python (not the
Trace methods the probe uses); the first pass compared with :func:`sumi.generate`
itself; stub models whose logits fix the target token and the Adaptive commit order of every
position, so commitment steps, order statistics and checker verdicts are known exactly; and
nesting (a smaller budget is a prefix of a larger one).  Mechanics run on a random-weights tiny
model; the command line on the trained ``tiny_run`` model.  All randomness is seeded.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import sumi
from sumi.configs import tiny
from sumi.evaluate import probe_cli
from sumi.evaluate.plots import plot_commitment, plot_ink, plot_revision
from sumi.evaluate.probes import BudgetStats, CommitmentReport, RevisionReport, commitment_probe, revision_probe
from sumi.generation import generate

V = 64
CONFIG = tiny(vocab_size=V)
BOS, EOS = CONFIG.bos_token_id, CONFIG.eos_token_id
SMALL = dict(max_new_tokens=16, canvas_length=64, steps=16)  # every mechanics test: milliseconds a step
PROMPTS = [[BOS, 5, 6], [BOS, 7, 8, 9, 10, 11]]  # two lengths: each row its own answer window
STUB = dict(max_new_tokens=8, canvas_length=32, sampler="adaptive")  # stub models write one position a step


@pytest.fixture(scope="module")
def model() -> sumi.Sumi:
    return sumi.Sumi.initialized(CONFIG, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def revision(model) -> RevisionReport:
    return revision_probe(model, PROMPTS, budgets=[0, 3, 8, 16], seed=1, **SMALL)


@pytest.fixture(scope="module")
def commitment(model) -> CommitmentReport:
    return commitment_probe(model, PROMPTS, seed=2, **SMALL)


def _answer_histories(tokens: torch.Tensor, prompts, max_new_tokens: int) -> list[list[int]]:
    """Per answer position (row by row): its token at every recorded step."""
    return [tokens[:, b, len(p) + j].tolist() for b, p in enumerate(prompts) for j in range(max_new_tokens)]


def _round_trips(history: list[int]) -> int:
    runs = [v for k, v in enumerate(history) if k == 0 or v != history[k - 1]]
    return sum(runs[k] == runs[k + 2] for k in range(len(runs) - 2))


def _cut(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS)] if EOS in ids else ids


# -- revision budget --------------------------------------------------------------------------
def test_default_canvas_fits_the_model():
    """256 positions by default, fewer when the model has fewer; an explicit canvas beyond the
    model's positions is an error, never clamped."""
    small = sumi.Sumi.initialized(tiny(vocab_size=V, max_position_embeddings=48),
                                  generator=torch.Generator().manual_seed(0))
    report = commitment_probe(small, PROMPTS, max_new_tokens=8, steps=2, seed=0)
    assert report.settings["canvas_length"] == 48 and report.trace.tokens.shape[-1] == 48
    report = revision_probe(small, PROMPTS, budgets=[1], max_new_tokens=8, steps=2, seed=0)
    assert report.settings["canvas_length"] == 48 and report.trace.tokens.shape[-1] == 48
    with pytest.raises(ValueError, match="canvas_length 64 exceeds"):
        commitment_probe(small, PROMPTS, max_new_tokens=8, steps=2, canvas_length=64)


def test_revision_starts_from_the_first_pass_and_budget_zero_changes_nothing(model, revision):
    first = generate(model, PROMPTS, sampler="ancestral", seed=1, **SMALL)
    assert torch.equal(revision.trace.tokens[0], first.canvas)
    zero = revision.budget(0)
    assert isinstance(zero, BudgetStats)
    assert (zero.overwrite_rate, zero.net_change, zero.round_trips) == (0.0, 0.0, 0.0)
    assert zero.answers == first.tokens
    assert revision.settings["seed"] == 1 and revision.settings["budgets"] == [0, 3, 8, 16]
    assert revision.settings["revision_seed"] != revision.settings["seed"]  # its own random stream
    assert revision.prompts == PROMPTS
    only_zero = revision_probe(model, PROMPTS, budgets=[0], seed=1, **SMALL)
    assert only_zero.trace.num_steps == 0 and only_zero.step_overwrite_rate == []
    assert only_zero.budget(0) == zero


def _check_against_the_trace_tokens(report: RevisionReport, prompts, M: int) -> None:
    """Every statistic of ``report``, recomputed in plain Python from its trace's tokens."""
    tokens = report.trace.tokens  # [max budget + 1, batch, L]
    steps = report.trace.num_steps
    assert steps == max(report.settings["budgets"]) and tokens.shape[1] == len(prompts)
    histories = _answer_histories(tokens, prompts, M)
    n = len(histories)
    per_step = [sum(h[s] != h[s - 1] for h in histories) / n for s in range(1, steps + 1)]
    assert report.step_overwrite_rate == pytest.approx(per_step, abs=1e-12)
    for stats in report.budgets:
        b = stats.budget
        assert stats.overwrite_rate == pytest.approx(sum(per_step[:b]) / b if b else 0.0, abs=1e-12)
        assert stats.net_change == pytest.approx(sum(h[b] != h[0] for h in histories) / n, abs=1e-12)
        assert stats.round_trips == pytest.approx(sum(_round_trips(h[: b + 1]) for h in histories) / n, abs=1e-12)
        assert stats.answers == [_cut(tokens[b, i, len(p):].tolist()) for i, p in enumerate(prompts)]
    # frozen positions (prompt, pinned EOS/BOS) never move; the mask covers exactly the answers
    for i, p in enumerate(prompts):
        P = len(p)
        assert bool((tokens[:, i, : P] == torch.tensor(p)).all())
        assert bool((tokens[:, i, P + M] == EOS).all()) and bool((tokens[:, i, P + M + 1] == BOS).all())
        assert report.answer_mask[i].nonzero().flatten().tolist() == list(range(P, P + M))


def test_revision_statistics_match_a_recomputation_from_the_trace_tokens(revision):
    assert revision.trace.tokens.shape == (17, 2, SMALL["canvas_length"])
    _check_against_the_trace_tokens(revision, PROMPTS, SMALL["max_new_tokens"])
    assert all(s.correct is None and s.accuracy is None for s in revision.budgets)
    assert revision.budget(16).net_change > 0  # the revision did rewrite part of the answers


class Flip(nn.Module):
    """A model that always wants the partner ``z xor 1`` of the current token, most strongly on
    the first answer position: Adaptive flips it back and forth, so round trips pile up."""

    config = CONFIG

    def forward(self, input_ids, attention_mask=None):
        peak = 20.0 + 0.25 * torch.arange(input_ids.shape[1], 0, -1, dtype=torch.float64)
        logits = torch.zeros(*input_ids.shape, V, dtype=torch.float64)
        return logits.scatter_(-1, (input_ids ^ 1).unsqueeze(-1), peak.expand(input_ids.shape).unsqueeze(-1))


def test_revision_statistics_when_the_model_keeps_undoing_itself():
    report = revision_probe(Flip(), PROMPTS, budgets=[0, 1, 2, 5, 6], steps=4, seed=0, **STUB)
    _check_against_the_trace_tokens(report, PROMPTS, STUB["max_new_tokens"])
    # the first answer position of each row flips every step: A B A B A B A, 5 round trips in 6 steps
    n = 2 * STUB["max_new_tokens"]
    assert [s.round_trips for s in report.budgets] == pytest.approx([0, 0, 2 / n, 8 / n, 10 / n])
    assert [s.net_change for s in report.budgets] == pytest.approx([0, 2 / n, 0, 2 / n, 0])
    assert all(s.overwrite_rate == pytest.approx(2 / n) for s in report.budgets[1:])


def test_budgets_are_nested_and_cumulative_statistics_grow(model, revision):
    smaller = revision_probe(model, PROMPTS, budgets=[8, 3], seed=1, **SMALL)  # any order: reported ascending
    assert [s.budget for s in smaller.budgets] == [3, 8]
    assert torch.equal(smaller.trace.tokens, revision.trace.tokens[:9])  # the budget-8 run is a prefix
    assert smaller.budget(3) == revision.budget(3) and smaller.budget(8) == revision.budget(8)
    stats = revision.budgets
    for a, b in zip(stats, stats[1:]):
        assert b.round_trips >= a.round_trips                                   # round trips only accumulate
        assert b.budget * b.overwrite_rate >= a.budget * a.overwrite_rate - 1e-12  # so do rewrites
    assert all(0.0 <= s.net_change <= 1.0 and 0.0 <= s.overwrite_rate <= 1.0 for s in stats)


def test_revision_is_reproducible_from_the_seed_and_leaves_the_global_rng_alone(model, revision):
    state = torch.random.get_rng_state()
    again = revision_probe(model, PROMPTS, budgets=[0, 3, 8, 16], seed=1, **SMALL)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert again.to_dict() == revision.to_dict()
    other = revision_probe(model, PROMPTS, budgets=[0, 3, 8, 16], seed=5, **SMALL)
    assert other.to_dict()["budgets"] != revision.to_dict()["budgets"]
    assert not torch.equal(other.trace.tokens, revision.trace.tokens)


def test_revision_to_dict_is_json(revision):
    data = json.loads(json.dumps(revision.to_dict(), allow_nan=False))
    assert data["probe"] == "revision" and data["settings"]["seed"] == 1
    assert [b["budget"] for b in data["budgets"]] == [0, 3, 8, 16]
    assert data["budgets"][-1]["net_change"] == revision.budget(16).net_change
    assert len(data["step_overwrite_rate"]) == 16


class Stub(nn.Module):
    """A model that wants token ``targets[row, pos]`` everywhere (probability ~1 - 1e-7), more
    strongly at earlier positions (``left_to_right``) or later ones, so Adaptive commits one
    position per step in a known order and writes exactly its target."""

    def __init__(self, targets: torch.Tensor, left_to_right: bool) -> None:
        super().__init__()
        self.config = CONFIG
        self.targets = targets
        L = targets.shape[1]
        rank = torch.arange(L, dtype=torch.float64)
        self.peak = 20.0 + 0.25 * (L - rank if left_to_right else rank)

    def forward(self, input_ids, attention_mask=None):
        logits = torch.zeros(*input_ids.shape, V, dtype=torch.float64)
        return logits.scatter_(-1, self.targets.unsqueeze(-1), self.peak.expand(input_ids.shape).unsqueeze(-1))


def test_a_checker_sees_each_answer_cut_at_eos():
    # targets: the answer window of each row reads 10 11 12 EOS 13 ...; the tail wants 20.
    # Right to left, the tail (>= 18 positions) is written first: after 16 first-pass steps every
    # answer is still noise; 16 revision steps later all 28 free positions hold their targets.
    targets = torch.full((2, 32), 20)
    for i, p in enumerate(PROMPTS[:1] + [[BOS, 1, 2, 3]]):
        targets[i, len(p): len(p) + 8] = torch.tensor([10, 11, 12, EOS, 13, 14, 15, 16])
    prompts = [PROMPTS[0], [BOS, 1, 2, 3]]
    calls = []

    def checker(i, answer):
        calls.append((i, answer))
        return answer == [10, 11, 12]

    report = revision_probe(Stub(targets, left_to_right=False), prompts, budgets=[0, 16], steps=16, seed=0,
                            checker=checker, **STUB)
    assert report.budget(16).answers == [[10, 11, 12], [10, 11, 12]]
    assert report.budget(16).correct == [True, True] and report.budget(16).accuracy == 1.0
    assert report.budget(0).correct == [False, False] and report.budget(0).accuracy == 0.0
    assert sorted(i for i, _ in calls) == [0, 0, 1, 1]  # once per prompt and budget
    assert all(answer == report.budget(b).answers[i] for (i, answer), b in zip(calls, [0, 0, 16, 16]))
    assert report.to_dict()["budgets"][1]["accuracy"] == 1.0


# -- commitment order -------------------------------------------------------------------------
def test_commitment_report_invariants(commitment):
    steps, M = SMALL["steps"], SMALL["max_new_tokens"]
    commit, ink = commitment.commitment_steps, commitment.ink
    assert commit.shape == (2, M) and commit.dtype == torch.long
    assert bool((commit >= 0).all()) and bool((commit <= steps).all())
    assert ink.shape == (2, steps + 1, M) and ink.dtype == torch.bool
    assert bool(ink[:, -1].all())  # the final canvas holds its final tokens
    tokens = commitment.trace.tokens
    for i, p in enumerate(PROMPTS):
        window = tokens[:, i, len(p): len(p) + M]  # [steps + 1, M]
        assert torch.equal(ink[i], window == window[-1])
        for j in range(M):
            c = int(commit[i, j])
            assert bool(ink[i, c:, j].all())  # inked for good from the commitment step on
            if c > 0:
                assert not bool(ink[i, c - 1, j])  # and changed at that step
        # the order statistics over this row's commitment steps, by hand
        row = commit[i].tolist()
        pairs = [(a, b) for a in range(M) for b in range(a + 1, M)]
        ltr = sum(1.0 if row[a] < row[b] else 0.5 if row[a] == row[b] else 0.0 for a, b in pairs) / len(pairs)
        assert float(commitment.left_to_right_fraction[i]) == pytest.approx(ltr, abs=1e-12)
        assert commitment.answers[i] == _cut(window[-1].tolist())
    assert bool((commit > 0).any())


def test_commitment_matches_generate_and_is_reproducible(model, commitment):
    out = generate(model, PROMPTS, sampler="ancestral", seed=2, trace=True, **SMALL)
    assert torch.equal(commitment.trace.tokens, out.trace.tokens)
    assert commitment.answers == out.tokens
    again = commitment_probe(model, PROMPTS, seed=2, **SMALL)
    assert again.to_dict() == commitment.to_dict()
    other = commitment_probe(model, PROMPTS, seed=3, **SMALL)
    assert other.to_dict()["prompts"] != commitment.to_dict()["prompts"]


def test_commitment_to_dict_is_json(commitment):
    data = json.loads(json.dumps(commitment.to_dict(), allow_nan=False))
    assert data["probe"] == "commitment" and data["settings"]["seed"] == 2 and data["settings"]["steps"] == 16
    first = data["prompts"][0]
    assert first["commitment_steps"] == commitment.commitment_steps[0].tolist()
    assert len(first["ink"]) == 17 and first["ink"][-1] == [1] * 16
    assert len(data["summary"]["mean_commitment_step"]) == 16


@pytest.mark.parametrize("left_to_right", [True, False])
def test_commitment_order_of_a_model_with_a_known_order(left_to_right):
    prompts = [[BOS, 1], [BOS, 1, 2, 3]]
    targets = torch.full((2, 32), 7)
    report = commitment_probe(Stub(targets, left_to_right), prompts, steps=32, seed=4, **STUB)
    start = report.trace.tokens[0]
    assert not bool((start == 7).any())  # (seed chosen so) no position starts at its target
    M = 8
    for i, p in enumerate(prompts):
        P = len(p)
        tail = 32 - (P + M + 2)
        # one position per step in confidence order; the pinned EOS/BOS are skipped
        expected = list(range(1, M + 1)) if left_to_right else [tail + M - j for j in range(M)]
        assert report.commitment_steps[i].tolist() == expected
    expected_rho, expected_ltr = (1.0, 1.0) if left_to_right else (-1.0, 0.0)
    torch.testing.assert_close(report.order_correlation, torch.full((2,), expected_rho, dtype=torch.float64))
    torch.testing.assert_close(report.left_to_right_fraction, torch.full((2,), expected_ltr, dtype=torch.float64))
    assert report.answers == [[7] * M, [7] * M]


# -- validation -------------------------------------------------------------------------------
class Recorder(nn.Module):
    """Fails the test if the probe calls the model before validating its inputs."""

    config = CONFIG

    def forward(self, input_ids, attention_mask=None):  # pragma: no cover - must not run
        raise AssertionError("the model ran before the inputs were validated")


@pytest.mark.parametrize("kwargs, match", [
    (dict(budgets=[]), "empty"),
    (dict(budgets=[-1]), r"revision budget \(steps\) must be an int >= 0"),
    (dict(budgets=[2.0]), r"revision budget \(steps\) must be an int >= 0"),
    (dict(budgets=[True]), r"revision budget \(steps\) must be an int >= 0"),
    (dict(budgets=[4, 4]), "repeat"),
    (dict(budgets="8"), "list"),
    (dict(budgets=8), "list"),
    (dict(revision_tokens_per_step=0), "revision_tokens_per_step"),
    (dict(seed=-1), "seed"),
    (dict(seed=None), "seed"),
    (dict(checker="contains"), "checker"),
    (dict(steps=0), "steps"),
    (dict(sampler="beam"), "unknown sampler"),
    (dict(prompts=[[BOS], []]), "prompt 1 is empty"),
    (dict(max_new_tokens=70), "canvas_length"),
])
def test_revision_probe_rejects_bad_inputs(kwargs, match):
    args = dict(prompts=PROMPTS, budgets=[0, 4], **SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        revision_probe(Recorder(), args.pop("prompts"), **args)


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=-1), "seed"),
    (dict(tokens_per_step=0), "tokens_per_step"),
    (dict(prompts="hello"), "tokenize"),
])
def test_commitment_probe_rejects_bad_inputs(kwargs, match):
    args = dict(prompts=PROMPTS, **SMALL)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        commitment_probe(Recorder(), args.pop("prompts"), **args)


# -- plots ------------------------------------------------------------------------------------
def _assert_png_with_content(path) -> None:
    from matplotlib.image import imread

    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    flat = pixels.reshape(-1, pixels.shape[-1])
    assert len(torch.from_numpy(flat).unique(dim=0)) > 10, f"{path.name} is (nearly) a single flat colour"


def test_plots_write_pngs_and_leave_no_figures_open(tmp_path, revision, commitment):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    paths = [plot_revision(revision, tmp_path / "revision.png"), plot_commitment(commitment, tmp_path / "c.png"),
             plot_ink(commitment, tmp_path / "sub" / "ink.png", prompt=1)]
    for path in paths:
        _assert_png_with_content(path)
    assert plt.get_fignums() == before
    with pytest.raises(ValueError, match="prompt"):
        plot_ink(commitment, tmp_path / "bad.png", prompt=2)


# -- command line -----------------------------------------------------------------------------
def _parser():
    from sumi.cli import _Parser

    parser = _Parser(prog="sumi probe")
    probe_cli.add_arguments(parser)
    return parser


def _run(argv: list[str]) -> int:
    return probe_cli.run(_parser().parse_args(argv))


CLI_SMALL = ["--max-new-tokens", "16", "--canvas-length", "64", "--steps", "16"]


def test_cli_revision_on_the_trained_tiny_model(tiny_run, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "def f(x):\n    return", "answer": ""}) + "\n\n"
                       + json.dumps({"prompt": "import os", "answer": "no such text \u2603"}) + "\n")
    out = tmp_path / "out"
    assert _run(["revision", "--model", str(tiny_run / "model"), "--prompts", str(prompts), "--out", str(out),
                 "--budgets", "0,4,8", *CLI_SMALL]) == 0
    captured = capsys.readouterr()
    assert "budget" in captured.out and "accuracy" in captured.out and "denoising" in captured.err
    assert f"wrote {out / 'revision.json'}" in captured.out and f"wrote {out / 'revision.png'}" in captured.out
    data = json.loads((out / "revision.json").read_text())
    assert data["settings"]["seed"] == 0 and data["settings"]["check"] == "contains"
    assert data["prompt_texts"] == ["def f(x):\n    return", "import os"]
    assert [b["budget"] for b in data["budgets"]] == [0, 4, 8]
    for entry in data["budgets"]:  # "" is in every output; the snowman cannot be written by this tokenizer
        assert entry["correct"] == [True, False] and entry["accuracy"] == 0.5
        assert len(entry["texts"]) == 2
    _assert_png_with_content(out / "revision.png")


def test_cli_commitment_on_the_trained_tiny_model(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(["commitment", "--model", str(tiny_run / "model"), "--prompt", "def ", "--prompt", "class A:",
                 "--out", str(out), "--no-progress", "--seed", "3", *CLI_SMALL]) == 0
    captured = capsys.readouterr()
    assert "spearman" in captured.out and "denoising" not in captured.err
    data = json.loads((out / "commitment.json").read_text())
    assert data["settings"]["seed"] == 3 and len(data["prompts"]) == 2
    assert data["prompts"][1]["prompt_text"] == "class A:" and isinstance(data["prompts"][1]["text"], str)
    assert len(data["prompts"][0]["ink"]) == 17
    for name in ("commitment.png", "ink.png"):
        _assert_png_with_content(out / name)


def test_cli_without_expected_answers_reports_no_accuracy(tmp_path, capsys):
    out = tmp_path / "out"
    assert _run(["revision", "--model", "tiny", "--prompt", "x = ", "--out", str(out), "--budgets", "2",
                 "--no-progress", *CLI_SMALL]) == 0
    data = json.loads((out / "revision.json").read_text())
    assert data["settings"]["check"] is None and data["budgets"][0]["accuracy"] is None
    assert capsys.readouterr().out.splitlines()[1].split()[-1] == "-"  # the accuracy column


@pytest.mark.parametrize("argv, match", [
    (["revision", "--model", "tiny", "--out", "OUT"], "no prompts"),
    (["revision", "--model", "tiny", "--prompt", "a", "--out", "OUT", "--budgets", "4,x"], "--budgets"),
    (["revision", "--model", "tiny", "--prompt", "a", "--out", "OUT", "--budgets", "-4"], "--budgets"),
    (["revision", "--model", "tiny", "--prompt", "a", "--out", "OUT", "--budgets", "4,4"], "--budgets"),
    (["commitment", "--model", "tiny", "--prompts", "MISSING.jsonl", "--out", "OUT"], "no prompts file"),
    (["commitment", "--model", "tiny", "--prompts", "BAD.jsonl", "--out", "OUT"], "BAD.jsonl:2"),
    (["commitment", "--model", "tiny", "--prompt", "a", "--out", "OUT", "--max-new-tokens", "70",
      "--canvas-length", "64"], "canvas_length"),
    (["commitment", "--model", "tiny", "--prompt", "a", "--out", "FILE"], "not a directory"),
])
def test_cli_user_errors(tmp_path, argv, match):
    from sumi.cli_common import UsageError

    (tmp_path / "BAD.jsonl").write_text('{"prompt": "ok"}\n{"text": "no prompt"}\n')
    (tmp_path / "FILE").write_text("")
    argv = [str(tmp_path / a) if a in ("OUT", "MISSING.jsonl", "BAD.jsonl", "FILE") else a for a in argv]
    with pytest.raises(UsageError, match=match):
        _run(argv + ["--no-progress"])


def test_cli_checks_out_before_loading_the_model(tmp_path, monkeypatch):
    """An unwritable --out fails at once, not after the whole generation."""
    from sumi.cli_common import UsageError

    def load_model(args):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(probe_cli, "load_model", load_model)
    (tmp_path / "FILE").write_text("")
    for action in ("revision", "commitment"):
        with pytest.raises(UsageError, match=r"(?i)--out .*FILE/out: .*not a directory"):
            _run([action, "--model", "tiny", "--prompt", "a", "--out", str(tmp_path / "FILE" / "out")])


def test_cli_flags():
    args = _parser().parse_args(["revision", "--model", "m", "--prompt", "a", "--prompt", "b", "--out", "o"])
    assert args.prompt == ["a", "b"] and args.budgets == "0,8,16,32,64" and args.check == "contains"
    assert (args.seed, args.sampler, args.steps) == (0, "ancestral", 64)
    assert (args.canvas_length, args.max_new_tokens) == (None, 64)  # None: min(256, the model's positions)
    with pytest.raises(SystemExit):
        _parser().parse_args(["commitment", "--model", "m", "--prompt", "a"])  # --out is required
    with pytest.raises(SystemExit):
        _parser().parse_args(["commitment", "--model", "m", "--out", "o", "--budgets", "1"])  # revision only


def test_sumi_probe_is_wired_into_the_sumi_command(tmp_path, capsys):
    from sumi.cli import main

    assert main(["probe", "commitment", "--model", "tiny", "--prompt", "def", "--out", str(tmp_path), *CLI_SMALL,
                 "--no-progress"]) == 0
    assert json.loads((tmp_path / "commitment.json").read_text())["settings"]["sampler"] == "ancestral"
    with pytest.raises(SystemExit) as err:
        main(["probe", "revision", "--model", "tiny", "--out", str(tmp_path / "r"), *CLI_SMALL])
    assert err.value.code == 2  # no prompt
