"""Reject settings that no part of medlab reads: a typo'd key added with ``+`` must not be silently ignored.

Hydra refuses ``trainer.max_step=3`` (not in the config) and suggests ``+trainer.max_step=3``, which it then
accepts: the run would train the default 200 steps. ``unknown_keys(cfg)`` names every key of the known
groups that nothing reads, with the closest valid key::

    trainer.max_step is not a setting medlab reads (did you mean trainer.max_steps?)

Which keys are valid:

- groups built by ``hydra.utils.instantiate`` (``model``, ``adapter``, ``data``, ``objective``): the parameters
  of the ``_target_`` callable's signature. An objective's ``**kwargs`` go to ``OptimSettings``: its fields are
  valid too. A target that takes ``**kwargs`` also accepts the keys that the group's config files with the same
  ``_target_`` define; a target of the user's own with ``**kwargs`` and no config file here accepts anything.
- ``trainer`` and ``strategy`` (plain settings read by ``commands/train.py``): the keys their config files define
  (``conf/trainer/*.yaml``, ``conf/strategy/*.yaml``) plus ``CODE_KEYS``, keys the code reads with
  ``.get()`` that no file defines (``tests/test_config_keys.py`` checks that list against the code).
- ``export`` (root ``train.yaml``) and the nested ``trainer.early_stopping``: the keys the files define.

Only the top level of each group is checked (``data.fields``, ``objective.rewards``, ``strategy.options`` and
the like are free-form mappings). The function reads key names only: nothing is resolved or instantiated.
"""

from __future__ import annotations

import difflib
import inspect
from functools import lru_cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

HYDRA_KEYS = frozenset({"_target_", "_partial_", "_recursive_", "_convert_", "_args_"})
TARGET_GROUPS = ("model", "adapter", "data", "objective")
PLAIN_GROUPS = ("trainer", "strategy")
# Keys the code reads with .get(default) that no config file defines (none today: every key read is in a file).
CODE_KEYS: dict[str, frozenset[str]] = {"trainer": frozenset(), "strategy": frozenset()}
# Parameters the runner passes itself (``instantiate(cfg.objective, model=..., tokenizer=...)``): not settings.
RUNTIME_ARGS: dict[str, frozenset[str]] = {"objective": frozenset({"model", "tokenizer"}),
                                           "model": frozenset({"quantization_config"})}
# Nested mappings with a fixed set of keys (those the group's files give them).
CLOSED_NESTED = (("trainer", "early_stopping"),)


def unknown_keys(cfg: DictConfig, conf_dir: str | Path | None = None) -> list[str]:
    """One problem per key of a known group that no medlab component reads (empty list: all keys are read)."""
    conf_dir = Path(conf_dir) if conf_dir is not None else _default_conf_dir()
    problems = []
    for group in (*TARGET_GROUPS, *PLAIN_GROUPS):
        node = _node(cfg, group)
        if node is None:
            continue
        if group in TARGET_GROUPS:
            valid = _target_keys(conf_dir, group, node)
        else:  # no config file for the group (a config dir of the user's own): nothing to go by
            valid = _file_keys(conf_dir, group) and _file_keys(conf_dir, group) | CODE_KEYS[group]
        if valid:
            problems += _problems(group, _keys(node), valid)
    for group, key in CLOSED_NESTED:
        node = _node(cfg, f"{group}.{key}")
        valid = _nested_file_keys(conf_dir, group, key)
        if node is not None and valid:
            problems += _problems(f"{group}.{key}", _keys(node), valid)
    export, valid = _node(cfg, "export"), _root_keys(conf_dir, "export")
    if export is not None and valid:
        problems += _problems("export", _keys(export), valid)
    return problems


def _problems(prefix: str, keys: list[str], valid: frozenset[str]) -> list[str]:
    out = []
    for key in keys:
        if key in valid or key in HYDRA_KEYS:
            continue
        shown = sorted(valid - HYDRA_KEYS)
        close = difflib.get_close_matches(key, shown, n=1, cutoff=0.6)
        hint = f"did you mean {prefix}.{close[0]}?" if close else f"{prefix} settings: {', '.join(shown)}"
        out.append(f"{prefix}.{key} is not a setting medlab reads ({hint})")
    return out


