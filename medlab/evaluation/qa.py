"""Multiple-choice / short-answer QA evaluation of a generative model: greedy answers scored by exact match
(``eval.mode=generate``, this module) or the options' log-likelihoods (``eval.mode=loglik``:
:mod:`medlab.evaluation.qa_loglik`), optionally few-shot (``eval.fewshot_path``, ``eval.num_fewshot``).

    metrics = evaluate_qa(module, cfg, {"path": "qa.jsonl", "limit": 200})      # a run's config + eval options
    metrics = evaluate_qa(module, rows, batch_size=16)                          # in-memory records
    # -> {"accuracy", "format_failure_rate", "num_questions", "mean_completion_tokens", "max_new_tokens", "data/..."}
    records = []; evaluate_qa(module, cfg, {"path": ..., "mode": "loglik"}, samples=records)  # + per question

Few-shot generation puts the solved examples before the question as earlier chat turns (user: the example's
prompt, assistant: ``<answer>GOLD</answer>``), drawn as in loglik mode (:class:`medlab.evaluation.mcq.FewShot`).

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
                "max_prompt_length", "on_bad_row", "example_turns")
DEFAULT_MAX_NEW_TOKENS = 64
MODES = ("generate", "loglik")


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


def qa_option_problems(ev: Mapping[str, Any]) -> list[str]:
    """Config problems of the qa scoring options (``eval.mode``, ``eval.prompt_style``, few-shot keys)."""
    from pathlib import Path

    from medlab.evaluation.mcq import SAMPLERS, STYLES

    out = []
    for key, value, allowed in (("mode", ev.get("mode") or "generate", MODES),
                                ("prompt_style", ev.get("prompt_style") or "auto", STYLES),
                                ("fewshot_sampler", ev.get("fewshot_sampler") or "random", SAMPLERS)):
        if value not in allowed:
            out.append(f"eval.{key}={value!r} is not one of {', '.join(allowed)}")
    shots = ev.get("num_fewshot") or 0
    if not isinstance(shots, int) or shots < 0:
        out.append(f"eval.num_fewshot={shots!r} must be an integer >= 0")
    elif shots and not ev.get("fewshot_path"):
        out.append(f"eval.num_fewshot={shots} needs eval.fewshot_path (the file the examples come from)")
    elif ev.get("fewshot_path") and not Path(str(ev["fewshot_path"])).exists():
        out.append(f"eval.fewshot_path={ev['fewshot_path']}: no such file")
    return out


def _read_rows(prompt_data: PromptData, limit: int | None) -> list[dict]:
    """Normalized rows of every file of ``prompt_data`` (the ``qa`` format), the first ``limit`` in all."""
    from medlab.data.readers import read_located

    rows: list[dict] = []
    for path in prompt_data.paths:
        left = None if limit is None else limit - len(rows)
        if left is not None and left <= 0:
            break
        records = read_located(path, limit=left).dataset.to_list()
        rows += prompt_data.rows_from_records(records, str(path))
    return rows


def fewshot_rows(prompt_data: PromptData, ev: Mapping[str, Any]) -> list[dict]:
    """The few-shot pool: ``eval.fewshot_path`` read with the same fields as the questions ([] without it)."""
    path, n = ev.get("fewshot_path"), int(ev.get("num_fewshot") or 0)
    if not path or n == 0:
        return []
    pool = PromptData(path, None, fields=prompt_data.fields, on_bad_row=prompt_data.on_bad_row)
    return _read_rows(pool, None)


def _rows_and_examples(module: Any, data: Any, ev: Mapping[str, Any], limit: int | None, objective: Any):
    """``(prompt_data, rows, examples or None, counts, objective config)`` for the forms ``data`` may take."""
    tokenizer = module.tokenizer
    if isinstance(data, PromptData):
        if not data.train_dataset and ev.get("mode") == "loglik":
            return data, _read_rows(data, limit), None, {}, objective
        counts = data.setup(tokenizer) if not data.train_dataset else {}
        examples = data.val_dataset or data.train_dataset
        examples = examples[:limit] if limit else examples
        return data, [e["fields"] for e in examples], examples, counts, objective
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        prompt_data = PromptData(None, **_data_options(ev))
        records = [dict(r) for r in data]
        rows = prompt_data.rows_from_records(records[:limit] if limit else records)
        return prompt_data, rows, None, {}, objective
    if objective is None and _is_run_config(data):
        objective = data.get("objective")
    prompt_data = prompt_data_for(data, ev, limit)
    if ev.get("mode") == "loglik":  # plain rows: the prompts are the harness's, not the chat template's
        rows = _read_rows(prompt_data, limit)
        return prompt_data, rows, None, {"questions": len(rows)}, objective
    counts = prompt_data.setup(tokenizer)
    examples = prompt_data.train_dataset[:limit] if limit else prompt_data.train_dataset
    return prompt_data, [e["fields"] for e in examples], examples, counts, objective


def evaluate_qa(module: Any, data: Any, ev: Mapping[str, Any] | None = None, *, limit: int | None = None,
                batch_size: int = 16, max_new_tokens: int | None = None, engine: Any = None,
                objective: Any = None, samples: list | None = None) -> dict[str, Any]:
    """QA accuracy of ``module`` (any objective with ``.model`` and ``.tokenizer``), by ``ev["mode"]``:
    ``generate`` (default: greedy answers, exact match, format failures) or ``loglik`` (the options' log-likelihood
    after lm-evaluation-harness's prompt: ``acc`` and ``acc_norm``, see :mod:`medlab.evaluation.qa_loglik`).

    ``data``: a run config (its ``data`` section gives the prompt settings, its ``objective`` the generation
    settings; ``ev["path"]`` the file), a data config mapping, a `PromptData` (already set up or not), or a list
    of raw records (``question``, ``options``, ``answer``... mapped by ``ev["fields"]``). ``ev``: the ``eval.*``
    options (``path``, ``fields``, ``limit``, ``mode``, ``max_new_tokens``, ``fewshot_path`` / ``num_fewshot`` /
    ``fewshot_sampler`` / ``fewshot_seed``, ``prompt_style`` and prompt options such as ``system_prompt``).
    ``limit``: first N questions. ``engine``: a `medlab.rl.generation.GenerationEngine` to answer with (default:
    the one ``objective`` -- an objective config, default the run config's -- names). ``max_new_tokens``: see
    the module docstring. ``samples``: a list that receives one record per question (``id``, ``question``,
    ``prediction``, ``reference``, ``correct``, ...; ``eval_samples.jsonl`` of the command).
    """
    ev = dict(ev or {})
    mode = str(ev.get("mode") or "generate")
    if mode not in MODES:
        raise ValueError(f"eval.mode={mode!r}; expected one of {', '.join(MODES)}")
    limit = limit if limit is not None else (int(ev["limit"]) if ev.get("limit") else None)
    prompt_data, rows, examples, counts, objective = _rows_and_examples(module, data, ev, limit, objective)
    if not rows:
        raise ValueError("evaluate_qa: no questions to answer")
    pool = fewshot_rows(prompt_data, ev)
    if mode == "loglik":
        from medlab.evaluation.qa_loglik import evaluate_loglik

        metrics, records = evaluate_loglik(module.model, module.tokenizer, rows, ev, pool, batch_size=batch_size)
    else:
        if pool or examples is None:
            examples = fewshot_examples(prompt_data, rows, module.tokenizer, pool, ev)
        metrics, records = _generate(module, prompt_data, examples, ev, batch_size=batch_size,
                                     max_new_tokens=max_new_tokens, engine=engine, objective=objective)
    if samples is not None:
        samples.extend(records)
    return {**metrics, **{f"data/{k}": v for k, v in counts.items()}}


def fewshot_examples(prompt_data: PromptData, rows: list[dict], tokenizer: Any, pool: list[dict],
                     ev: Mapping[str, Any]) -> list[dict]:
    """Generation examples of ``rows``: the run's chat prompt, with ``eval.num_fewshot`` solved examples from
    ``pool`` as earlier user / assistant turns (``<answer>GOLD</answer>``), drawn as in loglik mode."""
    from medlab.evaluation.mcq import FewShot

    chat = get_template(prompt_data.template, tokenizer)
    n = int(ev.get("num_fewshot") or 0) if pool else 0
    shots = FewShot(pool, n, "mcq", sampler=str(ev.get("fewshot_sampler") or "random"),
                    seed=int(ev.get("fewshot_seed") if ev.get("fewshot_seed") is not None else 1234))
    out = []
    for i, row in enumerate(rows):
        messages = prompt_data.messages(row)
        turns = []
        for ex in shots.examples(row):
            gold = ex.get("answer")
            gold = gold[0] if isinstance(gold, list) else gold
            turns += [prompt_data.messages(ex)[-1], {"role": "assistant", "content": f"<answer>{gold}</answer>"}]
        messages = messages[:-1] + turns + messages[-1:]  # after the system prompt, before the question
        text = chat.render(messages, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append({"id": i, "prompt": text, "prompt_ids": ids, "fields": row, "messages": messages})
    return out


@torch.no_grad()
def _generate(module: Any, prompt_data: PromptData, examples: list[dict], ev: Mapping[str, Any], *,
              batch_size: int, max_new_tokens: int | None, engine: Any, objective: Any) -> tuple[dict, list]:
    from medlab.rl.data import collate_prompts
    from medlab.rl.rewards import exact_match, extract_answer, format_reward

    tokenizer = module.tokenizer
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
    records, tokens = [], 0
    try:
        for s in range(0, len(examples), batch_size):
            chunk = examples[s:s + batch_size]
            batch = collate_prompts(chunk, pad)
            ro = engine.generate(batch["prompt_ids"], num_generations=1, do_sample=False, max_new_tokens=new_tokens)
            golds = [e["fields"].get("answer") for e in chunk]
            em = exact_match(batch["prompts"], ro.texts, answer=golds)
            fmt = format_reward(batch["prompts"], ro.texts, kind="answer")
            for e, text, hit, ok in zip(chunk, ro.texts, em, fmt):
                row = e["fields"]
                records.append({"id": row.get("id", len(records)), "question": row.get("question"),
                                "prediction": extract_answer(text), "reference": row.get("answer"),
                                "correct": bool(hit), "format_ok": bool(ok), "completion": text})
            tokens += int(ro.completion_lengths.sum())
    finally:
        model.train(was_training)
    n = len(records)
    metrics = {"mode": "generate", "accuracy": sum(r["correct"] for r in records) / n,
               "format_failure_rate": sum(not r["format_ok"] for r in records) / n, "num_questions": n,
               "mean_completion_tokens": tokens / n, "max_new_tokens": new_tokens,
               "num_fewshot": int(ev.get("num_fewshot") or 0) if ev.get("fewshot_path") else 0}
    return metrics, records
