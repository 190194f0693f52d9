"""The skeleton every data source shares (SFT/CPT chat data, retrieval data, prompt data), as small functions.

A data class (`medlab.contracts.DataSource`) composes them and adds only its own normalize, tokenize and collate:

    loaded = load_files(paths, limit, normalize_file)    # read (medlab.data.readers) + normalize every file
    problems, sizes = check_splits(loads, on_bad_row)     # validate(): every problem at once, no tokenizer
    rows = take(loaded, split, on_bad_row, counts)       # setup(): file problems raise; bad rows raise or are counted
    train, val = split_off(rows, n_val, seed, group=...)  # hold out validation (medlab.data.split.hold_out)

`normalize_file(read: FileRecords) -> (rows | None, file problems, bad rows)` is the data class's own step; rows
are a list of dicts or a `datasets.Dataset`. Bad rows name the file, the 1-based line/row and the field
(`medlab.data.errors`); skipped ones are counted as ``<split>/bad_row/<reason>`` (unparsable lines:
``bad_row/unparsable``). The tokenized-data cache is `medlab.data.cache`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets

from medlab.data.errors import (
    BadRow,
    DataError,
    RowProblem,
    RowProblems,
    bad_row_counts,
    bad_row_problems,
    describe_bad_rows,
)
from medlab.data.readers import FileRecords, check_exists, read_located
from medlab.data.split import hold_out

log = logging.getLogger(__name__)
ON_BAD_ROW = ("error", "skip")


@dataclass
class Loaded:
    """What one split's files gave: the normalized rows of the files that fit (None: no file did), problems of
    whole files (missing, unreadable, columns that fit no format), every bad line/row in file order (per file:
    unparsable lines first, then row problems) and the number of records parsed."""

    rows: Any = None
    problems: list[str] = field(default_factory=list)
    bad: list[BadRow] = field(default_factory=list)
    read: int = 0


def load_files(
    paths: Sequence[Path], limit: int | None, normalize_file: Callable[[FileRecords], tuple[Any, list[str], list]]
) -> Loaded:
    """Read each file leniently (`read_located`; at most `limit` parsed records over all files) and normalize it."""
    loaded, parts, remaining = Loaded(), [], limit
    for path in paths:
        if remaining == 0:
            break
        try:
            read = read_located(path, limit=remaining)
        except DataError as err:
            loaded.problems.append(str(err))
            continue
        n = len(read.dataset)
        if remaining is not None:
            remaining -= n
        loaded.read += n
        loaded.bad += read.unparsable
        if n == 0:
            continue  # nothing parsed: the unparsable lines say why
        rows, problems, bad = normalize_file(read)
        loaded.problems += problems
        loaded.bad += bad
        if rows is not None:
            parts.append(rows)
    loaded.rows = _join(parts) if parts else None
    return loaded


def _join(parts: list) -> Any:
    if isinstance(parts[0], datasets.Dataset):
        return parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    return [row for part in parts for row in part]


def normalize_records(
    records: Sequence[Mapping[str, Any]],
    normalize: Callable[[Mapping[str, Any]], dict],
    where: Callable[[int], str],
    name: Callable[[str | None], tuple[str | None, str | None]] = lambda f: (f, None),
) -> tuple[list[tuple[int, dict]], list[BadRow]]:
    """``normalize`` every record: ``([(index, row), ...], bad rows)``. A `RowProblem` (or `RowProblems`) becomes
    a `BadRow` at ``where(index)``; ``name(field) -> (field, column)`` is how the data source names the field."""
    good, bad = [], []
    for index, record in enumerate(records):
        try:
            good.append((index, normalize(record)))
        except (RowProblem, RowProblems) as err:
            at = where(index)
            for p in err.problems if isinstance(err, RowProblems) else [err]:
                field_name, column = name(p.field)
                bad.append(BadRow(at, field_name, p.message, p.reason, column))
    return good, bad


def canonical_record(record: Mapping[str, Any], mapped: Mapping[str, str], *, others: bool = False) -> dict:
    """A record with the mapped columns under their canonical names (`fields.resolve`); ``others=True`` keeps the
    other columns too (first, under their own names)."""
    out = {k: v for k, v in record.items() if k not in set(mapped.values())} if others else {}
    out.update({name: record.get(column) for name, column in mapped.items()})
    return out


# ---------------------------------------------------------------------------------------------- checks


def check_splits(
    loads: Iterable[tuple[str, Callable[[], Loaded]]],
    on_bad_row: str,
    *,
    left: Callable[[str, Loaded], str | None] | None = None,
    size: Callable[[Any], int] = len,
) -> tuple[list[str], dict[str, int]]:
    """``validate()``'s file and row checks: (problems, {split: size}).

    Each split's file problems, then its bad rows (unless ``on_bad_row=skip``); otherwise ``left(split, loaded)``
    may say that nothing usable is left. ``size(rows)`` (rows, or query groups) of every split read.
    """
    problems, sizes = [], {}
    for split, load in loads:
        loaded = load()
        problems += loaded.problems
        if loaded.bad and on_bad_row != "skip":
            problems += bad_row_problems(loaded.bad)
        elif left is not None:
            message = left(split, loaded)
            problems += [message] if message else []
        if loaded.rows is not None:
            sizes[split] = size(loaded.rows)
    return problems, sizes


def validation_size(sizes: Mapping[str, int], has_val_path: bool, val_count: Callable[[int], int]) -> int | None:
    """Validation rows/groups known after `check_splits` (0 = no validation; None = unknown)."""
    if has_val_path:
        return sizes.get("val")
    return val_count(sizes["train"]) if "train" in sizes else None


def choice_problems(choices: Mapping[str, tuple[Any, Sequence[str]]]) -> list[str]:
    """``data.NAME='x' is not one of a, b`` for each ``name: (value, allowed)`` that does not fit."""
    return [f"data.{name}={value!r} is not one of {', '.join(allowed)}"
            for name, (value, allowed) in choices.items() if value not in allowed]


def positive_problems(values: Mapping[str, Any], *, optional: bool = False) -> list[str]:
    """``data.NAME must be a positive integer`` (``or null`` when `optional`) for each value that is not."""
    out = []
    for name, value in values.items():
        if optional and value is None:
            continue
        if not (isinstance(value, int) and value >= 1):
            out.append(f"data.{name} must be a positive integer{' or null' if optional else ''}, got {value!r}")
    return out


def raise_config_problems(problems: list[str], paths: Iterable[Path]) -> None:
    """``setup()``'s first step: option problems plus missing/empty files -> one `DataError`."""
    problems = list(problems)
    for path in paths:
        try:
            check_exists(path)
        except DataError as err:
            problems.append(str(err))
    if problems:
        raise DataError("invalid data config:\n  - " + "\n  - ".join(problems))


