"""The chat formats (kind ``chat``: SFT and CPT data), registered in `medlab.data.registry`, and how a file of
them is normalized to medlab's internal schema.

Formats (named for the datasets that made them common), in detection order toolcall, openai, sharegpt, alpaca,
text (chat columns win over alpaca columns, which win over `text`; `tools` beside a chat column means toolcall):
- `alpaca`:   `instruction`, `output`, optional `input`, `system`, `history` ([[user, assistant], ...]).
- `sharegpt`: `conversations: [{from: human|gpt|system, value}]`, optional `system`.
- `openai`:   `messages: [{role: system|user|assistant|tool, content, tool_calls?}]`.
- `toolcall`: sharegpt or openai rows with tool turns (`function_call`/`observation`, or `tool_calls`/`tool`)
  and a `tools` column (JSON schema of the callable functions, a JSON string or a list).
- `text`:     `text` (continued pretraining).

Internal schema (docs/INTERFACES.md): chat rows are
`{"messages": [{"role", "content", "tool_calls": [{"name", "arguments"}]}], "tools": str | None, "row": int,
"source": str}`, text rows `{"text", "row", "source"}` (`row`: 0-based index of the record in its file;
`source`: "FILE line N" / "FILE row N", 1-based, for messages). The row functions are in `medlab.data.chat_rows`.

Bad rows are never silently trained on: each yields one `BadRow` and the `on_bad_row` policy either raises
one `DataError` listing them or drops them and returns the counts by reason (``bad_row/<reason>``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets

from medlab.data import fields as F
from medlab.data import registry
from medlab.data.chat_rows import (  # noqa: F401  (re-exported: the public row functions of chat data)
    ROLE_ALIASES,
    add_default_system,
    alpaca_row,
    arguments_json,
    check_conversation,
    conversation_row,
    parse_tool_calls,
    text_row,
)
from medlab.data.errors import (  # noqa: F401  (RowProblem, bad_row_counts: re-exported)
    MAX_LISTED,
    BadRow,
    DataError,
    RowProblem,
    RowProblems,
    bad_row_counts,
    describe_bad_rows,
    record_location,
)
from medlab.data.registry import Format, register

CHAT = ("chat",)
_CHAT_COLUMNS = {"conversations", "messages"}
_REGISTERED = [
    register(Format("alpaca", CHAT, (("instruction",), ("output",)),
                    lambda c, first=None: {"instruction", "output"} <= c, alpaca_row, row="messages", order=40)),
    register(Format("sharegpt", CHAT, (("conversations", "messages"),),
                    lambda c, first=None: "conversations" in c, conversation_row, row="messages", order=30)),
    register(Format("openai", CHAT, (("messages", "conversations"),),
                    lambda c, first=None: "messages" in c, conversation_row, row="messages", order=20)),
    register(Format("toolcall", CHAT, (("conversations", "messages"), ("tools",)),
                    lambda c, first=None: bool(c & _CHAT_COLUMNS) and "tools" in c, conversation_row,
                    row="messages", order=10)),
    register(Format("text", CHAT, (("text",),), lambda c, first=None: "text" in c, text_row, row="text", order=90)),
]
FORMATS = tuple(f.name for f in _REGISTERED)  # the built-in chat formats; `registry.names("chat")` adds new ones
CHAT_FORMATS = tuple(f.name for f in _REGISTERED if f.row == "messages")
CANONICAL_FIELDS = ("instruction", "input", "output", "system", "history", "conversations", "messages", "tools", "text")
MAX_LISTED_PROBLEMS = MAX_LISTED

TOOL_CALL = {"name": datasets.Value("string"), "arguments": datasets.Value("string")}
MESSAGE = {
    "role": datasets.Value("string"),
    "content": datasets.Value("string"),
    "tool_calls": datasets.List(TOOL_CALL),
}
PROBLEMS = {"_problems": datasets.List({name: datasets.Value("string") for name in ("field", "reason", "message")})}
LOCATION = {"row": datasets.Value("int64"), "source": datasets.Value("string")}
CHAT_FEATURES = datasets.Features({"messages": datasets.List(MESSAGE), "tools": datasets.Value("string"), **LOCATION})
TEXT_FEATURES = datasets.Features({"text": datasets.Value("string"), **LOCATION})


# ---------------------------------------------------------------------------------------------- columns


def mapped_fields(fields: Mapping[str, str | None] | None) -> dict[str, str]:
    """The entries of a `fields` mapping that map something (null = the canonical column name, not mapped)."""
    return F.mapped(fields)


def rename_fields(dataset: datasets.Dataset, fields: Mapping[str, str] | None) -> datasets.Dataset:
    """Rename user columns to canonical ones; `fields` maps canonical name -> user column name (null: not mapped)."""
    fields = F.mapped(fields)
    mapping = {user: canonical for canonical, user in fields.items() if user != canonical}
    problems = field_mapping_problems(dataset.column_names, fields)
    if problems:
        raise DataError("; ".join(problems))
    return dataset.rename_columns(mapping) if mapping else dataset


def field_mapping_problems(columns: Sequence[str], fields: Mapping[str, str] | None) -> list[str]:
    """What is wrong with a `fields` mapping for a file with these columns (empty list = nothing)."""
    return F.problems(columns, fields, CANONICAL_FIELDS, chat=True)


def mapped_columns(columns: Sequence[str], fields: Mapping[str, str] | None) -> list[str]:
    """The column names after `rename_fields` (for checks that must not load the data)."""
    rename = {user: canonical for canonical, user in F.mapped(fields).items()}
    return [rename.get(column, column) for column in columns]


def detect_format(columns: Sequence[str]) -> str | None:
    """The chat format implied by the (canonical) column names, or None if none fits (see the module docstring)."""
    return registry.detect("chat", columns)


def format_problems(fmt: str, columns: Sequence[str]) -> list[str]:
    """Missing required columns for `fmt` (after field mapping); empty list = all present."""
    known = registry.names("chat")
    if fmt not in known:
        return [f"unknown format {fmt!r} (known: auto, {', '.join(known)})"]
    return [
        f"format {fmt!r} needs a column {' or '.join(repr(c) for c in options)} (has {sorted(columns)}; "
        f"map yours with data.fields)"
        for options in registry.get(fmt).missing(columns)
    ]


def resolve_format(fmt: str, columns: Sequence[str], file: str = "<data>") -> str:
    """`fmt`, or the detected format if `fmt == "auto"`; raises `DataError` if the columns do not fit."""
    if fmt == "auto":
        detected = detect_format(columns)
        if detected is None:
            raise DataError(
                f"{file}: cannot detect the data format from columns {list(columns)}; set data.format "
                f"({', '.join(registry.names('chat'))}) and/or map columns with data.fields"
            )
        fmt = detected
    problems = format_problems(fmt, columns)
    if problems:
        raise DataError(f"{file}: " + "; ".join(problems))
    return fmt


def normalize_record(record: Mapping[str, Any], fmt: str) -> dict:
    """One source record -> internal schema (without `row`); raises `RowProblem` when the record is bad."""
    return registry.get(fmt).normalize(record)


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
    features = TEXT_FEATURES if registry.get(fmt).row == "text" else CHAT_FEATURES
    if numbers is not None and len(numbers) != len(dataset):
        raise ValueError(f"{len(numbers)} positions for {len(dataset)} records")
    mapped = dataset.map(
        _normalize_batch,
        batched=True,
        with_indices=True,
        fn_kwargs={"fmt": fmt, "system_prompt": system_prompt, "file": str(file), "numbers": numbers, "unit": unit},
        remove_columns=dataset.column_names,
        features=datasets.Features({**features, **PROBLEMS}),
        keep_in_memory=True,
        new_fingerprint=datasets.fingerprint.generate_random_fingerprint(),  # numbers would be slow to hash
        desc=f"Normalizing {fmt} rows",
    )
    bad = [
        BadRow(where, p["field"], p["message"], p["reason"])
        for where, problems in zip(mapped["source"], mapped["_problems"])
        for p in problems
    ]
    if bad:
        mapped = mapped.filter(
            lambda problems: [not p for p in problems], input_columns="_problems", batched=True, keep_in_memory=True
        )
    return mapped.remove_columns(list(PROBLEMS)), fmt, bad


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
    spec = registry.get(fmt)
    columns = list(batch)
    out: dict[str, list] = {name: [] for name in ("row", "source", "_problems")}
    out.update({"text": []} if spec.row == "text" else {"messages": [], "tools": []})
    for position, row in enumerate(indices):
        record = {column: batch[column][position] for column in columns}
        problems: list[RowProblem] = []
        try:
            normalized = spec.normalize(record)
        except (RowProblem, RowProblems) as err:
            normalized = {"text": ""} if spec.row == "text" else {"messages": [], "tools": None}
            problems = err.problems if isinstance(err, RowProblems) else [err]
        if "messages" in normalized:
            normalized["messages"] = add_default_system(normalized["messages"], system_prompt)
        for key, value in normalized.items():
            out[key].append(value)
        out["row"].append(row)
        out["source"].append(record_location(file, row, numbers, unit))
        out["_problems"].append([{"field": p.field, "reason": p.reason, "message": p.message} for p in problems])
    return out


def describe_problems(problems: Sequence[BadRow], limit: int = MAX_LISTED_PROBLEMS) -> str:
    """One message listing the first `limit` bad rows and the totals by reason (see `medlab.data.errors`)."""
    return describe_bad_rows(problems, limit)
