"""Every experiment composes, validates and instantiates; bad configs fail up front with every problem listed;
the optimizer group and the experiments that extend other experiments hold each value once."""

from __future__ import annotations

import dataclasses
import inspect
import subprocess
import sys

import pytest
from helpers import EXPERIMENTS, compose, config_options
from hydra.utils import instantiate
from lightning.fabric.loggers import Logger
from omegaconf import OmegaConf

import medlab
from medlab.config import ConfigError, collect_problems, redact, validate_config
from medlab.objectives.common import OptimSettings

CONF = medlab.CONF_DIR
SHIPPED = {"cpt", "sft", "sft_lora", "sft_qlora", "sft_toolcall", "biencoder", "biencoder_qlora", "biencoder_vlm",
           "reranker", "reranker_llm_qlora", "grpo", "grpo_lora", "grpo_qlora", "agentic_rag"}


def test_every_shipped_experiment_is_found():
    """The glob behind the parametrized tests finds the experiments (a new file is checked without a test edit)."""
    assert SHIPPED <= set(EXPERIMENTS), sorted(SHIPPED - set(EXPERIMENTS))


@pytest.mark.parametrize("experiment", [None] + EXPERIMENTS)
def test_experiment_composes_validates_and_instantiates(experiment, tmp_path):
    cfg = medlab.compose(experiment, run_dir=str(tmp_path))
    validate_config(cfg)  # the whole up-front validation: raises ConfigError listing every problem
    if experiment:
        assert cfg.name == experiment
    adapter = instantiate(cfg.adapter)
    assert adapter.kind == cfg.adapter.kind and adapter.problems() == []
    data = instantiate(cfg.data)
    assert data.validate() == []
    # the model loader takes the call the runner makes (every required argument is in the config)
    load_model = instantiate(cfg.model)
    inspect.signature(load_model).bind(quantization_config=adapter.quantization_config(), head="causal_lm")
    for name, lcfg in cfg.logger.items():
        assert isinstance(instantiate(lcfg), Logger), name


@pytest.mark.parametrize("group", ["model", "adapter", "data", "objective", "strategy", "logger"])
def test_every_config_group_option_composes_with_its_own_settings(group, tmp_path):
    for option in config_options(group):
        cfg = medlab.compose(None, [f"{group}={option}"], run_dir=str(tmp_path))
        own = OmegaConf.to_container(OmegaConf.load(CONF / group / f"{option}.yaml"), resolve=False)
        own.pop("defaults", None)
        composed = OmegaConf.to_container(cfg[group], resolve=False)
        assert set(own) <= set(composed), (group, option, sorted(set(own) - set(composed)))
        if "_target_" in own:
            assert composed["_target_"] == own["_target_"], (group, option)


# ---------------------------------------------------------------------------------------------- optimizer group
ADAMW = OmegaConf.to_container(OmegaConf.load(CONF / "optim" / "adamw.yaml"))


def test_optim_group_holds_the_optim_settings_defaults():
    defaults = {f.name: f.default for f in dataclasses.fields(OptimSettings)}
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in ADAMW.items()} == defaults


@pytest.mark.parametrize("objective", config_options("objective"))
def test_every_objective_gets_the_optimizer_settings_from_the_group(objective):
    """``objective.lr``, ``objective.betas``, ... come from conf/optim/adamw.yaml; an objective file states only
    the values it changes (none repeats the group's)."""
    own = OmegaConf.to_container(OmegaConf.load(CONF / "objective" / f"{objective}.yaml"), resolve=False)
    assert {"/optim@_here_": "adamw"} in own["defaults"] and own["defaults"][-1] == "_self_"
    repeated = {k: v for k, v in own.items() if k in ADAMW and ADAMW[k] == v}
    assert not repeated, f"conf/objective/{objective}.yaml repeats conf/optim/adamw.yaml: {repeated}"
    composed = OmegaConf.to_container(compose(None, [f"objective={objective}"]).objective, resolve=True)
    assert {k: own.get(k, v) for k, v in ADAMW.items()} == {k: composed[k] for k in ADAMW}


def test_optimizer_settings_are_set_from_the_command_line():
    cfg = compose("sft", ["objective=causal_lm", "objective.lr=0.5", "objective.scheduler=linear"])
    assert (cfg.objective.lr, cfg.objective.scheduler, list(cfg.objective.betas)) == (0.5, "linear", [0.9, 0.95])
    cfg = compose("grpo_qlora", ["objective.lr=1e-6", "objective.weight_decay=0.1"])
    assert (cfg.objective.lr, cfg.objective.weight_decay, cfg.objective.scheduler) == (1e-6, 0.1, "constant")
    cfg = compose("biencoder", ["objective=cross_encoder"])  # group swap: the new objective's own values
    assert cfg.objective._target_.endswith("CrossEncoder") and cfg.objective.scheduler == "linear"
    assert collect_problems(compose("sft", ["+objective.betas_=[0.9,0.9]"])) != []  # a typo is still refused


# ---------------------------------------------------------------------------------------------- experiments extending experiments
def _base_experiment(experiment: str) -> str | None:
    """The experiment ``experiment`` extends (a plain name in its defaults list), if any."""
    own = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"), resolve=False)
    bases = [d for d in own.get("defaults", []) if isinstance(d, str) and d in EXPERIMENTS]
    assert len(bases) <= 1, (experiment, bases)
    return bases[0] if bases else None


def _get(container, path):
    for key in path:
        if not isinstance(container, dict) or key not in container:
            return "<missing>"
        container = container[key]
    return container


