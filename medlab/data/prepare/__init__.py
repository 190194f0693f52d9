"""Data preparation (``python -m medlab.prepare``): any input the data sources read -> cleaned, deduplicated rows
in the canonical schema of a task (sft / pretrain / qa / retrieval / preference / toolcall), written as JSONL or
parquet that the matching ``data=`` config reads as it is, plus ``prepare_report.json``.

Modules: `clean` (text steps and PII masking), `dedup` (exact keys, MinHash LSH clusters), `tasks` (the canonical
rows per task, through the format registry; `preference` and `toolcall` hold those tasks' rows and checks),
`inputs` (local files, ``hf://`` datasets), `pipeline` (the streaming steps, the cluster-safe split, the report).
"""

from medlab.data.prepare.pipeline import DEFAULTS, STEPS, prepare, problems, split, table
from medlab.data.prepare.tasks import TASKS

__all__ = ["DEFAULTS", "STEPS", "TASKS", "prepare", "problems", "split", "table"]
