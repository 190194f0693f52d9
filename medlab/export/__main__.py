"""``python -m medlab.export``: the command lives in :mod:`medlab.commands.export` (this package holds the formats)."""

if __name__ == "__main__":
    from medlab.commands.export import cli

    cli()
