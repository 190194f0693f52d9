"""CrossEncoder: a (query, document) relevance scorer trained with BCE or a listwise softmax.

The backbone carries a one-logit sequence-classification head (BERT-family encoders: [CLS] pooler;
decoder LLMs: the last non-pad token, via transformers' *ForSequenceClassification). Losses:

- ``bce``: mean binary cross-entropy with logits over every pair (labels in [0, 1], so graded
  judgments mapped to soft or thresholded labels both work);
- ``listwise``: groups of 1 positive + (k-1) negatives (``data.group_size = k``), softmax cross-entropy
  with the positive as the target.

Validation reports the BCE loss and reranking metrics (MRR@10 on labels, NDCG@10 on graded scores,
Accuracy@1) over each query's candidate list.
"""

from __future__ import annotations

import lightning as L
import torch

from medlab.objectives.common import OptimSettings, choice_problem, gather_objects
from medlab.retrieval.evaluation import rerank_report
from medlab.retrieval.losses import listwise_softmax_ce, pairwise_bce

LOSSES = ("bce", "listwise")


class CrossEncoder(L.LightningModule):
    """Satisfies :class:`medlab.contracts.Objective` (retrieval data with ``task: cross_encoder``)."""

    head = "score"
    peft_task = "SEQ_CLS"
    data_kinds = ("retrieval",)
    data_task = "cross_encoder"  # RetrievalData's batches: scored (query, document) pairs
    eval_task = "rerank"
    owns_backward = False

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, loss: str = "bce", eval_k: int = 10, **optim):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"objective.loss={loss!r} is not one of {LOSSES}")
        self.model, self.tokenizer, self.loss_kind, self.eval_k = model, tokenizer, loss, eval_k
        self.optim = OptimSettings(**optim)
        self.estimated_stepping_batches = 1
        self._val: list[tuple] = []

    @classmethod
    def config_problems(cls, cfg) -> list[str]:
        loss = cfg.objective.get("loss")
        out = [choice_problem("objective.loss", loss, LOSSES)]
        if loss == "listwise" and not cfg.data.get("group_size"):
            out.append("objective.loss=listwise needs groups of 1 positive + k negatives: set data.group_size=K")
        return [p for p in out if p]

    def bind_data(self, data) -> None:
        pass

    def step_metrics(self) -> dict[str, float]:
        return {}

    def flops_per_token(self) -> None:
        return None  # MFU is reported for language-model objectives only

    def score(self, pairs: dict) -> torch.Tensor:
        """Tokenized pairs -> one relevance logit per pair [N] (float32)."""
        return self.model(**pairs).logits.reshape(-1).float()

    def _loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        k = batch["group_size"]
        if self.loss_kind == "listwise":
            if k < 2:
                raise ValueError("objective.loss=listwise needs groups: set data.group_size (1 positive + k-1 negatives)")
            return listwise_softmax_ce(logits.view(-1, k))
        return pairwise_bce(logits, batch["labels"].to(logits.device))

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        return {"loss": self._loss(self.score(batch["pairs"]), batch)}

    def batch_weight(self, batch: dict) -> int:
        return len(batch["ids"])

    def batch_tokens(self, batch: dict) -> int:
        return batch["num_tokens"]

    def on_validation_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        logits = self.score(batch["pairs"])
        for ex_id, s, lab, g, grp in zip(batch["ids"], logits.tolist(), batch["labels"].tolist(),
                                          batch["grades"].tolist(), batch["groups"]):
            self._val.append((ex_id, s, lab, g, grp))
        return {"loss": pairwise_bce(logits, batch["labels"].to(logits.device))}

    def validation_metrics(self, metrics: dict) -> dict:
        rows = {r[0]: r for part in gather_objects(self._val, getattr(self, "_fabric", None)) for r in part}
        self._val = []
        if not rows:
            return metrics
        _, scores, labels, grades, groups = zip(*rows.values())
        try:
            report = rerank_report(scores, labels, grades, groups, k=self.eval_k)
        except ValueError:  # no group with a positive: nothing to rank
            return metrics
        metrics.update({f"val/{k}": v for k, v in report.items()})
        return metrics

    def configure_optimizers(self):
        return self.optim.build(self.named_parameters(), self.estimated_stepping_batches)
