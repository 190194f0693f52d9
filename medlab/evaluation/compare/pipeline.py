"""A whole comparison: questions -> answers (cached) -> per-answer scores -> statistics -> plots and report.

    summary = compare_models({"models": ["tiny_llama", "outputs/runs/sft/<run>"], "out": "cmp", "limit": 20})

``settings`` are the ``compare.*`` options (``conf/commands/compare.yaml`` documents each); the output directory
gets ``answers/`` (the cache), ``scores.jsonl`` (one row per model x question: the answer, every dimension score,
the safety flags and readability statistics), ``summary.json``, ``radar.png`` ``bars.png`` ``box.png``,
``report.md`` and ``report.html``. Problems with the settings are all reported at once (ConfigError) before any
model loads; problems with the question file in one DataError.
"""

from __future__ import annotations

import gc
import json
import logging
import math
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medlab.config import ConfigError
from medlab.evaluation.compare import dimensions as D
from medlab.evaluation.compare.answers import answers_for, parse_model, unique_labels
from medlab.evaluation.compare.questions import DEFAULT_PATH, load_questions, question_set_key
from medlab.evaluation.compare.safety import safety
from medlab.evaluation.compare.summary import summarize
from medlab.evaluation.runs import select_checkpoint

log = logging.getLogger("medlab")
DEFAULTS: dict[str, Any] = {
    "models": [], "labels": None, "path": None, "fields": {}, "limit": None, "out": None, "checkpoint": "best",
    "max_new_tokens": 128, "batch_size": 8, "template": None, "system_prompt": None, "device": None,
    "dimensions": list(D.DIMENSIONS), "relevance": {"model": "minilm", "batch_size": 32},
    "llm_judge": {"model": None, "max_new_tokens": 48, "template": None},
    "bootstrap": {"n_resamples": 2000, "confidence": 0.95, "seed": 0}, "alpha": 0.05, "plots": True,
    "examples": 3, "command": None,
}
OFF = (None, "", "none", "null", False)


