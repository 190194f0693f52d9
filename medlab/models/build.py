"""Build a run's model from its config: the backbone with the head its objective declares, plus the adapter.

Shared by training (``medlab.commands.train``), evaluation and mining (``medlab.evaluation``): the objective's
``head`` and ``peft_task`` (``medlab.contracts.Objective``) are read from its class, never from its name.
"""

from __future__ import annotations

from omegaconf import DictConfig


def objective_class(cfg: DictConfig):
    from hydra.utils import get_class

    return get_class(cfg.objective._target_)


def build_model(cfg: DictConfig, fabric=None):
    """Backbone (with the head the objective needs) + adapter -> ``(model, tokenizer, adapter_spec)``."""
    from contextlib import nullcontext

    from hydra.utils import instantiate

    cls = objective_class(cfg)
    head, peft_task = cls.head, cls.peft_task  # medlab.contracts.Objective declarations
    adapter = instantiate(cfg.adapter)
    load_model = instantiate(cfg.model)
    extra = {"head": head} if head != "causal_lm" else {}
    with fabric.rank_zero_first() if fabric is not None else nullcontext():  # tiny/converted models: written once
        model, tokenizer = load_model(quantization_config=adapter.quantization_config(), **extra)
    return adapter.apply(model, task_type=peft_task), tokenizer, adapter
