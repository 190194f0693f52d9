"""Chat templates and assistant-only label masks (RELIABILITY.md item 10).

Golden property, for every template (named and the tokenizer's own) and single-turn, multi-turn and
tool-call conversations: the trained tokens decode to exactly the assistant turns as the template writes
them, each followed by its end-of-turn token, and nothing else. Expected texts are written out by hand
from each template's documented format, not computed by the code under test.
"""

from __future__ import annotations

import json

import pytest
from test_data_support import CONVERSATIONS, IGNORE, SAMPLE_DIR, msg

from medlab.data import DataError, read_records
from medlab.data.formats import normalize
from medlab.data.templates import END_OF_TURN, TEMPLATE_NAMES, get_template
from medlab.data.tokenize import end_of_turn_id, tokenize_conversation


def decode(tok, ids):
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def trained_text(tok, labels):
    return decode(tok, [label for label in labels if label != IGNORE])


def call_json(call):
    return json.dumps({"name": call["name"], "arguments": json.loads(call["arguments"])}, ensure_ascii=False)


def expected_answer(template: str, message: dict, eos: str) -> str:
    """How each template writes one assistant turn after its generation prompt (see templates/*.jinja)."""
    content, calls = message["content"], [call_json(c) for c in message["tool_calls"]]
    if template in ("chatml", "tokenizer"):  # the shipped tokenizer's chat_template is chatml
        body = content + "".join(f"\n<tool_call>\n{c}\n</tool_call>" for c in calls)
        return (body if content else body[1:]) + "<|im_end|>"
    body = content + "".join(("\n" if content or i else "") + c for i, c in enumerate(calls))
    if template == "deepseek":
        return " " + body + END_OF_TURN[template]  # generation prompt "Assistant:", turn "Assistant: ..."
    return body + END_OF_TURN[template]


def test_every_named_template_declares_its_end_of_turn():
    assert END_OF_TURN == {
        "chatml": "<|im_end|>",
        "llama3": "<|eot_id|>",
        "chatglm3": "</s>",
        "baichuan2": "</s>",
        "deepseek": "<｜end▁of▁sentence｜>",
    }
    assert set(TEMPLATE_NAMES) == {*END_OF_TURN, "tokenizer"}


def test_tokenizer_template_ends_turns_with_eos(tokenizer):
    assert get_template("tokenizer", tokenizer).end_of_turn == tokenizer.eos_token


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_end_of_turn_is_one_token_of_the_shipped_tokenizer(name, tokenizer):
    template = get_template(name, tokenizer)
    assert tokenizer.convert_ids_to_tokens(end_of_turn_id(template, tokenizer)) == template.end_of_turn


SINGLE = CONVERSATIONS["single"][0]
RENDERED_SINGLE = {
    "chatml": "<|im_start|>user\nWhat is asthma?<|im_end|>\n"
    "<|im_start|>assistant\nA chronic disease of the airways.<|im_end|>\n",
    "llama3": "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nWhat is asthma?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nA chronic disease of the airways.<|eot_id|>",
    "chatglm3": "<|user|>\nWhat is asthma?<|assistant|>\nA chronic disease of the airways.</s>",
    "baichuan2": "<reserved_106>What is asthma?<reserved_107>A chronic disease of the airways.</s>",
    "deepseek": "<｜begin▁of▁sentence｜>User: What is asthma?\n\n"
    "Assistant: A chronic disease of the airways.<｜end▁of▁sentence｜>",
}
GENERATION_PROMPT = {
    "chatml": "<|im_start|>assistant\n",
    "llama3": "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "chatglm3": "<|assistant|>\n",
    "baichuan2": "<reserved_107>",
    "deepseek": "Assistant:",
}


@pytest.mark.parametrize("name", list(RENDERED_SINGLE))
def test_rendered_text_golden(name):
    template = get_template(name)
    assert template.render(SINGLE) == RENDERED_SINGLE[name]
    assert template.render(SINGLE[:1], add_generation_prompt=True).endswith(GENERATION_PROMPT[name])


def test_chatml_tools_in_system_prompt_and_tool_turns():
    messages, tools = CONVERSATIONS["toolcall"]
    text = get_template("chatml").render(messages, tools)
    assert text.startswith("<|im_start|>system\n# Tools\n\nYou may call one or more functions")
    assert '\n<tools>\n{"type": "function", "function": {"name": "calculate_bmi"' in text
    assert (
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "calculate_bmi", "arguments": {"weight_kg": 70, "height_m": 1.75}}\n</tool_call><|im_end|>\n'
    ) in text
    assert '<|im_start|>user\n<tool_response>\n{"bmi": 22.9}\n</tool_response><|im_end|>\n' in text


