"""PPOPolicy: PPO with a critic and a reward model / reward functions (``objective=ppo``) in medlab's one loop.

The rollout side is GRPO's (:class:`medlab.objectives.grpo.GRPOPolicy`: the generation engines, tool rollouts,
``sample_and_score``, token-budget micro-batches, the reference policy, validation and the per-step timing);
what PPO adds is the critic, the per-token rewards and the update. Per loader batch of prompts the loop calls
:meth:`PPOPolicy.make_experience`, which

1. samples ``num_generations`` completions per prompt (1 by default: PPO needs no group) and scores them with
   the configured rewards (``rewards: {rm: {_target_: reward_model, run_dir: RUN}}`` for a trained reward model,
   and/or any reward function); an unscorable completion scores 0 (counted in ``reward_masked``), a completion
   without EOS loses ``missing_eos_penalty``;
2. per micro-batch (``micro_batch_tokens``), without gradients: the sampling policy's log-probs (by default the
   decode loop's own, ``objective.old_logprobs: decode`` -- no forward, see GRPO's docstring), the reference's
   (``kl_coef`` > 0; adapters disabled under LoRA/QLoRA, a frozen initial copy for full fine-tunes) and the
   critic's values (``medlab.rl.critic``: a second adapter ``critic`` + value head on the same frozen base under
   LoRA/QLoRA, a separate value model for full fine-tunes);
3. per-token rewards (``medlab.rl.ppo_rewards.token_rewards``: the score on the last completion token minus
   ``kl_coef`` x the k1 or k3 KL on every token; ``whiten_rewards`` optionally), GAE (``gamma``, ``lam``) ->
   advantages and returns, advantages whitened over the experience's tokens (``medlab.rl.ppo_losses``);
4. returns ``num_ppo_epochs`` x ``num_mini_batches`` windows (one optimizer step each: ``steps_per_experience``):
   each PPO epoch shuffles the rows (torch's RNG, restored on resume) into ``num_mini_batches`` mini-batches,
   each packed into token-budget micro-batches.

``training_step``: the policy's log-probs (and entropy) and the critic's values for the micro-batch;
``loss = pg_loss + vf_coef * vf_loss`` with the clipped surrogate (``cliprange``) and the clipped value loss
(``cliprange_value``), both token means; ``batch_weight`` = the micro-batch's completion tokens, so the window's
loss is the token mean over the whole mini-batch whatever the micro-batch split. The policy loss reaches only the
policy's weights and the value loss only the critic's (adapter + head): the critic adapter is active only inside
its own forward.

Per-step metrics (``train/<key>``): ``reward`` (mean sequence score: the rewards' weighted sum),
``rewards/<name>/mean`` (e.g. ``rewards/rm/mean``: the reward model's), ``reward_total`` (score - KL penalty,
summed over the completion), ``kl`` (summed over the completion, mean over rows), ``eos_missing_frac``,
``value/explained_variance`` and ``value/mean`` (per experience); ``policy/loss``, ``value/loss``,
``policy/clipfrac``, ``value/clipfrac``, ``policy/approx_kl``, ``policy/entropy``, ``policy/ratio`` (per
micro-batch means); ``time/generate_s``, ``time/score_s``, ``time/logprob_s`` (per experience) vs
``time/update_s`` (per optimizer step), as GRPO logs them.

Checkpoints hold every trainable weight of the objective -- the policy (adapter or weights), the critic adapter
or value model, and the value head -- and, as for GRPO, are taken at experience boundaries, so a resumed run
regenerates the next experience exactly. After training the critic adapter is dropped from the policy model, so
the export holds the policy alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from medlab.objectives.common import choice_problem, int_problem
from medlab.objectives.grpo import (
    OLD_LOGPROBS,
    ROLLOUT_KEYS,
    GRPOPolicy,
    _micro_batch,
    reward_problems,
    rollout_stats,
    sharded_strategy_problem,
)
from medlab.rl.critic import Critic
from medlab.rl.generation import sequence_logprobs
from medlab.rl.losses import masked_mean
from medlab.rl.microbatch import token_budget_batches
from medlab.rl.ppo_losses import gae, masked_whiten, ppo_policy_loss, ppo_value_loss
from medlab.rl.ppo_rewards import KL_ESTIMATORS, explained_variance, token_rewards


def ppo_problems(o: Mapping[str, Any]) -> list[str]:
    """PPO's own numbers (``o``: the objective's settings); used by ``config_problems`` and the constructor."""
    out = [int_problem("objective.num_generations", o.get("num_generations", 1)),
           int_problem("objective.num_ppo_epochs", o.get("num_ppo_epochs", 1)),
           int_problem("objective.num_mini_batches", o.get("num_mini_batches", 1)),
           choice_problem("objective.kl_estimator", o.get("kl_estimator", "k1"), KL_ESTIMATORS)]
    for key, default in (("gamma", 1.0), ("lam", 0.95)):
        value = o.get(key, default)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1):
            what = "discount" if key == "gamma" else "lambda"
            out.append(f"objective.{key} must be a number in [0, 1] (GAE's {what}), got {value!r}")
    for key, default in (("kl_coef", 0.05), ("cliprange", 0.2), ("cliprange_value", 0.2), ("vf_coef", 0.1)):
        value = o.get(key, default)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
            out.append(f"objective.{key} must be a number >= 0, got {value!r}")
    eos = o.get("missing_eos_penalty")
    if eos is not None and not (isinstance(eos, (int, float)) and not isinstance(eos, bool) and eos >= 0):
        out.append(f"objective.missing_eos_penalty must be null or a number >= 0 (subtracted from the score of a "
                   f"completion without EOS), got {eos!r}")
    return [p for p in out if p]


class PPOPolicy(GRPOPolicy):
    """Satisfies :class:`medlab.contracts.ExperienceObjective` (prompt data); see the module docstring."""

    min_generations = 1

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, rewards: Mapping[str, Any],
                 num_generations: int = 1, num_ppo_epochs: int = 1, num_mini_batches: int = 1,
                 kl_coef: float = 0.05, kl_estimator: str = "k1", missing_eos_penalty: float | None = None,
                 gamma: float = 1.0, lam: float = 0.95, cliprange: float = 0.2, cliprange_value: float = 0.2,
                 vf_coef: float = 0.1, whiten_rewards: bool = False, value_head_init_std: float | None = None,
                 max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                 micro_batch_size: int | None = None, micro_batch_tokens: int | None = 2048,
                 logprob_batch_size: int | None = None, val_max_new_tokens: int | None = None,
                 tools: Mapping[str, Any] | None = None, max_turns: int = 3, max_total_tokens: int | None = None,
                 engine: str = "medlab", engine_check_every: int = 16, reward_timeout_s: float | None = 300.0,
                 old_logprobs: str = "decode", **optim):
        settings = dict(num_generations=num_generations, num_ppo_epochs=num_ppo_epochs,
                        num_mini_batches=num_mini_batches, kl_estimator=kl_estimator, gamma=gamma, lam=lam,
                        kl_coef=kl_coef, cliprange=cliprange, cliprange_value=cliprange_value, vf_coef=vf_coef,
                        missing_eos_penalty=missing_eos_penalty)
        problems = ppo_problems(settings)
        if problems:
            raise ValueError("; ".join(problems))
        super().__init__(model, tokenizer, rewards=rewards, num_generations=num_generations,
                         max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                         num_iterations=num_ppo_epochs, beta=kl_coef, epsilon=cliprange,
                         micro_batch_size=micro_batch_size, micro_batch_tokens=micro_batch_tokens,
                         logprob_batch_size=logprob_batch_size, val_max_new_tokens=val_max_new_tokens, tools=tools,
                         max_turns=max_turns, max_total_tokens=max_total_tokens, engine=engine,
                         engine_check_every=engine_check_every, reward_timeout_s=reward_timeout_s,
                         old_logprobs=old_logprobs, **optim)
        self.kl_coef, self.kl_estimator = float(kl_coef), kl_estimator
        self.missing_eos_penalty = None if missing_eos_penalty is None else float(missing_eos_penalty)
        self.gamma, self.lam, self.whiten_rewards = float(gamma), float(lam), bool(whiten_rewards)
        self.cliprange, self.cliprange_value, self.vf_coef = float(cliprange), float(cliprange_value), float(vf_coef)
        self.num_ppo_epochs, self.num_mini_batches = num_ppo_epochs, num_mini_batches
        self.critic = Critic(model, init_std=value_head_init_std)
        self.steps_per_experience = num_ppo_epochs * num_mini_batches
        # prompts a loader batch needs so that its completions fill every mini-batch (the loop drops a shorter
        # last batch of an epoch instead of failing on it mid-run)
        self.min_batch_prompts = -(-num_mini_batches // num_generations)

    @classmethod
    def config_problems(cls, cfg) -> list[str]:
        """Rewards that load, PPO's numbers, mini-batches that fit the experience, a strategy with whole weights."""
        o = cfg.objective
        out = reward_problems(o) + ppo_problems(o)
        out.append(int_problem("objective.micro_batch_tokens", o.get("micro_batch_tokens"), allow_none=True))
        out.append(choice_problem("objective.old_logprobs", o.get("old_logprobs", "decode"), OLD_LOGPROBS))
        k, n, g = o.get("num_mini_batches", 1), cfg.data.get("batch_size"), o.get("num_generations", 1)
        if all(isinstance(v, int) for v in (k, n, g)) and k > n * g:
            out.append(f"objective.num_mini_batches={k} is more than the {n * g} completions of an experience "
                       f"(data.batch_size={n} x objective.num_generations={g})")
        out.append(sharded_strategy_problem(cfg, "ppo"))
        return [p for p in out if p]

    def on_fit_end(self) -> None:
        self.critic.release()  # the export (after fit) holds the policy adapter alone

    # ------------------------------------------------------------------ experience
    @torch.no_grad()
    def reference_logps(self, mb: dict) -> torch.Tensor:
        with self.critic.keep_trainable():  # peft's disable_adapter() would freeze the critic adapter on exit
            return super().reference_logps(mb)

    @torch.no_grad()
    def make_experience(self, batch: dict) -> list[list[dict]]:
        """A loader batch of prompts -> ``num_ppo_epochs x num_mini_batches`` windows (see the module docstring)."""
        ro, ids, total, per_fn, rstats, agent_stats, score_s = self.sample_and_score(batch)
        t0 = time.perf_counter()
        N, C = ro.completion_ids.shape
        device = ro.completion_ids.device
        old = torch.zeros(N, C, device=device)
        values = torch.zeros(N, C, device=device)
        ref = torch.zeros(N, C, device=device) if self.kl_coef > 0 else None
        for rows in self.micro_batch_rows(ro):
            mb = _micro_batch(ro, ids, rows)
            r, c = mb["rows"], mb["completion_ids"].shape[1]
            old[r, :c] = self.old_logps(ro, mb)
            with self._autocast():
                values[r, :c] = self.critic(*(mb[k] for k in ROLLOUT_KEYS))
            if ref is not None:
                ref[r, :c] = self.reference_logps(mb)
        logprob_s = time.perf_counter() - t0

        loss_mask = getattr(ro, "loss_mask", None)
        mask = (ro.completion_mask if loss_mask is None else loss_mask).to(device)
        scores = torch.nan_to_num(total.to(device).float(), nan=0.0)  # unscorable: 0 (counted: reward_masked)
        if self.missing_eos_penalty:
            scores = scores - self.missing_eos_penalty * ro.is_truncated.to(device).float()
        rewards, kl = token_rewards(scores, old, ref, mask, kl_coef=self.kl_coef, estimator=self.kl_estimator)
        if self.whiten_rewards and int(mask.sum()) > 1:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, values, mask, gamma=self.gamma, lam=self.lam)
        if int(mask.sum()) > 1:
            advantages = masked_whiten(advantages, mask)

        stats = rollout_stats(ro, total, per_fn, rstats, score_s, logprob_s)
        stats.update(agent_stats)
        stats.update({
            "score": float(scores.mean()), "kl": float(kl.sum(1).mean()),
            "reward_total": float((scores - self.kl_coef * kl.sum(1)).mean()),
            "eos_missing_frac": float(ro.is_truncated.float().mean()),
            "value/mean": float(masked_mean(values, mask)),
            "value/explained_variance": explained_variance(values, returns, mask),
            "adv/abs_mean": float(masked_mean(advantages.abs(), mask)),
        })
        windows = self._windows(ro, ids, old=old, values=values, advantages=advantages, returns=returns)
        stats["micro_batches"] = float(sum(len(w) for w in windows)) / len(windows)
        self._exp_stats.append(stats)
        return windows

    def _windows(self, ro, ids: list, **per_token: torch.Tensor) -> list[list[dict]]:
        """Per PPO epoch, the rows shuffled into ``num_mini_batches`` mini-batches, each split into token-budget
        micro-batches carrying their slices of the per-token tensors (``old_logps``, ``old_values``, ...)."""
        N = ro.num_rows
        if N < self.num_mini_batches:
            raise ValueError(f"an experience of {N} completions cannot make objective.num_mini_batches="
                             f"{self.num_mini_batches} mini-batches (lower num_mini_batches or raise data.batch_size)")
        prompt_lengths = ro.prompt_mask.sum(1).tolist()
        completion_lengths = ro.completion_lengths.tolist()
        names = {"old": "old_logps", "values": "old_values", "advantages": "advantages", "returns": "returns"}
        windows = []
        for _ in range(self.num_ppo_epochs):
            order = torch.randperm(N).tolist()  # torch's global RNG: restored on resume, so the same shuffles
            for part in (order[i::self.num_mini_batches] for i in range(self.num_mini_batches)):
                groups = token_budget_batches([prompt_lengths[i] for i in part],
                                              [completion_lengths[i] for i in part],
                                              max_tokens=self.micro_batch_tokens, max_rows=self.micro_batch_size)
                window = []
                for group in groups:
                    mb = _micro_batch(ro, ids, sorted(part[j] for j in group))
                    r, c = mb["rows"], mb["completion_ids"].shape[1]
                    mb.update({names[k]: t[r, :c] for k, t in per_token.items()})
                    window.append(mb)
                windows.append(window)
        return windows

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> dict:
        mask = batch.get("loss_mask", batch["completion_mask"])
        logps, entropy = sequence_logprobs(self.model, *(batch[k] for k in ROLLOUT_KEYS),
                                           temperature=self.temperature, batch_size=self.logprob_batch_size,
                                           with_entropy=True)
        values = self.critic(*(batch[k] for k in ROLLOUT_KEYS))
        pg_loss, pstats = ppo_policy_loss(logps, batch["old_logps"], batch["advantages"], mask, clip=self.cliprange)
        vf_loss, vstats = ppo_value_loss(values, batch["old_values"], batch["returns"], mask,
                                         clip=self.cliprange_value)
        loss = pg_loss + self.vf_coef * vf_loss
        step = {"policy/loss": pg_loss.detach(), "value/loss": vf_loss.detach(),
                "policy/clipfrac": pstats["clipfrac"], "value/clipfrac": vstats["vf_clipfrac"],
                "policy/approx_kl": pstats["approx_kl"], "policy/ratio": pstats["ratio"],
                "policy/entropy": masked_mean(entropy, mask)}
        for k, v in step.items():  # device tensors: no host sync until the log point
            self._train_sums[k] = self._train_sums.get(k, 0.0) + v.detach().float()
        self._train_count += 1
        return {"loss": loss, "pg_loss": step["policy/loss"], "vf_loss": step["value/loss"]}

    def batch_weight(self, batch: dict) -> int:
        if "completion_mask" not in batch:  # a validation batch of prompts
            return len(batch["ids"])
        return batch["num_completion_tokens"]

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        """One AdamW over the policy and the critic (adapter or value model, and the value head), as TRL's
        PolicyAndValueWrapper; ``objective.lr_multipliers`` can give the critic its own rate (e.g. ``value_head``)."""
        return self.optim.build(self.named_parameters(), self.estimated_stepping_batches)
