"""``python -m medlab.evaluate``: the command lives in :mod:`medlab.commands.evaluate`."""
from medlab.commands.evaluate import cli, evaluate, main  # noqa: F401
if __name__ == "__main__":
    cli()
