"""``python -m medlab.mine``: the command lives in :mod:`medlab.commands.mine`."""
from medlab.commands.mine import cli, main, mine, mine_negatives  # noqa: F401
if __name__ == "__main__":
    cli()
