"""Deprecated import path: QA evaluation lives in :mod:`medlab.evaluation.qa`. Nothing in ``medlab.rl`` imports
this module (``medlab.rl`` never depends on ``medlab.evaluation``); the names resolve on first use."""

from typing import Any

_NAMES = ("evaluate_qa", "prompt_data_for", "generation_settings", "DATA_OPTIONS", "PROMPT_DATA")


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        from medlab.evaluation import qa

        return getattr(qa, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
