"""``sumi study pareto`` end to end on the tiny study runs (``study_runs``: reused, never
retrained), checked against independent recomputations: the samples regenerated and scored by
hand, the frontier by brute-force dominance, resume by counting measurements."""

from __future__ import annotations

import json
import math
import shutil
from collections import Counter
from pathlib import Path

import pytest

from sumi.cli import main
from tests.sumi.conftest import STUDY_RUN_STEPS

CANVAS = 32
SAMPLES = 3
BATCH = 2  # batches [0, 1] (seed 0) and [2] (seed 2)
# the default samplers of each family, written out by hand (confidence only unmasks, so only
# families whose prior is all mask; greedy is left out of the defaults: it degenerates)
DEFAULT = {"uniform": {"ancestral", "adaptive"}, "masked": {"ancestral", "adaptive", "confidence"},
           "ar": {"ancestral"}}
TIMING = ("seconds_per_sample", "tokens_per_s", "threads")


def _study(out: Path, study_runs, *extra: str) -> list[str]:
    return ["study", "pareto", "--preset", "tiny", "--train-steps", str(STUDY_RUN_STEPS), "--runs",
            str(study_runs["runs"]), "--canvas-length", str(CANVAS), "--samples", str(SAMPLES), "--batch-size",
            str(BATCH), "--no-progress", "--device", "cpu", "--out", str(out), *extra]


def _run_dirs(study_runs) -> set[str]:
    return {p.name for p in Path(study_runs["runs"]).iterdir()}


@pytest.fixture(scope="module")
def grid(study_runs, sumi_cache, tmp_path_factory):
    """The small grid: the preset's uniform and masked models, plus an ar model given with
    --models (a copy of the judge's weights at another path), steps 2 and 4, default samplers."""
    root = tmp_path_factory.mktemp("pareto")
    ar = root / "arcopy" / "model"
    shutil.copytree(study_runs["judge"], ar)
    before = _run_dirs(study_runs)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SUMI_CACHE", str(sumi_cache))
        assert main(_study(root / "out", study_runs, "--steps", "2,4", "--models", str(ar))) == 0
    assert _run_dirs(study_runs) == before  # the fixture's trainings were reused, none added
    payload = json.loads((root / "out" / "pareto.json").read_text())
    return {"out": root / "out", "payload": payload, "ar": ar}


def test_grid_rows(grid, study_runs):
    rows = grid["payload"]["rows"]
    by_family = Counter(r["family"] for r in rows)
    assert by_family == {"uniform": 2 * 2, "masked": 3 * 2, "ar": 1}  # models x default samplers x steps
    for family, samplers in DEFAULT.items():
        assert {r["sampler"] for r in rows if r["family"] == family} == samplers
    for r in rows:
        if r["family"] == "ar":
            assert r["steps"] is None and r["model"] == "arcopy"
            assert 1 <= r["forward_passes"] <= CANVAS - 3  # positions decoded, at most the answer budget
        else:
            assert r["steps"] in (2, 4) and r["forward_passes"] == r["steps"]
        assert r["samples"] == SAMPLES and r["seconds_per_sample"] > 0
        assert r["tokens_per_s"] == pytest.approx(r["generated_tokens"] / (r["seconds_per_sample"] * SAMPLES))
        assert math.isfinite(r["gen_ppl"]) and r["gen_ppl"] > 1
        assert 0 <= r["entropy"] <= math.log(CANVAS)
    adaptive = [r for r in rows if r["sampler"] == "adaptive"]
    # the canvas (32 - BOS - EOS/BOS = 29 positions) is written within the step budget
    assert {(r["steps"], r["tokens_per_step"]) for r in adaptive} == {(2, 15), (4, 8)}
    names = {m["name"] for m in grid["payload"]["settings"]["models"]}
    assert names == {"uniform", "masked", "arcopy"}  # a run of a study cache is named by its family
    md = (grid["out"] / "pareto.md").read_text()
    assert md.count("\n| ") == len(rows) + 1 and "torch threads" in md


