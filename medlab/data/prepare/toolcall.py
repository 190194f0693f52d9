"""The ``toolcall`` task of `medlab.data.prepare`: function-calling conversations -> the canonical rows the
``toolcall`` chat format reads (``data=sample_toolcall``, ``+experiment=sft_toolcall``) as they are.

Inputs: ShareGPT / glaive rows (``conversations`` with ``function_call`` and ``observation`` turns) or OpenAI rows
(``messages`` with assistant ``tool_calls`` -- ``{"name", "arguments"}`` or ``{"type": "function", "function":
{...}}`` -- and ``tool`` turns), each with a ``tools`` column (the JSON schemas of the callable functions, a JSON
string or a list).

Canonical row: ``{"messages": [{"role": system|user|assistant|tool, "content": str, "tool_calls"?: [{"name": str,
"arguments": str (JSON)}]}], "tools": str (JSON list of function schemas)}``.

Checks beyond the chat format's (each a counted reason, the row dropped): ``no_tools`` (no function schemas),
``undeclared_tool`` (a call names a function ``tools`` does not declare), ``orphan_tool_result`` (a tool turn
that follows no assistant tool call). Rows whose assistant answers without calling a tool are kept (they teach when
not to call one) and counted: the report's read step gives ``rows_with_tool_calls`` / ``rows_without_tool_calls``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from medlab.data.errors import RowProblem, RowProblems


def declared_names(tools: Any) -> set[str]:
    """The function names a ``tools`` value (JSON text or a list) declares (OpenAI ``{"type": "function",
    "function": {...}}`` entries included)."""
    if isinstance(tools, str):
        tools = json.loads(tools)
    if isinstance(tools, Mapping):
        tools = [tools]
    names = set()
    for tool in tools or []:
        if isinstance(tool, Mapping):
            spec = tool.get("function") if isinstance(tool.get("function"), Mapping) else tool
            if isinstance(spec.get("name"), str):
                names.add(spec["name"])
    return names


def check(row: Mapping[str, Any]) -> None:
    """Raise RowProblem(s) for a chat row that is not a usable tool-call conversation (see the module docstring)."""
    problems = []
    if not row.get("tools"):
        raise RowProblem("tools", "no_tools", "no function schemas (tools) for the tool-call conversation")
    declared = declared_names(row["tools"])
    called = False
    for i, m in enumerate(row["messages"]):
        for call in m.get("tool_calls") or []:
            called = True
            if call["name"] not in declared:
                problems.append(RowProblem(f"messages[{i}].tool_calls", "undeclared_tool",
                                           f"calls {call['name']!r}, which tools does not declare "
                                           f"(declared: {', '.join(sorted(declared)) or 'none'})"))
        if m["role"] == "tool" and not called:
            problems.append(RowProblem(f"messages[{i}]", "orphan_tool_result",
                                       "a tool result that follows no tool call"))
    if problems:
        raise RowProblems(problems) if len(problems) > 1 else problems[0]


def calls_text(row: Mapping[str, Any]) -> str:
    """The tool calls of a row as text (``name(arguments)``, in order): part of what duplicates are compared on."""
    return "\n".join(f"{c['name']}({c['arguments']})" for m in row["messages"] for c in m.get("tool_calls") or [])


def has_calls(row: Mapping[str, Any]) -> bool:
    return any(m.get("tool_calls") for m in row["messages"])
