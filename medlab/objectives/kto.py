"""KTO: Kahneman-Tversky Optimization (``objective=kto``) on unpaired desirable / undesirable completions.

Per completion (``medlab.ops.preference_losses.kto_loss``, equal to TRL's ``KTOTrainer``): desirable
``w_d (1 - σ(β(r - z)))``, undesirable ``w_u (1 - σ(β(z - r)))``, r = log π(y|x) - log π_ref(y|x). The reference
point z is the KL estimate from the batch's mismatched pairs (prompt i with completion i+1, the ``kl_*`` rows the
data source builds): mean of log π - log π_ref over them, detached, averaged over ranks, clamped at 0.

z belongs to the whole loader batch, so KTO is an :class:`medlab.contracts.ExperienceObjective` with one step per
experience: :meth:`make_experience` computes z (and the reference log-probs of the completions) once per loader
batch, without gradients, then splits the batch into ``micro_batch_size`` rows; the loop accumulates them into
one optimizer step (``batch_weight`` = completions), so micro-batches give exactly the big batch's gradient
(``trainer.accumulate_grad_batches`` does not apply). The reference is the adapter-disabled model, the starting
adapter (``adapter.init_from``), or a frozen copy for full fine-tunes (``preference_common.ReferencePolicy``).

Logged: ``kl``, ``rewards/chosen`` (desirable), ``rewards/rejected`` (undesirable), ``rewards/margins``,
``logps/chosen``, ``logps/rejected``; validation adds ``accuracy``: the share of completions whose implicit reward
has the sign of its label (> z for desirable, < z for undesirable).
"""

from __future__ import annotations

import contextlib

import lightning as L
import torch

from medlab.objectives.causal_lm import palm_flops_per_token
from medlab.objectives.common import OptimSettings, int_problem
from medlab.objectives.preference_common import (
    MetricSums,
    ReferencePolicy,
    check_bound_data,
    max_padding_problems,
    pairing_problem,
    sharded_strategy_problem,
    sequence_logps,
)
from medlab.ops.preference_losses import kto_kl, kto_loss

ROW_KEYS = ("input_ids", "attention_mask", "labels", "label")


