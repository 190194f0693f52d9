"""Checkpoints: atomic, pickle-free, exact round trip (RELIABILITY.md items 1, 3, 4, 8 and Security)."""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_llama
from safetensors.torch import load_file
from torch import nn

from medlab.engine.checkpoint import (
    CheckpointError,
    ckpt_dir_has_checkpoints,
    is_complete,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
    trainable_state_dict,
)
from medlab.engine.rng import capture_rng, restore_rng

REPO_ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# helpers


def make_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3))


def make_training(model: nn.Module):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1 + s))
    return optimizer, scheduler


def train_steps(model, optimizer, scheduler, steps: int) -> None:
    for _ in range(steps):
        loss = model(torch.randn(5, 4)).pow(2).mean()
        loss.backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()


def save(root, step, model, loop_state=None, **kwargs) -> Path:
    optimizer, scheduler = kwargs.pop("optimizer", None), kwargs.pop("scheduler", None)
    if optimizer is None:
        optimizer, scheduler = make_training(model)
    return save_checkpoint(
        root,
        step,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        loop_state=loop_state if loop_state is not None else {"step": step},
        **kwargs,
    )


def rerecord_sizes(ckpt: Path) -> None:
    """Update COMPLETE after a test tampered with a file, so only the tampering itself is under test."""
    marker = json.loads((ckpt / "COMPLETE").read_text())
    marker["files"] = {name: (ckpt / name).stat().st_size for name in marker["files"]}
    (ckpt / "COMPLETE").write_text(json.dumps(marker))


def draw_randoms() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3).tolist())


def tiny_lora():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(tiny_llama(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))


# ----------------------------------------------------------------------------------------------
# round trip


def test_round_trip_restores_weights_optimizer_scheduler_loop_state_and_rng(tmp_path):
    model = make_mlp()
    optimizer, scheduler = make_training(model)
    train_steps(model, optimizer, scheduler, 2)
    loop_state = {
        "step": 2,
        "micro_batches": 4,
        "sampler": {"epoch": 1, "position": 10, "ids": [3, 1, 2]},
        "loss_ema": 0.25,
        "tag": "x",
        "t": torch.arange(3),
    }

    ckpt = save_checkpoint(
        tmp_path / "checkpoints", 2, model=model, optimizer=optimizer, scheduler=scheduler, loop_state=loop_state
    )
    after_save = draw_randoms()

    assert ckpt == tmp_path / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in ckpt.iterdir()) == ["COMPLETE", "model.safetensors", "rng-rank0.pt", "state.pt"]
    marker = json.loads((ckpt / "COMPLETE").read_text())
    assert marker["step"] == 2 and marker["world_size"] == 1
    assert marker["files"] == {p.name: p.stat().st_size for p in ckpt.iterdir() if p.name != "COMPLETE"}

    fresh = make_mlp(seed=1)
    fresh_opt, fresh_sched = make_training(fresh)
    draw_randoms()  # move every generator on, so restoring is what brings them back
    restored = load_checkpoint(ckpt, model=fresh, optimizer=fresh_opt, scheduler=fresh_sched)

    assert draw_randoms() == after_save
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name
    saved_opt, loaded_opt = optimizer.state_dict(), fresh_opt.state_dict()
    assert saved_opt["param_groups"] == loaded_opt["param_groups"]
    for i, state in saved_opt["state"].items():
        for key, value in state.items():
            assert torch.equal(value, loaded_opt["state"][i][key]), (i, key)
    assert fresh_sched.last_epoch == scheduler.last_epoch == 2
    assert fresh_sched.get_last_lr() == scheduler.get_last_lr()
    assert restored.keys() == loop_state.keys()
    assert torch.equal(restored.pop("t"), loop_state["t"])
    assert restored == {k: v for k, v in loop_state.items() if k != "t"}

    # continuing both runs gives identical numbers (dropout and data draw from the restored RNG)
    restore_rng(torch.load(ckpt / "rng-rank0.pt", weights_only=True))
    train_steps(model, optimizer, scheduler, 2)
    restore_rng(torch.load(ckpt / "rng-rank0.pt", weights_only=True))
    train_steps(fresh, fresh_opt, fresh_sched, 2)
    for p, q in zip(model.parameters(), fresh.parameters()):
        assert torch.equal(p, q)