def _node(cfg: DictConfig, key: str) -> DictConfig | None:
    try:
        node = OmegaConf.select(cfg, key, default=None, throw_on_missing=False, throw_on_resolution_failure=False)
    except Exception:
        return None
    return node if isinstance(node, DictConfig) else None


def _keys(node: DictConfig) -> list[str]:
    return [str(k) for k in node.keys()]


def _default_conf_dir() -> Path:
    from medlab.paths import CONF_DIR

    return CONF_DIR


# ------------------------------------------------------------------------------------------- targets
def _target_keys(conf_dir: Path, group: str, node: DictConfig) -> frozenset[str] | None:
    """Parameters of the node's ``_target_``; None when they cannot be known (checking is then skipped)."""
    target = node.get("_target_") if "_target_" in node else None
    if not isinstance(target, str):
        return None
    params = _signature_keys(target)
    if params is None:
        return None  # not importable: validate_config reports the target itself
    names, var_keyword = params
    names = names - RUNTIME_ARGS.get(group, frozenset())
    if not var_keyword:
        return names
    if group == "objective":  # objectives pass **optim to OptimSettings (the optimizer/schedule settings)
        import dataclasses

        from medlab.objectives.common import OptimSettings

        names = names | {f.name for f in dataclasses.fields(OptimSettings)}
    siblings = _same_target_file_keys(conf_dir, group, target)
    return names | siblings if siblings else None


@lru_cache(maxsize=64)
def _signature_keys(target: str) -> tuple[frozenset[str], bool] | None:
    from hydra.utils import get_object

    try:
        fn = get_object(target)
        signature = inspect.signature(fn)
    except Exception:
        return None
    kinds = {p.name: p.kind for p in signature.parameters.values()}
    names = frozenset(n for n, k in kinds.items() if k not in (inspect.Parameter.VAR_POSITIONAL,
                                                                 inspect.Parameter.VAR_KEYWORD))
    return names, inspect.Parameter.VAR_KEYWORD in kinds.values()


# ------------------------------------------------------------------------------------------- config files
def _file_keys(conf_dir: Path, group: str) -> frozenset[str]:
    """Every top-level key any config file of ``group`` defines."""
    return frozenset(k for option in _options(conf_dir, group) for k in _option_config(conf_dir, group, option))


def _same_target_file_keys(conf_dir: Path, group: str, target: str) -> frozenset[str]:
    keys: set[str] = set()
    for option in _options(conf_dir, group):
        data = _option_config(conf_dir, group, option)
        if data.get("_target_") == target:
            keys |= set(data)
    return frozenset(keys)


def _nested_file_keys(conf_dir: Path, group: str, key: str) -> frozenset[str]:
    keys: set[str] = set()
    for option in _options(conf_dir, group):
        value = _option_config(conf_dir, group, option).get(key)
        if isinstance(value, dict):
            keys |= set(value)
    return frozenset(keys)


def _root_keys(conf_dir: Path, key: str) -> frozenset[str]:
    value = _load(conf_dir / "train.yaml").get(key)
    return frozenset(value) if isinstance(value, dict) else frozenset()


def _options(conf_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


@lru_cache(maxsize=256)
def _option_config(conf_dir: Path, group: str, option: str) -> dict[str, Any]:
    """The top level of ``conf/<group>/<option>.yaml`` with the same-group defaults it extends merged in
    (``adapter/qlora`` = ``lora`` + its own keys); ``defaults`` itself dropped."""
    data = _load(conf_dir / group / f"{option}.yaml")
    merged: dict[str, Any] = {}
    for entry in data.pop("defaults", None) or []:
        if isinstance(entry, str) and entry != "_self_" and (conf_dir / group / f"{entry}.yaml").exists():
            merged.update(_option_config(conf_dir, group, entry))
    merged.update(data)
    return merged


def _load(path: Path) -> dict[str, Any]:
    try:
        data = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}
