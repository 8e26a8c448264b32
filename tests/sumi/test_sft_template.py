"""The chat template (issue 18) and chat generation.

Oracles: prompts spelled out token by token from ``SumiTokenizer.encode`` calls and the chat
tokens' ids in the embedded vocab (``V-6 .. V-4``), never from the template's own code; the
byte-exact decode of the embedded tokenizer (a rendered conversation decodes to the text written
out by hand); conversations parsed back from the ids at the marker ids; forcing models whose
argmax is known everywhere, so the answer text is known."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

import sumi
from sumi.configs import tiny
from sumi.sft import DEFAULT_TEMPLATE, ChatTemplate, chat_generate, messages_of
from sumi.sft import chat as chat_module
from sumi.tokenizer import BOS_TOKEN, CHAT_TOKENS, EOS_TOKEN, SumiTokenizer
from tests.sumi.test_generate import Forcing

CONVERSATION = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": "What is 2 + 3?"},
                {"role": "assistant", "content": "5"},
                {"role": "user", "content": "And 4 + 4?"}]


@pytest.fixture(scope="module")
def tok() -> SumiTokenizer:
    return SumiTokenizer.default()


def _markers(tok) -> tuple[int, int, int]:
    """The chat tokens' ids in the embedded layout: right before BOS, EOS, pad."""
    V = tok.vocab_size
    assert [tok.backend.id_to_token(i) for i in range(V - 6, V - 3)] == list(CHAT_TOKENS)
    return V - 6, V - 5, V - 4


def _hand_prompt(tok, messages) -> list[int]:
    """The default template's prompt, spelled out: BOS, then per message start + encode(role \\n
    content) + end + encode(\\n), then start + encode(assistant \\n) + prompt end."""
    start, end, prompt_end = _markers(tok)
    ids = [tok.bos_id]
    for m in messages:
        ids += [start, *tok.encode(f"{m['role']}\n{m['content']}", add_bos=False), end]
        ids += tok.encode("\n", add_bos=False)
    return ids + [start] + tok.encode("assistant\n", add_bos=False) + [prompt_end]


def _parse(tok, ids: list[int]) -> list[dict]:
    """The messages of a default-template prompt (+ answer), read back from the ids: between each
    start and end marker ``role \\n content``, then the header, then the answer up to its end marker."""
    start, end, prompt_end = _markers(tok)
    separator = tok.encode("\n", add_bos=False)
    assert ids[0] == tok.bos_id and ids.count(prompt_end) == 1
    k = ids.index(prompt_end)
    header = max(i for i in range(k) if ids[i] == start)
    assert tok.decode(ids[header + 1:k]) == "assistant\n"
    messages, i = [], 1
    while i < header:
        j = ids.index(end, i)
        assert ids[i] == start and ids[j + 1:j + 1 + len(separator)] == separator
        role, _, content = tok.decode(ids[i + 1:j]).partition("\n")
        messages.append({"role": role, "content": content})
        i = j + 1 + len(separator)
    assert i == header
    answer = ids[k + 1:]
    if answer:
        assert answer[-1] == end and end not in answer[:-1]
        messages.append({"role": "assistant", "content": tok.decode(answer[:-1])})
    return messages


# -- the tokens -------------------------------------------------------------------------------
def test_prompt_ids_spelled_out(tok):
    assert DEFAULT_TEMPLATE.prompt_ids(tok, CONVERSATION) == _hand_prompt(tok, CONVERSATION)
    assert DEFAULT_TEMPLATE.prompt_ids(tok, CONVERSATION[1:2]) == _hand_prompt(tok, CONVERSATION[1:2])


def test_a_rendered_conversation_decodes_to_its_text(tok):
    prompt, response = DEFAULT_TEMPLATE.render(tok, CONVERSATION[:3])
    text = tok.decode(prompt + response, skip_special_tokens=False)  # byte-exact: the text as written
    assert text == (f"{BOS_TOKEN}<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n"
                    "<|im_start|>assistant\n<|endofprompt|>5<|im_end|>")
    start, end, _ = _markers(tok)
    assert prompt == _hand_prompt(tok, CONVERSATION[:2]) and response == tok.encode("5", add_bos=False) + [end]
    # decode drops the markers (the tokenizer marks them special): the roles and contents in order
    assert tok.decode(prompt + response) == "system\nBe brief.\nuser\nWhat is 2 + 3?\nassistant\n5"


_TEXT = st.text(max_size=30)
_MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": _TEXT})


