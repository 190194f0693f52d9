"""A typo'd ``key=value`` override (no ``+``) is named with the closest real key, every such key at once.

Hydra refuses ``trainer.max_stepz=3`` with "Key 'max_stepz' is not in struct" -- the first such key only, no hint.
``medlab.config.overrides`` explains all of them after Hydra has refused the line (``python -m medlab`` and every
``medlab.<command>``), exit code 2 like any other config problem.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import medlab
from medlab.config import ConfigError
from medlab.config.overrides import missing_key_problem, override_key_problems, plain_key_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def _compose(overrides):
    return medlab.compose(overrides=overrides, run_dir="/tmp/medlab-typo-test-unused")


def test_only_plain_key_changes_are_checked():
    plain, rest = plain_key_overrides(
        ["trainer.max_stepz=1", "model=minilm", "+experiment=sft", "~trainer.seed", "++a.b=1", "hydra.verbose=true",
         "hydra/launcher=basic", "model@foo=bar", "compare.models=[a,b]"], medlab.CONF_DIR)
    assert plain == [("trainer.max_stepz", "trainer.max_stepz=1"), ("compare.models", "compare.models=[a,b]")]
    assert "model=minilm" in rest and "+experiment=sft" in rest and "hydra.verbose=true" in rest


def test_every_typo_is_named_with_its_closest_key_and_valid_ones_are_not():
    problems = override_key_problems(
        ["trainer.max_stepz=1", "model=minilm", "objective.lrr=3", "trainer.max_steps=4", "data.max_length=32"],
        _compose)
    assert problems == ["trainer.max_stepz=1: no such setting (did you mean trainer.max_steps?)",
                        "objective.lrr=3: no such setting (did you mean objective.lr?)"]


def test_group_choices_apply_before_the_check():
    # eval.* keys exist only in the evaluate config; the training config's objective changes with +experiment
    assert override_key_problems(["+experiment=grpo_lora", "objective.num_generations=2"], _compose) == []
    (problem,) = override_key_problems(["+experiment=grpo_lora", "objective.num_generationz=2"], _compose)
    assert "did you mean objective.num_generations?" in problem


def test_no_close_key_lists_the_level_and_open_mappings_are_not_typos():
    (problem,) = override_key_problems(["trainer.zzzq=1"], _compose)
    assert problem.startswith("trainer.zzzq=1: no such setting (trainer settings: ") and "max_steps" in problem
    cfg = _compose([])
    assert missing_key_problem(cfg, "trainer.max_steps", "trainer.max_steps=1") is None
    assert missing_key_problem(cfg, "trainer.max_steps.x", "trainer.max_steps.x=1") is None  # a leaf: Hydra's call


def test_a_line_that_fails_for_another_reason_keeps_hydras_message():
    assert override_key_problems(["model=no_such_model", "trainer.max_stepz=1"], _compose) == []


def test_commands_raise_one_config_error_naming_every_typo():
    from medlab.commands.compare import main

    with pytest.raises(ConfigError) as e:
        main(["compare.limitt=3", "compare.outt=x"])
    assert e.value.problems == ["compare.limitt=3: no such setting (did you mean compare.limit?)",
                                "compare.outt=x: no such setting (did you mean compare.out?)"]


def test_training_cli_exits_2_with_both_hints(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "medlab", "trainer.max_stepz=1", "trainer.val_every_n_stepz=3"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "trainer.max_stepz=1: no such setting (did you mean trainer.max_steps?)" in proc.stderr
    assert "trainer.val_every_n_stepz=3: no such setting (did you mean trainer.val_every_n_steps?)" in proc.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("checkpoints"))
