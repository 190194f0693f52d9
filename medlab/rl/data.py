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

Demonstration turns (``example_turns``): a fixed list of chat turns ``{role: user|assistant, content}``,
alternating user / assistant and ending with an assistant turn, placed after the system prompt and before the
question in every prompt (training, validation and `medlab.evaluation.evaluate_qa`, which renders through
`PromptData`), e.g. a one-shot example whose answer shows the format (``<answer>yes</answer>``): a format the
model can sample from the start, so a format reward has variance to learn from.

Every other column is kept too and reaches the reward functions as a keyword argument (a list with one value
per completion), e.g. ``long_answer`` or ``subject``. A row without a question, with an answer that is not
among its options, or with malformed options, and a line that does not parse at all, raises a `DataError`
naming the file, where (``FILE line N`` in a .jsonl/.csv, ``FILE row N`` for .json lists/parquet; both
1-based, see `medlab.data.errors`) and the field (``on_bad_row=error``), or is dropped and counted
(``on_bad_row=skip``). A null ``fields`` value means "not mapped" (the aliases are tried). Prompts longer
than ``max_prompt_length`` tokens are dropped and counted.

Reading, bad rows and the validation split are the skeleton every data source shares (`medlab.data.source`);
the rows are checked by the registered ``qa`` format (`medlab.data.prompt_rows`). Skipped bad rows are counted
as ``bad_row/<reason>`` (``bad_<field>``, ``unparsable``), too-long prompts as ``dropped/too_long``.

Batches (``collate``) are **left**-padded for generation: ``input_ids [B, P]``, ``attention_mask [B, P]``,
plus ``prompt_ids`` (the unpadded token lists), ``prompts`` (rendered text), ``fields`` (column -> list),
``ids`` and ``num_tokens``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from medlab.data import fields as F
from medlab.data import source as S
from medlab.data.errors import DataError, RowProblem, record_location  # noqa: F401  (RowProblem: re-exported)
from medlab.data.prompt_rows import (  # noqa: F401  (re-exported: the prompt format's public names)
    ALIASES,
    CANONICAL,
    LETTERS,
    format_contexts,
    format_options,
    normalize_answer,
    normalize_options,
    qa_row,
)
from medlab.data.readers import FileRecords, as_path_list
from medlab.data.split import held_out_count, split_option_problems
from medlab.data.templates import TEMPLATE_NAMES, get_template
from medlab.data.tokenize import stop_token_ids

log = logging.getLogger(__name__)

DEFAULT_SYSTEM_PROMPT = ("Answer the medical question. Think briefly if needed, then give only the final answer "
                         "inside <answer></answer> tags, e.g. <answer>B</answer>.")
DEFAULT_QUESTION_TEMPLATE = "{contexts}{question}{options}"


def resolve_fields(columns: Sequence[str], fields: Mapping[str, str] | None) -> dict[str, str]:
    """canonical name -> source column: an explicit ``fields`` entry, else the same name or the first free alias
    (`medlab.data.fields.resolve`)."""
    return F.resolve(columns, fields, CANONICAL, ALIASES)


