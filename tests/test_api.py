"""medlab.compose(): run dirs follow the working directory, like the CLI's."""

from __future__ import annotations

import os
from pathlib import Path

import medlab


def test_compose_puts_the_run_dir_under_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = medlab.compose("sft")
    run_dir = Path(cfg.paths.run_dir)
    assert run_dir.is_absolute()
    assert run_dir.parent == tmp_path.resolve() / "outputs" / "notebook" / "sft"
    assert cfg.paths.cache_dir == os.environ["MEDLAB_CACHE_DIR"]  # the cache is not per working directory

    rel = medlab.compose("sft", run_dir="mine")
    assert Path(rel.paths.run_dir) == tmp_path.resolve() / "mine"
