"""Every export checks itself: load the artifact back and compare it with the model it came from.

``compare`` runs both models on the project's held-out sample text (``medlab/assets/sample``: the last lines of
``medical_corpus.txt`` plus Chinese questions from ``qa_mc_val.jsonl``) tokenized by the *source* tokenizer, and
returns the max absolute logit difference and both perplexities; ``write_report`` merges one format's entry
(plus the artifact's size on disk) into ``export/report.json`` of the run.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

REPORT = "report.json"
REPORT_DIR = "export"  # <run>/export/report.json, next to the hf export


def sample_texts(n_en: int = 8, n_zh: int = 4) -> list[str]:
    """Held-out sample text: the last ``n_en`` lines of the sample corpus and ``n_zh`` Chinese val questions."""
    from medlab.paths import ASSETS_DIR

    sample = ASSETS_DIR / "sample"
    lines = [ln for ln in (sample / "medical_corpus.txt").read_text(encoding="utf-8").splitlines() if ln.strip()]
    zh = []
    for line in (sample / "qa_mc_val.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        if row.get("lang") == "zh":
            zh.append(str(row["question"]))
    return lines[-n_en:] + zh[:n_zh]


def _text_tokenizer(tokenizer: Any) -> Any:
    inner = getattr(tokenizer, "tokenizer", None)
    return inner if inner is not None and not hasattr(tokenizer, "encode") else tokenizer


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover
        return torch.device("cpu")


@torch.no_grad()
def _logits(model: Any, ids: list[list[int]]) -> list[torch.Tensor]:
    dev = _device(model)
    out = []
    for seq in ids:
        x = torch.tensor([seq], device=dev)
        out.append(model(input_ids=x).logits[0].float().cpu())
    return out


def _ppl(logits: list[torch.Tensor], ids: list[list[int]]) -> float:
    nll, n = 0.0, 0
    for lg, seq in zip(logits, ids):
        target = torch.tensor(seq[1:])
        nll += float(torch.nn.functional.cross_entropy(lg[:-1], target, reduction="sum"))
        n += len(seq) - 1
    return math.exp(nll / max(n, 1))


def encode(tokenizer: Any, texts: list[str], max_length: int = 128) -> list[list[int]]:
    tok = _text_tokenizer(tokenizer)
    ids = [tok.encode(t, add_special_tokens=False)[:max_length] for t in texts]
    return [s for s in ids if len(s) >= 2]


def compare(source: Any, exported: Any, tokenizer: Any, texts: list[str] | None = None) -> dict[str, float]:
    """Max abs logit difference and perplexities of ``source`` and ``exported`` on the sample text."""
    was = source.training
    source.eval()
    exported.eval()
    ids = encode(tokenizer, texts if texts is not None else sample_texts())
    a, b = _logits(source, ids), _logits(exported, ids)
    if was:
        source.train()
    diff = max(float((x - y).abs().max()) for x, y in zip(a, b))
    ppl_a, ppl_b = _ppl(a, ids), _ppl(b, ids)
    return {"max_abs_logit_diff": diff, "ppl_source": ppl_a, "ppl_export": ppl_b, "ppl_ratio": ppl_b / ppl_a,
            "tokens": sum(len(s) for s in ids)}


def size_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def write_report(report_dir: Path, fmt: str, entry: dict[str, Any]) -> Path:
    """Merge ``{fmt: entry}`` into ``report_dir/report.json``; returns its path."""
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    path = report_dir / REPORT
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[fmt] = entry
    path.write_text(json.dumps(data, indent=2, default=str))
    log.info("export %s verified: %s", fmt, {k: v for k, v in entry.items() if isinstance(v, (int, float))})
    return path