def test_rng_state_is_plain_tensors_and_round_trips():
    random.gauss(0, 1)  # leave a cached gaussian in python's generator
    np.random.standard_normal()
    state = capture_rng()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    expected = draw_randoms()
    restore_rng(state)
    assert draw_randoms() == expected


def test_every_file_loads_with_weights_only(tmp_path):
    ckpt = save(tmp_path, 1, make_mlp())
    for name in ("state.pt", "rng-rank0.pt"):
        torch.load(ckpt / name, weights_only=True)


def test_loop_state_that_would_not_load_safely_is_refused_at_save_time(tmp_path):
    with pytest.raises(CheckpointError, match=r"state\['loop'\]\['position'\].*numpy"):
        save(tmp_path, 1, make_mlp(), loop_state={"position": np.int64(3)})
    assert list_checkpoints(tmp_path) == []


# ----------------------------------------------------------------------------------------------
# weights: LoRA, tied parameters, mismatches


def test_lora_checkpoint_holds_only_adapters_and_reloads_exactly(tmp_path):
    model = tiny_lora()
    adapters = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(adapters) == 2 * 2 * 2  # layers x (q_proj, v_proj) x (lora_A, lora_B)
    with torch.no_grad():
        for i, p in enumerate(adapters.values()):
            p.copy_(torch.linspace(-1, 1, p.numel()).reshape(p.shape) * (i + 1))
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    expected = {n: p.detach().clone() for n, p in adapters.items()}
    tokens = torch.randint(0, 128, (2, 7))
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=tokens).logits

    ckpt = save(tmp_path, 5, model)
    saved = load_file(ckpt / "model.safetensors")
    assert set(saved) == set(adapters)
    assert all("lora_" in name for name in saved)

    with torch.no_grad():
        for p in adapters.values():
            p.zero_()
    load_checkpoint(ckpt, model=model)

    for name, p in model.named_parameters():
        assert torch.equal(p, expected[name] if p.requires_grad else base[name]), name
    with torch.no_grad():
        assert torch.equal(model(input_ids=tokens).logits, logits)
        merged = model.merge_and_unload()(input_ids=tokens).logits
    torch.testing.assert_close(merged, logits, rtol=1e-5, atol=1e-5)


def test_full_finetune_saves_every_parameter_once_even_when_tied(tmp_path):
    model = tiny_llama()
    model.config.tie_word_embeddings = True
    model.tie_weights()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    weights = trainable_state_dict(model)
    assert set(weights) == {n for n, _ in model.named_parameters()}
    assert "lm_head.weight" not in weights  # the tied copy is the embedding

    ckpt = save(tmp_path, 1, model)
    fresh = tiny_llama()
    fresh.config.tie_word_embeddings = True
    fresh.tie_weights()
    with torch.no_grad():
        for p in fresh.parameters():
            p.zero_()
    load_checkpoint(ckpt, model=fresh)
    for (name, p), q in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(p, q), name
    assert fresh.lm_head.weight is fresh.model.embed_tokens.weight


def test_distinct_parameters_sharing_storage_do_not_break_safetensors(tmp_path):
    model = nn.Module()
    model.a = nn.Parameter(torch.arange(6.0))
    model.b = nn.Parameter(model.a.data[:3])  # a view of a's storage, as some tying schemes produce
    ckpt = save(tmp_path, 1, model)
    saved = load_file(ckpt / "model.safetensors")
    assert torch.equal(saved["a"], torch.arange(6.0)) and torch.equal(saved["b"], torch.arange(3.0))


def test_lora_checkpoint_into_full_model_lists_the_mismatched_names(tmp_path):
    ckpt = save(tmp_path, 1, tiny_lora())
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(ckpt, model=tiny_llama())
    message = str(info.value)
    assert "Missing from the checkpoint" in message and "model.embed_tokens.weight" in message
    assert "Unexpected in the checkpoint" in message and "lora_A" in message
    assert "LoRA vs full" in message


# ----------------------------------------------------------------------------------------------
# retention and temp dirs


