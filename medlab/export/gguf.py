"""GGUF export (llama.cpp's format) for the llama and qwen2 families, written with the ``gguf`` package.

    python -m medlab.export run_dir=RUN export.format=gguf export.quant=q8_0

Tensor names, metadata and the llama Q/K row permutation follow llama.cpp's ``convert_hf_to_gguf.py``
(``LlamaModel`` / ``Qwen2Model``): ``token_embd``, ``blk.N.attn_{q,k,v,output}``, ``blk.N.ffn_{gate,up,down}``,
``blk.N.{attn,ffn}_norm``, ``output_norm``, ``output`` (omitted when the embeddings are tied), qwen2's q/k/v biases.
The tokenizer is embedded (``tokenizer.ggml.model = gpt2``: byte-level BPE tokens, token types, merges, the
bos/eos/pad ids and the chat template the run trained with).

Quantization (``export.quant``) uses the ``gguf`` package's numpy quantizers (``gguf.quants.quantize``):
``f16``, ``bf16``, ``q8_0``, ``q4_0``, ``q4_1``, ``q5_0``, ``q5_1``. The type of each tensor follows llama.cpp's
rules (`medlab.export.gguf_mix`, ``export.gguf_mix`` / ``export.tensor_types``): 1-D tensors (norms, biases) stay
F32; for the 4/5-bit types the output head (``output.weight``, or ``token_embd`` when the embeddings are tied to it)
is Q8_0 (llama-quantize: Q6_K, which the numpy quantizers do not have); the ``medlab`` mix promotes ``attn_v`` /
``ffn_*`` of a ``q4_0`` export; a 2-D tensor whose rows are not a whole number of quantization blocks (32 values)
is written in F16 (the export report lists them and counts every type per tensor kind). K-quants (``q4_k_m``, ``q5_k_m``, ``q6_k``, ...) need llama.cpp's C++
``llama-quantize`` tool: export ``f16`` here, then ``llama-quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medlab.export.gguf_mix import (
    DEFAULT_MIX,
    bits_per_weight,
    head_name,
    mix_problems,
    planned_types,
    summary,
)
from medlab.export.gguf_mix import tensor_types as _tensor_types

log = logging.getLogger(__name__)

ARCHITECTURES = ("llama", "qwen2")
QUANTS = ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")
K_QUANTS = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "iq4_nl")
DEFAULT_QUANT = "f16"

# HF parameter name (per layer, after "model.layers.N.") -> GGUF tensor name (after "blk.N.")
_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}


def quant_problems(quant: Any) -> list[str]:
    """A message for an unsupported ``export.quant`` (naming the supported ones), or none."""
    q = str(quant or DEFAULT_QUANT).lower()
    if q in QUANTS:
        return []
    if q in K_QUANTS:
        return [f"export.quant={quant}: K-quants need llama.cpp's C++ tool; export export.quant=f16 and run "
                f"`llama-quantize model-f16.gguf model-{q}.gguf {q.upper()}` (supported here: {', '.join(QUANTS)})"]
    return [f"export.quant={quant!r} is not supported for GGUF; supported: {', '.join(QUANTS)} "
            "(K-quants: llama.cpp's llama-quantize on an f16 export)"]


def arch_problems(model_type: Any) -> list[str]:
    if model_type in ARCHITECTURES:
        return []
    return [f"export.format=gguf supports the model families {', '.join(ARCHITECTURES)} "
            f"(model_type={model_type!r} is not one of them)"]


def gguf_name(quant: str) -> str:
    return f"model-{quant.lower()}.gguf"


def _permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """convert_hf_to_gguf's ``LlamaModel.permute``: HF's rotate-half Q/K rows -> llama.cpp's interleaved rope."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(state: dict[str, Any], config: Any) -> list[tuple[str, np.ndarray]]:
    """``(gguf_name, float32 array)`` for every weight of a llama / qwen2 state dict, in llama.cpp's naming."""
    arch = config.model_type
    n_head, n_kv = config.num_attention_heads, getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    tied = bool(getattr(config, "tie_word_embeddings", False))
    out = []
    for name, tensor in state.items():
        arr = tensor.detach().to("cpu").float().numpy()
        if name in _GLOBAL_NAMES:
            if name == "lm_head.weight" and tied:
                continue
            out.append((_GLOBAL_NAMES[name], arr))
            continue
        if not name.startswith("model.layers."):
            if "rotary_emb" in name:
                continue
            raise ValueError(f"GGUF export: no llama.cpp name for the parameter {name!r}")
        rest = name[len("model.layers."):]
        idx, rest = rest.split(".", 1)
        module, kind = rest.rsplit(".", 1)
        if module not in _LAYER_NAMES:
            raise ValueError(f"GGUF export: no llama.cpp name for the parameter {name!r}")
        if arch == "llama" and module in ("self_attn.q_proj", "self_attn.k_proj"):
            arr = _permute(arr, n_head, n_head if module == "self_attn.q_proj" else n_kv)
        out.append((f"blk.{idx}.{_LAYER_NAMES[module]}.{kind}", arr))
    return out


