"""Write the trained model in Hugging Face format: a peft adapter dir or full weights, with the tokenizer.

Both load with ``from_pretrained`` (``AutoPeftModelForCausalLM`` / ``PeftModel`` for adapters,
``AutoModelForCausalLM`` for full models). Merging reloads the base *unquantized* and applies the
saved adapter, so a QLoRA adapter merges into full-precision weights rather than into 4-bit ones.

The exported tokenizer carries the chat template the run trained with (``chat_export``): for
``data.template=llama3`` its ``chat_template`` is medlab's llama3 template (plus the run's default system
prompt, if any), so ``apply_chat_template`` renders exactly the text the model saw in training, and the
template's end-of-turn token is a stop token in ``generation_config.json``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChatExport:
    """What an export needs to reproduce the training chat format."""

    template: str  # jinja source, installed as the exported tokenizer's chat_template
    end_of_turn: str  # the string that ends an assistant turn: generation must stop on it


def chat_export(data_cfg: Mapping[str, Any] | None, tokenizer: Any) -> ChatExport | None:
    """The chat format a run's data trained with, or None to keep the tokenizer's own template as it is.

    ``data_cfg`` is the run's ``data`` config: chat data (``CausalLMData`` in ``sft`` mode, GRPO ``PromptData``)
    has a ``template`` (a template shipped with medlab, or ``tokenizer``) and a ``system_prompt`` inserted
    into conversations without one. CPT (``mode: cpt``) and retrieval data render no chat: None.
    """
    from medlab.data.templates import get_template, with_default_system

    if not data_cfg or data_cfg.get("template") is None or data_cfg.get("mode", "sft") != "sft":
        return None
    name, system_prompt = str(data_cfg.get("template")), data_cfg.get("system_prompt")
    if _data_kind(data_cfg) == "prompts" and not system_prompt:
        system_prompt = None  # PromptData.messages adds no system turn for an empty prompt (CausalLMData does)
    chat = get_template(name, _text_tokenizer(tokenizer))
    if name == "tokenizer":
        if system_prompt is None:
            return None  # trained on the tokenizer's own template: the export keeps it unchanged
        if not isinstance(_text_tokenizer(tokenizer).chat_template, str):  # a dict of named templates
            log.warning("export: the tokenizer has several chat templates; the run's system prompt is not added "
                        "to them (pass it as the first message when prompting the exported model)")
            return None
    return ChatExport(with_default_system(chat.source, system_prompt), chat.end_of_turn)


def _data_kind(data_cfg: Mapping[str, Any]) -> str | None:
    """The ``kind`` a data config's source declares (medlab.contracts.DataSource), or None."""
    from hydra.utils import get_class

    try:
        return getattr(get_class(str(data_cfg.get("_target_"))), "kind", None)
    except Exception:  # not importable: no chat format to export
        return None


def is_peft(model) -> bool:
    return hasattr(model, "peft_config")


def export_model(model, tokenizer, out_dir: str | Path, chat: ChatExport | None = None) -> Path:
    """Save ``model`` (adapter or full weights) and ``tokenizer`` to ``out_dir``; ``chat``: the run's chat format."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out_dir, chat.template if chat else None)
        if chat is not None:
            _save_stop_tokens(model, tokenizer, chat.end_of_turn, out_dir)
    log.info("exported %s to %s", "adapter" if is_peft(model) else "model", out_dir)
    return out_dir


def save_tokenizer(tokenizer, out_dir: Path, chat_template: str | None = None) -> None:
    """Save a tokenizer or processor (with ``chat_template`` instead of its own, if given); a processor built
    without its video part (no torchvision) saves its tokenizer and image processor, which is what loading it
    back needs. The live tokenizer is left as it was."""
    full = not hasattr(tokenizer, "image_processor") or hasattr(tokenizer, "video_processor")
    with _chat_template_set([tokenizer, getattr(tokenizer, "tokenizer", None)], chat_template):
        if full:
            tokenizer.save_pretrained(out_dir)
            return
        tokenizer.tokenizer.save_pretrained(out_dir)
        tokenizer.image_processor.save_pretrained(out_dir)


@contextmanager
def _chat_template_set(objects: list, chat_template: str | None) -> Iterator[None]:
    saved = []
    try:
        if chat_template is not None:
            for obj in objects:
                if obj is not None and hasattr(obj, "chat_template"):
                    saved.append((obj, obj.chat_template))
                    obj.chat_template = chat_template
        yield
    finally:
        for obj, value in saved:
            obj.chat_template = value


def _save_stop_tokens(model, tokenizer, end_of_turn: str, out_dir: Path) -> None:
    """``generation_config.json`` whose ``eos_token_id`` includes the end-of-turn token the model learned to emit
    (e.g. ``<|eot_id|>`` for llama3 on a tokenizer whose EOS is ``<|im_end|>``), so ``generate`` stops after an
    answer. Written next to adapters too (peft loads the base's; read it with ``GenerationConfig.from_pretrained``)."""
    text_tok = _text_tokenizer(tokenizer)
    config = getattr(model, "generation_config", None)
    if config is None:
        return
    encoded = text_tok.encode(end_of_turn, add_special_tokens=False)  # as tokenize.end_of_turn_id: one token, or EOS
    stop = encoded[0] if len(encoded) == 1 else text_tok.eos_token_id
    current = config.eos_token_id
    ids = [] if current is None else [current] if isinstance(current, int) else list(current)
    if text_tok.eos_token_id is not None and text_tok.eos_token_id not in ids:
        ids.append(text_tok.eos_token_id)
    if stop is not None and stop not in ids:
        ids.append(stop)
    config = copy.deepcopy(config)  # the live model keeps its own
    config.eos_token_id = ids[0] if len(ids) == 1 else ids
    config.save_pretrained(out_dir)


def _text_tokenizer(tokenizer: Any) -> Any:
    """The text tokenizer of a tokenizer or a processor (which has no ``encode`` of its own)."""
    inner = getattr(tokenizer, "tokenizer", None)
    return inner if inner is not None and not hasattr(tokenizer, "encode") else tokenizer


def export_merged(adapter_dir: str | Path, load_base: Callable, out_dir: str | Path,
                  chat: ChatExport | None = None) -> Path:
    """Merge the adapter saved in ``adapter_dir`` into a freshly loaded full-precision base."""
    from peft import PeftModel

    base, tokenizer = load_base()
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return export_model(merged, tokenizer, out_dir, chat)