def _leaves(node, prefix=()):
    if isinstance(node, dict) and node:
        for k, v in node.items():
            yield from _leaves(v, (*prefix, str(k)))
    else:
        yield prefix, node


def test_variants_extend_their_base_experiment():
    bases = {e: _base_experiment(e) for e in EXPERIMENTS}
    expected = {"grpo_lora": "grpo", "grpo_qlora": "grpo_lora", "agentic_rag": "grpo_qlora", "sft_lora": "sft",
                "sft_qlora": "sft_lora", "sft_toolcall": "sft", "biencoder_qlora": "biencoder",
                "biencoder_vlm": "biencoder", "reranker_llm_qlora": "reranker"}
    assert {e: b for e, b in bases.items() if e in expected} == expected


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if _base_experiment(e)])
def test_a_variant_states_only_what_differs_from_its_base(experiment):
    """No copied blocks: every value a variant's file sets differs from what its base experiment already gives,
    and the variant is its base plus exactly those values (and its defaults-list overrides)."""
    base = _base_experiment(experiment)
    own = OmegaConf.to_container(OmegaConf.load(CONF / "experiment" / f"{experiment}.yaml"), resolve=False)
    own.pop("defaults")
    base_cfg = OmegaConf.to_container(compose(base), resolve=False)
    copies = [".".join(path) for path, value in _leaves(own) if path != ("name",) and _get(base_cfg, path) == value]
    assert not copies, f"{experiment} repeats what {base} already sets: {copies}"
    cfg = OmegaConf.to_container(compose(experiment), resolve=False)
    assert [path for path, value in _leaves(own) if _get(cfg, path) != value] == []


def test_all_problems_reported_at_once(tmp_path):
    cfg = medlab.compose("sft_qlora", [
        "data.path=/nonexistent/data.jsonl", "adapter.target_modules=[q_proj,not_a_module]",
        "strategy=deepspeed_zero3", "trainer.max_steps=null", "trainer.max_epochs=null",
        "objective.lr=-1", "data.max_length=100000",
    ], run_dir=str(tmp_path))
    with pytest.raises(ConfigError) as e:
        medlab.run(cfg)
    msg = str(e.value)
    for needle in ("/nonexistent/data.jsonl", "not_a_module", "CUDA", "ZeRO-3", "max_steps", "objective.lr",
                   "100000"):
        assert needle in msg, (needle, msg)
    assert len(e.value.problems) >= 7


def test_missing_required_value_is_named(tmp_path):
    cfg = medlab.compose(None, ["data=sft_chat"], run_dir=str(tmp_path))
    problems = collect_problems(cfg)
    assert any(p.startswith("data.path is required") for p in problems), problems


def test_fsdp_on_cpu_is_rejected_before_loading(tmp_path):
    cfg = medlab.compose(None, ["strategy=fsdp"], run_dir=str(tmp_path))
    assert any("needs a CUDA GPU" in p for p in collect_problems(cfg))


def test_secret_in_config_is_rejected_and_never_dumped(tmp_path):
    cfg = medlab.compose(None, ["+logger.tensorboard.api_key=sk-live-123456"], run_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="environment"):
        medlab.run(cfg)
    assert redact({"a": {"api_key": "x", "wandb_token": "y", "lr": 1}}) == {"a": {"api_key": "***", "wandb_token": "***", "lr": 1}}


def test_unknown_experiment_names_the_choices(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medlab", "+experiment=does_not_exist"], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "experiment/does_not_exist" in proc.stderr and "sft_lora" in proc.stderr


def test_cli_secret_never_stays_in_the_run_dir(tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "medlab", "+logger.tensorboard.api_key=sk-live-abcdef",
                           f"hydra.run.dir={run_dir}"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode != 0 and "environment" in proc.stderr
    dumped = "".join(p.read_text() for p in run_dir.rglob("*") if p.is_file())
    assert "sk-live-abcdef" not in dumped


def test_bad_rows_fail_with_file_row_and_field_or_are_skipped_and_counted(tmp_path, monkeypatch):
    import medlab.commands.train

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "What is fever?", "output": "A raised body temperature."}\n'
                   '{"instruction": "What is a cough?"}\n'
                   '{"instruction": "Define anemia.", "output": "Too few red blood cells."}\n')
    overrides = ["data=sft_chat", f"data.path={bad}", "trainer.max_steps=2", "trainer.progress_bar=false",
                 "data.batch_size=2", "export.enabled=false"]
    real_build = medlab.commands.train.build_model
    monkeypatch.setattr(medlab.commands.train, "build_model", lambda *a, **k: pytest.fail("the model loaded before the check"))
    with pytest.raises(ConfigError) as e:  # found by the up-front validation, before any model loads
        medlab.run(medlab.compose(None, overrides, run_dir=str(tmp_path / "a")))
    assert f"{bad} line 2: field 'output': missing 'output'" in str(e.value)
    monkeypatch.setattr(medlab.commands.train, "build_model", real_build)
    result = medlab.run(medlab.compose(None, overrides + ["data.on_bad_row=skip"], run_dir=str(tmp_path / "b")))
    assert result.metrics["data/train/kept"] + result.metrics["data/val/kept"] == 2  # sft_chat holds out a row
    assert sum(v for k, v in result.metrics.items() if k.startswith("data/train/bad_row")) == 1


def test_empty_data_file_is_a_config_problem(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = medlab.compose(None, ["data=sft_chat", f"data.path={empty}"], run_dir=str(tmp_path / "r"))
    problems = collect_problems(cfg)
    assert any("empty.jsonl" in p and "empty" in p.lower() for p in problems), problems