def test_gen_ppl_recomputed(grid, study_runs):
    """One row's samples regenerated with the documented seeds and scored by hand."""
    import sumi
    from sumi.study.models import load_model_dir
    from sumi.study.quality import generative_perplexity

    row = next(r for r in grid["payload"]["rows"] if r["family"] == "masked" and r["sampler"] == "confidence"
               and r["steps"] == 4)
    model, tokenizer = load_model_dir(study_runs["masked"])
    judge, _ = load_model_dir(study_runs["judge"])
    answers = []
    for start in range(0, SAMPLES, BATCH):  # the batch starting at sample j uses seed 0 + j
        n = min(BATCH, SAMPLES - start)
        out = sumi.generate(model, [[tokenizer.bos_id]] * n, CANVAS - 3, canvas_length=CANVAS, steps=4,
                            sampler="confidence", seed=start)
        answers += out.tokens
    assert row["generated_tokens"] == sum(map(len, answers)) == row["tokens"]
    expected = generative_perplexity(judge, answers)
    assert row["gen_ppl"] == pytest.approx(expected.perplexity, rel=1e-9)
    assert row["judge_nats_per_token"] == pytest.approx(expected.nats_per_token, rel=1e-9)
    entropies = []
    for a in answers:  # -sum p ln p per sample, then the mean
        counts = Counter(a)
        entropies.append(-sum(c / len(a) * math.log(c / len(a)) for c in counts.values()))
    assert row["entropy"] == pytest.approx(sum(entropies) / len(entropies), rel=1e-9, abs=1e-12)


def test_frontier_flags_brute_force(grid):
    rows = grid["payload"]["rows"]
    for flag, cost in (("on_frontier_passes", "forward_passes"), ("on_frontier_seconds", "seconds_per_sample")):
        for r in rows:
            dominated = any(q[cost] <= r[cost] and q["gen_ppl"] <= r["gen_ppl"]
                            and (q[cost] < r[cost] or q["gen_ppl"] < r["gen_ppl"]) for q in rows)
            assert r[flag] is (not dominated), (flag, r["model"], r["sampler"], r["steps"])
        listed = {(m, s, n) for m, s, n in grid["payload"]["frontier"][flag.split("_")[-1]]}
        assert listed == {(r["model"], r["sampler"], r["steps"]) for r in rows if r[flag]}
        assert listed


