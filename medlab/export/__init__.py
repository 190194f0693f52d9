"""Export formats (``medlab.contracts.Exporter``): what a run writes for others to load.

``EXPORTERS`` maps ``name`` to an exporter; the runner writes ``hf`` to ``<run>/export`` when
``export.enabled``, ``merged`` to ``<run>/export_merged`` when ``export.merge_lora`` (LoRA/DoRA runs), and every
format of ``export.format`` (``gguf``: ``medlab.export.gguf``; ``bnb4`` / ``bnb8``: ``medlab.export.quantized``),
each checked by ``medlab.export.verify`` into ``<run>/export/report.json``. ``python -m medlab.export`` (this
package's ``__main__``, the command in ``medlab.commands.export``) exports an existing run.
``docs/ADDING.md`` shows how to add a format.
"""

from __future__ import annotations

from medlab.export.formats import EXPORTERS, HFExporter, MergedExporter, format_names, selected_exporters
from medlab.export.gguf import GGUFExporter
from medlab.export.hf import ChatExport, chat_export, export_merged, export_model, is_peft, save_tokenizer

from medlab.export.quantized import BnbExporter

__all__ = ["EXPORTERS", "BnbExporter", "ChatExport", "GGUFExporter", "HFExporter", "MergedExporter", "chat_export",
           "export_merged", "export_model", "format_names", "is_peft", "save_tokenizer", "selected_exporters"]