def field_problems(columns: Sequence[str], fields: Mapping[str, str] | None) -> list[str]:
    out = F.problems(columns, fields, CANONICAL)
    if not (fields or {}).get("question") and not any(a in columns for a in ALIASES["question"]):
        out.append(f"no question column among {list(columns)}: map one with data.fields.question=COLUMN")
    return out


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
        example_turns: demonstration turns before every question (see the module docstring); null = none.
    """

    kind: ClassVar[str] = "prompts"  # medlab.contracts.DataSource
    stop_token_ids: tuple[int, ...] = ()  # set by setup(): EOS + the chat template's end-of-turn token
    group_by_length = False

    def __init__(self, path: Any, val_path: Any = None, *, val_split: float = 0.0, val_split_min: int = 1,
                 val_split_max: int | None = None, fields: Mapping[str, str] | None = None,
                 template: str = "chatml", system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
                 question_template: str = DEFAULT_QUESTION_TEMPLATE, contexts_in_prompt: bool = False,
                 max_contexts: int | None = None, max_prompt_length: int = 512, on_bad_row: str = "error",
                 batch_size: int = 4, val_batch_size: int | None = None, num_workers: int = 0,
                 limit: int | None = None, val_limit: int | None = None, seed: int = 0,
                 example_turns: Sequence[Mapping[str, Any]] | None = None):
        self.paths = as_path_list(path) if path else []
        self.val_paths = as_path_list(val_path) if val_path else []
        self.val_split, self.fields = val_split, dict(fields or {})
        self.val_split_min, self.val_split_max = val_split_min, val_split_max
        self.template, self.system_prompt, self.question_template = template, system_prompt, question_template
        self.contexts_in_prompt, self.max_contexts = bool(contexts_in_prompt), max_contexts
        self.max_prompt_length, self.on_bad_row = max_prompt_length, on_bad_row
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.limit, self.val_limit, self.seed = num_workers, limit, val_limit, seed
        # kept as given (checked by validate/setup); mappings copied to plain dicts (Hydra passes DictConfigs)
        listed = isinstance(example_turns, Sequence) and not isinstance(example_turns, (str, bytes))
        self.example_turns = ([dict(t) if isinstance(t, Mapping) else t for t in example_turns] if listed
                              else example_turns)
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
        splits = [(split, lambda paths=paths, limit=limit: S.load_files(paths, limit, self._normalize_file))
                  for split, paths, limit in (("train", self.paths, self.limit), ("val", self.val_paths, self.val_limit))
                  if paths]
        problems, sizes = S.check_splits(splits, self.on_bad_row, left=self._nothing_left)
        self.val_size = S.validation_size(sizes, bool(self.val_paths), self._val_count)
        return self._option_problems() + problems

    def _option_problems(self) -> list[str]:
        problems = S.choice_problems({"template": (self.template, TEMPLATE_NAMES),
                                      "on_bad_row": (self.on_bad_row, S.ON_BAD_ROW)})
        problems += S.positive_problems({"max_prompt_length": self.max_prompt_length, "batch_size": self.batch_size,
                                         "val_batch_size": self.val_batch_size})
        problems += S.positive_problems({"limit": self.limit, "val_limit": self.val_limit,
                                         "max_contexts": self.max_contexts}, optional=True)
        problems += split_option_problems(self.val_split, self.val_split_min, self.val_split_max)
        problems += example_turn_problems(self.example_turns)
        if "{question}" not in self.question_template:
            problems.append("data.question_template must contain {question}")
        if not self.paths:
            problems.append("data.path is required (pass data.path=FILE)")
        return problems

    def _val_count(self, n_rows: int) -> int:
        if not isinstance(self.val_split, (int, float)):
            return 0
        return held_out_count(n_rows, float(self.val_split), self.val_split_min, self.val_split_max)

    def _nothing_left(self, split: str, loaded: S.Loaded) -> str | None:
        if split == "train" and not loaded.problems and not loaded.rows:
            return f"no training prompts left from {[str(p) for p in self.paths]}"
        return None

    # ------------------------------------------------------------------------------------------ setup
    def setup(self, tokenizer: Any) -> dict[str, int]:
        """Read, check and render every row; returns kept/dropped counts (logged)."""
        S.raise_config_problems(self._option_problems(), self.paths + self.val_paths)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if self.pad_id is None:
            raise DataError("the tokenizer has neither a pad nor an EOS token to pad prompts with")
        chat = get_template(self.template, tokenizer)
        self.stop_token_ids = stop_token_ids(chat, tokenizer)
        counts: dict[str, int] = {}
        rows = self._rows(self.paths, self.limit, counts, "train")
        val_rows = self._rows(self.val_paths, self.val_limit, counts, "val") if self.val_paths else None
        if not self.val_paths:
            rows, val_rows = S.split_off(rows, self._val_count(len(rows)), self.seed)
        self.train_dataset = self._examples(rows, tokenizer, chat, counts, "train")
        self.val_dataset = self._examples(val_rows, tokenizer, chat, counts, "val") if val_rows else None
        if not self.train_dataset:
            raise DataError(f"no training prompts left from {[str(p) for p in self.paths]} (counts: {counts})")
        if self.val_dataset is None:
            S.warn_no_validation("prompt data", "prompts", self.val_split)
        self.counts = counts
        log.info("prompt data: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        return dict(counts)

    def rows_from_records(self, records: list[dict], source: str = "<rows>") -> list[dict]:
        """Normalize in-memory records (the same checks as files, rows named ``SOURCE row N``; ``on_bad_row``
        applies)."""
        rows, bad = self._normalize(records, source)
        return S.take(S.Loaded(rows, [], bad, len(records)), "eval", self.on_bad_row, {}, read_key="rows")

    def _rows(self, paths, limit: int | None, counts: dict, split: str) -> list[dict]:
        loaded = S.load_files(paths, limit, self._normalize_file)
        return S.take(loaded, split, self.on_bad_row, counts, read_key="rows") or []

    def _normalize_file(self, read: FileRecords) -> tuple[list[dict] | None, list[str], list]:
        """One file's records -> prompt rows: (rows, file problems, bad rows)."""
        problems = [f"{read.path}: {p}" for p in field_problems(read.dataset.column_names, self.fields)]
        if problems:
            return None, problems, []
        rows, bad = self._normalize(read.dataset.to_list(), str(read.path), read.numbers, read.unit)
        return rows, [], bad

    def _normalize(self, records: list[dict], source: str, numbers: Sequence[int] | None = None,
                   unit: str = "line") -> tuple[list[dict], list]:
        """Records -> prompt rows (the ``qa`` format: other columns, question, options, answer, contexts, then
        ``source``) and bad rows (the field named canonically, with the column it was mapped from)."""
        mapped = resolve_fields(list(dict.fromkeys(k for r in records[:50] for k in r)), self.fields)
        where = lambda i: record_location(source, i, numbers, unit)  # noqa: E731
        good, bad = S.normalize_records(records, lambda rec: qa_row(S.canonical_record(rec, mapped, others=True)),
                                        where, lambda field: (field, mapped.get(field)))
        return [{**row, "source": where(i)} for i, row in good], bad

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
        out += [{"role": t["role"], "content": t["content"]} for t in self.example_turns or []]
        return out + [{"role": "user", "content": user}]

    def _examples(self, rows: list[dict], tokenizer: Any, chat, counts: dict, split: str) -> list[dict]:
        out = []
        for row in rows:
            text = self.render(row, chat)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            if len(ids) > self.max_prompt_length:
                counts[f"{split}/dropped/too_long"] = counts.get(f"{split}/dropped/too_long", 0) + 1
                continue
            out.append({"id": len(out), "prompt": text, "prompt_ids": ids, "fields": row, "messages": self.messages(row)})
        if counts.get(f"{split}/dropped/too_long"):
            log.warning("%s: dropped %d prompt(s) longer than data.max_prompt_length=%d", split,
                        counts[f"{split}/dropped/too_long"], self.max_prompt_length)
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

    def lengths(self) -> list[int]:
        """Prompt tokens per training example (for length-grouped batches)."""
        return [len(e["prompt_ids"]) for e in self.train_dataset]


