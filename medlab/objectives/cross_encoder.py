"""CrossEncoder: a (query, document) relevance scorer trained with BCE or a listwise softmax.

The backbone carries a one-logit sequence-classification head (BERT-family encoders: [CLS] pooler;
decoder LLMs: the last non-pad token, via transformers' *ForSequenceClassification). Losses:

- ``bce``: mean binary cross-entropy with logits over every pair (labels in [0, 1], so graded
  judgments mapped to soft or thresholded labels both work);
- ``listwise``: groups of 1 positive + (k-1) negatives (``data.group_size = k``), softmax cross-entropy
  with the positive as the target;
- ``listnet``: lists of k candidates of one query with their grades (``data.list_size = k``), softmax
  cross-entropy against the softmax of the grades / ``label_temperature`` (`medlab.retrieval.losses.listnet_ce`).

``prior=cosine`` (`medlab.retrieval.prior`): the score is ``scale * cos(E(q), E(d)) + head(q, d)`` with the head
initialised at zero, so the untrained reranker ranks exactly as the zero-shot bi-encoder does and training learns a
correction (the reranker recipe for small medical judgment sets: experiments/rerank/README.md).
``prior_trainable`` fine-tunes the cosine branch with the shared backbone (else a frozen copy); ``residual=false``
drops the joint encoding (a fine-tuned bi-encoder scorer).

Validation reports the BCE loss and reranking metrics (MRR@10 on labels, NDCG@10 on graded scores,
Accuracy@1) over each query's candidate list.
"""

from __future__ import annotations

import lightning as L
import torch

from medlab.objectives.common import OptimSettings, choice_problem, gather_objects
from medlab.retrieval.evaluation import rerank_report
from medlab.retrieval.losses import listnet_ce, listwise_softmax_ce, pairwise_bce
from medlab.retrieval.pooling import POOLING
from medlab.retrieval.prior import PRIORS, CosinePrior, backbone_of, split_sides, zero_score_head

LOSSES = ("bce", "listwise", "listnet")


class CrossEncoder(L.LightningModule):
    """Satisfies :class:`medlab.contracts.Objective` (retrieval data with ``task: cross_encoder``)."""

    head = "score"
    peft_task = "SEQ_CLS"
    data_kinds = ("retrieval",)
    data_task = "cross_encoder"  # RetrievalData's batches: scored (query, document) pairs
    eval_task = "rerank"
    owns_backward = False

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, loss: str = "bce", eval_k: int = 10,
                 label_temperature: float = 1.0, prior: str = "none", prior_scale: float = 20.0,
                 prior_pooling: str = "mean", prior_trainable: bool = True, prior_learn_scale: bool = False,
                 residual: bool = True, **optim):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"objective.loss={loss!r} is not one of {LOSSES}")
        if prior not in PRIORS:
            raise ValueError(f"objective.prior={prior!r} is not one of {PRIORS}")
        if not residual and prior == "none":
            raise ValueError("objective.residual=false leaves no score: it needs objective.prior=cosine")
        self.model, self.tokenizer, self.loss_kind, self.eval_k = model, tokenizer, loss, eval_k
        self.label_temperature, self.residual = label_temperature, residual
        self.prior = None
        if prior == "cosine":
            self.prior = CosinePrior(backbone_of(model), scale=prior_scale, pooling=prior_pooling,
                                     trainable=prior_trainable, learn_scale=prior_learn_scale)
            zero_score_head(model)  # the correction starts at 0: the untrained score is the cosine ranking
            if not residual:
                for p in _head_only_params(model):
                    p.requires_grad_(False)  # never in the graph: DDP would wait for their gradients
        self.optim = OptimSettings(**optim)
        self.estimated_stepping_batches = 1
        self._val: list[tuple] = []

    @classmethod
    def config_problems(cls, cfg) -> list[str]:
        o, d = cfg.objective, cfg.data
        loss, prior = o.get("loss"), o.get("prior", "none")
        out = [choice_problem("objective.loss", loss, LOSSES), choice_problem("objective.prior", prior, PRIORS),
               choice_problem("objective.prior_pooling", o.get("prior_pooling", "mean"), POOLING)]
        if loss == "listwise" and not d.get("group_size"):
            out.append("objective.loss=listwise needs groups of 1 positive + k negatives: set data.group_size=K")
        if loss == "listnet" and not d.get("list_size"):
            out.append("objective.loss=listnet needs lists of one query's graded candidates: set data.list_size=K")
        if prior == "cosine" and not d.get("pair_sides"):
            out.append("objective.prior=cosine scores the query and the document encoded alone too: set "
                       "data.pair_sides=true")
        if o.get("residual") is False and prior != "cosine":
            out.append("objective.residual=false leaves no score: it needs objective.prior=cosine")
        scale = o.get("prior_scale", 20.0)
        if not (isinstance(scale, (int, float)) and scale > 0):
            out.append(f"objective.prior_scale must be > 0, got {scale!r}")
        temperature = o.get("label_temperature", 1.0)
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            out.append(f"objective.label_temperature must be > 0, got {temperature!r}")
        return [p for p in out if p]

    def bind_data(self, data) -> None:
        pass

    def step_metrics(self) -> dict[str, float]:
        return {"prior_scale": float(self.prior.scale)} if self.prior is not None else {}

    def flops_per_token(self) -> None:
        return None  # MFU is reported for language-model objectives only

    def score(self, pairs: dict) -> torch.Tensor:
        """Tokenized pairs -> one relevance logit per pair [N] (float32). With ``prior=cosine`` the pairs carry the
        query and document encoded alone (``query.*`` / ``doc.*`` keys: ``data.pair_sides``)."""
        joint, query, doc = split_sides(pairs)
        if self.prior is None:
            return self.model(**joint).logits.reshape(-1).float()
        if query is None or doc is None:
            raise ValueError("objective.prior=cosine needs the query and document encoded alone in each batch: "
                             "build the data with data.pair_sides=true")
        prior = self.prior(query, doc)
        if not self.residual:
            return prior
        return prior + self.model(**joint).logits.reshape(-1).float()

    def _loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        k = batch["group_size"]
        if self.loss_kind == "listwise":
            if k < 2:
                raise ValueError("objective.loss=listwise needs groups: set data.group_size (1 positive + k-1 negatives)")
            return listwise_softmax_ce(logits.view(-1, k))
        if self.loss_kind == "listnet":
            if k < 2:
                raise ValueError("objective.loss=listnet needs lists: set data.list_size (k candidates of one query)")
            return listnet_ce(logits.view(-1, k), batch["grades"].view(-1, k), self.label_temperature)
        return pairwise_bce(logits, batch["labels"].to(logits.device))

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        out = {"loss": self._loss(self.score(batch["pairs"]), batch)}
        if self.prior is not None:
            out["prior_scale"] = self.prior.scale.detach()
        return out

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


def _head_only_params(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Parameters outside the bare encoder (the classification head, BERT's pooler): unused without a residual."""
    encoder = {id(p) for p in backbone_of(model).parameters()}
    pooler = getattr(backbone_of(model), "pooler", None)
    out = [p for p in model.parameters() if id(p) not in encoder]
    return out + (list(pooler.parameters()) if pooler is not None else [])
