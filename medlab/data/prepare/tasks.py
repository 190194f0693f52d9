"""The four tasks of `medlab.data.prepare`: how a record becomes the canonical row a `data=` config reads, which
of its strings are cleaned, and which text is compared for length, language and duplicates.

- ``sft``: chat formats with messages (alpaca, sharegpt, openai, toolcall) -> ``{"messages": [{role, content}],
  "tools"?}`` (OpenAI rows; ``tool_calls`` kept when a turn has them);
- ``pretrain``: ``text`` rows (or any chat row, its turns joined by blank lines) -> ``{"text"}``;
- ``qa``: the ``qa`` prompt format -> ``{question, options, answer, contexts}`` (+ the file's other columns);
  duplicates compare question + answer;
- ``retrieval``: ``pairs`` / ``groups`` -> ``{query, positive[, negatives]}``, ``triples`` ->
  ``{query, doc, label[, score][, group]}``; duplicates compare query + positive (triples: query + doc).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from medlab.data import fields as F
from medlab.data import registry
from medlab.data.prompt_rows import ALIASES as QA_ALIASES
from medlab.data.prompt_rows import CANONICAL as QA_CANONICAL

TASKS = ("sft", "pretrain", "qa", "retrieval")
KIND = {"sft": "chat", "pretrain": "chat", "qa": "prompts", "retrieval": "retrieval"}
RETRIEVAL_CANONICAL = ("query", "positive", "negatives", "doc", "label", "score", "group")


def canonical_names(task: str, columns, fields: Mapping[str, str] | None) -> dict[str, str]:
    """column -> canonical name for a file's `columns` (explicit ``prepare.fields`` entries, the qa aliases)."""
    fields = F.mapped(fields)
    if task == "qa":
        resolved = F.resolve(columns, fields, QA_CANONICAL, QA_ALIASES)
    else:
        resolved = {name: column for name, column in fields.items()}
    return {column: name for name, column in resolved.items() if column in columns}


def choose_format(task: str, fmt: str, columns, first: Mapping[str, Any] | None) -> str | None:
    kind = KIND[task]
    if fmt and fmt != "auto":
        return fmt
    if task == "sft":
        candidates = sorted((registry.get(n) for n in registry.names(kind)), key=lambda f: f.order)
        cols = set(columns)
        return next((f.name for f in candidates if f.row == "messages" and f.detect(cols, first)), None)
    return registry.detect(kind, columns, first)


def format_problem(task: str, fmt: str) -> str | None:
    """Why format `fmt` cannot serve `task` (None: it can)."""
    try:
        spec = registry.get(fmt)
    except KeyError:
        return f"prepare.format={fmt!r} is not a registered format (known: {', '.join(registry.names(KIND[task]))})"
    if KIND[task] not in spec.kinds or (task == "sft" and spec.row != "messages"):
        return f"prepare.format={fmt!r} does not give {task} rows"
    return None


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def to_row(task: str, fmt: str, record: Mapping[str, Any]) -> dict:
    """One record (canonical names) -> the task's output row; raises RowProblem(s) for a bad record."""
    spec = registry.get(fmt)
    if task == "qa":
        return spec.normalize(record)
    if task == "retrieval":
        unit = spec.normalize(record, check_images=False)
        if fmt == "triples":
            out = {"query": unit["query"], "doc": unit["docs"][0][0], "label": unit["docs"][0][2]}
            if record.get("score") is not None:
                out["score"] = record["score"]
            if record.get("group") is not None:
                out["group"] = str(record["group"])
            return out
        positives = [d[0] for d in unit["docs"] if d[2] > 0]
        negatives = [d[0] for d in unit["docs"] if d[2] <= 0]
        out = {"query": unit["query"], "positive": positives if isinstance(record.get("positive"), list)
               else positives[0]}
        if negatives:
            out["negatives"] = negatives
        return out
    row = spec.normalize(record)
    if task == "pretrain":
        if "text" in row:
            return {"text": row["text"]}
        return {"text": "\n\n".join(_plain(m.get("content")) for m in row["messages"])}
    messages = []
    for m in row["messages"]:
        msg = {"role": m["role"], "content": _plain(m.get("content"))}
        if m.get("tool_calls"):
            msg["tool_calls"] = m["tool_calls"]
        messages.append(msg)
    out = {"messages": messages}
    if row.get("tools"):
        out["tools"] = row["tools"]
    return out


def output_format(task: str, fmt: str) -> str:
    """The format name the written row is in (what checks it again after cleaning)."""
    return {"sft": "toolcall" if fmt == "toolcall" else "openai", "pretrain": "text", "qa": "qa"}.get(
        task, "triples" if fmt == "triples" else "pairs")


def check_row(task: str, fmt: str, row: Mapping[str, Any]) -> None:
    """Raise RowProblem(s) when a cleaned row is no longer a valid row of its format."""
    out_fmt = output_format(task, fmt)
    options = {"check_images": False} if task == "retrieval" else {}
    registry.get(out_fmt).normalize(dict(row), **options)


def map_texts(task: str, row: dict, fn: Callable[[str], str]) -> dict:
    """`row` with `fn` applied to every text it holds (contents, question/options/contexts, query/documents)."""
    if task == "sft":
        return {**row, "messages": [{**m, "content": fn(m["content"])} for m in row["messages"]]}
    if task == "pretrain":
        return {**row, "text": fn(row["text"])}
    out = dict(row)
    keys = ("question", "contexts", "answer") if task == "qa" else ("query", "positive", "negatives", "doc")
    for key in keys:
        value = out.get(key)
        if isinstance(value, str):
            out[key] = fn(value)
        elif isinstance(value, list):
            out[key] = [fn(v) if isinstance(v, str) else v for v in value]
    if task == "qa" and isinstance(out.get("options"), dict):
        out["options"] = {k: fn(v) for k, v in out["options"].items()}
    return out


def full_text(task: str, row: Mapping[str, Any]) -> str:
    """All the row's text (length and language are judged on it)."""
    parts: list[str] = []
    map_texts(task, dict(row), lambda s: parts.append(s) or s)
    return "\n".join(parts)


def dedup_text(task: str, row: Mapping[str, Any]) -> str:
    """The text duplicates are compared on."""
    if task == "sft":
        return "\n".join(m["content"] for m in row["messages"])
    if task == "pretrain":
        return row["text"]
    if task == "qa":
        answer = row.get("answer")
        answer = " ".join(answer) if isinstance(answer, list) else _plain(answer)
        if isinstance(row.get("options"), dict) and answer in row["options"]:
            answer = f"{answer} {row['options'][answer]}"
        return f"{row['question']}\n{answer}"
    positive = row.get("positive", row.get("doc"))
    positive = "\n".join(positive) if isinstance(positive, list) else _plain(positive)
    return f"{row['query']}\n{positive}"
