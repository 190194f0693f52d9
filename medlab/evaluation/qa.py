"""Multiple-choice / short-answer QA evaluation of a generative model: greedy answers scored by exact match.

    metrics = evaluate_qa(module, cfg, {"path": "qa.jsonl", "limit": 200})      # a run's config + eval options
    metrics = evaluate_qa(module, rows, batch_size=16)                          # in-memory records
    # -> {"accuracy", "format_failure_rate", "num_questions", "mean_completion_tokens", "max_new_tokens", "data/..."}

The prompts are rendered exactly as in training (`PromptData`: the run's template, system prompt and question
template when the run trained on prompt data; otherwise `PromptData`'s defaults with the run's chat template),
answered greedily and scored with the rewards' own ``exact_match`` (accuracy; rows without an answer count as
wrong) and ``format`` (``kind=answer``: a failure is a completion without exactly one non-empty
``<answer>...</answer>``).

Generation settings come from the run's *config*, never from probing the module: ``max_new_tokens`` = the
argument, else ``eval.max_new_tokens``, else the objective's ``val_max_new_tokens`` / ``max_new_tokens``, else 64;
the engine = the argument, else the objective's ``engine`` setting (``medlab``: the KV-cache loop of
``medlab.rl.decode``; ``hf``, or an objective without one such as SFT's ``causal_lm``: transformers ``generate``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from medlab.data.templates import get_template
from medlab.data.tokenize import stop_token_ids
from medlab.rl.data import PromptData

log = logging.getLogger(__name__)
PROMPT_DATA = "medlab.rl.data.PromptData"
# Options of PromptData that an eval dict (``eval.*``) may set; everything else in it is ignored here.
DATA_OPTIONS = ("fields", "template", "system_prompt", "question_template", "contexts_in_prompt", "max_contexts",
                "max_prompt_length", "on_bad_row")
DEFAULT_MAX_NEW_TOKENS = 64


def _plain(node: Any) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return dict(node or {})


def _data_options(ev: Mapping[str, Any]) -> dict[str, Any]:
    from medlab.evaluation.retrieval import given

    return {k: v for k, v in given(ev).items() if k in DATA_OPTIONS}


def _is_run_config(data: Any) -> bool:
    from omegaconf import DictConfig

    return isinstance(data, (DictConfig, Mapping)) and "data" in data


def prompt_data_for(cfg: Any = None, ev: Mapping[str, Any] | None = None, limit: int | None = None) -> PromptData:
    """A `PromptData` over ``ev["path"]`` with the run's prompt settings (``cfg.data`` when it is prompt data)."""
    from hydra.utils import get_class

    ev = dict(ev or {})
    data_cfg: dict[str, Any] = {}
    if cfg is not None:
        plain = _plain(cfg.get("data") if _is_run_config(cfg) else cfg)
        try:
            kind = getattr(get_class(str(plain.get("_target_"))), "kind", None)  # medlab.contracts.DataSource
        except Exception:  # noqa: BLE001 - no or unknown target: not prompt data
            kind = None
        if kind == "prompts":
            data_cfg = {k: v for k, v in plain.items() if k in DATA_OPTIONS}
        elif plain.get("template"):  # e.g. an SFT run: keep its chat template
            data_cfg["template"] = plain["template"]
    data_cfg.update(_data_options(ev))
    if not ev.get("path"):
        raise ValueError("evaluate_qa needs eval.path (a QA file) or a list of rows")
    lim = limit if limit is not None else ev.get("limit")
    return PromptData(ev["path"], None, limit=int(lim) if lim else None, **data_cfg)


def generation_settings(objective: Any, ev: Mapping[str, Any] | None = None,
                        max_new_tokens: int | None = None) -> dict[str, Any]:
    """``{engine, check_every, max_new_tokens}`` for greedy answers, from an objective *config* (``cfg.objective``)
    and the eval options (see the module docstring)."""
    o = _plain(objective)
    ev = dict(ev or {})
    new_tokens = max_new_tokens or ev.get("max_new_tokens") or o.get("val_max_new_tokens") or o.get("max_new_tokens")
    return {"engine": str(o.get("engine") or "hf"), "check_every": int(o.get("engine_check_every") or 16),
            "max_new_tokens": int(new_tokens or DEFAULT_MAX_NEW_TOKENS)}


def generation_engine(model: Any, tokenizer: Any, engine: str = "hf", check_every: int = 16):
    """The generation engine an objective config names: ``medlab`` (KV-cache loop) or ``hf`` (``generate``)."""
    from medlab.rl.decode import KVCacheEngine
    from medlab.rl.generation import HFGenerateEngine

    if engine == "medlab":
        return KVCacheEngine(model, tokenizer, check_every=check_every)
    if engine == "hf":
        return HFGenerateEngine(model, tokenizer)
    raise ValueError(f"objective.engine={engine!r}; expected medlab or hf")


@torch.no_grad()
def evaluate_qa(module: Any, data: Any, ev: Mapping[str, Any] | None = None, *, limit: int | None = None,
                batch_size: int = 16, max_new_tokens: int | None = None, engine: Any = None,
                objective: Any = None) -> dict[str, Any]:
    """Greedy QA accuracy of ``module`` (any objective with ``.model`` and ``.tokenizer``).

    ``data``: a run config (its ``data`` section gives the prompt settings, its ``objective`` the generation
    settings; ``ev["path"]`` the file), a data config mapping, a `PromptData` (already set up or not), or a list
    of raw records (``question``, ``options``, ``answer``... mapped by ``ev["fields"]``). ``ev``: the ``eval.*``
    options (``path``, ``fields``, ``limit``, ``max_new_tokens`` and prompt options such as ``system_prompt``).
    ``limit``: first N questions. ``engine``: a `medlab.rl.generation.GenerationEngine` to answer with (default:
    the one ``objective`` -- an objective config, default the run config's -- names). ``max_new_tokens``: see
    the module docstring.
    """
    from medlab.objectives.grpo import score_answers
    from medlab.rl.data import collate_prompts

    tokenizer = module.tokenizer
    ev = dict(ev or {})
    limit = limit if limit is not None else (int(ev["limit"]) if ev.get("limit") else None)
    counts: dict[str, int] = {}
    if isinstance(data, PromptData):
        prompt_data = data
        if not prompt_data.train_dataset:
            counts = prompt_data.setup(tokenizer)
        examples = prompt_data.val_dataset or prompt_data.train_dataset
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        prompt_data = PromptData(None, **_data_options(ev))
        rows = prompt_data.rows_from_records([dict(r) for r in data][:limit] if limit else [dict(r) for r in data])
        examples = prompt_data.examples_from_rows(rows, tokenizer)
    else:
        if objective is None and _is_run_config(data):
            objective = data.get("objective")
        prompt_data = prompt_data_for(data, ev, limit)
        counts = prompt_data.setup(tokenizer)
        examples = prompt_data.train_dataset
    if limit:
        examples = examples[:limit]
    if not examples:
        raise ValueError("evaluate_qa: no questions to answer")
    settings = generation_settings(objective, ev, max_new_tokens)
    new_tokens = settings["max_new_tokens"]
    if engine is None:
        engine = generation_engine(module.model, tokenizer, settings["engine"], settings["check_every"])
        # stop where the chat format ends a turn, as in training (e.g. <|eot_id|> for llama3)
        engine.set_stop_tokens(stop_token_ids(get_template(prompt_data.template, tokenizer), tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
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
