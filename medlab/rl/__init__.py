"""Reinforcement learning (GRPO) building blocks: group advantages, the clipped policy loss, reward functions.

All pure functions on tensors / lists of strings; the trainer-side objective composes them.
"""

from medlab.rl.advantages import group_advantages
from medlab.rl.losses import grpo_loss, masked_mean, masked_sum, token_logprobs
from medlab.rl.rewards import (
    REWARDS,
    RewardSet,
    combine_rewards,
    exact_match,
    format_reward,
    length_penalty,
    llm_judge,
    load_reward,
    retrieval_relevance,
    token_f1,
)

__all__ = [
    "REWARDS",
    "RewardSet",
    "combine_rewards",
    "exact_match",
    "format_reward",
    "group_advantages",
    "grpo_loss",
    "length_penalty",
    "llm_judge",
    "load_reward",
    "masked_mean",
    "masked_sum",
    "retrieval_relevance",
    "token_f1",
    "token_logprobs",
]