def _text_tokenizer(tokenizer: Any) -> Any:
    inner = getattr(tokenizer, "tokenizer", None)
    return inner if inner is not None and not hasattr(tokenizer, "encode") else tokenizer


def _pre_tokenizer_name(tok_json: dict) -> str:
    """llama.cpp's ``tokenizer.ggml.pre`` for a byte-level BPE tokenizer's pre-tokenizer."""
    pre = tok_json.get("pre_tokenizer") or {}
    if pre.get("type") == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    kinds = [p.get("type") for p in pre.get("pretokenizers", [])] if pre.get("type") == "Sequence" else []
    if kinds == ["Digits", "ByteLevel"]:
        return "smollm"
    if "Split" in kinds:
        return "qwen2"
    log.warning("GGUF export: unrecognized pre-tokenizer %s; writing tokenizer.ggml.pre=default", pre.get("type"))
    return "default"


def add_tokenizer(writer: Any, tokenizer: Any, chat_template: str | None, vocab_size: int) -> None:
    """Embed a byte-level BPE tokenizer as llama.cpp's ``gpt2`` tokenizer model."""
    import gguf

    tok = _text_tokenizer(tokenizer)
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        raise ValueError("GGUF export needs a fast (tokenizer.json) byte-level BPE tokenizer")
    tok_json = json.loads(backend.to_str())
    model = tok_json["model"]
    if model.get("type") != "BPE":
        raise ValueError(f"GGUF export supports byte-level BPE tokenizers (tokenizer.ggml.model=gpt2), "
                         f"not {model.get('type')}")
    vocab: dict[str, int] = dict(model["vocab"])
    added = {t["content"]: t for t in tok_json.get("added_tokens", [])}
    for content, t in added.items():
        vocab[content] = t["id"]
    by_id = {i: s for s, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        s = by_id[i]
        tokens.append(s)
        if s in added:
            types.append(gguf.TokenType.CONTROL if added[s].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(tok_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for attr, add in (("bos_token_id", writer.add_bos_token_id), ("eos_token_id", writer.add_eos_token_id),
                      ("pad_token_id", writer.add_pad_token_id), ("unk_token_id", writer.add_unk_token_id)):
        value = getattr(tok, attr, None)
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(bool(getattr(tok, "add_bos_token", False)))
    template = chat_template if chat_template is not None else getattr(tok, "chat_template", None)
    if isinstance(template, str):
        writer.add_chat_template(template)


def write_gguf(model: Any, tokenizer: Any, path: Path, quant: str = DEFAULT_QUANT,
               chat_template: str | None = None, mix: str = DEFAULT_MIX,
               tensor_types: dict[str, str] | None = None) -> dict[str, Any]:
    """Write a full-precision llama / qwen2 ``model`` (no adapter) to ``path``, each tensor in the type
    `medlab.export.gguf_mix` gives it (``mix``, ``tensor_types`` overrides); returns what was written: the types per
    tensor kind, the bits per weight and the tensors that fell back to F16 (rows not whole quantization blocks)."""
    import gguf

    quant, path = quant.lower(), Path(path)
    problems = quant_problems(quant) + mix_problems(mix, tensor_types, QUANTS)
    config = model.config
    problems += arch_problems(config.model_type)
    if problems:
        raise ValueError("; ".join(problems))
    arch = config.model_type
    writer = gguf.GGUFWriter(str(path), arch)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_name(str(getattr(config, "_name_or_path", "") or arch) or arch)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(config.num_attention_heads))
    writer.add_head_count_kv(int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads))
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(int(head_dim))
    writer.add_vocab_size(int(config.vocab_size))
    writer.add_file_type(int(getattr(gguf.LlamaFileType, "MOSTLY_" + quant.upper(), 0)) if quant != "f16"
                         else int(gguf.LlamaFileType.MOSTLY_F16))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    add_tokenizer(writer, tokenizer, chat_template, int(config.vocab_size))
    tensors = gguf_tensors(model.state_dict(), config)
    shapes = {name: arr.shape for name, arr in tensors}
    planned = planned_types(shapes, quant, mix, tensor_types)
    types = _tensor_types(shapes, quant, mix, tensor_types)
    fallback = [name for name in types if types[name] != planned[name]]
    for name, arr in tensors:
        if types[name] == "f32":
            writer.add_tensor(name, arr.astype(np.float32))
            continue
        dtype = getattr(gguf.GGMLQuantizationType, types[name].upper())
        writer.add_tensor(name, gguf.quants.quantize(arr, dtype), raw_dtype=dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    if fallback:
        log.info("GGUF %s: %d tensor(s) written in F16 (rows not a multiple of the block size): %s",
                 quant, len(fallback), ", ".join(fallback))
    return {"quant": quant, "file": path.name, "gguf_mix": mix, "output_head_type": types[head_name(shapes)],
            "tensor_types": summary(types), "bits_per_weight": round(bits_per_weight(types, shapes), 3),
            "f16_fallback_tensors": fallback}


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    if theta is None:
        params = getattr(config, "rope_parameters", None) or {}
        theta = params.get("rope_theta", 10000.0) if isinstance(params, dict) else 10000.0
    return theta


def load_gguf(path: Path, dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` de-quantized by transformers from a GGUF file."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                 dtype=dtype or torch.float32)
    return model.eval(), tok


class GGUFExporter:
    """llama.cpp GGUF (``export.quant``), with the tokenizer embedded; LoRA/DoRA adapters are merged first."""

    name = "gguf"
    out_subdir = "export_gguf"

    def __init__(self, quant: str = DEFAULT_QUANT, mix: str = DEFAULT_MIX,
                 tensor_types: dict[str, str] | None = None) -> None:
        self.quant, self.mix, self.tensor_types = quant, mix, dict(tensor_types or {})

    def problems(self, cfg: Any) -> list[str]:
        export = cfg.get("export") or {}
        out = quant_problems(export.get("quant") or self.quant)
        overrides = export.get("tensor_types")
        out += mix_problems(export.get("gguf_mix"), dict(overrides) if hasattr(overrides, "items") else overrides,
                            QUANTS)
        model_type = model_type_of(cfg)
        if model_type is not None:
            out += arch_problems(model_type)
        return out

    def export(self, model: Any, tokenizer: Any, out_dir: Path, *, chat: Any = None, load_base: Callable[[], tuple[Any, Any]] | None = None, **context: Any) -> Path:
        from medlab.export.merge import full_precision_model
        from medlab.export.verify import REPORT_DIR, compare, size_bytes, write_report

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        quant = str(self.quant or DEFAULT_QUANT).lower()
        source = full_precision_model(model, load_base, out_dir.parent)
        path = out_dir / gguf_name(quant)
        info = write_gguf(source, tokenizer, path, quant, chat.template if chat is not None else None,
                          mix=str(self.mix or DEFAULT_MIX), tensor_types=self.tensor_types)
        loaded, _ = load_gguf(path)
        entry = {**info, "path": str(path), **compare(source, loaded, tokenizer), "size_bytes": size_bytes(path)}
        write_report(out_dir.parent / REPORT_DIR, self.name, entry)
        return out_dir


def model_type_of(cfg: Any) -> str | None:
    """The ``model_type`` a run's model config declares (``model.arch.model_type``, SmolLM2 = llama, or the
    ``config.json`` of ``model.path``); None when it cannot be told without loading."""
    model = cfg.get("model") or {}
    arch = model.get("arch") or {}
    if arch.get("model_type"):
        return str(arch.get("model_type"))
    if model.get("source") == "smollm2":
        return "llama"
    path = model.get("path")
    if path and (Path(str(path)).expanduser() / "config.json").is_file():
        try:
            return json.loads((Path(str(path)).expanduser() / "config.json").read_text()).get("model_type")
        except (OSError, ValueError):
            return None
    return None
