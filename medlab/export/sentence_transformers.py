"""sentence-transformers files next to a retrieval export, so ``SentenceTransformer(export)`` /
``CrossEncoder(export)`` compute what medlab trained (written as plain JSON: sentence-transformers is not a runtime
dependency of medlab).

Which files is decided by the objective's declared ``eval_task`` (``medlab.contracts.Objective``), read from the run's
``objective._target_``:

- ``retrieval`` (bi-encoder): ``modules.json`` = Transformer -> ``1_Pooling`` (the trained pooling: mean, cls,
  lasttoken; sentence-transformers' lasttoken takes the last attended token under left or right padding, as medlab's
  ``last_token``) -> ``2_Normalize`` (when ``objective.normalize``); ``sentence_bert_config.json`` with
  ``max_seq_length = data.max_length`` (the document limit: the corpus side is what an index stores, and
  sentence-transformers has one limit for both sides; queries longer than ``data.query_max_length`` tokens are cut
  later than in training); ``config_sentence_transformers.json`` with the prefixes as ``prompts``
  (``{"query": data.query_prefix, "document": data.doc_prefix}``, ``default_prompt_name`` null: pass
  ``prompt_name="query"`` / ``"document"``, or use ``encode_query`` / ``encode_document``). ``data.append_eos``: the
  exported tokenizer's post-processor appends EOS (as Qwen3-Embedding's does), so sentence-transformers' tokenization
  equals medlab's (truncated to ``max_length - 1`` tokens, then EOS) -- and a medlab run fine-tuning from this
  export must then set ``data.append_eos=false``. The tokenizer pads on the right (medlab's encoding).
- ``rerank`` (cross-encoder, LLM reranker): ``config.json`` gets ``sentence_transformers.activation_fn`` = Identity
  (``predict`` returns the trained logit, not its sigmoid) and ``num_labels: 1``; the tokenizer's
  ``model_max_length`` is ``data.max_length``; pairs are encoded as medlab does with a SEP token: the tokenizer's
  pair encoding of (query, document), ``longest_first`` truncation.

What sentence-transformers cannot express is written to ``README.md`` in the export (with the loader to use):
vision-language embedders, adapter-only exports, a ``pair_template`` / tokenizer without SEP token for a
cross-encoder (medlab renders ``"Query: {query}\\nDocument: {doc}"`` + EOS), cross-encoder prefixes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ST_POOLING = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "last_token": "pooling_mode_lasttoken"}
_ALL_POOLING_KEYS = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                     "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")
README = "README.md"


def eval_task(objective_cfg: Mapping[str, Any] | None) -> str | None:
    """The ``eval_task`` the run's objective class declares (``retrieval`` / ``rerank`` / ``qa``), or None."""
    from hydra.utils import get_class

    if not objective_cfg or not objective_cfg.get("_target_"):
        return None
    try:
        return getattr(get_class(str(objective_cfg.get("_target_"))), "eval_task", None)
    except Exception:  # noqa: BLE001 - not importable: not a retrieval objective
        return None


def write_retrieval_files(model: Any, tokenizer: Any, out_dir: str | Path, objective_cfg: Mapping[str, Any] | None,
                          data_cfg: Mapping[str, Any] | None) -> list[str]:
    """The sentence-transformers files for a retrieval / rerank run's export in ``out_dir`` (already holding the
    model and tokenizer); returns the notes written to its README (empty: it loads exactly as trained)."""
    task = eval_task(objective_cfg)
    if task == "preference":  # an encoder reward model with objective.prior=cosine: the same two halves
        notes = _cosine_prior(model, tokenizer, Path(out_dir), _plain(objective_cfg), _plain(data_cfg))
        for n in notes:
            log.warning("export: %s", n.replace("reranker", "reward model").replace("(q, d)", "(prompt, completion)"))
        return notes
    if task not in ("retrieval", "rerank"):
        return []
    out_dir, data_cfg, objective_cfg = Path(out_dir), _plain(data_cfg), _plain(objective_cfg)
    if task == "retrieval":
        notes = _bi_encoder(model, tokenizer, out_dir, objective_cfg, data_cfg)
    else:
        notes = _cross_encoder(model, tokenizer, out_dir, data_cfg)
        notes += _cosine_prior(model, tokenizer, out_dir, objective_cfg, data_cfg)
    _write_readme(out_dir, task, notes, data_cfg, objective_cfg)
    return notes


