"""Load a trained run (or an untrained backbone) as its objective module, for evaluation and mining.

    cfg, module, source = load_run("outputs/runs/biencoder/...")       # trained weights
    cfg, module, source = load_run(None, ["+experiment=biencoder"])    # zero-shot baseline

The run's ``config_resolved.yaml`` rebuilds the same backbone, adapter and objective; the trainable
weights come from the latest complete checkpoint (``checkpoints/step-*``; the best one is not tracked
separately, so train with early stopping or pick ``checkpoint=PATH``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("medlab")


def split_args(argv: list[str], own: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """``key=value`` args whose key starts with one of ``own`` -> dict; the rest are config overrides."""
    mine, rest = {}, []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key.split(".")[0] in own:
            mine[key] = value
        else:
            rest.append(arg)
    return mine, rest


def load_config(run_dir: str | None, overrides: list[str]) -> DictConfig:
    if run_dir:
        path = Path(run_dir).expanduser() / "config_resolved.yaml"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: run_dir must be a medlab run directory (or none)")
        cfg = OmegaConf.load(path)
        plain = [o for o in overrides if not o.startswith(("+", "~")) and "=" in o]
        if len(plain) != len(overrides):
            raise ValueError(f"with a run_dir only key=value overrides apply, got {overrides}")
        return OmegaConf.merge(cfg, OmegaConf.from_dotlist(plain))
    from medlab.api import compose

    return compose(overrides=overrides)


def load_run(run_dir: str | None, overrides: list[str] | None = None, *, checkpoint: str | None = None,
             device: str | torch.device | None = None) -> tuple[DictConfig, Any, str]:
    """``(cfg, objective_module_in_eval_mode, weights_source)``; ``run_dir=None`` = untrained backbone."""
    from hydra.utils import instantiate

    from medlab.runner import build_model

    run_dir = None if run_dir in (None, "", "none", "null") else run_dir
    cfg = load_config(run_dir, list(overrides or []))
    model, tokenizer, _ = build_model(cfg)
    module = instantiate(cfg.objective, model=model, tokenizer=tokenizer)
    source = "untrained backbone"
    ckpt_path = Path(checkpoint) if checkpoint else None
    if run_dir and ckpt_path is None:
        from medlab.engine.checkpoint import latest_checkpoint

        ckpt_path = latest_checkpoint(Path(run_dir) / "checkpoints")
        if ckpt_path is None:
            raise FileNotFoundError(f"{run_dir}: no complete checkpoint under checkpoints/ to evaluate")
    if ckpt_path is not None:
        from safetensors.torch import load_file

        from medlab.engine.checkpoint import _apply_trainable

        _apply_trainable(module, load_file(str(ckpt_path / "model.safetensors")), ckpt_path)
        source = str(ckpt_path)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not getattr(model, "is_loaded_in_4bit", False):
        module.to(device)
    module.eval()
    log.info("loaded %s (%s) from %s", cfg.model.get("name"), type(module).__name__, source)
    return cfg, module, source


def batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]
