"""QLoRA on CPUs with and without AVX512-BF16 (medlab.models.quant).

bitsandbytes repacks a ``Linear4bit`` weight in place into an inference-only layout the first time the layer
runs in eval mode under no_grad on a CPU with AVX512-BF16; afterwards the layer has no input gradient (the
adapters below it train on wrong gradients) and small layers crash. These tests catch that on any CPU:

1. every QLoRA experiment: a training step's gradients after a validation pass (and, for GRPO, after
   generation) equal those of an identical model that never ran one;
2. bitsandbytes' AVX512-BF16 decision forced on: the project's guard still holds (the kernel itself only
   runs on CPUs that have the instruction set);
3. every QLoRA experiment runs 2 steps with validation through ``medlab.run``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import EXPERIMENTS, compose, objective_family

import medlab

pytest.importorskip("bitsandbytes")
import bitsandbytes as bnb  # noqa: E402
import bitsandbytes.nn.modules as bnb_modules  # noqa: E402
from bitsandbytes.functional import has_avx512bf16  # noqa: E402

from medlab.models.quant import keep_trainable_layout, repacked_layers  # noqa: E402

CPU_HAS_AVX512_BF16 = bool(has_avx512bf16())
QLORA_EXPERIMENTS = [name for name in EXPERIMENTS if compose(name).adapter.get("quantize")]
# Seconds, not minutes: tiny random-init backbones where the experiment uses MiniLM, few rows, short generations.
FAST = {
    "causal": ["data.limit=8", "data.batch_size=4", "data.max_length=64"],
    "retrieval": ["model=tiny_llama", "data.limit=8", "data.val_limit=8", "data.batch_size=4",
                  "data.val_batch_size=8", "data.max_length=48"],
    "grpo": ["objective.num_generations=2", "objective.max_new_tokens=6", "objective.val_max_new_tokens=6",
             "data.batch_size=2", "data.val_batch_size=2", "data.limit=4", "data.val_limit=2",
             "objective.tools.search_text.k=1"],
}


def _overrides(experiment: str) -> list[str]:
    cfg = compose(experiment)
    fam = FAST[objective_family(cfg)]
    if not cfg.objective.get("tools"):
        fam = [o for o in fam if not o.startswith("objective.tools")]
    return fam + ["logger=none", "trainer.progress_bar=false"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


@pytest.fixture
def avx512_decision_on(monkeypatch):
    """bitsandbytes' AVX512-BF16 decision, as new ``Linear4bit`` layers read it, forced on (this CPU's answer
    is used as is where it already says yes, so the real kernel runs there)."""
    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


def _build(experiment: str, tmp_path: Path, seed: int = 0):
    """(module, data, cfg) for an experiment, built as the runner builds it (model + adapter + data + objective)."""
    from hydra.utils import instantiate

    from medlab.commands.train import build_model

    cfg = medlab.compose(experiment, _overrides(experiment), run_dir=str(tmp_path / "run"))
    torch.manual_seed(seed)
    model, tokenizer, _ = build_model(cfg)
    data = instantiate(cfg.data)
    data.setup(tokenizer)
    module = instantiate(cfg.objective, model=model, tokenizer=tokenizer)
    if objective_family(cfg) == "grpo":
        from medlab.evaluation import load_run

        module.bind_run_loader(load_run)  # agentic search tools load their bi-encoder run (as the runner does)
        module.on_fit_start()
    return module, data, cfg


def _batch(data, dataset, n: int):
    return data.collate([dataset[i] for i in range(min(n, len(dataset)))])


def _grads(module, batch) -> dict[str, torch.Tensor]:
    module.train()
    module.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # LoRA dropout
    out = module.training_step(batch, 0)
    loss = out["loss"] if isinstance(out, dict) else out
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in module.named_parameters() if p.grad is not None}
    module.zero_grad(set_to_none=True)
    return grads


def _validate_once(module, data) -> None:
    """What the loop's validation does to the model: eval mode, no_grad forwards over a validation batch."""
    val = data.val_dataset
    assert val is not None and len(val) > 0
    batch = _batch(data, val, 4)
    module.eval()
    for hook in ("on_validation_start", "on_validation_epoch_start"):
        if hasattr(module, hook):
            getattr(module, hook)()
    with torch.no_grad():
        module.validation_step(batch, 0)
    for hook in ("on_validation_epoch_end", "on_validation_end"):
        if hasattr(module, hook):
            getattr(module, hook)()
    module.train()


def _assert_same_grads(before: dict, after: dict) -> None:
    assert before and before.keys() == after.keys(), (sorted(before), sorted(after))
    lora_a = [n for n in before if "lora_A" in n]
    assert lora_a, "no LoRA A gradient: the adapters below the 4-bit layers get no gradient"
    for n in before:
        assert torch.equal(before[n], after[n]), f"{n}: max diff {(before[n] - after[n]).abs().max()}"


