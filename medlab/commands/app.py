"""The commands that work on a run (``evaluate``, ``mine``) as Hydra apps on the training config groups.

``python -m medlab.<command> run_dir=RUN|none [<command>.*=...] [overrides]`` composes one of two configs:

- ``run_dir=none``: ``conf/<command>.yaml`` = the training config ``train`` (so every group, ``+experiment=NAME``
  and any training override work as for ``python -m medlab``) + ``conf/commands/<command>.yaml`` (the command's
  options, its log file and ``--help``);
- ``run_dir=RUN``: the run's ``config_resolved.yaml`` (registered in Hydra's ConfigStore as ``medlab_run``) +
  ``conf/commands/<command>.yaml``; plain ``key=value`` overrides apply on top of the run's config (a key the run
  does not have is refused by Hydra), group choices and ``+experiment`` do not (ConfigError: the run fixed them).

So ``--cfg job``, ``--help``, overrides, ``+experiment=NAME`` and typo detection work as in training. The Hydra
output dir is the run dir (``RUN/<command>.log``) or ``outputs/<command>/<name>/<time>_<id>`` for ``run_dir=none``,
with no ``.hydra/`` copy (``hydra.output_subdir: null``), so evaluating never touches the run's own ``.hydra/``.

Errors: a ``ConfigError`` / ``DataError`` raised by the command (or here, before Hydra: a run dir that does not
exist) is re-raised after Hydra returns, so ``main(argv)`` raises it in-process and ``cli()`` prints it alone with
exit code 2 (``medlab.commands.cli``), also into the command's log file.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import DictConfig, OmegaConf

from medlab.paths import CONF_DIR
from medlab.config import ConfigError
from medlab.evaluation.runs import no_run

T = TypeVar("T")
RUN_CONFIG = "medlab_run"  # the ConfigStore name of the run's config_resolved.yaml
_ABSENT = object()


def overrides_of(argv: Sequence[str]) -> list[str]:
    """The config overrides of a command line (Hydra's flags such as ``--cfg job`` left out)."""
    from hydra._internal.utils import get_args_parser

    return list(get_args_parser().parse_args(list(argv)).overrides)


def run_dir_arg(argv: Sequence[str]) -> Any:
    """The ``run_dir=`` value of ``argv`` (the last one), None for none/null, or ``_ABSENT`` when not given."""
    value: Any = _ABSENT
    for arg in argv:
        if arg.startswith("run_dir="):
            raw = arg.split("=", 1)[1].strip().strip("'\"")
            value = None if no_run(raw) else raw
    return value


def _config_groups() -> set[str]:
    return {p.name for p in CONF_DIR.iterdir() if p.is_dir()}


def _run_mode_problems(command: str, run_dir: str, argv: Sequence[str]) -> list[str]:
    """Overrides that cannot apply on top of a run's resolved config: group choices, +experiment, ~deletions."""
    groups, refused = _config_groups(), []
    for arg in argv:
        if "=" not in arg and not arg.startswith("~"):
            continue
        key = arg.split("=", 1)[0]
        bare = key.lstrip("+~")
        head = bare.split("@", 1)[0].split("/", 1)[0].split(".", 1)[0]
        if head == "hydra" or (key.startswith("+") and head in (command, "eval", "mine") and "." in bare):
            continue  # Hydra's own settings; +eval.NAME=VALUE adds a data option
        if key.startswith(("+", "~")) or (bare == head and head in groups):
            refused.append(arg)
    if not refused:
        return []
    return [f"run_dir={run_dir}: the run's config_resolved.yaml is the config, so only key=value overrides apply "
            f"on top of it (e.g. model.path=DIR data.max_length=256), not config groups, +experiment or ~deletions: "
            f"{' '.join(refused)} (for an untrained model use run_dir=none with them)"]


def prepare(command: str, argv: Sequence[str]) -> tuple[str, Any]:
    """``(config_name, run_dir)`` for ``argv``; in run mode, registers the run's config in Hydra's ConfigStore.
    Raises ConfigError for a run dir that is not a run or an override that cannot apply to it."""
    argv = overrides_of(argv)
    run_dir = run_dir_arg(argv)
    if run_dir is _ABSENT or run_dir is None:
        return command, run_dir
    path = Path(run_dir).expanduser()
    resolved = path / "config_resolved.yaml"
    if not path.is_dir():
        raise ConfigError([f"run_dir={run_dir}: no such directory (a medlab run directory such as "
                           f"outputs/runs/<name>/<time>_<id>, or run_dir=none for the untrained backbone)"])
    if not resolved.is_file():
        raise ConfigError([f"run_dir={run_dir}: no config_resolved.yaml there, so it is not a medlab run directory "
                           "(or its run failed before it started)"])
    problems = _run_mode_problems(command, run_dir, argv)
    if problems:
        raise ConfigError(problems)
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name=RUN_CONFIG, node=OmegaConf.load(resolved))
    name = f"{command}_on_run"
    cs.store(name=name, node={"defaults": [RUN_CONFIG, f"commands/{command}", "_self_"],
                              "hydra": {"run": {"dir": str(path.resolve())}}})
    return name, run_dir


