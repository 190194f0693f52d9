"""Vision-language backbone for a multimodal bi-encoder (Qwen2-VL family), built and loaded offline.

Images and texts are embedded into one vector space: each item (text, image, or both) becomes one
sequence ``<|vision_start|><|image_pad|>*n<|vision_end|> text <eos>``, the backbone's
``last_hidden_state`` is pooled (last token or mean) and L2-normalized.

- :func:`ensure_tiny_vlm` writes a random-init tiny Qwen2-VL (``model_type: qwen2_vl``) with a matching
  processor to ``cache_dir/tiny_vlm/<hash>`` once (temp dir, then an atomic rename), so the same arch and
  seed always give bit-identical weights.
- :func:`load_vlm` loads ``(model, processor)`` from any such HF directory (a real Qwen2-VL checkpoint too).
- :func:`multimodal_inputs` builds a padded batch; :func:`encode` (with grad) and :func:`embed_items`
  (``no_grad``, batched) turn it into embeddings.

torchvision: transformers' ``Qwen2VLProcessor`` insists on a video processor, and every video processor
needs torchvision. Without it ``AutoProcessor.from_pretrained`` raises ``ImportError``; :func:`load_vlm` then
assembles the same ``Qwen2VLProcessor`` from the saved image processor (the PIL backend) and tokenizer,
leaving video out. Images work identically either way.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from medlab.models.common import plain as _plain

#: Qwen2-VL's special tokens, added to the shipped tokenizer in this order (ids = len(base tokenizer) + i).
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
POOLING = ("last_token", "mean")
HEADS = ("embed", "lm")

#: The default tiny arch: ~0.4M parameters; a 64x64 image -> 8x8 patches of 8px -> 16 image tokens
#: (2x2 merge). ``vision.hidden_size`` is always set to ``text.hidden_size`` (the merger's output).
DEFAULT_ARCH: dict[str, Any] = {
    "text": {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 2048,
        # head_dim 16 -> 8 rotary frequencies, split over (temporal, height, width)
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    },
    "vision": {
        "depth": 2,
        "embed_dim": 32,
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 8,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    },
    "image": {"min_pixels": 16 * 16, "max_pixels": 64 * 64},
    "tie_word_embeddings": True,
}
_LAYOUT_VERSION = 1  # bump when the saved layout changes (part of the cache key)


def _asset_tokenizer() -> Path:
    return Path(__file__).resolve().parents[1] / "assets" / "tokenizer"


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def resolve_arch(arch: dict | None = None) -> dict:
    """``arch`` deep-merged over :data:`DEFAULT_ARCH` (keys ``text``, ``vision``, ``image``, ``tie_word_embeddings``)."""
    arch = _merge(DEFAULT_ARCH, _plain(arch) or {})
    unknown = set(arch) - set(DEFAULT_ARCH)
    if unknown:
        raise ValueError(f"unknown tiny VLM arch keys {sorted(unknown)}; expected {sorted(DEFAULT_ARCH)}")
    return arch


def _cache_key(arch: dict, init_seed: int, tokenizer_dir: Path) -> str:
    h = hashlib.sha256(json.dumps({"arch": arch, "seed": init_seed, "layout": _LAYOUT_VERSION},
                                  sort_keys=True).encode())
    for f in sorted(tokenizer_dir.glob("*")):
        if f.is_file():
            h.update(f.name.encode())
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _vlm_tokenizer(tokenizer_dir: Path):
    """The shipped tokenizer plus Qwen2-VL's vision tokens (appended as special tokens, never split)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    missing = [t for t in VISION_TOKENS if t not in tok.get_vocab()]
    tok.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return tok