@pytest.mark.parametrize("experiment", QLORA_EXPERIMENTS)
def test_gradients_after_validation_and_generation_equal_those_before(tmp_path, experiment, avx512_decision_on):
    """Model A never runs an eval forward; its twin B validates (and, for GRPO, generates an experience) first.
    A training step on the same batch gives both exactly the same gradients."""
    a, data, cfg = _build(experiment, tmp_path / "a")
    b, _, _ = _build(experiment, tmp_path / "b")
    # Before any forward (with the decision forced on, a failed guard must not reach the kernel on a CPU
    # without the instruction set): the guard turned the repacking decision off on every 4-bit layer.
    layers = [m for m in b.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(m.support_avx512bf16_for_cpu for m in layers)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb), na  # deterministic twins

    _validate_once(b, data)
    if objective_family(cfg) == "grpo":
        torch.manual_seed(7)
        windows = b.make_experience(_batch(data, data.train_dataset, 2))  # generation + old/ref log-probs
        batch = windows[0][0]
    else:
        batch = _batch(data, data.train_dataset, 4)
    assert repacked_layers(b.model) == []
    _assert_same_grads(_grads(a, batch), _grads(b, batch))
    _validate_once(b, data)  # and again after a training step
    _assert_same_grads(_grads(a, batch), _grads(b, batch))
    assert repacked_layers(b.model) == []


def _linear4bit(out_features: int = 64, in_features: int = 64) -> torch.nn.Module:
    torch.manual_seed(0)
    dense = torch.nn.Linear(in_features, out_features, bias=False)
    layer = bnb.nn.Linear4bit(in_features, out_features, bias=False, quant_type="nf4", compute_dtype=torch.float32)
    layer.load_state_dict(dense.state_dict())
    return torch.nn.Sequential(layer.to("cpu"))


def _input_grad(model, x) -> torch.Tensor | None:
    x = x.detach().clone().requires_grad_(True)
    model.train()
    model(x).sum().backward()
    return x.grad


def test_guard_holds_with_the_avx512_bf16_decision_forced_on(tmp_path, avx512_decision_on):
    """The loader's guard turns bitsandbytes' repacking decision off on every 4-bit layer of a QLoRA model,
    whatever the CPU says; eval/no_grad forwards then leave every weight in the trainable layout."""
    from medlab.commands.train import build_model

    fresh = _linear4bit()
    assert fresh[0].support_avx512bf16_for_cpu is True  # the forced decision reaches new layers
    cfg = medlab.compose("sft_qlora", ["data.limit=8"], run_dir=str(tmp_path / "run"))
    model, tok, _ = build_model(cfg)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and all(m.support_avx512bf16_for_cpu is False for m in layers)
    # Only now may a kernel run: the guard holds, so the repacking kernel is never called on any CPU.
    ids = tok("Fever and cough for three days.", return_tensors="pt").input_ids
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    assert repacked_layers(model) == []


@pytest.mark.skipif(not CPU_HAS_AVX512_BF16, reason="the repacking kernel needs a CPU with AVX512-BF16")
def test_the_hazard_is_real_here_and_the_guard_undoes_a_repack():
    """On this CPU, an unguarded layer loses its input gradient after one no_grad eval forward; the guard
    converts the weight back and the gradient returns. bitsandbytes' inverse is lossy (the repack rounded the
    block scales to bf16), so it is close to the one before, not equal: prevention is the guard's real job."""
    model = _linear4bit()
    x = torch.randn(4, 64)
    before = _input_grad(model, x)
    model.eval()
    with torch.no_grad():
        model(x)
    assert repacked_layers(model) == ["0"]
    assert _input_grad(model, x) is None  # bitsandbytes' gemv_4bit path: no gradient w.r.t. the input
    assert keep_trainable_layout(model) == 1
    assert repacked_layers(model) == []
    after = _input_grad(model, x)
    assert after is not None
    assert (after - before).abs().max() <= 0.02 * before.abs().max()


def test_guard_is_a_no_op_without_4bit_layers():
    assert keep_trainable_layout(torch.nn.Sequential(torch.nn.Linear(4, 4))) == 0


@pytest.mark.parametrize("experiment", QLORA_EXPERIMENTS)
def test_qlora_experiment_runs_two_steps_with_validation(tmp_path, experiment):
    cfg = medlab.compose(experiment, _overrides(experiment) + [
        "trainer.max_steps=2", "trainer.val_every_n_steps=1", "trainer.limit_val_batches=1",
        "trainer.ckpt_every_n_steps=null", "export.enabled=false"], run_dir=str(tmp_path / "run"))
    result = medlab.run(cfg)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    assert any(k.startswith("val/") for k in metrics), sorted(metrics)
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))


def test_qlora_experiments_are_discovered():
    assert {"sft_qlora", "grpo_qlora", "biencoder_qlora", "reranker_llm_qlora"} <= set(QLORA_EXPERIMENTS)
