"""Mixture config files (``sumi.data.mixture_file``): TOML and JSON parse alike, paths resolve
against the file, every mistake is one ``ValueError`` naming the file, the shipped examples are
the released recipe's mix, and ``sumi train --data mix.toml`` trains on it and resumes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sumi.cli import main
from sumi.configs.train import PHASES
from sumi.data import prepare
from sumi.data.mixture_file import MixtureSpec, is_mixture_file, load_mixture_file
from sumi.data.spec import mixture_file_arg, parse_data_args
from sumi.tokenizer import SumiTokenizer, tiny_corpus

REPO = Path(__file__).resolve().parents[2]

TOML = """\
# a comment
[sources.code]
path = "data/code"   # relative: read from the file's directory
weight = 3

[sources.math]
path = "{absolute}"
weight = 1.5

[sources.off]
path = "../elsewhere/off"
weight = 0
"""


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_toml_and_json_parse_alike_and_paths_resolve_against_the_file(tmp_path, monkeypatch):
    absolute = tmp_path / "abs" / "math"
    toml = _write(tmp_path / "cfg" / "mix.toml", TOML.format(absolute=absolute))
    document = {"sources": {"code": {"path": "data/code", "weight": 3},
                            "math": {"path": str(absolute), "weight": 1.5},
                            "off": {"path": "../elsewhere/off", "weight": 0}}}
    js = _write(tmp_path / "cfg" / "mix.JSON", json.dumps(document))  # the suffix in any case
    expected = MixtureSpec(paths={"code": tmp_path / "cfg" / "data" / "code", "math": absolute,
                                  "off": tmp_path / "cfg" / ".." / "elsewhere" / "off"},
                           weights={"code": 3.0, "math": 1.5, "off": 0.0})
    assert load_mixture_file(toml) == load_mixture_file(js) == expected
    assert list(load_mixture_file(toml).weights) == ["code", "math", "off"]  # the file's order
    assert all(type(w) is float for w in load_mixture_file(toml).weights.values())
    # a relative file name: its paths still resolve against its directory, not the working one
    monkeypatch.chdir(tmp_path)
    spec = load_mixture_file("cfg/mix.toml")
    assert spec.paths["code"] == tmp_path / "cfg" / "data" / "code" and spec.paths["math"] == absolute
    assert spec.paths["off"].resolve() == tmp_path / "elsewhere" / "off"


def test_the_shipped_examples_are_the_released_mix():
    """docs/examples/{mid,long}.toml hold the recipe's weights (sumi.configs.train.PHASES, whose
    mix docs/math.md "Sumi recipe facts" states) and the directories docs/training.md "Phases" names."""
    for phase, seq_len in (("mid", 1184), ("long", 4864)):
        path = REPO / "docs" / "examples" / f"{phase}.toml"
        spec = load_mixture_file(path)
        assert spec.weights == PHASES[phase][2] == {"code": 0.325, "math": 0.297, "general": 0.210, "reasoning": 0.168}
        assert PHASES[phase][1] == seq_len
        assert spec.paths == {name: path.parent / "data" / f"{name}-{seq_len}" for name in PHASES[phase][2]}
    training = (REPO / "docs" / "training.md").read_text()
    assert "--data mid.toml" in training and "--data long.toml" in training
    assert "--data code=data/code-1184" in training  # the NAME=DIR form stays documented


GOOD_SOURCE = '[sources.a]\npath = "a"\nweight = 1\n'
ERRORS = [  # (file name, content, what the message says)
    ("mix.toml", "", r"the top level lacks \['sources'\]"),
    ("mix.toml", '[sources.a]\nweight = 1\n', r"source 'a' lacks \['path'\]"),
    ("mix.toml", '[sources.a]\npath = "a"\n', r"source 'a' lacks \['weight'\]"),
    ("mix.toml", 'note = "x"\n' + GOOD_SOURCE, r"unknown key \['note'\] in the top level"),
    ("mix.toml", '[sources.a]\npath = "a"\nwieght = 1\nweight = 1\n', r"unknown key \['wieght'\] in source 'a'"),
    ("mix.json", '{"sources": {"a": {"path": "a", "weight": 1, "paht": "b", "x": 0}}}',
     r"unknown keys \['paht', 'x'\] in source 'a'"),
    ("mix.toml", '[sources.a]\npath = "a"\nweight = "0.5"\n',
     r"weight of source 'a' must be a finite number, got '0.5'"),
    ("mix.toml", '[sources.a]\npath = "a"\nweight = true\n', r"weight of source 'a' must be a finite number, got True"),
    ("mix.json", '{"sources": {"a": {"path": "a", "weight": [1]}}}', r"weight of source 'a' must be a finite number"),
    ("mix.json", '{"sources": {"a": {"path": "a", "weight": null}}}', r"weight of source 'a' must be a finite number"),
    ("mix.toml", '[sources.a]\npath = "a"\nweight = -0.5\n', r"weight of source 'a' must be in \[0.0, inf\], got -0.5"),
    ("mix.toml", '[sources.a]\npath = "a"\nweight = nan\n', r"weight of source 'a' must be a finite number, got nan"),
    ("mix.toml", '[sources.a]\npath = "a"\nweight = inf\n', r"weight of source 'a' must be a finite number, got inf"),
    ("mix.json", '{"sources": {"a": {"path": "a", "weight": NaN}}}', r"must be a finite number, got nan"),
    ("mix.toml", '[sources.a]\npath = "a"\nweight = 0\n[sources.b]\npath = "b"\nweight = 0.0\n',
     r"at least one weight must be > 0"),
    ("mix.toml", "[sources]\n", r"'sources' must be a non-empty table"),
    ("mix.json", '{"sources": {}}', r"'sources' must be a non-empty table"),
    ("mix.json", '{"sources": [{"path": "a", "weight": 1}]}', r"'sources' must be a non-empty table"),
    ("mix.json", '[1, 2]', r"the top level must be a table"),
    ("mix.toml", "[sources]\na = 0.5\n", r"source 'a' must be a table with keys \['path', 'weight'\], got 0.5"),
    ("mix.toml", '[sources.""]\npath = "a"\nweight = 1\n', r"a source name must be non-empty, got ''"),
    ("mix.json", '{"sources": {" ": {"path": "a", "weight": 1}}}', r"a source name must be non-empty, got ' '"),
    ("mix.toml", '[sources.a]\npath = ""\nweight = 1\n', r"the path of source 'a' must be a non-empty string, got ''"),
    ("mix.toml", '[sources.a]\npath = 3\nweight = 1\n', r"the path of source 'a' must be a non-empty string, got 3"),
    ("mix.toml", '[sources.a]\npath = "a"\nweight = 1\nweight = 2\n', r"invalid TOML: .*line 4"),
    ("mix.toml", '[sources.a]\npath = "a"\nweight = = 1\n', r"invalid TOML: .*line 3"),
    ("mix.json", '{"sources": {\n"a": {"path": "a", "weight": 1},\n}}', r"invalid JSON: .*line 3"),
    ("mix.json", '{"sources": {"a": {"path": "a", "weight": 1}, "a": {"path": "b", "weight": 2}}}',
     r"invalid JSON: the key 'a' appears twice"),
    ("mix.yaml", GOOD_SOURCE, r"unknown suffix '.yaml', expected .toml or .json"),
]


@pytest.mark.parametrize(("name", "text", "match"), ERRORS)
def test_every_mistake_is_one_value_error_naming_the_file(tmp_path, name, text, match):
    path = _write(tmp_path / name, text)
    with pytest.raises(ValueError, match=match) as err:
        load_mixture_file(path)
    message = str(err.value)
    assert message.startswith(f"mixture file {path}: ") and "\n" not in message, message


def test_unreadable_files_are_value_errors_naming_the_file(tmp_path):
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "latin.toml").write_bytes('[sources.caf\xe9]\npath = "a"\nweight = 1\n'.encode("latin-1"))
    for name, match in [("missing.toml", "no such file"), ("dir.json", "cannot read it"), ("latin.toml", "not UTF-8")]:
        with pytest.raises(ValueError, match=f"^mixture file {tmp_path / name}: {match}"):
            load_mixture_file(tmp_path / name)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1).filter(str.strip),
                       st.floats(0, allow_infinity=False),
                       min_size=1, max_size=5).filter(lambda w: sum(w.values()) > 0))
def test_any_valid_mixture_reads_back_exactly_from_toml_and_json(tmp_path_factory, weights):
    """Names (any non-blank text without control characters) and weights (any finite float >= 0)
    survive both formats bit for bit (a JSON string without control characters or ``\\u``
    escapes is a TOML basic string, and ``repr`` of a float is a TOML float)."""
    root = tmp_path_factory.mktemp("mix")
    toml = "".join(f"[sources.{json.dumps(name, ensure_ascii=False)}]\npath = {json.dumps(f'd{i}')}\nweight = {w!r}\n"
                   for i, (name, w) in enumerate(weights.items()))
    document = {"sources": {name: {"path": f"d{i}", "weight": w} for i, (name, w) in enumerate(weights.items())}}
    expected = MixtureSpec(paths={name: root / f"d{i}" for i, name in enumerate(weights)}, weights=weights)
    assert load_mixture_file(_write(root / "m.toml", toml)) == expected
    assert load_mixture_file(_write(root / "m.json", json.dumps(document))) == expected


def test_data_args_take_a_mixture_file_alone(tmp_path):
    mix = _write(tmp_path / "mix.toml", GOOD_SOURCE)
    assert mixture_file_arg([str(mix)]) == MixtureSpec(paths={"a": tmp_path / "a"}, weights={"a": 1.0})
    assert mixture_file_arg([str(mix)], ["steps=3", "mixture_x=1"]) is not None  # other keys are --set's
    assert mixture_file_arg(["data/code"]) is None and mixture_file_arg(["a=x", "b=y"]) is None
    (tmp_path / "prepared.json").mkdir()  # a prepared directory may be called anything
    prepared = str(tmp_path / "prepared.json")
    assert not is_mixture_file(prepared) and mixture_file_arg([prepared]) is None
    assert parse_data_args([prepared]) == tmp_path / "prepared.json"
    for items, sets, match in [([str(mix), "b=y"], [], "give it alone"), (["b=y", str(mix)], [], "give it alone"),
                               ([str(mix), str(mix)], [], "give it alone"),
                               ([str(mix)], ['mixture={"a": 1}'], "use one of the two"),
                               ([str(mix)], ["mixture=null"], "use one of the two")]:
        with pytest.raises(ValueError, match=match):
            mixture_file_arg(items, sets)
    with pytest.raises(ValueError, match="names a mixture file"):
        parse_data_args([str(mix)])


# -- sumi train --data mix.toml ---------------------------------------------------------------
def _prepare(tok, paragraphs: list[str], root: Path) -> Path:
    root.mkdir(parents=True)
    files = []
    for i, para in enumerate(paragraphs):
        files.append(root / f"doc{i:03d}.txt")
        files[-1].write_text(para)
    prepare([str(f) for f in files], tok, root / "packed", 32)
    return root / "packed"


def _losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as err:
        main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert err.value.code == 2 and len(lines) == 1, lines
    return lines[0]


def test_cli_trains_on_a_mixture_file_and_resumes_with_it(tmp_path, capsys):
    tok = SumiTokenizer.default()
    paragraphs = tiny_corpus().split("\n\n")
    _prepare(tok, paragraphs[:30], tmp_path / "data" / "prose")
    _prepare(tok, paragraphs[30:50], tmp_path / "data" / "more")
    mix = _write(tmp_path / "mix.toml", '[sources.prose]\npath = "data/prose/packed"\nweight = 3\n\n'
                                        '[sources.more]\npath = "data/more/packed"\nweight = 1\n')
    out = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data", str(mix), "--out", str(out), "--steps", "3", "--checkpoint-every",
            "2", "--set", "seq_len=32", "--set", "global_batch_size=4", "--set", "micro_batch_size=2", "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    config = json.loads((out / "config.json").read_text())
    assert config["mixture"] == {"prose": 3.0, "more": 1.0} and config["seq_len"] == 32  # the file, then --set
    straight = _losses(out)
    assert len(straight) == 3
    # resume from the step-2 checkpoint with the same file: steps 3 replays exactly
    shutil.rmtree(out / "checkpoints" / "step-00000003")
    shutil.rmtree(out / "model")
    assert main([*argv, "--resume"]) == 0
    assert _losses(out) == straight
    # other weights in the file are other data: resuming refuses
    mix.write_text(mix.read_text().replace("weight = 1\n", "weight = 2\n"))
    shutil.rmtree(out / "checkpoints" / "step-00000003")
    refusal = _usage_error([*argv, "--resume"], capsys)
    assert "resuming would not replay" in refusal and "'more': 2.0" in refusal, refusal
    # the same sources and weights in another order interleave the rows otherwise: also refused
    mix.write_text('[sources.more]\npath = "data/more/packed"\nweight = 1\n\n'
                   '[sources.prose]\npath = "data/prose/packed"\nweight = 3\n')
    refusal = _usage_error([*argv, "--resume"], capsys)
    assert "in another order" in refusal, refusal
    for extra, match in [(["--set", 'mixture={"prose": 1, "more": 1}'], "use one of the two"),
                         (["--data", f"x={tmp_path}"], "give it alone")]:
        assert match in _usage_error([*argv, *extra], capsys)
    missing = tmp_path / "nope.json"
    assert _usage_error(["train", "--preset", "tiny", "--data", str(missing), "--out", str(tmp_path / "r2"),
                         "--no-progress"], capsys) == f"sumi train: error: mixture file {missing}: no such file"
