"""Synthetic instruction tasks whose answers can be checked exactly (the ``sumi sft --preset tiny``
data; docs/sft.md, "The embedded default").

Three tasks, each a one-turn instruction with one correct answer:

- ``add``: ``"What is 37 + 45?"`` -> ``"82"``, two integers in ``[0, 99]``;
- ``sort``: ``"Sort: 7 2 9 4"`` -> ``"2 4 7 9"``, three to five digits (repeats allowed), ascending;
- ``reverse``: ``"Reverse the word: planet"`` -> ``"tenalp"``, a word of three to six letters from
  the embedded English corpus (:func:`sumi.tokenizer.tiny_corpus`).

Train / held-out split: a prompt is held out when the BLAKE2b digest of ``"task\\0prompt"`` is a
multiple of :data:`HELDOUT_ONE_IN` (:func:`is_heldout`), so the split depends on the prompt
alone (never on the seed or on the order of drawing) and no held-out prompt can appear in the
training examples.  Examples are drawn from a seeded ``torch.Generator``: training examples
uniformly over the task's training prompts (repeats possible), held-out examples as distinct
held-out prompts.  On disk they are JSONL records ``{"prompt", "response", "task"}``
(:func:`write_jsonl`), which ``sumi data prepare --sft`` reads as one user turn and the answer.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from sumi._checks import check_int
from sumi._fs import atomic_write
from sumi.data.sources import jsonl_records

__all__ = ["TASKS", "HELDOUT_ONE_IN", "Example", "is_heldout", "draw", "examples", "task_set", "write_jsonl",
           "read_jsonl", "reverse_words"]

TASKS = ("add", "sort", "reverse")
"""The task names, in the order a task set lists them."""
HELDOUT_ONE_IN = 10
"""One prompt in 10 (10%) is held out (:func:`is_heldout`)."""
_MAX_DRAWS_PER_EXAMPLE = 1000  # a split that never yields a prompt is a bug, not a slow loop


@dataclass(frozen=True)
class Example:
    """One instruction: ``prompt`` (the user's turn), its exact ``response``, the ``task`` name."""

    task: str
    prompt: str
    response: str

    def record(self) -> dict[str, str]:
        """The JSONL record ``{"prompt", "response", "task"}``."""
        return {"prompt": self.prompt, "response": self.response, "task": self.task}


def is_heldout(task: str, prompt: str) -> bool:
    """Whether ``prompt`` of ``task`` belongs to the held-out split: the BLAKE2b digest (8 bytes,
    big-endian) of the UTF-8 bytes of ``task + "\\0" + prompt`` is a multiple of :data:`HELDOUT_ONE_IN`."""
    digest = hashlib.blake2b(f"{task}\0{prompt}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % HELDOUT_ONE_IN == 0


@functools.lru_cache(maxsize=1)
def reverse_words() -> tuple[str, ...]:
    """The words of the ``reverse`` task: the distinct lowercase words of three to six letters
    (``[a-z]``) of the embedded corpus, sorted."""
    from sumi.tokenizer import tiny_corpus

    return tuple(sorted({w for w in re.findall(r"\b[a-z]+\b", tiny_corpus()) if 3 <= len(w) <= 6}))


def _randint(generator: torch.Generator, high: int) -> int:
    return int(torch.randint(high, (1,), generator=generator).item())


def _add(generator: torch.Generator) -> tuple[str, str]:
    a, b = _randint(generator, 100), _randint(generator, 100)
    return f"What is {a} + {b}?", str(a + b)


def _sort(generator: torch.Generator) -> tuple[str, str]:
    digits = [_randint(generator, 10) for _ in range(3 + _randint(generator, 3))]
    return "Sort: " + " ".join(map(str, digits)), " ".join(map(str, sorted(digits)))


def _reverse(generator: torch.Generator) -> tuple[str, str]:
    words = reverse_words()
    word = words[_randint(generator, len(words))]
    return f"Reverse the word: {word}", word[::-1]


_DRAW: dict[str, Callable[[torch.Generator], tuple[str, str]]] = {"add": _add, "sort": _sort, "reverse": _reverse}


def _check_task(task: str) -> str:
    if task not in _DRAW:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return task


def draw(task: str, generator: torch.Generator) -> Example:
    """One example of ``task``, its prompt drawn uniformly from the task's prompts (either split)."""
    prompt, response = _DRAW[_check_task(task)](generator)
    return Example(task, prompt, response)


def examples(task: str, n: int, split: str, generator: torch.Generator) -> list[Example]:
    """``n`` examples of ``task`` from ``split``: ``"train"`` (drawn uniformly from the training
    prompts, repeats possible) or ``"heldout"`` (distinct held-out prompts, in the order drawn).

    Raises:
        ValueError: an unknown task or split, or (``"heldout"``) ``n`` larger than the distinct
            held-out prompts found in ``1000 n`` draws (the ``reverse`` task has about 120).
    """
    _check_task(task)
    check_int("n", n, 0)
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    held, chosen, seen = split == "heldout", [], set()
    for _ in range(_MAX_DRAWS_PER_EXAMPLE * max(n, 1)):
        if len(chosen) == n:
            return chosen
        example = draw(task, generator)
        if is_heldout(task, example.prompt) != held or (held and example.prompt in seen):
            continue
        seen.add(example.prompt)
        chosen.append(example)
    if len(chosen) == n:
        return chosen
    raise ValueError(f"task {task!r} has fewer than n={n} distinct {split} prompts ({len(chosen)} found in "
                     f"{_MAX_DRAWS_PER_EXAMPLE * n} draws): ask for fewer")


def task_set(n_train: int, n_heldout: int, *, seed: int = 0, tasks: Sequence[str] = TASKS,
             ) -> tuple[list[Example], list[Example]]:
    """``(train, heldout)``: ``n_train`` training and ``n_heldout`` held-out examples of each task.

    One generator seeded with ``seed`` draws the held-out examples task by task in the order of
    ``tasks`` (so they do not depend on ``n_train``), then the training ones, which it then
    shuffles (the tasks interleaved).  The same arguments give the same examples.
    """
    check_int("seed", seed, 0)
    generator = torch.Generator().manual_seed(seed)
    heldout = [e for task in tasks for e in examples(task, n_heldout, "heldout", generator)]
    train = [e for task in tasks for e in examples(task, n_train, "train", generator)]
    order = torch.randperm(len(train), generator=generator).tolist()
    return [train[i] for i in order], heldout


def write_jsonl(path: str | os.PathLike, items: Iterable[Example]) -> Path:
    """Write ``items`` to ``path`` (atomically), one :meth:`Example.record` per line; a file that
    holds exactly that already is left as it is (its modification time too).  Returns the path."""
    path = Path(path)
    text = "".join(json.dumps(e.record(), ensure_ascii=False) + "\n" for e in items)
    if path.is_file() and path.read_text(encoding="utf-8") == text:
        return path
    return atomic_write(path, text)


def read_jsonl(path: str | os.PathLike) -> list[Example]:
    """The examples of a file written by :func:`write_jsonl` (every line ``{"prompt", "response",
    "task"}``, all strings).

    Raises:
        ValueError: a line that is not such a record, naming ``file:line``.
    """
    found = []
    for number, record in jsonl_records(path):
        if not all(isinstance(record.get(k), str) for k in ("prompt", "response", "task")):
            raise ValueError(f"{path}:{number}: expected a record with string fields prompt, response and task")
        found.append(Example(record["task"], record["prompt"], record["response"]))
    return found

