"""``python -m medlab.evaluate eval.task=toolcall``: tool-routing accuracy of a function-calling run on a file.

    data = toolcall_data(cfg, {"path": "toolcall_val.jsonl"})     # the run's chat data settings over the file
    metrics = evaluate_toolcall(module, data, {"max_new_tokens": 128}, samples=records)

Every conversation of ``eval.path`` (glaive ``conversations`` + ``tools``, or any chat format with tool calls) is
held out as a whole; each assistant turn (``eval.tool_turns=first``: the first of each conversation) is answered
greedily from the conversation before it, rendered with the run's chat template and system prompt, and checked by
:mod:`medlab.rl.tool_check` (BFCL's AST rules: function name, required / unknown parameters, types, normalized
values; a turn that needs no tool is right only without a call). Metrics: ``tool_routing_acc``, per category
``tool_routing_acc/{single,multiple,parallel,no_tool}``, ``tool_routing_malformed_rate``; the records (one per
turn) go to ``eval_samples.jsonl``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from medlab.rl.tool_check import summarize
from medlab.rl.tool_routing import answer_and_check, chat_rows, routing_cases

CHAT_DATA = "medlab.data.CausalLMData"
DEFAULT_MAX_NEW_TOKENS = 128


def toolcall_data(cfg: Any, ev: Mapping[str, Any]):
    """A `CausalLMData` over ``ev["path"]`` with the run's chat settings (template, system prompt, format, fields
    when the run trained on chat data; chatml otherwise), nothing held out, ``eval.limit`` conversations."""
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    from medlab.data import CausalLMData

    data_cfg = OmegaConf.to_container(cfg.data, resolve=True) if cfg is not None and "data" in cfg else {}
    try:
        chat = getattr(get_class(str(data_cfg.get("_target_"))), "kind", None) == "chat"
    except Exception:  # noqa: BLE001 - no or unknown target
        chat = False
    keep = ("template", "system_prompt", "format", "fields", "max_length", "truncation", "on_bad_row")
    options = {k: v for k, v in data_cfg.items() if k in keep and v is not None} if chat else {}
    fields = ev.get("fields") or {}
    if any(v for v in dict(fields).values()):
        options["fields"] = {k: v for k, v in dict(fields).items() if v}
    if ev.get("on_bad_row"):
        options["on_bad_row"] = ev["on_bad_row"]
    limit = int(ev["limit"]) if ev.get("limit") else None
    return CausalLMData(ev["path"], None, val_split=0.0, mode="sft", limit=limit, cache_dir=None, **options)


def evaluate_toolcall(module: Any, data: Any, ev: Mapping[str, Any] | None = None, *,
                      samples: list | None = None, batch_size: int | None = None) -> dict[str, Any]:
    """Tool-routing metrics of ``module`` (``.model``, ``.tokenizer``) on every conversation of ``data``."""
    ev = dict(ev or {})
    cases = routing_cases(chat_rows(data, "all"), str(ev.get("tool_turns") or "all"))
    if not cases:
        raise ValueError(f"eval.path={ev.get('path')}: no assistant turns to check")
    new_tokens = int(ev.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS)
    results, records = answer_and_check(module.model, module.tokenizer, data.template, cases,
                                        max_new_tokens=new_tokens, batch_size=int(batch_size or ev.get("batch_size") or 8))
    if samples is not None:
        samples.extend(records)
    reasons: dict[str, int] = {}
    for r in results:
        if r.reason:
            key = r.reason.split(":")[0].split(" '")[0]
            reasons[key] = reasons.get(key, 0) + 1
    return {**summarize(results), "conversations": len({c["conversation"] for c in cases}),
            "max_new_tokens": new_tokens, "errors": dict(sorted(reasons.items(), key=lambda kv: -kv[1]))}
