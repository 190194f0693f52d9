"""The command-line programs, each a Hydra app on the same config groups as training.

- ``evaluate`` (``python -m medlab.evaluate``): score a run or an untrained backbone on a file.
- ``mine`` (``python -m medlab.mine``): hard negatives from a bi-encoder run.
- ``app``: what they share (run-dir configs, ``--cfg``/``--help``, errors re-raised outside Hydra).

Commands depend on ``medlab.evaluation`` (and below); nothing below depends on a command, and no command
imports another.
"""