# ------------------------------------------------------------------------------------------------ bi-encoder
def _bi_encoder(model, tokenizer, out_dir: Path, objective: dict, data: dict) -> list[str]:
    notes: list[str] = []
    if hasattr(tokenizer, "image_processor") or _is_vlm(model):
        return ["a vision-language embedder (images and text through the model's processor, medlab's "
                "`multimodal_inputs`): sentence-transformers' text Transformer module does not reproduce its inputs, "
                "so no sentence-transformers files are written. Load it with medlab: "
                "`medlab.evaluation.load_run(RUN_DIR)` and `module.embed_items(...)` (or `python -m medlab.evaluate`)."]
    pooling = str(objective.get("pooling", "mean"))
    normalize = bool(objective.get("normalize", True))
    max_length = int(data.get("max_length") or 128)
    query_max_length = int(data.get("query_max_length") or max_length)
    prefixes = {"query": str(data.get("query_prefix") or ""), "document": str(data.get("doc_prefix") or "")}
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out_dir / "2_Normalize").mkdir(exist_ok=True)
    _write(out_dir / "modules.json", modules)
    pool_cfg = {"word_embedding_dimension": _hidden_size(model), **{k: False for k in _ALL_POOLING_KEYS},
                "include_prompt": True}
    pool_cfg[ST_POOLING[pooling]] = True
    (out_dir / "1_Pooling").mkdir(exist_ok=True)
    _write(out_dir / "1_Pooling" / "config.json", pool_cfg)
    _write(out_dir / "sentence_bert_config.json", {"max_seq_length": max_length, "do_lower_case": False})
    _write(out_dir / "config_sentence_transformers.json", {
        "__version__": _versions(), "model_type": "SentenceTransformer", "prompts": prefixes,
        "default_prompt_name": None, "similarity_fn_name": "cosine" if normalize else "dot"})
    _tokenizer_config(out_dir, padding_side="right")
    if bool(data.get("append_eos")):
        if not _append_eos_post_processor(out_dir, tokenizer):
            notes.append("`data.append_eos=true`, but the tokenizer has no fast `tokenizer.json` to append EOS with: "
                         "sentence-transformers will not add the EOS token medlab appended to every text "
                         "(append it to each text yourself, or load with medlab).")
    if query_max_length != max_length:
        notes.append(f"medlab truncated queries to data.query_max_length={query_max_length} tokens and documents to "
                     f"data.max_length={max_length}; sentence-transformers has one limit, `max_seq_length` = "
                     f"{max_length} (the documents'), so a query longer than {query_max_length} tokens is cut later "
                     "than in training (set `model.max_seq_length` when encoding queries to match).")
    if _is_adapter(out_dir):
        notes.append(_ADAPTER_NOTE)
    return notes


def _append_eos_post_processor(out_dir: Path, tokenizer: Any) -> bool:
    """Make the exported fast tokenizer append EOS after every text (``data.append_eos``), after whatever its
    post-processor already adds; truncation then keeps room for it, as medlab's ``encode_texts`` does."""
    from tokenizers import Tokenizer, processors

    path = out_dir / "tokenizer.json"
    text_tok = getattr(tokenizer, "tokenizer", None) if not hasattr(tokenizer, "encode") else tokenizer
    eos, eos_id = getattr(text_tok, "eos_token", None), getattr(text_tok, "eos_token_id", None)
    if not path.exists() or eos is None or eos_id is None:
        return False
    tok = Tokenizer.from_file(str(path))
    template = processors.TemplateProcessing(single=f"$A:0 {eos}:0", pair=f"$A:0 {eos}:0 $B:1 {eos}:1",
                                             special_tokens=[(eos, eos_id)])
    current = tok.post_processor
    tok.post_processor = template if current is None else processors.Sequence([current, template])
    tok.save(str(path))
    return True