def example_turn_problems(turns: Any) -> list[str]:
    """Problems of ``data.example_turns`` ([] if none): a list of ``{role, content}`` turns, roles alternating
    user / assistant from a user turn and ending with an assistant turn, every content a non-empty string."""
    if turns is None:
        return []
    if isinstance(turns, (str, bytes, Mapping)) or not isinstance(turns, Sequence):
        return [f"data.example_turns must be a list of {{role, content}} turns or null, got {type(turns).__name__}"]
    out = []
    for i, turn in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if not isinstance(turn, Mapping):
            out.append(f"data.example_turns[{i}] must be a mapping {{role, content}}, got {type(turn).__name__}")
            continue
        extra = sorted(set(map(str, turn)) - {"role", "content"})
        if extra:
            out.append(f"data.example_turns[{i}] has unknown key(s) {extra} (only role and content)")
        if turn.get("role") != want:
            out.append(f"data.example_turns[{i}].role={turn.get('role')!r}: expected {want!r} (turns alternate "
                       "user / assistant, starting with user)")
        content = turn.get("content")
        if not isinstance(content, str) or not content.strip():
            out.append(f"data.example_turns[{i}].content must be a non-empty string, got {content!r}")
    if turns and len(turns) % 2:
        out.append(f"data.example_turns has {len(turns)} turns: it must end with an assistant turn (the "
                   "demonstrated answer)")
    return out


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
