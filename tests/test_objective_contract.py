"""The objective contract suite: every registered objective (medlab.objectives.registry) gets the same guarantees.

For each one, on its registered tiny experiment:
1. it satisfies medlab.contracts.Objective and trains 2 steps through the loop with validation;
2. micro-batches give the big batch's gradients (accumulation, GradCache or GRPO micro-batches, as registered);
3. a run resumed from its step-2 checkpoint reproduces the uninterrupted run's steps 3 and 4 exactly;
4. the export reloads with transformers / peft and computes what the trained model computes.

A new objective gets these tests by registering an ObjectiveSpec; nothing here names an objective.
"""

from __future__ import annotations

import json

import pytest
import torch
from hydra.utils import get_class

import medlab
from medlab.objectives.registry import REGISTRY

SPECS = list(REGISTRY.values())
IDS = [s.name for s in SPECS]


class GradRecorder:
    """A Fabric callback: the gradients the optimizer sees at the first step (after clipping), by parameter order."""

    def __init__(self):
        self.grads: list[torch.Tensor] | None = None

    def on_before_optimizer_step(self, optimizer):
        if self.grads is None:
            self.grads = [p.grad.detach().clone() for g in optimizer.param_groups for p in g["params"]
                          if p.grad is not None]


def _run(spec, tmp_path, extra, name="run", callbacks=None):
    cfg = medlab.compose(spec.experiment, [*spec.overrides, *extra], run_dir=str(tmp_path / name))
    return medlab.run(cfg, callbacks=callbacks)


def _losses(result) -> dict[int, float]:
    return {h["step"]: h["train/loss"] for h in result.history if "train/loss" in h}


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_objective_satisfies_the_contract_and_trains_through_the_loop(spec, tmp_path):
    from medlab.contracts import objective_problems

    cls = get_class(spec.target)
    assert objective_problems(cls) == []
    assert cls.head in ("causal_lm", "embed", "score") and cls.eval_task in ("qa", "retrieval", "rerank", "preference")
    cfg = medlab.compose(spec.experiment, list(spec.overrides), run_dir=str(tmp_path / "x"))
    assert cfg.objective._target_ == spec.target  # the registered experiment trains this objective
    result = _run(spec, tmp_path, ["trainer.max_steps=2", "trainer.val_every_n_steps=2", "export.enabled=false",
                                   *spec.big_batch])
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    assert sorted(_losses(result)) == [1, 2] and all(torch.isfinite(torch.tensor(v)) for v in _losses(result).values())
    assert any(k.startswith("val/") for k in metrics), sorted(metrics)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_micro_batches_give_the_big_batch_gradients(spec, tmp_path):
    grads = {}
    for kind, extra in (("big", spec.big_batch), ("micro", spec.micro_batches)):
        rec = GradRecorder()
        _run(spec, tmp_path, ["trainer.max_steps=1", "export.enabled=false", "trainer.save_final_checkpoint=false",
                              "trainer.gradient_clip_val=null", *extra], name=kind, callbacks=[rec])
        grads[kind] = rec.grads
    big, micro = grads["big"], grads["micro"]
    assert big and len(big) == len(micro)
    assert any(g.abs().max() > 0 for g in big)
    for a, b in zip(big, micro):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(spec, tmp_path):
    steps = ["trainer.max_steps=4", "trainer.ckpt_every_n_steps=2", "export.enabled=false", *spec.big_batch]
    whole = _run(spec, tmp_path, steps, name="whole")
    ckpt = whole.run_dir / "checkpoints" / "step-00000002"
    assert (ckpt / "COMPLETE").exists()
    resumed = _run(spec, tmp_path, [*steps, f"trainer.resume={ckpt}"], name="resumed")
    a, b = _losses(whole), _losses(resumed)
    assert sorted(b) == [3, 4], b
    assert [a[3], a[4]] == [b[3], b[4]]  # bit-exact: same batches, RNG, optimizer and scheduler state


def _outputs(model, head: str, inputs: dict) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    return out.last_hidden_state if head == "embed" else out.logits


def _load_export(export_dir, head: str):
    if (export_dir / "adapter_config.json").exists():
        from peft import AutoPeftModel, AutoPeftModelForCausalLM, AutoPeftModelForSequenceClassification

        cls = {"causal_lm": AutoPeftModelForCausalLM, "embed": AutoPeftModel,
               "score": AutoPeftModelForSequenceClassification}[head]
    else:
        from medlab.models.backbone import auto_class

        cls = auto_class(head)
    return cls.from_pretrained(str(export_dir))


