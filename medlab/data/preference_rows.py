"""Preference rows, one record at a time: the formats of kind ``preference`` (registered in `medlab.data.registry`)
and the pairs made from graded judgments. Pure functions, no tokenizer.

Canonical fields (``data.fields`` maps your columns onto them; a null entry = not mapped, then the canonical name
and the aliases in `ALIASES` are used): ``prompt``, ``system``, ``conversations``, ``messages``, ``chosen``,
``rejected``, ``margin``, ``completion``, ``label``, ``doc``, ``score``, ``group``.

Formats, detected from the mapped columns in this order:

- ``preference_conversations``: ``conversations`` (ShareGPT ``{from, value}`` turns) or ``messages`` (OpenAI
  ``{role, content}``) as the prompt, ``chosen`` / ``rejected`` as strings, one turn, or a list of turns.
- ``preference_pairs``: ``prompt`` (a string or a list of messages; aliases ``question``, ``instruction``),
  ``chosen`` / ``rejected`` (strings or message lists; aliases ``response_chosen``, ``response_rejected``),
  optional ``system`` and ``margin`` -- the canonical schema ``python -m medlab.prepare prepare.task=preference``
  writes.
- ``unpaired``: ``prompt``, ``completion``, ``label`` (true = desirable), for KTO.
- ``judgments``: ``prompt`` (alias ``query``), ``doc`` (alias ``answer``), ``score`` (aliases ``judgment``,
  ``relevance``) and/or ``label``, optional ``group`` (aliases ``qid``, ``query_id``): graded candidates of a
  question; `judgment_pairs` makes every higher-vs-lower pair within a group.

Normalized rows (``Format.row`` says which): ``pair`` ``{prompt, chosen, rejected, margin, group}``, ``unpaired``
``{prompt, completion, label, group}``, ``judged`` ``{prompt, doc, score, group}``; ``prompt`` / ``chosen`` /
``rejected`` / ``completion`` are message lists (``{"role", "content", "tool_calls"}``), the prompt ending with a
user (or tool) turn, the completions with an assistant turn. A bad record raises `RowProblem` naming the field.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

from medlab.data.chat_rows import _append_turn, _conversation_messages, add_default_system
from medlab.data.errors import RowProblem, RowProblems
from medlab.data.registry import Format, register

CANONICAL = ("prompt", "system", "conversations", "messages", "chosen", "rejected", "margin", "completion", "label",
             "doc", "score", "group")
ALIASES = {"prompt": ("question", "instruction", "query"), "chosen": ("response_chosen", "chosen_response"),
           "rejected": ("response_rejected", "rejected_response"), "completion": ("response", "output"),
           "doc": ("answer", "document", "passage"), "score": ("judgment", "relevance", "rating"),
           "group": ("qid", "query_id", "prompt_id")}
ROWS = ("pair", "unpaired", "judged")
_TRUE = {"true", "1", "yes", "desirable", "good"}
_FALSE = {"false", "0", "no", "undesirable", "bad"}


# ---------------------------------------------------------------------------------------------- pieces


def _message(role: str, content: str) -> dict:
    return {"role": role, "content": content, "tool_calls": []}


def prompt_messages(row: Mapping[str, Any], system_prompt: str | None = None) -> list[dict]:
    """The prompt of a row as messages: ``conversations``/``messages`` turns, or ``prompt`` (a string = one user
    turn, or a message list), with ``system`` first; it must hold a user turn and not end with an assistant turn."""
    column = next((c for c in ("conversations", "messages") if row.get(c) is not None), None)
    if column is not None:
        messages = _conversation_messages({column: row[column], "system": row.get("system")})
        field = column
    else:
        field, value = "prompt", row.get("prompt")
        messages = [_message("system", row["system"])] if isinstance(row.get("system"), str) and row["system"] else []
        if isinstance(value, str):
            if not value.strip():
                raise RowProblem("prompt", "empty_prompt", "empty prompt")
            messages.append(_message("user", value))
        elif isinstance(value, list):
            for i, turn in enumerate(value):
                _append_turn(messages, turn, f"prompt[{i}]")
        elif value is None or (isinstance(value, float) and math.isnan(value)):
            raise RowProblem("prompt", "missing_field", "missing prompt")
        else:
            raise RowProblem("prompt", "wrong_type", f"prompt must be a string or a list of messages, got "
                                                     f"{type(value).__name__}")
    if isinstance(row.get("system"), (int, float, list, dict)) and not isinstance(row.get("system"), bool):
        raise RowProblem("system", "wrong_type", f"system must be a string, got {type(row['system']).__name__}")
    if not any(m["role"] == "user" for m in messages):
        raise RowProblem(field, "no_user_turn", "the prompt has no user turn")
    if messages[-1]["role"] == "assistant":
        raise RowProblem(field, "prompt_ends_with_assistant", "the prompt ends with an assistant turn; the answer to "
                                                             "compare belongs in chosen/rejected")
    if any(m["role"] != "system" and not (m["content"] or "").strip() for m in messages if m["role"] == "user"):
        raise RowProblem(field, "empty_prompt", "a user turn of the prompt is empty")
    return add_default_system(messages, system_prompt)


def completion_messages(value: Any, field: str) -> list[dict]:
    """A completion: a string (one assistant turn), one turn (``{from, value}`` / ``{role, content}``) or a list of
    turns ending with a non-empty assistant turn."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise RowProblem(field, "missing_field", f"missing {field!r}")
    if isinstance(value, str):
        messages = [_message("assistant", value)]
    elif isinstance(value, Mapping):
        messages = []
        _append_turn(messages, value, field)
    elif isinstance(value, list):
        messages = []
        for i, turn in enumerate(value):
            _append_turn(messages, turn, f"{field}[{i}]")
    else:
        raise RowProblem(field, "wrong_type", f"{field!r} must be a string or messages, got {type(value).__name__}")
    if not messages or messages[-1]["role"] != "assistant":
        raise RowProblem(field, "not_ending_with_assistant", f"{field!r} must end with an assistant turn")
    if not (messages[-1]["content"] or "").strip() and not messages[-1]["tool_calls"]:
        raise RowProblem(field, f"empty_{field}", f"empty {field!r}")
    return messages


