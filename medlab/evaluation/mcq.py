"""Multiple-choice questions as lm-evaluation-harness writes them: prompt text, answer choices, gold, few-shot.

    style = prompt_style("auto", rows)                  # pubmedqa | medqa | cmmlu | mcq (from the rows)
    items = build_items(rows, style, fewshot=shots, num_fewshot=3, seed=1234)
    # item.context: "Abstract: ...\\nQuestion: ...\\nAnswer:"  item.choices: ["yes", "no", "maybe"]  item.gold: 0

The prompt formats copy lm-evaluation-harness's task definitions (lm_eval/tasks/...), so a loglik accuracy here
is the number the harness would report for the same rows:

- ``pubmedqa`` (``pubmed_qa``): ``"Abstract: {contexts joined by \\n}\\nQuestion: {question}\\nAnswer:"``, choices
  ``yes / no / maybe``; without contexts (``contexts=false`` or a row without any) the ``Abstract`` line is left out.
- ``medqa`` (``medqa_4options``): ``"Question: {question}\\nA. ...\\nB. ...\\n...Answer:"``, choices the option
  letters (4 or 5 options: A-D or A-E, whatever the row has).
- ``cmmlu``: the subject's description (``以下是关于{学科}的单项选择题，请直接给出正确答案的选项。\\n\\n``, for a row
  with a known medical ``subject``) + ``"{question}\\nA. ...\\n答案："``, choices the letters.
- ``mcq``: any other multiple-choice file: the ``medqa`` layout.

Choices are scored as the continuation ``target_delimiter + choice`` (``" "``, as the harness does). Few-shot
examples (``num_fewshot`` from a separate pool) are prepended as ``text + " " + gold choice`` blocks joined by
``"\\n\\n"`` after the description; ``sampler=random`` draws them with ``random.Random(seed)`` (one generator for
the whole run, the question itself excluded when the pool contains it), ``first_n`` takes the pool's first N.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

STYLES = ("auto", "pubmedqa", "medqa", "cmmlu", "mcq")
SAMPLERS = ("random", "first_n")
YES_NO_MAYBE = ("yes", "no", "maybe")
TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"
CMMLU_SUBJECTS = {  # lm_eval/tasks/cmmlu/cmmlu_<subject>.yaml "description" (the medical subjects)
    "anatomy": "解剖学", "clinical_knowledge": "临床知识", "college_medical_statistics": "大学医学统计",
    "college_medicine": "大学医学", "genetics": "遗传学", "nutrition": "营养学",
    "professional_medicine": "专业医学", "traditional_chinese_medicine": "中医中药", "virology": "病毒学",
}
_CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass
class Item:
    """One question ready to score: ``context`` + each of ``continuations`` (= delimiter + choice)."""

    id: Any
    question: str
    context: str
    choices: list[str]
    gold: int | None
    fields: dict = field(default_factory=dict)

    @property
    def continuations(self) -> list[str]:
        return [TARGET_DELIMITER + c for c in self.choices]

    @property
    def reference(self) -> str | None:
        return self.choices[self.gold] if self.gold is not None else None


def prompt_style(style: str, rows: Sequence[Mapping[str, Any]]) -> str:
    """``style`` itself, or for ``auto``: ``pubmedqa`` when the rows have no options, ``cmmlu`` when their
    questions are Chinese, else ``medqa``."""
    if style != "auto":
        return style
    if not rows or not any(r.get("options") for r in rows):
        return "pubmedqa"
    if sum(bool(_CJK.search(str(r.get("question", "")))) for r in rows) * 2 > len(rows):
        return "cmmlu"
    return "medqa"


def _options_block(options: Mapping[str, str]) -> str:
    return "".join(f"{k}. {v}\n" for k, v in options.items())


def doc_text(row: Mapping[str, Any], style: str, contexts: bool = True) -> str:
    """The harness's ``doc_to_text`` of one normalized row (question, options, contexts) in ``style``."""
    q = str(row["question"])
    if style == "pubmedqa":
        ctx = row.get("contexts")
        items = [ctx] if isinstance(ctx, str) else [str(c) for c in (ctx or [])]
        head = f"Abstract: {chr(10).join(items)}\n" if contexts and items else ""
        return f"{head}Question: {q}\nAnswer:"
    options = row.get("options") or {}
    if style == "cmmlu":
        return f"{q.strip()}\n{_options_block(options)}答案："
    return f"Question: {q}\n{_options_block(options)}Answer:"


