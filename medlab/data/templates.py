"""Chat templates: turn a normalized conversation into the exact text a model is trained on.

Named templates ship as `templates/<name>.jinja` and are rendered in a sandboxed jinja2 environment
with the same conventions as Hugging Face chat templates (`messages`, `tools`, `add_generation_prompt`,
a `tojson` filter that keeps non-ASCII text), so any of them can also be installed as a tokenizer's
`chat_template` on export. `tokenizer` uses the tokenizer's own `chat_template`.

Each template declares its end-of-assistant-turn string: the text that ends an answer and must be
trained (it is what the model emits to stop). Masking (tokenize.py) relies only on that string and on
rendering conversation prefixes, so every template, named or not, is masked the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from medlab.data.errors import DataError

END_OF_TURN = {
    "chatml": "<|im_end|>",
    "llama3": "<|eot_id|>",
    "chatglm3": "</s>",
    "baichuan2": "</s>",
    "deepseek": "<｜end▁of▁sentence｜>",
}
TEMPLATE_NAMES = (*END_OF_TURN, "tokenizer")
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class ChatTemplate:
    """A renderable chat template and the string that ends an assistant turn."""

    name: str
    end_of_turn: str
    source: str
    render_fn: Callable[[list[dict], list[dict] | None, bool], str]

    def render(self, messages: Sequence[dict], tools: str | None = None, *, add_generation_prompt: bool = False) -> str:
        """Render internal-schema `messages` (and `tools` JSON text) to the training/prompt text."""
        return self.render_fn(to_hf_messages(messages), to_hf_tools(tools), add_generation_prompt)


def template_source(name: str) -> str:
    """The jinja source of a named template shipped with medlab."""
    if name not in END_OF_TURN:
        raise DataError(f"unknown chat template {name!r} (known: {', '.join(TEMPLATE_NAMES)})")
    return (TEMPLATE_DIR / f"{name}.jinja").read_text(encoding="utf-8")


def get_template(name: str, tokenizer: Any = None) -> ChatTemplate:
    """The template `name`; `tokenizer` is needed for `name == "tokenizer"` (its `chat_template` and EOS)."""
    if name == "tokenizer":
        return _tokenizer_template(tokenizer)
    source = template_source(name)
    compiled = _compile(source)

    def render_fn(messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
        return compiled.render(messages=messages, tools=tools, add_generation_prompt=add_generation_prompt)

    return ChatTemplate(name, END_OF_TURN[name], source, render_fn)


def with_default_system(source: str, system_prompt: str | None) -> str:
    """The chat template `source`, made to insert `system_prompt` as the system message of a conversation
    that has none, exactly as the data pipeline does before rendering (`formats.add_default_system`,
    `PromptData.messages`). With `system_prompt=None` the source is returned unchanged.

    Used for the exported tokenizer's `chat_template`, so `apply_chat_template(messages)` renders what the
    model was trained on even when the caller leaves out the run's system prompt.
    """
    if system_prompt is None:
        return source
    default = "{'role': 'system', 'content': " + _jinja_string(system_prompt) + "}"
    prefix = (
        "{#- medlab: conversations without a system message get the system prompt the model was trained with -#}\n"
        "{%- if messages | selectattr('role', 'equalto', 'system') | list | length == 0 -%}\n"
        "    {%- set messages = [" + default + "] + messages -%}\n"
        "{%- endif -%}\n"
    )
    return prefix + source


def _jinja_string(text: str) -> str:
    """`text` as a jinja string literal (jinja decodes literals like Python's unicode-escape; non-ASCII is
    kept as is, jinja escapes and unescapes it itself)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + escaped.replace("\t", "\\t") + '"'


def _tokenizer_template(tokenizer: Any) -> ChatTemplate:
    if tokenizer is None:
        raise DataError("template 'tokenizer' needs a tokenizer")
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("template 'tokenizer': the tokenizer has no chat_template; pick a named template instead")
    if not tokenizer.eos_token:
        raise DataError("template 'tokenizer': the tokenizer has no eos_token to end assistant turns")

    def render_fn(messages: list[dict], tools: list[dict] | None, add_generation_prompt: bool) -> str:
        return tokenizer.apply_chat_template(
            messages, tools=tools, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    source = (
        tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else json.dumps(tokenizer.chat_template)
    )
    return ChatTemplate("tokenizer", tokenizer.eos_token, source, render_fn)


def _tojson(
    value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False
) -> str:
    # Same behaviour as transformers' chat-template `tojson`: no HTML escaping, non-ASCII kept.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str):
    raise jinja2.exceptions.TemplateError(message)


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(source)


def to_hf_messages(messages: Sequence[dict]) -> list[dict]:
    """Internal messages -> Hugging Face chat messages (`tool_calls: [{"type", "function": {name, arguments}}]`).

    Arguments are parsed back from JSON text so templates can `tojson` them; the `tool_calls` key is
    omitted when empty because many tokenizer templates test for its presence, not its length.
    """
    out = []
    for message in messages:
        hf = {"role": message["role"], "content": message["content"] or ""}
        calls = message.get("tool_calls") or []
        if calls:
            hf["tool_calls"] = [
                {"type": "function", "function": {"name": c["name"], "arguments": _loads_or_raw(c["arguments"])}}
                for c in calls
            ]
        out.append(hf)
    return out


def to_hf_tools(tools: str | None) -> list[dict] | None:
    """`tools` JSON text (glaive: a list of function schemas) -> HF tools (`{"type": "function", "function": ...}`)."""
    if not tools:
        return None
    parsed = json.loads(tools) if isinstance(tools, str) else tools
    parsed = parsed if isinstance(parsed, list) else [parsed]
    return [
        t if isinstance(t, dict) and "function" in t else {"type": "function", "function": t} for t in parsed
    ] or None


def _loads_or_raw(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