def test_keep_last_keeps_the_newest_and_temp_dirs_are_ignored_then_cleaned(tmp_path):
    root = tmp_path / "checkpoints"
    model = make_mlp()
    for step in (1, 2, 3, 4):
        save(root, step, model, keep_last=2)
    assert [p.name for p in list_checkpoints(root)] == ["step-00000003", "step-00000004"]

    stale = root / ".tmp-step-00000009-deadbeef"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"partial")
    (stale / "COMPLETE").write_text("{}")
    unfinished = root / "step-00000007"  # a step dir without COMPLETE is not a checkpoint either
    unfinished.mkdir()
    assert latest_checkpoint(root) == root / "step-00000004"

    save(root, 5, model, keep_last=2)
    assert not stale.exists()
    assert [p.name for p in list_checkpoints(root)] == ["step-00000004", "step-00000005"]
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())


def test_saving_an_existing_step_replaces_it_and_drops_the_abandoned_newer_ones(tmp_path, caplog):
    root = tmp_path / "checkpoints"
    model = make_mlp()
    for step in (1, 2, 3):
        save(root, step, model, loop_state={"step": step, "run": "first"})
    # resumed from step 1: the run goes through steps 2 and 3 again, on a new timeline
    with caplog.at_level(logging.WARNING):
        save(root, 2, model, loop_state={"step": 2, "run": "second"})
    assert "abandoned timeline" in caplog.text
    assert [p.name for p in list_checkpoints(root)] == ["step-00000001", "step-00000002"]
    assert load_checkpoint(root / "step-00000002", model=model) == {"step": 2, "run": "second"}
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())


def test_two_ranks_write_their_rng_files_into_one_checkpoint(tmp_path):
    sync = threading.Barrier(2, timeout=30)
    model, results = make_mlp(), {}

    def rank_main(rank, root):
        try:
            results[rank] = save(root, 1, model, rank=rank, world_size=2, barrier=sync.wait)
        except Exception as exc:  # noqa: BLE001
            results[rank] = exc

    def run(roots):
        threads = [threading.Thread(target=rank_main, args=(r, roots[r])) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads), "a rank hung"

    run([tmp_path / "shared", tmp_path / "shared"])
    assert results[0] == results[1] == tmp_path / "shared" / "step-00000001"
    assert json.loads((results[0] / "COMPLETE").read_text())["files"].keys() >= {"rng-rank0.pt", "rng-rank1.pt"}

    # rank 1 cannot see rank 0's directory (no shared filesystem): every rank raises, none hangs
    run([tmp_path / "a", tmp_path / "b"])
    assert isinstance(results[0], CheckpointError) and "rng-rank1.pt" in str(results[0])
    assert isinstance(results[1], CheckpointError)
    assert list_checkpoints(tmp_path / "a") == []


def test_missing_rank_rng_file_falls_back_to_rank_zero_with_a_warning(tmp_path, caplog):
    ckpt = save(tmp_path, 1, make_mlp())
    expected = draw_randoms()
    with caplog.at_level(logging.WARNING):
        load_checkpoint(ckpt, model=make_mlp(), rank=1)
    assert "rng-rank1.pt" in caplog.text and "rank 0" in caplog.text
    assert draw_randoms() == expected


# ----------------------------------------------------------------------------------------------
# killed mid-save (RELIABILITY 1)

