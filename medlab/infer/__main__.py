"""``python -m medlab.infer``: the command lives in :mod:`medlab.commands.infer`."""
from medlab.commands.infer import cli

if __name__ == "__main__":
    cli()
