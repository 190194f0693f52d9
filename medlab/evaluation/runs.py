"""Load a trained run (or an untrained backbone) as its objective module, with the checkpoint chosen on purpose.

    cfg, module, choice = load_run("outputs/runs/biencoder/...")                 # the best checkpoint
    cfg, module, choice = load_run("outputs/runs/biencoder/...", checkpoint="latest")
    cfg, module, choice = load_run(None, ["+experiment=biencoder"])              # zero-shot baseline
    loaded = load_module(cfg, run_dir)                                           # a config already composed

The run's ``config_resolved.yaml`` rebuilds the same backbone, adapter and objective; the trainable weights come
from one complete checkpoint (``checkpoints/step-*``) chosen by :func:`select_checkpoint`:

- ``best`` (default): the step with the best monitored metric (``trainer.monitor`` / ``trainer.monitor_mode``).
  The run records it in ``metrics.json`` (``best_step``, ``best/<monitor>``) and in every checkpoint's loop state;
  whichever of the two is newer wins (a run that crashed after its last checkpoint wrote no ``metrics.json``).
  When that step has no checkpoint (``trainer.keep_last_k`` deleted it, or no checkpoint was saved at that step),
  or the run never recorded a best (no finite validation value), the latest checkpoint is used, with a warning
  that says so (``selected_by = "latest_fallback"``).
- ``latest``: the complete checkpoint with the highest step.
- a path: that checkpoint directory (or a ``step-XXXXXXXX`` name under the run's ``checkpoints/``).

Config and checkpoint mistakes (no such run, no complete checkpoint, a checkpoint that does not fit the model)
raise :class:`~medlab.config.ConfigError`, which the commands print alone (exit code 2).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf

from medlab.config import ConfigError
from medlab.engine import checkpoint as ckpt

log = logging.getLogger("medlab")

NO_RUN = (None, "", "none", "null", "None")
CHECKPOINT_CHOICES = ("best", "latest")


@dataclass(frozen=True)
class CheckpointChoice:
    """Which weights a module was loaded with and why.

    ``selected_by``: ``best`` | ``latest`` | ``latest_fallback`` (best asked for, not available: ``note`` says
    why) | ``path`` (a checkpoint named explicitly) | ``untrained`` (no checkpoint: the backbone as built)."""

    path: Path | None
    selected_by: str
    note: str = ""
    step: int | None = None

    def __str__(self) -> str:
        return str(self.path) if self.path is not None else "untrained backbone"

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"checkpoint": str(self.path) if self.path is not None else None,
                               "checkpoint_selected_by": self.selected_by}
        if self.note:
            out["checkpoint_note"] = self.note
        return out


class LoadedRun(NamedTuple):
    """``(cfg, module, checkpoint)``: unpacks like the old ``(cfg, module, source)`` triple."""

    cfg: DictConfig
    module: Any
    checkpoint: CheckpointChoice


def no_run(run_dir: Any) -> bool:
    """True for ``run_dir`` values that mean "no run: the untrained backbone" (None, "", none, null)."""
    return run_dir in NO_RUN


def default_task(cfg: DictConfig) -> str:
    """What ``eval.task`` defaults to: the objective class's declared ``eval_task`` (medlab.contracts.Objective)."""
    from hydra.utils import get_class

    target = cfg.objective.get("_target_")
    try:
        cls = get_class(str(target))
    except Exception as e:  # noqa: BLE001 - reported as a config problem
        raise ConfigError([f"objective._target_={target!r} cannot be imported ({e}); set eval.task"]) from None
    task = getattr(cls, "eval_task", None)
    if task is None:
        raise ConfigError([f"{cls.__name__} declares no eval_task (medlab.contracts.Objective): set eval.task="
                           "retrieval|rerank|qa"])
    return str(task)