def with_defaults(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    out = {**DEFAULTS, **{k: v for k, v in dict(settings or {}).items()}}
    for k in ("relevance", "llm_judge", "bootstrap"):
        out[k] = {**DEFAULTS[k], **dict(out.get(k) or {})}
    return out


def settings_problems(settings: Mapping[str, Any]) -> tuple[list[Any], list[str]]:
    """``(model specs, problems)`` of the ``compare.*`` settings (every problem, nothing loaded)."""
    s, problems, specs = with_defaults(settings), [], []
    models = list(s["models"] or [])
    if len(models) < 2:
        problems.append("compare.models needs 2 or more models: 'compare.models=[RUN_DIR,tiny_llama]' (run "
                        "directories, Hugging Face model directories or model config names)")
    labels = list(s["labels"] or [])
    if labels and len(labels) != len(models):
        problems.append(f"compare.labels has {len(labels)} names for {len(models)} models")
    for i, m in enumerate(models):
        try:
            specs.append(parse_model(m, labels[i] if i < len(labels) else None))
            if specs[-1].kind == "run":  # a run without a usable checkpoint, before any model loads
                select_checkpoint(specs[-1].source, s["checkpoint"])
        except ConfigError as e:
            problems.extend(f"compare.models: {p}" if not p.startswith("compare.") else p for p in e.problems)
    unknown = [d for d in s["dimensions"] or [] if d not in D.DIMENSIONS]
    if unknown:
        problems.append(f"compare.dimensions: unknown {unknown}; choose from {', '.join(D.DIMENSIONS)} "
                        "(llm_judge adds its own with compare.llm_judge.model)")
    if not s["dimensions"] and s["llm_judge"]["model"] in OFF:
        problems.append("compare.dimensions is empty and no llm_judge: nothing to score")
    if not isinstance(s["examples"], int) or s["examples"] < 0:
        problems.append(f"compare.examples={s['examples']!r}: a count (0 = no example answers in the report)")
    for key in ("limit", "max_new_tokens", "batch_size"):
        v = s[key]
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            problems.append(f"compare.{key}={v!r}: a positive integer")
    if s["path"] and not Path(str(s["path"])).expanduser().exists():
        problems.append(f"compare.path={s['path']}: no such file")
    if not 0 < float(s["bootstrap"]["confidence"]) < 1:
        problems.append(f"compare.bootstrap.confidence={s['bootstrap']['confidence']}: between 0 and 1")
    if s["llm_judge"]["model"] not in OFF:
        try:
            parse_model(s["llm_judge"]["model"], "judge")
        except ConfigError as e:
            problems.extend(f"compare.llm_judge.model: {p}" for p in e.problems)
    return unique_labels(specs), problems


def score_answer(q: Any, answer: str, dims: list[str]) -> dict[str, Any]:
    """Every dimension except relevance (it needs embeddings) for one answer, plus the safety flags and the
    readability statistics."""
    row: dict[str, Any] = {}
    if "accuracy" in dims:
        row["accuracy"] = D.accuracy(answer, q.reference, options=q.options, answer_letter=q.answer)
    if "completeness" in dims:
        row["completeness"] = D.completeness(answer, q.reference)
    if "readability" in dims:
        row["readability"] = D.readability(answer)
        row["readability_stats"] = D.readability_stats(answer)
    if "safety" in dims:
        result = safety(answer, q.question)
        row["safety"], row["safety_flags"] = result.score, list(result.flags)
    return row


def _free() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def compare_models(settings: Mapping[str, Any], out: str | Path | None = None) -> dict[str, Any]:
    """Run the comparison of the module doc; returns the summary (also written to ``summary.json``)."""
    s = with_defaults(settings)
    specs, problems = settings_problems(s)
    out = out or s["out"]
    if not out:
        problems.append("compare.out is required: the directory for the report (and the answer cache)")
    if problems:
        raise ConfigError(problems)
    if s["plots"]:
        from medlab.evaluation.compare.plots import require_matplotlib

        require_matplotlib()  # before any model loads
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    questions = load_questions(s["path"], fields=dict(s["fields"] or {}), limit=s["limit"])
    qkey = question_set_key(questions)
    dims = [d for d in (s["dimensions"] or []) if d != "relevance" or s["relevance"]["model"] not in OFF]

    runs = []
    for spec in specs:
        runs.append(answers_for(spec, questions, qkey, out / "answers", max_new_tokens=s["max_new_tokens"],
                                batch_size=s["batch_size"], checkpoint=s["checkpoint"], template=s["template"],
                                system_prompt=s["system_prompt"], device=s["device"]))
        _free()
    rows = []
    for run in runs:
        for q, a in zip(questions, run["answers"]):
            rows.append({"model": run["label"], "id": q.id, "lang": q.lang, "kind": q.kind, "question": q.question,
                         "reference": q.reference, "answer": a["answer"], "completion_tokens": a["completion_tokens"],
                         "truncated": a["truncated"], **score_answer(q, a["answer"], dims)})
    if "relevance" in dims:
        _add_relevance(rows, questions, s)
    judge_dims = _add_judge(rows, s) if s["llm_judge"]["model"] not in OFF else []
    all_dims = dims + judge_dims
    labels = [r["label"] for r in runs]
    summary = build_summary(s, runs, questions, rows, labels, all_dims)
    summary = json_safe(summary)
    _write(out, rows, summary, questions[:int(s["examples"])], labels, all_dims, bool(s["plots"]))
    return summary


def build_summary(s: Mapping[str, Any], runs: list[dict], questions: list, rows: list[dict], labels: list[str],
                  dims: list[str]) -> dict[str, Any]:
    """summary.json: the models (how their answers were made), the question set, the statistics, safety flag
    counts, judge parse failures and the settings."""
    boot = s["bootstrap"]
    stats = summarize(rows, labels, dims, confidence=float(boot["confidence"]),
                      n_resamples=int(boot["n_resamples"]), seed=int(boot["seed"]), alpha=float(s["alpha"]))
    summary = {
        "models": [{k: v for k, v in r.items() if k != "answers"}
                   | {"mean_completion_tokens": sum(a["completion_tokens"] for a in r["answers"]) / len(questions)}
                   for r in runs],
        "questions": {"path": str(s["path"] or DEFAULT_PATH), "count": len(questions),
                      "key": question_set_key(questions), "kinds": dict(Counter(q.kind for q in questions)),
                      "langs": dict(Counter(q.lang for q in questions))},
        "dimensions": dims, "stats": stats,
        "safety_flags": {m: dict(Counter(f for r in rows if r["model"] == m for f in r.get("safety_flags", [])))
                         for m in labels},
        "settings": {k: v for k, v in s.items() if k != "command"}, "command": s["command"],
    }
    judge_dims = [d for d in dims if d.startswith("judge_")]
    if judge_dims:  # answers whose judge reply gave no score for a criterion
        summary["judge_parse_failures"] = {m: {d: sum(r["model"] == m and r.get(d) is None for r in rows)
                                               for d in judge_dims} for m in labels}
    return summary


def json_safe(value: Any) -> Any:
    """``value`` with NaN / inf floats as None and tuples as lists (strict JSON)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _add_relevance(rows: list[dict], questions: list, s: Mapping[str, Any]) -> None:
    from medlab.evaluation.compare.embedding import cosine_rows, embed_texts, load_embedder

    module = load_embedder(str(s["relevance"]["model"]), s["device"])
    bs = int(s["relevance"]["batch_size"])
    q_emb = embed_texts(module, [q.question for q in questions], batch_size=bs)
    a_emb = embed_texts(module, [r["answer"] for r in rows], batch_size=bs)
    index = {q.id: i for i, q in enumerate(questions)}
    cos = cosine_rows(q_emb[[index[r["id"]] for r in rows]], a_emb)
    for r, c in zip(rows, cos):
        r["relevance"] = D.relevance(c, r["answer"])
        r["relevance_cosine"] = c
    del module
    _free()


def _add_judge(rows: list[dict], s: Mapping[str, Any]) -> list[str]:
    from medlab.evaluation.compare.answers import chat_settings, model_config
    from medlab.evaluation.compare.judge import CRITERIA, judge_answers
    from medlab.evaluation.runs import load_module

    spec = parse_model(s["llm_judge"]["model"], "judge")
    cfg = model_config(spec)
    run_dir = spec.source if spec.kind == "run" else None
    cfg, module, _ = load_module(cfg, run_dir, checkpoint="best" if run_dir else None, device=s["device"])
    template, _ = chat_settings(cfg, module.tokenizer if spec.kind == "hf" else None, s["llm_judge"]["template"])
    scores = judge_answers(module, template, [(r["question"], r["reference"], r["answer"]) for r in rows],
                           max_new_tokens=int(s["llm_judge"]["max_new_tokens"]), batch_size=int(s["batch_size"]))
    for r, sc in zip(rows, scores):
        r.update(sc)
    del module
    _free()
    return [f"judge_{c}" for c in CRITERIA]


def _write(out: Path, rows: list[dict], summary: dict, questions: list, labels: list[str], dims: list[str],
           plots: bool) -> None:
    from medlab.evaluation.compare import report
    from medlab.evaluation.compare.summary import scores_by_model

    with (out / "scores.jsonl").open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(json_safe(r), ensure_ascii=False, allow_nan=False) + "\n")
    files: dict[str, Path] = {}
    if plots:
        from medlab.evaluation.compare import plots as P

        means = {m: {d: summary["stats"]["means"][m][d]["mean"] for d in dims} for m in labels}
        cis = {m: {d: (summary["stats"]["means"][m][d]["ci_low"], summary["stats"]["means"][m][d]["ci_high"])
                   for d in dims} for m in labels}
        by = scores_by_model(rows, labels, dims)
        files = {"radar": P.radar(means, dims, out / "radar.png"),
                 "bars": P.bars(means, cis, dims, out / "bars.png"),
                 "box": P.boxes({m: {d: list(by[m][d].values()) for d in dims} for m in labels}, dims,
                                out / "box.png")}
    summary["files"] = {"scores": "scores.jsonl", "report_md": "report.md", "report_html": "report.html",
                        **{k: p.name for k, p in files.items()}}
    examples = [{"question": q.question, "reference": q.reference,
                 "answers": [r for r in rows if r["id"] == q.id]} for q in questions]
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False, default=str,
                                                 allow_nan=False), encoding="utf-8")
    (out / "report.md").write_text(report.markdown(summary, {k: p.name for k, p in files.items()}, examples),
                                   encoding="utf-8")
    (out / "report.html").write_text(report.html_report(summary, files, examples), encoding="utf-8")
    log.info("comparison report -> %s", out / "report.html")