class KTO(L.LightningModule):
    """Satisfies :class:`medlab.contracts.ExperienceObjective` (unpaired preference data)."""

    head = "causal_lm"
    peft_task = "CAUSAL_LM"
    data_kinds = ("preference",)
    eval_task = "preference"
    owns_backward = False
    steps_per_experience = 1

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, beta: float = 0.1, desirable_weight: float = 1.0,
                 undesirable_weight: float = 1.0, micro_batch_size: int | None = None,
                 ref_adapter: str | None = None, loss_chunk_size: int | None = None, max_padding: float | None = 0.1,
                 **optim):
        super().__init__()
        problems = _problems(beta, desirable_weight, undesirable_weight, micro_batch_size) + \
            max_padding_problems(max_padding)
        if problems:
            raise ValueError("; ".join(problems))
        self.model, self.tokenizer = model, tokenizer
        self.beta, self.micro_batch_size = float(beta), micro_batch_size
        self.desirable_weight, self.undesirable_weight = float(desirable_weight), float(undesirable_weight)
        self.loss_chunk_size, self.max_padding = loss_chunk_size, max_padding
        self.reference = ReferencePolicy(model, ref_adapter)
        self.optim = OptimSettings(**{"lr": 5e-7, **optim})
        self.estimated_stepping_batches = 1
        self.flops_seq_len: int | None = None
        self._train = MetricSums()

    @classmethod
    def config_problems(cls, cfg) -> list[str]:
        o = cfg.objective
        out = _problems(o.get("beta", 0.1), o.get("desirable_weight", 1.0), o.get("undesirable_weight", 1.0),
                        o.get("micro_batch_size")) + max_padding_problems(o.get("max_padding", 0.1))
        if o.get("ref_adapter") and str(cfg.adapter.get("kind")) not in ("lora", "dora"):
            out.append("objective.ref_adapter (the starting adapter as reference) needs adapter=lora or qlora")
        pairing = pairing_problem(cfg, paired=False, objective="kto")
        sharded = sharded_strategy_problem(cfg, "kto")
        return out + [p for p in (pairing, sharded) if p]

    def bind_data(self, data) -> None:
        check_bound_data(data, paired=False, objective="kto")
        self.flops_seq_len = data.max_length

    def _autocast(self):
        fabric = getattr(self, "_fabric", None)
        return fabric.autocast() if fabric is not None else contextlib.nullcontext()

    def _logps(self, model, batch: dict, prefix: str = "") -> torch.Tensor:
        return sequence_logps(model, batch[f"{prefix}input_ids"], batch.get(f"{prefix}attention_mask"),
                              batch[f"{prefix}labels"], chunk_size=self.loss_chunk_size,
                              max_padding=self.max_padding)[0]

    def _mean_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        fabric = getattr(self, "_fabric", None)
        if fabric is None or fabric.world_size == 1:
            return t
        return fabric.all_reduce(t, reduce_op="mean")

    @torch.no_grad()
    def reference_point(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """``(z, reference log-probs of the batch's completions [B])``, no gradients."""
        with self._autocast():
            kl_policy = self._logps(self.model, batch, "kl_")
            with self.reference.active(self.device) as ref_model:
                kl_ref = self._logps(ref_model, batch, "kl_")
                ref = self._logps(ref_model, batch)
        return kto_kl(kl_policy, kl_ref, self._mean_over_ranks), ref

    # ------------------------------------------------------------------ experience
    @torch.no_grad()
    def make_experience(self, batch: dict) -> list[list[dict]]:
        kl, ref = self.reference_point(batch)
        n = len(batch["ids"])
        size = self.micro_batch_size or n
        micro = []
        for s in range(0, n, size):
            e = min(s + size, n)
            mb = {k: batch[k][s:e] for k in ROW_KEYS if k in batch}
            mb.update(kl=kl, ref_logps=ref[s:e], ids=batch["ids"][s:e],
                      num_tokens=int(batch["attention_mask"][s:e].sum()) + int(batch["kl_attention_mask"][s:e].sum()))
            micro.append(mb)
        return [micro]

    def terms(self, batch: dict, kl: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, dict]:
        logps = self._logps(self.model, batch)
        desirable = batch["label"].bool()
        loss, stats = kto_loss(logps, ref, desirable, kl, beta=self.beta, desirable_weight=self.desirable_weight,
                               undesirable_weight=self.undesirable_weight)
        rewards, d = stats["rewards"], desirable.float()
        nd, nu = d.sum().clamp(min=1), (1 - d).sum().clamp(min=1)
        metrics = {"kl": kl.float(), "rewards/chosen": (rewards * d).sum() / nd,
                   "rewards/rejected": (rewards * (1 - d)).sum() / nu,
                   "logps/chosen": (logps.detach() * d).sum() / nd, "logps/rejected": (logps.detach() * (1 - d)).sum() / nu}
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
        right = torch.where(desirable, rewards > self.beta * kl, rewards < self.beta * kl)
        metrics["accuracy"] = right.float().mean()
        return loss, metrics

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        loss, metrics = self.terms(batch, batch["kl"], batch["ref_logps"])
        self._train.add(metrics, float(len(batch["ids"])))
        return {"loss": loss.mean()}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        kl, ref = self.reference_point(batch)
        loss, metrics = self.terms(batch, kl, ref)
        return {"loss": loss.mean(), **metrics}

    def validation_metrics(self, metrics: dict) -> dict:
        return metrics

    def batch_weight(self, batch: dict) -> int:
        return len(batch["ids"])  # completions (desirable + undesirable)

    def batch_tokens(self, batch: dict) -> int:
        return batch["num_tokens"]

    def step_metrics(self) -> dict[str, float]:
        return self._train.means()

    def flops_per_token(self) -> float:
        """PaLM's 6N + attention per token of ``batch_tokens`` (completion and KL rows): a lower bound, the no-grad
        reference and KL passes (about 2N per token each) are not counted."""
        n = sum(p.numel() for name, p in self.model.named_parameters() if "embed" not in name)
        return palm_flops_per_token(n, getattr(self.model, "config", None), self.flops_seq_len)

    def on_fit_start(self) -> None:
        self.reference.on_fit_start()

    def on_fit_end(self) -> None:
        self.reference.release()

    def configure_optimizers(self):
        return self.optim.build(self.model.named_parameters(), self.estimated_stepping_batches)


def _problems(beta, wd, wu, micro) -> list[str]:
    out = []
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta <= 0:
        out.append(f"objective.beta must be > 0, got {beta!r}")
    for key, w in (("desirable_weight", wd), ("undesirable_weight", wu)):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or w <= 0:
            out.append(f"objective.{key} must be > 0, got {w!r}")
    p = int_problem("objective.micro_batch_size", micro, allow_none=True)
    return out + ([p] if p else [])
