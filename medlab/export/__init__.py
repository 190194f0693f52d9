"""Export formats (``medlab.contracts.Exporter``): what a run writes for others to load.

``EXPORTERS`` maps ``name`` to an exporter; the runner writes ``hf`` to ``<run>/export`` when
``export.enabled`` and ``merged`` to ``<run>/export_merged`` when ``export.merge_lora`` (LoRA/DoRA runs).
``docs/ADDING.md`` shows how to add a format.
"""

from __future__ import annotations

from medlab.export.formats import EXPORTERS, HFExporter, MergedExporter, selected_exporters
from medlab.export.hf import ChatExport, chat_export, export_merged, export_model, is_peft, save_tokenizer

__all__ = ["EXPORTERS", "ChatExport", "HFExporter", "MergedExporter", "chat_export", "export_merged", "export_model",
           "is_peft", "save_tokenizer", "selected_exporters"]
