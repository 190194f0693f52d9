"""``python -m medlab.prepare``: clean, deduplicate and split a data file into the canonical rows of a task.

    python -m medlab.prepare prepare.path=raw.csv prepare.out=data/sft.jsonl prepare.task=sft
    python -m medlab.prepare prepare.path=[a.jsonl,b.json] prepare.out=qa.parquet prepare.task=qa prepare.val_size=0.05
    python -m medlab.prepare ... 'prepare.steps=[nfkc,whitespace,near_dedup]' prepare.threshold=0.85
    python -m medlab.prepare ... prepare.dedup_mode=split_only prepare.val_size=200   # keep duplicates, one side
    python -m medlab.prepare prepare.path=pairs.csv prepare.out=pref.jsonl prepare.task=preference   # data=preference
    python -m medlab.prepare prepare.path=hf://org/name prepare.hf_split=train prepare.out=o.jsonl prepare.task=sft

A Hydra app (``medlab.commands.app``); the options are declared, with comments, in ``conf/commands/prepare.yaml``.
The output is read by the matching ``data=`` config as it is (``data.path=OUT``); ``prepare_report.json`` beside it
holds rows in / out, removed and changed per step and up to 3 removed examples per step (personal data masked;
the ``pii`` step reports counts only). Settings problems: one ConfigError listing all of them (exit 2).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medlab.commands.app import run_command
from medlab.config import ConfigError
from medlab.data.prepare import prepare as run_prepare
from medlab.data.prepare import problems, table

log = logging.getLogger("medlab")
COMMAND = "prepare"


def prepare(cfg: DictConfig, run_dir: Any = None) -> dict[str, Any]:
    """The command's body: ``cfg.prepare`` holds the settings; returns the report."""
    settings = OmegaConf.to_container(cfg.prepare, resolve=True) if "prepare" in cfg else {}
    found = problems(settings)
    if found:
        raise ConfigError(found)
    result = run_prepare(settings)
    print(table(result), flush=True)
    log.info("prepared %d rows -> %s (report %s)", result["rows_out"], result["out"], result["report"])
    return result


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """``python -m medlab.prepare *argv`` in-process: the report (None for ``--cfg``); raises ConfigError /
    DataError for the user's mistakes."""
    return run_command(COMMAND, argv, prepare)


def cli() -> None:
    """The console entry: a config/data problem is printed alone on stderr (and in the log), exit code 2."""
    from medlab.commands.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
