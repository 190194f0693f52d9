"""The Fabric loop: accumulation equals the big batch, non-finite steps are skipped, resume is exact."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import cpu_fabric, pad_collate, tiny_llama, toy_examples

from medlab.engine.loop import Loop, LoopConfig, NonFiniteLossError
from medlab.engine.sampler import ResumableBatchSampler
from medlab.objectives.causal_lm import CausalLM


class GradRecorder:
    """Fabric callback: copy every gradient just before each optimizer step."""

    def __init__(self, module):
        self.module, self.grads = module, []

    def on_before_optimizer_step(self, optimizer):
        self.grads.append({n: p.grad.detach().clone() for n, p in self.module.named_parameters() if p.grad is not None})


class IdRecorder:
    def __init__(self):
        self.ids = []

    def on_train_batch_start(self, batch, idx):
        self.ids.extend(batch["ids"])


def _fit(tmp_path, module, data, *, batch_size, callbacks=(), resume=None, val_data=None, **cfg):
    fabric = cpu_fabric(callbacks=list(callbacks))
    base = dict(max_steps=1, log_every_n_steps=1, gradient_clip_val=None, progress_bar=False, seed=0,
                ckpt_every_n_steps=None, save_final_checkpoint=False)
    base.update(cfg)
    loop = Loop(fabric, LoopConfig(**base), tmp_path)
    result = loop.fit(module, data, pad_collate, batch_size=batch_size, resume=resume, val_data=val_data)
    return loop, result


@pytest.mark.parametrize("micro,k", [(4, 2), (2, 4), (1, 8)])
def test_accumulation_equals_one_big_batch(tmp_path, micro, k):
    data = toy_examples(16)
    init = tiny_llama()
    big = CausalLM(copy.deepcopy(init), lr=1e-3)
    acc = CausalLM(copy.deepcopy(init), lr=1e-3)
    rec_big, rec_acc = GradRecorder(big), GradRecorder(acc)
    _fit(tmp_path / "big", big, data, batch_size=8, callbacks=[rec_big], shuffle=False)
    loop, _ = _fit(tmp_path / "acc", acc, data, batch_size=micro, callbacks=[rec_acc], shuffle=False,
                   accumulate_grad_batches=k)
    assert loop.state.global_step == 1 and loop.state.micro_step == k
    g_big, g_acc = rec_big.grads[0], rec_acc.grads[0]
    assert g_big.keys() == g_acc.keys() and len(g_big) > 0
    for name in g_big:
        torch.testing.assert_close(g_acc[name], g_big[name], rtol=0, atol=1e-6, msg=name)
    # the logged loss is the token-weighted mean over the window, i.e. the big batch's loss
    big_loss = next(h["train/loss"] for h in _big_history(tmp_path, init, data))
    assert loop.history[0]["train/loss"] == pytest.approx(big_loss, abs=1e-6)


def _big_history(tmp_path, init, data):
    fresh = CausalLM(copy.deepcopy(init), lr=1e-3)
    return _fit(tmp_path / "b2", fresh, data, batch_size=8, shuffle=False)[0].history


def test_loss_decreases_and_counters(tmp_path):
    module = CausalLM(tiny_llama(), lr=3e-3, warmup_ratio=0.0)
    loop, result = _fit(tmp_path, module, toy_examples(24), batch_size=4, max_steps=30, accumulate_grad_batches=2)
    losses = [h["train/loss"] for h in loop.history if "train/loss" in h]
    assert loop.state.global_step == 30 and loop.state.micro_step == 60
    assert losses[-1] < losses[0] - 0.5
    assert result.status == "completed"


class NaNOnce(CausalLM):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        if batch_idx == 1:
            out["loss"] = out["loss"] * float("nan")
        return out


def test_nonfinite_step_is_skipped_and_counted(tmp_path):
    module = NaNOnce(tiny_llama(), lr=1e-2)
    snapshots = []

    class Snap:
        def on_train_batch_start(self, batch, idx):
            snapshots.append({n: p.detach().clone() for n, p in module.named_parameters()})

    loop, _ = _fit(tmp_path, module, toy_examples(16), batch_size=4, max_steps=3, callbacks=[Snap()])
    assert loop.state.skipped_steps == 1
    before_nan, after_nan = snapshots[1], snapshots[2]
    for n in before_nan:  # the NaN step changed nothing
        assert torch.equal(before_nan[n], after_nan[n]), n
    final = dict(module.named_parameters())
    assert any(not torch.equal(after_nan[n], final[n]) for n in final)  # later steps still learn
    assert all(torch.isfinite(p).all() for p in module.parameters())
    assert loop.history[-1]["train/skipped_steps"] == 1.0


def test_nonfinite_halt(tmp_path):
    with pytest.raises(NonFiniteLossError, match="step 2"):
        _fit(tmp_path, NaNOnce(tiny_llama()), toy_examples(16), batch_size=4, max_steps=3, on_nonfinite="halt")


class Crash(Exception):
    pass


class CrashAt:
    """Simulate a crash (process death) right when micro-batch ``at`` starts."""

    def __init__(self, at):
        self.at = at

    def on_train_batch_start(self, batch, idx):
        if idx == self.at:
            raise Crash()


@pytest.mark.parametrize("stop_at", [4, 6])  # mid-epoch, and exactly at the epoch boundary (6 batches/epoch)
def test_resume_reproduces_uninterrupted_run(tmp_path, stop_at):
    data = toy_examples(24)  # batch 4 -> 6 batches per epoch; 10 steps cross an epoch boundary
    common = dict(max_steps=10, ckpt_every_n_steps=2, keep_last_k=10, save_final_checkpoint=True)
    ref_ids = IdRecorder()
    ref_loop, _ = _fit(tmp_path / "ref", CausalLM(tiny_llama(dropout=0.1), lr=3e-3, warmup_steps=3), data,
                       batch_size=4, callbacks=[ref_ids], **common)
    ref = [(h["step"], h["train/loss"], h["train/lr"]) for h in ref_loop.history if "train/loss" in h]

    torch.manual_seed(123)  # the crashed process's RNG history differs; resume must restore it
    ids1 = IdRecorder()
    with pytest.raises(Crash):
        _fit(tmp_path / "run", CausalLM(tiny_llama(dropout=0.1), lr=3e-3, warmup_steps=3), data, batch_size=4,
             callbacks=[ids1, CrashAt(stop_at)], **common)
    from medlab.engine.checkpoint import latest_checkpoint

    last = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert last is not None and last.name == f"step-{stop_at:08d}"
    torch.manual_seed(999)
    ids2 = IdRecorder()
    loop2, _ = _fit(tmp_path / "run", CausalLM(tiny_llama(dropout=0.1), lr=3e-3, warmup_steps=3), data,
                    batch_size=4, callbacks=[ids2], resume=last, **common)
    resumed = [(h["step"], h["train/loss"], h["train/lr"]) for h in loop2.history if "train/loss" in h]
    assert resumed == ref[stop_at:]  # exact: same losses and lrs, step by step
    assert ids1.ids[: stop_at * 4] + ids2.ids == ref_ids.ids


def test_early_stopping_stops_after_patience(tmp_path):
    data = toy_examples(24)
    module = CausalLM(tiny_llama(), lr=1e-12, warmup_ratio=0.0)  # ~no learning: val/loss cannot improve by min_delta
    loop, result = _fit(tmp_path, module, data, batch_size=4, max_steps=50, val_every_n_steps=2, patience=2,
                        min_delta=1e-3, val_data=toy_examples(8, seed=1))
    assert result.status == "early_stopped"
    assert loop.state.global_step == 6  # evals at 2 (best), 4 (1 bad), 6 (2 bad -> stop)
    assert loop.state.best_step == 2


def test_validation_metrics_are_token_weighted_means(tmp_path):
    """val/loss = sum over batches of loss_b * tokens_b / total tokens, i.e. the whole set's token mean."""
    from medlab.ops.losses import causal_lm_loss

    data = toy_examples(10)
    model = tiny_llama()
    loop, _ = _fit(tmp_path, CausalLM(model, lr=0.0), data, batch_size=4, max_steps=1)
    loop.val_data, loop.val_sampler = data, ResumableBatchSampler(len(data), 3, shuffle=False)
    metrics = loop.validate()  # 4 batches of 3, 3, 3, 1 rows with different token counts
    whole = pad_collate(data)
    with torch.no_grad():
        expected = causal_lm_loss(model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"]).logits,
                                  whole["labels"]).item()
    assert metrics["val/loss"] == pytest.approx(expected, abs=1e-5)


class TwoMicroBatchesPerBatch(CausalLM):
    """An RL-style objective (medlab.contracts.ExperienceObjective): each loader batch becomes one window of
    generated micro-batches."""

    steps_per_experience = 1

    def make_experience(self, batch):
        ids = batch["ids"]
        half = len(ids) // 2
        rows = [{k: (v[:half] if i == 0 else v[half:]) for k, v in batch.items() if k in ("input_ids", "labels",
                                                                                         "attention_mask")}
                for i in range(2)]
        for r, part in zip(rows, (ids[:half], ids[half:])):
            r["ids"], r["num_tokens"] = part, int(r["attention_mask"].sum())
            r["num_label_tokens"] = int((r["labels"][:, 1:] != -100).sum())
        return [rows]


def test_make_experience_turns_each_batch_into_one_window(tmp_path):
    module = TwoMicroBatchesPerBatch(tiny_llama(), lr=1e-3)
    loop, result = _fit(tmp_path, module, toy_examples(16), batch_size=4, max_steps=3, accumulate_grad_batches=1)
    assert loop.state.global_step == 3 and loop.state.micro_step == 6 and loop.state.batch_in_epoch == 3
    assert result.status == "completed"