@pytest.mark.parametrize("spec", SPECS, ids=IDS)
def test_export_reloads_and_computes_what_the_trained_model_computes(spec, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from medlab.commands import train as runner

    trained = {}
    original = runner.Loop.fit

    def fit(self, module, *args, **kwargs):
        out = original(self, module, *args, **kwargs)
        trained["model"] = module.model
        return out

    monkeypatch.setattr(runner.Loop, "fit", fit)
    result = _run(spec, tmp_path, ["trainer.max_steps=2", "export.enabled=true", *spec.big_batch])
    export = result.run_dir / "export"
    tok = AutoTokenizer.from_pretrained(str(export))
    inputs = dict(tok(["Fever and cough for three days.", "高血压患者应注意什么？"], return_tensors="pt", padding=True))
    if spec.export_head != "embed":  # decoders and the score head take no token types
        inputs.pop("token_type_ids", None)
    expected = _outputs(trained["model"], spec.export_head, inputs)
    got = _outputs(_load_export(export, spec.export_head), spec.export_head, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_every_shipped_objective_config_is_registered():
    from pathlib import Path

    from omegaconf import OmegaConf

    targets = {OmegaConf.load(f).get("_target_") for f in (Path(medlab.CONF_DIR) / "objective").glob("*.yaml")}
    assert targets <= {s.target for s in SPECS}, targets - {s.target for s in SPECS}


# ---------------------------------------------------------------------------------------------- FSDP2 (2 processes)
FSDP_SPECS = [s for s in SPECS if s.fsdp]


@pytest.fixture(scope="module")
def fsdp_runs(tmp_path_factory):
    """Every FSDP-capable objective trained 2 steps with strategy=fsdp on 2 CPU processes (gloo), two objectives
    at a time; a sharded checkpoint at step 2 and the export gathered from the shards."""
    from test_distributed_fsdp import finish, start

    from medlab.config.validate import collect_problems

    tmp = tmp_path_factory.mktemp("contract_fsdp")
    dirs: dict = {}
    runnable = []
    for spec in FSDP_SPECS:
        overrides = [*spec.overrides, *spec.big_batch, "strategy=fsdp", "strategy.accelerator=cpu",
                     "strategy.devices=2", "trainer.max_steps=2", "trainer.ckpt_every_n_steps=2", "export.enabled=true"]
        problems = collect_problems(medlab.compose(spec.experiment, overrides, run_dir=str(tmp / "probe")))
        if problems:  # reported by that objective's test, not run
            dirs[spec.name] = problems
        else:
            runnable.append((spec, overrides))
    for i in range(0, len(runnable), 2):
        trees = []
        for spec, overrides in runnable[i:i + 2]:
            tree, dirs[spec.name] = start(tmp, spec.name, overrides, experiment=spec.experiment)
            trees.append(tree)
        finish(*trees)
    return dirs


@pytest.mark.parametrize("spec", [s for s in SPECS if not s.fsdp], ids=[s.name for s in SPECS if not s.fsdp])
def test_an_objective_without_fsdp_is_refused_under_fsdp_by_validation(spec, tmp_path):
    from medlab.config.validate import collect_problems

    cfg = medlab.compose(spec.experiment, [*spec.overrides, "strategy=fsdp", "strategy.accelerator=cpu",
                                           "strategy.devices=2"], run_dir=str(tmp_path / "x"))
    problems = collect_problems(cfg)
    assert any("fsdp" in p.lower() for p in problems), problems


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("spec", FSDP_SPECS, ids=[s.name for s in FSDP_SPECS])
def test_fsdp_two_processes_train_checkpoint_sharded_and_export_the_gathered_weights(spec, fsdp_runs):
    """strategy=fsdp: 2 steps with finite losses, a sharded checkpoint, and an export that computes what the sharded
    checkpoint (consolidated into one process by medlab.evaluation.load_run) computes."""
    from transformers import AutoTokenizer

    from medlab.evaluation import load_run

    run_dir = fsdp_runs[spec.name]
    if isinstance(run_dir, list):
        pytest.fail(f"{spec.name} is registered with fsdp=True, but config validation refuses strategy=fsdp: {run_dir}. "
                    "Register it with fsdp=False (ObjectiveSpec) or drop the refusal.")
    losses = {row["step"]: row["train/loss"] for row in json.loads((run_dir / "history.json").read_text())}
    assert sorted(losses) == [1, 2] and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    ckpt = run_dir / "checkpoints" / "step-00000002"
    assert json.loads((ckpt / "COMPLETE").read_text())["format"] == "sharded"
    _, module, _ = load_run(str(run_dir), checkpoint="latest", device="cpu")
    export = run_dir / "export"
    tok = AutoTokenizer.from_pretrained(str(export))
    inputs = dict(tok(["Fever and cough for three days.", "高血压患者应注意什么？"], return_tensors="pt", padding=True))
    if spec.export_head != "embed":
        inputs.pop("token_type_ids", None)
    expected = _outputs(module.model, spec.export_head, inputs)
    got = _outputs(_load_export(export, spec.export_head), spec.export_head, inputs)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