KILL_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import torch
    from torch import nn
    import medlab.engine.checkpoint as ckpt

    run_dir, kill_point = sys.argv[1], sys.argv[2]
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def die(*args, **kwargs):
        print("killed at", kill_point, flush=True)
        os._exit(1)

    def set_params(value):
        with torch.no_grad():
            for p in model.parameters():
                p.fill_(value)

    set_params(1.0)
    ckpt.save_checkpoint(run_dir + "/checkpoints", 1, model=model, optimizer=opt, loop_state={"step": 1})
    set_params(2.0)
    if kill_point == "after_weights":
        real = ckpt.save_file
        ckpt.save_file = lambda *a, **k: (real(*a, **k), die())
    elif kill_point == "mid_marker":
        def half_marker(obj, f, **kwargs):
            f.write(json.dumps(obj)[:20])
            f.flush()
            die()
        ckpt.json.dump = half_marker
    elif kill_point == "before_rename":
        ckpt.os.replace = die
    ckpt.save_checkpoint(run_dir + "/checkpoints", 2, model=model, optimizer=opt, loop_state={"step": 2})
    print("not killed", flush=True)
    """
)


@pytest.mark.parametrize("kill_point", ["after_weights", "mid_marker", "before_rename"])
def test_killed_mid_save_resumes_from_the_previous_complete_checkpoint(tmp_path, kill_point):
    script = tmp_path / "kill_mid_save.py"
    script.write_text(KILL_SCRIPT)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, str(script), str(run_dir), kill_point], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"killed at {kill_point}" in proc.stdout

    root = run_dir / "checkpoints"
    assert any(p.name.startswith(".tmp-step-00000002") for p in root.iterdir())  # the interrupted save
    assert latest_checkpoint(root) == root / "step-00000001"
    assert resolve_resume("auto", run_dir) == root / "step-00000001"

    model = nn.Linear(3, 2)
    assert load_checkpoint(resolve_resume("auto", run_dir), model=model) == {"step": 1}
    assert all(torch.equal(p, torch.ones_like(p)) for p in model.parameters())

    # the resumed run saves again: the debris is cleaned and the new checkpoint is the latest
    save(root, 2, model)
    assert latest_checkpoint(root) == root / "step-00000002"
    assert not any(p.name.startswith(".tmp-") for p in root.iterdir())


# ----------------------------------------------------------------------------------------------
# damaged, missing and unsafe checkpoints


def test_truncated_weights_are_reported_by_name(tmp_path):
    ckpt = save(tmp_path / "checkpoints", 1, make_mlp())
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert not is_complete(ckpt)
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated"):
        load_checkpoint(ckpt, model=make_mlp())
    with pytest.raises(CheckpointError, match=r"step-00000001.*model\.safetensors is truncated"):
        resolve_resume(str(ckpt), tmp_path)


def test_missing_complete_marker_means_an_interrupted_save(tmp_path):
    ckpt = save(tmp_path / "checkpoints", 1, make_mlp())
    (ckpt / "COMPLETE").unlink()
    assert latest_checkpoint(tmp_path / "checkpoints") is None
    with pytest.raises(CheckpointError, match="no COMPLETE marker: the save was interrupted"):
        load_checkpoint(ckpt, model=make_mlp())
    with pytest.raises(CheckpointError, match=rf"{ckpt}.*no COMPLETE marker"):
        resolve_resume(str(ckpt), tmp_path)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        resolve_resume(str(tmp_path), tmp_path)


def test_resolve_resume(tmp_path):
    run_dir = tmp_path / "run"
    for value in (None, "", "null"):
        assert resolve_resume(value, run_dir) is None
    assert resolve_resume("auto", run_dir) is None  # fresh start
    assert not ckpt_dir_has_checkpoints(run_dir)

    model = make_mlp()
    save(run_dir / "checkpoints", 1, model)
    latest = save(run_dir / "checkpoints", 2, model)
    assert ckpt_dir_has_checkpoints(run_dir)
    assert resolve_resume("auto", run_dir) == latest
    assert resolve_resume(str(latest), tmp_path / "elsewhere") == latest
    assert resolve_resume(str(run_dir), tmp_path / "elsewhere") == latest
    assert resolve_resume(str(run_dir / "checkpoints"), tmp_path / "elsewhere") == latest

    missing = tmp_path / "no" / "such" / "step-00000003"
    with pytest.raises(CheckpointError, match=rf"{missing}.*does not exist"):
        resolve_resume(str(missing), run_dir)
    with pytest.raises(CheckpointError, match="neither a checkpoint directory"):
        resolve_resume(str(tmp_path), run_dir)


class RunsCodeWhenUnpickled:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("name", ["state.pt", "rng-rank0.pt"])
def test_pickle_payload_is_rejected_without_running(tmp_path, name):
    ckpt = save(tmp_path / "checkpoints", 1, make_mlp())
    marker = tmp_path / "payload-ran"
    torch.save({"optimizer": RunsCodeWhenUnpickled(marker)}, ckpt / name)
    rerecord_sizes(ckpt)

    with pytest.raises(CheckpointError, match=rf"{name} is not a safe checkpoint"):
        load_checkpoint(ckpt, model=make_mlp(), optimizer=make_training(make_mlp())[0])
    assert not marker.exists()

    torch.load(ckpt / name, weights_only=False)  # the payload is live: unsafe loading would have run it
    assert marker.read_text() == "pwned"
