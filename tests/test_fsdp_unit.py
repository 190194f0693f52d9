"""FSDP2 pieces without processes: block discovery, precision policy, the sharded checkpoint format (DCP written and
read in one process), and config validation for the sharded strategies. The 2-process runs are in
tests/test_distributed_fsdp.py."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import medlab
from medlab.engine import checkpoint as ckpt
from medlab.engine.fsdp import find_blocks, mp_policy

pytestmark = pytest.mark.usefixtures("one_thread")


def _tiny(source: str = "tiny_llama", adapter: str = "none"):
    from medlab.models.build import build_model

    cfg = medlab.compose(None, [f"model={source}", f"adapter={adapter}"], run_dir="/tmp/unused")
    return build_model(cfg)[0]


@pytest.mark.parametrize("model, adapter, blocks, kind", [
    ("tiny_llama", "none", 2, "LlamaDecoderLayer"), ("tiny_llama", "lora", 2, "LlamaDecoderLayer"),
    ("tiny_qwen2", "none", 2, "Qwen2DecoderLayer"), ("tiny_bert", "none", 2, "BertLayer")])
def test_blocks_are_found_from_the_model_through_adapters(model, adapter, blocks, kind):
    found = find_blocks(_tiny(model, adapter))
    assert len(found) == blocks and {type(b).__name__ for b in found} == {kind}


def test_only_the_outermost_homogeneous_lists_are_blocks():
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.experts = nn.ModuleList(nn.Linear(2, 2) for _ in range(3))  # nested: stays inside its block

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(Block() for _ in range(4))
            self.mixed = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])  # not homogeneous: not blocks
            self.empty = nn.ModuleList(nn.ReLU() for _ in range(2))  # no parameters: not blocks

    found = find_blocks(Net())
    assert len(found) == 4 and all(isinstance(b, Block) for b in found)


def test_precision_policy_bf16_on_gpu_fp32_on_cpu():
    assert mp_policy("auto", "cuda").param_dtype == torch.bfloat16
    assert mp_policy("auto", "cuda").reduce_dtype == torch.float32
    assert mp_policy("auto", "cpu").param_dtype is None  # fp32: the parameters' own dtype
    assert mp_policy("bf16", "cpu").param_dtype == torch.bfloat16
    assert mp_policy("fp32", "cuda").param_dtype is None


def _model_and_optimizer(seed: int):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    model[0].bias.requires_grad_(False)  # a frozen parameter is not saved
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched


def _train(model, opt, sched, steps: int):
    g = torch.Generator().manual_seed(3)
    for _ in range(steps):
        model(torch.randn(5, 4, generator=g)).pow(2).mean().backward()
        opt.step()
        opt.zero_grad()
        sched.step()


def test_sharded_format_round_trips_in_one_process(tmp_path):
    """The sharded layout (DCP shards + metadata + state.pt + RNG + COMPLETE listing them) written and read without
    a process group: weights, AdamW state, scheduler, loop state and RNG come back exactly."""
    model, opt, sched = _model_and_optimizer(0)
    _train(model, opt, sched, 3)
    path = ckpt.save_checkpoint(tmp_path, 3, model=model, optimizer=opt, scheduler=sched,
                                loop_state={"global_step": 3}, sharded=True)
    marker = json.loads((path / "COMPLETE").read_text())
    assert marker["format"] == "sharded" and {".metadata", "__0_0.distcp", "state.pt", "rng-rank0.pt"} <= set(
        marker["files"])
    assert ckpt.is_sharded_checkpoint(path) and ckpt.latest_checkpoint(tmp_path) == path
    expected = torch.rand(3)  # the RNG right after the save

    fresh, fresh_opt, fresh_sched = _model_and_optimizer(1)
    frozen_before = fresh[0].bias.detach().clone()
    loop = ckpt.load_checkpoint(path, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)
    assert loop == {"global_step": 3}
    assert torch.equal(torch.rand(3), expected)
    assert torch.equal(fresh[0].bias, frozen_before)  # frozen: not in the checkpoint, left as built
    for a, b in zip(model.parameters(), fresh.parameters()):
        if a.requires_grad:
            assert torch.equal(a, b)
    assert fresh_sched.state_dict()["last_epoch"] == 3
    # the next steps are the same: the AdamW moments and step counts were restored (a real run rebuilds the frozen
    # weights as they were: copy them here)
    with torch.no_grad():
        fresh[0].bias.copy_(model[0].bias)
    _train(model, opt, sched, 2)
    _train(fresh, fresh_opt, fresh_sched, 2)
    for a, b in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(a, b)


def test_sharded_checkpoint_loads_for_inference_and_refuses_a_mismatch(tmp_path):
    model, opt, sched = _model_and_optimizer(0)
    _train(model, opt, sched, 1)
    path = ckpt.save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, loop_state={}, sharded=True)
    fresh, _, _ = _model_and_optimizer(1)
    ckpt.load_trainable(fresh, path)
    assert torch.equal(fresh[2].weight, model[2].weight)
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 5))  # a different head
    with pytest.raises(ckpt.CheckpointError, match="does not fit|size|shape"):
        ckpt.load_trainable(other, path)


def test_a_sharded_checkpoint_missing_a_shard_is_not_complete(tmp_path):
    model, opt, sched = _model_and_optimizer(0)
    _train(model, opt, sched, 1)
    path = ckpt.save_checkpoint(tmp_path, 1, model=model, optimizer=opt, scheduler=sched, loop_state={}, sharded=True)
    (path / "__0_0.distcp").unlink()
    assert not ckpt.is_complete(path) and ckpt.latest_checkpoint(tmp_path) is None
    with pytest.raises(ckpt.CheckpointError, match="__0_0.distcp is missing"):
        ckpt.load_trainable(model, path)


def _problems(overrides):
    from medlab.config.validate import collect_problems

    return collect_problems(medlab.compose(None, overrides, run_dir="/tmp/unused"))


def test_fsdp_on_cpu_validates_with_checkpoints_and_export():
    assert not [p for p in _problems(["strategy=fsdp", "strategy.accelerator=cpu", "strategy.devices=2"])
                if "strateg" in p or "fsdp" in p.lower()]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only messages")
def test_sharded_strategy_problems_are_clear():
    assert any("strategy.accelerator=cpu strategy.devices=N" in p for p in _problems(["strategy=fsdp"]))
    bad = _problems(["strategy=fsdp", "strategy.accelerator=cpu", "strategy.devices=2",
                     "strategy.options.mixed_precision=fp8"])
    assert any("strategy.options.mixed_precision='fp8'" in p for p in bad), bad
    ds = _problems(["strategy=deepspeed_zero2"])
    assert any("untested" in p and "trainer.ckpt_every_n_steps=null" in p for p in ds), ds
    qlora = _problems(["+experiment=sft_qlora", "strategy=fsdp", "strategy.accelerator=cpu", "strategy.devices=2"])
    assert any("cannot be combined with strategy=fsdp" in p for p in qlora), qlora
    grpo = _problems(["+experiment=grpo", "strategy=fsdp", "strategy.accelerator=cpu", "strategy.devices=2"])
    assert any("fsdp" in p.lower() and "strategy=ddp" in p for p in grpo), grpo
