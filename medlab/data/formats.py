"""Detect a data file's format and normalize every row to medlab's internal schema.

Formats (named for the datasets that made them common):
- `alpaca`:   `instruction`, `output`, optional `input`, `system`, `history` ([[user, assistant], ...]).
- `sharegpt`: `conversations: [{from: human|gpt|system, value}]`, optional `system`.
- `openai`:   `messages: [{role: system|user|assistant|tool, content, tool_calls?}]`.
- `toolcall`: sharegpt or openai rows with tool turns (`function_call`/`observation`, or `tool_calls`/`tool`)
  and a `tools` column (JSON schema of the callable functions, a JSON string or a list).
- `text`:     `text` (continued pretraining).

Internal schema (docs/INTERFACES.md): chat rows are
`{"messages": [{"role", "content", "tool_calls": [{"name", "arguments"}]}], "tools": str | None, "row": int,
"source": str}`, text rows `{"text", "row", "source"}` (`row`: 0-based index of the record in its file;
`source`: "FILE line N" / "FILE row N", 1-based, for messages). Tool-call `arguments` and `tools` are kept as
JSON text so arrow stores every row with one schema; templates parse them back when rendering.

Bad rows are never silently trained on: each yields one `BadRow` and the `on_bad_row` policy either raises
one `DataError` listing them or drops them and returns the counts by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from medlab.data.errors import MAX_LISTED, BadRow, DataError, describe_bad_rows, json_error, record_location

FORMATS = ("alpaca", "sharegpt", "openai", "toolcall", "text")
CHAT_FORMATS = ("alpaca", "sharegpt", "openai", "toolcall")
CANONICAL_FIELDS = ("instruction", "input", "output", "system", "history", "conversations", "messages", "tools", "text")
MAX_LISTED_PROBLEMS = MAX_LISTED

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

TOOL_CALL = {"name": datasets.Value("string"), "arguments": datasets.Value("string")}
MESSAGE = {
    "role": datasets.Value("string"),
    "content": datasets.Value("string"),
    "tool_calls": datasets.List(TOOL_CALL),
}
PROBLEM_COLUMNS = {name: datasets.Value("string") for name in ("_field", "_reason", "_message")}
LOCATION = {"row": datasets.Value("int64"), "source": datasets.Value("string")}
CHAT_FEATURES = datasets.Features({"messages": datasets.List(MESSAGE), "tools": datasets.Value("string"), **LOCATION})
TEXT_FEATURES = datasets.Features({"text": datasets.Value("string"), **LOCATION})


class RowProblem(Exception):
    """Raised inside row normalization; turned into a `Problem` by `normalize`."""

    def __init__(self, field: str, reason: str, message: str):
        super().__init__(message)
        self.field, self.reason, self.message = field, reason, message


# ---------------------------------------------------------------------------------------------- columns


def mapped_fields(fields: Mapping[str, str | None] | None) -> dict[str, str]:
    """The entries of a `fields` mapping that map something (null = the canonical column name, not mapped)."""
    return {canonical: user for canonical, user in (fields or {}).items() if user is not None}


def rename_fields(dataset: datasets.Dataset, fields: Mapping[str, str] | None) -> datasets.Dataset:
    """Rename user columns to canonical ones; `fields` maps canonical name -> user column name (null: not mapped)."""
    fields = mapped_fields(fields)
    mapping = {user: canonical for canonical, user in fields.items() if user != canonical}
    problems = field_mapping_problems(dataset.column_names, fields)
    if problems:
        raise DataError("; ".join(problems))
    return dataset.rename_columns(mapping) if mapping else dataset


def field_mapping_problems(columns: Sequence[str], fields: Mapping[str, str] | None) -> list[str]:
    """What is wrong with a `fields` mapping for a file with these columns (empty list = nothing)."""
    problems = []
    for canonical, user in (fields or {}).items():
        if user is None and canonical in CANONICAL_FIELDS:
            continue  # null: not mapped
        if canonical not in CANONICAL_FIELDS:
            problems.append(f"fields: unknown canonical field {canonical!r} (known: {', '.join(CANONICAL_FIELDS)})")
        elif user not in columns:
            problems.append(f"fields: column {user!r} (for {canonical!r}) not in the file's columns {list(columns)}")
    return problems


def mapped_columns(columns: Sequence[str], fields: Mapping[str, str] | None) -> list[str]:
    """The column names after `rename_fields` (for checks that must not load the data)."""
    rename = {user: canonical for canonical, user in mapped_fields(fields).items()}
    return [rename.get(column, column) for column in columns]


def detect_format(columns: Sequence[str]) -> str | None:
    """The format implied by the (canonical) column names, or None if none fits.

    Chat columns win over alpaca columns, which win over `text`; `tools` beside a chat column means `toolcall`.
    """
    columns = set(columns)
    if columns & {"conversations", "messages"}:
        return "toolcall" if "tools" in columns else ("openai" if "messages" in columns else "sharegpt")
    if {"instruction", "output"} <= columns:
        return "alpaca"
    if "text" in columns:
        return "text"
    return None


def format_problems(fmt: str, columns: Sequence[str]) -> list[str]:
    """Missing required columns for `fmt` (after field mapping); empty list = all present."""
    columns = set(columns)
    if fmt not in FORMATS:
        return [f"unknown format {fmt!r} (known: auto, {', '.join(FORMATS)})"]
    required = {
        "alpaca": [("instruction",), ("output",)],
        "sharegpt": [("conversations", "messages")],
        "openai": [("messages", "conversations")],
        "toolcall": [("conversations", "messages"), ("tools",)],
        "text": [("text",)],
    }[fmt]
    return [
        f"format {fmt!r} needs a column {' or '.join(repr(c) for c in options)} (has {sorted(columns)}; "
        f"map yours with data.fields)"
        for options in required
        if not columns & set(options)
    ]


def resolve_format(fmt: str, columns: Sequence[str], file: str = "<data>") -> str:
    """`fmt`, or the detected format if `fmt == "auto"`; raises `DataError` if the columns do not fit."""
    if fmt == "auto":
        detected = detect_format(columns)
        if detected is None:
            raise DataError(
                f"{file}: cannot detect the data format from columns {list(columns)}; set data.format "
                f"({', '.join(FORMATS)}) and/or map columns with data.fields"
            )
        fmt = detected
    problems = format_problems(fmt, columns)
    if problems:
        raise DataError(f"{file}: " + "; ".join(problems))
    return fmt


# ---------------------------------------------------------------------------------------------- rows


def normalize_record(record: Mapping[str, Any], fmt: str) -> dict:
    """One source record -> internal schema (without `row`); raises `RowProblem` when the record is bad."""
    if fmt == "text":
        return {"text": _text(record)}
    if fmt == "alpaca":
        messages = _alpaca_messages(record)
    else:
        messages = _conversation_messages(record)
    check_conversation(messages)
    return {"messages": messages, "tools": _tools(record.get("tools"))}


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


# ---------------------------------------------------------------------------------------------- datasets


def normalize(
    dataset: datasets.Dataset,
    fmt: str = "auto",
    *,
    fields: Mapping[str, str] | None = None,
    file: str = "<data>",
    on_bad_row: str = "error",
    system_prompt: str | None = None,
    numbers: Sequence[int] | None = None,
    unit: str = "line",
) -> tuple[datasets.Dataset, str, dict[str, int]]:
    """Normalize a raw dataset; returns (normalized dataset, the resolved format, counts of dropped rows by reason).

    `on_bad_row="error"` raises one `DataError` listing up to 20 problems and the total; `"skip"` drops the
    bad rows and reports them as `{"bad_row/<reason>": n}` (the caller logs them). `numbers`: the 1-based
    position of each record in `file`, in `unit`s (`line` or `row`; `readers.FileRecords`); without them
    records are named "row N" (N from 1).
    """
    if on_bad_row not in ("error", "skip"):
        raise DataError(f"on_bad_row must be 'error' or 'skip', got {on_bad_row!r}")
    rows, fmt, bad = normalize_collect(
        dataset, fmt, fields=fields, file=file, system_prompt=system_prompt, numbers=numbers, unit=unit
    )
    if bad and on_bad_row == "error":
        raise DataError(describe_bad_rows(bad))
    return rows, fmt, bad_row_counts(bad)


def bad_row_counts(bad: Sequence[BadRow]) -> dict[str, int]:
    """`{"bad_row/<reason>": n}`: how the dropped rows are counted (logged, and `data/...` in metrics.json)."""
    return dict(Counter(f"bad_row/{b.reason}" for b in bad))


def normalize_collect(
    dataset: datasets.Dataset,
    fmt: str = "auto",
    *,
    fields: Mapping[str, str] | None = None,
    file: str = "<data>",
    system_prompt: str | None = None,
    numbers: Sequence[int] | None = None,
    unit: str = "line",
) -> tuple[datasets.Dataset, str, list[BadRow]]:
    """Normalize the good rows and collect every bad one: (normalized good rows, format, bad rows in order).

    Raises `DataError` only for problems of the whole file (fields that do not fit, an undetectable format).
    """
    dataset = rename_fields(dataset, fields)
    fmt = resolve_format(fmt, dataset.column_names, file)
    features = TEXT_FEATURES if fmt == "text" else CHAT_FEATURES
    if numbers is not None and len(numbers) != len(dataset):
        raise ValueError(f"{len(numbers)} positions for {len(dataset)} records")
    mapped = dataset.map(
        _normalize_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={"fmt": fmt, "system_prompt": system_prompt, "file": str(file), "numbers": numbers, "unit": unit},
        remove_columns=dataset.column_names,
        features=datasets.Features({**features, **PROBLEM_COLUMNS}),
        keep_in_memory=True,
        new_fingerprint=datasets.fingerprint.generate_random_fingerprint(),  # numbers would be slow to hash
        desc=f"Normalizing {fmt} rows",
    )
    bad = [
        BadRow(where, field, message, reason)
        for where, field, reason, message in zip(
            mapped["source"], mapped["_field"], mapped["_reason"], mapped["_message"]
        )
        if reason is not None
    ]
    if bad:
        mapped = mapped.filter(
            lambda reasons: [r is None for r in reasons], input_columns="_reason", batched=True, keep_in_memory=True
        )
    return mapped.remove_columns(list(PROBLEM_COLUMNS)), fmt, bad


def _normalize_batch(
    batch: dict[str, list],
    indices: list[int],
    *,
    fmt: str,
    system_prompt: str | None,
    file: str,
    numbers: Sequence[int] | None,
    unit: str,
) -> dict:
    columns = list(batch)
    out: dict[str, list] = {name: [] for name in ("row", "source", "_field", "_reason", "_message")}
    out.update({"text": []} if fmt == "text" else {"messages": [], "tools": []})
    for position, row in enumerate(indices):
        record = {column: batch[column][position] for column in columns}
        try:
            normalized, problem = normalize_record(record, fmt), (None, None, None)
        except RowProblem as err:
            normalized = {"text": ""} if fmt == "text" else {"messages": [], "tools": None}
            problem = (err.field, err.reason, err.message)
        if "messages" in normalized:
            normalized["messages"] = add_default_system(normalized["messages"], system_prompt)
        for key, value in normalized.items():
            out[key].append(value)
        out["row"].append(row)
        out["source"].append(record_location(file, row, numbers, unit))
        for key, value in zip(("_field", "_reason", "_message"), problem):
            out[key].append(value)
    return out


def describe_problems(problems: Sequence[BadRow], limit: int = MAX_LISTED_PROBLEMS) -> str:
    """One message listing the first `limit` bad rows and the totals by reason (see `medlab.data.errors`)."""
    return describe_bad_rows(problems, limit)
