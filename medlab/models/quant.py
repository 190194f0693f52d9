"""Keep bitsandbytes' 4-bit weights in the layout that training needs, on every CPU.

bitsandbytes 0.48+ (checked against 0.50.2, ``nn/modules.py`` ``Linear4bit.forward``) repacks a 4-bit
weight **in place** into an AVX512-BF16 layout the first time a ``Linear4bit`` runs in eval mode on a CPU
that has the instruction set, with an input that does not require grad: validation, GRPO generation, the
old/reference log-prob passes, evaluation. The repacking is permanent, and afterwards every forward goes
through ``gemv_4bit``, which has no gradient with respect to its input: the LoRA adapters of every layer
below stop getting the right gradients, silently. It also needs ``out_features % 32 == 0`` and crashes
(``N must be divisible by block_n``) on smaller layers.

The layer decides with its own flag, ``support_avx512bf16_for_cpu`` (set from ``has_avx512bf16()`` when
the layer is built). ``keep_trainable_layout`` turns that flag off on every 4-bit layer of a model the
project loads, so training, validation, generation, evaluation and export all see one layout whatever the
CPU. A weight that was already repacked (a model used before the guard ran) is converted back with
bitsandbytes' own inverse, which is lossy (the repack rounded the block scales to bf16): prevention is the
guard's job, the conversion only a fallback, and it is logged as a warning. The cost is the faster inference
kernel on those CPUs; correctness comes first (the guard is tested with the flag forced on).
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_FLAG = "support_avx512bf16_for_cpu"


def _linear4bit_class():
    try:
        from bitsandbytes.nn import Linear4bit
    except Exception:  # bitsandbytes absent or broken: nothing can be 4-bit
        return None
    return Linear4bit


def is_repacked(module) -> bool:
    """True when a ``Linear4bit``'s weight is in bitsandbytes' AVX512-BF16 inference layout."""
    state = getattr(getattr(module, "weight", None), "quant_state", None)
    return bool(getattr(state, "packing_format_for_cpu", False))


def keep_trainable_layout(model) -> int:
    """Stop in-place CPU repacking on every 4-bit layer of ``model`` and undo any that happened.

    Returns the number of 4-bit layers guarded (0 for a model without any). Idempotent.
    """
    cls = _linear4bit_class()
    if cls is None:
        return 0
    n = unpacked = 0
    for module in model.modules():
        if not isinstance(module, cls):
            continue
        n += 1
        setattr(module, _FLAG, False)
        if is_repacked(module):
            from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, module.weight.quant_state)
            module.quant_state = module.weight.quant_state
            unpacked += 1
    if unpacked:
        log.warning("4-bit layers: %d weights had been repacked into bitsandbytes' AVX512-BF16 inference layout; "
                    "converted back (block scales were rounded to bf16 by the repack)", unpacked)
    return n


def repacked_layers(model) -> list[str]:
    """Names of the 4-bit layers whose weight is in the inference-only CPU layout (should be none)."""
    cls = _linear4bit_class()
    if cls is None:
        return []
    return [name for name, m in model.named_modules() if isinstance(m, cls) and is_repacked(m)]
