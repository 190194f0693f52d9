"""`python -m medlab [+experiment=NAME] [overrides]` — parse with Hydra, hand over to run()."""

import sys

import hydra
from omegaconf import DictConfig

import medlab  # noqa: F401  (registers the config resolvers)
from medlab.config.compose import CONFIG_NAME, CONFIG_PATH
from medlab.commands.cli import user_errors_exit


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> float | None:
    from medlab.commands.train import run

    # A config or data problem: its message alone on stderr and in <run dir>/train.log, exit code 2. The
    # SystemExit passes through Hydra's job runner, which only catches Exception (so no "Error executing job").
    with user_errors_exit():
        result = run(cfg)
    if result.metrics.get("status") == "interrupted":
        sys.exit(143)  # stopped by a signal after a complete checkpoint: schedulers may requeue
    return result.objective


def cli() -> None:
    from medlab.commands.app import overrides_of
    from medlab.commands.cli import explain_refused_overrides
    from medlab.config.compose import compose

    # Hydra refuses a typo'd key=value with its first key only: name them all, with the closest real keys
    with explain_refused_overrides(overrides_of(sys.argv[1:]), lambda overrides: compose(overrides=overrides)):
        main()


if __name__ == "__main__":
    cli()