def description(row: Mapping[str, Any], style: str) -> str:
    subject = CMMLU_SUBJECTS.get(str(row.get("subject") or ""))
    return f"以下是关于{subject}的单项选择题，请直接给出正确答案的选项。\n\n" if style == "cmmlu" and subject else ""


def choices_and_gold(row: Mapping[str, Any], style: str) -> tuple[list[str], int | None]:
    """The answer choices of a row and the gold's index (None: no answer or not among the choices)."""
    options = row.get("options")
    if options:
        choices = list(options)
        answer = row.get("answer")
    else:
        choices = list(YES_NO_MAYBE)
        answer = row.get("answer")
        answer = answer[0] if isinstance(answer, list) and answer else answer
        answer = str(answer).strip().lower() if answer is not None else None
    return choices, (choices.index(answer) if answer in choices else None)


def choice_problems(rows: Sequence[Mapping[str, Any]], style: str) -> list[str]:
    """Rows a loglik evaluation cannot score: no options and an answer that is not yes/no/maybe."""
    out = []
    for r in rows:
        if not r.get("options") and r.get("answer") is not None and choices_and_gold(r, style)[1] is None:
            out.append(f"{r.get('source', 'a row')}: no options and the answer {r.get('answer')!r} is not "
                       "yes/no/maybe (eval.mode=loglik scores the options, or yes/no/maybe)")
    return out


class FewShot:
    """Few-shot blocks from a pool of normalized rows (see the module docstring)."""

    def __init__(self, pool: Sequence[Mapping[str, Any]], num_fewshot: int, style: str, *, sampler: str = "random",
                 seed: int = 1234, contexts: bool = True):
        if sampler not in SAMPLERS:
            raise ValueError(f"eval.fewshot_sampler={sampler!r}; expected one of {SAMPLERS}")
        if num_fewshot > len(pool):
            raise ValueError(f"eval.num_fewshot={num_fewshot} but the few-shot file has {len(pool)} usable rows")
        self.pool, self.n, self.style, self.sampler = list(pool), num_fewshot, style, sampler
        self.rnd, self.contexts = random.Random(seed), contexts

    def examples(self, row: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        if self.n == 0:
            return []
        same = lambda r: r["question"] == row["question"] and r.get("options") == row.get("options")  # noqa: E731
        if self.sampler == "first_n":
            return [r for r in self.pool if not same(r)][: self.n]
        drawn = self.rnd.sample(self.pool, min(self.n + 1, len(self.pool)))
        return [r for r in drawn if not same(r)][: self.n]

    def block(self, row: Mapping[str, Any]) -> str:
        """``"text gold\\n\\ntext gold\\n\\n"`` for ``row`` (empty without few-shot)."""
        shots = []
        for ex in self.examples(row):
            choices, gold = choices_and_gold(ex, self.style)
            if gold is None:
                raise ValueError(f"few-shot row {ex.get('source')} has no usable answer")
            shots.append(doc_text(ex, self.style, self.contexts) + TARGET_DELIMITER + choices[gold])
        return "".join(s + FEWSHOT_DELIMITER for s in shots)


def build_items(rows: Sequence[Mapping[str, Any]], style: str, *, fewshot: FewShot | None = None,
                contexts: bool = True) -> list[Item]:
    """Normalized QA rows -> :class:`Item` s (prompt = description + few-shot block + the question's text)."""
    out = []
    for i, row in enumerate(rows):
        choices, gold = choices_and_gold(row, style)
        shots = fewshot.block(row) if fewshot is not None else ""
        context = description(row, style) + shots + doc_text(row, style, contexts)
        out.append(Item(row.get("id", i), str(row["question"]), context, choices, gold, dict(row)))
    return out
