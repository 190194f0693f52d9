"""Speed switches applied to a built model: selective activation checkpointing and ``torch.compile``.

Both act on the model's repeated transformer blocks (transformers' ``GradientCheckpointingLayer``: every decoder
layer of Llama/Qwen/Mistral-style models, BERT layers, VLM text layers), through peft wrappers, in place -- so
parameter names, checkpoints, exports and the optimizer are unchanged by either switch.

- ``trainer.activation_checkpointing``: ``false`` | ``true`` (every block) | ``k`` (every k-th block: selective,
  trading back memory for speed). The block's activations are recomputed during backward (non-reentrant
  ``torch.utils.checkpoint``), so gradients are unchanged; ``trainer.activation_offload`` keeps the saved block
  inputs in host memory instead.
- ``trainer.compile``: compile each block with ``torch.compile`` (one graph reused by every block of the same
  class) rather than the whole model, so compile time stays short and the loss code outside (chunked
  cross-entropy, GRPO log-probs, pooling) is untouched. Without such blocks the whole model is compiled in place.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

log = logging.getLogger("medlab")


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks (``GradientCheckpointingLayer`` instances) in module order; [] if none."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def _hf_model(model: torch.nn.Module) -> Any:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def apply_activation_checkpointing(model: torch.nn.Module, every: bool | int, offload: bool = False) -> int:
    """Checkpoint every block (``every=True`` or 1) or every ``every``-th one; returns how many are checkpointed."""
    if every is False or every is None or every == 0:
        return 0
    k = 1 if every is True else int(every)
    hf = _hf_model(model)
    if not getattr(hf, "supports_gradient_checkpointing", False):
        raise ValueError(f"trainer.activation_checkpointing: {type(hf).__name__} does not support activation "
                         "checkpointing")
    hf.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False},
                                       every_n_layers=k, offload=offload)
    if hasattr(hf, "config"):
        hf.config.use_cache = False
    blocks = transformer_blocks(hf)
    n = sum(bool(getattr(b, "gradient_checkpointing", False)) for b in blocks)
    log.info("activation checkpointing: %d of %d blocks recompute their activations in backward%s", n, len(blocks),
             " (inputs offloaded to host memory)" if offload else "")
    return n


def compile_model(model: torch.nn.Module, mode: str | None = None, backend: str = "inductor",
                  dynamic: bool | None = None) -> int:
    """``torch.compile`` each transformer block in place (or the whole model); returns how many modules compiled."""
    kwargs = {"backend": backend, "dynamic": dynamic}
    if mode and mode != "default":
        kwargs["mode"] = mode
    blocks = transformer_blocks(model)
    for block in blocks or [model]:
        block.compile(**kwargs)
    log.info("torch.compile (%s%s): %s", backend, f", mode={mode}" if mode else "",
             f"{len(blocks)} transformer blocks" if blocks else "the whole model")
    return len(blocks) or 1