@settings(max_examples=60, deadline=None)
@given(st.lists(_MESSAGE, max_size=4), _TEXT, _TEXT)
def test_render_round_trips_any_conversation(history, question, answer):
    """Any contents (marker strings typed in them included: text is text) come back in order."""
    tok = SumiTokenizer.default()
    messages = [*history, {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    prompt, response = DEFAULT_TEMPLATE.render(tok, messages)
    assert prompt == _hand_prompt(tok, messages[:-1])
    assert _parse(tok, prompt + response) == messages
    assert _parse(tok, DEFAULT_TEMPLATE.prompt_ids(tok, messages[:-1])) == messages[:-1]


def test_typed_markers_stay_text(tok):
    """A marker typed in a message is bytes, never the marker id: no message can forge a turn."""
    forged = "".join(CHAT_TOKENS) + EOS_TOKEN
    prompt, response = DEFAULT_TEMPLATE.render(tok, [{"role": "user", "content": forged},
                                                     {"role": "assistant", "content": forged}])
    start, end, prompt_end = _markers(tok)
    assert prompt.count(start) == 2 and prompt.count(end) == 1 and prompt.count(prompt_end) == 1
    assert response.count(end) == 1 and response[-1] == end and tok.eos_id not in prompt + response


def test_answer_text_cuts_at_the_first_end_marker(tok):
    _, end, _ = _markers(tok)
    ids = tok.encode("forty two", add_bos=False) + [end] + tok.encode("more", add_bos=False) + [end]
    assert DEFAULT_TEMPLATE.answer_text(tok, ids) == "forty two"
    assert DEFAULT_TEMPLATE.answer_text(tok, torch.tensor(ids)) == "forty two"
    assert DEFAULT_TEMPLATE.answer_text(tok, tok.encode("no marker", add_bos=False)) == "no marker"
    assert DEFAULT_TEMPLATE.answer_text(tok, [end]) == ""
    start, _, prompt_end = _markers(tok)  # other specials are dropped
    assert DEFAULT_TEMPLATE.answer_text(tok, [start, *tok.encode("a", add_bos=False), prompt_end, tok.pad_id]) == "a"


# -- a template of one's own ------------------------------------------------------------------
def test_a_template_from_json_changes_the_rendering_as_specified(tmp_path, tok):
    path = tmp_path / "template.json"
    path.write_text(json.dumps({"message_format": "### {role}: {content}", "separator": "", "answer_header":
                                "### assistant:", "bos": False}))
    template = ChatTemplate.from_file(path)
    assert template == ChatTemplate("### {role}: {content}", "", "### assistant:", *CHAT_TOKENS, False)
    start, end, prompt_end = _markers(tok)
    want = []
    for m in CONVERSATION[:2]:
        want += [start] + tok.encode(f"### {m['role']}: {m['content']}", add_bos=False) + [end]
    want += [start] + tok.encode("### assistant:", add_bos=False) + [prompt_end]
    prompt, response = template.render(tok, CONVERSATION[:3])
    assert prompt == want and response == tok.encode("5", add_bos=False) + [end]


def test_a_template_with_markers_of_its_own(tmp_path, tok):
    """Markers are looked up by their strings: a tokenizer with other special tokens, a template
    naming them."""
    backend = Tokenizer.from_str(tok.backend.to_str())
    backend.add_special_tokens(["<turn>", "</turn>", "<answer>"])  # ids 512, 513, 514
    other = SumiTokenizer(backend)
    path = tmp_path / "t.json"
    path.write_text(json.dumps({"start_token": "<turn>", "end_token": "</turn>", "prompt_end_token": "<answer>"}))
    template = ChatTemplate.from_file(path)
    assert template.marker_ids(other) == (512, 513, 514) and {512, 513, 514} <= other.special_ids
    prompt, response = template.render(other, CONVERSATION[1:3])
    assert prompt == ([tok.bos_id, 512] + tok.encode("user\nWhat is 2 + 3?", add_bos=False) + [513]
                      + tok.encode("\n", add_bos=False) + [512] + tok.encode("assistant\n", add_bos=False) + [514])
    assert response == tok.encode("5", add_bos=False) + [513]
    assert template.answer_text(other, response + [7]) == "5"


def without_chat_tokens(directory: Path, dropped=CHAT_TOKENS[1:]) -> Path:
    """``directory/tokenizer.json``: the embedded tokenizer without the chat tokens ``dropped``."""
    spec = json.loads(SumiTokenizer.default().backend.to_str())
    spec["added_tokens"] = [t for t in spec["added_tokens"] if t["content"] not in dropped]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "tokenizer.json").write_text(json.dumps(spec))
    return directory / "tokenizer.json"


def test_a_tokenizer_without_the_chat_tokens_is_a_clear_error(tmp_path):
    bare = SumiTokenizer.from_file(without_chat_tokens(tmp_path))
    for call in (lambda: DEFAULT_TEMPLATE.prompt_ids(bare, CONVERSATION[1:2]),
                 lambda: DEFAULT_TEMPLATE.render(bare, CONVERSATION[1:3]),
                 lambda: DEFAULT_TEMPLATE.answer_text(bare, [1, 2])):
        with pytest.raises(ValueError) as info:
            call()
        message = str(info.value)
        assert "'<|im_end|>', '<|endofprompt|>' tokens" in message and "<|im_start|>" not in message
        assert "--chat-template FILE" in message


@pytest.mark.parametrize("content, match", [
    ({"sep": "x"}, r"unknown field\(s\) 'sep': the fields are message_format, separator, answer_header, "
                   "start_token, end_token, prompt_end_token, bos"),
    ({"bos": "yes"}, "field bos must be a bool, got 'yes'"),
    ({"separator": 1}, "field separator must be a str, got 1"),
    ({"message_format": "{content}"}, r"must use the fields \{role\} and \{content\}"),
    ({"message_format": "{role} {content} {when}"}, r"must use the fields \{role\} and \{content\} and no others"),
    ({"message_format": "{role"}, "is not a format string"),
    ({"end_token": CHAT_TOKENS[0]}, "three distinct non-empty tokens"),
    ({"prompt_end_token": ""}, "three distinct non-empty tokens"),
    ([1, 2], "must be a JSON object of fields, got a list"),
    ("{not json", "is not JSON"),
])
def test_bad_template_files_name_the_file_and_the_field(tmp_path, content, match):
    path = tmp_path / "t.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ValueError, match=match) as info:
        ChatTemplate.from_file(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=f"cannot read the chat template {re.escape(str(tmp_path / 'none.json'))}"):
        ChatTemplate.from_file(tmp_path / "none.json")


# -- records and conversations ----------------------------------------------------------------
def test_messages_of_both_forms():
    assert messages_of({"prompt": "p", "response": "r", "task": "add"}) == [{"role": "user", "content": "p"},
                                                                           {"role": "assistant", "content": "r"}]
    assert messages_of({"messages": CONVERSATION[:3], "id": 7}) == CONVERSATION[:3]


@pytest.mark.parametrize("record, match", [
    ([1], "a chat record must be a JSON object, got list"),
    ({"response": "r"}, "the record has no 'prompt' field"),
    ({"prompt": "p"}, "the record has no 'response' field"),
    ({"prompt": "p", "response": 5}, "field 'response' is int, not a string"),
    ({"messages": [], "prompt": "p"}, "the record has both 'messages' and 'prompt'"),
    ({"messages": "hi"}, "messages must be a list of {'role', 'content'} messages, got str"),
    ({"messages": []}, "messages is empty"),
    ({"messages": [{"role": "user", "content": "a"}, "b"]}, r"messages\[1\] must be an object"),
    ({"messages": [{"content": "a"}]}, r"messages\[0\] has no 'role' field"),
    ({"messages": [{"role": "user"}]}, r"messages\[0\] has no 'content' field"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}]},
     r"messages\[1\].role is 'bot': expected one of system, user, assistant"),
    ({"messages": [{"role": "user", "content": None}]}, r"messages\[0\].content is NoneType, not a string"),
    ({"messages": [{"role": "user", "content": "a", "name": "x"}]}, r"messages\[0\] has field\(s\) 'name'"),
])
def test_messages_of_names_the_offending_field(record, match):
    with pytest.raises(ValueError, match=match):
        messages_of(record)


