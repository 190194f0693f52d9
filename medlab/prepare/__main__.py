"""``python -m medlab.prepare``: the command lives in :mod:`medlab.commands.prepare`."""
from medlab.commands.prepare import cli

if __name__ == "__main__":
    cli()
