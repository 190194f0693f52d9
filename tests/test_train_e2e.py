"""Tiny end-to-end runs through medlab.run(): artifacts, learning, adapters, export."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_experiment

FAST = ["trainer.max_steps=12", "trainer.val_every_n_steps=6", "trainer.ckpt_every_n_steps=6",
        "trainer.log_every_n_steps=1", "trainer.progress_bar=false", "data.limit=64"]


def _run(tmp_path, experiment=None, overrides=()):
    return run_experiment(experiment, FAST + list(overrides), tmp_path / "run")


def _losses(result):
    return [h["train/loss"] for h in result.history if "train/loss" in h]


def test_default_run_writes_the_run_dir(tmp_path):
    result = _run(tmp_path, None, ["logger=csv"])
    d = result.run_dir
    assert (d / ".hydra" / "config.yaml").exists() and (d / "config_resolved.yaml").exists()
    assert list((d / "tensorboard").rglob("events.out.tfevents.*"))
    header = (d / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "step" in header and "train/loss" in header and "val/loss" in header
    assert (d / "checkpoints" / "step-00000012" / "COMPLETE").exists()
    metrics = json.loads((d / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 12
    assert metrics["objective"] == pytest.approx(float(result))
    assert "val/loss" in metrics and "val/ppl" in metrics
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(d / "export")
    tok = AutoTokenizer.from_pretrained(d / "export")
    out = model(**tok("Fever and cough", return_tensors="pt"))
    assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("experiment,extra", [("sft", []), ("sft", ["data.packing=true"]), ("cpt", []),
                                              ("sft_toolcall", ["data.limit=96"])])
def test_loss_decreases(tmp_path, experiment, extra):
    result = _run(tmp_path, experiment, ["trainer.max_steps=30", "data.limit=null", "objective.warmup_ratio=0", *extra])
    losses = _losses(result)
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses


def _params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("experiment", ["sft_lora", "sft_qlora"])
def test_adapters_train_only_adapter_weights(tmp_path, monkeypatch, experiment):
    """TRL's test: every trainable parameter changed, every frozen one did not (QLoRA: 4-bit base on CPU)."""
    import medlab.commands.train as R

    seen, original = {}, R.Loop.fit

    def fit(self, module, *a, **k):
        seen["before"] = _params(module.model)
        out = original(self, module, *a, **k)
        seen["after"] = _params(module.model)
        seen["trainable"] = {n for n, p in module.model.named_parameters() if p.requires_grad}
        return out

    monkeypatch.setattr(R.Loop, "fit", fit)
    result = _run(tmp_path, experiment)
    before, after, trainable = seen["before"], seen["after"], seen["trainable"]
    assert trainable and all("lora_" in n for n in trainable)
    for n in before:
        changed = not torch.equal(before[n], after[n])
        assert changed == (n in trainable), f"{n}: changed={changed}, trainable={n in trainable}"
    assert (result.run_dir / "export" / "adapter_config.json").exists()
    if experiment == "sft_qlora":
        assert any(p.dtype == torch.uint8 for p in before.values())  # the base really is 4-bit


def test_lora_export_reloads_and_merge_matches(tmp_path):
    """RELIABILITY 8: the exported adapter reloads to the same outputs, and the merged model equals it."""
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM

    result = _run(tmp_path, "sft_lora", ["export.merge_lora=true", "trainer.max_steps=6"])
    d = result.run_dir
    adapter = AutoPeftModelForCausalLM.from_pretrained(d / "export").eval()
    merged = AutoModelForCausalLM.from_pretrained(d / "export_merged").eval()
    ids = torch.tensor([[5, 17, 230, 99, 4000, 12]])
    with torch.no_grad():
        a, m = adapter(input_ids=ids).logits, merged(input_ids=ids).logits
        with adapter.disable_adapter():
            b = adapter(input_ids=ids).logits
    torch.testing.assert_close(m, a, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a, b, atol=1e-4)  # the adapter is not a no-op after training


def test_local_hf_model_from_a_previous_export_with_dora(tmp_path):
    """model=local_hf loads any HF dir (here: a tiny run's export) and adapter=dora trains on it."""
    first = _run(tmp_path / "a", "sft", ["trainer.max_steps=4"])
    result = _run(tmp_path / "b", "sft_lora", ["model=local_hf", f"model.path={first.run_dir / 'export'}",
                                               "adapter=dora", "adapter.r=4", "trainer.max_steps=4"])
    assert result.metrics["status"] == "completed"
    import json as _json

    cfg = _json.loads((result.run_dir / "export" / "adapter_config.json").read_text())
    assert cfg["use_dora"] is True and cfg["base_model_name_or_path"] == str(first.run_dir / "export")


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_on_cpu_trains(tmp_path, precision):
    result = _run(tmp_path, "sft", [f"strategy.precision={precision}", "trainer.max_steps=20",
                                    "objective.warmup_ratio=0"])
    losses = _losses(result)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