def _number(row: Mapping[str, Any], field: str, reason: str) -> float | None:
    value = row.get(field)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise RowProblem(field, reason, f"{field} {value!r} is not a number") from None
    if math.isnan(out) or math.isinf(out):
        raise RowProblem(field, reason, f"{field} is {value!r}")
    return out


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise RowProblem("label", "bad_label", f"label {value!r} is not a boolean (true = desirable, false = undesirable)")


def _group(row: Mapping[str, Any], prompt: list[dict]) -> str:
    group = row.get("group")
    if group is not None and not (isinstance(group, float) and math.isnan(group)):
        return str(group)
    return json.dumps([(m["role"], m["content"]) for m in prompt], ensure_ascii=False)


def _collect(*parts):
    """Run each ``() -> value`` and raise every RowProblem at once."""
    out, problems = [], []
    for part in parts:
        try:
            out.append(part())
        except RowProblem as p:
            problems.append(p)
            out.append(None)
        except RowProblems as ps:
            problems += ps.problems
            out.append(None)
    if problems:
        raise RowProblems(problems) if len(problems) > 1 else problems[0]
    return out


# ---------------------------------------------------------------------------------------------- normalizers


def pair_row(row: Mapping[str, Any], *, system_prompt: str | None = None, **_: Any) -> dict:
    """``preference_pairs`` / ``preference_conversations`` -> ``{prompt, chosen, rejected, margin, group}``."""
    prompt, chosen, rejected, margin = _collect(
        lambda: prompt_messages(row, system_prompt), lambda: completion_messages(row.get("chosen"), "chosen"),
        lambda: completion_messages(row.get("rejected"), "rejected"), lambda: _number(row, "margin", "bad_margin"))
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected, "margin": margin, "group": _group(row, prompt)}


def unpaired_row(row: Mapping[str, Any], *, system_prompt: str | None = None, **_: Any) -> dict:
    """``unpaired`` -> ``{prompt, completion, label, group}``."""
    prompt, completion, label = _collect(
        lambda: prompt_messages(row, system_prompt), lambda: completion_messages(row.get("completion"), "completion"),
        lambda: _bool(row.get("label")))
    return {"prompt": prompt, "completion": completion, "label": label, "group": _group(row, prompt)}


