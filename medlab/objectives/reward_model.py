"""RewardModel: a scalar reward per (prompt, completion), trained on chosen/rejected pairs (Bradley-Terry).

    loss = mean(-log sigmoid(r_chosen - r_rejected - margin)) [+ c * mean((r_chosen + r_rejected)^2)]

(`medlab.ops.reward.pairwise_reward_loss`, equal to TRL RewardTrainer's; the margin comes from the data, zero
when the rows carry none; ``center_rewards_coefficient`` = c, TRL's reward centering.)

The backbone carries a one-logit sequence-classification head (``head = score``; under LoRA/QLoRA the head trains
in full next to the adapters: peft ``SEQ_CLS`` puts it in ``modules_to_save``):

- decoder LLMs (a ``score`` head): the decoder runs with position ids counted over the real tokens and the head
  reads the hidden state of each row's **last real token**, found from the attention mask -- the same reward
  with left or right padding and when the pad id equals EOS (transformers' own pooling searches for the pad id);
- encoders (MiniLM, BERT: a ``classifier`` on [CLS]): the model's own forward on (prompt, completion) text pairs,
  right-aligned first so [CLS] is the first token.

``prior=cosine`` (encoders, with ``data.pair_sides=true``): the reward is ``prior_scale * cos(E(prompt),
E(completion)) + head(prompt, completion)`` with the head initialised at zero (`medlab.retrieval.prior`, the
reranker's prior): an untrained reward model already prefers the answer closer to the question, as the zero-shot
bi-encoder does, and training learns the correction (``prior_trainable=false``: the cosine from a frozen copy).

Logged: ``train/accuracy`` (r_c > r_r), ``train/margin`` (mean r_c - r_r), ``train/reward_chosen``,
``train/reward_rejected``; validation ``val/loss``, ``val/accuracy``, ``val/margin``. Export: the HF directory
(or peft adapter + head) loads with ``AutoModelForSequenceClassification`` / ``AutoPeftModelForSequenceClassification``.
"""

from __future__ import annotations

import lightning as L
import torch

from medlab.objectives.common import OptimSettings
from medlab.objectives.preference_common import in_row_order, max_padding_problems, row_groups, sharded, take
from medlab.ops.reward import last_token_index, pairwise_reward_loss, positions, right_aligned
from medlab.retrieval.prior import PRIORS, CosinePrior, backbone_of, zero_score_head


