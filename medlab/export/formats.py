"""The export formats a run can write, each a ``medlab.contracts.Exporter``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from medlab.export.hf import ChatExport, export_merged, export_model, is_peft
from medlab.export.sentence_transformers import write_retrieval_files


class HFExporter:
    """Hugging Face format: the full model, or the peft adapter, plus the tokenizer with the run's chat template.
    Loads with ``from_pretrained`` (``AutoPeftModel*`` for adapters). A retrieval run (``objective`` / ``data``: the
    run's configs in the context; the objective's ``eval_task`` is retrieval or rerank) also gets the
    sentence-transformers files (``medlab.export.sentence_transformers``)."""

    name = "hf"
    out_subdir = "export"

    def problems(self, cfg: Any) -> list[str]:
        return []

    def export(self, model: Any, tokenizer: Any, out_dir: Path, *, chat: ChatExport | None = None,
               objective: Any = None, data: Any = None, **context: Any) -> Path:
        out = export_model(model, tokenizer, out_dir, chat)
        write_retrieval_files(model, tokenizer, out, objective, data)
        return out


class MergedExporter:
    """LoRA/DoRA merged into a freshly loaded full-precision base (a QLoRA adapter merges into de-quantized
    weights), saved as a plain transformers model."""

    name = "merged"
    out_subdir = "export_merged"

    def problems(self, cfg: Any) -> list[str]:
        kind = cfg.adapter.get("kind") if cfg.get("adapter") is not None else None
        if kind not in ("lora", "dora"):
            return [f"export.merge_lora=true needs a LoRA/DoRA adapter (adapter.kind={kind!r} has nothing to merge)"]
        return []

    def export(self, model: Any, tokenizer: Any, out_dir: Path, *, chat: ChatExport | None = None,
               load_base: Callable[[], tuple[Any, Any]] | None = None, adapter_dir: Path | None = None,
               objective: Any = None, data: Any = None, **context: Any) -> Path:
        if load_base is None:
            raise ValueError("the merged export needs load_base (a callable returning the base model and tokenizer)")
        if adapter_dir is None:  # no hf export of this run to merge from: write the adapter first
            adapter_dir = Path(tempfile.mkdtemp(prefix=".adapter-", dir=Path(out_dir).parent))
            export_model(model, None, adapter_dir)
        if not is_peft(model):
            raise ValueError("the merged export needs a peft (LoRA/DoRA) model")
        out = export_merged(adapter_dir, load_base, out_dir, chat)
        write_retrieval_files(model, tokenizer, out, objective, data)
        return out


EXPORTERS: dict[str, Any] = {e.name: e for e in (HFExporter(), MergedExporter())}


def selected_exporters(cfg: Any) -> list[Any]:
    """The exporters a run's ``export`` config selects, in order (``hf`` first: ``merged`` merges its adapter)."""
    export = cfg.get("export") or {}
    names = (["hf"] if export.get("enabled") else []) + (["merged"] if export.get("merge_lora") else [])
    return [EXPORTERS[n] for n in names]
