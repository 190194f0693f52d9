"""What the preference objectives (DPO, ORPO, KTO) share, by composition: completion log-probs through the chunked
head path, the reference policy, the precomputed reference cache and the metric sums.

**Completion log-probs** (:func:`sequence_logps`): the decoder runs once over the rows (chosen and rejected
concatenated, ``[2B, T]``); only the positions whose next token is a completion label are projected through the
LM head, chunk by chunk (``medlab.ops.linear_logps``), so no ``[R, T, V]`` logits exist. Models whose logits are
not a plain linear map of the hidden states fall back to full logits (``linear_ce.lm_head_parts`` says why).
With ``max_padding`` (the objectives' ``objective.max_padding``, default 0.1) the rows are first regrouped by
length (:func:`length_buckets`): each group runs as its own forward, cut to its longest row, so that padding is at
most that fraction of the tokens a forward computes. Chosen and rejected completions often differ a lot in length
(and a batch's rows with them); one padded ``[2B, T]`` forward spends 25-50% of its compute and activation memory
on padding there. Every group is a plain right-padded batch, so any model is correct without packed-sequence
masks; FSDP-sharded models keep one forward (every rank must run the same collectives).

**Reference policy** (:class:`ReferencePolicy`), in this order:

1. ``ref_adapter`` set (training continues an existing adapter, ``adapter.init_from``): that adapter is loaded a
   second time as the peft adapter ``"reference"``, frozen, and switched in with ``set_adapter`` for the reference
   pass only. So the reference is the starting SFT policy, not the bare base: with the base as reference, the
   policy starts far above it and the loss collapses to 0 with accuracy 1.0 within a few steps.
2. a new LoRA/QLoRA adapter: the base with the adapter disabled (``disable_adapter``), no second copy;
3. a full fine-tune: a frozen copy of the initial model, made in ``on_fit_start`` (before a resume restores the
   checkpoint, so it is always the initial model);
4. ``precompute_ref_logps``: one no-grad pass over the train and validation data at the start of training, kept
   per example id (so shuffling, length grouping and resume look up the right values); no reference model stays
   in memory. It runs after a resume's restore, so the reference it evaluates is the adapter-disabled base, the
   reference adapter, or (full fine-tune) a CPU copy of the initial weights taken in ``on_fit_start``, moved to
   the device for that pass and then dropped.

The reference pass always runs without gradients and in eval mode (no dropout).
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Iterator

import torch

from medlab.ops import linear_ce
from medlab.ops.linear_logps import linear_token_logps
from medlab.ops.losses import IGNORE_INDEX

log = logging.getLogger("medlab")

REFERENCE_ADAPTER = "reference"
PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
                "logps/rejected")


def find_peft(model) -> object | None:
    """The PeftModel inside Fabric/DDP wrappers, or None."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return None
    inner = model
    for _ in range(4):
        if isinstance(inner, PeftModel):
            return inner
        inner = getattr(inner, "module", None)
        if inner is None:
            return None
    return None


def length_buckets(lengths: list[int], max_padding: float) -> list[list[int]]:
    """Row indices grouped longest first so that each group's padded size (rows x its longest row) exceeds its
    real tokens by at most ``max_padding`` (a fraction): ``[[longest, ...], ...]``; every index exactly once."""
    groups: list[list[int]] = []
    total = 0
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= (1.0 + max_padding) * (total + lengths[i]):
            groups[-1].append(i)
            total += lengths[i]
        else:
            groups.append([i])
            total = lengths[i]
    return groups


def max_padding_problems(value) -> list[str]:
    """Config check of ``objective.max_padding``: null or a number >= 0."""
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0):
        return []
    return [f"objective.max_padding must be null (one padded forward) or a fraction >= 0 (e.g. 0.1), got {value!r}"]


