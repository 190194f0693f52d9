"""Backbone loading (tiny random-init, HF directories, the packaged SmolLM2) and adapters (LoRA/QLoRA/DoRA)."""

from medlab.models.adapters import AdapterSpec
from medlab.models.backbone import describe_model, load_causal_lm, resolve_model_dir

__all__ = ["AdapterSpec", "describe_model", "load_causal_lm", "resolve_model_dir"]
