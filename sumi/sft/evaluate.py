"""Exact-match accuracy per task of a model on instruction examples (:mod:`sumi.sft.tasks`;
docs/sft.md, "The embedded default").

Each example's prompt is one user turn, answered by :func:`sumi.sft.chat_generate` on the
training layout of rows of ``seq_len`` tokens (docs/training.md, "Prompted data"): a prompt of
``P`` tokens (chat template included) gets the answer budget ``B = seq_len - P - 2`` on a canvas
of ``seq_len`` positions, exactly the row the model was tuned on, so the examples are generated
in groups of equal ``P``.  Decoding (:data:`DECODING`) draws nothing, so a score is a function
of the weights alone: the diffusion families commit one position per step, the most confident
first, at temperature 0 (``sampler="adaptive"``, ``B`` steps: each position of the budget is
written once, from the argmax); ``"ar"`` models decode left to right with the argmax
(``sampler="greedy"``) and the same budget.  (``"greedy"`` on a canvas, the argmax at every
position at every step, writes the whole answer from the first step: from an all-mask canvas a
masked model then answers every position at once, and scored 0% on ``sort`` where one position
per step scored 97%.)  An answer is correct when it equals the expected response after both are
stripped of leading and trailing whitespace (:func:`exact_match`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sumi._checks import check_int
from sumi.sft.chat import chat_generate
from sumi.sft.tasks import Example
from sumi.sft.template import DEFAULT_TEMPLATE, USER, ChatTemplate

__all__ = ["DECODING", "TaskScore", "exact_match", "score", "table"]

DECODING = {"diffusion": {"sampler": "adaptive", "temperature": 0.0, "tokens_per_step": 1,
                          "steps": "the answer budget"},
            "ar": {"sampler": "greedy"}}
"""How answers are generated (module docstring); nothing is drawn, so the generators' seed (0)
changes nothing."""


def exact_match(answer: str, expected: str) -> bool:
    """Whether ``answer`` is ``expected``, leading and trailing whitespace aside."""
    return answer.strip() == expected.strip()


@dataclass
class TaskScore:
    """One task's result: ``correct`` of ``n`` answers exact; ``answers`` in the examples' order."""

    task: str
    n: int = 0
    correct: int = 0
    answers: list[dict] = field(default_factory=list)  # {"prompt", "expected", "answer", "correct"}

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


def score(model, tokenizer, examples: Sequence[Example], seq_len: int, *, template: ChatTemplate = DEFAULT_TEMPLATE,
          batch_size: int = 256) -> dict[str, TaskScore]:
    """Exact match of ``model`` on ``examples``, per task (in the order tasks first appear).

    Args:
        model: a :class:`sumi.Sumi` of any family.
        tokenizer: its tokenizer (with the template's chat tokens).
        examples: the examples to answer (each prompt is one user turn).
        seq_len: the row length the model was tuned at: the canvas of the diffusion families,
            and for every family the answer budget ``seq_len - P - 2`` of a prompt of ``P`` tokens.
        template: the chat template the model was tuned with.
        batch_size: prompts per :func:`~sumi.sft.chat_generate` call at most.

    Raises:
        ValueError: a prompt that leaves no answer budget in ``seq_len``, or what
            :func:`~sumi.sft.chat_generate` refuses.
    """
    check_int("seq_len", seq_len, 3)
    check_int("batch_size", batch_size, 1)
    scores: dict[str, TaskScore] = {}
    groups: dict[int, list[int]] = {}  # prompt length -> indices of the examples: one layout per call
    for i, example in enumerate(examples):
        scores.setdefault(example.task, TaskScore(example.task))
        length = len(template.prompt_ids(tokenizer, [{"role": USER, "content": example.prompt}]))
        if length + 3 > seq_len:
            raise ValueError(f"the prompt {example.prompt!r} takes {length} tokens with the chat template: no answer "
                             f"budget left in seq_len={seq_len} (prompt + answer + EOS + BOS)")
        groups.setdefault(length, []).append(i)
    answers: dict[int, str] = {}
    for length, indices in sorted(groups.items()):
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            budget = seq_len - length - 2
            decoding = {"sampler": "greedy"} if model.config.causal else \
                {"sampler": "adaptive", "temperature": 0.0, "tokens_per_step": 1, "steps": budget}
            texts = chat_generate(model, tokenizer, [examples[i].prompt for i in chunk], template=template,
                                  canvas_length=seq_len, max_new_tokens=budget, seed=0, **decoding)
            answers.update(zip(chunk, texts))
    for i, example in enumerate(examples):
        result = scores[example.task]
        correct = exact_match(answers[i], example.response)
        result.n += 1
        result.correct += correct
        result.answers.append({"prompt": example.prompt, "expected": example.response, "answer": answers[i],
                               "correct": correct})
    return scores


def table(rows: Sequence[tuple[str, int, float | None, float | None]]) -> str:
    """``(task, n, before, after)`` rows as a fixed-width text table (accuracies in percent)."""
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}%"

    width = max([4, *(len(task) for task, *_ in rows)])
    lines = [f"{'task':<{width}}  {'n':>5}  {'before':>7}  {'after':>7}"]
    lines += [f"{task:<{width}}  {n:>5}  {pct(before):>7}  {pct(after):>7}" for task, n, before, after in rows]
    return "\n".join(lines)