# ------------------------------------------------------------------------------------------------ cross-encoder
def _cross_encoder(model, tokenizer, out_dir: Path, data: dict) -> list[str]:
    notes: list[str] = []
    config_path = out_dir / "config.json"
    if config_path.exists():
        config = json.loads(config_path.read_text())
        config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity",
                                           "version": _versions()["sentence_transformers"]}
        config["num_labels"] = 1
        config.setdefault("id2label", {"0": "LABEL_0"})
        config.setdefault("label2id", {"LABEL_0": 0})
        _write(config_path, config)
    max_length = int(data.get("max_length") or 128)
    _tokenizer_config(out_dir, model_max_length=max_length)
    text_tok = getattr(tokenizer, "tokenizer", tokenizer)
    if data.get("pair_template") is not None or getattr(text_tok, "sep_token", None) is None:
        template = data.get("pair_template") or "Query: {query}\nDocument: {doc}"
        notes.append(f"medlab scored each pair as one text, {template!r} followed by EOS (`data.pair_template`; the "
                     "tokenizer has no SEP token for a pair encoding), which sentence-transformers' CrossEncoder does "
                     "not render: `CrossEncoder(export).predict` would score the tokenizer's own pair encoding instead. "
                     "Score pairs with medlab (`medlab.evaluation.load_run(RUN_DIR)` and `module.score(...)` on "
                     "`RetrievalData.encode_pairs`, or `python -m medlab.evaluate`), or render the text yourself, "
                     "append EOS and call the exported `AutoModelForSequenceClassification`.")
    if data.get("query_prefix") or data.get("doc_prefix"):
        notes.append(f"medlab prepended data.query_prefix={data.get('query_prefix')!r} to each query and "
                     f"data.doc_prefix={data.get('doc_prefix')!r} to each document; prepend them yourself before "
                     "`CrossEncoder.predict`.")
    if _is_adapter(out_dir):
        notes.append(_ADAPTER_NOTE)
    return notes


PRIOR_FILE = "medlab_reranker.json"


def _cosine_prior(model, tokenizer, out_dir: Path, objective: dict, data: dict) -> list[str]:
    """``objective.prior=cosine``: the reranker's score is ``prior_scale * cos(E(q), E(d)) + CrossEncoder(q, d)``.
    sentence-transformers has no single model for that sum, so the export holds both halves: the CrossEncoder files
    (the learned correction) and, when the cosine branch is the reranker's own fine-tuned backbone
    (``prior_trainable``), the SentenceTransformer files of that backbone (pooling + normalize) in the same
    directory; ``medlab_reranker.json`` states the formula and the scale; the README says how to add them up."""
    if str(objective.get("prior") or "none") != "cosine":
        return []
    scale, pooling = float(objective.get("prior_scale", 20.0)), str(objective.get("prior_pooling") or "mean")
    trainable, learned = bool(objective.get("prior_trainable", True)), bool(objective.get("prior_learn_scale"))
    _write(out_dir / PRIOR_FILE, {"score": "prior_scale * cos(E(query), E(document)) + cross_encoder(query, document)",
                                  "prior_scale": None if learned else scale, "pooling": pooling,
                                  "bi_encoder": "this directory (SentenceTransformer)" if trainable else
                                  "the run's base model, untrained (objective.prior_trainable=false)"})
    notes = [f"this reranker scores `{scale:g} * cos(E(q), E(d)) + CrossEncoder(q, d)` (`objective.prior=cosine`): "
             "`CrossEncoder(export).predict` returns the learned correction alone, not the reranker's score. Add the "
             "cosine term: " + ("`SentenceTransformer(export)` is E (the reranker's fine-tuned encoder, "
                                f"{pooling} pooling, normalized), so `{scale:g} * (bi.encode(queries) * "
                                "bi.encode(documents)).sum(-1) + CrossEncoder(export).predict(pairs)` is the "
                                "reranker's score." if trainable else
                                "E is the untrained base model of the run (`objective.prior_trainable=false`), which "
                                "this export does not contain: encode with it (sentence-transformers, "
                                f"{pooling} pooling, normalized) and add the scaled cosine.")]
    if learned:
        notes.append("the cosine's scale was learned (`objective.prior_learn_scale=true`) and is not in the exported "
                     "model: read `prior.log_scale` from the run's checkpoint (scale = exp(log_scale)) or score with "
                     "medlab.")
    if trainable:  # the bi-encoder half: the same weights through sentence-transformers' embedding pipeline
        bi_notes = _bi_encoder(model, tokenizer, out_dir, {"pooling": pooling, "normalize": True}, data)
        notes += [n for n in bi_notes if n != _ADAPTER_NOTE]
    return notes


