"""``sumi study scaling``: the isoFLOP grid end to end on a tiny grid of its own (real ``sumi
train`` processes), its resume and reuse, its bad flags, and how its summaries feed the fits."""

from __future__ import annotations

import json
import math

import pytest

from sumi.cli import main
from sumi.configs.model import sumi_7b, sumi_150m
from sumi.configs.train import train_tiny
from sumi.study import runs as runs_module
from sumi.study.scaling import Shape, plot_scaling, shape_overrides, summarize

# 16x1 and 32x1 with the tiny recipe's shape rule; at 3e9 FLOPs 32x1 gets 6.6 steps: skipped
OBJECTIVE = "masked"
SIZES = "16x1,32x1"
FIRST, MORE = 3e9, 6e9
HELDOUT = ("def f(x):\n    return x + 1\n" * 20, "class A:\n    pass\n" * 30)


def _expected_steps(budget: float, hidden: int, layers: int, *, vocab: int = 512 + 1) -> int:
    """The FLOP count written out (the masked family's vocabulary holds the mask: 512 + 1 ids):
    head_dim 16, heads hidden/16, kv heads max(1, heads/2), MLP 3 x hidden, sequence 128, 16
    sequences per step; N leaves out the input embedding only."""
    d, heads = 16, hidden // 16
    kv, inter = max(1, heads // 2), 3 * hidden
    per_layer = hidden * d * (2 * heads + 2 * kv) + 3 * hidden * inter + 2 * hidden
    n = layers * per_layer + hidden + vocab * hidden
    flops_per_token = 6 * n + 12 * layers * heads * d * 128
    return round(budget / (flops_per_token * 16 * 128))


class _Launches:
    """Counts the ``sumi train`` commands a RunCache runs (and runs them)."""

    def __init__(self) -> None:
        self.count = 0
        self.real = runs_module._train_here

    def run(self, *args, **kwargs):
        self.count += 1
        return self.real(*args, **kwargs)


def _study(mp, out, budgets, *extra) -> int:
    """``sumi study scaling`` on the test grid; returns the trainings it launched."""
    launches = _Launches()
    mp.setattr(runs_module, "_train_here", launches.run)
    heldout = [x for i in range(len(HELDOUT)) for x in ("--heldout", str(out.parent / f"heldout{i}.py"))]
    assert main(["study", "scaling", "--objectives", OBJECTIVE, "--budgets", ",".join(map(str, budgets)), "--sizes",
                 SIZES, "--points", "2", *heldout, "--threads", "2", "--no-progress", "--out", str(out), *extra]) == 0
    return launches.count


def _check_rows(payload, out) -> None:
    for row in payload["rows"]:
        hidden, layers = map(int, row["size"].split("x"))
        assert row["steps"] == _expected_steps(row["budget"], hidden, layers)
        assert row["tokens"] == row["steps"] * 2048 and row["flops"] == row["tokens"] * row["flops_per_token"]
        assert abs(row["flops"] - row["budget"]) <= row["flops_per_token"] * 2048 / 2  # at most half a step off
        metrics = (out / "runs" / row["run"].rsplit("/", 1)[-1] / "metrics.jsonl").read_text().splitlines()
        assert json.loads(metrics[-1])["step"] == row["steps"]  # the run trained exactly those steps
        # bits per byte is the same loss in other units: nats x tokens / (ln 2 x bytes)
        assert row["bound"] is True and row["documents"] == 2
        assert row["heldout_bytes"] == sum(len(t.encode()) for t in HELDOUT)
        assert row["bits_per_byte"] == pytest.approx(row["loss"] * row["heldout_tokens"]
                                                     / (math.log(2) * row["heldout_bytes"]), rel=1e-12)


@pytest.fixture(scope="module")
def grid(tmp_path_factory, sumi_cache):
    out = tmp_path_factory.mktemp("scaling") / "out"
    for i, text in enumerate(HELDOUT):
        (out.parent / f"heldout{i}.py").write_text(text)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUMI_CACHE", str(sumi_cache))
        launches = _study(mp, out, (FIRST,))
    return {"out": out, "launches": launches, "payload": json.loads((out / "scaling.json").read_text())}


def test_the_grid_trains_each_cell_for_its_budget(grid):
    out, payload = grid["out"], grid["payload"]
    assert (out / "scaling.md").is_file() and (out / "scaling.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert payload["study"] == "scaling" and payload["settings"]["budgets"] == [FIRST]
    # 1 family x 1 budget x 2 sizes, minus the cell of fewer than 10 steps (listed, not silent)
    assert [(r["budget"], r["size"]) for r in payload["rows"]] == [(FIRST, "16x1")]
    assert [(c["budget"], c["size"], c["steps"]) for c in payload["skipped"]] == [(FIRST, "32x1", 7)]
    assert "fewer than 10" in payload["skipped"][0]["reason"] and "32x1" in (out / "scaling.md").read_text()
    assert grid["launches"] == 1  # one `sumi train` per cell trained
    _check_rows(payload, out)
    # one size, one budget: no fit, and the report says why
    family = payload["families"][OBJECTIVE]
    assert family["loss_law"] is None and "needs 3" in family["loss_law_note"]
    assert [p["optimum"]["source"] for p in family["budgets"]] == ["best measured"]
    assert "needs 3" in family["budgets"][0]["note"]


def test_resume_measures_only_what_is_missing_and_a_larger_grid_trains_only_new_cells(grid, sumi_cache,
                                                                                       monkeypatch):
    from sumi.evaluate import likelihood

    monkeypatch.setenv("SUMI_CACHE", str(sumi_cache))
    out, before = grid["out"], grid["payload"]
    scored = []
    real = likelihood.nelbo_texts
    monkeypatch.setattr(likelihood, "nelbo_texts", lambda *a, **k: scored.append(1) or real(*a, **k))
    # a kill during the last evaluation: its point never reached the file; the reports were never written
    for name in ("scaling.json", "scaling.md", "scaling.png"):
        (out / name).unlink()
    lines = (out / "points.jsonl").read_text().splitlines()
    (out / "points.jsonl").write_text("".join(line + "\n" for line in lines[:-1]))
    assert _study(monkeypatch, out, (FIRST,), "--resume") == 0 and len(scored) == 1
    after = json.loads((out / "scaling.json").read_text())
    assert after["rows"] == before["rows"] and after["skipped"] == before["skipped"]
    with pytest.raises(SystemExit) as e:  # without --resume an existing study is refused
        _study(monkeypatch, out, (FIRST,))
    assert e.value.code == 2

    # one more budget with the same runs: only its two cells are trained and scored
    scored.clear()
    assert _study(monkeypatch, out, (FIRST, MORE), "--resume") == 2 and len(scored) == 2
    larger = json.loads((out / "scaling.json").read_text())
    assert larger["rows"][:1] == before["rows"]
    assert [(r["budget"], r["size"]) for r in larger["rows"]] == [(FIRST, "16x1"), (MORE, "16x1"), (MORE, "32x1")]
    _check_rows(larger, out)


def test_an_interrupted_training_exits_130_and_says_how_to_resume(grid, sumi_cache, monkeypatch, capsys):
    monkeypatch.setenv("SUMI_CACHE", str(sumi_cache))

    def interrupted(self, run, position=""):
        raise KeyboardInterrupt  # what RunCache.ensure raises when its `sumi train` exits with 130

    monkeypatch.setattr(runs_module.RunCache, "ensure", interrupted)
    out = grid["out"].parent / "interrupted"
    heldout = str(grid["out"].parent / "heldout0.py")
    assert main(["study", "scaling", "--objectives", OBJECTIVE, "--budgets", str(MORE), "--sizes", SIZES,
                 "--heldout", heldout, "--no-progress", "--out", str(out)]) == 130
    assert "--resume" in capsys.readouterr().err and not (out / "scaling.json").exists()


@pytest.mark.parametrize("flags, words", [
    (["--budgets", "0", "--sizes", "32x2"], ["--budgets", "'0'", ">= 1"]),
    (["--budgets=-2e11", "--sizes", "32x2"], ["--budgets", "'-2e11'"]),
    (["--budgets", "1e11,lots", "--sizes", "32x2"], ["--budgets", "'lots'"]),
    (["--budgets", "1e11", "--sizes", "32x2", "--objectives", "uniform,diffusion"], ["--objectives", "'diffusion'"]),
    (["--budgets", "1e11", "--sizes", "32"], ["--sizes", "'32'", "HIDDENxLAYERS"]),
    (["--budgets", "1e11", "--sizes", "32x2,64x0"], ["--sizes", "'64x0'"]),
    (["--budgets", "1e11", "--sizes", "24x2"], ["--sizes 24x2", "multiple", "head_dim (16)"]),
    (["--budgets", "1e11", "--sizes", "80x2"], ["--sizes 80x2", "5 query heads", "groups of 2"]),
    (["--budgets", "1e11"], ["--budgets and --sizes"]),
    (["--preset", "tiny", "--recipe", "sumi_1b"], ["--preset tiny", "--recipe sumi_1b"]),
    (["--budgets", "1e11", "--sizes", "512x2", "--recipe", "sumi_150m"], ["--heldout"]),
    (["--budgets", "1e11", "--sizes", "512x2", "--recipe", "sumi_150m", "--heldout", "x"], ["--data"]),
    (["--preset", "tiny", "--points", "0"], ["--points", ">= 1", "0"]),
])
def test_bad_flags_are_one_line_usage_errors(flags, words, tmp_path, capsys, sumi_cache, monkeypatch):
    monkeypatch.setenv("SUMI_CACHE", str(sumi_cache))
    with pytest.raises(SystemExit) as e:
        main(["study", "scaling", "--out", str(tmp_path / "out"), "--no-progress", *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sumi study: error:")
    assert all(w in err for w in words), err
    assert not (tmp_path / "out").exists()  # nothing trained, nothing written


def test_the_shape_rule_gives_back_the_recipes_own_models():
    def shaped(base, hidden, layers):
        sets = dict(s.removeprefix("model.").split("=") for s in shape_overrides(base, Shape(hidden, layers)))
        return base.replace(**{k: int(v) for k, v in sets.items()})

    assert shaped(train_tiny().model, 64, 2) == train_tiny().model
    assert shaped(sumi_7b(), 512, 14) == sumi_150m()
    assert shaped(sumi_150m(), 4096, 36) == sumi_7b()


def test_summaries_recover_a_known_law_from_synthetic_cells(tmp_path):
    # per budget C an exact isoFLOP parabola in ln N around N*(C) = 0.1 C^0.5 with minimum L*(C) = 30 C^-0.05
    budgets = [1e10, 1e11, 1e12, 1e13]
    rows = []
    for c in budgets:
        n_opt, l_opt = 0.1 * c ** 0.5, 30 * c ** -0.05
        for k, ratio in enumerate((0.2, 0.5, 1.3, 3.0, 7.0)):
            n = n_opt * ratio
            rows.append({"family": "uniform", "budget": c, "size": f"s{k}", "params": n, "bound": True,
                         "loss": l_opt + 0.07 * math.log(ratio) ** 2})
            # a minimum beyond the largest size (ratio e^3), and a profile that curves downward (no minimum):
            # the best measured size is the fallback of both
            rows.append({"family": "ar", "budget": c, "size": f"s{k}", "params": n, "bound": False,
                         "loss": l_opt + 0.07 * (math.log(ratio) - 3) ** 2})
            rows.append({"family": "masked", "budget": c, "size": f"s{k}", "params": n, "bound": True,
                         "loss": l_opt + 1 - 0.07 * math.log(ratio) ** 2})
    families = summarize(rows)
    uniform = families["uniform"]
    for c, p in zip(budgets, uniform["budgets"]):
        assert p["optimum"]["source"] == "parabola" and p["note"] is None
        assert p["optimum"]["params"] == pytest.approx(0.1 * c ** 0.5, rel=1e-9)
        assert p["optimum"]["loss"] == pytest.approx(30 * c ** -0.05, rel=1e-9)
    law = uniform["loss_law"]
    assert (law["a"], law["b"]) == (pytest.approx(30, rel=1e-8), pytest.approx(0.05, rel=1e-8))
    assert law["b_stderr"] < 1e-9 and law["compute"] == budgets
    n_law = uniform["params_law"]
    assert (n_law["a"], n_law["b"]) == (pytest.approx(0.1, rel=1e-8), pytest.approx(-0.5, rel=1e-8))
    for family, why in (("ar", "outside the sizes measured"), ("masked", "do not curve upward")):
        entry = families[family]
        assert entry["bound"] is (family == "masked")
        assert entry["params_law"] is None and "0 budget(s)" in entry["params_law_note"]
        for c, p in zip(budgets, entry["budgets"]):
            best = min((r for r in rows if r["family"] == family and r["budget"] == c), key=lambda r: r["loss"])
            assert p["optimum"] == {"params": best["params"], "loss": best["loss"], "size": "s4",
                                    "source": "best measured"}
            assert why in p["note"]  # why there is no optimum from the fit, said next to it
        assert entry["loss_law"] is not None  # the fallback losses still have a law across budgets
    assert families["ar"]["budgets"][0]["parabola"]["size"] == pytest.approx(0.1 * 1e10 ** 0.5 * math.exp(3))
    payload = {"families": families}
    assert plot_scaling(payload, tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
