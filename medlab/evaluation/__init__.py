"""Evaluation of trained runs: load a run's module with a chosen checkpoint, score it on a file.

Pure functions used by the commands (``medlab.commands.evaluate``, ``medlab.commands.mine``), notebooks and
tests; nothing here parses a command line or writes result files. Dependencies point one way:
``medlab.commands`` -> ``medlab.evaluation`` -> objectives, data, models, engine (``medlab.rl`` never imports
this package: the agentic search tool receives :func:`load_run` from its caller).

- ``runs``: :func:`load_run` / :func:`load_module` (a run's config + the best, latest or a named checkpoint),
  :func:`select_checkpoint`, :func:`load_config`, :func:`default_task` (the objective's declared ``eval_task``).
- ``retrieval``: :func:`retrieval_data`, :func:`evaluate_retrieval` (bi-encoders), :func:`evaluate_rerank`
  (cross-encoders).
- ``qa``: :func:`evaluate_qa` (``generate``: greedy answers, exact match; ``loglik``: the options'
  log-likelihood as lm-evaluation-harness scores them, via ``qa_loglik``, ``loglik`` and ``mcq``), :func:`prompt_data_for`.
- ``preference``: :func:`evaluate_preference`, :func:`preference_data` (reward models: pairwise accuracy; DPO-family
  policies: implicit-reward accuracy via ``dpo_eval``).
- ``toolcall``: :func:`evaluate_toolcall`, :func:`toolcall_data` (tool-routing accuracy, ``medlab.rl.tool_check``).
- ``compare`` (a subpackage, imported on its own): :func:`~medlab.evaluation.compare.compare_models`, the
  multi-model comparison report of ``python -m medlab.compare`` (dimension scores, statistics, plots).
"""

from medlab.evaluation.qa import (
    DATA_OPTIONS,
    PROMPT_DATA,
    evaluate_qa,
    generation_settings,
    prompt_data_for,
    qa_option_problems,
)
from medlab.evaluation.toolcall import evaluate_toolcall, toolcall_data
from medlab.evaluation.retrieval import evaluate_rerank, evaluate_retrieval, given, retrieval_data
from medlab.evaluation.preference import evaluate_preference, preference_data
from medlab.evaluation.runs import (
    CheckpointChoice,
    LoadedRun,
    batches,
    choose_checkpoint,
    default_task,
    load_config,
    load_module,
    load_run,
    no_run,
    select_checkpoint,
)

TASKS = ("retrieval", "rerank", "qa", "toolcall", "preference")

__all__ = [
    "DATA_OPTIONS", "PROMPT_DATA", "TASKS", "CheckpointChoice", "LoadedRun", "batches", "choose_checkpoint", "default_task",
    "evaluate_qa", "evaluate_rerank", "evaluate_retrieval", "generation_settings", "given", "load_config",
    "load_module", "load_run", "no_run", "prompt_data_for", "retrieval_data", "select_checkpoint",
    "evaluate_toolcall", "toolcall_data", "qa_option_problems", "evaluate_preference", "preference_data",
]
