"""A typo'd key added with `+` is rejected up front, naming the closest real setting; no shipped config trips it.

Hydra answers `trainer.max_step=3` with "add +"; `+trainer.max_step=3` used to be accepted and ignored (the run
trained the default 200 steps). `medlab.config.keys.unknown_keys` (called by `validate_config`) now reports it.
"""

from __future__ import annotations

import re

import pytest
from helpers import EXPERIMENTS
from helpers import compose as _compose
from helpers import config_options as _options
from omegaconf import OmegaConf

import medlab
from medlab.config import ConfigError, collect_problems
from medlab.config.keys import CODE_KEYS, unknown_keys

CONF = medlab.CONF_DIR


# ------------------------------------------------------------------------------------------ typos
def test_plus_typo_in_trainer_stops_the_run_naming_the_real_key(tmp_path):
    cfg = medlab.compose("sft", ["+trainer.max_step=3"], run_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError) as e:
        medlab.run(cfg)  # refused before any model loads
    assert "trainer.max_step is not a setting medlab reads (did you mean trainer.max_steps?)" in e.value.problems
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("experiment", ["sft", "biencoder", "grpo_lora"])  # CausalLM; BiEncoder / GRPOPolicy: **optim
def test_plus_typo_in_objective_names_objective_lr(experiment):
    problems = collect_problems(_compose(experiment, ["+objective.lrr=1"]))
    assert "objective.lrr is not a setting medlab reads (did you mean objective.lr?)" in problems


@pytest.mark.parametrize("override,expected", [
    ("+data.max_lenght=64", "did you mean data.max_length?"),
    ("+adapter.alhpa=8", "did you mean adapter.alpha?"),
    ("+strategy.device=2", "did you mean strategy.devices?"),
    ("+model.attn_implementaton=eager", "did you mean model.attn_implementation?"),
    ("+trainer.early_stopping.patiense=3", "did you mean trainer.early_stopping.patience?"),
    ("+export.merge=true", "did you mean export.merge_lora?"),
])
def test_plus_typo_in_each_known_group_is_named(override, expected):
    key = override[1:].split("=")[0]
    problems = unknown_keys(_compose("sft_lora", [override]))
    assert problems == [f"{key} is not a setting medlab reads ({expected})"]


def test_key_with_no_close_match_lists_the_groups_settings():
    (problem,) = unknown_keys(_compose(None, ["+trainer.zzz=1"]))
    assert problem.startswith("trainer.zzz is not a setting medlab reads (trainer settings: ")
    assert "max_steps" in problem and "_target_" not in problem


def test_key_of_another_objective_is_rejected():
    # GRPO's rewards mean nothing to the bi-encoder (its **optim goes to the optimizer settings)
    problems = unknown_keys(_compose("biencoder", ["+objective.rewards.acc={_target_: exact_match}"]))
    assert len(problems) == 1 and problems[0].startswith("objective.rewards is not a setting medlab reads"), problems


def test_arguments_the_runner_passes_are_not_settings():
    problems = unknown_keys(_compose("sft", ["+objective.model=x"]))
    assert len(problems) == 1 and problems[0].startswith("objective.model is not a setting")


def test_free_form_mappings_are_not_checked():
    cfg = _compose("grpo_lora", ["+objective.rewards.concise={_target_: length_penalty, weight: 0.2, target: 200}",
                                 "+strategy.options.find_unused_parameters=true", "+data.fields.question=q"])
    assert unknown_keys(cfg) == []


def test_user_target_with_kwargs_and_no_config_file_is_not_checked():
    cfg = _compose("sft")
    cfg.objective = OmegaConf.create({"_target_": "builtins.dict", "anything": 1})  # dict(**kwargs)
    assert unknown_keys(cfg) == []


# ------------------------------------------------------------------------------------------ shipped configs
@pytest.mark.parametrize("experiment", [None] + EXPERIMENTS)
def test_every_experiment_validates_clean(experiment):
    assert unknown_keys(_compose(experiment)) == []


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_with_each_data_option_of_its_kind(experiment):
    """The experiment's own data settings on every data config of the same kind (e.g. biencoder_qlora's
    append_eos / query_prefix on data=medquad_pairs)."""
    target = _compose(experiment).data._target_
    same_kind = [o for o in _options("data") if OmegaConf.load(CONF / "data" / f"{o}.yaml").get("_target_") == target]
    assert same_kind
    for option in same_kind:
        assert unknown_keys(_compose(experiment, [f"data={option}"])) == [], option


@pytest.mark.parametrize("group", ["model", "adapter", "strategy", "objective"])
def test_every_group_option_validates_clean(group):
    experiment = {"adapter": "sft_lora"}.get(group)  # sft_lora sets adapter.r / adapter.alpha on top
    for option in _options(group):
        assert unknown_keys(_compose(experiment, [f"{group}={option}"])) == [], option


def test_every_key_the_code_reads_is_a_valid_setting():
    """trainer / strategy keys read in commands/train.py and validate.py must be defined in conf/ or listed in CODE_KEYS,
    or the check would reject a key the code uses."""
    patterns = {
        "trainer": [r"cfg\.trainer\.(?:get\(\")?(\w+)", r"[\"']trainer\.(\w+)", r"\bt\.(?:get\(\")?(\w+)",
                    r"_get\(t, \"(\w+)\""],
        "strategy": [r"cfg\.strategy\.(?:get\(\")?(\w+)", r"[\"']strategy\.(\w+)", r"\bs\.(?:get\(\")?(\w+)",
                     r"_get\(s, \"(\w+)\""],
    }
    cfg = _compose(None)
    for group, pats in patterns.items():
        defined = {str(k) for option in _options(group) for k in OmegaConf.load(CONF / group / f"{option}.yaml")}
        read = set()
        for source in ("commands/train.py", "config/validate.py"):
            text = (medlab.PACKAGE_DIR / source).read_text()
            for pat in pats:
                read |= set(re.findall(pat, text))
        assert read, group
        unknown = read - defined - CODE_KEYS[group] - {"get"}
        assert not unknown, f"{group} keys read by the code but unknown to medlab.config.keys: {sorted(unknown)}"
        # and a config that sets every one of them passes the check
        probe = OmegaConf.merge(cfg, {group: {k: cfg[group].get(k) for k in read - {"get"}}})
        assert [p for p in unknown_keys(probe) if p.startswith(f"{group}.")] == []


def test_a_typo_in_a_built_group_is_reported_once_with_the_closest_key():
    """`+adapter.rr=4` / `+data.max_lenght=3` also make the group fail to build; only the unknown-key message (the
    cause, with the closest valid key) is reported, not a second "cannot build ..." line for the same group."""
    from medlab.config.validate import collect_problems

    cfg = medlab.compose("sft_lora", ["+adapter.rr=4", "+data.max_lenght=3"], run_dir="/tmp/unused")
    problems = collect_problems(cfg)
    assert problems == ["adapter.rr is not a setting medlab reads (did you mean adapter.r?)",
                        "data.max_lenght is not a setting medlab reads (did you mean data.max_length?)"], problems
