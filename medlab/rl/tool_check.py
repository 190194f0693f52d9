"""Tool-routing checks in the manner of the Berkeley Function Calling Leaderboard's AST checker (pure functions).

    result = check_turn(model_text, expected_calls=[{"name": "get_dose", "arguments": {"drug": "ibuprofen"}}],
                        tools=[{"name": "get_dose", "parameters": {...}}, ...])
    result.correct, result.category, result.malformed, result.reason
    metrics = summarize([result, ...])     # tool_routing_acc, per category, malformed_rate, ...

A predicted turn is parsed with :func:`medlab.rl.tools.parse_tool_calls` (``<tool_call>{json}</tool_call>``
blocks). It is **correct** when:

- the turn needs no tool (no reference call): no call is made at all (BFCL "irrelevance");
- otherwise: no block is malformed, there are as many calls as references, and the calls can be paired with the
  references (in any order, as BFCL's parallel checker) so that each pair passes :func:`check_call`:

  1. exactly the reference's function name;
  2. every parameter the schema marks ``required`` is present;
  3. no parameter outside the schema's ``properties``;
  4. each value has the schema's JSON type (``integer``: an int, not a bool; ``number``: int or float; ``string``;
     ``boolean``; ``array`` with typed ``items``; ``object``; ``enum`` values enforced);
  5. the parameters present equal the reference's after normalization (:func:`normalize_value`: strings
     lowercased with spaces and ``,./-_*^`` removed, as BFCL standardizes them; ints and floats compared as
     numbers; lists element-wise; dicts key-wise); a parameter the reference has but the prediction lacks, or one
     the prediction adds that the reference does not have, is a mismatch (BFCL: "optional parameter not provided"
     / "unexpected parameter").

Categories (BFCL's names in brackets): ``single`` (one tool offered, one call expected) [simple], ``multiple``
(several tools offered, one call expected) [multiple], ``parallel`` (more than one call expected) [parallel],
``no_tool`` (no call expected) [irrelevance]. A **malformed** turn has a ``<tool_call>`` block that does not parse
as ``{"name": str, "arguments": object}``; it is counted separately and is never correct.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import permutations
from typing import Any

from medlab.rl.tools import parse_tool_calls

CATEGORIES = ("single", "multiple", "parallel", "no_tool")
_STRIP = re.compile(r"[ ,./\-_*^]")


@dataclass(frozen=True)
class TurnResult:
    category: str
    correct: bool
    malformed: bool
    reason: str  # "" when correct; else the first problem found
    predicted: tuple = ()


def tool_schemas(tools: Any) -> dict[str, dict]:
    """name -> JSON schema of its parameters, from glaive / OpenAI tool lists (JSON text or parsed)."""
    if not tools:
        return {}
    parsed = json.loads(tools) if isinstance(tools, str) else tools
    out = {}
    for t in parsed if isinstance(parsed, list) else [parsed]:
        f = t.get("function", t) if isinstance(t, Mapping) else {}
        if isinstance(f, Mapping) and isinstance(f.get("name"), str):
            out[f["name"]] = dict(f.get("parameters") or {"type": "object", "properties": {}})
    return out


def category_of(expected: Sequence[Mapping[str, Any]], num_tools: int) -> str:
    if not expected:
        return "no_tool"
    if len(expected) > 1:
        return "parallel"
    return "single" if num_tools <= 1 else "multiple"


def normalize_value(value: Any) -> Any:
    """BFCL-style normalization for comparison (see the module docstring)."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return _STRIP.sub("", value).lower()
    if isinstance(value, Mapping):
        return {str(k): normalize_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize_value(v) for v in value]
    return value


def type_problem(value: Any, schema: Mapping[str, Any], name: str) -> str | None:
    """Why ``value`` does not have ``schema``'s JSON type (None when it does)."""
    kind = schema.get("type")
    if isinstance(kind, list):  # ["string", "null"]
        return None if any(type_problem(value, {**schema, "type": k}, name) is None for k in kind) else \
            f"{name}: type {type(value).__name__} is none of {kind}"
    ok = {"string": lambda v: isinstance(v, str),
          "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
          "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          "boolean": lambda v: isinstance(v, bool),
          "array": lambda v: isinstance(v, list),
          "object": lambda v: isinstance(v, Mapping),
          "null": lambda v: v is None}.get(str(kind)) if kind else None
    if ok is not None and not ok(value):
        return f"{name}: expected {kind}, got {type(value).__name__} {value!r:.40}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{name}: {value!r:.40} is not one of {schema['enum']}"
    if kind == "array" and isinstance(schema.get("items"), Mapping):
        for i, item in enumerate(value):
            problem = type_problem(item, schema["items"], f"{name}[{i}]")
            if problem:
                return problem
    return None


