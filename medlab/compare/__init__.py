"""``python -m medlab.compare``: the entry point of :mod:`medlab.commands.compare` (nothing else lives here)."""