# ---------------------------------------------------------------------------------------------- checkpoints
def select_checkpoint(run_dir: str | Path, which: str | None = "best", *, monitor: str | None = None,
                      monitor_mode: str | None = None) -> CheckpointChoice:
    """The checkpoint of ``run_dir`` that ``which`` (``best`` | ``latest`` | a path) names; see the module doc.

    ``monitor`` / ``monitor_mode`` (the run's ``trainer.monitor`` / ``trainer.monitor_mode``) only word the
    messages (``metrics.json`` names the monitor when it exists): the best step itself is what the run recorded
    while it trained, so overriding ``trainer.monitor`` here does not change it."""
    run_dir = Path(run_dir)
    root = run_dir / ckpt.CHECKPOINTS_DIR
    which = str(which) if which not in (None, "") else "best"
    if which not in CHECKPOINT_CHOICES:
        return _explicit_checkpoint(which, root)
    checkpoints = ckpt.list_checkpoints(root)
    if not checkpoints:
        raise ConfigError([f"{run_dir}: no complete checkpoint under checkpoints/ to load (the run saved none, "
                           "or every save was interrupted)"])
    latest = checkpoints[-1]
    if which == "latest":
        return CheckpointChoice(latest, "latest", step=ckpt.checkpoint_step(latest))
    record = _best_record(run_dir, latest)
    monitor = record.get("monitor") or monitor or "the monitored metric"  # what the run monitored while training
    mode = f" ({monitor_mode})" if monitor_mode else ""
    best_step, value = record.get("best_step"), record.get("best_value")
    if best_step is None:
        note = (f"the run recorded no best {monitor}{mode} (no validation gave a finite value): using the latest "
                f"checkpoint, {latest.name}")
        return CheckpointChoice(latest, "latest_fallback", note, ckpt.checkpoint_step(latest))
    by_step = {ckpt.checkpoint_step(p): p for p in checkpoints}
    shown = f"{value:.6g}" if isinstance(value, (int, float)) and math.isfinite(value) else str(value)
    if int(best_step) in by_step:
        note = f"best {monitor}{mode} = {shown} at step {best_step}"
        return CheckpointChoice(by_step[int(best_step)], "best", note, int(best_step))
    note = (f"the best {monitor}{mode} = {shown} was at step {best_step}, which has no checkpoint (deleted by "
            f"trainer.keep_last_k, or none saved at that step: trainer.ckpt_every_n_steps): using the latest "
            f"checkpoint, {latest.name}")
    return CheckpointChoice(latest, "latest_fallback", note, ckpt.checkpoint_step(latest))


def _explicit_checkpoint(which: str, root: Path) -> CheckpointChoice:
    path = Path(which).expanduser()
    if not path.exists() and (root / which).exists():
        path = root / which  # eval.checkpoint=step-00000020
    reason = None if path.is_dir() else "the directory does not exist"
    if reason is None and not ckpt.is_complete(path):
        reason = "not a complete medlab checkpoint (no valid COMPLETE marker)"
    if reason is not None:
        raise ConfigError([f"checkpoint {which}: {reason}; use best, latest or a checkpoints/step-XXXXXXXX "
                           "directory"])
    return CheckpointChoice(path, "path", step=ckpt.checkpoint_step(path))


def _best_record(run_dir: Path, latest: Path) -> dict[str, Any]:
    """``{best_step, best_value, monitor}`` from metrics.json or the latest checkpoint's loop state, the newer."""
    record: dict[str, Any] = {}
    metrics_path = run_dir / "metrics.json"
    metrics_step = -1
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
        except (OSError, ValueError) as e:
            log.warning("%s is unreadable (%s): the best step comes from the checkpoints", metrics_path, e)
        else:
            if "best_step" in metrics:
                monitor = metrics.get("monitor")
                record = {"best_step": metrics.get("best_step"), "monitor": monitor,
                          "best_value": metrics.get(f"best/{monitor}")}
                metrics_step = int(metrics.get("global_step") or 0)
    latest_step = ckpt.checkpoint_step(latest) or 0
    if latest_step > metrics_step:  # no metrics.json, or one from an earlier attempt of a resumed run
        try:
            loop = ckpt.read_loop_state(latest)
        except ckpt.CheckpointError as e:
            log.warning("%s", e)
        else:
            record = {**record, "best_step": loop.get("best_step"), "best_value": loop.get("best_metric")}
    return record


