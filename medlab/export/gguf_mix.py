"""Per-tensor GGUF types: which ggml type each tensor of a llama / qwen2 export is written in.

llama.cpp never writes every tensor in the nominal type of a file (``llama_tensor_get_type`` in
``src/llama-quant.cpp``); ``export.gguf_mix`` picks the rules:

- ``llama_cpp`` -- what ``llama-quantize`` does for the types the numpy quantizers have (no imatrix): 1-D tensors
  (norms, biases) stay F32; the output head (``output.weight``, or ``token_embd.weight`` when the embeddings are
  tied to it) is Q6_K for the 4/5-bit types -- Q6_K is a K-quant the ``gguf`` package cannot write, so it is Q8_0
  here (the type llama.cpp itself falls back to when a row is not a whole Q6_K block); every other 2-D tensor has
  the nominal type.
- ``medlab`` (default) -- ``llama_cpp``, plus, for ``q4_0``, promotions of the kind llama.cpp's mixtures make
  (``attn_v`` with more bits, as in every K-quant mix; ``ffn_down`` of the first eighth of the layers higher, as
  llama.cpp's Q4_0 does with an imatrix and Q4_K_S / IQ4_NL without), taken to the smallest mixture measured to keep
  SmolLM2-135M's perplexity within 1.10x of the source: ``attn_v`` Q8_0; ``ffn_down`` Q8_0 in the first eighth of
  the layers, Q5_0 in the rest; ``attn_output`` and ``ffn_gate`` Q5_0; ``attn_q``, ``attn_k``, ``ffn_up`` Q4_0
  (`MEDLAB_RULES`; the table of the variants measured is in experiments/export/README.md).

``export.tensor_types`` (``{REGEX: TYPE}``, like llama-quantize's ``--tensor-type``) overrides both for the tensors
whose GGUF name matches (``re.search``; the first matching entry wins). Last, as in llama.cpp, a tensor whose rows
are not a whole number of quantization blocks falls back to F16.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

MIXES = ("medlab", "llama_cpp")
DEFAULT_MIX = "medlab"
FLOAT_TYPES = ("f32", "f16", "bf16")
LOW_BIT = ("q4_0", "q4_1", "q5_0", "q5_1")  # llama-quantize: their output head is Q6_K (Q8_0 here)
HEAD_TYPE = "q8_0"
# medlab's promotions on top of llama.cpp's rules: quant -> ((tensor kind, layers, type), ...), first match wins;
# layers: "all", "first" (the first eighth: llama.cpp's i_layer < n_layer/8) or "more" (its use_more_bits layers).
# q4_0: the smallest of the mixtures measured on SmolLM2-135M with a perplexity ratio <= 1.10 (1.094, 100.5 MB vs
# 89.9 MB for llama.cpp's rules at 1.343; experiments/export/README.md)
MEDLAB_RULES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "q4_0": (("attn_v", "all", "q8_0"), ("ffn_down", "first", "q8_0"), ("ffn_down", "all", "q5_0"),
             ("attn_output", "all", "q5_0"), ("ffn_gate", "all", "q5_0")),
}
_LAYER = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def use_more_bits(i_layer: int, n_layer: int) -> bool:
    """llama.cpp's ``use_more_bits``: the first and last eighth of the layers, and every third layer between."""
    return i_layer < n_layer // 8 or i_layer >= 7 * n_layer // 8 or (i_layer - n_layer // 8) % 3 == 2


def _in(layers: str, i_layer: int, n_layer: int) -> bool:
    if layers == "first":
        return i_layer < n_layer // 8
    return layers == "all" or (layers == "more" and use_more_bits(i_layer, n_layer))


def head_name(names: Iterable[str]) -> str:
    """The output head: ``output.weight``, or ``token_embd.weight`` when the embeddings are tied (no output)."""
    names = set(names)
    return "output.weight" if "output.weight" in names else "token_embd.weight"


