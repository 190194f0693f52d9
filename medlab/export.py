"""Write the trained model in Hugging Face format: a peft adapter dir or full weights, with the tokenizer.

Both load with ``from_pretrained`` (``AutoPeftModelForCausalLM`` / ``PeftModel`` for adapters,
``AutoModelForCausalLM`` for full models). Merging reloads the base *unquantized* and applies the
saved adapter, so a QLoRA adapter merges into full-precision weights rather than into 4-bit ones.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

log = logging.getLogger(__name__)


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def export_model(model, tokenizer, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out_dir)
    log.info("exported %s to %s", "adapter" if is_peft(model) else "model", out_dir)
    return out_dir


def save_tokenizer(tokenizer, out_dir: Path) -> None:
    """Save a tokenizer or processor; a processor built without its video part (no torchvision) saves its
    tokenizer and image processor, which is what loading it back needs."""
    if not hasattr(tokenizer, "image_processor") or hasattr(tokenizer, "video_processor"):
        tokenizer.save_pretrained(out_dir)
        return
    tokenizer.tokenizer.save_pretrained(out_dir)
    tokenizer.image_processor.save_pretrained(out_dir)


def export_merged(adapter_dir: str | Path, load_base: Callable, out_dir: str | Path) -> Path:
    """Merge the adapter saved in ``adapter_dir`` into a freshly loaded full-precision base."""
    from peft import PeftModel

    base, tokenizer = load_base()
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return export_model(merged, tokenizer, out_dir)
