"""DPO: Direct Preference Optimization and its variants (``objective=dpo``) on preference pairs.

One forward of the policy over the batch's ``[2B, T]`` rows (chosen 0..B-1, rejected B..2B-1) gives each
completion's summed log-prob through the chunked head path (``preference_common.sequence_logps``); the reference's
come from one no-grad pass (or the precomputed cache); ``medlab.ops.preference_losses.dpo_loss`` combines
``objective.loss_type`` (sigmoid, hinge, ipo, robust, simpo; a list combines them with ``loss_weights``).
SimPO alone needs no reference: none is built or run.

The loss is the mean over pairs and ``batch_weight`` = pairs, so accumulation and DDP equal one big batch. With
the policy equal to its reference (step 1 of a new adapter, or of a run continuing an SFT adapter through
``adapter.init_from``, whose reference is that adapter), every implicit reward is exactly 0 and the sigmoid loss
exactly ln 2.

Logged per step (``step_metrics`` -> ``train/...``) and in validation (``val/...``): ``rewards/chosen``,
``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies`` (β·log-ratio of chosen above rejected),
``logps/chosen``, ``logps/rejected``; validation adds ``accuracy`` (= rewards/accuracies, the default monitor of
the experiments) and ``margin``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence

import lightning as L
import torch

from medlab.objectives.causal_lm import palm_flops_per_token
from medlab.objectives.common import OptimSettings
from medlab.objectives.preference_common import (
    MetricSums,
    RefCache,
    ReferencePolicy,
    check_bound_data,
    max_padding_problems,
    pairing_problem,
    sharded_strategy_problem,
    sequence_logps,
)
from medlab.ops.preference_losses import (
    DPO_LOSS_TYPES,
    LENGTH_NORMALIZED,
    dpo_loss,
    needs_reference,
    pair_metrics,
)

log = logging.getLogger("medlab")


def loss_types_of(value) -> list[str]:
    return [value] if isinstance(value, str) else [str(v) for v in (value or [])]


def dpo_config_problems(o, cfg) -> list[str]:
    """Checks shared by the DPO config: loss types, weights, beta, label smoothing, precompute."""
    out = []
    types = loss_types_of(o.get("loss_type", "sigmoid"))
    unknown = [t for t in types if t not in DPO_LOSS_TYPES]
    if not types or unknown:
        out.append(f"objective.loss_type={types or o.get('loss_type')!r}: "
                   f"{'unknown ' + ', '.join(map(repr, unknown)) + '; ' if unknown else ''}"
                   f"valid loss types: {', '.join(DPO_LOSS_TYPES)} (a list combines them)")
    weights = o.get("loss_weights")
    if weights is not None and len(list(weights)) != len(types):
        out.append(f"objective.loss_weights has {len(list(weights))} values for {len(types)} loss types {types}")
    beta = o.get("beta", 0.1)
    if not isinstance(beta, (int, float)) or isinstance(beta, bool) or beta <= 0:
        out.append(f"objective.beta must be > 0, got {beta!r}")
    eps = o.get("label_smoothing", 0.0)
    if not isinstance(eps, (int, float)) or not 0.0 <= eps < 0.5:
        out.append(f"objective.label_smoothing must be in [0, 0.5), got {eps!r}")
    if o.get("precompute_ref_logps") and types and not needs_reference(types):
        out.append(f"objective.precompute_ref_logps=true with loss_type={types}: SimPO uses no reference, "
                   "there is nothing to precompute")
    if o.get("ref_adapter") and str(cfg.adapter.get("kind")) not in ("lora", "dora"):
        out.append("objective.ref_adapter (the starting adapter as reference) needs adapter=lora or qlora")
    return out + max_padding_problems(o.get("max_padding", 0.1))


class DPO(L.LightningModule):
    """Satisfies :class:`medlab.contracts.Objective` (preference pairs)."""

    head = "causal_lm"
    peft_task = "CAUSAL_LM"
    data_kinds = ("preference",)
    eval_task = "preference"
    owns_backward = False

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, beta: float = 0.1,
                 loss_type: str | Sequence[str] = "sigmoid", loss_weights: Sequence[float] | None = None,
                 label_smoothing: float = 0.0, simpo_gamma: float = 0.5, precompute_ref_logps: bool = False,
                 ref_adapter: str | None = None, loss_chunk_size: int | None = None, max_padding: float | None = 0.1,
                 **optim):
        super().__init__()
        types = loss_types_of(loss_type)
        problems = dpo_config_problems({"loss_type": types, "loss_weights": loss_weights, "beta": beta,
                                        "label_smoothing": label_smoothing, "max_padding": max_padding,
                                        "precompute_ref_logps": precompute_ref_logps}, _NoAdapter())
        if problems:
            raise ValueError("; ".join(problems))
        self.model, self.tokenizer = model, tokenizer
        self.beta, self.loss_types = float(beta), types
        self.loss_weights = [float(w) for w in loss_weights] if loss_weights is not None else None
        self.label_smoothing, self.simpo_gamma = float(label_smoothing), float(simpo_gamma)
        self.uses_reference = needs_reference(types)
        self.precompute = bool(precompute_ref_logps) and self.uses_reference
        self.loss_chunk_size, self.max_padding = loss_chunk_size, max_padding
        self.reference = ReferencePolicy(model, ref_adapter, self.precompute) if self.uses_reference else None
        self.ref_cache = RefCache()
        self.optim = OptimSettings(**{"lr": 5e-7, **optim})
        self.estimated_stepping_batches = 1
        self.flops_seq_len: int | None = None
        self._data = None
        self._train = MetricSums()

    @classmethod
    def config_problems(cls, cfg) -> list[str]:
        pairing = pairing_problem(cfg, paired=True, objective="dpo")
        sharded = sharded_strategy_problem(cfg, "dpo")
        return dpo_config_problems(cfg.objective, cfg) + [p for p in (pairing, sharded) if p]

    def bind_data(self, data) -> None:
        check_bound_data(data, paired=True, objective="dpo")
        self.flops_seq_len = data.max_length
        self._data = data

    # ------------------------------------------------------------------ log-probs
    def _autocast(self):
        fabric = getattr(self, "_fabric", None)
        return fabric.autocast() if fabric is not None else contextlib.nullcontext()

    def policy_logps(self, batch: dict, model=None) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logps(model if model is not None else self.model, batch["input_ids"],
                              batch.get("attention_mask"), batch["labels"], chunk_size=self.loss_chunk_size,
                              max_padding=self.max_padding)

    def reference_logps(self, batch: dict, split: str = "train") -> torch.Tensor | None:
        """``[2B]`` reference log-probs (chosen then rejected), or None for reference-free losses."""
        if not self.uses_reference:
            return None
        if self.precompute:
            ref = self.ref_cache.lookup(split, batch["ids"])
            return torch.cat([ref[:, 0], ref[:, 1]])
        with self.reference.active(self.device) as ref_model:
            return self.policy_logps(batch, ref_model)[0]

    def pair_terms(self, batch: dict, split: str = "train") -> tuple[torch.Tensor, dict]:
        """Per-pair losses [B] and the metrics of one batch."""
        logps, lengths = self.policy_logps(batch)
        ref = self.reference_logps(batch, split)
        n = logps.shape[0] // 2
        loss, stats = dpo_loss(logps[:n], logps[n:], None if ref is None else ref[:n],
                               None if ref is None else ref[n:], beta=self.beta, loss_types=self.loss_types,
                               loss_weights=self.loss_weights, label_smoothing=self.label_smoothing,
                               simpo_gamma=self.simpo_gamma, chosen_lengths=lengths[:n], rejected_lengths=lengths[n:])
        metrics = pair_metrics(stats["chosen_rewards"], stats["rejected_rewards"], logps[:n], logps[n:])
        return loss, metrics

    # ------------------------------------------------------------------ loop
    def training_step(self, batch: dict, batch_idx: int) -> dict:
        loss, metrics = self.pair_terms(batch, "train")
        loss = loss.mean()
        self._train.add(metrics, float(len(batch["ids"])))
        return {"loss": loss}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        loss, metrics = self.pair_terms(batch, "val")
        return {"loss": loss.mean(), **metrics, "accuracy": metrics["rewards/accuracies"],
                "margin": metrics["rewards/margins"]}

    def validation_metrics(self, metrics: dict) -> dict:
        return metrics

    def batch_weight(self, batch: dict) -> int:
        return len(batch["ids"])  # pairs

    def batch_tokens(self, batch: dict) -> int:
        return batch["num_tokens"]

    def step_metrics(self) -> dict[str, float]:
        return self._train.means()

    def flops_per_token(self) -> float:
        """PaLM's 6N + attention per trained token, plus a third for the reference forward when it runs live."""
        n = sum(p.numel() for name, p in self.model.named_parameters() if "embed" not in name)
        flops = palm_flops_per_token(n, getattr(self.model, "config", None), self.flops_seq_len)
        return flops * (4 / 3 if self.uses_reference and not self.precompute else 1.0)

    def on_fit_start(self) -> None:
        if self.reference is not None:
            self.reference.on_fit_start()

    def on_train_start(self) -> None:
        if self.precompute:
            self.precompute_reference()

    def precompute_reference(self) -> None:
        """One no-grad pass of the reference over the train and validation pairs, kept per example id."""
        data = self._data
        if data is None:
            raise RuntimeError("precompute_ref_logps needs the data source: call bind_data(data) first")
        fabric = getattr(self, "_fabric", None)
        rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
        reduce = (lambda t: fabric.all_reduce(t, reduce_op="sum")) if fabric is not None else None

        def compute(batch):
            with self._autocast(), self.reference.active(self.device) as ref_model:
                logps = self.policy_logps(batch, ref_model)[0]
            n = logps.shape[0] // 2
            return torch.stack([logps[:n], logps[n:]], 1)

        size = data.val_batch_size or data.batch_size
        for split, dataset in (("train", data.train_dataset), ("val", data.val_dataset)):
            if dataset is not None and len(dataset):
                self.ref_cache.fill(split, dataset, data.collate, compute, batch_size=size, device=self.device,
                                    rank=rank, world_size=world, all_reduce=reduce)
        self.reference.drop_initial_copy()
        log.info("DPO: reference log-probs precomputed for %s pairs", {k: len(v) for k, v in
                                                                      self.ref_cache.tables.items()})

    def on_fit_end(self) -> None:
        if self.reference is not None:
            self.reference.release()

    def configure_optimizers(self):
        return self.optim.build(self.model.named_parameters(), self.estimated_stepping_batches)


class _NoAdapter:
    """The ``cfg`` of :func:`dpo_config_problems` when checking constructor arguments (no adapter section)."""

    adapter: dict = {}
