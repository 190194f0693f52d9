"""ORPO: Odds Ratio Preference Optimization (``objective=orpo``) on preference pairs; no reference model.

Per pair, from the per-token *average* completion log-probs ā_c, ā_r of one concatenated forward (chunked head
path): ``loss = NLL(y_c) - λ · log σ(log odds)``, log odds = (ā_c - ā_r) - (log(1 - e^ā_c) - log(1 - e^ā_r))
(``medlab.ops.preference_losses.orpo_loss``, equal to TRL's ``ORPOTrainer.odds_ratio_loss``). The NLL term is the
chosen completion's mean token NLL, -ā_c, averaged over pairs: medlab's SFT convention (assistant tokens only),
where TRL averages over every token of prompt + chosen in the batch; per pair, it keeps gradient accumulation
equal to one big batch (``batch_weight`` = pairs).

Logged: ``nll``, ``log_odds``, ``log_odds_ratio``, ``rewards/*`` (λ·ā, TRL's), ``logps/*``; validation adds
``accuracy`` (ā_c > ā_r) and ``margin``.
"""

from __future__ import annotations

import lightning as L
import torch

from medlab.objectives.causal_lm import palm_flops_per_token
from medlab.objectives.common import OptimSettings
from medlab.objectives.preference_common import (
    MetricSums,
    check_bound_data,
    max_padding_problems,
    pairing_problem,
    sequence_logps,
    sharded_strategy_problem,
)
from medlab.ops.preference_losses import orpo_loss, pair_metrics


class ORPO(L.LightningModule):
    """Satisfies :class:`medlab.contracts.Objective` (preference pairs)."""

    head = "causal_lm"
    peft_task = "CAUSAL_LM"
    data_kinds = ("preference",)
    eval_task = "preference"
    owns_backward = False

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, lam: float = 0.1,
                 loss_chunk_size: int | None = None, max_padding: float | None = 0.1, **optim):
        super().__init__()
        problems = _problems(lam) + max_padding_problems(max_padding)
        if problems:
            raise ValueError("; ".join(problems))
        self.model, self.tokenizer, self.lam = model, tokenizer, float(lam)
        self.loss_chunk_size, self.max_padding = loss_chunk_size, max_padding
        self.optim = OptimSettings(**{"lr": 8e-6, **optim})
        self.estimated_stepping_batches = 1
        self.flops_seq_len: int | None = None
        self._train = MetricSums()

    @classmethod
    def config_problems(cls, cfg) -> list[str]:
        pairing = pairing_problem(cfg, paired=True, objective="orpo")
        sharded = sharded_strategy_problem(cfg, "orpo")
        return (_problems(cfg.objective.get("lam", 0.1)) + max_padding_problems(cfg.objective.get("max_padding", 0.1))
                + [p for p in (pairing, sharded) if p])

    def bind_data(self, data) -> None:
        check_bound_data(data, paired=True, objective="orpo")
        self.flops_seq_len = data.max_length

    def pair_terms(self, batch: dict, split: str = "train") -> tuple[torch.Tensor, dict]:
        """Per-pair losses [B] and the metrics of one batch (``split``: unused, no reference)."""
        logps, lengths = sequence_logps(self.model, batch["input_ids"], batch.get("attention_mask"), batch["labels"],
                                        chunk_size=self.loss_chunk_size, max_padding=self.max_padding)
        avg = logps / lengths.clamp(min=1)
        n = logps.shape[0] // 2
        nll = -avg[:n]
        loss, stats = orpo_loss(avg[:n], avg[n:], nll, self.lam)
        metrics = pair_metrics(stats["chosen_rewards"], stats["rejected_rewards"], logps[:n], logps[n:])
        metrics.update(nll=nll.detach().mean(), log_odds=stats["log_odds"].mean(),
                       log_odds_ratio=stats["log_odds_ratio"].mean())
        return loss, metrics

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        loss, metrics = self.pair_terms(batch)
        self._train.add(metrics, float(len(batch["ids"])))
        return {"loss": loss.mean()}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        loss, metrics = self.pair_terms(batch)
        return {"loss": loss.mean(), **metrics, "accuracy": metrics["rewards/accuracies"],
                "margin": metrics["rewards/margins"]}

    def validation_metrics(self, metrics: dict) -> dict:
        return metrics

    def batch_weight(self, batch: dict) -> int:
        return len(batch["ids"])

    def batch_tokens(self, batch: dict) -> int:
        return batch["num_tokens"]

    def step_metrics(self) -> dict[str, float]:
        return self._train.means()

    def flops_per_token(self) -> float:
        n = sum(p.numel() for name, p in self.model.named_parameters() if "embed" not in name)
        return palm_flops_per_token(n, getattr(self.model, "config", None), self.flops_seq_len)

    def configure_optimizers(self):
        return self.optim.build(self.model.named_parameters(), self.estimated_stepping_batches)


def _problems(lam) -> list[str]:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or lam < 0:
        return [f"objective.lam (the odds-ratio weight λ) must be a number >= 0, got {lam!r}"]
    return []
