"""What every ``sumi`` command that loads a model shares (``sumi.cli_common``), checked on each
command: ``--threads`` sets torch's thread count and ``--threads 0`` is refused; ``--device cuda``
without CUDA, a binary ``--tokenizer`` and a model whose weights are NaN are one-line errors with
exit status 2 (never a traceback, never a printed NaN or noise with exit status 0); and
``sumi eval harness`` passes lm-eval's own options through.  Models are the tiny preset with
random weights (``--model tiny``) or saved by ``sumi.save_pretrained``."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import sumi
from sumi.cli import main, parse_args
from sumi.configs import tiny
from sumi.tokenizer import SumiTokenizer

SMALL = ["--canvas-length", "16"]
GENERATION = ["--steps", "1", "--max-new-tokens", "2", *SMALL]


def _commands(model: str, tmp_path) -> dict[str, list[str]]:
    """Each model-loading command, as small as it runs."""
    (doc := tmp_path / "doc.txt").write_text("def f(x):\n    return x\n")
    return {
        "generate": ["generate", "--model", model, "--prompt", "def", *GENERATION],
        "eval nelbo": ["eval", "nelbo", "--model", model, "--data", str(doc), "--points", "1", *SMALL],
        "probe revision": ["probe", "revision", "--model", model, "--prompt", "def", "--out", str(tmp_path / "rev"),
                           "--budgets", "1", "--no-progress", *GENERATION],
        "probe commitment": ["probe", "commitment", "--model", model, "--prompt", "def", "--out",
                             str(tmp_path / "com"), "--no-progress", *GENERATION],
    }


COMMANDS = ["generate", "eval nelbo", "probe revision", "probe commitment"]


def _one_line_error(capsys, argv: list[str]) -> str:
    """Run ``sumi ARGV``, expecting exit status 2, nothing on stdout and exactly one error line
    on stderr (progress bars aside); returns that line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    captured = capsys.readouterr()
    err = captured.err
    lines = [line for line in err.replace("\r", "\n").split("\n") if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert exc.value.code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert captured.out == ""  # nothing that looks like a result
    assert errors[0].startswith(f"sumi {argv[0]}: error: "), err
    return errors[0]


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """A saved tiny model whose weights are all NaN, with its tokenizer.json."""
    tok = SumiTokenizer.default()
    config = tiny(vocab_size=tok.vocab_size, bos_token_id=tok.bos_id, eos_token_id=tok.eos_id,
                  pad_token_id=tok.pad_id)
    model = sumi.Sumi.initialized(config, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    path = tmp_path_factory.mktemp("nan_model")
    sumi.save_pretrained(model, path)
    tok.save(path)
    return path


@pytest.fixture
def threads():
    """Restores torch's thread count after a test that sets it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


# -- --threads ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_threads_sets_torchs_thread_count(tmp_path, capsys, threads, command):
    torch.set_num_threads(1)
    assert main(_commands("tiny", tmp_path)[command] + ["--threads", "2"]) == 0
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize("command", COMMANDS)
def test_threads_zero_is_a_one_line_error(tmp_path, capsys, threads, command):
    line = _one_line_error(capsys, _commands("tiny", tmp_path)[command] + ["--threads", "0"])
    assert "--threads must be >= 1, got 0" in line


# -- --device ------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_cuda_without_cuda_is_a_one_line_error(tmp_path, capsys, monkeypatch, command):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # what a CPU-only machine says
    line = _one_line_error(capsys, _commands("tiny", tmp_path)[command] + ["--device", "cuda"])
    assert "--device cuda: this machine has" in line and "use --device cpu" in line


# -- --tokenizer ----------------------------------------------------------------------------------
@pytest.mark.parametrize("command, model", [(c, m) for c in COMMANDS for m in ("tiny", "nan")]
                         + [("data prepare", None)])
def test_a_binary_tokenizer_is_reported_as_the_tokenizer(tmp_path, capsys, nan_model, command, model):
    """The tokenizer file is read (and blamed) before the model, for every command."""
    (binary := tmp_path / "tokenizer.bin").write_bytes(bytes(range(256)) * 16)
    if command == "data prepare":
        (doc := tmp_path / "doc.txt").write_text("text")
        argv = ["data", "prepare", "--source", str(doc), "--out", str(tmp_path / "out"), "--tokenizer", str(binary)]
    else:
        argv = _commands(str(nan_model) if model == "nan" else model, tmp_path)[command] + ["--tokenizer", str(binary)]
    line = _one_line_error(capsys, argv)
    assert f"{binary} is not a tokenizer.json" in line


# -- non-finite models -----------------------------------------------------------------------------
@pytest.mark.parametrize("command", COMMANDS)
def test_a_model_with_nan_weights_is_a_one_line_error(tmp_path, capsys, nan_model, command):
    """Never noise or ``bits per byte nan`` with exit status 0."""
    line = _one_line_error(capsys, _commands(str(nan_model), tmp_path)[command])
    assert "the model produced non-finite values (its weights may be NaN/inf)" in line


# -- sumi eval harness -----------------------------------------------------------------------------
def test_eval_harness_passes_lm_evals_options_through():
    argv = ["eval", "harness", "--model", "sumi", "--model_args", "pretrained=DIR", "--tasks", "t", "--device", "cpu"]
    args = parse_args(argv)
    assert (args.command, args.eval_command) == ("eval", "harness")
    assert args.harness_args == argv[2:]
    assert parse_args(["eval", "harness"]).harness_args == []
    assert parse_args(["eval", "harness", "run", "--tasks", "t"]).harness_args == ["run", "--tasks", "t"]


# -- the standard-library splits as data -----------------------------------------------------------
def test_eval_nelbo_scores_the_heldout_split(tmp_path, capsys, monkeypatch):
    """``--data stdlib:heldout`` scores exactly the held-out files (the library cut to a few files,
    two of each split, to keep the test fast)."""
    from sumi.data import sources

    heldout, train = sources.stdlib_split("heldout")[:2], sources.stdlib_split("train")[:2]
    monkeypatch.setattr(sources, "stdlib_files", lambda: sorted(heldout + train))
    base = ["eval", "nelbo", "--model", "tiny", "--points", "1", "--json", *SMALL]
    for split, files in (("heldout", heldout), ("train", train)):
        capsys.readouterr()
        assert main([*base, "--data", f"stdlib:{split}"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["documents"] == len(files) and report["bytes"] == sum(p.stat().st_size for p in files)
    assert "unknown standard-library split stdlib:valid" in _one_line_error(capsys, [*base, "--data", "stdlib:valid"])


def test_train_data_names_a_stdlib_split(tmp_path, capsys, monkeypatch):
    """``sumi train --preset tiny`` trains on stdlib:train, ``--data stdlib:heldout`` on the
    held-out files (the preparation is stopped at once: only which split it was asked for matters)."""
    from sumi.train import embedded

    asked = []

    def prepare(seq_len, *, split, progress):
        asked.append(split)
        raise ValueError("stopped before preparing")

    monkeypatch.setattr(embedded, "prepare_embedded", prepare)
    base = ["train", "--preset", "tiny", "--out", str(tmp_path / "run"), "--no-progress"]
    for data, split in (([], "train"), (["--data", "stdlib:train"], "train"), (["--data", "stdlib:heldout"], "heldout")):
        assert "stopped before preparing" in _one_line_error(capsys, [*base, *data])
        assert asked[-1] == split
    for data, message in ((["--data", "stdlib:test"], "unknown standard-library split stdlib:test"),
                          (["--data", "stdlib:train", "--data", "x"], "give it alone"),
                          (["--preset", "sumi_150m", "--data", "stdlib:heldout"], "--preset tiny only")):
        assert message in _one_line_error(capsys, [*base, *data])
    assert len(asked) == 3


# -- sumi generate: samplers per family ------------------------------------------------------------
def test_confidence_on_a_uniform_model_is_a_one_line_error(capsys):
    """Confidence only unmasks: the uniform family (``--model tiny``) has no mask state."""
    line = _one_line_error(capsys, ["generate", "--model", "tiny", "--prompt", "def", "--sampler", "confidence",
                                    *GENERATION])
    assert "sampler 'confidence' only unmasks" in line and "Uniform(vocab_size=512)" in line


def test_train_on_the_heldout_split_packs_only_its_files(tmp_path, monkeypatch, capsys):
    """A real (2-step) run on ``--data stdlib:heldout``: its packed data holds exactly the held-out
    files, in a cache directory of its own beside the training split's."""
    from sumi.data.sources import stdlib_split

    monkeypatch.setenv("SUMI_CACHE", str(tmp_path / "cache"))
    argv = ["train", "--preset", "tiny", "--data", "stdlib:heldout", "--out", str(tmp_path / "run"), "--steps", "2",
            "--no-progress", "--set", "seq_len=64", "--set", "global_batch_size=4", "--set", "micro_batch_size=4"]
    assert main(argv) == 0
    (manifest,) = (tmp_path / "cache").rglob("data-heldout-64/manifest.json")
    assert json.loads(manifest.read_text())["sources"] == [str(p) for p in stdlib_split("heldout")]
    assert not list((tmp_path / "cache").rglob("data-64"))  # the training split was not prepared


# -- start-up -------------------------------------------------------------------------------------
def test_help_and_data_prepare_never_import_torch(tmp_path):
    """Only the chosen command's arguments are built, so ``sumi --help``, an unknown command and
    ``sumi data prepare`` (whose main process only tokenizes and writes arrays) start without
    torch: about 0.04 s instead of 1.7 s.  Each runs in a fresh interpreter that reports whether
    torch was imported."""
    tokenizer = SumiTokenizer.default().save(tmp_path / "tokenizer.json")
    (doc := tmp_path / "doc.txt").write_text("def f(x):\n    return x\n" * 50)
    code = ("import sys\nfrom sumi.cli import main\ntry:\n    rc = main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    rc = e.code\nprint(rc, 'torch' in sys.modules)\n")
    runs = {"--help": (0, ["--help"]), "unknown": (2, ["bogus"]),
            "prepare": (0, ["data", "prepare", "--source", str(doc), "--out", str(tmp_path / "out"), "--tokenizer",
                            str(tokenizer), "--seq-len", "16", "--workers", "1"])}
    for name, (status, argv) in runs.items():
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert proc.stdout.split()[-2:] == [str(status), "False"], (name, proc.stdout[-500:], proc.stderr[-2000:])
    assert (tmp_path / "out" / "manifest.json").is_file()
    # with a command that needs it, torch is there
    proc = subprocess.run([sys.executable, "-c", code, "generate", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split()[-2:] == ["0", "True"], proc.stderr[-2000:]
