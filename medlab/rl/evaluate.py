"""Multiple-choice / short-answer QA evaluation of a generative model: greedy answers scored by exact match.

    metrics = evaluate_qa(module, cfg, {"path": "qa.jsonl", "limit": 200})      # a run's config + eval options
    metrics = evaluate_qa(module, rows, batch_size=16)                          # in-memory records
    # -> {"accuracy", "format_failure_rate", "num_questions", "mean_completion_tokens", "data/..."}

The prompts are rendered exactly as in training (`PromptData`: the run's template, system prompt and question
template when the run trained on prompt data; otherwise `PromptData`'s defaults with the run's chat template),
answered greedily (``max_new_tokens`` from the run's objective, else 64), and scored with the rewards' own
``exact_match`` (accuracy; rows without an answer count as wrong) and ``format`` (``kind=answer``: a failure is a
completion without exactly one non-empty ``<answer>...</answer>``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medlab.rl.data import PromptData

log = logging.getLogger(__name__)
PROMPT_DATA = "medlab.rl.data.PromptData"
# Options of PromptData that an eval dict (``eval.*``) may set; everything else in it is ignored here.
DATA_OPTIONS = ("fields", "template", "system_prompt", "question_template", "contexts_in_prompt", "max_contexts",
                "max_prompt_length", "on_bad_row")


def prompt_data_for(cfg: Any = None, ev: Mapping[str, Any] | None = None, limit: int | None = None) -> PromptData:
    """A `PromptData` over ``ev["path"]`` with the run's prompt settings (``cfg.data`` when it is prompt data)."""
    from omegaconf import DictConfig, OmegaConf

    ev = dict(ev or {})
    data_cfg: dict[str, Any] = {}
    if cfg is not None:
        node = cfg.get("data") if isinstance(cfg, (DictConfig, Mapping)) and "data" in cfg else cfg
        plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node or {})
        if plain.get("_target_") == PROMPT_DATA:
            data_cfg = {k: v for k, v in plain.items() if k in DATA_OPTIONS}
        elif plain.get("template"):  # e.g. an SFT run: keep its chat template
            data_cfg["template"] = plain["template"]
    data_cfg.update({k: ev[k] for k in DATA_OPTIONS if ev.get(k) is not None})
    if "path" not in ev:
        raise ValueError("evaluate_qa needs eval.path (a QA file) or a list of rows")
    lim = limit if limit is not None else ev.get("limit")
    return PromptData(ev["path"], None, limit=int(lim) if lim else None, **data_cfg)


def _max_new_tokens(module: Any, cfg: Any) -> int:
    for value in (getattr(module, "val_max_new_tokens", None), getattr(module, "max_new_tokens", None)):
        if value:
            return int(value)
    try:
        return int(cfg.objective.get("val_max_new_tokens") or cfg.objective.get("max_new_tokens") or 64)
    except Exception:  # noqa: BLE001 - no objective section: the default
        return 64


@torch.no_grad()
def evaluate_qa(module: Any, data: Any, ev: Mapping[str, Any] | None = None, *, limit: int | None = None,
                batch_size: int = 16, max_new_tokens: int | None = None) -> dict[str, Any]:
    """Greedy QA accuracy of ``module`` (a GRPOPolicy, or any objective with ``.model`` and ``.tokenizer``).

    ``data``: a run config (its ``data`` section gives the prompt settings; ``ev["path"]`` the file), a data
    config mapping, a `PromptData` (already set up or not), or a list of raw records (``question``,
    ``options``, ``answer``... mapped by ``ev["fields"]``). ``ev``: the ``eval.*`` options (``path``,
    ``fields``, ``limit``, and prompt options such as ``system_prompt``). ``limit``: first N questions.
    """
    from medlab.objectives.grpo import score_answers
    from medlab.rl.data import collate_prompts
    from medlab.rl.generation import HFGenerateEngine

    tokenizer = module.tokenizer
    ev = dict(ev or {})
    limit = limit if limit is not None else (int(ev["limit"]) if ev.get("limit") else None)
    counts: dict[str, int] = {}
    cfg = None
    if isinstance(data, PromptData):
        prompt_data = data
        if not prompt_data.train_dataset:
            counts = prompt_data.setup(tokenizer)
        examples = prompt_data.val_dataset or prompt_data.train_dataset
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        prompt_data = PromptData(None, **{k: ev[k] for k in DATA_OPTIONS if ev.get(k) is not None})
        rows = prompt_data.rows_from_records([dict(r) for r in data][:limit] if limit else [dict(r) for r in data])
        examples = prompt_data.examples_from_rows(rows, tokenizer)
    else:
        cfg = data
        prompt_data = prompt_data_for(cfg, ev, limit)
        counts = prompt_data.setup(tokenizer)
        examples = prompt_data.train_dataset
    if limit:
        examples = examples[:limit]
    if not examples:
        raise ValueError("evaluate_qa: no questions to answer")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    engine = getattr(module, "engine", None) or HFGenerateEngine(module.model, tokenizer)
    new_tokens = max_new_tokens or _max_new_tokens(module, cfg)
    model = module.model
    was_training = model.training
    model.eval()
    n, sums, tokens = 0, {"accuracy": 0.0, "format_failure_rate": 0.0}, 0
    try:
        for s in range(0, len(examples), batch_size):
            chunk = examples[s:s + batch_size]
            batch = collate_prompts(chunk, pad)
            ro = engine.generate(batch["prompt_ids"], num_generations=1, do_sample=False, max_new_tokens=new_tokens)
            scores = score_answers(batch["prompts"], ro.texts, batch["fields"])
            for k in sums:
                sums[k] += scores[k] * len(chunk)
            tokens += int(ro.completion_lengths.sum())
            n += len(chunk)
    finally:
        model.train(was_training)
    return {"accuracy": sums["accuracy"] / n, "format_failure_rate": sums["format_failure_rate"] / n,
            "num_questions": n, "mean_completion_tokens": tokens / n, "max_new_tokens": new_tokens,
            **{f"data/{k}": v for k, v in counts.items()}}
