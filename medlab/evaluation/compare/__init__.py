"""Compare 2+ models on one question set: per-answer dimension scores, statistics, plots and a report.

``python -m medlab.compare`` (``medlab.commands.compare``) runs :func:`compare_models`; the parts are small
modules with pure functions where they compute something:

- ``questions``: the question set (QA, chat / alpaca, open questions with references) -> :class:`Question`;
- ``answers``: model entries (run dir, HF dir, model config name), greedy batched answers in each model's chat
  format, the on-disk answer cache;
- ``text``, ``dimensions``, ``safety``: accuracy, completeness, readability, relevance (from ``embedding``),
  safety rubric; ``judge``: optional LLM-judge scores;
- ``stats``: Mann-Whitney U, Wilcoxon signed-rank, Holm, bootstrap CIs (numpy; equal to scipy.stats);
- ``summary``: the statistics table of a comparison; ``plots``: radar / bars / box PNGs; ``report``: report.md and
  the self-contained report.html; ``pipeline``: the whole flow.
"""

from medlab.evaluation.compare.pipeline import compare_models, settings_problems
from medlab.evaluation.compare.questions import Question, load_questions

__all__ = ["Question", "compare_models", "load_questions", "settings_problems"]
