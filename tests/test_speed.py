"""Speed switches (trainer.activation_checkpointing, trainer.compile, objective.loss_impl): same losses, less memory."""

from __future__ import annotations

import pytest
import torch

import medlab
from medlab.config import ConfigError
from medlab.models.speed import (
    apply_activation_checkpointing,
    compile_model,
    transformer_blocks,
)
from medlab.objectives.causal_lm import CausalLM
from tests.helpers import pad_collate, tiny_llama, toy_examples

FAST = ["trainer.max_steps=3", "trainer.val_every_n_steps=null", "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false", "trainer.save_final_checkpoint=false", "trainer.ckpt_every_n_steps=null",
        "export.enabled=false", "logger=none", "data.limit=48"]


def _step(model: torch.nn.Module, batch: dict) -> tuple[float, int, dict]:
    """Loss, total elements saved for backward, and every parameter's gradient of one training step."""
    module = CausalLM(model, mode="sft")
    sizes: list[int] = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = module.training_step(batch, 0)["loss"]
    loss.backward()
    return float(loss.detach()), sum(sizes), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("every,expected", [(True, 4), (2, 2)])
def test_activation_checkpointing_same_gradients_fewer_saved_activations(every, expected):
    batch = pad_collate(toy_examples(6, vocab=512))
    base_loss, base_saved, base_grads = _step(tiny_llama(vocab=512, layers=4), batch)
    model = tiny_llama(vocab=512, layers=4)
    assert apply_activation_checkpointing(model, every) == expected
    assert [bool(b.gradient_checkpointing) for b in transformer_blocks(model)] == (
        [True] * 4 if every is True else [True, False, True, False])
    loss, saved, grads = _step(model, batch)
    assert loss == base_loss
    for name, g in base_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=0, atol=1e-7, msg=name)
    assert saved < base_saved * (0.2 if every is True else 0.7)  # measured: 0.10x and 0.55x


def test_activation_checkpointing_off_and_unsupported():
    model = tiny_llama(vocab=512)
    assert apply_activation_checkpointing(model, False) == 0
    assert not any(b.gradient_checkpointing for b in transformer_blocks(model))
    with pytest.raises(ValueError, match="does not support"):
        apply_activation_checkpointing(torch.nn.Linear(2, 2), True)


def test_compile_blocks_same_loss_and_gradients():
    """aot_eager traces the same graphs inductor compiles (fast here); inductor itself is the slow test below."""
    batch = pad_collate(toy_examples(6, vocab=512))
    base_loss, _, base_grads = _step(tiny_llama(vocab=512, layers=2), batch)
    model = tiny_llama(vocab=512, layers=2)
    assert compile_model(model, backend="aot_eager") == 2
    assert all(b._compiled_call_impl is not None for b in transformer_blocks(model))
    assert list(model.state_dict()) == list(tiny_llama(vocab=512, layers=2).state_dict())  # names unchanged
    loss, _, grads = _step(model, batch)
    assert loss == pytest.approx(base_loss, abs=1e-6)
    for name, g in base_grads.items():
        torch.testing.assert_close(grads[name], g, rtol=1e-5, atol=1e-6, msg=name)


def _losses(result) -> list[float]:
    return [h["train/loss"] for h in result.history if "train/loss" in h]


def test_run_with_speed_switches_equals_plain_run(tmp_path):
    """Through medlab.run: compile + selective checkpointing + full-logits loss give the plain run's losses."""
    plain = medlab.run(medlab.compose("sft", FAST, run_dir=str(tmp_path / "plain")))
    fast = medlab.run(medlab.compose("sft", FAST + ["trainer.compile=true", "trainer.compile_backend=aot_eager",
                                                    "trainer.activation_checkpointing=1"],
                                     run_dir=str(tmp_path / "fast")))
    full = medlab.run(medlab.compose("sft", FAST + ["objective.loss_impl=full"], run_dir=str(tmp_path / "full")))
    assert len(_losses(plain)) == 3
    assert _losses(fast) == pytest.approx(_losses(plain), abs=1e-5)
    assert _losses(full) == pytest.approx(_losses(plain), abs=1e-5)
    assert fast.metrics["val/loss"] == pytest.approx(plain.metrics["val/loss"], abs=1e-5)
    assert full.metrics["val/token_acc"] == pytest.approx(plain.metrics["val/token_acc"])


def test_speed_switches_are_validated_up_front(tmp_path):
    cfg = medlab.compose("sft", FAST + ["trainer.activation_checkpointing=0", "trainer.compile=yes",
                                        "objective.loss_impl=fused", "trainer.compile_mode=fastest"],
                         run_dir=str(tmp_path / "bad"))
    with pytest.raises(ConfigError) as e:
        medlab.run(cfg)
    text = str(e.value)
    for key in ("activation_checkpointing", "trainer.compile must", "loss_impl", "compile_mode"):
        assert key in text


@pytest.mark.slow
def test_inductor_compile_same_losses(tmp_path):
    plain = medlab.run(medlab.compose("sft", FAST, run_dir=str(tmp_path / "plain")))
    compiled = medlab.run(medlab.compose("sft", FAST + ["trainer.compile=true"], run_dir=str(tmp_path / "c")))
    assert _losses(compiled) == pytest.approx(_losses(plain), abs=1e-4)


def test_precision_auto_is_bf16_on_a_bf16_gpu_and_fp32_elsewhere(monkeypatch):
    from medlab.commands.train import resolve_precision

    assert resolve_precision("32-true", "cuda") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "auto") == "bf16-mixed" and resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # e.g. a V100
    assert resolve_precision("auto", "cuda") == "32-true"


def test_flops_per_token_is_palm_formula():
    from medlab.objectives.causal_lm import palm_flops_per_token

    model = tiny_llama(vocab=512, hidden=32, layers=2)  # 4 heads of dim 8
    module = CausalLM(model, mode="sft")
    n = sum(p.numel() for name, p in model.named_parameters() if "embed" not in name)
    assert module.flops_per_token() == 6 * n  # no sequence length known: no attention term
    module.flops_seq_len = 256
    assert module.flops_per_token() == 6 * n + 12 * 2 * 4 * 8 * 256
    assert palm_flops_per_token(10, None, 128) == 60
