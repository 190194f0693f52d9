"""The one exception type of `medlab.data`.

Every problem a user can fix in their data or data config (a missing file, a bad row, a template that
masks nothing) raises `DataError`, so the CLI can print it without a traceback and tests can match it.
"""

from __future__ import annotations


class DataError(ValueError):
    """A problem with the user's data files or data settings; the message says what and where."""
