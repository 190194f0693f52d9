"""``python -m medlab.evaluate``: score a run (or an untrained backbone) on a file; one JSON line + a JSON file.

    python -m medlab.evaluate run_dir=outputs/runs/biencoder/<run> eval.path=pairs.jsonl
    python -m medlab.evaluate run_dir=RUN eval.path=rerank.jsonl eval.fields.doc=answer eval.fields.score=judgment
    python -m medlab.evaluate run_dir=none +experiment=biencoder eval.path=pairs.jsonl      # zero-shot baseline
    python -m medlab.evaluate run_dir=RUN eval.task=qa eval.path=qa.jsonl eval.limit=200
    python -m medlab.evaluate run_dir=none model=smollm2_135m eval.task=qa eval.mode=loglik eval.path=medqa.jsonl
    python -m medlab.evaluate run_dir=RUN eval.task=toolcall eval.path=toolcall_val.jsonl
    python -m medlab.evaluate run_dir=RUN eval.checkpoint=latest eval.path=...              # not the best step
    python -m medlab.evaluate --cfg job run_dir=RUN eval.path=...                           # the config it uses

A Hydra app (``medlab.commands.app``): the options are declared, with comments, in
``conf/commands/evaluate.yaml``. ``eval.task`` defaults to the objective's declared ``eval_task``: ``retrieval``
(bi-encoder: the corpus is every distinct document of the file, each row's own document is relevant; rows with the
same query are one query unless ``eval.merge_duplicate_queries=false``, and the output's ``queries``, ``rows`` and
``duplicate_queries_merged`` say which protocol the numbers use), ``rerank``
(cross-encoder: the candidates sharing a ``group`` are reranked, NDCG on ``score``, MRR on ``label``; beside them
``cosine/*``, the zero-shot bi-encoder cosine of the run's backbone on the same candidates, and ``original_order/*``
when the rows carry the retriever's ``rank``, e.g. MEDIQA's ``system_rank``; ``eval.baselines=false`` skips them), ``qa``
(generative models: ``eval.mode=generate`` greedy answers scored by exact match, or ``eval.mode=loglik`` the
options' log-likelihood as lm-evaluation-harness scores them; few-shot from ``eval.fewshot_path``), ``toolcall``
(function-calling runs: greedy tool calls checked like BFCL's AST checker, per category), ``preference`` (reward
models: ``pairwise_accuracy``, ``mean_margin``, ``n_pairs`` on pairs or on judgments paired within each query, with
the training ``eval.fields`` mapping; DPO-family runs: implicit-reward accuracy and margins). qa and toolcall also
write one record per question to ``eval_samples.jsonl`` beside the metrics file. The weights are the run's best checkpoint by its
``trainer.monitor`` (``eval.checkpoint=best|latest|PATH``); the output says which (``checkpoint``,
``checkpoint_selected_by``: best | latest | latest_fallback | path | untrained).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medlab.commands.app import output_dir, require_run_dir, run_command
from medlab.config import ConfigError
from medlab.data.errors import DataError
from medlab.evaluation import (
    TASKS,
    default_task,
    evaluate_qa,
    evaluate_rerank,
    evaluate_retrieval,
    evaluate_toolcall,
    evaluate_preference,
    LoadedRun,
    given,
    choose_checkpoint,
    load_module,
    preference_data,
    prompt_data_for,
    qa_option_problems,
    retrieval_data,
    toolcall_data,
)

log = logging.getLogger("medlab")
COMMAND = "evaluate"


def _data_problems(data, path: str) -> None:
    problems = data.validate()
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise DataError(f"{len(problems)} problem(s) in eval.path={path}:\n{lines}")


def evaluate(cfg: DictConfig, run_dir: Any) -> dict[str, Any]:
    """The command's body: ``cfg`` is the composed config (``eval.*`` + the run's or the composed training config)."""
    run_dir = require_run_dir(COMMAND, run_dir)
    ev = given(cfg.eval)
    problems = []
    if not ev.get("path"):
        problems.append("eval.path is required: the file to evaluate on (eval.path=FILE)")
    task = ev.get("task") or default_task(cfg)
    if task not in TASKS:
        problems.append(f"eval.task={task!r} is not one of {', '.join(TASKS)}")
    problems += qa_option_problems(ev)
    if problems:
        raise ConfigError(problems)
    batch_size = int(ev.get("batch_size") or 64)
    t0 = time.perf_counter()
    # the checkpoint is chosen, and the data read with every row checked, before any model loads
    choice = choose_checkpoint(cfg, run_dir, ev.get("checkpoint"))
    data = (prompt_data_for(cfg, ev) if task == "qa" else toolcall_data(cfg, ev) if task == "toolcall"
            else preference_data(cfg, ev) if task == "preference" else retrieval_data(cfg, ev, task))
    _data_problems(data, ev["path"])
    cfg, module, choice = load_module(cfg, run_dir, checkpoint=choice)
    samples: list[dict] = []
    if task == "qa":
        metrics = evaluate_qa(module, data, ev, batch_size=batch_size, objective=cfg.objective, samples=samples)
    elif task == "toolcall":
        metrics = evaluate_toolcall(module, data, ev, samples=samples)
    elif task == "preference":  # reward models: pairwise accuracy; DPO-family policies: implicit rewards
        counts = data.setup(module.tokenizer)
        metrics = evaluate_preference(LoadedRun(cfg, module, choice), data, batch_size)
        metrics.update({f"data/{k}": v for k, v in counts.items()})
    else:
        counts = data.setup(module.tokenizer)
        metrics = (evaluate_retrieval(module, data, batch_size, bool(ev.get("merge_duplicate_queries", True)))
                   if task == "retrieval" else evaluate_rerank(module, data, batch_size))
        if task == "rerank" and ev.get("baselines", True):  # what the reranker has to beat, same candidates
            from medlab.evaluation.retrieval import load_embedder, rerank_baselines

            metrics.update(rerank_baselines(data, load_embedder(cfg), batch_size))
        metrics.update({f"data/{k}": v for k, v in counts.items()})
    metrics = {"task": task, "path": str(ev["path"]), "weights": str(choice), **choice.as_dict(), **metrics,
               "seconds": round(time.perf_counter() - t0, 2)}
    out = Path(ev.get("out") or output_dir() / "eval_metrics.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(metrics, indent=2, default=str))
    log.info("%s metrics -> %s", task, out)
    if samples:  # per-question records (qa, toolcall) beside the metrics
        per_question = out.with_name("eval_samples.jsonl")
        per_question.write_text("".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in samples),
                                encoding="utf-8")
        log.info("%d per-question records -> %s", len(samples), per_question)
    print(json.dumps(metrics, default=str), flush=True)
    return metrics


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """``python -m medlab.evaluate *argv`` in-process: the metrics (None for ``--cfg``); raises ConfigError /
    DataError for the user's mistakes."""
    return run_command(COMMAND, argv, evaluate)


def cli() -> None:
    """The console entry: a config/data problem is printed alone on stderr (and in the log), exit code 2."""
    from medlab.commands.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()

