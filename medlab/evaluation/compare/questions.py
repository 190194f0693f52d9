"""The question set of a comparison: questions with reference answers, read from one file.

    questions = load_questions("qa.jsonl", limit=40)                           # detected from the columns
    questions = load_questions("huatuogpt_o1_cot_en.json",
                               fields={"question": "Open-ended Verifiable Question", "reference": "Ground-True Answer"})

Row kinds (the first that fits the columns; ``fields`` maps the canonical names ``question``, ``reference``,
``options``, ``answer`` onto your columns and then decides):

- **multiple choice**: ``question`` + ``options`` (dict or list) + ``answer`` (letter, option text or index): the
  reference is ``"B. option text"`` and accuracy is the letter match (the QA files of ``eval.task=qa``);
- **chat** (``messages`` / ``conversations``) and **alpaca** (``instruction`` [+ ``input``] + ``output``): the first
  user turn is the question, the assistant turn after it the reference (a held-out SFT split works as it is);
- **open**: a question column (``question``, ``Question``, ``query``, ``prompt``, ``Open-ended Verifiable
  Question``) + a reference column (``reference``, ``answer``, ``Ground-True Answer``, ``response``, ``Response``,
  ``output``).

Every row gets an ``id`` (the file's ``id`` column when present, else its position) and ``lang`` (``zh`` when its
question is mostly CJK, else ``en``). Bad rows are all reported at once in one ``DataError`` naming
``FILE line N`` / ``FILE row N`` and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medlab.data.errors import DataError, RowProblem
from medlab.data.formats import detect_format, normalize_record
from medlab.data.prompt_rows import normalize_answer, normalize_options
from medlab.data.readers import read_located
from medlab.evaluation.compare.text import is_cjk_text
from medlab.paths import ASSETS_DIR

DEFAULT_PATH = ASSETS_DIR / "sample" / "val_sft_alpaca.jsonl"   # the project's own held-out sample questions
QUESTION_COLUMNS = ("question", "Question", "query", "prompt", "Open-ended Verifiable Question")
REFERENCE_COLUMNS = ("reference", "answer", "Answer", "Ground-True Answer", "response", "Response", "output")
OPTIONS_COLUMNS = ("options", "choices", "Options")
ANSWER_COLUMNS = ("answer_idx", "answer", "label", "Answer")
CANONICAL = ("question", "reference", "options", "answer")
MAX_LISTED = 20


@dataclass(frozen=True)
class Question:
    """One question: ``reference`` (the text answers are scored against), ``options`` + ``answer`` (the letter)
    for multiple choice, ``lang`` (en | zh), ``kind`` (choice | chat | open)."""

    id: str
    question: str
    reference: str
    kind: str
    lang: str
    options: dict[str, str] | None = None
    answer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pick(columns: list[str], fields: Mapping[str, str], name: str, aliases: tuple[str, ...]) -> str | None:
    if fields.get(name):
        return fields[name]
    return next((c for c in aliases if c in columns), None)


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def row_kind(columns: list[str], fields: Mapping[str, str] | None = None) -> str:
    """``choice`` | ``chat`` | ``open`` for a file's columns (see the module doc); DataError when none fits."""
    fields = {k: v for k, v in dict(fields or {}).items() if v}
    q = _pick(columns, fields, "question", QUESTION_COLUMNS)
    if q and _pick(columns, fields, "options", OPTIONS_COLUMNS) and _pick(columns, fields, "answer", ANSWER_COLUMNS) \
            and not fields.get("reference"):
        return "choice"
    if not fields and detect_format(columns) is not None:
        return "chat"
    if q and _pick(columns, fields, "reference", REFERENCE_COLUMNS):
        return "open"
    raise DataError(f"cannot tell the questions and reference answers apart in columns {columns}: map them with "
                    f"compare.fields.question=COLUMN compare.fields.reference=COLUMN (multiple choice: "
                    f"compare.fields.options / compare.fields.answer)")


def _question(record: Mapping[str, Any], index: int, kind: str, columns: list[str], fields: Mapping[str, str]
              ) -> Question:
    rid = str(record["id"]) if record.get("id") not in (None, "") else str(index)
    options = answer = None
    if kind == "chat":
        messages = normalize_record(record, detect_format(columns))["messages"]
        turns = [m for m in messages if m["role"] in ("user", "assistant")]
        first = next((i for i, m in enumerate(turns) if m["role"] == "user"), None)
        if first is None or first + 1 >= len(turns) or turns[first + 1]["role"] != "assistant":
            raise RowProblem("messages", "bad_messages", "no user turn followed by an assistant answer")
        question, reference = turns[first]["content"], turns[first + 1]["content"]
    else:
        question = _text(record.get(_pick(columns, fields, "question", QUESTION_COLUMNS)))
        if kind == "choice":
            options = normalize_options(record.get(_pick(columns, fields, "options", OPTIONS_COLUMNS)))
            if not options:
                raise RowProblem("options", "bad_options", "no options")
            answer = normalize_answer(record.get(_pick(columns, fields, "answer", ANSWER_COLUMNS)), options)
            if not isinstance(answer, str):
                raise RowProblem("answer", "bad_answer", "missing answer")
            reference = f"{answer}. {options[answer]}"
        else:
            reference = _text(record.get(_pick(columns, fields, "reference", REFERENCE_COLUMNS)))
            if not reference:
                raise RowProblem("reference", "bad_reference", "missing or empty reference answer")
    if not question:
        raise RowProblem("question", "bad_question", "missing or empty question")
    if kind == "choice":
        question = question + "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())
    return Question(rid, question, reference, kind, "zh" if is_cjk_text(question) else "en", options, answer)


def load_questions(path: str | Path | None = None, *, fields: Mapping[str, str] | None = None,
                   limit: int | None = None) -> list[Question]:
    """The questions of ``path`` (default: :data:`DEFAULT_PATH`), the first ``limit`` of them."""
    path = Path(path) if path else DEFAULT_PATH
    fields = {k: v for k, v in dict(fields or {}).items() if v}
    unknown = sorted(set(fields) - set(CANONICAL))
    if unknown:
        raise DataError(f"compare.fields: unknown field(s) {unknown}; the fields are {', '.join(CANONICAL)}")
    records = read_located(path, limit=limit)
    columns = list(records.dataset.column_names)
    missing = [f"compare.fields.{k}={v}" for k, v in fields.items() if v not in columns]
    if missing:
        raise DataError(f"{path}: no column for {', '.join(missing)} (columns: {columns})")
    kind = row_kind(columns, fields)
    problems = [str(b) for b in records.unparsable]
    out, ids = [], set()
    for i, record in enumerate(records.dataset):
        try:
            q = _question(record, i, kind, columns, fields)
        except RowProblem as e:
            problems.append(f"{records.where(i)}: field {e.field!r}: {e.message}")
            continue
        if q.id in ids:
            problems.append(f"{records.where(i)}: field 'id': {q.id!r} repeats an earlier row's id")
        ids.add(q.id)
        out.append(q)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} problem(s) in the question set {path}:\n{listed}{more}")
    if not out:
        raise DataError(f"{path}: no questions")
    return out


def question_set_key(questions: list[Question]) -> str:
    """A short hash of the questions and references (the answer cache's key part for the question set)."""
    blob = json.dumps([q.as_dict() for q in questions], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]
