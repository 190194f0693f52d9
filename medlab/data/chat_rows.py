"""Chat and text rows, one record at a time: the normalizers of the chat formats (registered in
`medlab.data.formats`).

Each takes one record (canonical column names, after ``data.fields``) and returns the internal row
(docs/INTERFACES.md): ``{"messages": [{"role", "content", "tool_calls": [{"name", "arguments"}]}], "tools"}``
(tool-call ``arguments`` and ``tools`` as JSON text, so arrow stores every row with one schema) or ``{"text"}``;
a bad record raises `RowProblem` naming the field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from medlab.data.errors import RowProblem, json_error

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "chatgpt": "assistant",
    "function_call": "function_call",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
    "ipython": "tool",
}


def _text(record: Mapping[str, Any]) -> str:
    text = record.get("text")
    if text is None:
        raise RowProblem("text", "missing_field", "missing 'text'")
    if not isinstance(text, str):
        raise RowProblem("text", "wrong_type", f"'text' must be a string, got {type(text).__name__}")
    if not text.strip():
        raise RowProblem("text", "empty_text", "empty text")
    return text


def _string_field(record: Mapping[str, Any], field: str, *, required: bool) -> str:
    value = record.get(field)
    if value is None:
        if required:
            raise RowProblem(field, "missing_field", f"missing {field!r}")
        return ""
    if not isinstance(value, str):
        raise RowProblem(field, "wrong_type", f"{field!r} must be a string, got {type(value).__name__}")
    return value


def _message(role: str, content: str, tool_calls: list | None = None) -> dict:
    return {"role": role, "content": content, "tool_calls": tool_calls or []}


def _alpaca_messages(record: Mapping[str, Any]) -> list[dict]:
    instruction = _string_field(record, "instruction", required=True)
    extra_input = _string_field(record, "input", required=False)
    output = _string_field(record, "output", required=True)
    system = _string_field(record, "system", required=False)
    messages = [_message("system", system)] if system else []
    for turn_index, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowProblem(f"history[{turn_index}]", "wrong_type", "history items must be [user, assistant] strings")
        messages += [_message("user", pair[0]), _message("assistant", pair[1])]
    user = f"{instruction}\n{extra_input}" if instruction and extra_input else instruction or extra_input
    return messages + [_message("user", user), _message("assistant", output)]


def _conversation_messages(record: Mapping[str, Any]) -> list[dict]:
    has_conversations = record.get("conversations") is not None or "messages" not in record
    column = "conversations" if has_conversations else "messages"
    turns = record.get(column)
    if turns is None:
        raise RowProblem(column, "missing_field", f"missing {column!r}")
    if not isinstance(turns, list):
        raise RowProblem(column, "wrong_type", f"{column!r} must be a list of turns, got {type(turns).__name__}")
    system = _string_field(record, "system", required=False)
    messages = [_message("system", system)] if system else []
    for index, turn in enumerate(turns):
        _append_turn(messages, turn, f"{column}[{index}]")
    return messages


def _append_turn(messages: list[dict], turn: Any, where: str) -> None:
    if not isinstance(turn, Mapping):
        raise RowProblem(where, "wrong_type", f"a turn must be an object, got {type(turn).__name__}")
    role_key = "role" if "role" in turn else "from"
    content_key = "content" if "content" in turn else "value"
    raw_role = turn.get(role_key)
    role = ROLE_ALIASES.get(str(raw_role).lower()) if raw_role is not None else None
    if role is None:
        raise RowProblem(f"{where}.{role_key}", "unknown_role", f"unknown role {raw_role!r}")
    content = _content(turn.get(content_key), f"{where}.{content_key}")
    if role == "function_call":
        calls = parse_tool_calls(content, f"{where}.{content_key}")
        previous = messages[-1] if messages else None
        if previous and previous["role"] == "assistant" and not previous["tool_calls"]:
            previous["tool_calls"] = calls  # "gpt: I'll check" + "function_call: {...}" is one assistant turn
        else:
            messages.append(_message("assistant", "", calls))
        return
    calls = []
    if role == "assistant" and turn.get("tool_calls"):
        calls = [_tool_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(turn["tool_calls"])]
    messages.append(_message(role, content, calls))


def _content(value: Any, where: str) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, Mapping) and p.get("type") == "text" for p in value):
        return "".join(str(p.get("text", "")) for p in value)  # openai content parts (text only)
    raise RowProblem(where, "wrong_type", f"content must be a string, got {type(value).__name__}")


def parse_tool_calls(value: str, where: str) -> list[dict]:
    """A `function_call` turn's JSON (`{"name", "arguments"}` or a list of them) -> internal tool calls."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as err:
        raise RowProblem(where, "bad_function_call", f"function_call is not valid JSON ({json_error(err)})") from None
    calls = parsed if isinstance(parsed, list) else [parsed]
    if not calls:
        raise RowProblem(where, "bad_function_call", "function_call holds an empty list")
    return [_tool_call(call, where) for call in calls]


