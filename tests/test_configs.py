"""Every experiment composes and instantiates; bad configs fail up front with every problem listed."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

import medlab
from medlab.config import ConfigError, collect_problems, redact

EXPERIMENTS = sorted(p.stem for p in (medlab.CONF_DIR / "experiment").glob("*.yaml"))


def test_expected_experiments_exist():
    assert {"cpt", "sft", "sft_lora", "sft_qlora", "sft_toolcall"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", [None] + EXPERIMENTS)
def test_experiment_composes_validates_and_instantiates(experiment, tmp_path):
    cfg = medlab.compose(experiment, run_dir=str(tmp_path))
    assert collect_problems(cfg) == []
    adapter = instantiate(cfg.adapter)
    assert adapter.kind in ("none", "lora", "dora")
    data = instantiate(cfg.data)
    assert data.validate() == []
    assert callable(instantiate(cfg.model))
    for name, lcfg in cfg.logger.items():
        assert instantiate(lcfg) is not None, name
    if experiment:
        assert cfg.name == experiment


def test_every_config_group_option_composes(tmp_path):
    for group in ("model", "adapter", "data", "strategy", "logger"):
        for option in sorted(p.stem for p in (medlab.CONF_DIR / group).glob("*.yaml")):
            cfg = medlab.compose(None, [f"{group}={option}"], run_dir=str(tmp_path))
            assert OmegaConf.select(cfg, group) is not None, (group, option)


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
    import medlab.runner

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "What is fever?", "output": "A raised body temperature."}\n'
                   '{"instruction": "What is a cough?"}\n'
                   '{"instruction": "Define anemia.", "output": "Too few red blood cells."}\n')
    overrides = ["data=sft_chat", f"data.path={bad}", "trainer.max_steps=2", "trainer.progress_bar=false",
                 "data.batch_size=2", "export.enabled=false"]
    real_build = medlab.runner.build_model
    monkeypatch.setattr(medlab.runner, "build_model", lambda *a, **k: pytest.fail("the model loaded before the check"))
    with pytest.raises(ConfigError) as e:  # found by the up-front validation, before any model loads
        medlab.run(medlab.compose(None, overrides, run_dir=str(tmp_path / "a")))
    assert f"{bad} line 2: field 'output': missing 'output'" in str(e.value)
    monkeypatch.setattr(medlab.runner, "build_model", real_build)
    result = medlab.run(medlab.compose(None, overrides + ["data.on_bad_row=skip"], run_dir=str(tmp_path / "b")))
    assert result.metrics["data/train/kept"] + result.metrics["data/val/kept"] == 2  # sft_chat holds out a row
    assert sum(v for k, v in result.metrics.items() if k.startswith("data/train/bad_row")) == 1


def test_empty_data_file_is_a_config_problem(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = medlab.compose(None, ["data=sft_chat", f"data.path={empty}"], run_dir=str(tmp_path / "r"))
    problems = collect_problems(cfg)
    assert any("empty.jsonl" in p and "empty" in p.lower() for p in problems), problems