# ---------------------------------------------------------------------------------------------- configs and modules
def load_config(run_dir: str | None, overrides: Sequence[str] = ()) -> DictConfig:
    """A run's ``config_resolved.yaml`` + plain ``key=value`` overrides, or (``run_dir`` none) the training config
    composed with ``overrides`` (``+experiment=NAME``, groups, keys) as ``python -m medlab`` would."""
    overrides = list(overrides)
    if not no_run(run_dir):
        path = Path(str(run_dir)).expanduser() / "config_resolved.yaml"
        if not path.exists():
            raise ConfigError([f"{path} not found: run_dir must be a medlab run directory (or none)"])
        cfg = OmegaConf.load(path)
        plain = [o for o in overrides if not o.startswith(("+", "~")) and "=" in o]
        if len(plain) != len(overrides):
            raise ConfigError([f"with a run_dir only key=value overrides apply, got {overrides}"])
        if plain:  # parsed as Hydra parses them; a key the run's config does not have is refused
            from hydra.core.override_parser.overrides_parser import OverridesParser

            OmegaConf.set_struct(cfg, True)
            unknown = []
            for o in OverridesParser.create().parse_overrides(plain):
                try:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
                except Exception:  # noqa: BLE001 - omegaconf's key errors
                    unknown.append(f"{o.key_or_group}: not a key of {path}")
            OmegaConf.set_struct(cfg, False)
            if unknown:
                raise ConfigError(unknown)
        return cfg
    from medlab.config.compose import compose

    return compose(overrides=overrides)


def choose_checkpoint(cfg: DictConfig, run_dir: str | Path | None, checkpoint: str | None = "best") -> CheckpointChoice:
    """:func:`select_checkpoint` with the run's ``trainer.monitor`` / ``monitor_mode``; ``run_dir`` none: no
    checkpoint (the untrained backbone) unless ``checkpoint`` is a path. A fallback is logged as a warning."""
    trainer = cfg.get("trainer") or {}
    if not no_run(run_dir):
        choice = select_checkpoint(run_dir, checkpoint, monitor=trainer.get("monitor"),
                                   monitor_mode=trainer.get("monitor_mode"))
    elif checkpoint not in (None, "", *CHECKPOINT_CHOICES):
        choice = _explicit_checkpoint(str(checkpoint), Path("checkpoints"))
    else:
        choice = CheckpointChoice(None, "untrained")
    if choice.selected_by == "latest_fallback":
        log.warning("checkpoint: %s", choice.note)
    return choice


def load_module(cfg: DictConfig, run_dir: str | Path | None = None, *,
                checkpoint: str | CheckpointChoice | None = "best",
                device: str | torch.device | None = None) -> LoadedRun:
    """Build ``cfg``'s backbone + adapter + objective and load a checkpoint of ``run_dir`` into it (eval mode).

    ``checkpoint``: ``best`` | ``latest`` | a path (see :func:`choose_checkpoint`: chosen, and a missing one
    reported, before any model is built) or a :class:`CheckpointChoice` already made."""
    from hydra.utils import instantiate

    from medlab.models.build import build_model

    choice = checkpoint if isinstance(checkpoint, CheckpointChoice) else choose_checkpoint(cfg, run_dir, checkpoint)
    model, tokenizer, _ = build_model(cfg)
    module = instantiate(cfg.objective, model=model, tokenizer=tokenizer)
    if choice.path is not None:
        try:
            ckpt.load_trainable(module, choice.path)
        except ckpt.CheckpointError as e:
            raise ConfigError([f"{e} (config overrides must keep the run's model and adapter)"]) from None
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if not getattr(model, "is_loaded_in_4bit", False):  # bitsandbytes places 4-bit weights itself
        module.to(device)
    module.eval()
    how = {"best": choice.note, "latest": "the latest checkpoint", "path": "named explicitly",
           "latest_fallback": "the best was not available", "untrained": "no checkpoint"}.get(choice.selected_by, "")
    log.info("loaded %s (%s) from %s [%s: %s]", cfg.model.get("name"), type(module).__name__, choice,
             choice.selected_by, how)
    return LoadedRun(cfg, module, choice)


def load_run(run_dir: str | None, overrides: Sequence[str] | None = None, *, checkpoint: str | None = "best",
             device: str | torch.device | None = None) -> LoadedRun:
    """``(cfg, module_in_eval_mode, checkpoint_choice)``; ``run_dir`` none = the untrained backbone of the
    training config composed with ``overrides``. ``str(checkpoint_choice)`` is the weights' source."""
    run_dir = None if no_run(run_dir) else run_dir
    cfg = load_config(run_dir, list(overrides or []))
    return load_module(cfg, run_dir, checkpoint=checkpoint, device=device)


def batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for i in range(0, len(items), size):
        yield items[i : i + size]