_ADAPTER_NOTE = ("this export is a peft adapter (`adapter_config.json`): sentence-transformers loads it only when its "
                 "`base_model_name_or_path` resolves and peft is installed, and loads a 4-bit (QLoRA) base unquantized, "
                 "so numbers differ from training. Export merged weights (`export.merge_lora=true`: `export_merged/`, "
                 "also a sentence-transformers directory) or load with medlab.")


# ------------------------------------------------------------------------------------------------ helpers
def _write_readme(out_dir: Path, task: str, notes: list[str], data: dict, objective: dict) -> None:
    if task == "retrieval":
        how = ("```python\nfrom sentence_transformers import SentenceTransformer\nmodel = SentenceTransformer(EXPORT_DIR)\n"
               "q = model.encode(queries, prompt_name=\"query\")        # or model.encode_query(queries)\n"
               "d = model.encode(documents, prompt_name=\"document\")   # or model.encode_document(documents)\n```\n")
        what = (f"pooling `{objective.get('pooling', 'mean')}`, normalize `{bool(objective.get('normalize', True))}`, "
                f"max_seq_length {data.get('max_length')}, query prefix {str(data.get('query_prefix') or '')!r}, "
                f"document prefix {str(data.get('doc_prefix') or '')!r}, append EOS `{bool(data.get('append_eos'))}`.")
    else:
        how = ("```python\nfrom sentence_transformers import CrossEncoder\nmodel = CrossEncoder(EXPORT_DIR)\n"
               "scores = model.predict([(query, document), ...])       # the trained logits (no sigmoid)\n```\n")
        what = f"one logit per (query, document) pair, max_length {data.get('max_length')}."
    body = [f"# medlab {task} export\n", f"Trained with {what}\n", how]
    if notes:
        body.append("\n## What sentence-transformers does not reproduce\n")
        body += [f"- {n}\n" for n in notes]
    else:
        body.append("\nsentence-transformers computes exactly what medlab trained (same tokenization, pooling and "
                    "normalization).\n")
    (out_dir / README).write_text("".join(body), encoding="utf-8")
    for n in notes:
        log.warning("export: %s", n)


def _plain(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    from omegaconf import DictConfig, OmegaConf

    if isinstance(cfg, DictConfig):
        return dict(OmegaConf.to_container(cfg, resolve=True))
    return dict(cfg or {})


def _tokenizer_config(out_dir: Path, **values: Any) -> None:
    path = out_dir / "tokenizer_config.json"
    if not path.exists():
        return
    config = json.loads(path.read_text())
    config.update(values)
    _write(path, config)


def _hidden_size(model: Any) -> int:
    config = getattr(model, "config", None)
    for name in ("hidden_size", "d_model", "dim"):
        value = getattr(config, name, None) or getattr(getattr(config, "text_config", None), name, None)
        if value:
            return int(value)
    raise ValueError("cannot tell the export's embedding size from its config")


def _is_vlm(model: Any) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "vision_config", None) is not None


def _is_adapter(out_dir: Path) -> bool:
    return (out_dir / "adapter_config.json").exists()


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"sentence_transformers": "5.0.0", "transformers": transformers.__version__, "pytorch": torch.__version__}


def _write(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
