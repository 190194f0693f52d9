"""The models of a comparison and their answers: greedy, batched, in each model's chat format, cached on disk.

A model entry (``compare.models``) is one of

- a **run directory** (``config_resolved.yaml`` inside): its checkpoint (``best`` by its monitor, or
  ``compare.checkpoint``), chat template and system prompt (``data.template`` / ``data.system_prompt``);
- a **Hugging Face model directory** (``config.json`` inside): ``model=local_hf model.path=DIR``, its
  tokenizer's own chat template when it has one, else chatml;
- a **base model** by its config name (``conf/model/NAME.yaml``: ``tiny_llama``, ``smollm2_135m``, ...): the
  training config composed with ``model=NAME adapter=none``, untrained, in that config's template (chatml).

Answers are cached as ``<out>/answers/<label>-<key>.jsonl`` (found by ``key`` whatever the label); ``key``
hashes the model (its path or name, the checkpoint file and its modification time), the question set
(:func:`~.questions.question_set_key`) and the generation settings (template, system prompt, max_new_tokens), so a
rerun with the same three reuses them and a change in any one generates again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medlab.config import ConfigError
from medlab.paths import CONF_DIR

log = logging.getLogger("medlab")
DEFAULT_TEMPLATE = "chatml"


@dataclass(frozen=True)
class ModelSpec:
    """One model to compare: ``kind`` (run | hf | base), ``source`` (the path or config name), ``label`` (its
    name in the report) and ``overrides`` (config overrides for base / HF models)."""

    kind: str
    source: str
    label: str
    overrides: tuple[str, ...] = field(default_factory=tuple)


def _base_models() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def parse_model(entry: Any, label: str | None = None) -> ModelSpec:
    """A ``compare.models`` entry -> ModelSpec; ConfigError when it is neither a run, an HF dir nor a model
    config name."""
    text = str(entry).strip()
    path = Path(text).expanduser()
    if path.is_dir() and (path / "config_resolved.yaml").is_file():
        return ModelSpec("run", str(path.resolve()), label or f"{path.parent.name}/{path.name}")
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSpec("hf", str(path.resolve()), label or path.name,
                         ("model=local_hf", f"model.path={path.resolve()}", "adapter=none"))
    if text in _base_models():
        return ModelSpec("base", text, label or text, (f"model={text}", "adapter=none"))
    raise ConfigError([f"compare.models: {text!r} is not a run directory (config_resolved.yaml), a Hugging Face "
                       f"model directory (config.json) or a model config name ({', '.join(_base_models())})"])


def unique_labels(specs: Sequence[ModelSpec]) -> list[ModelSpec]:
    """The specs with repeated labels made unique (``name``, ``name#2``, ...)."""
    seen: dict[str, int] = {}
    out = []
    for s in specs:
        seen[s.label] = seen.get(s.label, 0) + 1
        out.append(s if seen[s.label] == 1 else ModelSpec(s.kind, s.source, f"{s.label}#{seen[s.label]}",
                                                              s.overrides))
    return out


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:60] or "model"


def chat_settings(cfg: Any, tokenizer: Any = None, template: str | None = None,
                  system_prompt: str | None = None) -> tuple[str, str | None]:
    """``(template, system_prompt)``: the arguments when given; else, when ``tokenizer`` is given (an HF model
    directory) and has a chat template, ``tokenizer``; else the config's ``data.template`` /
    ``data.system_prompt`` (a run: what it trained with), else chatml."""
    data = cfg.get("data") or {}
    if template:
        name = template
    elif tokenizer is not None and getattr(tokenizer, "chat_template", None):
        name = "tokenizer"
    else:
        name = data.get("template") or DEFAULT_TEMPLATE
    return str(name), system_prompt if system_prompt is not None else data.get("system_prompt")


def model_config(spec: ModelSpec, overrides: Sequence[str] = ()):
    """The config ``spec`` loads with (a run's resolved config, or the composed training config)."""
    from medlab.evaluation.runs import load_config

    if spec.kind == "run":
        return load_config(spec.source, list(overrides))
    return load_config(None, [*spec.overrides, *overrides])


def model_identity(spec: ModelSpec, checkpoint: Any) -> dict[str, Any]:
    """What the cache key knows about the weights: the source, and the checkpoint's path + modification time."""
    ident: dict[str, Any] = {"kind": spec.kind, "source": spec.source, "overrides": list(spec.overrides)}
    path = getattr(checkpoint, "path", None)
    if path is not None:
        files = sorted(Path(path).glob("*.safetensors")) or [Path(path)]
        ident["checkpoint"] = str(path)
        ident["mtime"] = max(f.stat().st_mtime_ns for f in files if f.exists())
    elif spec.kind == "hf":
        ident["mtime"] = (Path(spec.source) / "config.json").stat().st_mtime_ns
    return ident