@pytest.mark.parametrize("conversation", list(CONVERSATIONS))
@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_golden_label_mask(name, conversation, tokenizer):
    messages, tools = CONVERSATIONS[conversation]
    template = get_template(name, tokenizer)
    ids, labels = tokenize_conversation(messages, tools, template=template, tokenizer=tokenizer)
    expected = "".join(expected_answer(name, m, tokenizer.eos_token) for m in messages if m["role"] == "assistant")
    assert trained_text(tokenizer, labels) == expected
    assert len(ids) == len(labels)
    assert all(label in (IGNORE, token) for label, token in zip(labels, ids))
    # the prompt side is masked and the full sequence is exactly the rendered text (nothing inserted)
    assert decode(tokenizer, ids) == template.render(messages, tools)
    eot = end_of_turn_id(template, tokenizer)
    assert sum(label == eot for label in labels) == sum(m["role"] == "assistant" for m in messages)


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
@pytest.mark.parametrize("sample", ["sft_alpaca.jsonl", "sft_sharegpt.jsonl", "sft_messages.jsonl", "toolcall.jsonl"])
def test_golden_masks_on_every_sample_row(name, sample, tokenizer):
    """Every shipped sample row: trained text == assistant turns + end token; never an all-0 or all-1 mask."""
    rows, _, _ = normalize(read_records(SAMPLE_DIR / sample))
    template = get_template(name, tokenizer)
    for row in rows:
        ids, labels = tokenize_conversation(row["messages"], row["tools"], template=template, tokenizer=tokenizer)
        expected = "".join(
            expected_answer(name, m, tokenizer.eos_token) for m in row["messages"] if m["role"] == "assistant"
        )
        trained = sum(label != IGNORE for label in labels)
        assert 0 < trained < len(labels), row["row"]
        assert trained_text(tokenizer, labels) == expected, row["row"]


def test_template_without_end_of_turn_gets_an_eos_and_straddling_first_token_is_trained(tokenizer):
    """A tokenizer template that never closes answers: EOS is inserted after each answer and trained. Its
    generation prompt ends with a space, so the first answer token (" A...") starts in the prompt: still trained."""
    tok = _with_template(
        tokenizer,
        "{% for m in messages %}{{ m.role + ': ' + m.content + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}",
    )
    messages = SINGLE + [msg("user", "Is it curable?"), msg("assistant", "The cause is unknown.")]
    ids, labels = tokenize_conversation(messages, None, template=get_template("tokenizer", tok), tokenizer=tok)
    assert (
        trained_text(tok, labels)
        == f" A chronic disease of the airways.{tok.eos_token} The cause is unknown.{tok.eos_token}"
    )
    assert ids.count(tok.eos_token_id) == 2
    assert (
        decode(tok, ids) == f"user: What is asthma?\nassistant: A chronic disease of the airways.{tok.eos_token}\n"
        f"user: Is it curable?\nassistant: The cause is unknown.{tok.eos_token}\n"
    )


def test_template_that_masks_nothing_is_an_error(tokenizer):
    tok = _with_template(
        tokenizer,
        "{% for m in messages %}{% if m.role == 'assistant' %}{{ m.content + eos_token }}{% endif %}{% endfor %}",
    )
    from datasets import Dataset

    from medlab.data.tokenize import tokenize_dataset

    rows = Dataset.from_list([{"messages": SINGLE, "tools": None, "row": 6, "source": "chat.jsonl line 8"}])
    with pytest.raises(DataError, match="template 'tokenizer' masked nothing in chat.jsonl line 8"):
        tokenize_dataset(rows, tok, mode="sft", template=get_template("tokenizer", tok))


def test_prefix_unstable_template_is_an_error(tokenizer):
    """A template that renders history differently from the last turn cannot be masked by prefixes."""
    tok = _with_template(
        tokenizer,
        "{% for m in messages %}{{ m.role + ('!' if loop.last else '') + ': ' + m.content + eos_token }}"
        "{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}",
    )
    with pytest.raises(DataError, match="not prefix-stable"):
        tokenize_conversation(SINGLE, None, template=get_template("tokenizer", tok), tokenizer=tok)


def test_template_render_errors_name_the_row(tokenizer):
    from datasets import Dataset

    from medlab.data.tokenize import tokenize_dataset

    tok = _with_template(tokenizer, "{{ raise_exception('roles must alternate user/assistant') }}")
    rows = Dataset.from_list([{"messages": SINGLE, "tools": None, "row": 6}])  # no source: the 1-based row
    with pytest.raises(DataError, match="row 7: chat template 'tokenizer' failed to render: roles must alternate"):
        tokenize_dataset(rows, tok, mode="sft", template=get_template("tokenizer", tok))


def test_tokenizer_template_needs_a_chat_template(tokenizer):
    tok = _with_template(tokenizer, None)
    with pytest.raises(DataError, match="has no chat_template"):
        get_template("tokenizer", tok)
    with pytest.raises(DataError, match="unknown chat template 'vicuna'"):
        get_template("vicuna")


def test_templates_render_in_a_sandbox():
    from jinja2.exceptions import SecurityError

    from medlab.data.templates import _compile

    with pytest.raises(SecurityError):
        _compile("{{ messages.__class__.__mro__[1].__subclasses__() }}").render(messages=[])


def _with_template(tokenizer, chat_template):
    import copy

    tok = copy.deepcopy(tokenizer)
    tok.chat_template = chat_template
    return tok


@pytest.mark.parametrize("name", TEMPLATE_NAMES)
def test_golden_masks_on_real_glaive_toolcall_rows(name, tokenizer, shared_data):
    path = shared_data / "toolcall" / "glaive_toolcall_en.json"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    rows, _, _ = normalize(read_records(path).select(range(60)))
    template = get_template(name, tokenizer)
    for row in rows:
        ids, labels = tokenize_conversation(row["messages"], row["tools"], template=template, tokenizer=tokenizer)
        expected = "".join(
            expected_answer(name, m, tokenizer.eos_token) for m in row["messages"] if m["role"] == "assistant"
        )
        assert trained_text(tokenizer, labels) == expected, row["row"]
