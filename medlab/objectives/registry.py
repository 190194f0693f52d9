"""Registered objectives: what the objective contract test suite (``tests/test_objective_contract.py``) runs.

Registering an objective gives it the suite's guarantees: a tiny-model step through the loop, accumulation
equal to the big batch, exact resume, and an export that reloads with transformers/peft. A registration names
the smallest experiment that trains it on a CPU in seconds and how to split its batch into micro-batches::

    register(ObjectiveSpec(
        name="my_objective", target="my_pkg.objectives.MyObjective", experiment="my_experiment",
        overrides=("data.limit=16",),                               # tiny settings for the suite
        big_batch=("data.batch_size=4",),                           # one batch of 4 ...
        micro_batches=("data.batch_size=2", "trainer.accumulate_grad_batches=2")))   # ... equals 2 x 2

The class behind ``target`` must satisfy :class:`medlab.contracts.Objective` (checked when registered).
"""

from __future__ import annotations

from dataclasses import dataclass

from medlab.contracts import objective_problems


@dataclass(frozen=True)
class ObjectiveSpec:
    name: str
    target: str  # dotted path of the class (its conf/objective/*.yaml `_target_`)
    experiment: str  # conf/experiment/<name>.yaml that trains it
    overrides: tuple[str, ...] = ()  # tiny, fast settings on top of the experiment
    big_batch: tuple[str, ...] = ()  # overrides for one big batch ...
    micro_batches: tuple[str, ...] = ()  # ... and for the same examples as micro-batches (same gradient)
    export_head: str = "causal_lm"  # how the export reloads: causal_lm | embed | score
    # strategy=fsdp (FSDP2): True -> the suite trains it on 2 CPU processes with sharded checkpoints and export;
    # False -> the objective's config_problems must refuse strategy=fsdp (the suite checks the message names it)
    fsdp: bool = True


REGISTRY: dict[str, ObjectiveSpec] = {}


def register(spec: ObjectiveSpec) -> ObjectiveSpec:
    from hydra.utils import get_class

    problems = objective_problems(get_class(spec.target))
    if problems:
        raise TypeError(f"cannot register objective {spec.name!r}: " + "; ".join(problems))
    REGISTRY[spec.name] = spec
    return spec


_TINY = ("trainer.progress_bar=false", "logger=csv", "trainer.log_every_n_steps=1", "trainer.val_every_n_steps=null",
         "trainer.ckpt_every_n_steps=null")
# No dropout in the suite: micro-batches draw different dropout masks than one big batch.
_RETRIEVAL = (*_TINY, "model=tiny_bert", "+model.arch.hidden_dropout_prob=0.0",
              "+model.arch.attention_probs_dropout_prob=0.0", "data.limit=16", "data.val_limit=8",
              "data.max_length=48")

