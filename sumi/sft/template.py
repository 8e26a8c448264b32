"""The chat template: conversations as token ids, for instruction tuning and chat generation.

A conversation is a list of messages ``{"role": "system" | "user" | "assistant", "content": str}``
(:func:`messages_of` reads one from a JSONL record).  :class:`ChatTemplate` lays it out with
three marker tokens that Sumi's tokenizer holds as special tokens (:data:`sumi.tokenizer.CHAT_TOKENS`;
docs/sft.md, "Chat template").  With the default template, the prompt of messages
``m_1 .. m_n`` (the last one not the assistant's) is::

    BOS
    <|im_start|> encode(f"{role_i}\\n{content_i}") <|im_end|> encode("\\n")      for i = 1 .. n
    <|im_start|> encode("assistant\\n") <|endofprompt|>

and a training answer is ``encode(answer) <|im_end|>``.  The markers are inserted as ids, never
encoded from text (the tokenizer encodes a marker typed in a message as ordinary bytes), so no
message can forge a turn.  A prompted row (``sumi data prepare --sft``; docs/training.md,
"Prompted data") is ``prompt | answer | EOS fill | EOS | BOS``: generation cuts the answer at its
first EOS, :meth:`ChatTemplate.answer_text` cuts it at its first ``<|im_end|>``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import string
from collections.abc import Iterable
from pathlib import Path

from sumi.tokenizer import CHAT_TOKENS

ROLES = ("system", "user", "assistant")
"""The roles a message may have."""
ASSISTANT = "assistant"
USER = "user"
_OVERRIDE = "give a template naming markers this tokenizer has with --chat-template FILE (ChatTemplate.from_file)"


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
    """How a conversation becomes token ids (the layout: module docstring; docs/sft.md, "Chat template").

    Every field can be overridden from a JSON file (:meth:`from_file`; an unknown key is an error).

    Attributes:
        message_format: the text of one prompt message between its markers, a ``str.format``
            string with the fields ``{role}`` and ``{content}`` (both required).
        separator: the text after each prompt message's end marker.
        answer_header: the text between the start marker that opens the answer and the
            prompt-end marker (the answer's role line).
        start_token: the marker that opens a message (a token of the tokenizer).
        end_token: the marker that closes a message; a training answer ends with it and
            :meth:`answer_text` cuts a generated answer at its first occurrence.
        prompt_end_token: the marker that closes the prompt, right before the answer.
        bos: whether the prompt starts with the tokenizer's BOS (as every Sumi document does).
    """

    message_format: str = "{role}\n{content}"
    separator: str = "\n"
    answer_header: str = "assistant\n"
    start_token: str = CHAT_TOKENS[0]
    end_token: str = CHAT_TOKENS[1]
    prompt_end_token: str = CHAT_TOKENS[2]
    bos: bool = True

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            kind = bool if field.name == "bos" else str
            if type(value) is not kind:  # bool is an int: no 1 for True, no True for a string
                raise ValueError(f"chat template field {field.name} must be a {kind.__name__}, got {value!r}")
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(self.message_format) if name is not None}
        except ValueError as e:
            raise ValueError(f"chat template field message_format {self.message_format!r} is not a format "
                             f"string: {e}") from None
        if names != {"role", "content"}:
            raise ValueError(f"chat template field message_format must use the fields {{role}} and {{content}} and "
                             f"no others, got {self.message_format!r}")
        markers = (self.start_token, self.end_token, self.prompt_end_token)
        if not all(markers) or len(set(markers)) != 3:
            raise ValueError(f"chat template fields start_token, end_token, prompt_end_token must be three distinct "
                             f"non-empty tokens, got {markers!r}")

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ChatTemplate:
        """The template of a JSON file: an object whose keys are fields of this class (those left
        out keep their defaults), e.g. ``{"message_format": "{role}: {content}", "answer_header":
        "assistant: "}``.  An unknown key, a bad value or a file that is not a JSON object is a
        ``ValueError`` naming the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"cannot read the chat template {path}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"the chat template {path} is not UTF-8 text: {e}") from None
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"the chat template {path} is not JSON: {e}") from None
        if not isinstance(fields, dict):
            raise ValueError(f"the chat template {path} must be a JSON object of fields, got a {type(fields).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise ValueError(f"the chat template {path} has unknown field(s) {', '.join(map(repr, unknown))}: the "
                             f"fields are {', '.join(known)}")
        try:
            return cls(**fields)
        except ValueError as e:
            raise ValueError(f"the chat template {path}: {e}") from None

    def marker_ids(self, tokenizer) -> tuple[int, int, int]:
        """The ids of ``(start_token, end_token, prompt_end_token)`` in ``tokenizer`` (a
        :class:`sumi.SumiTokenizer`), looked up by their strings; a ``ValueError`` naming the
        missing ones says how to override the template."""
        markers = (self.start_token, self.end_token, self.prompt_end_token)
        ids = [tokenizer.backend.token_to_id(marker) for marker in markers]
        missing = [marker for marker, i in zip(markers, ids) if i is None]
        if missing:
            plural = "s" if len(missing) > 1 else ""
            raise ValueError(f"the tokenizer has no {', '.join(map(repr, missing))} token{plural}, "
                             f"which the chat template marks turns with: use a tokenizer that has them (Sumi's and "
                             f"the embedded default do), or {_OVERRIDE}")
        return ids[0], ids[1], ids[2]

    def prompt_ids(self, tokenizer, messages: list[dict]) -> list[int]:
        """The prompt of the conversation ``messages``, which asks for the assistant's next answer
        (layout: module docstring): ``[BOS]``, each message as ``start + encode(message_format)
        + end + encode(separator)``, then ``start + encode(answer_header) + prompt_end``.

        ``messages`` (checked as by :func:`messages_of`) must hold a user message and must not end
        with the assistant's (a conversation with its answer is :meth:`render`'s)."""
        messages = check_messages(messages)
        if messages[-1]["role"] == ASSISTANT:
            raise ValueError(f"messages ends with an assistant message (messages[{len(messages) - 1}]): a prompt asks "
                             "for the assistant's answer; a conversation with its answer is rendered with render()")
        if not any(m["role"] == USER for m in messages):
            raise ValueError(f"messages holds no user message (roles {[m['role'] for m in messages]})")
        start, end, prompt_end = self.marker_ids(tokenizer)
        separator = tokenizer.encode(self.separator, add_bos=False)
        ids = [tokenizer.bos_id] if self.bos else []
        for m in messages:
            text = self.message_format.format(role=m["role"], content=m["content"])
            ids += [start, *tokenizer.encode(text, add_bos=False), end, *separator]
        return ids + [start, *tokenizer.encode(self.answer_header, add_bos=False), prompt_end]

    def render(self, tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
        """A training conversation as ``(prompt_ids, response_ids)``: the last message is the
        assistant's answer; ``prompt_ids = prompt_ids(messages[:-1])`` and ``response_ids =
        encode(answer) + [end]``.  The prompted row adds the EOS fill and the pinned EOS, BOS
        (:mod:`sumi.data.prompted`)."""
        messages = check_messages(messages)
        if messages[-1]["role"] != ASSISTANT:
            raise ValueError(f"messages[{len(messages) - 1}].role is {messages[-1]['role']!r}: the last message of a "
                             "training conversation is the assistant's answer")
        if len(messages) == 1:
            raise ValueError("messages holds only the assistant's answer: a training conversation needs a user message "
                             "before it")
        prompt = self.prompt_ids(tokenizer, messages[:-1])
        _, end, _ = self.marker_ids(tokenizer)
        return prompt, [*tokenizer.encode(messages[-1]["content"], add_bos=False), end]

    def answer_text(self, tokenizer, answer_ids: Iterable[int]) -> str:
        """The text of a generated answer (the ids after the prompt, as :func:`sumi.generate`
        returns them: cut at the first EOS): cut at the first ``end_token``, special tokens
        dropped."""
        _, end, _ = self.marker_ids(tokenizer)
        ids = [int(i) for i in answer_ids]
        if end in ids:
            ids = ids[:ids.index(end)]
        return tokenizer.decode(ids, skip_special_tokens=True)


DEFAULT_TEMPLATE = ChatTemplate()
"""The template of Sumi's chat tokens (every field at its default)."""


def check_messages(messages, name: str = "messages") -> list[dict]:
    """``messages`` checked: a non-empty list of ``{"role", "content"}`` objects, the role one of
    :data:`ROLES`, the content a string, no other key; returned as new dicts.  A ``ValueError``
    names the offending field (``messages[1].role``)."""
    if not isinstance(messages, list):
        raise ValueError(f"{name} must be a list of {{'role', 'content'}} messages, got {type(messages).__name__}")
    if not messages:
        raise ValueError(f"{name} is empty: a conversation needs at least one message")
    out = []
    for i, m in enumerate(messages):
        where = f"{name}[{i}]"
        if not isinstance(m, dict):
            raise ValueError(f"{where} must be an object {{'role', 'content'}}, got {type(m).__name__}")
        for key in ("role", "content"):
            if key not in m:
                raise ValueError(f"{where} has no {key!r} field")
        other = sorted(set(m) - {"role", "content"})
        if other:
            raise ValueError(f"{where} has field(s) {', '.join(map(repr, other))}: a message holds 'role' and "
                             "'content' only")
        if m["role"] not in ROLES:
            raise ValueError(f"{where}.role is {m['role']!r}: expected one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(f"{where}.content is {type(m['content']).__name__}, not a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def messages_of(record: dict) -> list[dict]:
    """The conversation of a JSONL record: ``{"prompt": str, "response": str}`` (a user message,
    then the assistant's) or ``{"messages": [{"role", "content"}, ...]}`` (checked by
    :func:`check_messages`).  Other keys of the record are ignored (a task label, an id); a
    record with both forms, or with neither, is a ``ValueError`` naming the field."""
    if not isinstance(record, dict):
        raise ValueError(f"a chat record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        both = [key for key in ("prompt", "response") if key in record]
        if both:
            raise ValueError(f"the record has both 'messages' and {both[0]!r}: give a conversation as 'messages' or as "
                             "'prompt' and 'response', not both")
        return check_messages(record["messages"])
    for key in ("prompt", "response"):
        if key not in record:
            raise ValueError(f"the record has no {key!r} field (a chat record is {{'prompt', 'response'}} or "
                             "{'messages': [...]})")
        if not isinstance(record[key], str):
            raise ValueError(f"field {key!r} is {type(record[key]).__name__}, not a string")
    return [{"role": USER, "content": record["prompt"]}, {"role": ASSISTANT, "content": record["response"]}]
