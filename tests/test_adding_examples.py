"""docs/ADDING.md's objective, reward and export-format examples run as written (the data-format examples are
tests/test_data_adding.py): the example objective satisfies the contract, registers, composes through its config
files and trains through the loop; the reward scores; the exporter round-trips a tiny model."""

from __future__ import annotations

import re
import sys
import types

import pytest
import torch
import yaml

import medlab
from medlab.contracts import Exporter, objective_problems

DOC = (medlab.ROOT_DIR / "docs" / "ADDING.md").read_text()


def _section(title: str) -> str:
    return DOC.split(f"## {title}", 1)[1].split("\n## ")[0]


def _blocks(title: str, lang: str) -> list[str]:
    return [_dedent(b) for b in re.findall(rf"```{lang}\n(.*?)```", _section(title), re.S)]


def _dedent(block: str) -> str:
    import textwrap

    return textwrap.dedent(block)


@pytest.fixture
def example_objective(monkeypatch, tmp_path):
    """The objective example as the importable module `medlab_example.margin_rank`, its conf files in a copy of
    conf/, and the registry restored afterwards."""
    import shutil

    from medlab.objectives import registry

    code = _blocks("Add an objective", "python")[0]
    mod = types.ModuleType("medlab_example_margin_rank")
    exec(code, mod.__dict__)
    monkeypatch.setitem(sys.modules, "medlab_example_margin_rank", mod)
    conf = tmp_path / "conf"
    shutil.copytree(medlab.CONF_DIR, conf)
    objective_yaml, experiment_yaml = _blocks("Add an objective", "yaml")[:2]
    (conf / "objective" / "margin_rank.yaml").write_text(
        objective_yaml.replace("medlab.objectives.margin_rank.MarginRank", "medlab_example_margin_rank.MarginRank"))
    (conf / "experiment" / "margin_rank.yaml").write_text(experiment_yaml)
    monkeypatch.setattr(registry, "REGISTRY", dict(registry.REGISTRY))
    return mod, conf


def test_the_example_objective_satisfies_the_contract(example_objective):
    mod, _ = example_objective
    assert objective_problems(mod.MarginRank) == []
    pos, neg = torch.tensor([[2.0], [0.0]]), torch.tensor([[1.5, -1.0], [0.5, 0.2]])
    # hand computation: relu(1 - 2 + 1.5)=0.5, relu(1 - 2 - 1)=0, relu(1 - 0 + 0.5)=1.5, relu(1 - 0 + 0.2)=1.2
    assert mod.margin_rank_loss(pos, neg, 1.0).item() == pytest.approx((0.5 + 0 + 1.5 + 1.2) / 4)


def test_the_example_objective_composes_validates_and_trains(example_objective, tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    _, conf = example_objective
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "+experiment=margin_rank", "model=tiny_bert", "data.limit=16", "data.val_limit=8", "data.max_length=48",
            "trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.ckpt_every_n_steps=null",
            "export.enabled=false", "logger=none", "trainer.progress_bar=false"])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.run_dir = str(tmp_path / "run")
    assert cfg.objective._target_ == "medlab_example_margin_rank.MarginRank" and cfg.objective.margin == 1.0
    assert cfg.data.task == "cross_encoder"  # from the objective's declared data_task
    result = medlab.run(cfg)
    assert result.metrics["status"] == "completed" and "val/loss" in result.metrics


def test_the_example_reward_scores_and_binds_its_options():
    from medlab.rl.rewards import RewardSet

    code = _blocks("Add a reward", "python")[0]
    mod = types.ModuleType("my_pkg_rewards")
    exec(code, mod.__dict__)
    sys.modules["my_pkg_rewards"] = mod
    try:
        rs = RewardSet.from_config({"guideline": {"_target_": "my_pkg_rewards.cites_guideline", "weight": 0.3,
                                                  "timeout_s": 5}})
        total, _, _ = rs(["q", "q"], ["Per the WHO guideline, rest.", "Drink water."])
        assert total.tolist() == pytest.approx([0.3, 0.0]) and rs.timeouts == {"guideline": 5}
    finally:
        del sys.modules["my_pkg_rewards"]


def test_the_example_exporter_round_trips_a_tiny_model(tmp_path):
    from transformers import AutoModelForCausalLM
    from helpers import tiny_llama

    code = _blocks("Add an export format", "python")[0]
    ns: dict = {}
    exec(code, ns)
    exporter = ns["HalfPrecision"]()
    assert isinstance(exporter, Exporter)
    cfg = yaml.safe_load("adapter: {kind: lora}")
    from omegaconf import OmegaConf

    assert exporter.problems(OmegaConf.create(cfg))  # refuses adapters
    model = tiny_llama()
    ids = torch.tensor([[5, 6, 7, 8]])
    expected = model(input_ids=ids).logits
    out = exporter.export(model, None, tmp_path / "fp16")
    reloaded = AutoModelForCausalLM.from_pretrained(str(out))
    assert reloaded.dtype == torch.float16
    torch.testing.assert_close(reloaded.float()(input_ids=ids).logits, expected, rtol=0, atol=2e-2)