def _tool_call(call: Any, where: str) -> dict:
    """`{"name", "arguments"|"parameters"}` or openai's `{"function": {...}}` -> `{"name", "arguments": JSON text}`."""
    if isinstance(call, Mapping) and isinstance(call.get("function"), Mapping):
        call = call["function"]
    if not (isinstance(call, Mapping) and isinstance(call.get("name"), str) and call["name"]):
        raise RowProblem(where, "bad_function_call", "a tool call needs a string 'name'")
    arguments = call.get("arguments", call.get("parameters", {}))
    return {"name": call["name"], "arguments": arguments_json(arguments, where)}


def arguments_json(arguments: Any, where: str) -> str:
    """Tool-call arguments as JSON text (openai sends a JSON string, glaive a dict)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError as err:
            raise RowProblem(
                where, "bad_function_call", f"tool-call arguments are not valid JSON ({json_error(err)})"
            ) from None
    return json.dumps(arguments, ensure_ascii=False)


def _tools(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RowProblem("tools", "bad_tools", f"tools is not valid JSON ({json_error(err)})") from None
    if not isinstance(value, (list, dict)):
        raise RowProblem("tools", "wrong_type", f"tools must be a JSON list of function schemas, got {value!r:.40}")
    return json.dumps(value, ensure_ascii=False) if value else None


def check_conversation(messages: list[dict]) -> None:
    """Raise `RowProblem` unless the conversation is trainable: user first, assistant last, no empty answers."""
    if not messages:
        raise RowProblem("messages", "empty_conversation", "the conversation has no turns")
    first = next((i for i, m in enumerate(messages) if m["role"] != "system"), None)
    if first is None or messages[first]["role"] != "user":
        raise RowProblem(
            f"messages[{first or 0}]", "not_starting_with_user", "the first non-system turn must be a user turn"
        )
    if messages[-1]["role"] != "assistant":
        raise RowProblem(
            f"messages[{len(messages) - 1}]",
            "not_ending_with_assistant",
            f"the conversation ends with a {messages[-1]['role']} turn, not an assistant turn",
        )
    for index, message in enumerate(messages):
        if message["role"] == "assistant" and not message["content"].strip() and not message["tool_calls"]:
            raise RowProblem(f"messages[{index}].content", "empty_assistant", "empty assistant content")


def add_default_system(messages: list[dict], system_prompt: str | None) -> list[dict]:
    """Prepend a system message with `system_prompt` when the conversation has none (None = leave as is)."""
    if system_prompt is None or any(m["role"] == "system" for m in messages):
        return messages
    return [_message("system", system_prompt)] + messages


# ---------------------------------------------------------------------------------------------- normalizers


def alpaca_row(record: Mapping[str, Any], **_: Any) -> dict:
    """``instruction``, ``output``, optional ``input``, ``system``, ``history`` -> a chat row."""
    messages = _alpaca_messages(record)
    check_conversation(messages)
    return {"messages": messages, "tools": _tools(record.get("tools"))}


def conversation_row(record: Mapping[str, Any], **_: Any) -> dict:
    """``conversations`` (sharegpt ``from``/``value``) or ``messages`` (openai ``role``/``content``), optional
    ``system`` and ``tools`` -> a chat row."""
    messages = _conversation_messages(record)
    check_conversation(messages)
    return {"messages": messages, "tools": _tools(record.get("tools"))}


def text_row(record: Mapping[str, Any], **_: Any) -> dict:
    """``text`` -> a text row (continued pretraining)."""
    return {"text": _text(record)}
