"""The one exception type of `medlab.data`, and how every data message says *where* a problem is.

Every problem a user can fix in their data or data config (a missing file, a bad row, a template that
masks nothing) raises `DataError`, so the CLI can print it without a traceback and tests can match it.

Positions follow one convention in every data message (SFT/CPT data, retrieval data, prompt data), both
numbers counting from 1:

- ``FILE line N``: the N-th line of a line-oriented file (``.jsonl``, ``.txt``, ``.csv``, JSON lines saved as
  ``.json``), i.e. the line an editor shows; also where a JSON/CSV parser stopped.
- ``FILE row N``: the N-th record of a file that is not read line by line (a ``.json`` list, ``.parquet``, a
  ``save_to_disk`` directory, in-memory rows).

Messages that list positions say so ("line and row numbers count from 1").
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import NamedTuple

MAX_LISTED = 20
NUMBERING = "line and row numbers count from 1"
UNPARSABLE = "unparsable"  # the reason (counter key) of a line/record that could not be parsed at all


class DataError(ValueError):
    """A problem with the user's data files or data settings; the message says what and where."""


def located(file: object, *, line: int | None = None, row: int | None = None) -> str:
    """``"FILE line N"`` (1-based line of the file) or ``"FILE row N"`` (1-based record number)."""
    return f"{file} line {line}" if line is not None else f"{file} row {row}"


def record_location(file: object, index: int, numbers: Sequence[int] | None = None, unit: str = "line") -> str:
    """Where the record at 0-based `index` of what was read from `file` is: ``"FILE <unit> numbers[index]"``
    (`numbers`: the 1-based line, or record number, of each record read), or ``"FILE row index+1"``."""
    if numbers is None:
        return located(file, row=index + 1)
    return f"{file} {'line' if unit == 'line' else 'row'} {numbers[index]}"


def json_error(err: json.JSONDecodeError) -> str:
    """``"<what> at column N"`` from a decoder error (some of its messages already end with "at": never "at at")."""
    msg = err.msg[: -len(" at")] if err.msg.endswith(" at") else err.msg
    return f"{msg} at column {err.colno}"


class BadRow(NamedTuple):
    """One bad line/record: `where` (``"FILE line N"`` / ``"FILE row N"``), the `field` (None when the whole
    line is bad, e.g. not valid JSON), what is wrong, a short `reason` key (counted when skipped) and, when the
    field was mapped from another column, that `column`."""

    where: str
    field: str | None
    message: str
    reason: str
    column: str | None = None

    def __str__(self) -> str:
        if not self.field:
            return f"{self.where}: {self.message}"
        column = f" (column {self.column!r})" if self.column and self.column != self.field else ""
        return f"{self.where}: field {self.field!r}{column}: {self.message}"


class RowProblem(Exception):
    """Raised by a format's normalizer for a bad row: the (canonical) `field`, a short `reason` key (counted as
    ``bad_row/<reason>`` when skipped) and what is wrong (`message`)."""

    def __init__(self, field: str | None, reason: str, message: str):
        super().__init__(message)
        self.field, self.reason, self.message = field, reason, message


class RowProblems(Exception):
    """Several problems of one row at once (each one is a bad row, counted by its reason)."""

    def __init__(self, problems: Sequence[RowProblem]):
        super().__init__("; ".join(p.message for p in problems))
        self.problems = list(problems)


BAD_ROW = "bad_row"  # the counter of skipped bad rows: ``<split>/bad_row/<reason>`` (every data source)


def bad_row_counts(bad: Sequence[BadRow]) -> dict[str, int]:
    """``{"bad_row/<reason>": n}``: how skipped bad rows are counted (logged, and ``data/<split>/...`` in
    metrics.json), in the order the reasons first occur."""
    return dict(Counter(f"{BAD_ROW}/{b.reason}" for b in bad))


class BadRows:
    """Collects bad rows (where, field, why) so all of them are reported at once, or counted when skipped."""

    def __init__(self, bad: Sequence[BadRow] = ()) -> None:
        self.bad: list[BadRow] = list(bad)

    def add(self, where: str, field: str | None, why: str, reason: str, column: str | None = None) -> None:
        """One bad row at ``where`` (``"FILE line N"`` / ``"FILE row N"``, see `located`)."""
        self.bad.append(BadRow(where, field, why, reason, column))

    def extend(self, bad: Sequence[BadRow]) -> None:
        self.bad.extend(bad)

    @property
    def counts(self) -> dict[str, int]:
        """Bad rows by reason."""
        return dict(Counter(b.reason for b in self.bad))

    @property
    def items(self) -> list[str]:
        return [str(b) for b in self.bad]

    def __len__(self) -> int:
        return len(self.bad)


def _summary(bad: Sequence[BadRow]) -> str:
    by_reason = Counter(b.reason for b in bad)
    return (
        f"{len(bad)} bad row(s) ({', '.join(f'{r}: {n}' for r, n in by_reason.most_common())}; {NUMBERING}). "
        "Fix them or set data.on_bad_row=skip to drop them (counted)"
    )


def describe_bad_rows(bad: Sequence[BadRow], limit: int = MAX_LISTED) -> str:
    """One message: the totals by reason, then the first `limit` bad rows, one per line."""
    head = f"{_summary(bad)}. {'First ' + str(limit) if len(bad) > limit else 'All'}:"
    return "\n".join([head] + [f"  - {b}" for b in bad[:limit]])


def bad_row_problems(bad: Sequence[BadRow], limit: int = MAX_LISTED) -> list[str]:
    """The same as separate problems (for `validate()` lists): the summary, then the first `limit` rows."""
    if not bad:
        return []
    more = f" (the first {limit} follow)" if len(bad) > limit else ""
    return [_summary(bad) + more] + [str(b) for b in bad[:limit]]
