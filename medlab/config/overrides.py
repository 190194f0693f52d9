"""Explain command-line overrides that name a key the config does not have (a typo), all at once.

Hydra answers ``trainer.max_stepz=3`` with ``Key 'max_stepz' is not in struct`` (the first such key only, with no
hint of the right one). :func:`override_key_problems` finds every plain ``key=value`` override whose key is absent
from the config the other overrides compose, and names the closest real key::

    trainer.max_stepz=3: no such setting (did you mean trainer.max_steps?)
    compare.limitt=3: no such setting (did you mean compare.limit?)

The entry points call it only after Hydra has refused the command line (``medlab.commands.cli``), so a valid
command line pays nothing. Group choices (``model=minilm``), additions (``+key=``, ``++key=``), deletions
(``~key``) and Hydra's own settings (``hydra.*``) are left to Hydra.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

MAX_LISTED = 30  # keys listed when none is close


def _is_group(key: str, conf_dir: Path) -> bool:
    return "/" in key or (conf_dir / key).is_dir()


def plain_key_overrides(overrides: Sequence[str], conf_dir: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Split ``overrides`` into ``[(key, text)]`` of plain ``key=value`` changes of config keys, and the rest
    (group choices, +/++/~ overrides, ``hydra.*``). Unparsable overrides go to the rest (Hydra reports them)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parser = OverridesParser.create()
    plain, rest = [], []
    for text in overrides:
        try:
            (override,) = parser.parse_overrides([text])
        except Exception:  # noqa: BLE001 - a syntax error is Hydra's to report
            rest.append(text)
            continue
        key = override.key_or_group
        if (override.type == OverrideType.CHANGE and override.package is None and not _is_group(key, conf_dir)
                and key.split(".", 1)[0] != "hydra"):
            plain.append((key, text))
        else:
            rest.append(text)
    return plain, rest


def missing_key_problem(cfg: DictConfig, key: str, text: str) -> str | None:
    """A message for override ``text`` when ``key`` is absent from ``cfg`` under a closed (struct) node, else
    None. The hint is the closest key at the level where the path leaves the config, or that level's keys."""
    node: object = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if isinstance(node, DictConfig) and part in node:
            node = node._get_node(part)  # no interpolation resolving
            continue
        if not isinstance(node, DictConfig) or not OmegaConf.is_struct(node):
            return None  # a leaf value or an open mapping: not a typo Hydra refuses
        prefix = ".".join(parts[:depth])
        known = sorted(str(k) for k in node.keys())
        close = difflib.get_close_matches(part, known, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {prefix + '.' if prefix else ''}{close[0]}?"
        else:
            shown = ", ".join(known[:MAX_LISTED]) + (", ..." if len(known) > MAX_LISTED else "")
            hint = f"{prefix or 'top-level'} settings: {shown}"
        return f"{text}: no such setting ({hint})"
    return None


def override_key_problems(overrides: Sequence[str], compose: Callable[[list[str]], DictConfig],
                          conf_dir: str | Path | None = None) -> list[str]:
    """One message per plain override whose key the config lacks. ``compose(overrides)`` composes the config the
    command composes; it is called once, without the plain overrides. Empty when that fails too (the problem is
    elsewhere: Hydra's own message stands) or when every key exists."""
    if conf_dir is None:
        from medlab.paths import CONF_DIR

        conf_dir = CONF_DIR
    plain, rest = plain_key_overrides(overrides, Path(conf_dir))
    if not plain:
        return []
    try:
        base = compose(rest)
    except Exception:  # noqa: BLE001 - not a key typo: leave it to Hydra's message
        return []
    return [p for key, text in plain if (p := missing_key_problem(base, key, text)) is not None]
