"""The synthetic instruction tasks of ``sumi sft --preset tiny`` (answers recomputed from the
prompts, a disjoint and deterministic split) and exact-match scoring."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch

import sumi.sft.evaluate as evaluate
from sumi.sft.evaluate import exact_match, score, table
from sumi.sft.tasks import (HELDOUT_ONE_IN, TASKS, Example, examples, is_heldout, read_jsonl, reverse_words, task_set,
                            write_jsonl)
from sumi.tokenizer import SumiTokenizer, tiny_corpus


def _answer(prompt: str) -> tuple[str, str]:
    """``(task, answer)`` of a prompt, worked out here from its text alone."""
    if m := re.fullmatch(r"What is (\d{1,2}) \+ (\d{1,2})\?", prompt):
        return "add", str(int(m[1]) + int(m[2]))
    if m := re.fullmatch(r"Sort: (\d(?: \d){2,4})", prompt):
        return "sort", " ".join(sorted(m[1].split(" "), key=int))
    if m := re.fullmatch(r"Reverse the word: ([a-z]{3,6})", prompt):
        assert re.search(rf"\b{m[1]}\b", tiny_corpus())  # a word of the embedded corpus
        return "reverse", "".join(reversed(m[1]))
    raise AssertionError(f"a prompt of no task: {prompt!r}")


def _held(task: str, prompt: str) -> bool:
    """The documented split rule, written out: BLAKE2b-64 of task NUL prompt, big-endian, mod 10."""
    digest = hashlib.blake2b(task.encode() + b"\x00" + prompt.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10 == 0


def test_every_answer_is_the_one_worked_out_from_its_prompt():
    train, heldout = task_set(400, 60, seed=3)
    assert len(train) == 3 * 400 and len(heldout) == 3 * 60
    for e in train + heldout:
        assert _answer(e.prompt) == (e.task, e.response), e
    assert [sum(e.task == t for e in train) for t in TASKS] == [400, 400, 400]
    assert [e.task for e in heldout] == [t for t in TASKS for _ in range(60)]
    # the draws cover the tasks' ranges: both operands up to 99, three to five digits, short and long words
    adds = [tuple(map(int, re.findall(r"\d+", e.prompt))) for e in train if e.task == "add"]
    assert max(a for a, _ in adds) == 99 and min(b for _, b in adds) == 0
    assert {len(e.response.split()) for e in train if e.task == "sort"} == {3, 4, 5}
    assert {len(e.response) for e in train if e.task == "reverse"} == {3, 4, 5, 6}


def test_the_split_is_disjoint_fixed_by_the_prompt_and_about_one_in_ten():
    train, heldout = task_set(2000, 100, seed=0)
    assert not {(e.task, e.prompt) for e in train} & {(e.task, e.prompt) for e in heldout}
    assert all(_held(e.task, e.prompt) and is_heldout(e.task, e.prompt) for e in heldout)
    assert not any(_held(e.task, e.prompt) for e in train)
    assert len({(e.task, e.prompt) for e in heldout}) == len(heldout)  # distinct held-out prompts
    # the rule over a whole task's prompt space: the share is 1/10 within binomial noise (sd 30)
    everything = [f"What is {a} + {b}?" for a in range(100) for b in range(100)]
    held = sum(is_heldout("add", p) == _held("add", p) and _held("add", p) for p in everything)
    assert HELDOUT_ONE_IN == 10 and 850 < held < 1150
    assert sum(_held("add", p) for p in everything) == held
    words = reverse_words()
    assert words == tuple(sorted(set(words))) and all(re.fullmatch(r"[a-z]{3,6}", w) for w in words)


def test_the_examples_are_deterministic_and_the_held_out_ones_do_not_depend_on_the_training_count():
    a, b = task_set(300, 40, seed=7), task_set(300, 40, seed=7)
    assert a == b
    other = task_set(300, 40, seed=8)
    assert other[0] != a[0] and other[1] != a[1]
    assert task_set(50, 40, seed=7)[1] == a[1]  # the held-out set is the same whatever n_train
    g = torch.Generator().manual_seed(1)
    first = examples("sort", 5, "train", g)
    assert first == examples("sort", 5, "train", torch.Generator().manual_seed(1))


def test_bad_arguments_are_one_line_errors():
    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="task must be one of add, sort, reverse, got 'mul'"):
        examples("mul", 1, "train", g)
    with pytest.raises(ValueError, match="split must be 'train' or 'heldout', got 'test'"):
        examples("add", 1, "test", g)
    with pytest.raises(ValueError, match="n must be an int >= 0"):
        examples("add", -1, "train", g)
    # about 120 held-out words: 500 distinct ones cannot be found
    with pytest.raises(ValueError, match=r"task 'reverse' has fewer than n=500 distinct heldout prompts"):
        examples("reverse", 500, "heldout", g)


def test_jsonl_round_trip_and_errors(tmp_path):
    train, _ = task_set(5, 1, seed=0)
    path = write_jsonl(tmp_path / "train.jsonl", train)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [{"prompt": e.prompt, "response": e.response, "task": e.task}
                                                    for e in train]
    assert read_jsonl(path) == train
    written = path.stat().st_mtime_ns
    path.touch()  # a newer time: a rewrite would replace the file (and its time)
    touched = path.stat().st_mtime_ns
    assert write_jsonl(path, train) == path and path.stat().st_mtime_ns == touched >= written
    write_jsonl(path, train[:2])
    assert read_jsonl(path) == train[:2]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n\n" + '{"prompt": "x", "response": 1, "task": "add"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: expected a record with string fields"):
        read_jsonl(bad)


# -- exact-match scoring -------------------------------------------------------------------------
def test_exact_match_ignores_only_surrounding_whitespace():
    assert exact_match("82", "82") and exact_match(" 82\n", "82") and exact_match("2 4 7", " 2 4 7 ")
    assert not exact_match("8 2", "82") and not exact_match("082", "82") and not exact_match("", "82")
    assert not exact_match("2 4  7", "2 4 7") and not exact_match("Tenalp", "tenalp")


class _Model:
    """Stands in for a model in :func:`score`'s calls to ``chat_generate`` (which is replaced)."""

    def __init__(self, causal: bool = False) -> None:
        self.config = type("Config", (), {"causal": causal})()