BUILTIN = (
    ObjectiveSpec("causal_lm", "medlab.objectives.causal_lm.CausalLM", "sft",
                  (*_TINY, "data.limit=16", "data.max_length=96", "objective.lr=1e-3"),
                  big_batch=("data.batch_size=4",),
                  micro_batches=("data.batch_size=2", "trainer.accumulate_grad_batches=2")),
    ObjectiveSpec("bi_encoder", "medlab.objectives.bi_encoder.BiEncoder", "biencoder",
                  (*_RETRIEVAL, "data.query_max_length=32", "objective.lr=1e-3"),
                  # in-batch negatives: micro-batches equal the big batch only through GradCache
                  big_batch=("data.batch_size=4",),
                  micro_batches=("data.batch_size=4", "objective.gradcache_chunk_size=2"),
                  export_head="embed"),
    ObjectiveSpec("cross_encoder", "medlab.objectives.cross_encoder.CrossEncoder", "reranker",
                  # length-grouped batches would put other examples in a batch of 2 than in a batch of 4
                  # (the reranker experiment trains one epoch: the contract counts steps, not epochs)
                  (*_RETRIEVAL, "objective.lr=1e-3", "data.group_by_length=false", "trainer.max_epochs=null"),
                  big_batch=("data.batch_size=4",),
                  micro_batches=("data.batch_size=2", "trainer.accumulate_grad_batches=2"),
                  export_head="score"),
    ObjectiveSpec("grpo", "medlab.objectives.grpo.GRPOPolicy", "grpo_lora",
                  # + a reward that varies with the completion (the tiny policy rarely answers right: all-equal
                  # rewards give zero advantages and zero gradients)
                  (*_TINY, "adapter.dropout=0.0", "objective.num_generations=4", "objective.max_new_tokens=8",
                   "+objective.rewards.length={_target_: length_penalty, target: 0, per_unit: 0.01, max_penalty: null}",
                   "data.limit=8",
                   "data.val_limit=4", "data.val_batch_size=4"),
                  # one experience: all 8 completions in one forward/backward, or 4 micro-batches of 2
                  big_batch=("data.batch_size=2", "objective.micro_batch_tokens=null"),
                  micro_batches=("data.batch_size=2", "objective.micro_batch_size=2"),
                  fsdp=False),  # generation needs whole weights: config_problems refuses strategy=fsdp
    # PPO: policy adapter + critic adapter and value head on one base; 1 PPO epoch x 1 mini-batch = 1 step per
    # experience (the resume check's step-2 checkpoint is at a boundary); GAE advantages vary without a varying reward
    ObjectiveSpec("ppo", "medlab.objectives.ppo.PPOPolicy", "ppo_lora",
                  (*_TINY, "adapter.dropout=0.0", "objective.max_new_tokens=8", "objective.num_ppo_epochs=1",
                   "objective.num_mini_batches=1", "data.limit=8", "data.val_limit=4", "data.val_batch_size=4"),
                  # one experience of 4 completions: one forward/backward, or 2 micro-batches of 2
                  big_batch=("data.batch_size=4", "objective.micro_batch_tokens=null"),
                  micro_batches=("data.batch_size=4", "objective.micro_batch_size=2"),
                  fsdp=False),  # generation needs whole weights: config_problems refuses strategy=fsdp
    ObjectiveSpec("reward_model", "medlab.objectives.reward_model.RewardModel", "reward_model",
                  (*_TINY, "model=tiny_llama", "data.limit=16", "data.val_limit=8", "data.max_length=96"),
                  big_batch=("data.batch_size=4",),
                  micro_batches=("data.batch_size=2", "trainer.accumulate_grad_batches=2"),
                  export_head="score"),
    # preference policies (full fine-tunes: DPO keeps a frozen reference copy, KTO too; ORPO has no reference)
    # (FSDP2: trained like one process; precompute_ref_logps and a reference adapter are refused under it)
    ObjectiveSpec("dpo", "medlab.objectives.dpo.DPO", "dpo",
                  (*_TINY, "model=tiny_llama", "data.limit=16", "data.val_limit=8", "data.max_length=96",
                   "objective.lr=1e-3"),
                  big_batch=("data.batch_size=4",),
                  micro_batches=("data.batch_size=2", "trainer.accumulate_grad_batches=2")),
    ObjectiveSpec("orpo", "medlab.objectives.orpo.ORPO", "orpo",
                  (*_TINY, "model=tiny_llama", "data.limit=16", "data.val_limit=8", "data.max_length=96",
                   "objective.lr=1e-3"),
                  big_batch=("data.batch_size=4",),
                  micro_batches=("data.batch_size=2", "trainer.accumulate_grad_batches=2")),
    # KTO's KL reference point belongs to the whole loader batch: micro-batches are split inside it
    ObjectiveSpec("kto", "medlab.objectives.kto.KTO", "kto",
                  (*_TINY, "model=tiny_llama", "data.limit=16", "data.val_limit=8", "data.max_length=96",
                   "objective.lr=1e-3"),
                  big_batch=("data.batch_size=4",),
                  micro_batches=("data.batch_size=4", "objective.micro_batch_size=2")),
)

for _spec in BUILTIN:
    register(_spec)
