"""`PromptData`: the prompt-only data that ``conf/data/*.yaml`` instantiates for GRPO (``objective=grpo``).

    data = PromptData(path="qa.jsonl", fields={"question": "Question"}, system_prompt="... <answer>X</answer>")
    problems = data.validate()        # no tokenizer: options, every file read and every row checked
    counts = data.setup(tokenizer)    # read -> check rows -> render chat prompts -> token ids
    batch = data.collate(data.train_dataset[:4])

Canonical fields (``data.fields`` maps them onto your columns; the defaults also try common aliases):

- ``question`` (required): the question text;
- ``options`` (optional): multiple-choice options, a dict ``{"A": text, ...}`` or a list (letters A, B, ...
  by position); they are written under the question as ``A. text`` lines;
- ``answer`` (optional; needed by the exact-match reward): an option letter, an option's text (turned into
  its letter), or, without options, a string (``yes``/``no``/``maybe``, a short answer) or a list of
  accepted strings;
- ``contexts`` (optional): a passage or list of passages, written before the question when
  ``contexts_in_prompt`` is on, and passed to rewards either way (``retrieval_relevance``).

Every other column is kept too and reaches the reward functions as a keyword argument (a list with one value
per completion), e.g. ``long_answer`` or ``subject``. A row without a question, with an answer that is not
among its options, or with malformed options, and a line that does not parse at all, raises a `DataError`
naming the file, where (``FILE line N`` in a .jsonl/.csv, ``FILE row N`` for .json lists/parquet; both
1-based, see `medlab.data.errors`) and the field (``on_bad_row=error``), or is dropped and counted
(``on_bad_row=skip``). A null ``fields`` value means "not mapped" (the aliases are tried). Prompts longer
than ``max_prompt_length`` tokens are dropped and counted.

Batches (``collate``) are **left**-padded for generation: ``input_ids [B, P]``, ``attention_mask [B, P]``,
plus ``prompt_ids`` (the unpadded token lists), ``prompts`` (rendered text), ``fields`` (column -> list),
``ids`` and ``num_tokens``.
"""

from __future__ import annotations

import json
import logging
import math
import random
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from medlab.data.errors import BadRow, DataError, bad_row_problems, describe_bad_rows, record_location
from medlab.data.readers import as_path_list, check_exists, read_located
from medlab.data.split import held_out_count, split_option_problems
from medlab.data.templates import TEMPLATE_NAMES, get_template

log = logging.getLogger(__name__)

CANONICAL = ("question", "options", "answer", "contexts")
ALIASES = {"question": ("question", "query", "prompt", "problem", "Question"),
           "options": ("options", "choices", "Options"),
           "answer": ("answer", "answer_idx", "final_decision", "label", "Answer"),
           "contexts": ("contexts", "context", "passages")}
LETTERS = "ABCDEFGHIJ"
DEFAULT_SYSTEM_PROMPT = ("Answer the medical question. Think briefly if needed, then give only the final answer "
                         "inside <answer></answer> tags, e.g. <answer>B</answer>.")
DEFAULT_QUESTION_TEMPLATE = "{contexts}{question}{options}"


def resolve_fields(columns: Sequence[str], fields: Mapping[str, str] | None) -> dict[str, str]:
    """canonical name -> source column: an explicit ``fields`` entry, else the first alias present."""
    fields = dict(fields or {})
    out = {}
    for name in CANONICAL:
        if fields.get(name):
            out[name] = fields[name]
        else:
            col = next((a for a in ALIASES[name] if a in columns and a not in fields.values()), None)
            if col:
                out[name] = col
    return out


def field_problems(columns: Sequence[str], fields: Mapping[str, str] | None) -> list[str]:
    out = []
    for name, col in (fields or {}).items():
        if name not in CANONICAL:
            out.append(f"data.fields.{name}: unknown field (known: {', '.join(CANONICAL)})")
        elif col and col not in columns:
            out.append(f"data.fields.{name}={col!r}: no such column (columns: {', '.join(columns)})")
    if not (fields or {}).get("question") and not any(a in columns for a in ALIASES["question"]):
        out.append(f"no question column among {list(columns)}: map one with data.fields.question=COLUMN")
    return out