def tiny_vlm_config(arch: dict, tokenizer) -> Any:
    """A ``Qwen2VLConfig`` for ``resolve_arch(arch)`` whose vocabulary and vision token ids match ``tokenizer``."""
    from transformers import Qwen2VLConfig

    arch = resolve_arch(arch)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    text = dict(arch["text"], vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    vision = dict(arch["vision"], hidden_size=text["hidden_size"])
    return Qwen2VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=arch["tie_word_embeddings"],
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def _save_processor(target: Path, tokenizer, image_processor, arch: dict) -> None:
    """Write what ``Qwen2VLProcessor.save_pretrained`` writes, without needing a (torchvision) video processor.

    ``processor_config.json`` carries the nested image and video processor configs; with torchvision
    installed ``AutoProcessor.from_pretrained`` rebuilds the full processor from it.
    """
    if hasattr(tokenizer, "_set_processor_class"):
        tokenizer._set_processor_class("Qwen2VLProcessor")
    tokenizer.save_pretrained(target)
    image = json.loads(image_processor.to_json_string())
    v = arch["vision"]
    video = {
        "video_processor_type": "Qwen2VLVideoProcessor", "patch_size": v["patch_size"],
        "merge_size": v["spatial_merge_size"], "temporal_patch_size": v["temporal_patch_size"],
        "size": {"shortest_edge": arch["image"]["min_pixels"], "longest_edge": arch["image"]["max_pixels"]},
    }
    with open(target / "processor_config.json", "w", encoding="utf-8") as f:
        json.dump({"processor_class": "Qwen2VLProcessor", "image_processor": image, "video_processor": video}, f,
                  indent=2, sort_keys=True)


def ensure_tiny_vlm(cache_dir: str | Path, *, arch: dict | None = None, init_seed: int = 0) -> Path:
    """Build (once) and return the directory of a deterministic random-init tiny Qwen2-VL + processor.

    The directory is ``cache_dir/tiny_vlm/<hash of (arch, seed, tokenizer files)>``; it loads with
    ``AutoModel``/``AutoModelForImageTextToText`` and :func:`load_vlm`. Concurrent builders race harmlessly.
    """
    from transformers import Qwen2VLForConditionalGeneration, Qwen2VLImageProcessorPil

    arch = resolve_arch(arch)
    tok_dir = _asset_tokenizer()
    target = Path(cache_dir).expanduser() / "tiny_vlm" / _cache_key(arch, init_seed, tok_dir)
    if (target / "config.json").exists():
        return target
    tok = _vlm_tokenizer(tok_dir)
    config = tiny_vlm_config(arch, tok)
    v = arch["vision"]
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=arch["image"]["min_pixels"], max_pixels=arch["image"]["max_pixels"], patch_size=v["patch_size"],
        merge_size=v["spatial_merge_size"], temporal_patch_size=v["temporal_patch_size"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        model = Qwen2VLForConditionalGeneration(config)  # saved with its LM head, so both heads load
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        _save_processor(tmp, tok, image_processor, arch)
        os.replace(tmp, target)  # atomic; a loser of the race finds the target already there
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_processor(path: str | Path):
    """``AutoProcessor.from_pretrained(path)``, or (no torchvision) the same ``Qwen2VLProcessor`` without video."""
    from transformers import AutoImageProcessor, AutoProcessor, AutoTokenizer
    from transformers import Qwen2VLProcessor as Processor

    try:
        return AutoProcessor.from_pretrained(path)
    except ImportError:  # the video processor needs torchvision; images do not
        pass
    tokenizer = AutoTokenizer.from_pretrained(path)
    proc = Processor.__new__(Processor)  # __init__ rejects a missing video processor
    proc.chat_template = getattr(tokenizer, "chat_template", None)
    proc.image_processor = AutoImageProcessor.from_pretrained(path)
    proc.tokenizer = tokenizer
    proc.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
    proc.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
    proc.image_token_id = tokenizer.convert_tokens_to_ids(proc.image_token)
    proc.video_token_id = tokenizer.convert_tokens_to_ids(proc.video_token)
    return proc


def load_vlm(path: str | Path, *, head: str = "embed", dtype: str = "float32", quantization_config: Any = None,
             attn_implementation: str | None = "sdpa") -> tuple[Any, Any]:
    """Return ``(model, processor)`` from a local HF directory (e.g. :func:`ensure_tiny_vlm`'s).

    ``head="embed"``: the base ``Qwen2VLModel`` (vision tower + language model, no LM head), whose output
    has ``last_hidden_state [B,T,H]``. ``head="lm"``: ``Qwen2VLForConditionalGeneration`` (logits).

    4-bit (``quantization_config=BitsAndBytesConfig(load_in_4bit=True, ...)``, CUDA + bitsandbytes; checked
    on an H100 with the tiny model): transformers quantizes every ``nn.Linear`` while loading — language
    model ``q/k/v/o_proj`` + ``gate/up/down_proj`` and the vision tower's ``qkv``/``proj``/``fc1``/``fc2`` +
    merger MLP; embeddings, norms and the vision ``patch_embed`` Conv3d stay in ``dtype``. Pass
    ``llm_int8_skip_modules=["visual"]`` to keep the (small) vision tower unquantized. QLoRA:
    ``peft.prepare_model_for_kbit_training`` then LoRA on ``q_proj``/``v_proj`` (these names exist in the
    language model only; the vision tower names its projections ``qkv``/``proj``). The quantized model is
    placed on ``cuda:LOCAL_RANK``.
    """
    from transformers import AutoModel, AutoModelForImageTextToText

    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; expected one of {HEADS}")
    kwargs: dict[str, Any] = {"dtype": "auto" if dtype in (None, "auto") else getattr(torch, dtype)}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        kwargs["device_map"] = {"": rank} if torch.cuda.is_available() else {"": "cpu"}
    cls = AutoModel if head == "embed" else AutoModelForImageTextToText
    model = cls.from_pretrained(Path(path).expanduser(), **kwargs)
    model.config.use_cache = False
    if quantization_config is not None:
        from medlab.models.quant import keep_trainable_layout

        keep_trainable_layout(model)  # no in-place AVX512-BF16 repacking of the 4-bit weights (models/quant.py)
    return model, load_processor(path)


def _load_image(image: Any):
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, os.PathLike)):
        raise TypeError(f"image must be a file path or a PIL image, got {type(image).__name__}")
    path = Path(image).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path}: {e}") from e