def check_call(pred: Mapping[str, Any], ref: Mapping[str, Any], schema: Mapping[str, Any] | None) -> str | None:
    """The first problem of a predicted call against its reference and the function's parameter schema (None when
    it passes the checks of the module docstring)."""
    if pred.get("name") != ref.get("name"):
        return f"wrong function: {pred.get('name')!r} instead of {ref.get('name')!r}"
    args = pred.get("arguments") or {}
    ref_args = _args(ref.get("arguments"))
    if not isinstance(args, Mapping):
        return "arguments are not an object"
    if schema is None:
        return f"{pred.get('name')!r} is not among the offered tools"
    props = schema.get("properties") or {}
    for name in schema.get("required") or []:
        if name not in args:
            return f"missing required parameter {name!r}"
    for name, value in args.items():
        if name not in props:
            return f"parameter {name!r} is not in the schema"
        problem = type_problem(value, props[name], name)
        if problem:
            return f"wrong type: {problem}"
    for name in ref_args:
        if name not in args:
            return f"parameter {name!r} of the reference is missing"
    for name, value in args.items():
        if name not in ref_args:
            return f"unexpected parameter {name!r} (not in the reference)"
        if normalize_value(value) != normalize_value(ref_args[name]):
            return f"wrong value for {name!r}: {value!r:.40} instead of {ref_args[name]!r:.40}"
    return None


def _args(arguments: Any) -> dict:
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            return {}
    return dict(arguments or {})


def check_turn(text: str, expected: Sequence[Mapping[str, Any]], tools: Any) -> TurnResult:
    """One assistant turn: the model's ``text`` against the ``expected`` calls (``[]``: no tool needed)."""
    schemas = tool_schemas(tools)
    category = category_of(expected, len(schemas))
    calls, errors = parse_tool_calls(text)
    malformed = bool(errors)
    if not expected:
        if calls or errors:
            reason = "malformed tool call where none was needed" if errors and not calls else \
                f"called {calls[0]['name']!r} where no tool was needed"
            return TurnResult(category, False, malformed, reason, tuple(calls))
        return TurnResult(category, True, False, "", ())
    if errors:
        return TurnResult(category, False, True, f"malformed tool call: {errors[0]}", tuple(calls))
    if not calls:
        return TurnResult(category, False, False, "no tool call", ())
    if len(calls) != len(expected):
        return TurnResult(category, False, False, f"{len(calls)} calls instead of {len(expected)}", tuple(calls))
    first_problem = None
    for order in permutations(range(len(calls))) if len(calls) <= 6 else [tuple(range(len(calls)))]:
        problems = [check_call(calls[i], ref, schemas.get(str(calls[i].get("name"))))
                    for i, ref in zip(order, expected)]
        if not any(problems):
            return TurnResult(category, True, False, "", tuple(calls))
        first_problem = first_problem or next(p for p in problems if p)
    return TurnResult(category, False, False, first_problem or "mismatch", tuple(calls))


def summarize(results: Sequence[TurnResult]) -> dict[str, float]:
    """``tool_routing_acc`` (all turns), ``tool_routing_acc/<category>`` and ``tool_routing_n/<category>`` for the
    categories present, ``tool_routing_malformed_rate`` and ``tool_routing_turns``."""
    n = len(results)
    if n == 0:
        return {}
    out = {"tool_routing_acc": sum(r.correct for r in results) / n,
           "tool_routing_malformed_rate": sum(r.malformed for r in results) / n, "tool_routing_turns": float(n)}
    for cat in CATEGORIES:
        group = [r for r in results if r.category == cat]
        if group:
            out[f"tool_routing_acc/{cat}"] = sum(r.correct for r in group) / len(group)
            out[f"tool_routing_n/{cat}"] = float(len(group))
    return out
