"""Helpers the model loaders share (kept apart so backbone.py and vlm.py need not import each other)."""

from __future__ import annotations

from typing import Any


def plain(obj: Any) -> Any:
    """OmegaConf containers -> plain python (configs arrive from Hydra)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            return OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return obj
