"""``python -m medlab.export``: write a run's model in other formats, each reloaded and compared with the run.

    python -m medlab.export run_dir=outputs/runs/sft/<run> export.format=gguf export.quant=q8_0
    python -m medlab.export run_dir=RUN export.format=[merged,gguf,bnb4]
    python -m medlab.export run_dir=RUN export.format=gguf export.checkpoint=latest
    python -m medlab.export run_dir=none model=smollm2_135m export.format=gguf export.quant=q4_0   # no training

A Hydra app (``medlab.commands.app``; options in ``conf/commands/export.yaml``). Formats
(``medlab.export.EXPORTERS``): ``hf``, ``merged`` (LoRA/DoRA merged into a full-precision base), ``gguf``
(``export.quant``: f16 bf16 q8_0 q4_0 q4_1 q5_0 q5_1; llama / qwen2 families), ``bnb4`` / ``bnb8``
(bitsandbytes ``save_pretrained`` directories). Each goes to its folder of the run dir (``export``,
``export_merged``, ``export_gguf``, ``export_bnb4``, ``export_bnb8``) and is checked by loading it back:
``export/report.json`` holds, per format, the max abs logit difference from the run's model, the perplexity of
both on held-out sample text and the size on disk. An unsupported format, architecture or quant type is a
ConfigError before any model loads. The weights are the run's best checkpoint (``export.checkpoint``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medlab.commands.app import output_dir, require_run_dir, run_command
from medlab.config import ConfigError
from medlab.evaluation import choose_checkpoint, load_module, no_run

log = logging.getLogger("medlab")
COMMAND = "export"


def export_problems(cfg: DictConfig) -> tuple[list[Any], list[str]]:
    """The exporters ``export.format`` names and the problems of the config for them (empty: fine)."""
    from medlab.export import format_names, selected_exporters

    ex = cfg.get("export") or {}
    names = format_names(ex.get("format"))
    if not names:
        return [], ["export.format is required: one or more of hf, merged, gguf, bnb4, bnb8 "
                    "(export.format=gguf or export.format=[merged,gguf])"]
    exporters = selected_exporters({"export": {"format": names, "quant": ex.get("quant")}})
    return exporters, [p for e in exporters for p in e.problems(cfg)]


def export(cfg: DictConfig, run_dir: Any) -> dict[str, Any]:
    """The command's body: every format of ``export.format`` into the run dir; returns ``export/report.json``."""
    from hydra.utils import instantiate

    from medlab.export import chat_export
    from medlab.export.verify import REPORT, REPORT_DIR

    run_dir = require_run_dir(COMMAND, run_dir)
    exporters, problems = export_problems(cfg)
    if problems:
        raise ConfigError(problems)
    choice = choose_checkpoint(cfg, run_dir, (cfg.get("export") or {}).get("checkpoint", "best"))
    cfg, module, choice = load_module(cfg, run_dir, checkpoint=choice)
    model, tokenizer = module.model, module.tokenizer
    root = output_dir() if no_run(run_dir) else Path(run_dir)
    context: dict[str, Any] = {"chat": chat_export(cfg.data, tokenizer), "load_base": lambda: instantiate(cfg.model)(),
                               "objective": cfg.objective, "data": cfg.data}
    written: dict[str, str] = {}
    for exporter in exporters:
        if exporter.name == "merged" and "hf" in written:
            context["adapter_dir"] = Path(written["hf"])
        written[exporter.name] = str(exporter.export(model, tokenizer, root / exporter.out_subdir, **context))
    report_path = root / REPORT_DIR / REPORT
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    out = {"weights": str(choice), **choice.as_dict(), "written": written, "report": str(report_path),
           "formats": {k: report.get(k) for k in written}}
    print(json.dumps(out, default=str), flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """``python -m medlab.export *argv`` in-process; raises ConfigError for the user's mistakes."""
    return run_command(COMMAND, argv, export)


def cli() -> None:
    from medlab.commands.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