def _rule_type(name: str, quant: str, n_layer: int) -> str | None:
    m = _LAYER.match(name)
    if m is None or m.group(3) != "weight":
        return None
    layer, kind = int(m.group(1)), m.group(2)
    for rule_kind, layers, qtype in MEDLAB_RULES.get(quant, ()):
        if rule_kind == kind and _in(layers, layer, n_layer):
            return qtype
    return None


def block_size(qtype: str) -> int:
    """Values per quantization block (1 for the float types)."""
    import gguf

    return gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype.upper())][0]


def planned_types(shapes: Mapping[str, tuple[int, ...]], quant: str, mix: str = DEFAULT_MIX,
                  overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """``{gguf tensor name: type}`` (lower-case ggml type names) that `mix` and the ``export.tensor_types``
    `overrides` ask for, before the block-size fallback (`tensor_types`)."""
    quant = quant.lower()
    n_layer = 1 + max((int(m.group(1)) for m in map(_LAYER.match, shapes) if m), default=-1)
    head = head_name(shapes)
    patterns = [(re.compile(str(p)), str(t).lower()) for p, t in (overrides or {}).items()]
    out = {}
    for name, shape in shapes.items():
        if len(shape) <= 1:
            out[name] = "f32"
            continue
        qtype = quant
        if name == head and quant in LOW_BIT:
            qtype = HEAD_TYPE
        elif mix == "medlab":
            qtype = _rule_type(name, quant, n_layer) or quant
        out[name] = next((t for p, t in patterns if p.search(name)), qtype)
    return out


def tensor_types(shapes: Mapping[str, tuple[int, ...]], quant: str, mix: str = DEFAULT_MIX,
                 overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """`planned_types`, with llama.cpp's fallback: a tensor whose rows (the last numpy axis) are not a whole number
    of quantization blocks is F16."""
    out = planned_types(shapes, quant, mix, overrides)
    for name, qtype in out.items():
        if qtype not in FLOAT_TYPES and shapes[name][-1] % block_size(qtype):
            out[name] = "f16"
    return out


def summary(types: Mapping[str, str]) -> dict[str, dict[str, int]]:
    """``{tensor kind: {type: count}}`` (kind: the name without ``blk.N.``): which tensors got which type."""
    out: dict[str, Counter] = {}
    for name, qtype in types.items():
        m = _LAYER.match(name)
        kind = f"{m.group(2)}.{m.group(3)}" if m else name
        out.setdefault(kind, Counter())[qtype] += 1
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


def bits_per_weight(types: Mapping[str, str], shapes: Mapping[str, tuple[int, ...]]) -> float:
    """Average bits per weight of the tensors as typed (the file's tensor data, without metadata)."""
    import gguf

    total_bits = total = 0
    for name, qtype in types.items():
        n = 1
        for d in shapes[name]:
            n *= int(d)
        block, nbytes = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, qtype.upper())]
        total_bits += n / block * nbytes * 8
        total += n
    return total_bits / max(total, 1)


def mix_problems(mix: Any, overrides: Any, supported: Iterable[str]) -> list[str]:
    """Config problems of ``export.gguf_mix`` / ``export.tensor_types`` (before any work)."""
    out = []
    if mix is not None and str(mix) not in MIXES:
        out.append(f"export.gguf_mix={mix!r} is not one of {', '.join(MIXES)}")
    if overrides is None:
        return out
    if not isinstance(overrides, Mapping):
        return out + [f"export.tensor_types must be a mapping {{REGEX: TYPE}}, got {overrides!r}"]
    allowed = ("f32", *supported)
    for pattern, qtype in overrides.items():
        try:
            re.compile(str(pattern))
        except re.error as err:
            out.append(f"export.tensor_types: {pattern!r} is not a regular expression ({err})")
        if str(qtype).lower() not in allowed:
            out.append(f"export.tensor_types.{pattern}={qtype!r}: not a type the export can write "
                       f"({', '.join(allowed)})")
    return out