def sharded(model: torch.nn.Module) -> bool:
    """True under FSDP2 (``fully_shard`` units inside): every rank must then run the same forwards."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def row_groups(attention_mask: torch.Tensor, max_padding: float
               ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None:
    """The rows of a padded batch regrouped by :func:`length_buckets`: per group ``(rows [g], index [g, T_g],
    valid [g, T_g])`` -- ``take(t, rows, index)`` gives the group's right-padded ``[g, T_g]`` slice of any
    ``[R, T]`` tensor, ``valid`` its attention mask. None when one padded forward is already that tight. Each row's
    real tokens must be contiguous (left or right padding). One host sync (the row lengths)."""
    real = attention_mask.sum(1)
    lengths = real.tolist()
    groups = length_buckets(lengths, float(max_padding))
    if len(groups) == 1 and max(lengths) == attention_mask.shape[1] or max(lengths) == 0:
        return None
    first = (attention_mask.cumsum(1) == 0).sum(1)  # left padding: where each row's tokens start
    out = []
    for group in groups:
        rows = torch.as_tensor(group, device=attention_mask.device)
        steps = torch.arange(lengths[group[0]], device=attention_mask.device)
        index = (first[rows, None] + steps[None]).clamp(max=attention_mask.shape[1] - 1)
        out.append((rows, index, steps[None] < real[rows, None]))
    return out


def take(t: torch.Tensor, rows: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return t.index_select(0, rows).gather(1, index)


def in_row_order(parts: list[torch.Tensor], groups: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """Per-group results ``[g, ...]`` back in the batch's row order."""
    order = torch.cat([g[0] for g in groups])
    return torch.cat(parts).index_select(0, torch.argsort(order))


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor, *,
                   chunk_size: int | None = None, max_padding: float | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(summed log-probs of each row's label tokens [R] fp32, label-token counts [R])``; labels are -100 off
    the completion (prompt, padding). ``max_padding``: run the rows as length groups (module docstring); None =
    one forward over the padded batch."""
    groups = None
    if max_padding is not None and attention_mask is not None and input_ids.shape[0] > 1 and not sharded(model):
        groups = row_groups(attention_mask, max_padding)
    if groups is None:
        return _padded_logps(model, input_ids, attention_mask, labels, chunk_size)
    parts = [_padded_logps(model, take(input_ids, rows, index), valid.to(attention_mask.dtype),
                           take(labels, rows, index).masked_fill(~valid, IGNORE_INDEX), chunk_size)[0]
             for rows, index, valid in groups]
    return in_row_order(parts, groups), (labels[:, 1:] != IGNORE_INDEX).sum(1)


def _padded_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, labels: torch.Tensor,
                  chunk_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    lengths = mask.sum(1)
    parts, _ = linear_ce.lm_head_parts(model)
    if parts is not None and parts.head.weight.dim() == 2 and parts.head.weight.numel() > 0:
        hidden = parts.decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
        index = mask.reshape(-1).nonzero().squeeze(1)  # the labelled positions only (one host sync on GPU)
        rows, row_targets = linear_ce.shift_for_next_token(hidden, labels, index)
        token_lp = linear_token_logps(rows, parts.head.weight, row_targets, parts.head.bias, chunk_size)
        out = torch.zeros(labels.shape[0], dtype=torch.float32, device=token_lp.device)
        return out.index_add(0, index // targets.shape[1], token_lp), lengths
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
    token_lp = torch.log_softmax(logits, -1).gather(2, targets.clamp(min=0)[..., None]).squeeze(-1)
    return (token_lp * mask).sum(1), lengths


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was)


class ReferencePolicy:
    """The frozen reference of a preference objective (see the module docstring for the modes)."""

    def __init__(self, model: torch.nn.Module, ref_adapter: str | None = None, precompute: bool = False):
        self.model, self.precompute = model, bool(precompute)
        self.peft = find_peft(model)
        self.ref_adapter = ref_adapter or None
        self._copy: list[torch.nn.Module] = []  # a list: never registered as a submodule (not saved, not moved)
        self._initial_cpu: list[torch.nn.Module] = []
        if self.ref_adapter:
            if self.peft is None:
                raise ValueError("objective.ref_adapter (the starting adapter as reference) needs a LoRA/QLoRA model")
            if REFERENCE_ADAPTER not in self.peft.peft_config:
                from medlab.models.adapters import resolve_adapter_dir

                path = resolve_adapter_dir(self.ref_adapter)
                if path is None:
                    raise ValueError(f"objective.ref_adapter={self.ref_adapter!r}: no adapter_config.json there")
                active = self.peft.active_adapter
                self.peft.load_adapter(str(path), adapter_name=REFERENCE_ADAPTER, is_trainable=False)
                self.peft.set_adapter(active)  # loading never changes the trained adapter, but be explicit
                for name, p in self.peft.named_parameters():
                    if f".{REFERENCE_ADAPTER}." in name:
                        p.requires_grad_(False)

    @property
    def mode(self) -> str:
        if self.ref_adapter:
            return "reference_adapter"
        return "disabled_adapter" if self.peft is not None else "frozen_copy"

    def on_fit_start(self) -> None:
        """Full fine-tunes: the frozen copy (live reference) or a CPU copy for the precompute pass, taken before a
        resume restores the checkpoint."""
        if self.peft is not None:
            return
        if self.precompute and not self._initial_cpu:
            self._initial_cpu.append(copy.deepcopy(self.model).to("cpu").eval().requires_grad_(False))
        elif not self.precompute and not self._copy:
            self._copy.append(copy.deepcopy(self.model).eval().requires_grad_(False))
            log.info("preference objective: full fine-tune keeps a frozen reference copy of the initial model")

    @contextlib.contextmanager
    def active(self, device: torch.device | None = None) -> Iterator[torch.nn.Module]:
        """The module to run as the reference (no grad, eval mode) inside the block."""
        with torch.no_grad():
            if self._initial_cpu:  # precompute pass of a full fine-tune
                model = self._initial_cpu[0].to(device) if device is not None else self._initial_cpu[0]
                with _eval_mode(model):
                    yield model
            elif self.peft is None:
                if not self._copy:
                    raise RuntimeError("no reference model: on_fit_start makes the frozen copy of a full fine-tune "
                                       "(or use objective.precompute_ref_logps=true)")
                ref = self._copy[0]
                if device is not None and next(ref.parameters()).device != device:
                    ref.to(device)
                with _eval_mode(ref):
                    yield ref
            elif self.ref_adapter:
                flags = {n: p.requires_grad for n, p in self.peft.named_parameters()}
                active = self.peft.active_adapter
                try:
                    with _eval_mode(self.model):
                        self.peft.set_adapter(REFERENCE_ADAPTER)
                        yield self.model
                finally:
                    self.peft.set_adapter(active)
                    for n, p in self.peft.named_parameters():  # set_adapter flips requires_grad: put it back
                        p.requires_grad_(flags[n])
            else:
                with _eval_mode(self.model), self.peft.disable_adapter():
                    yield self.model

    def drop_initial_copy(self) -> None:
        self._initial_cpu.clear()

    def release(self) -> None:
        """After training: the reference adapter leaves the model (the export holds the trained adapter only)."""
        if self.peft is not None and REFERENCE_ADAPTER in self.peft.peft_config:
            self.peft.delete_adapter(REFERENCE_ADAPTER)


class RefCache:
    """Precomputed reference log-probs per split, indexed by example id (``batch["ids"]``): ``[N, K]`` fp32."""

    def __init__(self):
        self.tables: dict[str, torch.Tensor] = {}

    def fill(self, split: str, dataset, collate, compute, *, batch_size: int, device, rank: int = 0,
             world_size: int = 1, all_reduce=None) -> None:
        """``compute(batch) -> [b, K]`` over this rank's share of ``dataset``; the shares are summed over ranks."""
        n = len(dataset)
        ids, rows = [], []
        mine = list(range(rank, n, world_size))
        for s in range(0, len(mine), batch_size):
            examples = [dataset[i] for i in mine[s:s + batch_size]]
            batch = _to_device(collate(examples), device)
            rows.append(compute(batch).float())
            ids.extend(batch["ids"])
        width = rows[0].shape[1] if rows else 2
        size = max([n, *[i + 1 for i in ids]])
        table = torch.zeros(size, width, dtype=torch.float32, device=device)
        seen = torch.zeros(size, dtype=torch.float32, device=device)
        if rows:
            index = torch.as_tensor(ids, device=device)
            table.index_copy_(0, index, torch.cat(rows))
            seen[index] = 1.0
        if all_reduce is not None and world_size > 1:
            table, seen = all_reduce(table), all_reduce(seen)
        table[seen == 0] = float("nan")  # an id nobody computed: looked up, it fails loudly
        self.tables[split] = table

    def lookup(self, split: str, ids) -> torch.Tensor:
        table = self.tables.get(split)
        if table is None:
            raise RuntimeError(f"no precomputed reference log-probs for the {split} split")
        out = table.index_select(0, torch.as_tensor(list(ids), device=table.device))
        if torch.isnan(out).any():
            raise RuntimeError(f"precomputed reference log-probs missing for some {split} ids in {list(ids)[:8]}")
        return out


def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class MetricSums:
    """Device-side sums of per-batch means, weighted; :meth:`means` returns and resets them (no host sync before)."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.weight = 0.0

    def add(self, values: dict[str, torch.Tensor], weight: float) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + v.detach().float() * weight
        self.weight += weight

    def means(self) -> dict[str, float]:
        out = {k: float(v) / self.weight for k, v in self.sums.items()} if self.weight else {}
        self.sums, self.weight = {}, 0.0
        return out


def pairing_problem(cfg, paired: bool, objective: str) -> str | None:
    """A config problem when ``data.unpaired`` asks for the other kind of batch than the objective trains on."""
    unpaired = cfg.data.get("unpaired") if "data" in cfg else None
    if paired and unpaired is True:
        return (f"objective={objective} trains on chosen/rejected pairs, but data.unpaired=true makes unpaired "
                "batches: set data.unpaired=null (pairs) or use objective=kto")
    if not paired and unpaired is False:
        return ("objective=kto trains on unpaired completions, but data.unpaired=false: set data.unpaired=true "
                "(each pair becomes a desirable and an undesirable row) or use unpaired rows (prompt, completion, label)")
    return None


def check_bound_data(data, paired: bool, objective: str) -> None:
    """After ``setup``: the data source made the batches the objective needs (``PreferenceData.paired``)."""
    made = getattr(data, "paired", None)
    if made is not None and bool(made) != paired:
        want, got = ("chosen/rejected pairs", "unpaired rows") if paired else ("unpaired rows", "chosen/rejected pairs")
        raise ValueError(f"objective={objective} trains on {want}, but the data files hold {got}"
                         + (": use objective=kto, or paired data" if paired else ": set data.unpaired=true"))


def sharded_strategy_problem(cfg, objective: str) -> str | None:
    """What the preference objectives cannot do on sharded weights yet. Under ``strategy=fsdp`` (FSDP2) the policy,
    the disabled-adapter reference and a full fine-tune's frozen copy run inside the root's forward and train like
    one process on the same global batch (checked: equal per-step losses for dpo, orpo, kto); the precomputed
    reference pass runs outside it and the second ("reference") adapter is untested there, so both are refused, as
    is DeepSpeed ZeRO-3."""
    name = str(cfg.strategy.get("name")) if "strategy" in cfg else ""
    if name == "deepspeed_stage_3":
        return (f"objective={objective} does not support strategy={name} yet (sharded weights: the reference needs "
                "whole weights): use strategy=fsdp, strategy=ddp or strategy=single")
    if name == "fsdp":
        obj = cfg.get("objective") or {}
        if obj.get("precompute_ref_logps"):
            return (f"objective={objective}: objective.precompute_ref_logps=true is not supported with strategy=fsdp "
                    "(the precompute pass runs outside the sharded forward): drop it (the reference is then computed "
                    "live) or use strategy=ddp")
        if obj.get("ref_adapter"):
            return (f"objective={objective}: a reference adapter (objective.ref_adapter / adapter.init_from) is not "
                    "supported with strategy=fsdp yet: use strategy=ddp or strategy=single")
    return None
