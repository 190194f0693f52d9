"""RLOO and REINFORCE++ advantages (medlab.rl.advantages): hand computations, TRL 1.16's RLOO, and the estimators
through GRPOPolicy.

TRL computes RLOO advantages inline in ``RLOOTrainer._generate_and_score_completions``; as for the GRPO
advantages (tests/test_rl_advantages.py) the test calls that real method on a stub ``self`` whose
``_generate`` returns completions of the given lengths, whose ``_calculate_rewards`` returns our rewards and
whose ``_get_per_token_logps_and_entropies`` returns our old / reference log-probs, so everything from there to
``output["advantages"]`` (the KL in the reward, the leave-one-out baseline, the normalization) is TRL's code.
"""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch

from medlab.rl.advantages import reinforce_pp_advantages, rloo_advantages, sequence_kl

NAN = float("nan")
pytestmark = pytest.mark.usefixtures("one_thread")


class _Acc:
    device = torch.device("cpu")
    process_index = 0
    num_processes = 1

    def gather(self, x):
        return x

    def reduce(self, x, reduction="sum"):
        return x


def _trl_rloo(rewards, group_size, lengths, old=None, ref=None, beta=0.0, normalize=False):
    trl = pytest.importorskip("trl.trainer.rloo_trainer")
    n = rewards.numel()
    model = torch.nn.Linear(1, 1).eval()
    model.is_gradient_checkpointing = False
    logps = iter([old, ref])
    s = types.SimpleNamespace(
        accelerator=_Acc(), model=model, ref_model=model, _tokenizer=types.SimpleNamespace(pad_token_id=0),
        pad_to_multiple_of=None, mask_truncated_completions=False,
        args=types.SimpleNamespace(per_device_eval_batch_size=n, gradient_checkpointing_kwargs=None),
        beta=beta, num_generations_eval=group_size, reward_clip_range=None, reward_weights=torch.ones(1),
        normalize_advantages=normalize, reward_func_names=["r"], _metrics={"eval": defaultdict(list)},
        _pending_extra_logs={}, _pending_metrics={}, log_multimodal=False,
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [],
               "extra": defaultdict(list)},
    )
    s._generate = lambda prompts: ([[1]] * n, [[2] * k for k in lengths], ["c"] * n)
    s._calculate_rewards = lambda *args: rewards[:, None].clone().float()
    s._get_per_token_logps_and_entropies = lambda *a, **k: (next(logps), None, None)
    out = trl.RLOOTrainer._generate_and_score_completions(s, [{"prompt": "p"}] * n)
    return out["advantages"]


REWARDS = torch.tensor([0.0, 1, 1, 0, 0.5, 0.5, 0.5, 0.5, NAN, 1, 0, 2, 3, 0.2, 7, -1, NAN, NAN, NAN, 4.0])
LENGTHS = [3, 1, 4, 2, 5, 5, 1, 2, 3, 3, 4, 1, 2, 2, 5, 3, 1, 1, 2, 4]


