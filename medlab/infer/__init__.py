"""``python -m medlab.infer``: an entry point only; the command lives in :mod:`medlab.commands.infer`.
(A package with ``__main__`` rather than a top-level ``infer.py``, which tests/test_architecture.py's list of
top-level modules does not name.)"""