def _clear_hydra() -> None:
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()


def run_command(command: str, argv: Sequence[str] | None, task: Callable[[DictConfig, Any], T]) -> T | None:
    """Run ``task(cfg, run_dir)`` as the Hydra app ``python -m medlab.<command> *argv`` and return its result
    (None for ``--cfg``/``--info``; ``--help`` exits 0). ``run_dir``: the run directory, None for none, or
    ``_ABSENT`` (``task`` reports that run_dir is required). The task's exceptions are re-raised here."""
    import hydra

    from medlab.commands.cli import log_error_to_files

    argv = list(sys.argv[1:] if argv is None else argv)
    config_name, run_dir = prepare(command, argv)
    outcome: dict[str, Any] = {}

    def task_function(cfg: DictConfig) -> None:
        try:
            outcome["result"] = task(cfg, run_dir)
        except BaseException as e:  # noqa: BLE001 - re-raised outside Hydra (no "Error executing job" wrapper)
            if isinstance(e, Exception):
                log_error_to_files(e)  # into <dir>/<command>.log while Hydra's job log is open
            outcome["error"] = e

    app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name=config_name)(task_function)
    saved_argv, root = sys.argv, logging.getLogger()
    saved_logging = (list(root.handlers), root.level)
    sys.argv = [f"medlab.{command}", *argv]
    _clear_hydra()
    try:
        app()
    except SystemExit as e:
        from medlab.commands.cli import refused_override_error

        # Hydra refused the command line: name every key the config lacks (not only Hydra's first), with hints
        compose = lambda ovs: _compose(config_name, ovs)  # noqa: E731
        error = refused_override_error(overrides_of(argv), compose) if e.code == 1 else None
        if error is None:
            raise
        raise error from None
    finally:
        sys.argv = saved_argv
        _restore_logging(*saved_logging)
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _restore_logging(handlers: list[logging.Handler], level: int) -> None:
    """Close the handlers Hydra's job logging added (its <dir>/<command>.log) and put the caller's back, so a
    notebook or test that runs a command keeps its own logging and later records stay out of the run's log."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    for handler in handlers:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(level)


def compose_command(command: str, argv: Sequence[str], *, with_hydra: bool = True) -> DictConfig:
    """The config ``python -m medlab.<command> *argv`` runs with (what ``--cfg all`` prints), for tests and
    notebooks; ``--flags`` in ``argv`` are ignored."""
    config_name, _ = prepare(command, argv)
    return _compose(config_name, overrides_of(argv), with_hydra=with_hydra, job_name=command)


def _compose(config_name: str, overrides: list[str], *, with_hydra: bool = False,
             job_name: str | None = None) -> DictConfig:
    from hydra import compose, initialize_config_dir

    _clear_hydra()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name=job_name):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=with_hydra)


def output_dir() -> Path:
    """The Hydra output dir of the running command (the run dir, or outputs/<command>/...)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def require_run_dir(command: str, run_dir: Any) -> str | None:
    """The run dir, or ConfigError when the command line did not say ``run_dir=RUN`` or ``run_dir=none``."""
    if run_dir is _ABSENT:
        raise ConfigError([f"run_dir is required: python -m medlab.{command} run_dir=outputs/runs/<name>/<run> ... "
                           "(or run_dir=none +experiment=NAME ... for the untrained backbone)"])
    return run_dir
