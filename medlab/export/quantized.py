"""bitsandbytes-quantized exports (``bnb4``: NF4 4-bit, ``bnb8``: LLM.int8()): ``save_pretrained`` directories
that reload with ``AutoModelForCausalLM.from_pretrained(dir)`` (the quantization config is in ``config.json``).

The (LoRA-merged) full-precision model is saved to a scratch dir, loaded back with a ``BitsAndBytesConfig``
(bitsandbytes quantizes while loading, on the GPU or on the CPU) and saved with the tokenizer.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

BITS = {"bnb4": 4, "bnb8": 8}


def bnb_config(bits: int) -> Any:
    import torch
    from transformers import BitsAndBytesConfig

    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    return BitsAndBytesConfig(load_in_8bit=True)


def _device_map() -> dict[str, Any]:
    import torch

    return {"": 0} if torch.cuda.is_available() else {"": "cpu"}


def quantize_model(model: Any, tokenizer: Any, out_dir: Path, bits: int, chat: Any = None) -> Path:
    """Save ``model`` (full precision, no adapter) quantized to ``bits`` into ``out_dir``."""
    from transformers import AutoModelForCausalLM

    from medlab.export.hf import export_model

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fp-", dir=out_dir.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        quantized = AutoModelForCausalLM.from_pretrained(tmp, quantization_config=bnb_config(bits),
                                                         device_map=_device_map())
        export_model(quantized, tokenizer, out_dir, chat)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def load_quantized(out_dir: Path) -> Any:
    from transformers import AutoModelForCausalLM

    from medlab.models.quant import keep_trainable_layout

    model = AutoModelForCausalLM.from_pretrained(str(out_dir), device_map=_device_map())
    keep_trainable_layout(model)  # no CPU repacking (it needs layer sizes that are multiples of 32)
    return model.eval()


class BnbExporter:
    """``bnb4`` / ``bnb8``: a bitsandbytes-quantized ``save_pretrained`` directory (LoRA/DoRA merged first)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.bits = BITS[name]
        self.out_subdir = f"export_{name}"

    def problems(self, cfg: Any) -> list[str]:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            return [f"export.format={self.name} needs bitsandbytes (pip install bitsandbytes)"]
        return []

    def export(self, model: Any, tokenizer: Any, out_dir: Path, *, chat: Any = None,
               load_base: Callable[[], tuple[Any, Any]] | None = None, **context: Any) -> Path:
        from medlab.export.merge import full_precision_model
        from medlab.export.verify import REPORT_DIR, compare, size_bytes, write_report

        out_dir = Path(out_dir)
        source = full_precision_model(model, load_base, out_dir.parent)
        quantize_model(source, tokenizer, out_dir, self.bits, chat)
        entry = {"path": str(out_dir), **compare(source, load_quantized(out_dir), tokenizer),
                 "size_bytes": size_bytes(out_dir)}
        write_report(out_dir.parent / REPORT_DIR, self.name, entry)
        return out_dir
