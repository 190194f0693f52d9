"""The ``preference`` task of `medlab.data.prepare`: any preference input -> the canonical rows ``data=preference``
(`medlab.data.preference.PreferenceData`) reads as they are.

Inputs (detected by the format registry, kind ``preference``, `medlab.data.preference_rows`; ``prepare.fields``
maps other column names):

- pairs: ``prompt`` (aliases ``question``, ``instruction``) + ``chosen`` / ``rejected`` (aliases
  ``response_chosen``, ``response_rejected``), optional ``system``, ``margin``;
- ShareGPT ``conversations`` or OpenAI ``messages`` (the prompt turns) + ``chosen`` / ``rejected`` (a string, a
  turn or a list of turns);
- unpaired (KTO): ``prompt`` + ``completion`` + ``label`` (true = desirable);
- judgments: ``query`` / ``prompt``, ``doc``, ``score`` and/or ``label``, optional ``group``: every
  higher-vs-lower pair of documents within a query (``margin_from_score``: margin = score difference).

Canonical rows written:

- pairs ``{"prompt": str, "chosen": str, "rejected": str}`` + ``"system": str`` when the prompt had one,
  ``"margin": float`` when the input gave one; a multi-turn prompt (or a completion with several turns / tool
  calls) is written as a list of ``{"role", "content"[, "tool_calls"]}`` messages instead of a string (the
  system turn then stays first in the prompt list);
- unpaired ``{"prompt": str, "completion": str, "label": bool}`` (+ ``"system"``).

A pair whose chosen equals its rejected (after normalization, or after cleaning) is dropped and counted
(``chosen_equals_rejected``). Exact dedup keys on (system, prompt, chosen, rejected) (unpaired: prompt, completion,
label); the pairs of one prompt always land on the same side of the split.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from medlab.data.errors import RowProblem

FIELDS = ("prompt", "chosen", "rejected", "completion")
PAIR_FORMAT, UNPAIRED_FORMAT = "preference_pairs", "unpaired"


def _message_out(m: Mapping[str, Any]) -> dict:
    out = {"role": m["role"], "content": m.get("content") or ""}
    if m.get("tool_calls"):
        out["tool_calls"] = [{"name": c["name"], "arguments": c["arguments"]} for c in m["tool_calls"]]
    return out


def prompt_out(messages: list[dict]) -> tuple[Any, str | None]:
    """(prompt, system): one user turn (after an optional system turn) -> its text and the system text; anything
    longer -> the message list (system included) and None."""
    system, rest = None, messages
    if rest and rest[0]["role"] == "system":
        system, rest = rest[0]["content"], rest[1:]
    if len(rest) == 1 and rest[0]["role"] == "user" and not rest[0].get("tool_calls"):
        return rest[0]["content"], system
    return [_message_out(m) for m in messages], None


def completion_out(messages: list[dict]) -> Any:
    """One plain assistant turn -> its text; several turns or tool calls -> the message list."""
    if len(messages) == 1 and messages[0]["role"] == "assistant" and not messages[0].get("tool_calls"):
        return messages[0]["content"]
    return [_message_out(m) for m in messages]


def _with_prompt(prompt: list[dict], out: dict) -> dict:
    text, system = prompt_out(prompt)
    row = {"prompt": text}
    if system:
        row["system"] = system
    return {**row, **out}


def pair_out(row: Mapping[str, Any]) -> dict:
    """A normalized pair (``pair_row``/``judgment_pairs``: message lists) -> the canonical pair row."""
    out = {"chosen": completion_out(row["chosen"]), "rejected": completion_out(row["rejected"])}
    margin = row.get("margin")
    if margin is not None and not (isinstance(margin, float) and math.isnan(margin)):
        out["margin"] = float(margin)
    canonical = _with_prompt(row["prompt"], out)
    check_distinct(canonical)
    return canonical


def unpaired_out(row: Mapping[str, Any]) -> dict:
    return _with_prompt(row["prompt"], {"completion": completion_out(row["completion"]), "label": bool(row["label"])})


def check_distinct(row: Mapping[str, Any]) -> None:
    """A pair whose chosen and rejected are the same says nothing: RowProblem ``chosen_equals_rejected``."""
    if "chosen" in row and _plain(row["chosen"]).strip() == _plain(row["rejected"]).strip():
        raise RowProblem("rejected", "chosen_equals_rejected", "chosen and rejected are the same text")


def _plain(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(f"{m.get('role')}: {m.get('content') or ''} {m.get('tool_calls') or ''}" for m in value)
    return "" if value is None else str(value)


def map_texts(row: dict, fn: Callable[[str], str]) -> dict:
    """`row` with `fn` applied to its system text and every content of its prompt / completions."""
    out = dict(row)
    if isinstance(out.get("system"), str):
        out["system"] = fn(out["system"])
    for key in FIELDS:
        value = out.get(key)
        if isinstance(value, str):
            out[key] = fn(value)
        elif isinstance(value, list):
            out[key] = [{**m, "content": fn(m["content"])} if isinstance(m.get("content"), str) else m for m in value]
    return out


def texts(row: Mapping[str, Any]) -> list[str]:
    """The row's parts as text, in key order: system, prompt, chosen, rejected (unpaired: completion, label)."""
    parts = [_plain(row.get("system")), _plain(row.get("prompt"))]
    if "completion" in row:
        return parts + [_plain(row["completion"]), str(bool(row.get("label")))]
    return parts + [_plain(row.get("chosen")), _plain(row.get("rejected"))]


def prompt_text(row: Mapping[str, Any]) -> str:
    """What identifies the prompt (pairs of one prompt stay together in the split)."""
    return _plain(row.get("system")) + "\n" + _plain(row.get("prompt"))


def output_format(fmt: str) -> str:
    return UNPAIRED_FORMAT if fmt == UNPAIRED_FORMAT else PAIR_FORMAT
