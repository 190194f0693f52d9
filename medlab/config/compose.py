"""Compose configs outside the CLI (notebooks, tests) exactly as `python -m medlab` does."""

from __future__ import annotations

import datetime as _dt
import secrets
from pathlib import Path

from omegaconf import DictConfig, open_dict

from medlab.paths import CONF_DIR

CONFIG_PATH = "../conf"  # relative to medlab/__main__.py, for @hydra.main
CONFIG_NAME = "train"


def compose(experiment: str | None = None, overrides: list[str] | None = None, run_dir: str | None = None) -> DictConfig:
    """Compose ``conf/train.yaml`` + ``+experiment=NAME`` + overrides with Hydra's compose API.

    Hydra's runtime (and so ``${hydra:runtime.output_dir}``) does not exist here, so ``paths.run_dir``
    is set to ``run_dir`` or a fresh ``outputs/notebook/<name>/<time>_<uid>`` under the current working
    directory, as the CLI puts ``outputs/runs/...`` under the directory it is started from (a notebook's
    working directory is usually its own folder). A relative ``run_dir`` is resolved against the working
    directory too. The cache (``paths.cache_dir``: tiny models, tokenized data) stays where the CLI keeps
    it: ``$MEDLAB_CACHE_DIR`` or ``.cache/`` in the repository.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides = list(overrides or [])
    if experiment:
        overrides = [f"+experiment={experiment}"] + overrides
    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name=CONFIG_NAME, overrides=overrides)
    if run_dir is None:
        stamp = _dt.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        run_dir = str(Path.cwd() / "outputs" / "notebook" / str(cfg.name) / f"{stamp}_{secrets.token_hex(2)}")
    with open_dict(cfg):
        cfg.paths.run_dir = str(Path(run_dir).resolve())
    return cfg
