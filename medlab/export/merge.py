"""Merging a peft adapter for export: into a freshly loaded full-precision base (LoRA/DoRA), or for QLoRA into the
de-quantized 4-bit base weights in the compute dtype (the weights the adapter was trained against)."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


def quantized_layers(model: Any) -> dict[str, Any]:
    """The bitsandbytes 4-bit linear layers of a (peft) model, by their name in the plain base model."""
    try:
        import bitsandbytes as bnb
    except ImportError:
        return {}
    out = {}
    for name, module in model.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            name = name.removeprefix("base_model.model.").removesuffix(".base_layer")
            out[name] = module
    return out


def merge_into_dequantized(model: Any, adapter_dir: Path, load_base: Callable[[], tuple[Any, Any]]) -> Any:
    """The adapter of a QLoRA ``model`` merged into its *de-quantized* 4-bit base weights (not the original
    full-precision checkpoint: the adapter was trained against the quantized weights), in the compute dtype.
    The unquantized parameters (embeddings, norms, the LM head) come from ``load_base``."""
    import torch
    from bitsandbytes.functional import dequantize_4bit
    from peft import PeftModel

    from medlab.models.quant import keep_trainable_layout

    keep_trainable_layout(model)  # a CPU-repacked weight is unpacked first
    layers = quantized_layers(model)
    compute = next(iter(layers.values())).compute_dtype or torch.float32
    base, _ = load_base()
    targets = dict(base.named_modules())
    if any(name not in targets for name in layers):  # a base of another layout (head): merge as plain LoRA
        log.warning("QLoRA merge: the reloaded base does not name the 4-bit layers as the trained model does; "
                    "merging into its full-precision weights instead of the de-quantized ones")
        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with torch.no_grad():
        for name, layer in layers.items():
            weight = dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(torch.float32)
            target = targets[name]
            target.weight.data = weight.reshape(target.weight.shape).to(target.weight.device)
            if layer.bias is not None and target.bias is not None:
                target.bias.data = layer.bias.data.to(torch.float32).to(target.bias.device)
    merged = PeftModel.from_pretrained(base.to(torch.float32), str(adapter_dir)).merge_and_unload()
    return merged.to(compute)


def full_precision_model(model: Any, load_base: Callable[[], tuple[Any, Any]] | None, scratch: Path) -> Any:
    """``model`` itself, or for a peft model its adapter merged (a QLoRA one into the de-quantized base):
    into a freshly loaded base (``load_base``), else into a copy of the model."""
    import copy

    from medlab.export.hf import is_peft

    if not is_peft(model):
        return model
    if load_base is None:
        if quantized_layers(model):
            raise ValueError("merging a QLoRA adapter needs load_base (the model's base, loaded unquantized)")
        return copy.deepcopy(model).merge_and_unload().eval()
    from peft import PeftModel

    Path(scratch).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=scratch))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        if quantized_layers(model):
            merged = merge_into_dequantized(model, tmp, load_base)
        else:
            base, _ = load_base()
            merged = PeftModel.from_pretrained(base, str(tmp)).merge_and_unload()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return merged.eval()