def cache_key(identity: dict, question_key: str, settings: dict) -> str:
    blob = json.dumps({"model": identity, "questions": question_key, "generation": settings}, sort_keys=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def render_prompts(questions: Sequence[Any], tokenizer: Any, template: str, system_prompt: str | None) -> list[str]:
    """Each question as the chat prompt its model answers (system prompt + user turn + generation prompt)."""
    from medlab.data.templates import get_template

    chat = get_template(template, tokenizer)
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [chat.render([*system, {"role": "user", "content": q.question}], add_generation_prompt=True)
            for q in questions]


@torch.no_grad()
def generate_answers(module: Any, prompts: Sequence[str], *, template: str, max_new_tokens: int,
                     batch_size: int = 8, max_prompt_length: int = 1024) -> list[dict[str, Any]]:
    """Greedy answers to ``prompts`` (batches of similar length, left-padded, stopping at the template's end of
    turn): ``[{answer, completion_tokens, truncated}]`` in the prompts' order. Prompts longer than
    ``max_prompt_length`` tokens keep their end."""
    from medlab.data.templates import get_template
    from medlab.data.tokenize import stop_token_ids
    from medlab.evaluation.qa import generation_engine

    tokenizer = module.tokenizer
    engine = generation_engine(module.model, tokenizer, "hf")
    engine.set_stop_tokens(stop_token_ids(get_template(template, tokenizer), tokenizer))
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"][-max_prompt_length:] for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[dict[str, Any] | None] = [None] * len(ids)
    for s in range(0, len(order), batch_size):
        chunk = order[s:s + batch_size]
        ro = engine.generate([ids[i] for i in chunk], num_generations=1, do_sample=False,
                             max_new_tokens=max_new_tokens)
        for j, i in enumerate(chunk):
            out[i] = {"answer": ro.texts[j].strip(), "completion_tokens": int(ro.completion_lengths[j]),
                      "truncated": bool(ro.is_truncated[j])}
    return out  # type: ignore[return-value]


def answers_for(spec: ModelSpec, questions: Sequence[Any], question_key: str, cache_dir: Path, *,
                max_new_tokens: int, batch_size: int, checkpoint: str = "best", template: str | None = None,
                system_prompt: str | None = None, device: str | None = None) -> dict[str, Any]:
    """The answers of ``spec`` to ``questions``, from the cache when its key matches, else generated (the model is
    loaded only then) and cached. Returns ``{label, answers, cached, file, template, system_prompt, checkpoint,
    seconds}``."""
    from medlab.evaluation.runs import choose_checkpoint, load_module

    cfg = model_config(spec)
    run_dir = spec.source if spec.kind == "run" else None
    choice = choose_checkpoint(cfg, run_dir, checkpoint if spec.kind == "run" else None)
    # the template may depend on the tokenizer (model=local_hf), which loads without the weights
    tok = _tokenizer_only(spec) if spec.kind == "hf" and template is None else None
    tmpl, system = chat_settings(cfg, tok, template, system_prompt)
    settings = {"template": tmpl, "system_prompt": system, "max_new_tokens": int(max_new_tokens),
                "decoding": "greedy"}
    key = cache_key(model_identity(spec, choice), question_key, settings)
    file = Path(cache_dir) / f"{slug(spec.label)}-{key}.jsonl"
    if not file.is_file():  # the same model, questions and settings under another label
        file = next(iter(sorted(Path(cache_dir).glob(f"*-{key}.jsonl"))), file)
    info = {"label": spec.label, "kind": spec.kind, "source": spec.source, "file": str(file), "template": tmpl,
            "system_prompt": system, "max_new_tokens": int(max_new_tokens), **choice.as_dict()}
    if file.is_file():
        rows = [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
        if [r["id"] for r in rows] == [q.id for q in questions]:
            log.info("answers of %s: cached in %s", spec.label, file)
            return {**info, "answers": rows, "cached": True, "seconds": 0.0}
    t0 = time.perf_counter()
    cfg, module, choice = load_module(cfg, run_dir, checkpoint=choice, device=device)
    prompts = render_prompts(questions, module.tokenizer, tmpl, system)
    generated = generate_answers(module, prompts, template=tmpl, max_new_tokens=max_new_tokens,
                                 batch_size=batch_size)
    del module
    rows = [{"id": q.id, **g} for q, g in zip(questions, generated)]
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(file)
    seconds = time.perf_counter() - t0
    log.info("answers of %s: %d generated in %.1fs -> %s", spec.label, len(rows), seconds, file)
    return {**info, "answers": rows, "cached": False, "seconds": round(seconds, 2)}


def _tokenizer_only(spec: ModelSpec) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec.source)
