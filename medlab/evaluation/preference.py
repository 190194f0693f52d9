"""Preference evaluation of a loaded run on a file of pairs (or graded judgments, paired within each query).

    data = preference_data(cfg, {"path": "pairs.jsonl", "fields": {"prompt": "question"}})
    data.setup(module.tokenizer)
    metrics = evaluate_preference(run, data, batch_size=64)

- a reward model (``head = score``): ``pairwise_accuracy`` (share of pairs with r(chosen) > r(rejected); ties count
  as wrong), ``mean_margin`` (mean r_c - r_r), ``reward_chosen`` / ``reward_rejected`` (means), ``ties``, ``n_pairs``;
- a preference policy (DPO and its variants, ORPO: ``head = causal_lm``): the implicit-reward accuracy and margins
  of ``medlab.evaluation.dpo_eval.implicit_reward_metrics``.

The pairs are read exactly as training reads them (``PreferenceData`` with the run's template, encoding and length
settings; ``eval.fields`` replaces the run's mapping; nothing is held out), so a run evaluated on its validation
file reproduces its ``val/accuracy``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from omegaconf import OmegaConf

from medlab.config import ConfigError
from medlab.data.preference import PreferenceData
from medlab.evaluation.runs import batches

PREFERENCE_DATA = "medlab.data.preference.PreferenceData"
# the run's data settings a preference evaluation keeps (how prompts and completions become tokens, how judgments
# become pairs); eval.* sets any of them, plus fields / on_bad_row / limit
KEPT = ("format", "fields", "template", "encoding", "system_prompt", "max_length", "max_prompt_length",
        "min_prompt_length", "margin_from_score", "margin_scale", "max_pairs_per_group", "padding_side", "on_bad_row",
        "pair_sides")


def preference_data(cfg: Any, ev: Mapping[str, Any]):
    """A ``PreferenceData`` over ``ev["path"]`` (paired; every row evaluated) with the run's data settings when it
    trained on preference data, ``ev["fields"]`` replacing the run's mapping (``query`` is read as ``prompt``)."""
    run_data = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else {}
    options: dict[str, Any] = {}
    if str(run_data.get("_target_")) == PREFERENCE_DATA:
        options = {k: run_data[k] for k in KEPT if run_data.get(k) is not None}
    options.update({k: v for k, v in ev.items() if k in KEPT})
    if "fields" in ev:
        fields = dict(ev["fields"])
        if "query" in fields and "prompt" not in fields:
            fields["prompt"] = fields.pop("query")
        options["fields"] = fields
    return PreferenceData(ev["path"], val_split=0.0, unpaired=False, limit=ev.get("limit"),
                                      batch_size=int(ev.get("batch_size") or 64), **options)


class PairBatches:
    """The evaluation file's pairs as collated batches (re-iterable; ``len`` = number of batches)."""

    def __init__(self, data: Any, batch_size: int):
        self.data, self.batch_size = data, batch_size

    def __iter__(self) -> Iterator[dict]:
        for chunk in batches(self.data.train_dataset, self.batch_size):
            yield self.data.collate(list(chunk))

    def __len__(self) -> int:
        return -(-len(self.data.train_dataset) // self.batch_size)


@torch.no_grad()
def reward_pairs(module: Any, loader: PairBatches) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards of the chosen, rewards of the rejected) [n_pairs] of a reward-model module, on the CPU."""
    device = next(module.parameters()).device
    chosen, rejected = [], []
    module.eval()
    for batch in loader:
        r = module.rewards({k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
        c, j = r.float().cpu().chunk(2)
        chosen.append(c)
        rejected.append(j)
    return torch.cat(chosen), torch.cat(rejected)


def pairwise_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Pairwise accuracy (strict: ties are wrong), mean margin and mean rewards over pairs."""
    diff = chosen - rejected
    return {"pairwise_accuracy": float((diff > 0).float().mean()), "mean_margin": float(diff.mean()),
            "reward_chosen": float(chosen.mean()), "reward_rejected": float(rejected.mean()),
            "ties": int((diff == 0).sum()), "n_pairs": int(diff.numel())}


def evaluate_preference(run: Any, data: Any, batch_size: int = 64) -> dict[str, Any]:
    """``run``: a LoadedRun ``(cfg, module, checkpoint)``; ``data``: a set-up ``PreferenceData``. See the module doc."""
    cfg, module = run.cfg, run.module
    loader = PairBatches(data, batch_size)
    if not len(loader):
        raise ConfigError([f"{data.paths}: no pairs to evaluate (counts in the log)"])
    head = type(module).head  # medlab.contracts.Objective: score = a reward model; causal_lm = a policy
    if head == "score":
        return pairwise_metrics(*reward_pairs(module, loader))
    try:
        from medlab.evaluation.dpo_eval import implicit_reward_metrics
    except ImportError as e:  # the DPO-family evaluation ships with the DPO objectives
        raise ConfigError([f"evaluating a {type(module).__name__} run on preference pairs needs "
                           f"medlab.evaluation.dpo_eval.implicit_reward_metrics, which is not available ({e})"]) from None
    try:
        return implicit_reward_metrics(run, loader, cfg)
    except ValueError as e:  # e.g. KTO: no implicit pairwise reward
        raise ConfigError([f"eval.task=preference: {e}"]) from None
