"""BiEncoder: contrastive (InfoNCE) embedding training for text, decoder-LLM and vision-language backbones.

Queries and documents go through the same backbone; token states are pooled (mean | cls |
last_token), L2-normalized, and scored by cosine / temperature against every document of the batch
(in-batch negatives), the batch's hard negatives, and -- under DDP -- every other rank's documents.
Duplicate positives in a batch are masked as false negatives. With ``gradcache_chunk_size`` the
loss is computed GradCache-style (`medlab.retrieval.gradcache`): the negatives are the whole batch
while only one chunk's activations are alive.

Validation reports the in-batch loss and full-corpus retrieval metrics over the validation set:
every distinct document of the set is the corpus, each query's positives are its relevant documents.
"""

from __future__ import annotations

import math

import lightning as L
import torch

from medlab.objectives.common import OptimSettings, choice_problem, gather_objects, int_problem
from medlab.retrieval.evaluation import retrieval_report
from medlab.retrieval.gradcache import cached_info_nce_backward
from medlab.retrieval.losses import gather_with_grad, info_nce
from medlab.retrieval.pooling import POOLING, embed

# Parameter-name parts of the vision towers of the VLM families medlab loads (Qwen2/2.5/3-VL: ``visual.``).
VISION_PARAM_NAMES = ("visual.", "vision_tower.", "vision_model.")


