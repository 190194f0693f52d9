"""Deprecated import path: run loading lives in :mod:`medlab.evaluation.runs` (``load_run``, ``load_config``,
``load_module``, ``select_checkpoint``, ``batches``)."""

from medlab.evaluation.runs import batches, load_config, load_module, load_run, select_checkpoint  # noqa: F401
