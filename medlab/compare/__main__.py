"""``python -m medlab.compare``: the command lives in :mod:`medlab.commands.compare`."""
from medlab.commands.compare import cli

if __name__ == "__main__":
    cli()
