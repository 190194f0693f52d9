"""Adapters by composition: LoRA, DoRA, and QLoRA (= LoRA over a 4-bit quantized base).

QLoRA is not a subclass of anything: it is an ``AdapterSpec`` whose ``quantize`` is set, which makes
``quantization_config()`` return a bitsandbytes config that the backbone loader applies while reading
weights; ``apply()`` then adds the same LoRA layers as for plain LoRA.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

import torch

KINDS = ("none", "lora", "dora")


@dataclass
class AdapterSpec:
    """What to train on top of the backbone.

    kind: ``none`` (full fine-tune), ``lora`` or ``dora`` (weight-decomposed LoRA).
    r, alpha, dropout: LoRA rank, scaling numerator (scale = alpha / r), dropout on the LoRA input.
    target_modules: module-name suffixes (``q_proj``) or ``all-linear``.
    quantize: ``None`` | ``nf4`` | ``fp4`` — load the base in 4 bit (QLoRA); ``double_quant`` also
    quantizes the quantization constants; ``compute_dtype`` is the matmul dtype (bf16 on GPU,
    float32 on CPU).
    init_from: continue training an existing peft adapter (a directory with ``adapter_config.json``, e.g. an SFT
    run's ``export/``, or that run directory) instead of a new one; the saved adapter's own rank and targets apply.
    Preference objectives take the same directory as their frozen reference (``objective.ref_adapter``).
    """

    kind: str = "none"
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: Any = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    bias: str = "none"
    modules_to_save: Any = None
    quantize: str | None = None
    double_quant: bool = True
    compute_dtype: str = "float32"
    gradient_checkpointing: bool = False
    init_from: str | None = None

    @property
    def is_peft(self) -> bool:
        return self.kind in ("lora", "dora")

    def problems(self, module_names: set[str] | None = None) -> list[str]:
        """Every configuration problem, for up-front validation (empty list = fine)."""
        out = []
        if self.kind not in KINDS:
            out.append(f"adapter.kind={self.kind!r} is not one of {KINDS}")
        if self.quantize not in (None, "nf4", "fp4"):
            out.append(f"adapter.quantize={self.quantize!r}: expected null, nf4 or fp4")
        if self.quantize and not self.is_peft:
            out.append("adapter.quantize needs a LoRA/DoRA adapter: a 4-bit base cannot be fully fine-tuned")
        if self.init_from:
            if not self.is_peft:
                out.append("adapter.init_from continues a LoRA/DoRA adapter: use adapter=lora (a full fine-tune "
                           "starts from a merged model: model=local_hf model.path=DIR)")
            elif resolve_adapter_dir(self.init_from) is None:
                out.append(f"adapter.init_from={self.init_from!r}: no adapter_config.json there or in its export/ "
                           "(a trained LoRA run dir or its export/ folder)")
        if self.is_peft and self.r <= 0:
            out.append(f"adapter.r must be > 0, got {self.r}")
        if self.is_peft and module_names is not None and self.target_modules != "all-linear":
            targets = [self.target_modules] if isinstance(self.target_modules, str) else list(self.target_modules)
            for t in targets:
                if not any(n == t or n.endswith("." + t) or fnmatch.fnmatch(n, t) for n in module_names):
                    out.append(f"adapter.target_modules: {t!r} matches no module of the model")
        return out

    def quantization_config(self):
        if not self.quantize:
            return None
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.quantize,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=getattr(torch, self.compute_dtype),
            bnb_4bit_quant_storage=torch.uint8,
        )

    def apply(self, model, task_type: str = "CAUSAL_LM"):
        """Wrap ``model`` with the adapter (or enable full fine-tuning); returns the model to train.

        ``task_type`` is peft's: CAUSAL_LM, FEATURE_EXTRACTION (embedders) or SEQ_CLS (scorers, whose new
        score/classifier head is then trained in full next to the LoRA layers).
        """
        if self.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        if not self.is_peft:
            model.requires_grad_(True)
            return model
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

        if self.quantize:
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=self.gradient_checkpointing)
        if self.init_from:
            from peft import PeftModel

            path = resolve_adapter_dir(self.init_from)
            if path is None:
                raise ValueError(f"adapter.init_from={self.init_from!r}: no adapter_config.json there or in its export/")
            return PeftModel.from_pretrained(model, str(path), is_trainable=True)
        targets = self.target_modules if isinstance(self.target_modules, str) else list(self.target_modules)
        config = LoraConfig(
            r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout, target_modules=targets,
            bias=self.bias, use_dora=self.kind == "dora", task_type=task_type,
            modules_to_save=list(self.modules_to_save) if self.modules_to_save else None,
        )
        return get_peft_model(model, config)


def resolve_adapter_dir(path: str | None):
    """The peft adapter directory ``path`` names (itself or its ``export/``), or None."""
    from pathlib import Path

    if not path:
        return None
    for candidate in (Path(path), Path(path) / "export"):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    return None


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; 4-bit weights count their logical size."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if getattr(p, "quant_state", None) is not None or p.dtype == torch.uint8:
            n *= 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total
