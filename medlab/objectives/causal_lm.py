"""CausalLM: next-token prediction for continued pretraining (``mode=cpt``) and SFT (``mode=sft``).

The two modes share this module unchanged: what differs is which tokens carry labels, decided by the
data pipeline (every token for CPT; assistant turns + EOS for SFT).
"""

from __future__ import annotations

import math

import lightning as L
import torch

from medlab import losses
from medlab.optim import build_adamw, build_scheduler

MODES = ("cpt", "sft")


class CausalLM(L.LightningModule):
    def __init__(self, model: torch.nn.Module, tokenizer=None, *, mode: str = "sft", lr: float = 2e-4,
                 weight_decay: float = 0.0, betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8,
                 scheduler: str = "cosine", warmup_steps: int = 0, warmup_ratio: float = 0.0,
                 min_lr_ratio: float = 0.1, fused_adamw: bool | None = None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"objective.mode={mode!r}; expected one of {MODES}")
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.lr, self.weight_decay, self.betas, self.eps = lr, weight_decay, tuple(betas), eps
        self.scheduler_kind, self.warmup_steps, self.warmup_ratio = scheduler, warmup_steps, warmup_ratio
        self.min_lr_ratio, self.fused_adamw = min_lr_ratio, fused_adamw
        self.estimated_stepping_batches = 1  # set by the loop before configure_optimizers

    def forward(self, batch: dict) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                         position_ids=batch.get("position_ids"), use_cache=False)
        return out.logits

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        return {"loss": losses.causal_lm_loss(self(batch), batch["labels"])}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        logits = self(batch)
        return {"loss": losses.causal_lm_loss(logits, batch["labels"]),
                "token_acc": losses.token_accuracy(logits, batch["labels"])}

    def validation_metrics(self, metrics: dict) -> dict:
        if "val/loss" in metrics:
            metrics["val/ppl"] = math.exp(min(metrics["val/loss"], 50.0))
        return metrics

    # The loop weights micro-batches by label tokens, so accumulation equals one big batch exactly.
    def batch_weight(self, batch: dict) -> int:
        return batch["num_label_tokens"]

    def batch_tokens(self, batch: dict) -> int:
        return batch["num_tokens"]

    def flops_per_token(self) -> float:
        """6N training FLOPs per token (PaLM appendix B without the attention term), N = non-embedding params."""
        n = sum(p.numel() for name, p in self.model.named_parameters() if "embed" not in name)
        return 6.0 * n

    def configure_optimizers(self):
        opt = build_adamw(self.model.named_parameters(), lr=self.lr, weight_decay=self.weight_decay,
                          betas=self.betas, eps=self.eps, fused=self.fused_adamw)
        sched = build_scheduler(opt, total_steps=self.estimated_stepping_batches, kind=self.scheduler_kind,
                                warmup_steps=self.warmup_steps, warmup_ratio=self.warmup_ratio,
                                min_lr_ratio=self.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