class BiEncoder(L.LightningModule):
    """Satisfies :class:`medlab.contracts.Objective` (retrieval data with ``task: bi_encoder``)."""

    head = "embed"  # the backbone the loader returns: bare model (last_hidden_state)
    peft_task = "FEATURE_EXTRACTION"
    data_kinds = ("retrieval",)
    data_task = "bi_encoder"  # RetrievalData's batches: queries + positives (+ hard negatives)
    eval_task = "retrieval"

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, pooling: str = "mean", normalize: bool = True,
                 temperature: float = 0.05, learnable_temperature: bool = False, symmetric: bool = False,
                 mask_false_negatives: bool = True, cross_rank_negatives: bool = True,
                 gradcache_chunk_size: int | None = None, eval_ks: tuple[int, ...] = (1, 3, 5, 10, 100), **optim):
        super().__init__()
        if pooling not in POOLING:
            raise ValueError(f"objective.pooling={pooling!r} is not one of {POOLING}")
        if not temperature > 0:
            raise ValueError(f"objective.temperature must be > 0, got {temperature}")
        self.model, self.tokenizer = model, tokenizer
        _freeze_unused_pooler(model)
        self.pooling, self.normalize, self.symmetric = pooling, normalize, symmetric
        self.mask_false_negatives, self.cross_rank_negatives = mask_false_negatives, cross_rank_negatives
        self.gradcache_chunk_size, self.eval_ks = gradcache_chunk_size, tuple(eval_ks)
        # log(1/temperature) as a parameter when learnable (CLIP-style), clamped to scale <= 100.
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learnable_temperature:
            self.log_scale = torch.nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)
        self.optim = OptimSettings(**optim)
        self.estimated_stepping_batches = 1
        self.owns_backward = gradcache_chunk_size is not None
        self.loss_scale = 1.0  # set by the loop before each step when owns_backward
        self._vision_params: list[torch.nn.Parameter] | None = None  # _unused_vision_anchor, found once
        self._val: list[dict] = []

    @classmethod
    def config_problems(cls, cfg) -> list[str]:
        import logging

        o, out = cfg.objective, []
        out.append(choice_problem("objective.pooling", o.get("pooling"), POOLING))
        temperature = o.get("temperature")
        if not (isinstance(temperature, (int, float)) and temperature > 0):
            out.append(f"objective.temperature must be > 0, got {temperature!r}")
        chunk = o.get("gradcache_chunk_size")
        if chunk is not None:
            out.append(int_problem("objective.gradcache_chunk_size", chunk, allow_none=True))
            if str(cfg.strategy.get("name")) in ("deepspeed_stage_2", "deepspeed_stage_3"):  # FSDP2: engine/fsdp.py
                out.append("objective.gradcache_chunk_size (GradCache) runs its own backward passes: use strategy "
                           "single, ddp or fsdp, not DeepSpeed")
            if cfg.model.get("source") == "tiny_vlm" or "vl" in str(cfg.model.get("name", "")).lower():
                out.append("GradCache slices inputs by rows, which image patches are not: turn it off for VLM backbones")
        if (cfg.trainer.get("accumulate_grad_batches") or 1) > 1:
            logging.getLogger("medlab").warning(
                "bi-encoder with trainer.accumulate_grad_batches > 1: each micro-batch only sees its own in-batch "
                "negatives; for a larger contrastive batch use objective.gradcache_chunk_size instead")
        return [p for p in out if p]

    def bind_data(self, data) -> None:
        pass  # batches carry everything the loss needs

    def step_metrics(self) -> dict[str, float]:
        return {}

    def flops_per_token(self) -> None:
        return None  # MFU is reported for language-model objectives only

    # ------------------------------------------------------------------ encoding
    @property
    def temperature(self) -> torch.Tensor:
        return 1.0 / self.log_scale.clamp(max=math.log(100.0)).exp()

    def encode(self, inputs: dict) -> torch.Tensor:
        """Model inputs (input_ids, attention_mask[, pixel_values, image_grid_thw]) -> embeddings [B, H]."""
        out = self.model(**inputs)  # the loader set config.use_cache=False (no KV cache while training)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        return embed(hidden, inputs["attention_mask"], self.pooling, self.normalize)

    @torch.no_grad()
    def embed_items(self, inputs_iter) -> torch.Tensor:
        """Embeddings of an iterable of input batches, in eval mode (for evaluation and mining)."""
        was_training = self.training
        self.eval()
        try:
            return torch.cat([self.encode(_to(b, self.device)).float() for b in inputs_iter], dim=0)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ loss
    def _loss(self, q: torch.Tensor, d: torch.Tensor, batch: dict, gather: bool) -> torch.Tensor:
        b, n = q.shape[0], batch["num_negatives"]
        pos, negs = d[:b], d[b:]
        positive_ids, doc_ids = batch["positive_ids"].to(q.device), batch["doc_ids"].to(q.device)
        if gather:  # every rank scores the global batch; see gather_with_grad for the gradient scaling
            q, pos = gather_with_grad(q), gather_with_grad(pos)
            negs = gather_with_grad(negs.contiguous()) if n else negs
            positive_ids = _gather_plain(positive_ids)
            doc_ids = torch.cat([positive_ids, _gather_plain(doc_ids[b:])]) if n else positive_ids
        ids = {"positive_ids": positive_ids, "doc_ids": doc_ids} if self.mask_false_negatives else {}
        return info_nce(q, pos, temperature=self.temperature, hard_negatives=negs if n else None,
                        symmetric=self.symmetric, **ids)

    def _gather(self) -> bool:
        fabric = getattr(self, "_fabric", None)
        return bool(self.cross_rank_negatives and fabric is not None and fabric.world_size > 1)

    def training_step(self, batch: dict, batch_idx: int):
        if self.owns_backward:
            return self._gradcache_step(batch)
        q, d = self.encode(batch["query"]), self.encode(batch["docs"])
        loss = self._loss(q, d, batch, self._gather()) + self._unused_vision_anchor(batch)
        return {"loss": loss, "temperature": self.temperature.detach()}

    def _unused_vision_anchor(self, batch: dict) -> torch.Tensor | float:
        """0 x (one element of every trainable vision-tower parameter) when no image is in this batch, under DDP.

        A vision-language backbone trained on a text-only batch never runs its vision tower, and DDP's reducer
        then fails ("parameters that were not used in producing loss"). This term puts every such parameter in
        the graph with a zero gradient -- exactly its gradient for this batch -- so text-only and mixed
        batches train under DDP, on any rank mix, without ``find_unused_parameters``; the loss value is unchanged.
        One difference from a single process remains: there the untouched vision weights have no gradient and
        AdamW skips them, here their gradient is 0, so decoupled weight decay still shrinks them by lr x wd.
        """
        fabric = getattr(self, "_fabric", None)
        if fabric is None or fabric.world_size <= 1:
            return 0.0
        if self._vision_params is None:
            self._vision_params = [p for n, p in self.model.named_parameters()
                                   if p.requires_grad and any(k in n for k in VISION_PARAM_NAMES)]
        if not self._vision_params or any("pixel_values" in batch[k] for k in ("query", "docs")):
            return 0.0
        return 0.0 * sum(p.view(-1)[:1].sum() for p in self._vision_params)

    def _gradcache_step(self, batch: dict) -> dict:
        scale = self.loss_scale
        gather = self._gather()

        def loss_fn(q, d):
            return self._loss(q, d, batch, gather) * scale

        loss = cached_info_nce_backward(self.encode, self.encode, batch["query"], batch["docs"],
                                        chunk_size=self.gradcache_chunk_size, loss_fn=loss_fn)
        scale_value = float(scale) if not isinstance(scale, torch.Tensor) else scale.detach()
        return {"loss": loss / scale_value if float(scale_value) != 0 else loss,
                "temperature": self.temperature.detach()}

    def batch_weight(self, batch: dict) -> int:
        return len(batch["ids"])

    def batch_tokens(self, batch: dict) -> int:
        return batch["num_tokens"]

    # ------------------------------------------------------------------ validation
    def on_validation_start(self) -> None:
        self._val = []

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        q, d = self.encode(batch["query"]), self.encode(batch["docs"])
        b = q.shape[0]
        self._val.append({"ids": list(batch["ids"]), "groups": list(batch["groups"]), "q": q.float().cpu(),
                          "d": d.float().cpu(), "doc_ids": batch["doc_ids"].tolist(), "b": b})
        return {"loss": self._loss(q, d, batch, gather=False)}

    def validation_metrics(self, metrics: dict) -> dict:
        parts = [p for rank in gather_objects(self._val, getattr(self, "_fabric", None)) for p in rank]
        self._val = []
        if not parts:
            return metrics
        queries, query_groups, seen = [], [], set()
        docs: dict[int, torch.Tensor] = {}
        relevant: dict[str, dict[int, float]] = {}
        for p in parts:
            for i, (ex_id, group) in enumerate(zip(p["ids"], p["groups"])):
                relevant.setdefault(group, {})[p["doc_ids"][i]] = 1.0
                if group not in seen:  # one query per group (a query with several positives appears once)
                    seen.add(group)
                    queries.append(p["q"][i])
                    query_groups.append(group)
            for j, doc_id in enumerate(p["doc_ids"]):
                docs.setdefault(doc_id, p["d"][j])
        doc_ids = list(docs)
        report = retrieval_report(torch.stack(queries), torch.stack([docs[i] for i in doc_ids]), doc_ids,
                                  [relevant[g] for g in query_groups], ks=self.eval_ks)
        metrics.update({f"val/{k}": v for k, v in report.items()})
        return metrics

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self):
        return self.optim.build(self.named_parameters(), self.estimated_stepping_batches)


def _freeze_unused_pooler(model: torch.nn.Module) -> None:
    """BERT-family backbones also compute a ``pooler`` output ([CLS] -> dense -> tanh) that the bi-encoder never
    uses (it pools ``last_hidden_state``): those parameters would get no gradient, which DDP's reducer rejects at
    the next step ("Expected to have finished reduction in the prior iteration"). They are frozen instead."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    pooler = getattr(base, "pooler", None)
    if isinstance(pooler, torch.nn.Module):
        pooler.requires_grad_(False)


def _gather_plain(t: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(t) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

