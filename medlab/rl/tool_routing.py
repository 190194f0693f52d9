"""Tool-routing accuracy of a function-calling model: held-out tool-call conversations answered greedily, each
assistant turn checked by :mod:`medlab.rl.tool_check` (BFCL-style AST rules, per category).

    cases = routing_cases(rows, turns="all")           # normalized chat rows: {"messages", "tools"}
    results, records = answer_and_check(model, tokenizer, "chatml", cases, max_new_tokens=128)
    metrics = summarize(results)                       # tool_routing_acc, .../single|multiple|parallel|no_tool, ...

    routing = ToolRouting(max_new_tokens=128, limit=32)   # the optional validation component of CausalLM
    routing.bind(data)                                    # the CausalLMData of the run: its held-out conversations
    routing(model, tokenizer)                             # -> the metrics above (CausalLM logs them as val/...)

A **case** is one assistant turn of a conversation: the prompt is every message before it (the tools in the system
prompt, rendered with the run's chat template and its system prompt, plus the generation prompt), the reference is
that turn's tool calls (none: the turn must answer without calling a tool, e.g. the reply after a tool result).
``turns="first"`` keeps only each conversation's first assistant turn.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medlab.data.templates import get_template
from medlab.data.tokenize import stop_token_ids
from medlab.rl.tool_check import TurnResult, check_turn, summarize

log = logging.getLogger(__name__)
TURNS = ("all", "first")


KEEP_SPECIAL = ("<tool_call>", "</tool_call>")


def visible_text(tokenizer: Any, ids: Sequence[int]) -> str:
    """Decoded text without special tokens, except the tool-call tags, which some tokenizers (the shipped one)
    mark special: skipping them would make every tool call unparseable."""
    text = tokenizer.decode(list(ids), skip_special_tokens=False)
    for token in getattr(tokenizer, "all_special_tokens", []):
        if token not in KEEP_SPECIAL:
            text = text.replace(token, "")
    return text


class _Visible:
    """A tokenizer view whose ``batch_decode`` keeps the tool-call tags (for the generation engine's texts)."""

    def __init__(self, tokenizer: Any):
        self._tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def batch_decode(self, rows, **_: Any) -> list[str]:
        return [visible_text(self._tokenizer, r) for r in rows]


def routing_cases(rows: Sequence[Mapping[str, Any]], turns: str = "all", limit: int | None = None) -> list[dict]:
    """``{"conversation", "turn", "messages", "tools", "expected"}`` per assistant turn of each row."""
    if turns not in TURNS:
        raise ValueError(f"turns={turns!r}; expected one of {TURNS}")
    out = []
    for c, row in enumerate(rows):
        messages = list(row["messages"])
        for j, message in enumerate(messages):
            if message["role"] != "assistant" or j == 0:
                continue
            expected = [{"name": call["name"], "arguments": _json(call.get("arguments"))}
                        for call in message.get("tool_calls") or []]
            out.append({"conversation": c, "turn": j, "messages": [dict(m) for m in messages[:j]],
                        "tools": row.get("tools"), "expected": expected})
            if turns == "first":
                break
        if limit is not None and len({o["conversation"] for o in out}) >= limit:
            break
    return out


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value) if value.strip() else {}
        except json.JSONDecodeError:
            return value
    return value if value is not None else {}


@torch.no_grad()
def answer_and_check(model: Any, tokenizer: Any, template: str, cases: Sequence[Mapping[str, Any]], *,
                     max_new_tokens: int = 128, batch_size: int = 8, engine: Any = None
                     ) -> tuple[list[TurnResult], list[dict]]:
    """Greedy answers to ``cases`` (rendered with ``template``) and their checks; ``records``: one per case
    (``id``, ``question`` = the last user message, ``prediction``, ``reference``, ``correct``, ``category``,
    ``malformed``, ``reason``)."""
    from medlab.rl.generation import HFGenerateEngine

    chat = get_template(template, tokenizer)
    if engine is None:
        engine = HFGenerateEngine(model, _Visible(tokenizer))
        engine.set_stop_tokens(stop_token_ids(chat, tokenizer))
    prompts = [tokenizer(chat.render(c["messages"], c.get("tools"), add_generation_prompt=True),
                         add_special_tokens=False)["input_ids"] for c in cases]
    was_training = model is not None and model.training
    if model is not None:
        model.eval()
    texts: list[str] = []
    try:
        for s in range(0, len(prompts), batch_size):
            ro = engine.generate(prompts[s:s + batch_size], num_generations=1, do_sample=False,
                                 max_new_tokens=max_new_tokens)
            texts += list(ro.texts)
    finally:
        if model is not None:
            model.train(was_training)
    results, records = [], []
    for case, text in zip(cases, texts, strict=True):
        r = check_turn(text, case["expected"], case.get("tools"))
        results.append(r)
        user = next((m["content"] for m in reversed(case["messages"]) if m["role"] == "user"), "")
        records.append({"id": f"{case['conversation']}:{case['turn']}", "question": user, "prediction": text,
                        "predicted_calls": list(r.predicted), "reference": case["expected"],
                        "correct": r.correct, "category": r.category, "malformed": r.malformed,
                        "reason": r.reason})
    return results, records


def chat_rows(data: Any, split: str = "val") -> list[dict]:
    """The normalized conversations of a `CausalLMData` (kind ``chat``): ``val`` = its held-out rows (exactly its
    validation conversations), ``all`` = every row of its ``path`` files (`CausalLMData.normalized_rows`)."""
    return data.normalized_rows(split)


class ToolRouting:
    """Tool-routing accuracy on the run's held-out conversations, as an optional validation component of
    `medlab.objectives.causal_lm.CausalLM` (``objective.tool_routing`` in ``conf/experiment/sft_toolcall.yaml``).

    Args:
        max_new_tokens: the longest answer per turn.
        limit: at most this many held-out conversations (null = all).
        batch_size: turns answered per ``generate`` call.
        turns: ``all`` assistant turns or the ``first`` of each conversation.
    """

    def __init__(self, max_new_tokens: int = 128, limit: int | None = None, batch_size: int = 8,
                 turns: str = "all"):
        if turns not in TURNS:
            raise ValueError(f"tool_routing.turns={turns!r}; expected one of {TURNS}")
        self.max_new_tokens, self.limit, self.batch_size, self.turns = int(max_new_tokens), limit, batch_size, turns
        self.cases: list[dict] = []
        self.template = "chatml"

    def bind(self, data: Any) -> None:
        """Read the held-out conversations of the run's chat data (``data.kind == "chat"``)."""
        if getattr(data, "kind", None) != "chat" or getattr(data, "mode", "sft") != "sft":
            log.warning("tool_routing: needs SFT chat data, got %s; no tool-routing accuracy", type(data).__name__)
            return
        self.template = data.template
        self.cases = routing_cases(chat_rows(data, "val"), self.turns, self.limit)
        if not self.cases:
            log.warning("tool_routing: the data has no held-out conversations (data.val_split / data.val_path)")

    def __call__(self, model: Any, tokenizer: Any) -> dict[str, float]:
        if not self.cases:
            return {}
        results, _ = answer_and_check(model, tokenizer, self.template, self.cases,
                                      max_new_tokens=self.max_new_tokens, batch_size=self.batch_size)
        return summarize(results)
