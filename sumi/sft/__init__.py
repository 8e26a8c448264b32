"""Instruction tuning (SFT) for every Sumi family (docs/sft.md).

- :mod:`sumi.sft.template`: :class:`ChatTemplate` (conversations as token ids with Sumi's chat
  tokens, overridable from JSON), :data:`DEFAULT_TEMPLATE`, :func:`messages_of` (a JSONL record
  as a conversation).
- :mod:`sumi.sft.chat`: :func:`chat_generate`, answers to conversations on the training layout.

Training data: ``sumi.data.prepare(..., sft=True)`` / ``sumi data prepare --sft`` renders chat
records into prompted rows (docs/training.md, "Prompted data").
"""

from sumi.sft.chat import chat_generate
from sumi.sft.template import DEFAULT_TEMPLATE, ChatTemplate, messages_of

__all__ = ["ChatTemplate", "DEFAULT_TEMPLATE", "chat_generate", "messages_of"]