@pytest.mark.parametrize("causal", [False, True])
def test_score_counts_per_task_on_the_training_layout(monkeypatch, causal):
    """Answers from a stand-in for ``chat_generate``: every call gets prompts of one length P (the
    chat template's, counted here from its definition) with the budget ``B = seq_len - P - 2`` on a
    canvas of ``seq_len``, decoded without draws (a canvas: one position per step, the most
    confident first, temperature 0, B steps; ``ar``: the argmax); the scores count exact answers
    per task."""
    tok = SumiTokenizer.default()
    seq_len = 48
    heldout = [Example("add", "What is 3 + 4?", "7"), Example("add", "What is 30 + 40?", "70"),
               Example("sort", "Sort: 3 1 2", "1 2 3"), Example("add", "What is 1 + 1?", "2"),
               Example("reverse", "Reverse the word: stone", "enots")]
    wrong = {"What is 30 + 40?", "Reverse the word: stone"}
    calls = []

    def fake(model, tokenizer, conversations, *, template, canvas_length, max_new_tokens, seed, **decoding):
        lengths = {_prompt_length(tokenizer, c) for c in conversations}
        calls.append((lengths, canvas_length, max_new_tokens, decoding))
        answers = {e.prompt: e.response for e in heldout}
        return [" wrong " if c in wrong else f" {answers[c]}\n" for c in conversations]

    monkeypatch.setattr(evaluate, "chat_generate", fake)
    scores = score(_Model(causal), tok, heldout, seq_len, batch_size=2)
    assert list(scores) == ["add", "sort", "reverse"]
    assert [(s.correct, s.n) for s in scores.values()] == [(2, 3), (1, 1), (0, 1)]
    assert scores["add"].accuracy == pytest.approx(2 / 3) and scores["reverse"].accuracy == 0.0
    assert [a["correct"] for a in scores["add"].answers] == [True, False, True]
    assert scores["add"].answers[1] == {"prompt": "What is 30 + 40?", "expected": "70", "answer": " wrong ",
                                        "correct": False}
    for lengths, canvas, budget, decoding in calls:
        (p,) = lengths  # one prompt length per call
        assert canvas == seq_len and budget == seq_len - p - 2
        assert decoding == ({"sampler": "greedy"} if causal else
                            {"sampler": "adaptive", "temperature": 0.0, "tokens_per_step": 1, "steps": budget})
    # one call per prompt length and batch of at most 2 ("What is 3 + 4?" and "What is 1 + 1?" share one)
    groups = {}
    for e in heldout:
        groups.setdefault(_prompt_length(tok, e.prompt), []).append(e)
    assert sorted(p for (p,), *_ in calls) == sorted(p for p, g in groups.items() for _ in range(0, len(g), 2))
    assert len(calls) < len(heldout)
    with pytest.raises(ValueError, match="no answer budget left in seq_len=20"):
        score(_Model(causal), tok, heldout, 20)


def _prompt_length(tokenizer, user_message: str) -> int:
    """The default template's prompt length, from its definition: BOS, <|im_start|> "user\\n" +
    message <|im_end|> "\\n", <|im_start|> "assistant\\n" <|endofprompt|>."""
    encode = lambda text: len(tokenizer.encode(text, add_bos=False))  # noqa: E731
    return 1 + 1 + encode(f"user\n{user_message}") + 1 + encode("\n") + 1 + encode("assistant\n") + 1


def test_table_lists_each_task_in_percent():
    text = table([("add", 100, 0.0, 0.35), ("reverse", 100, None, 0.125)])
    assert text.splitlines() == ["task         n   before    after",
                                 "add        100     0.0%    35.0%",
                                 "reverse    100        -    12.5%"]
