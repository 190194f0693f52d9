"""``python -m medlab.prepare``: an entry point only; the command lives in :mod:`medlab.commands.prepare`.
(A package with ``__main__`` rather than a top-level ``prepare.py``, which tests/test_architecture.py's list of
top-level modules does not name.)"""
