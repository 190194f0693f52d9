"""CausalLM: next-token prediction for continued pretraining (``mode=cpt``) and SFT (``mode=sft``).

The two modes share this module unchanged: what differs is which tokens carry labels, decided by the
data pipeline (every token for CPT; assistant turns + EOS for SFT).
"""

from __future__ import annotations

import logging
import math

import lightning as L
import torch

from medlab.ops import linear_ce, losses
from medlab.objectives.common import OptimSettings, choice_problem, int_problem

MODES = ("cpt", "sft")
LOSS_IMPLS = ("chunked", "full", "liger")
log = logging.getLogger("medlab")


class CausalLM(L.LightningModule):
    """Satisfies :class:`medlab.contracts.Objective` (chat data: SFT rows or CPT blocks)."""

    head = "causal_lm"
    peft_task = "CAUSAL_LM"
    data_kinds = ("chat",)
    eval_task = "qa"
    owns_backward = False

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, mode: str = "sft", loss_impl: str = "chunked",
                 loss_chunk_size: int | None = None, tool_routing=None, **optim):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"objective.mode={mode!r}; expected one of {MODES}")
        if loss_impl not in LOSS_IMPLS:
            raise ValueError(f"objective.loss_impl={loss_impl!r}; expected one of {LOSS_IMPLS}")
        self.loss_impl, self.loss_chunk_size = loss_impl, loss_chunk_size
        self._fallback_logged = False
        self.model, self.tokenizer, self.mode = model, tokenizer, mode
        self.optim = OptimSettings(**{"lr": 2e-4, "betas": (0.9, 0.95), "min_lr_ratio": 0.1, **optim})
        self.estimated_stepping_batches = 1  # set by the loop before configure_optimizers
        self.flops_seq_len: int | None = None  # bind_data: the attention term of MFU
        self.tool_routing = tool_routing  # optional: medlab.rl.tool_routing.ToolRouting (val/tool_routing_acc)

    @classmethod
    def config_problems(cls, cfg) -> list[str]:
        o = cfg.objective
        out = [choice_problem("objective.mode", o.get("mode"), MODES),
               choice_problem("objective.loss_impl", o.get("loss_impl", "chunked"), LOSS_IMPLS),
               int_problem("objective.loss_chunk_size", o.get("loss_chunk_size"), allow_none=True)]
        return [p for p in out if p]

    def bind_data(self, data) -> None:
        self.flops_seq_len = data.max_length
        if self.tool_routing is not None:
            self.tool_routing.bind(data)

    def forward(self, batch: dict) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                         position_ids=batch.get("position_ids"), use_cache=False)
        return out.logits

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        parts = self._head_parts()
        if parts is None:
            return {"loss": losses.causal_lm_loss(self(batch), batch["labels"])}
        rows, targets, count = self._label_rows(parts, batch)
        if self.loss_impl == "liger":
            nll_sum = _liger_loss()(parts.head.weight, rows, targets, parts.head.bias)
        else:
            nll_sum = linear_ce.linear_cross_entropy(rows, parts.head.weight, targets, parts.head.bias,
                                                     self.loss_chunk_size)
        return {"loss": nll_sum / count}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        parts = self._head_parts()
        if parts is None:
            logits = self(batch)
            return {"loss": losses.causal_lm_loss(logits, batch["labels"]),
                    "token_acc": losses.token_accuracy(logits, batch["labels"])}
        rows, targets, count = self._label_rows(parts, batch)
        nll, hits = linear_ce.linear_cross_entropy_stats(rows, parts.head.weight, targets, parts.head.bias,
                                                         self.loss_chunk_size)
        return {"loss": nll / count, "token_acc": hits.float() / count}

    # ------------------------------------------------------------------ the loss path
    def _head_parts(self) -> linear_ce.LMHeadParts | None:
        """Decoder + lm_head for the chunked/fused loss, or None for the plain full-logits path."""
        if self.loss_impl == "full":
            return None
        parts, reason = linear_ce.lm_head_parts(self.model)
        if parts is not None and parts.head.weight.dim() == 2 and parts.head.weight.numel() > 0:
            return parts
        if parts is not None:  # e.g. DeepSpeed ZeRO-3 holds the head weight partitioned outside its forward
            reason = "the lm_head weight is partitioned"
        if self.loss_impl == "liger":
            raise ValueError(f"objective.loss_impl=liger cannot be used with this model: {reason}")
        if not self._fallback_logged:
            log.warning("objective.loss_impl=%s: %s; using the full-logits loss", self.loss_impl, reason)
            self._fallback_logged = True
        return None

    def _label_rows(self, parts: linear_ce.LMHeadParts, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hidden rows that predict a label, their targets, and the label count (a device tensor, >= 1)."""
        rows, targets = linear_ce.shift_for_next_token(self._hidden(parts, batch), batch["labels"],
                                                       batch.get("loss_index"))
        return rows, targets, (targets != linear_ce.IGNORE_INDEX).sum().clamp(min=1)

    def _hidden(self, parts: linear_ce.LMHeadParts, batch: dict) -> torch.Tensor:
        out = parts.decoder(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                            position_ids=batch.get("position_ids"), use_cache=False)
        return out[0]

    def validation_metrics(self, metrics: dict) -> dict:
        if "val/loss" in metrics:
            metrics["val/ppl"] = math.exp(min(metrics["val/loss"], 50.0))
        if self.tool_routing is not None:  # greedy tool calls on the held-out conversations
            metrics.update({f"val/{k}": v for k, v in self.tool_routing(self.model, self.tokenizer).items()})
        return metrics

    # The loop weights micro-batches by label tokens, so accumulation equals one big batch exactly.
    def batch_weight(self, batch: dict) -> int:
        return batch["num_label_tokens"]

    def batch_tokens(self, batch: dict) -> int:
        return batch["num_tokens"]

    def step_metrics(self) -> dict[str, float]:
        return {}

    def flops_per_token(self) -> float:
        """Training FLOPs per token, PaLM appendix B: 6N + 12·L·H·Q·T (N = non-embedding parameters, L layers,
        H heads, Q head dim, T = ``self.flops_seq_len``, the data's max length, from ``bind_data``; without it the
        attention term is left out). Under LoRA this is still the full model's count (the MFU convention)."""
        n = sum(p.numel() for name, p in self.model.named_parameters() if "embed" not in name)
        return palm_flops_per_token(n, getattr(self.model, "config", None), self.flops_seq_len)

    def on_fit_start(self) -> None:
        if self.loss_impl == "liger":
            _liger_loss()  # fail before the first step, with the reason
            if self.device.type != "cuda":
                raise ValueError("objective.loss_impl=liger runs Triton kernels on a CUDA GPU; use chunked here")

    def configure_optimizers(self):
        return self.optim.build(self.model.named_parameters(), self.estimated_stepping_batches)


def _liger_loss():
    """Liger's fused linear cross-entropy (Triton, CUDA only), summed over label tokens."""
    try:
        from liger_kernel.transformers.fused_linear_cross_entropy import (
            LigerFusedLinearCrossEntropyLoss,
        )
    except ImportError as e:
        raise ImportError("objective.loss_impl=liger needs `pip install liger-kernel` (CUDA); "
                          "objective.loss_impl=chunked is the built-in equivalent") from e
    return LigerFusedLinearCrossEntropyLoss(ignore_index=linear_ce.IGNORE_INDEX, reduction="sum")


def palm_flops_per_token(non_embedding_params: int, config, seq_len: int | None) -> float:
    """6N + 12·L·H·Q·T (PaLM, Chowdhery et al. 2022, appendix B); the attention term needs the config and T."""
    flops = 6.0 * non_embedding_params
    text = getattr(config, "text_config", None) or config
    layers, heads = getattr(text, "num_hidden_layers", None), getattr(text, "num_attention_heads", None)
    if seq_len and layers and heads:
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        flops += 12.0 * layers * heads * head_dim * seq_len
    return flops
