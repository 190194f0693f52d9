"""The prompt format (kind ``prompts``: RL prompts with their reference fields), registered as ``qa``.

Canonical fields (``data.fields`` maps them onto your columns; the defaults also try common aliases):

- ``question`` (required): the question text;
- ``options`` (optional): multiple-choice options, a dict ``{"A": text, ...}`` or a list (letters A, B, ...
  by position);
- ``answer`` (optional; needed by the exact-match reward): an option letter, an option's text (turned into
  its letter), or, without options, a string (``yes``/``no``/``maybe``, a short answer) or a list of
  accepted strings;
- ``contexts`` (optional): a passage or list of passages.

Every other column is kept under its own name. A bad row raises `RowProblem` with the reason ``bad_<field>``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from medlab.data.errors import RowProblem
from medlab.data.registry import Format, register

CANONICAL = ("question", "options", "answer", "contexts")
ALIASES = {"question": ("question", "query", "prompt", "problem", "Question"),
           "options": ("options", "choices", "Options"),
           "answer": ("answer", "answer_idx", "final_decision", "label", "Answer"),
           "contexts": ("contexts", "context", "passages")}
LETTERS = "ABCDEFGHIJ"


def qa_row(row: Mapping[str, Any], **_: Any) -> dict:
    """A record (canonical names for the mapped columns, the others under their own) -> a prompt row: the other
    columns, then ``question``, ``options`` (``{letter: text}`` or None), ``answer`` and ``contexts``."""
    q = row.get("question")
    if q is None or not str(q).strip():
        raise RowProblem("question", "bad_question", "missing or empty question")
    options = normalize_options(row.get("options"))
    answer = normalize_answer(row.get("answer"), options)
    out = {k: v for k, v in row.items() if k not in CANONICAL}
    out.update(question=str(q).strip(), options=options, answer=answer, contexts=row.get("contexts"))
    return out


def normalize_options(value: Any) -> dict[str, str] | None:
    """Options as ``{letter: text}``: a dict (keys A-J, any case, sorted) or a list (letters by position)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "" or value == {} or value == []:
        return None
    if isinstance(value, str):  # a CSV cell holding JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowProblem("options", "bad_options",
                             f"options must be a dict or a list, got the string {value[:60]!r}") from None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = str(k).strip().upper()
            if len(key) != 1 or key not in LETTERS:
                raise RowProblem("options", "bad_options", f"option key {k!r} is not a letter A-{LETTERS[-1]}")
            if v is None or not str(v).strip():
                raise RowProblem("options", "bad_options", f"option {key} is empty")
            out[key] = str(v).strip()
        return dict(sorted(out.items()))
    if isinstance(value, Sequence):
        if len(value) > len(LETTERS):
            raise RowProblem("options", "bad_options",
                             f"{len(value)} options; at most {len(LETTERS)} are supported")
        if any(v is None or not str(v).strip() for v in value):
            raise RowProblem("options", "bad_options", "an option is empty")
        return {LETTERS[i]: str(v).strip() for i, v in enumerate(value)}
    raise RowProblem("options", "bad_options", f"options must be a dict or a list, got {type(value).__name__}")


def normalize_answer(value: Any, options: dict[str, str] | None) -> str | list[str] | None:
    """The gold answer: with options, an option letter (a letter, "(B)", "B." or an option's text); without, the
    string (or list of strings) as given. None when the row has no answer."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if options is None:
        if isinstance(value, (list, tuple)):
            golds = [str(v).strip() for v in value if v is not None and str(v).strip()]
            return golds or None
        text = str(value).strip()
        return text or None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(options):
        return list(options)[value]  # an index into the options
    text = str(value).strip()
    letter = text.strip("()[]. :").upper()
    if len(letter) == 1 and letter in options:
        return letter
    for key, opt in options.items():
        if text.lower() == opt.lower():
            return key
    raise RowProblem("answer", "bad_answer", f"answer {text[:60]!r} is not among the options ({', '.join(options)})")


def format_options(options: dict[str, str] | None) -> str:
    return "" if not options else "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())


def format_contexts(contexts: Any, max_contexts: int | None) -> str:
    if not contexts:
        return ""
    items = [contexts] if isinstance(contexts, str) else [str(c) for c in contexts if c]
    if max_contexts is not None:
        items = items[:max_contexts]
    return "Context:\n" + "\n".join(items) + "\n\nQuestion: " if items else ""


register(Format("qa", ("prompts",), (("question",),), lambda c, first=None: "question" in c, qa_row, row="prompt"))