class RewardModel(L.LightningModule):
    """Satisfies :class:`medlab.contracts.Objective` (paired preference data)."""

    head = "score"
    peft_task = "SEQ_CLS"
    data_kinds = ("preference",)
    eval_task = "preference"
    owns_backward = False

    def __init__(self, model: torch.nn.Module, tokenizer=None, *, use_margin: bool = True,
                 center_rewards_coefficient: float | None = None, max_padding: float | None = 0.1,
                 prior: str = "none", prior_scale: float = 20.0, prior_pooling: str = "mean",
                 prior_trainable: bool = True, **optim):
        super().__init__()
        problems = max_padding_problems(max_padding) + _prior_problems(prior)
        if problems:
            raise ValueError("; ".join(problems))
        self.model, self.tokenizer, self.max_padding = model, tokenizer, max_padding
        self.use_margin, self.center = bool(use_margin), center_rewards_coefficient
        self.optim = OptimSettings(**optim)
        self.estimated_stepping_batches = 1
        self.prior = None
        if prior == "cosine":  # reward = scale * cos(E(prompt), E(completion)) + head(prompt, completion), head = 0
            self.prior = CosinePrior(backbone_of(model), scale=prior_scale, pooling=prior_pooling,
                                     trainable=prior_trainable)
            zero_score_head(model)
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    @classmethod
    def config_problems(cls, cfg) -> list[str]:
        out = []
        if cfg.data.get("unpaired") is True:
            out.append("objective reward_model trains on chosen/rejected pairs, but data.unpaired=true: set "
                       "data.unpaired=null (or false)")
        c = cfg.objective.get("center_rewards_coefficient")
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or c < 0):
            out.append(f"objective.center_rewards_coefficient must be null or a number >= 0, got {c!r}")
        prior = cfg.objective.get("prior", "none")
        out += _prior_problems(prior)
        if prior == "cosine" and not cfg.data.get("pair_sides"):
            out.append("objective.prior=cosine scores the prompt and the completion encoded alone too: set "
                       "data.pair_sides=true (an encoder reward model, e.g. model=minilm)")
        return out + max_padding_problems(cfg.objective.get("max_padding", 0.1))

    def bind_data(self, data) -> None:
        if getattr(data, "paired", True) is False:
            raise ValueError("objective reward_model needs chosen/rejected pairs, but the data is unpaired "
                             "(prompt, completion, label rows or data.unpaired=true)")

    def flops_per_token(self) -> None:
        return None

    # ------------------------------------------------------------------------------------ scoring
    def rewards(self, batch: dict) -> torch.Tensor:
        """One reward per row of ``input_ids`` [N] (float32): see the module docstring."""
        r = sequence_rewards(self.model, batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"),
                             max_padding=self.max_padding)
        if self.prior is None:
            return r
        sides = [{k.split(".", 1)[1]: v for k, v in batch.items() if k.startswith(f"{side}.")} for side in ("query", "doc")]
        if not all(sides):
            raise ValueError("objective.prior=cosine needs the prompt and the completion encoded alone in each batch: "
                             "set data.pair_sides=true")
        return self.prior(*sides) + r

    def _pair(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        r = self.rewards(batch)
        chosen, rejected = r.chunk(2)
        margin = batch["margin"].to(r.device) if self.use_margin and "margin" in batch else None
        return chosen, rejected, margin

    def training_step(self, batch: dict, batch_idx: int) -> dict:
        chosen, rejected, margin = self._pair(batch)
        loss = pairwise_reward_loss(chosen, rejected, margin, self.center)
        self._track(chosen.detach(), rejected.detach())
        return {"loss": loss}

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        chosen, rejected, margin = self._pair(batch)
        return {"loss": pairwise_reward_loss(chosen, rejected, margin, self.center),
                "accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean(),
                "reward_chosen": chosen.mean(), "reward_rejected": rejected.mean()}

    def validation_metrics(self, metrics: dict) -> dict:
        return metrics

    def batch_weight(self, batch: dict) -> int:
        return int(batch["num_pairs"])

    def batch_tokens(self, batch: dict) -> int:
        return int(batch["num_tokens"])

    # ------------------------------------------------------------------------------------ metrics
    def _track(self, chosen: torch.Tensor, rejected: torch.Tensor) -> None:
        values = {"accuracy": (chosen > rejected).float().sum(), "margin": (chosen - rejected).sum(),
                  "reward_chosen": chosen.sum(), "reward_rejected": rejected.sum()}
        for k, v in values.items():
            self._sums[k] = self._sums.get(k, 0) + v  # on the device: read at log points only
        self._count += chosen.numel()

    def step_metrics(self) -> dict[str, float]:
        keys = ("accuracy", "margin", "reward_chosen", "reward_rejected")
        out = {k: float(self._sums[k]) / self._count if self._count else float("nan") for k in keys}
        self._sums, self._count = {}, 0
        return out

    def configure_optimizers(self):
        return self.optim.build(self.named_parameters(), self.estimated_stepping_batches)


def sequence_rewards(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     token_type_ids: torch.Tensor | None = None, *, max_padding: float | None = None) -> torch.Tensor:
    """The scalar reward of each sequence [N] (float32) from a one-logit classifier, peft-wrapped or not: decoders
    read the last real token (mask-based, position ids over real tokens), encoders their right-aligned [CLS].
    ``max_padding`` (decoders): the rows run as length groups, each padded by at most that fraction
    (``preference_common.row_groups``: less compute and activation memory than one padded forward)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = getattr(inner, "score", None)
    decoder = getattr(inner, getattr(inner, "base_model_prefix", "model"), None)
    if head is not None and isinstance(decoder, torch.nn.Module) and decoder is not inner:
        groups = None
        if max_padding is not None and input_ids.shape[0] > 1 and not sharded(model):
            groups = row_groups(attention_mask, max_padding)
        if groups is not None:
            parts = [sequence_rewards(model, take(input_ids, rows, index), valid.to(attention_mask.dtype))
                     for rows, index, valid in groups]
            return in_row_order(parts, groups)
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask),
                         use_cache=False).last_hidden_state
        last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last_token_index(attention_mask)]
        weight = next(head.parameters())
        return head(last.to(weight.dtype)).reshape(-1).float()
    if token_type_ids is None:
        mask, ids = right_aligned(attention_mask, input_ids)
        inputs = {"input_ids": ids, "attention_mask": mask}
    else:
        mask, ids, types = right_aligned(attention_mask, input_ids, token_type_ids)
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return model(**inputs).logits.reshape(-1).float()


def _prior_problems(prior) -> list[str]:
    return [] if prior in PRIORS else [f"objective.prior={prior!r} is not one of {list(PRIORS)}"]