def _mask(lengths, width=None):
    width = width or max(lengths)
    return (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_rloo_equals_trl(normalize, beta):
    g = torch.Generator().manual_seed(0)
    mask = _mask(LENGTHS)
    old, ref = -torch.rand(mask.shape, generator=g) * 3, -torch.rand(mask.shape, generator=g) * 3
    theirs = _trl_rloo(REWARDS, 4, LENGTHS, old, ref, beta, normalize)
    kl = sequence_kl(old, ref, mask) if beta else None
    ours, stats = rloo_advantages(REWARDS, 4, kl=kl, kl_coef=beta, scale="batch" if normalize else "none")
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert int(stats["masked"]) == 4 and ("kl" in stats) == bool(beta)


def test_rloo_hand_computed():
    # group [1, 2, 4]: baselines (2+4)/2 = 3, (1+4)/2 = 2.5, (1+2)/2 = 1.5 -> A = -2, -0.5, 2.5
    # group [5, NaN, 5]: scorable siblings only -> A = 0, 0 (NaN row: 0)
    # group [3, NaN, NaN]: a lone scorable reward has no baseline -> 0
    r = torch.tensor([1.0, 2, 4, 5, NAN, 5, 3, NAN, NAN])
    adv, stats = rloo_advantages(r, 3)
    assert adv.tolist() == [-2.0, -0.5, 2.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert float(stats["frac_zero_std"]) == pytest.approx(2 / 3)
    # RLOO = G/(G-1) x (r - group mean): (1 - 7/3) * 3/2 = -2
    assert adv[0].item() == pytest.approx((1 - 7 / 3) * 1.5)
    # the KL is paid per sequence: kl sums [0.5, 0, 0] -> rewards [0.5 + ..]: 1 - 0.2 * 0.5 = 0.9
    kl = torch.zeros(9, 2)
    kl[0] = torch.tensor([0.25, 0.25])
    adv_kl, _ = rloo_advantages(r, 3, kl=kl, kl_coef=0.2)
    assert adv_kl[:3].tolist() == pytest.approx([0.9 - 3.0, 2 - (0.9 + 4) / 2, 4 - (0.9 + 2) / 2])


def test_reinforce_pp_hand_computed():
    # two rows; row 0: 3 tokens, reward 1; row 1: 2 tokens (+ 1 masked observation in the middle), reward 0
    mask = torch.tensor([[1, 1, 1], [1, 0, 1]])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 9.0, -0.5]])  # the masked 9.0 never counts
    adv, stats = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), mask, kl=kl, kl_coef=0.1, scale="none")
    # token rewards row 0: [-0.01, -0.02, -0.03 + 1]; returns: [0.94, 0.95, 0.97]
    # row 1: [-0.05, (masked), 0.05]; returns [0.0, 0, 0.05]
    torch.testing.assert_close(adv, torch.tensor([[0.94, 0.95, 0.97], [0.0, 0.0, 0.05]]), atol=1e-6, rtol=0)
    assert float(stats["kl"]) == pytest.approx((0.1 + 0.2 + 0.3 + 0.5 - 0.5) / 5)
    white, _ = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), mask, kl=kl, kl_coef=0.1)
    values = torch.tensor([0.94, 0.95, 0.97, 0.0, 0.05])
    mu, var = values.mean(), values.var(unbiased=True)
    want = torch.tensor([[0.94, 0.95, 0.97], [0.0, 0.0, 0.05]]).sub(mu).div(torch.sqrt(var + 1e-8)) * mask
    torch.testing.assert_close(white, want, atol=1e-6, rtol=0)
    assert white[mask.bool()].mean().abs() < 1e-6  # whitened over the batch's tokens
    # gamma < 1 discounts over the policy's own tokens only (the observation is skipped)
    disc, _ = reinforce_pp_advantages(torch.tensor([1.0, 2.0]), mask, gamma=0.5, scale="none")
    torch.testing.assert_close(disc, torch.tensor([[0.25, 0.5, 1.0], [1.0, 0.0, 2.0]]))


def test_reinforce_pp_unscorable_rows_carry_nothing():
    mask = torch.ones(3, 2, dtype=torch.long)
    adv, stats = reinforce_pp_advantages(torch.tensor([1.0, NAN, 3.0]), mask)
    assert adv[1].tolist() == [0.0, 0.0] and int(stats["masked"]) == 1
    # statistics over the 4 tokens of the scorable rows: returns [1, 1, 3, 3]
    assert adv[0].tolist() == pytest.approx([-1 / math.sqrt(4 / 3)] * 2)


def test_estimator_arguments_are_checked():
    with pytest.raises(ValueError, match="scale must be one of"):
        rloo_advantages(torch.zeros(4), 2, scale="group")
    with pytest.raises(ValueError, match="kl must have the mask's shape"):
        reinforce_pp_advantages(torch.zeros(2), torch.ones(2, 3), kl=torch.zeros(2, 2))


@pytest.mark.parametrize("advantage", [pytest.param("rloo", marks=pytest.mark.slow), "reinforce_pp"])
def test_estimators_train_through_the_loop(tmp_path, advantage):
    from helpers import run_experiment

    result = run_experiment("grpo_lora", [
        f"objective.advantage={advantage}", "objective.beta=0.05", "objective.num_generations=4",
        "objective.max_new_tokens=8", "data.batch_size=2", "trainer.max_steps=2", "trainer.val_every_n_steps=null",
        "trainer.limit_val_batches=1", "data.val_batch_size=4", "trainer.log_every_n_steps=1",
        "trainer.progress_bar=false", "logger=none", "export.enabled=false",
        "+objective.rewards.length={_target_: length_penalty, target: 0, per_unit: 0.01, max_penalty: null}"],
        tmp_path / "run")
    assert result.metrics["global_step"] == 2
    row = next(h for h in result.history if h["step"] == 1 and "train/loss" in h)
    assert math.isfinite(row["train/loss"]) and row["train/adv/abs_mean"] > 0
    assert row["train/reward_kl"] == 0.0  # LoRA starts as a zero update: the sampling policy is the reference
    assert "train/reward_kl" in next(h for h in result.history if h["step"] == 2 and "train/loss" in h)
