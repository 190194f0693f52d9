"""The tasks of `medlab.data.prepare`: how a record becomes the canonical row a `data=` config reads, which
of its strings are cleaned, and which text is compared for length, language and duplicates.

- ``sft``: chat formats with messages (alpaca, sharegpt, openai, toolcall) -> ``{"messages": [{role, content}],
  "tools"?}`` (OpenAI rows; ``tool_calls`` kept when a turn has them);
- ``pretrain``: ``text`` rows (or any chat row, its turns joined by blank lines) -> ``{"text"}``;
- ``qa``: the ``qa`` prompt format -> ``{question, options, answer, contexts}`` (+ the file's other columns);
  duplicates compare question + answer;
- ``retrieval``: ``pairs`` / ``groups`` -> ``{query, positive[, negatives]}``, ``triples`` ->
  ``{query, doc, label[, score][, group]}``; duplicates compare query + positive (triples: query + doc);
- ``preference``: pairs / conversations + chosen/rejected / unpaired / judgments -> ``{prompt, chosen, rejected[,
  system][, margin]}`` or ``{prompt, completion, label[, system]}`` (`medlab.data.prepare.preference`);
- ``toolcall``: function-calling conversations -> ``{messages (with tool_calls), tools}``
  (`medlab.data.prepare.toolcall`); duplicates compare the contents and the calls.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from medlab.data import fields as F
from medlab.data import registry
from medlab.data.prepare import preference as P
from medlab.data.prepare import toolcall as TC
from medlab.data.prompt_rows import ALIASES as QA_ALIASES
from medlab.data.prompt_rows import CANONICAL as QA_CANONICAL

TASKS = ("sft", "pretrain", "qa", "retrieval", "preference", "toolcall")
KIND = {"sft": "chat", "pretrain": "chat", "qa": "prompts", "retrieval": "retrieval", "preference": "preference",
        "toolcall": "chat"}
TOOLCALL_FORMATS = ("toolcall",)  # the chat format with a tools column (glaive / OpenAI tool turns)
RETRIEVAL_CANONICAL = ("query", "positive", "negatives", "doc", "label", "score", "group")


def canonical_names(task: str, columns, fields: Mapping[str, str] | None) -> dict[str, str]:
    """column -> canonical name for a file's `columns` (explicit ``prepare.fields`` entries, the qa aliases)."""
    fields = F.mapped(fields)
    if task == "qa":
        resolved = F.resolve(columns, fields, QA_CANONICAL, QA_ALIASES)
    elif task == "preference":
        from medlab.data.preference_rows import ALIASES as PREF_ALIASES
        from medlab.data.preference_rows import CANONICAL as PREF_CANONICAL

        resolved = F.resolve(columns, fields, PREF_CANONICAL, PREF_ALIASES)
    else:
        resolved = {name: column for name, column in fields.items()}
    return {column: name for name, column in resolved.items() if column in columns}


def choose_format(task: str, fmt: str, columns, first: Mapping[str, Any] | None) -> str | None:
    kind = KIND[task]
    if fmt and fmt != "auto":
        return fmt
    if task == "toolcall":
        return registry.detect(kind, columns, first) if set(columns) & {"conversations", "messages"} else None
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
    if task == "toolcall" and fmt not in TOOLCALL_FORMATS:
        return f"prepare.format={fmt!r} does not give toolcall rows (toolcall: {', '.join(TOOLCALL_FORMATS)})"
    return None


def _plain(value: Any) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def to_row(task: str, fmt: str, record: Mapping[str, Any]) -> dict:
    """One record (canonical names) -> the task's output row; raises RowProblem(s) for a bad record."""
    spec = registry.get(fmt)
    if task == "qa":
        return spec.normalize(record)
    if task == "preference":
        row = spec.normalize(record)
        if spec.row == "judged":  # paired later, per group (medlab.data.prepare.pipeline)
            return row
        return P.unpaired_out(row) if spec.row == "unpaired" else P.pair_out(row)
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
    if task == "toolcall":
        TC.check(out)
    return out


def output_format(task: str, fmt: str) -> str:
    """The format name the written row is in (what checks it again after cleaning)."""
    if task == "preference":
        return P.output_format(fmt)
    return {"sft": "toolcall" if fmt == "toolcall" else "openai", "pretrain": "text", "qa": "qa",
            "toolcall": "toolcall"}.get(task, "triples" if fmt == "triples" else "pairs")


def check_row(task: str, fmt: str, row: Mapping[str, Any]) -> None:
    """Raise RowProblem(s) when a cleaned row is no longer a valid row of its format."""
    out_fmt = output_format(task, fmt)
    options = {"check_images": False} if task == "retrieval" else {}
    registry.get(out_fmt).normalize(dict(row), **options)
    if task == "preference":
        P.check_distinct(row)
    elif task == "toolcall":
        TC.check(row)


def map_texts(task: str, row: dict, fn: Callable[[str], str]) -> dict:
    """`row` with `fn` applied to every text it holds (contents, question/options/contexts, query/documents)."""
    if task in ("sft", "toolcall"):
        return {**row, "messages": [{**m, "content": fn(m["content"])} for m in row["messages"]]}
    if task == "pretrain":
        return {**row, "text": fn(row["text"])}
    if task == "preference":
        return P.map_texts(row, fn)
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
    """The text near-duplicates are compared on (preference: the prompt, see `near_removes`)."""
    if task == "preference":
        return P.prompt_text(row)
    if task == "toolcall":
        return "\n".join(m["content"] for m in row["messages"]) + "\n" + TC.calls_text(row)
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


def dedup_parts(task: str, row: Mapping[str, Any]) -> list[str]:
    """The parts exact duplicates agree on, each compared on its own (preference: system, prompt, chosen,
    rejected; unpaired: prompt, completion, label); one part, the near-dedup text, for the other tasks."""
    if task == "preference":
        return P.texts(row)
    return [dedup_text(task, row)]


def near_removes(task: str) -> bool:
    """Whether near_dedup removes rows. Preference: no -- it clusters near-duplicate *prompts* so their pairs stay
    on one side of the split; the pairs of one prompt differ by design."""
    return task != "preference"


def group_text(task: str, row: Mapping[str, Any]) -> str | None:
    """Rows with the same group text stay on one side of the split (preference: the pairs of one prompt)."""
    return P.prompt_text(row) if task == "preference" else None
