"""medlab: train medical language models with one Hydra config system and one Lightning Fabric loop.

Notebook use::

    import medlab
    cfg = medlab.compose("sft_lora", overrides=["adapter.r=8"])
    metrics = medlab.run(cfg)
"""

from __future__ import annotations

import secrets

from omegaconf import OmegaConf

from medlab.paths import ASSETS_DIR, CONF_DIR, PACKAGE_DIR, ROOT_DIR


def _register_resolvers() -> None:
    # Resolvers make config paths independent of the working directory.
    if not OmegaConf.has_resolver("medlab_root"):
        OmegaConf.register_new_resolver("medlab_root", lambda: str(ROOT_DIR))
    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", lambda rel: str(ASSETS_DIR / rel))
    if not OmegaConf.has_resolver("objective_data_task"):
        # Retrieval data's `task` follows the objective's declared `data_task` (bi_encoder | cross_encoder).
        OmegaConf.register_new_resolver("objective_data_task", _objective_data_task)
    if not OmegaConf.has_resolver("medlab_uid"):
        # Cached, and Hydra copies the resolver cache into every multirun job, so one launch = one suffix.
        OmegaConf.register_new_resolver("medlab_uid", lambda: secrets.token_hex(2), use_cache=True)


def _objective_data_task(target: str) -> str | None:
    from hydra.utils import get_class

    try:
        return getattr(get_class(str(target)), "data_task", None)
    except Exception:  # not importable: config validation names the objective target
        return None


_register_resolvers()


def compose(experiment: str | None = None, overrides: list[str] | None = None, run_dir: str | None = None):
    """Compose the training config like the CLI does (see `medlab.config.compose.compose`)."""
    from medlab.config.compose import compose as _compose

    return _compose(experiment, overrides, run_dir)


def run(cfg, callbacks=None):
    """Validate, build, train, evaluate and export one run (see `medlab.commands.train.run`).

    Returns the monitored validation metric as a float that also carries ``.metrics``, ``.run_dir``
    and ``.history``.
    """
    from medlab.commands.train import run as _run

    return _run(cfg, callbacks=callbacks)


__all__ = ["compose", "run", "ROOT_DIR", "CONF_DIR", "ASSETS_DIR", "PACKAGE_DIR"]