class RowProblem(ValueError):
    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


def normalize_options(value: Any) -> dict[str, str] | None:
    """Options as ``{letter: text}``: a dict (keys A-J, any case, sorted) or a list (letters by position)."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "" or value == {} or value == []:
        return None
    if isinstance(value, str):  # a CSV cell holding JSON
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise RowProblem("options", f"options must be a dict or a list, got the string {value[:60]!r}") from None
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = str(k).strip().upper()
            if len(key) != 1 or key not in LETTERS:
                raise RowProblem("options", f"option key {k!r} is not a letter A-{LETTERS[-1]}")
            if v is None or not str(v).strip():
                raise RowProblem("options", f"option {key} is empty")
            out[key] = str(v).strip()
        return dict(sorted(out.items()))
    if isinstance(value, Sequence):
        if len(value) > len(LETTERS):
            raise RowProblem("options", f"{len(value)} options; at most {len(LETTERS)} are supported")
        if any(v is None or not str(v).strip() for v in value):
            raise RowProblem("options", "an option is empty")
        return {LETTERS[i]: str(v).strip() for i, v in enumerate(value)}
    raise RowProblem("options", f"options must be a dict or a list, got {type(value).__name__}")


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
    raise RowProblem("answer", f"answer {text[:60]!r} is not among the options ({', '.join(options)})")


def format_options(options: dict[str, str] | None) -> str:
    return "" if not options else "\n" + "\n".join(f"{k}. {v}" for k, v in options.items())


def format_contexts(contexts: Any, max_contexts: int | None) -> str:
    if not contexts:
        return ""
    items = [contexts] if isinstance(contexts, str) else [str(c) for c in contexts if c]
    if max_contexts is not None:
        items = items[:max_contexts]
    return "Context:\n" + "\n".join(items) + "\n\nQuestion: " if items else ""


class PromptData:
    """Settings + pipeline for prompt-only (RL) data.

    Args:
        path / val_path: data file(s) (jsonl, json, csv, parquet, saved dataset dir); a list is concatenated.
            Without ``val_path``, ``val_split`` holds out that fraction of the rows (fixed seed): at least
            ``val_split_min`` (never more than a quarter of them), at most ``val_split_max`` (null = no cap).
        fields: canonical field -> your column (see the module docstring).
        template: chat template (chatml, llama3, ... or ``tokenizer`` for the tokenizer's own).
        system_prompt: the system message (null = none), e.g. asking for ``<answer>X</answer>``.
        question_template: the user message, with ``{question}``, ``{options}`` (``\\nA. ...`` lines or "")
            and ``{contexts}`` ("Context:\\n...\\n\\nQuestion: " or "") plus any other column by name.
        contexts_in_prompt / max_contexts: write the row's contexts into the prompt (at most N passages).
        max_prompt_length: longer prompts are dropped (counted).
        on_bad_row: ``error`` (raise, listing the bad rows by file/row/field) or ``skip`` (drop, counted).
        limit / val_limit: first N rows only.
    """

    def __init__(self, path: Any, val_path: Any = None, *, val_split: float = 0.0, val_split_min: int = 1,
                 val_split_max: int | None = None, fields: Mapping[str, str] | None = None,
                 template: str = "chatml", system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                 question_template: str = DEFAULT_QUESTION_TEMPLATE, contexts_in_prompt: bool = False,
                 max_contexts: int | None = None, max_prompt_length: int = 512, on_bad_row: str = "error",
                 batch_size: int = 4, val_batch_size: int | None = None, num_workers: int = 0,
                 limit: int | None = None, val_limit: int | None = None, seed: int = 0):
        self.paths = as_path_list(path) if path else []
        self.val_paths = as_path_list(val_path) if val_path else []
        self.val_split, self.fields = val_split, dict(fields or {})
        self.val_split_min, self.val_split_max = val_split_min, val_split_max
        self.template, self.system_prompt, self.question_template = template, system_prompt, question_template
        self.contexts_in_prompt, self.max_contexts = bool(contexts_in_prompt), max_contexts
        self.max_prompt_length, self.on_bad_row = max_prompt_length, on_bad_row
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.limit, self.val_limit, self.seed = num_workers, limit, val_limit, seed
        self.train_dataset: list[dict] = []
        self.val_dataset: list[dict] | None = None
        self.counts: dict[str, int] = {}
        self.pad_id: int | None = None
        self.val_size: int | None = None  # validation rows, known after validate() (0 = no validation)

    @property
    def max_length(self) -> int:  # checked against the model's maximum by config validation
        return self.max_prompt_length

    # ------------------------------------------------------------------------------------------ checks
    def validate(self) -> list[str]:
        """Every problem found without a tokenizer: options, then every file read and every row checked as
        setup would (with ``on_bad_row=error`` each bad row is a problem); [] if none. Sets ``val_size``."""
        problems = self._option_problems()
        sizes = {}
        for split, paths, limit in (("train", self.paths, self.limit), ("val", self.val_paths, self.val_limit)):
            if not paths:
                continue
            rows, file_problems, bad = self._load(paths, limit, {}, split)
            problems += file_problems
            if bad and self.on_bad_row != "skip":
                problems += bad_row_problems(bad)
            elif not file_problems:
                if split == "train" and not rows:
                    problems.append(f"no training prompts left from {[str(p) for p in paths]}")
                sizes[split] = len(rows)
        if self.val_paths:
            self.val_size = sizes.get("val")
        elif "train" in sizes:
            self.val_size = self._val_count(sizes["train"])
        return problems

    def _option_problems(self) -> list[str]:
        problems = []
        if self.template not in TEMPLATE_NAMES:
            problems.append(f"data.template={self.template!r} is not one of {', '.join(TEMPLATE_NAMES)}")
        if self.on_bad_row not in ("error", "skip"):
            problems.append(f"data.on_bad_row={self.on_bad_row!r} is not one of error, skip")
        for name in ("max_prompt_length", "batch_size", "val_batch_size"):
            v = getattr(self, name)
            if not (isinstance(v, int) and v >= 1):
                problems.append(f"data.{name} must be a positive integer, got {v!r}")
        for name in ("limit", "val_limit", "max_contexts"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int) and v >= 1):
                problems.append(f"data.{name} must be a positive integer or null, got {v!r}")
        problems += split_option_problems(self.val_split, self.val_split_min, self.val_split_max)
        if "{question}" not in self.question_template:
            problems.append("data.question_template must contain {question}")
        if not self.paths:
            problems.append("data.path is required (pass data.path=FILE)")
        return problems

    def _val_count(self, n_rows: int) -> int:
        if not isinstance(self.val_split, (int, float)):
            return 0
        return held_out_count(n_rows, float(self.val_split), self.val_split_min, self.val_split_max)

    # ------------------------------------------------------------------------------------------ setup
    def setup(self, tokenizer: Any) -> dict[str, int]:
        """Read, check and render every row; returns kept/dropped counts (logged)."""
        problems = self._option_problems()
        for path in self.paths + self.val_paths:
            try:
                check_exists(path)
            except DataError as e:
                problems.append(str(e))
        if problems:
            raise DataError("invalid data config:\n  - " + "\n  - ".join(problems))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise DataError("the tokenizer has neither a pad nor an EOS token to pad prompts with")
        chat = get_template(self.template, tokenizer)
        counts: dict[str, int] = {}
        rows = self._rows(self.paths, self.limit, counts, "train")
        val_rows = self._rows(self.val_paths, self.val_limit, counts, "val") if self.val_paths else []
        if not val_rows and not self.val_paths:
            n_val = self._val_count(len(rows))
            if n_val:
                rows, val_rows = _hold_out(rows, n_val, self.seed)
        self.train_dataset = self._examples(rows, tokenizer, chat, counts, "train")
        self.val_dataset = self._examples(val_rows, tokenizer, chat, counts, "val") if val_rows else None
        if not self.train_dataset:
            raise DataError(f"no training prompts left from {[str(p) for p in self.paths]} (counts: {counts})")
        if self.val_dataset is None:
            log.warning("prompt data: no validation prompts (data.val_path is not set and data.val_split=%s holds "
                        "out none): nothing is validated, so a val/ metric stays NaN", self.val_split)
        self.counts = counts
        log.info("prompt data: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        return dict(counts)

    def rows_from_records(self, records: list[dict], source: str = "<rows>") -> list[dict]:
        """Normalize in-memory records (the same checks as files, rows named ``SOURCE row N``; ``on_bad_row``
        applies)."""
        counts: dict[str, int] = {}
        rows, bad = self._normalize(records, source, counts, "eval")
        return self._apply_policy(rows, bad, counts, "eval")

    def _load(self, paths: list[Path], limit: int | None, counts: dict, split: str
              ) -> tuple[list[dict], list[str], list[BadRow]]:
        """Read and check one split's files: (good rows, file problems, bad rows); no policy applied."""
        rows: list[dict] = []
        problems: list[str] = []
        bad: list[BadRow] = []
        n_records = 0
        for path in paths:
            remaining = max(limit - n_records, 0) if limit else None
            if remaining == 0:
                break
            try:
                read = read_located(path, limit=remaining)
            except DataError as e:
                problems.append(str(e))
                continue
            bad += read.unparsable
            records = read.dataset.to_list()
            n_records += len(records)
            if not records:
                continue  # nothing parsed: the unparsable lines say why
            file_problems = [f"{path}: {p}" for p in field_problems(read.dataset.column_names, self.fields)]
            if file_problems:
                problems += file_problems
                continue
            good, row_bad = self._normalize(records, str(path), counts, split, read.numbers, read.unit)
            rows += good
            bad += row_bad
        return rows, problems, bad

    def _rows(self, paths: list[Path], limit: int | None, counts: dict, split: str) -> list[dict]:
        rows, problems, bad = self._load(paths, limit, counts, split)
        if problems:
            raise DataError("invalid data:\n  - " + "\n  - ".join(problems))
        return self._apply_policy(rows, bad, counts, split)

    def _apply_policy(self, rows: list[dict], bad: list[BadRow], counts: dict, split: str) -> list[dict]:
        """``on_bad_row``: raise listing the bad rows, or count them (``dropped_bad_<field>``,
        ``dropped_unparsable``) and keep the good ones."""
        if bad and self.on_bad_row == "error":
            raise DataError(describe_bad_rows(bad))
        for b in bad:
            key = f"{split}/dropped_{b.reason}"  # dropped_bad_<field>, dropped_unparsable
            counts[key] = counts.get(key, 0) + 1
        if bad:
            log.warning("%s: dropped %d bad row(s), e.g. %s", split, len(bad), bad[0])
        return rows

    def _normalize(self, records: list[dict], source: str, counts: dict, split: str,
                   numbers: Sequence[int] | None = None, unit: str = "line") -> tuple[list[dict], list[BadRow]]:
        columns = list(dict.fromkeys(k for r in records[:50] for k in r))
        mapped = resolve_fields(columns, self.fields)
        renamed = set(mapped.values())
        out, bad = [], []
        for i, rec in enumerate(records):
            where = record_location(source, i, numbers, unit)
            try:
                out.append(self._row(rec, mapped, renamed, where))
            except RowProblem as e:
                bad.append(BadRow(where, e.field, e.reason, "bad_" + e.field, mapped.get(e.field)))
        counts[f"{split}/rows"] = counts.get(f"{split}/rows", 0) + len(records)
        return out, bad

    def _row(self, rec: Mapping[str, Any], mapped: dict[str, str], renamed: set[str], where: str) -> dict:
        q = rec.get(mapped["question"]) if "question" in mapped else None
        if q is None or not str(q).strip():
            raise RowProblem("question", "missing or empty question")
        options = normalize_options(rec.get(mapped["options"])) if "options" in mapped else None
        answer = normalize_answer(rec.get(mapped["answer"]), options) if "answer" in mapped else None
        contexts = rec.get(mapped["contexts"]) if "contexts" in mapped else None
        row = {k: v for k, v in rec.items() if k not in renamed}  # the other columns, under their own names
        row.update(question=str(q).strip(), options=options, answer=answer, contexts=contexts, source=where)
        return row

    def render(self, row: Mapping[str, Any], chat=None, tokenizer: Any = None) -> str:
        """The chat prompt text of one normalized row (system prompt + user message + generation prompt)."""
        chat = chat or get_template(self.template, tokenizer)
        values = {k: v for k, v in row.items() if isinstance(v, (str, int, float))}
        contexts = format_contexts(row.get("contexts"), self.max_contexts) if self.contexts_in_prompt else ""
        values.update(question=row["question"], options=format_options(row.get("options")), contexts=contexts)
        try:
            user = self.question_template.format(**values)
        except KeyError as e:
            raise DataError(f"data.question_template uses {{{e.args[0]}}}, which {row.get('source')} lacks") from None
        return chat.render(self.messages(row, user), add_generation_prompt=True)

    def messages(self, row: Mapping[str, Any], user: str | None = None) -> list[dict]:
        """The chat messages of one row (system prompt + user turn): what multi-turn tool rollouts start from."""
        if user is None:
            values = {k: v for k, v in row.items() if isinstance(v, (str, int, float))}
            contexts = format_contexts(row.get("contexts"), self.max_contexts) if self.contexts_in_prompt else ""
            values.update(question=row["question"], options=format_options(row.get("options")), contexts=contexts)
            user = self.question_template.format(**values)
        out = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return out + [{"role": "user", "content": user}]

    def _examples(self, rows: list[dict], tokenizer: Any, chat, counts: dict, split: str) -> list[dict]:
        out = []
        for row in rows:
            text = self.render(row, chat)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > self.max_prompt_length:
                counts[f"{split}/dropped_too_long"] = counts.get(f"{split}/dropped_too_long", 0) + 1
                continue
            out.append({"id": len(out), "prompt": text, "prompt_ids": ids, "fields": row, "messages": self.messages(row)})
        if counts.get(f"{split}/dropped_too_long"):
            log.warning("%s: dropped %d prompt(s) longer than data.max_prompt_length=%d", split,
                        counts[f"{split}/dropped_too_long"], self.max_prompt_length)
        counts[f"{split}/prompts"] = len(out)
        return out

    def examples_from_rows(self, rows: list[dict], tokenizer: Any) -> list[dict]:
        """Rendered, tokenized examples of normalized rows (for evaluation)."""
        if self.pad_id is None:
            self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return self._examples(rows, tokenizer, get_template(self.template, tokenizer), {}, "eval")

    # ------------------------------------------------------------------------------------------ batches
    def collate(self, examples: Sequence[dict]) -> dict:
        if self.pad_id is None:
            raise RuntimeError("call setup(tokenizer) before collate")
        return collate_prompts(examples, self.pad_id)


def collate_prompts(examples: Sequence[dict], pad_id: int) -> dict:
    """Left-padded prompt batch (see the module docstring)."""
    prompt_ids = [list(e["prompt_ids"]) for e in examples]
    width = max(len(p) for p in prompt_ids)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for r, p in enumerate(prompt_ids):
        ids[r, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p):] = 1
    keys = list(dict.fromkeys(k for e in examples for k in e["fields"]))
    fields = {k: [e["fields"].get(k) for e in examples] for k in keys}
    return {"input_ids": ids, "attention_mask": mask, "prompt_ids": prompt_ids,
            "prompts": [e["prompt"] for e in examples], "fields": fields, "ids": [e["id"] for e in examples],
            "messages": [e.get("messages") for e in examples],
            "num_tokens": int(mask.sum())}


def _hold_out(rows: list[dict], n_val: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Split off ``n_val`` rows (`medlab.data.split.held_out_count`) with a fixed seed."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    val = set(order[:n_val])
    return [r for i, r in enumerate(rows) if i not in val], [r for i, r in enumerate(rows) if i in val]