def test_png(grid):
    png = (grid["out"] / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    from matplotlib.image import imread

    image = imread(grid["out"] / "pareto.png")
    assert image.shape[1] > 1000 and image[..., :3].std() > 0.05  # three panels, not a blank canvas


def test_resume_measures_only_the_rest(study_runs, sumi_cache, tmp_path, monkeypatch, grid):
    """A study stopped after two points resumes with --resume: the two are read back (timings
    included), the rest measured; a third run measures nothing and writes the same rows."""
    from sumi.study import frontier

    monkeypatch.setenv("SUMI_CACHE", str(sumi_cache))
    real, calls = frontier._measure_point, []

    def counting(*args, **kwargs):
        calls.append(args[2:5])  # (model, sampler, steps)
        if len(calls) == 3 and stop:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(frontier, "_measure_point", counting)
    out, argv = tmp_path / "out", _study(tmp_path / "out", study_runs, "--steps", "2", "--samplers",
                                         "ancestral,greedy")
    stop = True
    assert main(argv) == 130  # Ctrl-C: one line, what finished is kept
    kept = [json.loads(line)["row"] for line in (out / "points.jsonl").read_text().splitlines()]
    assert len(kept) == 2 and not (out / "pareto.json").exists()
    stop, calls[:] = False, []
    assert main(argv + ["--resume"]) == 0
    assert len(calls) == 2  # 4 points (2 models x 2 samplers x 1 step count): 2 measured now
    rows = json.loads((out / "pareto.json").read_text())["rows"]
    for old in kept:  # read back exactly, timing included
        assert any(all(r[k] == v for k, v in old.items()) for r in rows)
    for name in ("pareto.json", "pareto.md", "pareto.png"):
        (out / name).unlink()
    calls[:] = []
    assert main(argv + ["--resume"]) == 0
    assert calls == [] and json.loads((out / "pareto.json").read_text())["rows"] == rows
    # the same points in the full grid: same samples (fixed seeds), so the same scores
    full = {(r["model"], r["sampler"], r["steps"]): r for r in grid["payload"]["rows"]}
    shared = [r for r in rows if (r["model"], r["sampler"], r["steps"]) in full]
    assert len(shared) == 2  # ancestral at 2 steps, of each model (greedy is not in the default grid)
    for r in shared:
        f = full[(r["model"], r["sampler"], r["steps"])]
        assert {k: v for k, v in r.items() if k not in TIMING and not k.startswith("on_frontier")} == \
            {k: v for k, v in f.items() if k not in TIMING and not k.startswith("on_frontier")}
    with pytest.raises(SystemExit) as e:  # an existing study without --resume is refused
        main(argv)
    assert e.value.code == 2


def test_prompts_continuations(study_runs, sumi_cache, tmp_path, monkeypatch):
    """With --prompts, sample i continues prompt i mod 2 and the judge scores it given the prompt."""
    import sumi
    from sumi.study.models import load_model_dir
    from sumi.study.quality import generative_perplexity

    monkeypatch.setenv("SUMI_CACHE", str(sumi_cache))
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def main(\n\n   \nimport os\n")
    assert main(_study(tmp_path / "out", study_runs, "--steps", "2", "--samplers", "ancestral,confidence",
                       "--prompts", str(prompts), "--max-new-tokens", "12")) == 0
    payload = json.loads((tmp_path / "out" / "pareto.json").read_text())
    assert payload["settings"]["prompts"] == ["def main(", "import os"]
    assert sorted((r["family"], r["sampler"]) for r in payload["rows"]) == [
        ("masked", "ancestral"), ("masked", "confidence"), ("uniform", "ancestral")]
    # confidence was asked for: left out for the uniform model with a note, not an error
    assert [(r["family"], r["sampler"]) for r in payload["skipped"]] == [("uniform", "confidence")]
    assert "Skipped: sampler confidence for" in (tmp_path / "out" / "pareto.md").read_text()
    row = next(r for r in payload["rows"] if r["family"] == "uniform")
    model, tokenizer = load_model_dir(study_runs["uniform"])
    judge, _ = load_model_dir(study_runs["judge"])
    texts = ["def main(", "import os", "def main("]
    answers = []
    for start in range(0, SAMPLES, BATCH):
        batch = [tokenizer.encode(t) for t in texts[start:start + BATCH]]
        answers += sumi.generate(model, batch, 12, canvas_length=CANVAS, steps=2, seed=start).tokens
    expected = generative_perplexity(judge, answers, prompts=[tokenizer.encode(t, add_bos=False) for t in texts])
    assert row["gen_ppl"] == pytest.approx(expected.perplexity, rel=1e-9)


def _usage_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    return err


def test_bad_input(study_runs, tmp_path, capsys):
    uniform, masked, judge = (str(study_runs[k]) for k in ("uniform", "masked", "judge"))
    base = ["study", "pareto", "--no-progress", "--device", "cpu", "--steps", "2", "--samples", "1",
            "--canvas-length", str(CANVAS)]

    def out(name):
        return ["--out", str(tmp_path / name)]

    err = _usage_error(capsys, base + out("a") + ["--models", uniform, judge, "--judge", judge])
    assert "never its own judge" in err
    err = _usage_error(capsys, base + out("b") + ["--models", uniform, "--judge", masked])
    assert "autoregressive" in err and "'masked'" in err
    err = _usage_error(capsys, base + out("c") + ["--models", uniform, "--judge", judge, "--samplers",
                                                  "ancestral,confidence"])
    assert "'confidence' applies to none of the models" in err
    err = _usage_error(capsys, base + out("d") + ["--models", uniform, "--judge", judge, "--samplers", "nope"])
    assert "unknown sampler 'nope'" in err
    err = _usage_error(capsys, base + out("e") + ["--models", uniform, uniform + "/", "--judge", judge])
    assert "given twice" in err
    err = _usage_error(capsys, base + out("f") + ["--models", uniform])
    assert "--judge" in err
    err = _usage_error(capsys, base + out("g") + ["--models", uniform, "--judge", judge, "--steps", "0,2"])
    assert "--steps" in err
    err = _usage_error(capsys, base + out("h") + ["--models", str(tmp_path / "missing"), "--judge", judge])
    assert "missing" in err
    err = _usage_error(capsys, base + out("i") + ["--models", uniform, "--judge", judge, "--canvas-length", "4096"])
    assert "4096" in err
    # nothing was measured before the refusals
    assert not any((tmp_path / n / "points.jsonl").exists() for n in "abcdefghi")


def test_other_tokenizer_goes_through_text(study_runs, sumi_cache, tmp_path, monkeypatch):
    """A model whose tokenizer.json differs from the judge's: answers are decoded with the
    model's tokenizer (specials dropped) and encoded with the judge's."""
    import sumi
    from sumi.study.models import load_model_dir
    from sumi.study.quality import generative_perplexity

    monkeypatch.setenv("SUMI_CACHE", str(sumi_cache))
    other = tmp_path / "retok" / "model"
    shutil.copytree(study_runs["uniform"], other)
    spec = json.loads((other / "tokenizer.json").read_text())
    (other / "tokenizer.json").write_text(json.dumps(spec, indent=1))  # other bytes, same tokens
    assert main(["study", "pareto", "--models", str(other), "--judge", str(study_runs["judge"]), "--steps", "2",
                 "--samplers", "ancestral", "--samples", "2", "--canvas-length", str(CANVAS), "--no-progress",
                 "--device", "cpu", "--out", str(tmp_path / "out")]) == 0
    row = json.loads((tmp_path / "out" / "pareto.json").read_text())["rows"][0]
    model, tokenizer = load_model_dir(other)
    judge, judge_tokenizer = load_model_dir(study_runs["judge"])
    answers = sumi.generate(model, [[tokenizer.bos_id]] * 2, CANVAS - 3, canvas_length=CANVAS, steps=2,
                            seed=0).tokens
    texts = [judge_tokenizer.encode(tokenizer.decode(a), add_bos=False) for a in answers]
    assert any(t != a for t, a in zip(texts, answers))  # uniform noise holds specials: the paths differ
    assert row["gen_ppl"] == pytest.approx(generative_perplexity(judge, texts).perplexity, rel=1e-9)


def test_unscorable_ids_fail_the_point(study_runs, tmp_path, monkeypatch, capsys):
    """A sample holding an id outside the judge's vocabulary (a mask left in the canvas) fails
    the study with the point named, exit 2."""
    import sumi.generation
    from sumi.generation import GenerationOutput

    from sumi.hf.config import config_from_hf
    from sumi.hf.reading import read_config

    mask = config_from_hf(read_config(Path(study_runs["masked"]))).mask_token_id  # the masked family's own id
    assert mask >= config_from_hf(read_config(Path(study_runs["judge"]))).vocab_size
    real = sumi.generation.generate

    def leaves_a_mask(model, prompts, *args, **kwargs):
        out = real(model, prompts, *args, **kwargs)
        return GenerationOutput(tokens=[t + [mask] for t in out.tokens], canvas=out.canvas, seed=out.seed,
                                steps_run=out.steps_run)

    monkeypatch.setattr(sumi.generation, "generate", leaves_a_mask)
    err = _usage_error(capsys, ["study", "pareto", "--models", str(study_runs["masked"]), "--judge",
                                str(study_runs["judge"]), "--steps", "2", "--samplers", "ancestral", "--samples", "1",
                                "--canvas-length", str(CANVAS), "--no-progress", "--device", "cpu", "--out",
                                str(tmp_path / "out")])
    assert "point masked /" in err and "/ ancestral / 2 steps" in err and str(mask) in err