@pytest.mark.parametrize("messages, call, match", [
    (CONVERSATION[:3], "prompt_ids", r"ends with an assistant message \(messages\[2\]\).*rendered with render\(\)"),
    ([{"role": "system", "content": "s"}], "prompt_ids", r"holds no user message \(roles \['system'\]\)"),
    (CONVERSATION[:2], "render", r"messages\[1\].role is 'user': the last message of a training conversation is the "
                                 "assistant's answer"),
    ([{"role": "assistant", "content": "a"}], "render", "holds only the assistant's answer"),
    ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}], "render", "holds no user message"),
    ([*CONVERSATION[:3], {"role": "assistant", "content": "6"}], "render", "ends with an assistant message"),
])
def test_conversations_of_the_wrong_shape(tok, messages, call, match):
    with pytest.raises(ValueError, match=match):
        getattr(DEFAULT_TEMPLATE, call)(tok, messages)


# -- chat generation --------------------------------------------------------------------------
def _spy(monkeypatch) -> list:
    """Record every GenerationOutput that chat_generate gets from sumi.generate."""
    outputs = []

    def recording(*args, **kwargs):
        outputs.append(sumi.generate(*args, **kwargs))
        return outputs[-1]

    monkeypatch.setattr(chat_module, "generate", recording)
    return outputs


