"""ORPO and KTO objectives (medlab.objectives.orpo / kto) on the shipped sample data with the tiny model: the
module's loss against a hand computation from a plain forward, KTO's reference point and experience split, and
learning against the untrained model on the held-out sample data (ORPO: log-odds accuracy, log-odds, chosen NLL;
KTO: implicit reward of desirable over undesirable completions).

Loss maths against TRL: tests/test_preference_losses.py; loop guarantees: tests/test_objective_contract.py."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_dpo import build, first_batch

pytestmark = pytest.mark.usefixtures("one_thread")


def _plain_logps(model, input_ids, attention_mask, labels):
    """Summed completion log-probs and lengths from full logits (the reference for the chunked path)."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    mask = targets != -100
    lp = torch.log_softmax(logits, -1).gather(2, targets.clamp(min=0)[..., None]).squeeze(-1)
    return (lp * mask).sum(1), mask.sum(1)


def test_orpo_module_loss_equals_a_hand_computation_from_full_logits():
    _, module, data = build("orpo", ["objective.lam=0.7", "objective.loss_chunk_size=5"])
    module.train()
    batch = first_batch(data)
    loss = module.training_step(batch, 0)["loss"]
    with torch.no_grad():
        logps, lengths = _plain_logps(module.model, batch["input_ids"], batch["attention_mask"], batch["labels"])
    avg = logps / lengths
    n = len(batch["ids"])
    c, r = avg[:n].double(), avg[n:].double()
    log_odds = (c - r) - (torch.log(-torch.expm1(c)) - torch.log(-torch.expm1(r)))
    expected = (-c - 0.7 * F.logsigmoid(log_odds)).mean()
    assert abs(float(loss.detach()) - float(expected)) < 1e-4
    loss.backward()
    assert all(p.grad is not None for p in module.model.parameters() if p.requires_grad)
    metrics = module.step_metrics()
    assert abs(metrics["log_odds"] - float(log_odds.mean())) < 1e-4
    assert metrics["rewards/accuracies"] == float((c > r).double().mean())


def test_kto_reference_point_comes_from_the_mismatched_rows_and_starts_at_zero():
    _, module, data = build("kto", ["objective.micro_batch_size=3", "objective.desirable_weight=1.5"])
    module.on_fit_start()
    module.train()
    batch = data.collate([data.train_dataset[i] for i in range(8)])
    labels = batch["label"]
    assert labels.any() and (~labels).any()
    # the KL rows: prompt i with the completion of row i+1 (mod B)
    assert not torch.equal(batch["kl_input_ids"], batch["input_ids"])
    [window] = module.make_experience(batch)
    assert [len(mb["ids"]) for mb in window] == [3, 3, 2]
    assert all(mb["kl"] is window[0]["kl"] for mb in window)  # one reference point for the whole batch
    assert float(window[0]["kl"]) == 0.0  # policy = reference: log-ratios are exactly 0 on the KL rows too
    losses = [module.training_step(mb, i)["loss"] for i, mb in enumerate(window)]
    total = sum(float(loss.detach()) * len(mb["ids"]) for loss, mb in zip(losses, window)) / 8
    d = labels.float()
    expected = float((1.5 * d * 0.5 + (1 - d) * 0.5).mean())  # w * (1 - σ(0)) per completion
    assert abs(total - expected) < 1e-7
    metrics = module.step_metrics()
    assert metrics["rewards/chosen"] == 0.0 and metrics["rewards/rejected"] == 0.0 and metrics["kl"] == 0.0


def test_kto_policy_logps_use_the_chunked_path_exactly():
    _, module, data = build("kto", ["objective.loss_chunk_size=4"])
    batch = first_batch(data)
    with torch.no_grad():
        got = module._logps(module.model, batch, "kl_")
        expected, _ = _plain_logps(module.model, batch["kl_input_ids"], batch["kl_attention_mask"],
                                   batch["kl_labels"])
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-4)


def test_kto_refuses_paired_batches_and_dpo_unpaired_ones():
    with pytest.raises(ValueError, match="objective=kto trains on unpaired rows, but the data files hold "
                                         "chosen/rejected pairs"):
        build("kto", ["data=sample_preference"])
    with pytest.raises(ValueError, match="objective=orpo trains on chosen/rejected pairs"):
        build("orpo", ["data=sample_kto"])


# ---------------------------------------------------------------------------------------------- learning
def _trained_and_untrained(experiment, overrides, tmp_path, monkeypatch):
    """The module trained by ``medlab.run`` (captured in-process, its final weights) and the same module untrained
    (built like the runner, same seed), both in eval mode, plus the held-out batches (the shipped validation file)."""
    from test_dpo import run

    capture = {}
    run(experiment, overrides, tmp_path / "r", capture=capture, monkeypatch=monkeypatch)
    _, untrained, data = build(experiment, overrides)
    untrained.on_fit_start()
    val = data.val_dataset
    batches = [data.collate(val[s:s + 7]) for s in range(0, len(val), 7)]
    return capture["module"].eval(), untrained.eval(), batches


@torch.no_grad()
def _validation_means(module, batches) -> dict[str, float]:
    """The module's validation metrics, weighted by rows, over the held-out batches."""
    sums, n = {}, 0
    for batch in batches:
        out = module.validation_step(batch, 0)
        w = len(batch["ids"])
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v) * w
        n += w
    return {k: v / n for k, v in sums.items()}


LEARN = ["data.limit=null", "data.val_limit=null", "trainer.max_steps=20", "data.batch_size=8",
         "trainer.val_every_n_steps=null", "export.enabled=false", "trainer.monitor=train/loss",
         "trainer.monitor_mode=min"]


def test_orpo_learns_the_preference_on_held_out_pairs(tmp_path, monkeypatch):
    """Held-out sample pairs: the trained policy's per-token log-odds rank the chosen answer first far more often
    than the untrained model's, its log-odds ratio rises, and the chosen answers' NLL (the SFT term) falls."""
    trained, untrained, batches = _trained_and_untrained("orpo", [*LEARN, "objective.lr=3e-3"], tmp_path,
                                                         monkeypatch)
    before, after = _validation_means(untrained, batches), _validation_means(trained, batches)
    assert sum(len(b["ids"]) for b in batches) == 14
    assert after["accuracy"] >= max(0.75, before["accuracy"] + 0.25), (before, after)  # measured 0.286 -> 0.857
    assert after["log_odds"] > before["log_odds"] + 0.5, (before, after)
    assert after["nll"] < before["nll"] - 0.5, (before, after)


def test_kto_raises_the_implicit_reward_of_desirable_over_undesirable_completions(tmp_path, monkeypatch):
    """Held-out sample completions: untrained, every implicit reward is exactly 0 (the policy is its reference);
    trained, desirable completions get a clearly higher implicit reward than undesirable ones, and most rewards
    fall on their label's side of the reference point."""
    trained, untrained, batches = _trained_and_untrained("kto", [*LEARN, "objective.lr=1e-3"], tmp_path, monkeypatch)
    before, after = _validation_means(untrained, batches), _validation_means(trained, batches)
    assert sum(len(b["ids"]) for b in batches) == 14
    assert before["rewards/margins"] == 0.0 and before["accuracy"] == 0.0, before
    assert after["rewards/margins"] > 0.5, after
    assert after["rewards/chosen"] > 0.0 > after["rewards/rejected"], after
    assert after["accuracy"] >= 0.7, after  # measured 0.786 (11/14); untrained 0.0 (every reward ties z = 0)
