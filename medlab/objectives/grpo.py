"""GRPOPolicy: Group Relative Policy Optimization (``objective=grpo``) in medlab's one loop.

Per loader batch of prompts the loop calls :meth:`GRPOPolicy.make_experience`, which

1. samples ``num_generations`` (G) completions per prompt with the generation engine (HF ``generate``, KV
   cache, left-padded batches; temperature / top-p / top-k / max_new_tokens from the config);
2. scores them with the configured rewards (``medlab.rl.rewards.RewardSet``: weighted sum; a reward that
   raises or returns None/NaN is masked for that sample and counted, never fatal);
3. packs the rows into micro-batches by length, each within ``micro_batch_tokens`` padded tokens (default
   2048) and ``micro_batch_size`` completions (``medlab.rl.microbatch``), and, per micro-batch, stores the
   old log-probs (when ``num_iterations`` > 1, or for the KL in the reward) and the reference log-probs (when
   ``beta`` > 0); every forward, with or without gradients, is one micro-batch. The old (behaviour) log-probs
   come from the decode loop (``objective.old_logprobs: decode``, the default: ``Rollout.logprobs``, the sampled
   tokens' ``log_softmax(logits / temperature)`` -- the quantity the loss recomputes, fp32, 0 after EOS; for tool
   rollouts per generated turn, observations masked), so no no-grad policy forward is spent on them;
   ``recompute`` (or an engine that gives none) runs that forward. With mu = 1 the loss needs no old
   log-probs at all (the ratio is taken against the detached current ones);
4. turns rewards into advantages (``objective.advantage``, ``medlab.rl.advantages``): ``grpo`` group-relative
   (the KL is a k3 loss term, ``beta``), ``rloo`` leave-one-out baseline and ``reinforce_pp`` per-token
   whitened returns (both charge ``beta`` x the k1 KL to the reference in the reward, as TRL's RLOO and
   REINFORCE++ do, and add no KL to the loss);
5. returns ``num_iterations`` (mu) windows over the same micro-batches: the loop makes one optimizer step
   per window (``steps_per_experience``), each iteration using the stored old log-probs in the ratio.

Training and validation share one rollout + scoring path (:meth:`GRPOPolicy.rollouts` and
:meth:`GRPOPolicy.score`), so ``val/reward`` is the reward training optimizes, with the same fields (for tool
rollouts: the passages the agent saw).

``training_step`` computes the policy's per-token log-probs and ``medlab.rl.losses.grpo_loss`` (clipped
surrogate, optional clip-higher ``epsilon_high``, k3 KL * beta). ``batch_weight`` matches the aggregation,
so the loop's weight / window-total scaling gives exactly the window-level loss: completion tokens for
``token`` (DAPO), sequences for ``sequence`` (GRPO) and ``dr_grpo``.

Reference policy (beta > 0): with LoRA/QLoRA (a peft model) the base model with adapters disabled -- no
second copy. A full fine-tune keeps a frozen copy of the initial weights, made once in ``on_fit_start``
(before a resume loads the checkpoint, so it is always the initial model); it costs one more model in
memory, so prefer an adapter or ``beta: 0`` for large models.

Validation generates greedy answers for the validation prompts: ``val/reward`` (mean total reward),
``val/accuracy`` (exact match against the ``answer`` field; rows without an answer count as wrong),
``val/format_failure_rate`` (no well-formed ``<answer>...</answer>``), ``val/completion_length`` and
``val/rewards/<name>/failure_rate`` (completions a reward could not score: masked as in training, counted,
and named in a warning after the validation -- never silent, never fatal).

Per-step metrics (``step_metrics``, logged by the loop as ``train/<key>`` at log points, averaged over the
steps since the last one): ``reward``, ``reward_std``, ``rewards/<name>/{mean,std,failures}``,
``reward_masked``, ``frac_reward_zero_std``, ``adv/{mean,std,abs_mean}``, ``kl``, ``clip_ratio/*``,
``completions/{mean_length,max_length,truncated_frac}``, ``time/{generate_s,score_s,logprob_s}`` (per experience:
sampling, rewards, old/reference log-probs), ``time/update_s`` (per optimizer step: forward, backward, clipping)
and ``rollout/tokens_per_s`` (completion tokens per second of generation).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch

from medlab.objectives.common import OptimSettings, choice_problem, int_problem
from medlab.rl.advantages import (
    ESTIMATOR_SCALES,
    ESTIMATORS,
    group_advantages,
    reinforce_pp_advantages,
    rloo_advantages,
    sequence_kl,
)
from medlab.rl.decode import KVCacheEngine
from medlab.rl.generation import HFGenerateEngine, _find_peft, eval_mode, sequence_logprobs
from medlab.rl.losses import AGGREGATIONS, grpo_loss
from medlab.rl.microbatch import token_budget_batches
from medlab.rl.rewards import RewardSet, exact_match, format_reward

log = logging.getLogger(__name__)

ROLLOUT_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
OLD_LOGPROBS = ("decode", "recompute")  # objective.old_logprobs: from the decode loop | a no-grad policy forward


class GRPOPolicy(L.LightningModule):
    """Satisfies :class:`medlab.contracts.ExperienceObjective` (prompt data)."""

    head = "causal_lm"
    peft_task = "CAUSAL_LM"
    data_kinds = ("prompts",)
    eval_task = "qa"
    owns_backward = False
    min_generations = 2  # a group: the advantages compare completions of one prompt (PPO's critic needs no group)

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, rewards: Mapping[str, Any],
                 num_generations: int = 8, max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, num_iterations: int = 1, beta: float = 0.0, epsilon: float = 0.2,
                 epsilon_high: float | None = None, scale_rewards: str | None = None, adv_eps: float = 1e-4,
                 advantage: str = "grpo", loss_aggregation: str = "token", micro_batch_size: int | None = None,
                 micro_batch_tokens: int | None = 2048,
                 logprob_batch_size: int | None = None, val_max_new_tokens: int | None = None,
                 tools: Mapping[str, Any] | None = None, max_turns: int = 3, max_total_tokens: int | None = None,
                 engine: str = "medlab", engine_check_every: int = 16,
                 reward_timeout_s: float | None = 300.0, old_logprobs: str = "decode", **optim):
        super().__init__()
        if tokenizer is None:
            raise ValueError("GRPOPolicy needs the tokenizer (generation and decoding)")
        problems = []
        if not (isinstance(num_generations, int) and num_generations >= self.min_generations):
            problems.append(f"objective.num_generations must be an integer >= {self.min_generations}, "
                            f"got {num_generations!r}")
        if not (isinstance(num_iterations, int) and num_iterations >= 1):
            problems.append(f"objective.num_iterations must be an integer >= 1, got {num_iterations!r}")
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 1):
            problems.append(f"objective.max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if not temperature > 0:
            problems.append(f"objective.temperature must be > 0, got {temperature}")
        if not 0 < top_p <= 1:
            problems.append(f"objective.top_p must be in (0, 1], got {top_p}")
        if beta < 0 or epsilon < 0 or (epsilon_high is not None and epsilon_high < 0):
            problems.append("objective.beta, epsilon and epsilon_high must be >= 0")
        problems += _advantage_problems(advantage, scale_rewards)
        if loss_aggregation not in AGGREGATIONS:
            problems.append(f"objective.loss_aggregation={loss_aggregation!r} is not one of {', '.join(AGGREGATIONS)}")
        if micro_batch_size is not None and not (isinstance(micro_batch_size, int) and micro_batch_size >= 1):
            problems.append(f"objective.micro_batch_size must be null or an integer >= 1, got {micro_batch_size!r}")
        if micro_batch_tokens is not None and not (isinstance(micro_batch_tokens, int) and micro_batch_tokens >= 1):
            problems.append(f"objective.micro_batch_tokens must be null or an integer >= 1, got {micro_batch_tokens!r}")
        problems.append(choice_problem("objective.old_logprobs", old_logprobs, OLD_LOGPROBS))
        problems = [p for p in problems if p]
        if problems:
            raise ValueError("; ".join(problems))
        self.model, self.tokenizer = model, tokenizer
        self.old_logprobs = old_logprobs
        self.rewards = RewardSet.from_config(_plain(rewards), timeout_s=reward_timeout_s)
        self.num_generations, self.max_new_tokens = num_generations, max_new_tokens
        self.temperature, self.top_p, self.top_k = float(temperature), float(top_p), int(top_k or 0)
        self.num_iterations, self.beta = num_iterations, float(beta)
        self.epsilon, self.epsilon_high = float(epsilon), epsilon_high
        self.advantage, self.adv_eps, self.loss_aggregation = advantage, float(adv_eps), loss_aggregation
        self.scale_rewards = scale_rewards or ESTIMATOR_SCALES[advantage][0]
        # rloo / reinforce_pp: the KL to the reference is a penalty in the reward (k1), not a loss term
        self.kl_in_reward = advantage != "grpo"
        self.micro_batch_size, self.logprob_batch_size = micro_batch_size, logprob_batch_size
        self.micro_batch_tokens = micro_batch_tokens
        self.val_max_new_tokens = val_max_new_tokens or max_new_tokens
        # agentic RAG: multi-turn rollouts with search tools (medlab.rl.agent); built in on_fit_start
        self.tools_config = _plain(tools) if tools else None
        self.max_turns, self.max_total_tokens = int(max_turns), max_total_tokens
        self.tools: dict | None = None
        self.load_run: Any = None  # bind_run_loader: loads the runs behind the search tools
        self._passages: dict = {}
        self.optim = OptimSettings(**optim)
        if engine not in ("medlab", "hf"):
            raise ValueError(f"objective.engine={engine!r}; expected medlab (KV-cache loop, no per-token host sync) "
                             "or hf (transformers generate)")
        self.engine = (KVCacheEngine(model, tokenizer, check_every=engine_check_every) if engine == "medlab"
                       else HFGenerateEngine(model, tokenizer))
        self.steps_per_experience = num_iterations  # the loop: one optimizer step per iteration
        self.estimated_stepping_batches = 1
        self.ref_model: torch.nn.Module | None = None
        self._exp_stats: list[dict[str, float]] = []
        self._train_sums: dict[str, torch.Tensor] = {}
        self._train_count = 0
        self._update_s, self._update_steps = 0.0, 0
        self._step_t0: float | None = None

    @classmethod
    def config_problems(cls, cfg) -> list[str]:
        """Rewards that load, a group of at least two completions, a strategy that keeps whole weights."""
        o = cfg.objective
        out = reward_problems(o)
        out.append(int_problem("objective.num_generations", o.get("num_generations"), minimum=2))
        out.append(int_problem("objective.num_iterations", o.get("num_iterations")))
        out += _advantage_problems(o.get("advantage", "grpo"), o.get("scale_rewards"))
        out.append(int_problem("objective.micro_batch_tokens", o.get("micro_batch_tokens"), allow_none=True))
        out.append(choice_problem("objective.old_logprobs", o.get("old_logprobs", "decode"), OLD_LOGPROBS))
        out.append(sharded_strategy_problem(cfg, "grpo"))
        return [p for p in out if p]

    def bind_data(self, data) -> None:
        """Generation stops on the data's chat template end-of-turn token too (e.g. ``<|eot_id|>`` for llama3 on a
        tokenizer whose EOS is another token), as well as on the tokenizer's EOS."""
        if data.stop_token_ids:
            self.engine.set_stop_tokens(data.stop_token_ids)

    def flops_per_token(self) -> None:
        return None  # generation dominates and is not counted: no MFU for RL steps

    # ------------------------------------------------------------------ reference policy
    @property
    def uses_adapters(self) -> bool:
        return _find_peft(self.model) is not None

    def bind_run_loader(self, load_run: Any) -> None:
        """``medlab.contracts.UsesRuns``: how to load the bi-encoder/reranker runs the search tools use (and the
        reward-model runs of ``reward_model`` rewards)."""
        self.load_run = load_run
        self.rewards.bind_run_loader(load_run)

    def build_tools(self, load_run: Any = None) -> None:
        if self.tools_config and self.tools is None:
            from medlab.rl.agent import build_tools

            load_run = load_run or self.load_run
            if load_run is None:
                raise ValueError("objective.tools needs a run loader: call bind_run_loader(medlab.evaluation.load_run) "
                                 "(the runner does) or pass load_run to build_tools")
            self.tools, self._passages = build_tools(self.tools_config, load_run)

    def on_fit_start(self) -> None:
        self.build_tools()
        if self.beta > 0 and not self.uses_adapters and self.ref_model is None:
            # Before the loop restores a checkpoint: the copy is the initial model, also on resume.
            self.ref_model = copy.deepcopy(self.model).eval().requires_grad_(False)
            log.info("GRPO: full fine-tune with beta=%g keeps a frozen reference copy of the model", self.beta)

    def _autocast(self):
        fabric = getattr(self, "_fabric", None)
        return fabric.autocast() if fabric is not None else contextlib.nullcontext()

    def _logps(self, model, mb: dict) -> torch.Tensor:
        return sequence_logprobs(model, *(mb[k] for k in ROLLOUT_KEYS), temperature=self.temperature,
                                 batch_size=self.logprob_batch_size)

    @torch.no_grad()
    def old_logps(self, ro, mb: dict) -> torch.Tensor:
        """The sampling policy's log-probs ``[n, c]`` for micro-batch ``mb`` of rollout ``ro``: the engine's own
        (``ro.logprobs``, no forward) under ``old_logprobs: decode``, else one no-grad forward of the policy."""
        if self.old_logprobs == "decode" and getattr(ro, "logprobs", None) is not None:
            return ro.logprobs[mb["rows"], : mb["completion_ids"].shape[1]]
        with self._autocast():
            return self._logps(self.model, mb)

    @torch.no_grad()
    def reference_logps(self, mb: dict) -> torch.Tensor:
        with self._autocast():
            if self.ref_model is not None:
                with eval_mode(self.ref_model):
                    return self._logps(self.ref_model, mb)
            peft_model = _find_peft(self.model)
            if peft_model is None:
                raise RuntimeError("beta > 0 needs a reference: a peft model, or on_fit_start's frozen copy")
            with peft_model.disable_adapter():
                return self._logps(self.model, mb)

    # ------------------------------------------------------------------ experience
    def rollouts(self, batch: dict, G: int, *, sample: bool) -> tuple[Any, list, dict[str, list], dict[str, float]]:
        """G completions per prompt -- sampled (training) or greedy (validation) -- with what the rewards score
        them on: ``(rollout, prompts, fields, agent statistics)``, one entry per completion in ``prompts`` and in
        every ``fields`` list (the batch's row fields repeated G times, plus, for tool rollouts, what the agent
        saw: ``retrieved``, ``num_tool_calls``, ...). Training and validation both go through here and
        :meth:`score`, so they score with the same rewards on the same fields."""
        max_new = self.max_new_tokens if sample else self.val_max_new_tokens
        sampling = {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k} if sample else {}
        agent_fields: dict[str, list] = {}
        agent_stats: dict[str, float] = {}
        with self._autocast():
            if self.tools:
                ro, agent_fields, agent_stats = self._agent_rollouts(batch, G, sample, max_new, sampling)
            else:
                ro = self.engine.generate(batch["prompt_ids"], num_generations=G, max_new_tokens=max_new,
                                          do_sample=sample, **sampling)
        prompts = [p for p in batch["prompts"] for _ in range(G)]
        fields = {k: [v for v in vals for _ in range(G)] for k, vals in batch["fields"].items()}
        fields.update(agent_fields)
        return ro, prompts, fields, agent_stats

    def score(self, prompts: list, texts: list[str], fields: Mapping[str, list]):
        """The configured rewards on completions: ``(total [N], per reward [N], stats)`` (``RewardSet``)."""
        return self.rewards(prompts, texts, **fields)

    @torch.no_grad()
    def make_experience(self, batch: dict) -> list[list[dict]]:
        """A loader batch of prompts -> ``num_iterations`` windows over the same scored micro-batches."""
        ro, ids, total, per_fn, rstats, agent_stats, score_s = self.sample_and_score(batch)
        t0 = time.perf_counter()
        groups = self.micro_batch_rows(ro)
        micro = [_micro_batch(ro, ids, rows) for rows in groups]
        kl = None
        if self.kl_in_reward and self.beta > 0:  # the full [N, C] per-token KL, gathered from the micro-batches
            kl = torch.zeros(ro.completion_ids.shape, dtype=torch.float32, device=ro.completion_ids.device)
        for mb in micro:
            old = None
            if self.num_iterations > 1 or kl is not None:  # the ratio's denominator / the sampling policy
                old = self.old_logps(ro, mb)
                if self.num_iterations > 1:
                    mb["old_logps"] = old
            if self.beta > 0:
                mb["ref_logps"] = self.reference_logps(mb)
            if kl is not None:
                mask = mb.get("loss_mask", mb["completion_mask"])
                kl[mb["rows"], : mask.shape[1]] = sequence_kl(old, mb["ref_logps"], mask)
        logprob_s = time.perf_counter() - t0
        adv, astats = self._advantages(total.to(ro.completion_ids.device), ro, kl)
        for mb in micro:
            a = adv[mb["rows"]]
            mb["advantages"] = a if a.dim() == 1 else a[:, : mb["completion_ids"].shape[1]]
        self._record_experience(ro, total, per_fn, rstats, adv, astats, score_s, logprob_s)
        self._exp_stats[-1].update(agent_stats)
        self._exp_stats[-1]["micro_batches"] = float(len(micro))
        return [micro for _ in range(self.num_iterations)]

    def sample_and_score(self, batch: dict):
        """The start of every experience (GRPO's and PPO's): ``num_generations`` sampled completions per prompt
        (:meth:`rollouts`), scored (:meth:`score`) -> ``(rollout, ids, total, per_fn, reward stats, agent stats,
        score seconds)``, ``ids`` the example id of every rollout row."""
        G = self.num_generations
        self._step_t0 = None
        ro, prompts, fields, agent_stats = self.rollouts(batch, G, sample=True)
        t0 = time.perf_counter()
        total, per_fn, rstats = self.score(prompts, ro.texts, fields)
        score_s = time.perf_counter() - t0
        ids = [i for i in batch["ids"] for _ in range(G)]
        return ro, ids, total, per_fn, rstats, agent_stats, score_s

    def micro_batch_rows(self, ro) -> list[list[int]]:
        """Rollout rows per micro-batch: packed by length within ``micro_batch_tokens`` padded tokens and at most
        ``micro_batch_size`` rows (``medlab.rl.microbatch.token_budget_batches``); the update and the old /
        reference log-prob passes run micro-batch by micro-batch, so both limits bound every forward."""
        return token_budget_batches(ro.prompt_mask.sum(1).tolist(), ro.completion_lengths.tolist(),
                                    max_tokens=self.micro_batch_tokens, max_rows=self.micro_batch_size)

    def _advantages(self, total: torch.Tensor, ro, kl: torch.Tensor | None):
        """Rewards (and the per-token KL to the reference, for the estimators that charge it in the reward) ->
        advantages: [N] for grpo / rloo, [N, C] per token for reinforce_pp."""
        if self.advantage == "rloo":
            return rloo_advantages(total, self.num_generations, kl=kl, kl_coef=self.beta, scale=self.scale_rewards,
                                   eps=self.adv_eps)
        if self.advantage == "reinforce_pp":
            mask = getattr(ro, "loss_mask", None)
            mask = ro.completion_mask if mask is None else mask
            return reinforce_pp_advantages(total, mask, kl=kl, kl_coef=self.beta, scale=self.scale_rewards)
        return group_advantages(total, self.num_generations, scale=self.scale_rewards, eps=self.adv_eps)

    def _agent_rollouts(self, batch: dict, G: int, do_sample: bool, max_new_tokens: int | None = None,
                        sampling: Mapping[str, Any] | None = None):
        from medlab.rl.agent import agentic_rollouts

        if not batch.get("messages") or batch["messages"][0] is None:
            raise ValueError("objective.tools needs prompt data that keeps chat messages (medlab.rl.data.PromptData)")
        gen = {"max_new_tokens": max_new_tokens or self.max_new_tokens, "do_sample": do_sample, **(sampling or {})}
        return agentic_rollouts(self.engine, self.tokenizer, batch["messages"], self.tools, self._passages,
                                num_generations=G, max_turns=self.max_turns, max_total_tokens=self.max_total_tokens,
                                device=self.device, **gen)

    def _record_experience(self, ro, total, per_fn, rstats, adv, astats, score_s, logprob_s) -> None:
        stats = rollout_stats(ro, total, per_fn, rstats, score_s, logprob_s)
        stats.update({
            "frac_reward_zero_std": float(astats["frac_zero_std"]),
            "adv/mean": float(adv.float().mean()), "adv/std": float(adv.float().std()) if adv.numel() > 1 else 0.0,
            "adv/abs_mean": float(astats["adv/abs_mean"]),
        })
        if "kl" in astats:  # rloo / reinforce_pp: the KL charged in the reward (k1, sampling policy vs reference)
            stats["reward_kl"] = float(astats["kl"])
        self._exp_stats.append(stats)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict, batch_idx: int) -> dict:
        logps = self._logps(self.model, batch)
        # tool rollouts: attention covers observations, the loss only the policy's own tokens
        mask = batch.get("loss_mask", batch["completion_mask"])
        # rloo / reinforce_pp charged the KL in the reward: the loss only logs it (k3, policy vs reference)
        beta = 0.0 if self.kl_in_reward else self.beta
        loss, stats = grpo_loss(logps, batch.get("old_logps"), batch.get("ref_logps"), batch["advantages"], mask,
                                eps_low=self.epsilon, eps_high=self.epsilon_high, beta=beta,
                                aggregation=self.loss_aggregation,
                                max_completion_length=self.max_new_tokens)
        for k in ("kl", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "ratio/mean"):
            if k in stats:  # device tensors: no host sync until the log point
                self._train_sums[k] = self._train_sums.get(k, 0.0) + stats[k].detach().float()
        self._train_count += 1
        return {"loss": loss, **{k: v for k, v in stats.items() if k != "num_tokens"}}

    def batch_weight(self, batch: dict) -> int:
        if "completion_mask" not in batch:  # a validation batch of prompts
            return len(batch["ids"])
        return batch["num_completion_tokens"] if self.loss_aggregation == "token" else batch["num_sequences"]

    def batch_tokens(self, batch: dict) -> int:
        return batch["num_tokens"]

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._step_t0 is None:
            self._step_t0 = time.perf_counter()

    def on_before_optimizer_step(self, optimizer) -> None:
        if self._step_t0 is not None:  # forward + backward + clipping of this step (after the step's host sync)
            self._update_s += time.perf_counter() - self._step_t0
            self._update_steps += 1
            self._step_t0 = None

    def step_metrics(self) -> dict[str, float]:
        """Means over the experiences / micro-batches / steps since the last call (then reset)."""
        out: dict[str, float] = {}
        if self._exp_stats:
            keys = list(dict.fromkeys(k for s in self._exp_stats for k in s))
            for k in keys:
                vals = [s[k] for s in self._exp_stats if k in s and not math.isnan(s[k])]
                agg = max if "max" in k.rsplit("/", 1)[-1] else (lambda v: sum(v) / len(v))
                out[k] = agg(vals) if vals else math.nan
        if self._train_count:
            out.update({k: float(v) / self._train_count for k, v in self._train_sums.items()})
        if self._update_steps:
            out["time/update_s"] = self._update_s / self._update_steps
        self._exp_stats, self._train_sums, self._train_count = [], {}, 0
        self._update_s, self._update_steps = 0.0, 0
        return out

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def answer(self, batch: dict, max_new_tokens: int | None = None):
        """Greedy completions (a :class:`~medlab.rl.generation.Rollout`) for a prompt batch (``PromptData.collate``)."""
        if max_new_tokens is not None and not self.tools:
            with self._autocast():
                return self.engine.generate(batch["prompt_ids"], num_generations=1, do_sample=False,
                                            max_new_tokens=max_new_tokens)
        return self.rollouts(batch, 1, sample=False)[0]

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Greedy answers scored exactly as training scores its samples (:meth:`rollouts` + :meth:`score`: same
        rewards, same fields, the agent's passages included). A reward that cannot score a completion is masked,
        as in training, and counted: ``val/rewards/<name>/failure_rate`` (fraction of validation completions it
        did not score), with a warning naming it after the validation (:meth:`validation_metrics`)."""
        ro, prompts, fields, _ = self.rollouts(batch, 1, sample=False)
        total, per_fn, _ = self.score(prompts, ro.texts, fields)
        scores = score_answers(prompts, ro.texts, fields)
        scores["reward"] = _nanmean(total) if not torch.isnan(total).all() else 0.0
        for name, values in per_fn.items():
            scores[f"rewards/{name}/failure_rate"] = float(torch.isnan(values).float().mean()) if values.numel() else 0.0
        scores["completion_length"] = float(ro.completion_lengths.float().mean())
        return {k: torch.tensor(v, device=self.device, dtype=torch.float32) for k, v in scores.items()}

    def validation_metrics(self, metrics: dict) -> dict:
        """val/reward, val/accuracy, ... are per-batch means already; rewards that failed are named in the log."""
        failed = {k.split("/")[2]: v for k, v in metrics.items()
                  if k.startswith("val/rewards/") and k.endswith("/failure_rate") and v > 0}
        if failed:
            log.warning("validation: %s could not score %s of the completions (it raised -- the error is logged "
                        "above -- or returned None/NaN, e.g. a row without the field it needs); masked in "
                        "val/reward, as in training", ", ".join(repr(n) for n in failed),
                        ", ".join(f"{v:.0%}" for v in failed.values()))
        return metrics

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        return self.optim.build(self.model.named_parameters(), self.estimated_stepping_batches)


def score_answers(prompts: list, texts: list[str], fields: Mapping[str, list], rewards: RewardSet | None = None
                  ) -> dict[str, float]:
    """Means over one batch: ``accuracy`` (exact match vs ``answer``; no answer = wrong), ``format_failure_rate``
    (no well-formed ``<answer>`` tag) and, with ``rewards``, ``reward`` (mean total reward over scorable rows)."""
    n = max(len(texts), 1)
    answers = fields.get("answer", [None] * len(texts))
    em = exact_match(prompts, texts, answer=list(answers))
    fmt = format_reward(prompts, texts, kind="answer")
    out = {"accuracy": sum(v or 0.0 for v in em) / n, "format_failure_rate": 1.0 - sum(fmt) / n}
    if rewards is not None:
        total, _, _ = rewards(prompts, texts, **fields)
        out["reward"] = _nanmean(total) if not torch.isnan(total).all() else 0.0
    return out


def reward_problems(o) -> list[str]:
    """``objective.rewards`` set and loadable (short names, dotted paths, callables)."""
    from omegaconf import OmegaConf

    rewards = o.get("rewards")
    if not rewards:
        return ["objective.rewards is empty: configure at least one reward, e.g. "
                "+objective.rewards.accuracy={_target_: exact_match, weight: 1.0}"]
    try:
        RewardSet.from_config(OmegaConf.to_container(rewards, resolve=True))
    except Exception as e:  # unknown name, bad dotted path, not callable
        return [f"objective.rewards: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"]
    return []


def sharded_strategy_problem(cfg, name: str) -> str | None:
    """RL objectives generate with the training model: strategies that shard its weights are refused."""
    if str(cfg.strategy.get("name")) in ("fsdp", "deepspeed_stage_3"):
        return (f"objective={name} generates with the training model, whose weights FSDP / DeepSpeed ZeRO-3 "
                "shard: use strategy=ddp or strategy=single")
    return None


def rollout_stats(ro, total, per_fn, rstats, score_s: float, logprob_s: float) -> dict[str, float]:
    """What every RL experience logs about its rollouts: rewards (total and per function), completion lengths and
    the time spent sampling, scoring and in the no-grad log-prob passes."""
    lengths = ro.completion_lengths.float()
    stats = {
        "reward": _nanmean(total), "reward_std": _nanstd(total),
        "reward_masked": float(rstats["reward/masked"]),
        "completions/mean_length": float(lengths.mean()), "completions/max_length": float(lengths.max()),
        "completions/truncated_frac": float(ro.is_truncated.float().mean()),
        "time/generate_s": ro.seconds, "time/score_s": score_s, "time/logprob_s": logprob_s,
        "rollout/tokens_per_s": ro.tokens_per_s,
    }
    for name, values in per_fn.items():
        stats[f"rewards/{name}/mean"] = _nanmean(values)
        stats[f"rewards/{name}/std"] = _nanstd(values)
        stats[f"rewards/{name}/failures"] = float(torch.isnan(values).sum())
    return stats


def _micro_batch(ro, ids: list, rows: list[int]) -> dict:
    """The rollout's ``rows`` (indices), with all-padding prompt columns (left) and completion columns (right)
    dropped; ``rows`` is kept (a long tensor) to put per-row results such as advantages back in place."""
    idx = torch.tensor(rows, dtype=torch.long, device=ro.completion_ids.device)
    pm, cm = ro.prompt_mask[idx], ro.completion_mask[idx]
    first = int(pm.any(0).long().argmax()) if pm.shape[1] else 0  # first prompt column any row uses
    c_len = int(ro.completion_lengths[idx].max()) if rows else 0
    loss_mask = getattr(ro, "loss_mask", None)
    n_tokens = int(cm.sum())
    extra = {}
    if loss_mask is not None:  # agentic rollouts: observations are attended to but not trained on
        extra["loss_mask"] = loss_mask[idx, :c_len]
    return {**extra,
        "prompt_ids": ro.prompt_ids[idx, first:], "prompt_mask": pm[:, first:],
        "completion_ids": ro.completion_ids[idx, :c_len], "completion_mask": cm[:, :c_len],
        "rows": idx, "ids": [ids[i] for i in rows], "num_sequences": len(rows),
        "num_completion_tokens": int(extra["loss_mask"].sum()) if extra else n_tokens,
        "num_tokens": int(pm.sum()) + n_tokens,
    }


def _advantage_problems(advantage: Any, scale: Any) -> list[str]:
    """objective.advantage and the objective.scale_rewards it takes (null = the estimator's default)."""
    if advantage not in ESTIMATORS:
        return [f"objective.advantage={advantage!r} is not one of {', '.join(ESTIMATORS)}"]
    scales = ESTIMATOR_SCALES[advantage]
    if scale is not None and scale not in scales:
        return [f"objective.scale_rewards={scale!r} is not one of {', '.join(scales)} (objective.advantage="
                f"{advantage}; null = {scales[0]})"]
    return []


def _plain(cfg: Any) -> dict:
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    return dict(cfg)


def _nanmean(t: torch.Tensor) -> float:
    v = t[~torch.isnan(t)]
    return float(v.mean()) if v.numel() else math.nan


def _nanstd(t: torch.Tensor) -> float:
    v = t[~torch.isnan(t)]
    return float(v.std()) if v.numel() > 1 else 0.0