@pytest.mark.parametrize("objective", ["uniform", "masked"])
def test_chat_generate_lays_out_the_training_canvas(tok, monkeypatch, objective):
    """A diffusion model: canvas L = canvas_length, the prompt frozen at 0 .. P-1, the budget
    L - P - 2 for the longest prompt, EOS BOS pinned after it; answers are strings."""
    model = sumi.Sumi.initialized(tiny(tok.vocab_size, max_position_embeddings=96).for_objective(objective),
                                  generator=torch.Generator().manual_seed(0))
    outputs = _spy(monkeypatch)
    conversations = ["What is 2 + 3?", CONVERSATION]
    answers = chat_generate(model, tok, conversations, canvas_length=80, steps=3, seed=0)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    (out,) = outputs
    prompts = [_hand_prompt(tok, [{"role": "user", "content": "What is 2 + 3?"}]), _hand_prompt(tok, CONVERSATION)]
    L, M = 80, 80 - len(prompts[1]) - 2
    assert out.layout.tokens.shape == (2, L) and out.layout.prompt_lengths == [len(p) for p in prompts]
    for row, prompt in zip(range(2), prompts):
        P = len(prompt)
        assert out.layout.tokens[row, :P].tolist() == prompt
        assert out.layout.tokens[row, P + M:P + M + 2].tolist() == [tok.eos_id, tok.bos_id]
        assert out.layout.frozen[row].tolist() == [True] * P + [False] * M + [True, True] + [False] * (L - P - M - 2)
    # the longest prompt's row is exactly a training row's layout: prompt | L - P - 2 | EOS BOS
    assert out.layout.frozen[1, -2:].all() and not out.layout.frozen[1, len(prompts[1]):-2].any()
    # the default canvas: the model's positions
    chat_generate(model, tok, ["hi"], steps=1, seed=0)
    assert outputs[-1].canvas.shape == (1, 96)
    assert outputs[-1].layout.frozen[0, -2:].all()


def test_chat_generate_answer_is_cut_at_the_end_marker(tok):
    """A forcing model writes 'answer <|im_end|> more EOS ...' after the prompt: the text is 'answer'."""
    _, end, _ = _markers(tok)
    prompt = _hand_prompt(tok, [{"role": "user", "content": "Say it."}])
    L = 48
    written = tok.encode("The answer is 5", add_bos=False) + [end] + tok.encode("junk", add_bos=False) + [tok.eos_id]
    targets = torch.tensor(prompt + written + [7] * (L - len(prompt) - len(written)))[None]
    config = tiny(tok.vocab_size, max_position_embeddings=L)
    assert chat_generate(Forcing(targets, config=config), tok, ["Say it."], steps=1, sampler="greedy",
                         seed=0) == ["The answer is 5"]


def test_chat_generate_ar(tok, monkeypatch):
    """An 'ar' model decodes after the prompt; the default budget is min(128, positions - P)."""
    model = sumi.Sumi.initialized(tiny(tok.vocab_size, max_position_embeddings=96).for_objective("ar"),
                                  generator=torch.Generator().manual_seed(0))
    outputs = _spy(monkeypatch)
    answers = chat_generate(model, tok, ["What is 2 + 3?", CONVERSATION], seed=0)
    assert len(answers) == 2 and all(isinstance(a, str) for a in answers)
    prompts = [_hand_prompt(tok, [{"role": "user", "content": "What is 2 + 3?"}]), _hand_prompt(tok, CONVERSATION)]
    (out,) = outputs
    assert out.canvas.shape == (2, 96)  # the longest prompt + its default budget, 96 - P: the model's positions
    for row, prompt in enumerate(prompts):
        assert out.canvas[row, :len(prompt)].tolist() == prompt
    answers = chat_generate(model, tok, ["hi"], max_new_tokens=5, seed=0, sampler="greedy")
    assert outputs[-1].canvas.shape[1] == len(_hand_prompt(tok, [{"role": "user", "content": "hi"}])) + 5


