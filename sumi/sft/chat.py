"""Chat generation: answers to conversations, laid out as instruction tuning trained them.

:func:`chat_generate` renders each conversation's prompt with a :class:`~sumi.sft.ChatTemplate`
and calls :func:`sumi.generate` (docs/sft.md, "Generation").  For the diffusion families the
default budget reproduces the training row (docs/training.md, "Prompted data"): on a canvas of
``L`` positions, a prompt of ``P`` tokens gets ``max_new_tokens = L - P - 2``, so the canvas is::

    | prompt (P, frozen) | answer budget (L - P - 2) | EOS | BOS |

the layout of a prompted row of ``seq_len = L``, whose budget holds ``answer <|im_end|>`` then
EOS fill.  The answer is cut at its first EOS (by :func:`sumi.generate`), then at its first
``<|im_end|>`` (:meth:`~sumi.sft.ChatTemplate.answer_text`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from torch import nn

from sumi.generation import canvas_length_for, generate
from sumi.sft.template import DEFAULT_TEMPLATE, USER, ChatTemplate, check_messages

if TYPE_CHECKING:
    from sumi.tokenizer import SumiTokenizer

AR_MAX_NEW_TOKENS = 128
"""The default answer budget of an ``"ar"`` model (fewer when the model's positions end sooner)."""


def chat_generate(model: nn.Module, tokenizer: SumiTokenizer, conversations: Sequence[str | list[dict]], *,
                  template: ChatTemplate = DEFAULT_TEMPLATE, max_new_tokens: int | None = None,
                  canvas_length: int | None = None, **generate_kwargs: Any) -> list[str]:
    """The assistant's answer to each conversation, as text.

    Args:
        model: a :class:`sumi.Sumi` of any family (or a module :func:`sumi.generate` accepts).
        tokenizer: the model's :class:`sumi.SumiTokenizer` (the canvas pins the model's EOS and BOS).
        conversations: a list; each a ``str`` (one user message) or a list of messages
            ``{"role", "content"}`` that does not end with the assistant's.
        template: the :class:`~sumi.sft.ChatTemplate` that renders each prompt (the one the
            model was tuned with).
        max_new_tokens: the answer budget.  Diffusion families: default ``canvas_length - P - 2``
            for the longest prompt ``P``, the budget of a prompted training row (module
            docstring); rows with shorter prompts get the same budget and a tail after their
            pinned BOS.  ``"ar"``: default ``min(128, max_position_embeddings - P)``; decoding
            stops at EOS.
        canvas_length: diffusion families: the canvas (default the model's
            ``max_position_embeddings``); give the ``seq_len`` the model was tuned at to generate
            on its training layout.  ``"ar"``: checked only, as by :func:`sumi.generate`.
        **generate_kwargs: the other arguments of :func:`sumi.generate` (``steps``, ``sampler``,
            ``seed``, ``temperature``, ``denoise_end``, ``progress``, ...).

    Returns:
        One answer per conversation: the generated ids cut at the first EOS, then at the first
        end marker (:meth:`~sumi.sft.ChatTemplate.answer_text`), decoded without special tokens.

    Raises:
        ValueError: a bad conversation (naming it and its field), a tokenizer without the
            template's markers, a prompt that leaves no answer budget, or any input
            :func:`sumi.generate` refuses.
    """
    config = model.config
    template.marker_ids(tokenizer)  # a tokenizer without the markers: one error, not one per conversation
    prompts = []
    for i, messages in enumerate(_conversations(conversations)):
        try:
            prompts.append(template.prompt_ids(tokenizer, messages))
        except ValueError as e:  # no user message, or the assistant's answer already there
            raise ValueError(f"conversations[{i}]: {e}") from None
    longest = max(len(p) for p in prompts)
    if config.causal:
        if max_new_tokens is None:
            max_new_tokens = min(AR_MAX_NEW_TOKENS, config.max_position_embeddings - longest)
            if max_new_tokens < 1:
                raise ValueError(f"the longest prompt ({longest} tokens with the chat template) fills the model's "
                                 f"max_position_embeddings ({config.max_position_embeddings}): no room for an answer")
    else:
        canvas_length = canvas_length_for(config, canvas_length, preferred=config.max_position_embeddings)
        if max_new_tokens is None:
            max_new_tokens = canvas_length - longest - 2
            if max_new_tokens < 1:
                raise ValueError(f"the longest prompt ({longest} tokens with the chat template) + EOS/BOS leaves no "
                                 f"answer budget in canvas_length={canvas_length}: raise canvas_length or shorten "
                                 "the conversation")
    out = generate(model, prompts, max_new_tokens, canvas_length=canvas_length, **generate_kwargs)
    return [template.answer_text(tokenizer, answer) for answer in out.tokens]


def _conversations(conversations) -> list[list[dict]]:
    """Each conversation as a checked message list (a ``str`` is one user message)."""
    if isinstance(conversations, (str, bytes)) or not isinstance(conversations, Sequence):
        raise ValueError("conversations must be a list of conversations (each a str or a list of messages); wrap a "
                         "single one in a list")
    if not conversations:
        raise ValueError("conversations is empty: give at least one conversation")
    out = []
    for i, conversation in enumerate(conversations):
        if isinstance(conversation, str):
            out.append([{"role": USER, "content": conversation}])
        elif isinstance(conversation, list):
            out.append(check_messages(conversation, name=f"conversations[{i}]"))
        else:
            raise ValueError(f"conversations[{i}] is a {type(conversation).__name__}: each conversation is a str (one "
                             "user message) or a list of {'role', 'content'} messages; wrap a single conversation in "
                             "a list")
    return out
