"""``data.fields``: canonical field -> your column, one mapping rule for every data source.

- An entry maps a canonical field onto a column; a null value means "not mapped" (the canonical name, then the
  kind's common aliases, are used).
- A column named like the canonical field is used as it is; an alias column is used unless an explicit entry
  already maps it to another field.
- `problems` names unknown fields and mapped columns a file lacks, before any row is read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence


def mapped(fields: Mapping[str, str | None] | None) -> dict[str, str]:
    """The entries of a `fields` mapping that map something (null = not mapped)."""
    return {canonical: user for canonical, user in (fields or {}).items() if user is not None}


def resolve(
    columns: Collection[str],
    fields: Mapping[str, str | None] | None,
    canonical: Sequence[str],
    aliases: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, str]:
    """canonical name -> source column: the explicit entry, else the same name, else the first free alias."""
    fields = dict(fields or {})
    taken = set(fields.values())
    out: dict[str, str] = {}
    for name in canonical:
        if fields.get(name):
            out[name] = fields[name]
        elif name in columns:
            out[name] = name
        else:
            alias = next((a for a in (aliases or {}).get(name, ()) if a in columns and a not in taken), None)
            if alias:
                out[name] = alias
    return out


def problems(
    columns: Sequence[str], fields: Mapping[str, str | None] | None, canonical: Sequence[str], *, chat: bool = False
) -> list[str]:
    """Unknown fields and mapped columns that `columns` lacks (empty list = nothing).

    ``chat=True``: the wording SFT/CPT data has always used (``fields: column 'x' (for 'y') not in ...``).
    """
    out = []
    for name, column in (fields or {}).items():
        if name not in canonical:
            out.append(f"fields: unknown canonical field {name!r} (known: {', '.join(canonical)})" if chat else
                       f"data.fields.{name}: unknown field (known: {', '.join(canonical)})")
        elif column and column not in columns:
            out.append(f"fields: column {column!r} (for {name!r}) not in the file's columns {list(columns)}" if chat
                       else f"data.fields.{name}={column!r}: no such column (columns: {', '.join(columns)})")
    return out