@pytest.mark.parametrize("conversations, kwargs, match", [
    ("hi", {}, "conversations must be a list of conversations"),
    ([], {}, "conversations is empty"),
    ([{"role": "user", "content": "a"}], {}, r"conversations\[0\] is a dict: .*wrap a single conversation in a list"),
    ([[{"role": "user", "content": 3}]], {}, r"conversations\[0\]\[0\].content is int"),
    (["ok", CONVERSATION[:3]], {}, r"conversations\[1\]: messages ends with an assistant message"),
    (["x " * 40], {"canvas_length": 48}, r"the longest prompt \(\d+ tokens with the chat template\) \+ EOS/BOS leaves "
                                         "no answer budget in canvas_length=48"),
    (["hi"], {"canvas_length": 97}, "canvas_length 97 exceeds the model's max_position_embeddings"),
])
def test_chat_generate_bad_input(tok, conversations, kwargs, match):
    model = sumi.Sumi.initialized(tiny(tok.vocab_size, max_position_embeddings=96),
                                  generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=match):
        chat_generate(model, tok, conversations, steps=1, seed=0, **kwargs)


# -- sumi generate --chat ---------------------------------------------------------------------
def test_sumi_generate_chat_on_a_tiny_random_model(capsys):
    from sumi.cli import main

    assert main(["generate", "--model", "tiny", "--chat", "--prompt", "What is 2 + 3?", "--canvas-length", "64",
                 "--steps", "2", "--seed", "3", "--device", "cpu", "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "sumi: seed 3" in captured.err
    assert not any(marker in captured.out for marker in (*CHAT_TOKENS, BOS_TOKEN, EOS_TOKEN))
    assert captured.out.endswith("\n")


def test_sumi_generate_chat_prints_the_answer_text(tok, monkeypatch, capsys):
    """With a forcing model: the printed text is the answer, cut at the end marker; the prompt
    the model saw is the template's rendering of the one user message."""
    from sumi import cli

    _, end, _ = _markers(tok)
    prompt = _hand_prompt(tok, [{"role": "user", "content": "Name a color."}])
    L = 40
    written = tok.encode("Blue.", add_bos=False) + [end, tok.eos_id]
    targets = torch.tensor(prompt + written + [9] * (L - len(prompt) - len(written)))[None]
    model = Forcing(targets, config=tiny(tok.vocab_size, max_position_embeddings=L))
    monkeypatch.setattr(cli, "load_model", lambda args: (model, tok))
    assert cli.main(["generate", "--model", "x", "--chat", "--prompt", "Name a color.", "--steps", "1",
                     "--sampler", "greedy", "--seed", "0"]) == 0
    assert capsys.readouterr().out == "Blue.\n"
    assert len(model.calls) == 1


@pytest.mark.parametrize("argv, match", [
    (["--chat-template", "{file}"], "--chat-template renders the prompt as a conversation: add --chat"),
    (["--chat", "--chat-template", "{file}"], r"the chat template .*t.json has unknown field\(s\) 'x'"),
])
def test_sumi_generate_chat_bad_flags(tmp_path, capsys, argv, match):
    from sumi.cli import main

    (tmp_path / "t.json").write_text('{"x": 1}')
    argv = [a.replace("{file}", str(tmp_path / "t.json")) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", "tiny", "--prompt", "hi", *argv])
    (error,) = [line for line in capsys.readouterr().err.split("\n") if "error:" in line]
    assert exc.value.code == 2 and error.startswith("sumi generate: error: ") and re.search(match, error)


def test_sumi_generate_chat_with_a_tokenizer_without_the_chat_tokens(tmp_path, capsys):
    from sumi.cli import main

    path = without_chat_tokens(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--model", "tiny", "--tokenizer", str(path), "--chat", "--prompt", "hi", "--steps", "1",
              "--device", "cpu", "--threads", "1"])
    (error,) = [line for line in capsys.readouterr().err.split("\n") if "error:" in line]
    assert exc.value.code == 2 and "'<|im_end|>', '<|endofprompt|>' tokens" in error and "--chat-template" in error