# ---------------------------------------------------------------------------------------------- setup


def take(loaded: Loaded, split: str, on_bad_row: str, counts: dict[str, int], read_key: str = "read") -> Any:
    """The rows of a split for setup: count the records read (``<split>/<read_key>``), raise on file problems,
    then apply ``on_bad_row``: raise listing every bad row, or count them (``<split>/bad_row/<reason>``) and log."""
    add_counts(counts, split, {read_key: loaded.read})
    if loaded.problems:
        raise DataError("invalid data:\n  - " + "\n  - ".join(loaded.problems))
    if loaded.bad:
        if on_bad_row != "skip":
            raise DataError(describe_bad_rows(loaded.bad))
        add_counts(counts, split, bad_row_counts(loaded.bad))
        log_dropped(loaded.bad, split)
    return loaded.rows


def split_off(
    rows: Any, n_val: int, seed: int, *, group: Callable[[dict], Hashable] | None = None, shuffled: bool = False
) -> tuple[Any, Any]:
    """``(train, val)`` with ``n_val`` rows (or whole groups) held out (`medlab.data.split.hold_out`); val is None
    when ``n_val`` is 0."""
    if not n_val:
        return rows, None
    train, val = hold_out([group(r) for r in rows] if group else len(rows), n_val, seed, shuffled=shuffled)
    if isinstance(rows, datasets.Dataset):
        return rows.select(train, keep_in_memory=True), rows.select(val, keep_in_memory=True)
    return [rows[i] for i in train], [rows[i] for i in val]


def add_counts(counts: dict[str, int], split: str, values: Mapping[str, int]) -> None:
    """``counts[<split>/<key>] += value`` for each entry."""
    for key, value in values.items():
        counts[f"{split}/{key}"] = counts.get(f"{split}/{key}", 0) + int(value)


def split_counts(counts: Mapping[str, int], split: str) -> dict[str, int]:
    return {k: v for k, v in counts.items() if k.startswith(f"{split}/")}


def log_dropped(bad: Sequence[BadRow], split: str) -> None:
    """One warning per file and reason for skipped bad rows, with an example."""
    for (file, reason), n in Counter((b.where.rsplit(" ", 2)[0], b.reason) for b in bad).items():
        example = next(b for b in bad if b.reason == reason and b.where.startswith(file))
        log.warning("data (%s): %s: dropped %d bad row(s): %s (e.g. %s)", split, file, n, reason, example)


def warn_no_validation(name: str, units: str, val_split: Any) -> None:
    """The warning of a setup without validation data (``name``: whose data, ``units``: rows, queries, ...)."""
    log.warning("%s: no validation %s (data.val_path is not set and data.val_split=%s holds out none): nothing is "
                "validated, so a val/ metric stays NaN", name, units, val_split)