def judged_row(row: Mapping[str, Any], *, system_prompt: str | None = None, **_: Any) -> dict:
    """``judgments`` -> ``{prompt, doc, score, group}``: the score, else the label (0/1 or a boolean)."""
    def score() -> float:
        value = _number(row, "score", "bad_score")
        label = row.get("label")
        if value is None and label is not None:
            value = float(_bool(label)) if isinstance(label, (bool, str)) else _number(row, "label", "bad_label")
        if value is None:
            raise RowProblem("score", "missing_score", "no score or label to rank the documents by")
        return value

    def doc() -> str:
        value = row.get("doc")
        if not isinstance(value, str) or not value.strip():
            raise RowProblem("doc", "empty_doc", "empty or missing document text")
        return value

    prompt, text, value = _collect(lambda: prompt_messages(row, system_prompt), doc, score)
    return {"prompt": prompt, "doc": text, "score": value, "group": _group(row, prompt)}


def judgment_pairs(rows: Sequence[dict], *, margin_from_score: bool = False, margin_scale: float = 1.0,
                   max_pairs_per_group: int | None = None) -> tuple[list[dict], dict[str, int]]:
    """Every higher-vs-lower pair of documents within a group (ties give none), in row order: pair rows with
    ``margin = margin_scale * (score_chosen - score_rejected)`` when ``margin_from_score``. ``max_pairs_per_group``
    keeps the pairs with the largest score gaps first. Returns (pairs, counts: groups, groups without a pair)."""
    by_group: dict[str, list[dict]] = {}
    for r in rows:
        by_group.setdefault(r["group"], []).append(r)
    out, counts = [], {"judged_groups": len(by_group), "groups_without_pairs": 0}
    for members in by_group.values():
        pairs = [(a, b) if a["score"] > b["score"] else (b, a)
                 for a, b in combinations(members, 2) if a["score"] != b["score"] and a["doc"] != b["doc"]]
        if max_pairs_per_group is not None:
            pairs = sorted(pairs, key=lambda p: -(p[0]["score"] - p[1]["score"]))[:max_pairs_per_group]
        counts["groups_without_pairs"] += not pairs
        for hi, lo in pairs:
            margin = margin_scale * (hi["score"] - lo["score"]) if margin_from_score else None
            out.append({"prompt": hi["prompt"], "chosen": [_message("assistant", hi["doc"])],
                        "rejected": [_message("assistant", lo["doc"])], "margin": margin, "group": hi["group"],
                        "row": hi.get("row"), "source": hi.get("source")})
    return out, counts


def unpair(rows: Sequence[dict]) -> list[dict]:
    """Pair rows -> unpaired rows (each pair gives its chosen as desirable and its rejected as undesirable)."""
    return [{"prompt": r["prompt"], "completion": r[side], "label": side == "chosen", "group": r["group"],
             "row": r.get("row"), "source": r.get("source")} for r in rows for side in ("chosen", "rejected")]


# ---------------------------------------------------------------------------------------------- registry

KIND = ("preference",)
_CONV = {"conversations", "messages"}
_REGISTERED = [
    register(Format("preference_conversations", KIND, (("conversations", "messages"), ("chosen",), ("rejected",)),
                    lambda c, first=None: bool(c & _CONV) and {"chosen", "rejected"} <= c, pair_row, row="pair",
                    order=10)),
    register(Format("preference_pairs", KIND, (("prompt",), ("chosen",), ("rejected",)),
                    lambda c, first=None: {"prompt", "chosen", "rejected"} <= c, pair_row, row="pair", order=20)),
    register(Format("unpaired", KIND, (("prompt", "conversations", "messages"), ("completion",), ("label",)),
                    lambda c, first=None: bool(c & (_CONV | {"prompt"})) and {"completion", "label"} <= c,
                    unpaired_row, row="unpaired", order=30)),
    register(Format("judgments", KIND, (("prompt",), ("doc",), ("score", "label")),
                    lambda c, first=None: {"prompt", "doc"} <= c and bool(c & {"score", "label"}), judged_row,
                    row="judged", order=40)),
]
FORMATS = tuple(f.name for f in _REGISTERED)