def multimodal_inputs(processor: Any, items: list[dict], *, max_length: int | None = None,
                      padding_side: str = "right", add_eos: bool = True) -> dict[str, torch.Tensor]:
    """One padded batch from ``items`` (each ``{"text"?: str, "image"?: path | PIL.Image}``, at least one).

    Item layout: ``<|vision_start|> <|image_pad|>*n <|vision_end|>`` (if an image) + text tokens + eos
    (``add_eos``). ``n = grid_t*grid_h*grid_w / merge_size**2`` from the image processor. ``max_length``
    truncates the text only; an item whose image part (+ eos) alone exceeds it raises ``ValueError``.

    Returns ``input_ids``, ``attention_mask`` and ``mm_token_type_ids`` (1 on image tokens; the model needs
    it for M-RoPE) ``[B,T]``; with any image, ``pixel_values [patches, C*t*p*p]`` and ``image_grid_thw
    [n_images,3]`` (items' images in order); without images, ``position_ids [B,T]`` counting real tokens
    only, so left padding does not shift positions. Feed it as ``model(**inputs)``.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if not items:
        raise ValueError("multimodal_inputs needs at least one item")
    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|vision_end|>")}
    image_id, video_id = processor.image_token_id, processor.video_token_id
    merge = processor.image_processor.merge_size

    images, has_image = [], []
    for i, item in enumerate(items):
        text, image = item.get("text"), item.get("image")
        if text is None and image is None:
            raise ValueError(f"item {i} has neither 'text' nor 'image'")
        has_image.append(image is not None)
        if image is not None:
            images.append(_load_image(image))
    out: dict[str, torch.Tensor] = {}
    n_tokens: list[int] = []
    if images:
        vision = processor.image_processor(images=images, return_tensors="pt")
        out["pixel_values"] = vision["pixel_values"]
        out["image_grid_thw"] = vision["image_grid_thw"]
        n_tokens = (vision["image_grid_thw"].prod(-1) // merge**2).tolist()

    seqs: list[list[int]] = []
    types: list[list[int]] = []
    img_iter = iter(n_tokens)
    for i, item in enumerate(items):
        head: list[int] = []
        if has_image[i]:
            n = next(img_iter)
            head = [ids["<|vision_start|>"]] + [image_id] * n + [ids["<|vision_end|>"]]
        tail = [tok.eos_token_id] if add_eos else []
        text_ids = tok(item["text"], add_special_tokens=False)["input_ids"] if item.get("text") else []
        if image_id in text_ids or video_id in text_ids:
            raise ValueError(f"item {i}: text contains a raw image/video placeholder token; pass images via 'image'")
        if max_length is not None:
            budget = max_length - len(head) - len(tail)
            if budget < 0 or (budget == 0 and not head and not tail):
                raise ValueError(f"item {i}: its image needs {len(head) + len(tail)} tokens > max_length="
                                 f"{max_length}; raise max_length or lower the image processor's max_pixels")
            text_ids = text_ids[:budget]
        seqs.append(head + text_ids + tail)
        types.append([1 if t == image_id else 0 for t in seqs[-1]])

    T = max(len(s) for s in seqs)
    B = len(seqs)
    input_ids = torch.full((B, T), tok.pad_token_id if tok.pad_token_id is not None else 0, dtype=torch.long)
    mask = torch.zeros(B, T, dtype=torch.long)
    mm_types = torch.zeros(B, T, dtype=torch.long)
    for b, (s, ty) in enumerate(zip(seqs, types)):
        sl = slice(0, len(s)) if padding_side == "right" else slice(T - len(s), T)
        input_ids[b, sl] = torch.tensor(s, dtype=torch.long)
        mask[b, sl] = 1
        mm_types[b, sl] = torch.tensor(ty, dtype=torch.long)
    out.update(input_ids=input_ids, attention_mask=mask, mm_token_type_ids=mm_types)
    if not images:
        out["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
    return out


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str = "last_token") -> torch.Tensor:
    """Pool ``hidden [B,T,H]`` over the real tokens of ``attention_mask [B,T]`` -> ``[B,H]``.

    ``last_token``: the last position whose mask is 1 (right or left padding alike); ``mean``: masked mean.
    """
    if mode == "last_token":
        positions = torch.arange(hidden.shape[1], device=hidden.device).expand_as(attention_mask)
        last = torch.where(attention_mask.bool(), positions, -1).max(dim=-1).values.clamp(min=0)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    if mode == "mean":
        m = attention_mask.to(hidden.dtype).unsqueeze(-1)
        return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)
    raise ValueError(f"unknown pooling {mode!r}; expected one of {POOLING}")


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode(model: torch.nn.Module, inputs: dict[str, torch.Tensor], *, pooling: str = "last_token",
           normalize: bool = True) -> torch.Tensor:
    """``model(**inputs).last_hidden_state`` pooled (and L2-normalized) -> ``[B,H]``, with autograd (training)."""
    dev = _device(model)
    inputs = {k: v.to(dev) for k, v in inputs.items()}
    hidden = model(**inputs, use_cache=False).last_hidden_state
    emb = pool(hidden, inputs["attention_mask"], pooling).float()
    return F.normalize(emb, dim=-1) if normalize else emb


@torch.no_grad()
def embed_items(model: torch.nn.Module, processor: Any, items: list[dict], *, pooling: str = "last_token",
                normalize: bool = True, batch_size: int = 16, max_length: int | None = None,
                padding_side: str = "right") -> torch.Tensor:
    """Embed ``items`` (see :func:`multimodal_inputs`) in eval mode, ``batch_size`` at a time -> ``[N,H]`` (cpu, fp32)."""
    if pooling not in POOLING:
        raise ValueError(f"unknown pooling {pooling!r}; expected one of {POOLING}")
    was_training = model.training
    model.eval()
    try:
        chunks = [
            encode(model, multimodal_inputs(processor, items[i:i + batch_size], max_length=max_length,
                                            padding_side=padding_side), pooling=pooling, normalize=normalize).cpu()
            for i in range(0, len(items), batch_size)
        ]
    finally:
        model.train(was_training)
    hidden = getattr(getattr(model, "config", None), "text_config", None)
    width = getattr(hidden, "hidden_size", 0)
    return torch.cat(chunks) if chunks else torch.zeros(0, width)
