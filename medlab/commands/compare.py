"""``python -m medlab.compare``: compare 2+ models on one question set -> report.html / report.md, plots, scores.

    python -m medlab.compare 'compare.models=[tiny_llama,outputs/runs/sft/<run>]' compare.out=outputs/cmp
    python -m medlab.compare 'compare.models=[smollm2_135m,RUN]' compare.path=qa.jsonl compare.limit=40
    python -m medlab.compare 'compare.models=[A,B]' compare.path=../shared/data/sft/huatuogpt_o1_cot_en.json \\
        'compare.fields.question=Open-ended Verifiable Question' 'compare.fields.reference=Ground-True Answer'
    python -m medlab.compare ... compare.relevance.model=none compare.llm_judge.model=smollm2_135m

A Hydra app (``medlab.commands.app``) with only its own options, declared with comments in
``conf/commands/compare.yaml``; the work is :func:`medlab.evaluation.compare.compare_models`. Answers are cached
in ``compare.out``/answers (a rerun with the same models, questions and generation settings reuses them).
Settings problems: one ConfigError listing all of them (exit 2), before any model loads.
"""

from __future__ import annotations

import json
import logging
import shlex
import sys
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medlab.commands.app import output_dir, run_command
from medlab.evaluation.compare import compare_models

log = logging.getLogger("medlab")
COMMAND = "compare"


def compare(cfg: DictConfig, run_dir: Any = None) -> dict[str, Any]:
    """The command's body: ``cfg.compare`` holds the settings; returns the summary."""
    settings = OmegaConf.to_container(cfg.compare, resolve=True) if "compare" in cfg else {}
    settings.setdefault("command", None)
    if not settings.get("command"):
        settings["command"] = "python -m medlab.compare " + " ".join(shlex.quote(a) for a in _argv())
    summary = compare_models(settings, out=settings.get("out") or output_dir())
    means = {m: {d: round(v["mean"], 4) for d, v in by.items()} for m, by in summary["stats"]["means"].items()}
    print(json.dumps({"out": str(settings.get("out") or output_dir()), "questions": summary["questions"]["count"],
                      "means": means}, ensure_ascii=False), flush=True)
    return summary


def _argv() -> list[str]:
    return [a for a in sys.argv[1:] if not a.startswith("-")]


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """``python -m medlab.compare *argv`` in-process: the summary (None for ``--cfg``); raises ConfigError /
    DataError for the user's mistakes."""
    return run_command(COMMAND, argv, compare)


def cli() -> None:
    """The console entry: a config/data problem is printed alone on stderr (and in the log), exit code 2."""
    from medlab.commands.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
