"""The typed contracts between medlab's parts: objectives, data sources and exporters.

The loop, the runner, config validation and the commands talk to objectives and data only through these
Protocols; nothing dispatches on class names or probes for optional attributes. An objective is a
LightningModule that also satisfies :class:`Objective` (RL objectives add :class:`ExperienceObjective`); a
data source satisfies :class:`DataSource`; an export format satisfies :class:`Exporter`. ``docs/ADDING.md``
walks through adding each.

This module imports nothing from the rest of medlab: every layer may depend on it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch

Head = Literal["causal_lm", "embed", "score"]
PeftTask = Literal["CAUSAL_LM", "FEATURE_EXTRACTION", "SEQ_CLS"]
DataKind = Literal["chat", "retrieval", "prompts", "preference"]
EvalTask = Literal["qa", "retrieval", "rerank", "preference", "toolcall"]


@runtime_checkable
class Objective(Protocol):
    """What the loop, the runner, validation and the commands need from an objective (a LightningModule).

    **Declared by the class** (read before any model exists):

    - ``head``: the backbone the model loader returns -- ``causal_lm`` (LM head), ``embed`` (bare backbone whose
      output has ``last_hidden_state``) or ``score`` (a one-logit sequence classifier; new heads start random).
      For a vision-language backbone the "tokenizer" handed to data and objective is its processor.
    - ``peft_task``: peft's task type for LoRA (``CAUSAL_LM``, ``FEATURE_EXTRACTION``, ``SEQ_CLS``: the new
      score head then trains in full next to the adapters).
    - ``data_kinds``: the :attr:`DataSource.kind` values it trains on (config validation refuses the others).
    - ``eval_task``: what ``python -m medlab.evaluate`` does with a run of it by default.
    - ``config_problems(cfg)``: its own config checks, as a list of messages (empty = fine), so validation still
      reports every problem of a config at once.

    **Per step** (the loop; accumulation maths in ``medlab.engine.loop``):

    - ``training_step(batch, batch_idx) -> Tensor | dict``: the mean loss over the batch's loss items (a dict holds
      it under ``loss``, plus optional extra scalar tensors).
    - ``batch_weight(batch) -> int``: the number of loss items in a micro-batch (label tokens, pairs, queries,
      completion tokens, ...). Each micro-batch loss is scaled by ``weight * world_size / W`` (``W``: the
      window's total weight over all ranks), so accumulation and DDP equal one big batch.
    - ``batch_tokens(batch) -> int``: tokens processed, for throughput.
    - ``step_metrics() -> dict[str, float]``: called on every rank at each training log point; logged as
      ``train/<key>`` averaged over ranks (keys whose last ``/`` part contains ``max``: the maximum); every rank
      returns the same keys; the objective resets what it measured since the last call.
    - ``configure_optimizers()`` -> ``{"optimizer": opt, "lr_scheduler": {"scheduler": s, "interval": "step"}}``;
      the loop sets ``estimated_stepping_batches`` (total optimizer steps) before calling it.
    - ``owns_backward`` (GradCache): when true the loop sets ``loss_scale`` (the micro-batch's share of the window,
      a tensor) before ``training_step``, does **not** call backward, runs every micro-batch unsynced and averages
      every ``.grad`` over ranks once; ``training_step`` must have accumulated ``d(loss * loss_scale)/dθ`` into
      ``.grad`` and returns the unscaled, detached loss.

    **Setup and speed**: ``bind_data(data)`` is called by the runner once the :class:`DataSource` is set up, so the
    objective reads what it needs from it (the sequence length for MFU, the chat template's stop tokens for
    generation) instead of being handed loose attributes; ``flops_per_token()`` gives training FLOPs per token for
    MFU, or None when the objective does not know them.

    **Validation**: ``validation_step(batch, batch_idx) -> dict[str, Tensor]`` gives per-batch means, reduced by
    the loop weighted by ``batch_weight`` over batches and ranks into ``val/<key>``; then
    ``validation_metrics(metrics) -> metrics`` adds what needs the whole pass (corpus retrieval, reranking).

    Lightning hooks called when defined: ``on_fit_start``, ``on_train_start``, ``on_train_epoch_start``,
    ``on_train_batch_start``, ``on_before_backward``, ``on_after_backward``, ``on_before_optimizer_step``,
    ``on_train_batch_end``, ``on_validation_start``, ``on_validation_end``, ``on_train_end``, ``on_fit_end``.
    """

    head: ClassVar[Head]
    peft_task: ClassVar[PeftTask]
    data_kinds: ClassVar[tuple[DataKind, ...]]
    eval_task: ClassVar[EvalTask]
    owns_backward: bool
    estimated_stepping_batches: int

    @classmethod
    def config_problems(cls, cfg: Any) -> list[str]: ...

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor | dict: ...

    def validation_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]: ...

    def validation_metrics(self, metrics: dict[str, float]) -> dict[str, float]: ...

    def batch_weight(self, batch: dict) -> int: ...

    def batch_tokens(self, batch: dict) -> int: ...

    def step_metrics(self) -> dict[str, float]: ...

    def configure_optimizers(self) -> dict: ...

    def bind_data(self, data: DataSource) -> None: ...

    def flops_per_token(self) -> float | None: ...


@runtime_checkable
class ExperienceObjective(Objective, Protocol):
    """An RL objective: each loader batch becomes an *experience* of ``steps_per_experience`` windows.

    ``make_experience(batch)`` is called once per loader batch, on the unwrapped module in train mode (it may
    generate under no_grad), and returns exactly ``steps_per_experience`` windows (``list[list[micro_batch]]``),
    one optimizer step each (GRPO: the same micro-batches ``mu`` times); ``trainer.accumulate_grad_batches`` does
    not apply. The loop counts ``batches x steps_per_experience`` optimizer steps per epoch, and checkpoints due
    mid-experience (periodic, SIGTERM/SIGUSR1) are written at the experience's last step, so a resumed run
    regenerates the next experience from the restored RNG exactly as the uninterrupted run did.

    Optional ``min_batch_prompts`` (int, default 1): the fewest prompts a loader batch must hold (PPO: enough
    completions for its mini-batches); the loop drops an epoch's shorter last batch with a warning and refuses a
    smaller ``data.batch_size`` before training.
    """

    steps_per_experience: int

    def make_experience(self, batch: dict) -> list[list[dict]]: ...


@runtime_checkable
class UsesRuns(Protocol):
    """An objective that loads other trained runs (the agentic search tools load a bi-encoder run).
    ``bind_run_loader(load_run)`` hands it ``medlab.evaluation.load_run``, so it never imports the layers above it."""

    def bind_run_loader(self, load_run: Any) -> None: ...


@runtime_checkable
class DataSource(Protocol):
    """Files -> validated, tokenized train/val datasets + the collate function the objective's batches need.

    - ``kind``: what it produces (``chat``: SFT/CPT token rows, ``retrieval``: query/document pairs or judged
      pairs, ``prompts``: RL prompts with their reference fields, ``preference``: chosen/rejected pairs or
      unpaired desirable/undesirable completions, docs/INTERFACES.md); objectives name the kinds they accept.
    - ``validate() -> list[str]``: every problem found by reading the files' columns and rows, before any model
      loads (file, 1-based line/row and field named); no tokenizer needed.
    - ``setup(tokenizer) -> dict[str, int]``: read, normalize, tokenize, hold out validation, cache; returns the
      kept/dropped counts (logged and written to ``metrics.json`` as ``data/<key>``).
    - ``train_dataset`` / ``val_dataset`` (``val_dataset`` may be None), ``collate(examples) -> batch``,
      ``batch_size``, ``val_batch_size``, ``num_workers``, ``max_length`` (the MFU attention term),
      ``group_by_length`` and ``lengths()`` (one length per train example, for length-grouped batches).
    - ``stop_token_ids``: after ``setup``, the tokens that end a generated turn in this data's chat format (the
      tokenizer's EOS and the template's end-of-turn token); empty when nothing is generated from it.
    """

    kind: ClassVar[DataKind]
    batch_size: int
    val_batch_size: int | None
    num_workers: int
    max_length: int | None
    group_by_length: bool
    train_dataset: Any
    val_dataset: Any
    stop_token_ids: tuple[int, ...]

    def validate(self) -> list[str]: ...

    def setup(self, tokenizer: Any) -> dict[str, int]: ...

    def collate(self, examples: list[dict]) -> dict: ...

    def lengths(self) -> list[int]: ...


@runtime_checkable
class Exporter(Protocol):
    """An export format: ``export(model, tokenizer, out_dir, **context) -> out_dir``.

    ``name`` is what ``export.format`` selects. ``problems(cfg)`` checks the config up front (an unsupported
    architecture or quantization type fails before any work). ``context`` carries what the run knows: the chat
    template it trained with (``chat_template``), the adapter spec, a callable that reloads the base model.
    """

    name: ClassVar[str]

    def problems(self, cfg: Any) -> list[str]: ...

    def export(self, model: Any, tokenizer: Any, out_dir: Path, **context: Any) -> Path: ...


def objective_problems(cls: type) -> list[str]:
    """What an objective class lacks of the :class:`Objective` contract (declarations and methods)."""
    out = []
    for name in ("head", "peft_task", "data_kinds", "eval_task"):
        if not hasattr(cls, name):
            out.append(f"{cls.__name__} does not declare `{name}` (medlab.contracts.Objective)")
    for name in ("config_problems", "training_step", "validation_step", "validation_metrics", "batch_weight",
                 "batch_tokens", "step_metrics", "configure_optimizers", "bind_data", "flops_per_token"):
        if not callable(getattr(cls, name, None)):
            out.append(f"{cls.__name__} has no `{name}()` (medlab.contracts.Objective)")
    return out
