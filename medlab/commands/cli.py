"""How the command-line entry points report a mistake the user can fix (a config or data problem).

``python -m medlab``, ``python -m medlab.evaluate`` and ``python -m medlab.mine`` print a
``ConfigError`` / ``DataError`` message alone on stderr (no traceback, no Hydra "Error executing job"
line), write it to the job's log when Hydra opened one (``train.log``; ``evaluate.log`` / ``mine.log``),
and exit with ``USER_ERROR_EXIT``.
``HYDRA_FULL_ERROR=1`` or ``MEDLAB_DEBUG=1`` add the full traceback. Any other exception is a bug and
keeps its traceback.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

USER_ERROR_EXIT = 2
DEBUG_ENV = ("HYDRA_FULL_ERROR", "MEDLAB_DEBUG")

log = logging.getLogger("medlab")
T = TypeVar("T")


def user_error_types() -> tuple[type[BaseException], ...]:
    from medlab.config import ConfigError
    from medlab.data.errors import DataError

    return (ConfigError, DataError)


def debug_enabled() -> bool:
    return any(os.environ.get(name, "").strip().lower() in ("1", "true", "yes") for name in DEBUG_ENV)


def _log_to_files(record: logging.LogRecord) -> None:
    """Hand ``record`` to the file handlers (Hydra's ``<run dir>/train.log``) only: the console gets the
    plain message on stderr instead of a second, prefixed copy on stdout."""
    logger: logging.Logger | None = log
    while logger is not None:
        for handler in logger.handlers:
            if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
                handler.handle(record)
        logger = logger.parent if logger.propagate else None


def log_error_to_files(error: BaseException, with_traceback: bool | None = None) -> None:
    """Write ``error`` to the log files only (Hydra's job log), with its traceback when ``with_traceback`` (default:
    a bug, or a user error under ``HYDRA_FULL_ERROR`` / ``MEDLAB_DEBUG``)."""
    if with_traceback is None:
        with_traceback = debug_enabled() or not isinstance(error, user_error_types())
    exc_info = (type(error), error, error.__traceback__) if with_traceback else None
    _log_to_files(log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (error,), exc_info))


def report_user_error(error: BaseException) -> None:
    """Print ``error`` for the user (stderr), log it to the run's log file, flush."""
    debug = debug_enabled()
    log_error_to_files(error, debug)
    if debug:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    else:
        print(str(error), file=sys.stderr)
    sys.stderr.flush()


@contextmanager
def user_errors_exit() -> Iterator[None]:
    """Turn a ``ConfigError`` / ``DataError`` raised inside into ``report_user_error`` + ``sys.exit(2)``."""
    try:
        yield
    except user_error_types() as e:
        report_user_error(e)
        sys.exit(USER_ERROR_EXIT)


def refused_override_error(overrides: list[str], compose: Callable[[list[str]], object]):
    """After Hydra refused the command line: a ``ConfigError`` naming every override key the config lacks, with
    the closest real key (``medlab.config.overrides``), or None when no key is missing (Hydra's message stands)."""
    from medlab.config import ConfigError
    from medlab.config.overrides import override_key_problems

    problems = override_key_problems(overrides, compose)
    return ConfigError(problems) if problems else None


@contextmanager
def explain_refused_overrides(overrides: list[str], compose: Callable[[list[str]], object]) -> Iterator[None]:
    """When Hydra refuses the command line (``SystemExit(1)`` after its one-line message), report
    :func:`refused_override_error` and exit with ``USER_ERROR_EXIT``; any other failure passes through unchanged."""
    try:
        yield
    except SystemExit as e:
        error = refused_override_error(overrides, compose) if e.code == 1 else None
        if error is None:
            raise
        report_user_error(error)
        sys.exit(USER_ERROR_EXIT)


def run_cli(main: Callable[[], T]) -> T:
    """Call an entry point's ``main()`` under ``user_errors_exit`` (the commands of ``medlab.commands`` re-raise
    their errors after Hydra returns, so they land here)."""
    with user_errors_exit():
        return main()
