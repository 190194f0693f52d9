"""A reranker score that starts as the bi-encoder's cosine similarity and learns a correction.

    s(q, d) = exp(log_scale) * cos(E(q), E(d)) + r(q, d)

``E`` pools the backbone's token states of the query and of the document *encoded alone* (as the zero-shot
bi-encoder does: mean pooling + L2 normalization for MiniLM-style checkpoints), ``r`` is the cross-encoder's
one-logit head over the joint (query, document) encoding, initialised at zero (`zero_score_head`). So an untrained
reranker ranks every candidate list exactly as the bi-encoder cosine does, and training can only move away from that
ranking where the judgments ask for it.

``trainable=True`` computes ``E`` with the reranker's own backbone (the bi-encoder branch is fine-tuned together with
the cross-encoder: one model, one export); ``trainable=False`` with a frozen copy of the backbone's initial weights
(the cosine stays the zero-shot one; only the correction learns).
"""

from __future__ import annotations

import copy
import math

import torch

from medlab.retrieval.pooling import embed

PRIORS = ("none", "cosine")
SIDE_PREFIXES = ("query.", "doc.")  # side encodings ride in the pairs dict under these key prefixes


def split_sides(pairs: dict) -> tuple[dict, dict | None, dict | None]:
    """``pairs`` (the joint encoding, maybe with ``query.*`` / ``doc.*`` side encodings) -> (joint, query, doc)."""
    joint = {k: v for k, v in pairs.items() if not k.startswith(SIDE_PREFIXES)}
    sides = []
    for prefix in SIDE_PREFIXES:
        side = {k[len(prefix):]: v for k, v in pairs.items() if k.startswith(prefix)}
        sides.append(side or None)
    return joint, sides[0], sides[1]


def backbone_of(model: torch.nn.Module) -> torch.nn.Module:
    """The bare encoder inside a (possibly PEFT-wrapped) ``*ForSequenceClassification`` model (its
    ``base_model``: BertModel, LlamaModel, ...), whose output has ``last_hidden_state``."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(inner, "base_model", inner)


def score_head(model: torch.nn.Module) -> torch.nn.Linear:
    """The last ``Linear`` with one output feature (the one-logit head: BERT ``classifier``, RoBERTa
    ``classifier.out_proj``, decoder ``score``)."""
    found = [m for _, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1]
    if not found:
        raise ValueError("no one-logit Linear head found on the reranker model (num_labels must be 1)")
    return found[-1]


@torch.no_grad()
def zero_score_head(model: torch.nn.Module) -> None:
    """Zero the one-logit head's weight and bias: the residual r(q, d) starts at exactly 0 (its gradient does not:
    dL/dW = dL/dr * features)."""
    head = score_head(model)
    head.weight.zero_()
    if head.bias is not None:
        head.bias.zero_()


class CosinePrior(torch.nn.Module):
    """``exp(log_scale) * cos(E(q), E(d))``: a fixed ``scale`` (what an export can state), or a learnable one
    (``learn_scale``: starts at ``scale``, clamped to <= 100)."""

    def __init__(self, backbone: torch.nn.Module, *, scale: float = 20.0, pooling: str = "mean",
                 trainable: bool = True, learn_scale: bool = False):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"objective.prior_scale must be > 0, got {scale}")
        log_scale = torch.tensor(math.log(scale))
        if learn_scale:
            self.log_scale = torch.nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)
        self.pooling, self.trainable = pooling, trainable
        if trainable:
            self._shared = [backbone]  # a plain list: not registered twice (the reranker's model owns it)
            self.frozen = None
        else:
            self._shared = []
            self.frozen = copy.deepcopy(backbone).eval()
            self.frozen.requires_grad_(False)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.clamp(max=math.log(100.0)).exp()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen is not None:
            self.frozen.eval()  # no dropout in the zero-shot encoder
        return self

    def embed(self, inputs: dict) -> torch.Tensor:
        encoder = self._shared[0] if self.trainable else self.frozen
        ctx = torch.enable_grad() if self.trainable and torch.is_grad_enabled() else torch.no_grad()
        with ctx:
            out = encoder(**inputs)
            hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            return embed(hidden, inputs["attention_mask"], self.pooling, normalize=True)

    def forward(self, query: dict, doc: dict) -> torch.Tensor:
        """[N] = scale * cos for N (query, document) pairs (row i of ``query`` with row i of ``doc``)."""
        q, d = self.embed(query), self.embed(doc)
        return self.scale * (q.float() * d.float()).sum(-1)
