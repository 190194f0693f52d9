"""One registry of data formats: each format is a small registered normalizer.

    Format(name, kinds, columns, detect, normalize, row=..., order=...)

- ``name``: what ``data.format`` selects (unique over every kind).
- ``kinds``: the `medlab.contracts.DataSource.kind` values it serves (``chat`` for SFT/CPT, ``retrieval``,
  ``prompts``, ``preference``).
- ``columns``: the canonical columns it needs, after ``data.fields`` mapping; each entry lists alternatives
  (``(("conversations", "messages"), ("tools",))``: one of the first two, and ``tools``).
- ``detect(columns, first=None) -> bool``: whether a file with these canonical columns is in this format
  (``first``: the file's first record, canonical names, for formats told apart by a value).
- ``normalize(row, **options) -> dict``: one record (canonical names; a column that is not mapped is absent)
  -> the kind's canonical row; raises `medlab.data.errors.RowProblem` (or `RowProblems`) naming the field
  when the row is bad. ``options`` are the data source's settings the format needs (unknown ones ignored).
- ``row``: what a normalized row holds (``messages`` / ``text`` for chat rows, ``judged`` for retrieval,
  ``prompt`` for prompts, ``pair`` / ``unpaired`` / ``judged`` for preference data): a data source uses it to accept a format (SFT needs ``messages``, CPT ``text``).
- ``order``: detection order within a kind (lower is tried first; ties keep registration order).

The built-in formats register when their modules are imported: chat formats in `medlab.data.formats`,
retrieval formats in `medlab.retrieval.rows`, the prompt format in `medlab.data.prompt_rows`, preference formats
in `medlab.data.preference_rows`; every lookup here
imports them first. A new format registers the same way from any module (docs/ADDING.md).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

BUILTIN_MODULES = ("medlab.data.formats", "medlab.retrieval.rows", "medlab.data.prompt_rows", "medlab.data.preference_rows")
_FORMATS: dict[str, Format] = {}


@dataclass(frozen=True)
class Format:
    """A data format: see the module docstring."""

    name: str
    kinds: tuple[str, ...]
    columns: tuple[tuple[str, ...], ...]
    detect: Callable[..., bool]
    normalize: Callable[..., dict]
    row: str = ""
    order: int = 50

    def missing(self, columns: Collection[str]) -> list[tuple[str, ...]]:
        """The needed columns (each a tuple of alternatives) that `columns` lacks."""
        present = set(columns)
        return [options for options in self.columns if not present & set(options)]


def register(fmt: Format) -> Format:
    """Add a format (its name must be new, or the same format registered again)."""
    old = _FORMATS.get(fmt.name)
    if old is not None and old != fmt:
        raise ValueError(f"a data format named {fmt.name!r} is already registered (for {', '.join(old.kinds)})")
    _FORMATS[fmt.name] = fmt
    return fmt


def _builtins() -> dict[str, Format]:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return _FORMATS


def get(name: str) -> Format:
    """The registered format `name` (KeyError if none)."""
    return _builtins()[name]


def names(kind: str) -> tuple[str, ...]:
    """The formats of a data kind, in registration order (the order error messages list them in)."""
    return tuple(name for name, fmt in _builtins().items() if kind in fmt.kinds)


def detect(kind: str, columns: Collection[str], first: Mapping[str, Any] | None = None) -> str | None:
    """The first format of `kind` (by ``order``) whose ``detect`` accepts these canonical columns, or None."""
    candidates = sorted((fmt for fmt in _builtins().values() if kind in fmt.kinds), key=lambda f: f.order)
    columns = set(columns)
    return next((fmt.name for fmt in candidates if fmt.detect(columns, first)), None)
