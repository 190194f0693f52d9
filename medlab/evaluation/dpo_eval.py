"""Implicit-reward evaluation of a preference-policy run (DPO and its variants, ORPO) on a preference file.

DPO's policy defines a reward r(x, y) = β (log π(y|x) - log π_ref(y|x)); on held-out pairs a trained policy should
give the chosen answer the higher one. :func:`implicit_reward_metrics` reports, over every pair of the loader:

- ``implicit_reward_accuracy``: share of pairs with r(chosen) > r(rejected) (strictly; ties count as wrong, so the
  untrained policy, equal to its reference, scores 0.0 with margin 0.0);
- ``implicit_reward_margin``: mean r(chosen) - r(rejected); ``rewards/chosen``, ``rewards/rejected``,
  ``logps/chosen``, ``logps/rejected`` (means over pairs), ``loss`` (the run's loss), ``num_pairs``.

The reference is the run's own (adapter disabled, the starting adapter, or -- full fine-tunes and precomputed runs
-- the initial model rebuilt from the run's config without its checkpoint). Reference-free runs (SimPO, ORPO) report
their own rewards (β·average log-prob, λ·average log-prob).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch

from medlab.objectives.preference_common import MetricSums

KEYS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
        "logps/rejected")


def _module_of(run: Any):
    return getattr(run, "module", run)


@contextlib.contextmanager
def _live_reference(run: Any):
    """Evaluation computes the reference live: a precomputed cache covers only the training data, and a full
    fine-tune's reference copy exists only during training (rebuilt here from the run's config)."""
    module = _module_of(run)
    precompute = getattr(module, "precompute", False)
    reference = getattr(module, "reference", None)
    added = False
    if reference is not None and reference.peft is None and not reference._copy:
        cfg = getattr(run, "cfg", None)
        if cfg is None:
            raise ValueError("a full fine-tune's reference is its initial model: pass the LoadedRun (with its cfg)")
        from medlab.evaluation.runs import load_module

        initial = load_module(cfg, None, checkpoint=None, device=module.device).module.model
        reference._copy.append(initial.eval().requires_grad_(False))
        added = True
    module.precompute = False
    try:
        yield module
    finally:
        module.precompute = precompute
        if added:
            reference._copy.clear()


@torch.no_grad()
def implicit_reward_metrics(run: Any, pairs_loader: Iterable[dict], cfg: Any = None) -> dict[str, float]:
    """``run``: a :class:`~medlab.evaluation.runs.LoadedRun` (or its DPO/ORPO module); ``pairs_loader``: paired
    batches (``PreferenceData.collate``: ``[2B, T]`` rows, chosen first); ``cfg``: the run config (optional; the
    loaded run's is used). Returns the metrics of the module docstring."""
    module = _module_of(run)
    if not hasattr(module, "pair_terms"):
        raise ValueError(f"{type(module).__name__} has no implicit reward (DPO-family and ORPO runs do)")
    cfg = cfg if cfg is not None else getattr(run, "cfg", None)
    sums, loss_sum, pairs = MetricSums(), 0.0, 0
    was_training = module.training
    module.eval()
    try:
        with _live_reference(run):
            for batch in pairs_loader:
                batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                n = len(batch["ids"])
                loss, metrics = module.pair_terms(batch, "eval")
                sums.add({k: metrics[k] for k in KEYS}, float(n))
                loss_sum += float(loss.sum())
                pairs += n
    finally:
        module.train(was_training)
    means = sums.means()
    out = {"implicit_reward_accuracy": means.get("rewards/accuracies", float("nan")),
           "implicit_reward_margin": means.get("rewards/margins", float("nan")),
           **{k: means[k] for k in KEYS if k in means}, "loss": loss_sum / max(pairs, 1), "num_pairs": pairs}
    o = cfg.objective if cfg is not None else {}
    for key in ("beta", "loss_type", "lam"):
        if key in o:
            value = o[key]
            out[f"objective/{key}"] = value if isinstance(value, (int, float, str)) else list(value)
    return out
