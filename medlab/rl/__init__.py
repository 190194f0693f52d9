"""Reinforcement learning (GRPO) building blocks: group advantages, the clipped policy loss, reward functions,
rollout generation and reference log-probs, multi-turn tool rollouts, prompt data and QA evaluation.

The maths are pure functions on tensors / lists of strings; the trainer-side objective
(`medlab.objectives.grpo.GRPOPolicy`) composes them.
"""

from medlab.rl.advantages import group_advantages
from medlab.rl.data import PromptData
from medlab.rl.generation import (
    GenerationEngine,
    HFGenerateEngine,
    Rollout,
    reference_logprobs,
    sequence_logprobs,
)
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
from medlab.rl.tools import Tool, ToolRollout, collate_tool_rollouts, parse_tool_call, parse_tool_calls, run_tool_loop

__all__ = [
    "REWARDS",
    "GenerationEngine",
    "HFGenerateEngine",
    "PromptData",
    "RewardSet",
    "Rollout",
    "Tool",
    "ToolRollout",
    "collate_tool_rollouts",
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
    "parse_tool_call",
    "parse_tool_calls",
    "reference_logprobs",
    "retrieval_relevance",
    "run_tool_loop",
    "sequence_logprobs",
    "token_f1",
    "token_logprobs",
]
