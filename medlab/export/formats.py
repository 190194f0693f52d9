"""The export formats a run can write, each a ``medlab.contracts.Exporter``."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable

from medlab.export.gguf import DEFAULT_QUANT, GGUFExporter
from medlab.export.gguf_mix import DEFAULT_MIX
from medlab.export.hf import ChatExport, export_merged, export_model, is_peft
from medlab.export.merge import merge_into_dequantized, quantized_layers
from medlab.export.quantized import BnbExporter
from medlab.export.sentence_transformers import write_retrieval_files


class HFExporter:
    """Hugging Face format: the full model, or the peft adapter, plus the tokenizer with the run's chat template.
    Loads with ``from_pretrained`` (``AutoPeftModel*`` for adapters). A retrieval run (``objective`` / ``data``: the
    run's configs in the context; the objective's ``eval_task`` is retrieval or rerank) also gets the
    sentence-transformers files (``medlab.export.sentence_transformers``)."""

    name = "hf"
    out_subdir = "export"

    def __init__(self, verify: bool = False) -> None:
        self.verify = verify  # reload and compare (export/report.json): when export.format names it

    def problems(self, cfg: Any) -> list[str]:
        return []

    def export(self, model: Any, tokenizer: Any, out_dir: Path, *, chat: ChatExport | None = None,
               objective: Any = None, data: Any = None, **context: Any) -> Path:
        out = export_model(model, tokenizer, out_dir, chat)
        write_retrieval_files(model, tokenizer, out, objective, data)
        if self.verify and not is_peft(model) and _is_causal_lm(model):
            from transformers import AutoModelForCausalLM

            from medlab.export.verify import REPORT_DIR, compare, size_bytes, write_report

            loaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=next(model.parameters()).dtype)
            loaded.to(next(model.parameters()).device)
            write_report(Path(out).parent / REPORT_DIR, self.name,
                         {"path": str(out), **compare(model, loaded, tokenizer), "size_bytes": size_bytes(out)})
        return out


class MergedExporter:
    """LoRA/DoRA merged into a freshly loaded full-precision base, saved as a plain transformers model. A QLoRA
    adapter merges into its de-quantized 4-bit base weights in the compute dtype (``merge_into_dequantized``), so the
    merged model computes what the adapter model computed. ``verify`` (``export.format`` names it): the max logit
    difference between the merged model and the adapter model goes to ``export/report.json``."""

    name = "merged"
    out_subdir = "export_merged"

    def __init__(self, verify: bool = False) -> None:
        self.verify = verify  # compare the merged model with the adapter model (export/report.json)

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
            Path(out_dir).parent.mkdir(parents=True, exist_ok=True)
            adapter_dir = Path(tempfile.mkdtemp(prefix=".adapter-", dir=Path(out_dir).parent))
            export_model(model, None, adapter_dir)
        if not is_peft(model):
            raise ValueError("the merged export needs a peft (LoRA/DoRA) model")
        if quantized_layers(model):  # QLoRA: merge into the de-quantized 4-bit base, in the compute dtype
            out = export_model(merge_into_dequantized(model, adapter_dir, load_base), tokenizer, out_dir, chat)
        else:
            out = export_merged(adapter_dir, load_base, out_dir, chat)
        write_retrieval_files(model, tokenizer, out, objective, data)
        if self.verify and _is_causal_lm(model):
            from transformers import AutoModelForCausalLM

            from medlab.export.verify import REPORT_DIR, compare, size_bytes, write_report

            device = next(model.parameters()).device
            loaded = AutoModelForCausalLM.from_pretrained(str(out)).to(device)
            # the adapter model (a QLoRA one runs on its 4-bit base) vs. the merged full-precision model
            write_report(Path(out).parent / REPORT_DIR, self.name,
                         {"path": str(out), **compare(model, loaded, tokenizer), "size_bytes": size_bytes(out)})
        return out


def _is_causal_lm(model: Any) -> bool:
    """A model with an LM head (``logits`` over the vocabulary): what the export checks compare."""
    base = model.get_base_model() if is_peft(model) else model
    return type(base).__name__.endswith("ForCausalLM")


class UnknownFormat:
    """An ``export.format`` name no exporter has: reported by config validation, before any work."""

    out_subdir = "export"

    def __init__(self, name: str) -> None:
        self.name = name

    def problems(self, cfg: Any) -> list[str]:
        return [f"export.format={self.name!r} is not an export format; supported: {', '.join(EXPORTERS)}"]

    def export(self, *args: Any, **kwargs: Any) -> Path:
        raise ValueError(self.problems(None)[0])


EXPORTERS: dict[str, Any] = {e.name: e for e in (HFExporter(), MergedExporter(), GGUFExporter(DEFAULT_QUANT),
                                                  BnbExporter("bnb4"), BnbExporter("bnb8"))}


def format_names(value: Any) -> list[str]:
    """``export.format`` as a list of names (a name, a comma-separated string or a list; None = [])."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


def selected_exporters(cfg: Any) -> list[Any]:
    """The exporters a run's ``export`` config selects, in order: ``hf`` (``export.enabled``), ``merged``
    (``export.merge_lora``), then ``export.format``'s names (``hf`` first: ``merged`` merges its adapter).
    ``gguf`` is bound to ``export.quant`` / ``export.gguf_mix`` / ``export.tensor_types``; a format named in ``export.format`` also verifies itself."""
    export = cfg.get("export") or {}
    named = format_names(export.get("format"))
    names = (["hf"] if export.get("enabled") or "hf" in named else []) + (
        ["merged"] if export.get("merge_lora") or "merged" in named else [])
    names += [n for n in dict.fromkeys(named) if n not in ("hf", "merged")]
    out: list[Any] = []
    for n in names:
        if n == "hf":
            out.append(HFExporter(verify="hf" in named))
        elif n == "merged":
            out.append(MergedExporter(verify="merged" in named))
        elif n == "gguf":
            overrides = export.get("tensor_types")
            out.append(GGUFExporter(str(export.get("quant") or DEFAULT_QUANT), str(export.get("gguf_mix") or DEFAULT_MIX),
                                    dict(overrides) if hasattr(overrides, "items") else None))
        elif n in EXPORTERS:
            out.append(EXPORTERS[n])
        else:
            out.append(UnknownFormat(n))
    return out
