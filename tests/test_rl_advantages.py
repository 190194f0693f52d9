"""medlab.rl.advantages.group_advantages against TRL 1.16's advantage code, plus its edge cases.

TRL computes advantages inline in ``GRPOTrainer._generate_and_score_completions``; the test calls that real
method as an unbound function on a stub ``self`` whose ``_generate`` returns dummy one-token completions and
whose ``_calculate_rewards`` returns our reward tensor (one reward function, weight 1), so everything from the
reward tensor to ``output["advantages"]`` and the logged ``frac_reward_zero_std`` is TRL's own code.
"""

from __future__ import annotations

import math
import types
from collections import defaultdict

import pytest
import torch

from medlab.rl.advantages import group_advantages

NAN = float("nan")


class _Acc:
    device = torch.device("cpu")
    process_index = 0
    num_processes = 1

    def gather(self, x):
        return x


def _trl_advantages(rewards: torch.Tensor, group_size: int, scale: str):
    trl = pytest.importorskip("trl.trainer.grpo_trainer")
    n = rewards.numel()
    model = torch.nn.Linear(1, 1).eval()
    model.is_gradient_checkpointing = False
    s = types.SimpleNamespace(
        accelerator=_Acc(), model=model, environment_factories=None, tools=None, environments=None,
        _tokenizer=types.SimpleNamespace(pad_token_id=0), pad_to_multiple_of=None, mask_truncated_completions=False,
        args=types.SimpleNamespace(per_device_eval_batch_size=n, steps_per_generation=1, gradient_accumulation_steps=1,
                                   gradient_checkpointing_kwargs=None),
        num_iterations=1, use_vllm=False, beta=0.0, num_generations_eval=group_size,
        multi_objective_aggregation="sum_then_normalize", scale_rewards=scale, reward_weights=torch.ones(1),
        reward_func_names=["r"], _metrics={"eval": defaultdict(list)}, _pending_extra_logs={}, _pending_metrics={},
        _logs={"prompt": [], "completion": [], "rewards": defaultdict(list), "advantages": [],
               "extra": defaultdict(list)},
        log_multimodal=False,
    )
    s._generate = lambda prompts: ([[1]] * n, [[2]] * n, None, ["c"] * n, None, {}, None, None)
    s._calculate_rewards = lambda *args: rewards[:, None].clone().float()
    out = trl.GRPOTrainer._generate_and_score_completions(s, [{"prompt": "p"}] * n)
    return out["advantages"], {k: v[-1] for k, v in s._metrics["eval"].items()}


REWARDS = torch.tensor([0.0, 1, 1, 0, 0.5, 0.5, 0.5, 0.5, NAN, 1, 0, 2, 3, 0.2, 7, -1, NAN, NAN, NAN, NAN])


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_group_advantages_equal_trl(scale):
    ours, stats = group_advantages(REWARDS, 4, scale=scale)
    theirs, metrics = _trl_advantages(REWARDS, 4, scale)
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert abs(float(stats["reward/mean"]) - metrics["reward"]) <= 1e-6
    assert abs(float(stats["reward/std"]) - metrics["reward_std"]) <= 1e-6
    assert int(stats["masked"]) == 5


def test_frac_zero_std_equals_trl_on_full_groups():
    rewards = torch.tensor([1.0, 1, 1, 0, 0, 0, 0.3, 0.3, 0.3, 2, 0, 1])
    _, stats = group_advantages(rewards, 3)
    _, metrics = _trl_advantages(rewards, 3, "group")
    assert float(stats["frac_zero_std"]) == pytest.approx(metrics["frac_reward_zero_std"]) == 0.75


def test_hand_computed_group():
    # group [0, 1, 1, 0]: mean 0.5, Bessel std sqrt(1/3); A = +-0.5 / (sqrt(1/3) + 1e-4)
    adv, _ = group_advantages(torch.tensor([0.0, 1, 1, 0]), 4)
    a = 0.5 / (math.sqrt(1 / 3) + 1e-4)
    torch.testing.assert_close(adv, torch.tensor([-a, a, a, -a]))
    adv, _ = group_advantages(torch.tensor([0.0, 1, 1, 0]), 4, scale="none")  # Dr. GRPO
    torch.testing.assert_close(adv, torch.tensor([-0.5, 0.5, 0.5, -0.5]))


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_variance_groups_are_exactly_zero(scale):
    rewards = torch.tensor([0.1] * 8 + [0.7] * 8 + [0.3, NAN, NAN, NAN, NAN, NAN, NAN, NAN], dtype=torch.float32)
    adv, stats = group_advantages(rewards, 8, scale=scale)
    assert (adv == 0).all()
    assert float(stats["frac_zero_std"]) == 1.0 and int(stats["masked"]) == 7


def test_nan_rewards_are_masked_and_excluded_from_the_baseline():
    adv, stats = group_advantages(torch.tensor([NAN, 1.0, 3.0, NAN]), 4, scale="none")
    assert adv.tolist() == [0.0, -1.0, 1.0, 0.0]  # baseline = mean(1, 3) = 2
    assert int(stats["masked"]) == 2 and float(stats["reward/mean"]) == 2.0
    adv, stats = group_advantages(torch.full((4,), NAN), 2)
    assert (adv == 0).all() and not torch.isnan(adv).any()


@pytest.mark.parametrize("outlier", [1e-6, 1e-3, 1.0, 1e6])
@pytest.mark.parametrize("eps", [1e-4, 0.0])
def test_single_outlier_is_bounded_by_sqrt_group_size(outlier, eps):
    group = 8
    rewards = torch.tensor([0.0] * (group - 1) + [outlier], dtype=torch.float64)
    adv, _ = group_advantages(rewards, group, eps=eps)
    bound = (group - 1) / math.sqrt(group)  # max |z-score| with Bessel std, < sqrt(G)
    assert adv.abs().max() <= bound + 1e-9 < math.sqrt(group)
    if eps == 0.0:  # scale-free: the outlier always gets exactly the maximal z-score
        assert float(adv[-1]) == pytest.approx(bound)
    elif outlier == 1e-6:  # deviation far below eps -> advantage ~ 0, not an exploding 1e-6 / 1e-6
        assert adv.abs().max() < 0.01


def test_validation():
    with pytest.raises(ValueError, match="group_size"):
        group_advantages(torch.zeros(6), 4)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.zeros(4), 2, scale="std")
    with pytest.raises(ValueError, match=r"\[N\]"):
        group_advantages(torch.zeros(2, 2), 2)
