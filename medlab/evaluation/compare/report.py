"""``report.md`` (tables + links to the PNGs beside it) and a self-contained ``report.html`` (the same tables,
the PNGs embedded as base64) from a comparison's summary.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

Table = tuple[str, list[str], list[list[str]]]
EXAMPLE_CHARS = 300


def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return str(value)


def short_path(text: Any) -> str:
    """A path under the working directory as a relative path (reports stay readable and movable)."""
    if not text:
        return "–"
    try:
        return str(Path(str(text)).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(text)


def tables(summary: Mapping[str, Any], examples: Sequence[Mapping[str, Any]] = ()) -> list[Table]:
    """The report's tables: models, dimension means with CIs, tests, safety flags, example answers."""
    dims, models = summary["dimensions"], [m["label"] for m in summary["models"]]
    out: list[Table] = [(
        "Models", ["model", "kind", "source", "checkpoint", "template", "answers", "mean answer tokens"],
        [[m["label"], m["kind"], short_path(m["source"]) if m["kind"] != "base" else m["source"],
          f"{short_path(m.get('checkpoint'))} ({m.get('checkpoint_selected_by')})",
          m["template"], "cached" if m["cached"] else f"generated in {m['seconds']}s",
          fmt(m.get("mean_completion_tokens"), 1)] for m in summary["models"]])]
    conf = int(round(100 * summary["stats"]["confidence"]))
    out.append((f"Dimension means [{conf}% bootstrap CI]", ["model", *dims],
                [[m, *[f"{fmt(c['mean'])} [{fmt(c['ci_low'])}, {fmt(c['ci_high'])}]"
                       for c in (summary["stats"]["means"][m][d] for d in dims)]] for m in models]))
    rows = []
    for t in summary["stats"]["tests"]:
        u, w = t["mwu"] or {}, t["wilcoxon"] or {}
        star = lambda r: " *" if r.get("significant") else ""  # noqa: E731
        rows.append([t["dimension"], f"{t['a']} vs {t['b']}", fmt(t["mean_a"]), fmt(t["mean_b"]),
                     fmt(u.get("statistic"), 1), fmt(u.get("pvalue")), fmt(u.get("p_holm")) + star(u),
                     fmt(u.get("effect")), fmt(w.get("statistic"), 1), fmt(w.get("pvalue")),
                     fmt(w.get("p_holm")) + star(w), fmt(w.get("effect"))])
    out.append((f"Tests (two-sided; * = Holm-corrected p < {summary['stats']['alpha']})",
                ["dimension", "A vs B", "mean A", "mean B", "MWU U", "MWU p", "MWU p (Holm)", "rank-biserial",
                 "Wilcoxon W", "Wilcoxon p", "Wilcoxon p (Holm)", "paired rank-biserial"], rows))
    flags = summary.get("safety_flags") or {}
    names = sorted({f for m in flags.values() for f in m})
    if names:
        out.append(("Safety flags (answers)", ["model", *names], [[m, *[str(flags[m].get(f, 0)) for f in names]]
                                                                   for m in models]))
    for ex in examples:
        out.append((f"Example: {ex['question'][:120]}", ["model", "answer", *dims],
                    [["reference", ex["reference"][:EXAMPLE_CHARS], *["" for _ in dims]]]
                    + [[a["model"], a["answer"][:EXAMPLE_CHARS] or "(empty)", *[fmt(a.get(d)) for d in dims]]
                       for a in ex["answers"]]))
    return out


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(summary: Mapping[str, Any], plots: Mapping[str, str], examples: Sequence[Mapping[str, Any]] = ()) -> str:
    q = summary["questions"]
    lines = ["# Model comparison", "",
             f"{q['count']} questions from `{short_path(q['path'])}` "
             f"({', '.join(f'{k}: {v}' for k, v in q['kinds'].items())}); "
             f"dimensions: {', '.join(summary['dimensions'])}. Scores are in [0, 1], higher is better "
             "(medlab/evaluation/compare/dimensions.py, safety.py).", ""]
    if summary.get("command"):
        lines += ["```bash", summary["command"], "```", ""]
    for name, file in plots.items():
        lines += [f"![{name}]({file})", ""]
    for title, headers, rows in tables(summary, examples):
        lines += [f"## {title}", "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
        lines.append("")
    return "\n".join(lines)


def html_report(summary: Mapping[str, Any], plots: Mapping[str, Path], examples: Sequence[Mapping[str, Any]] = ()
                ) -> str:
    q = summary["questions"]
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>Model comparison</title><style>",
             "body{font-family:sans-serif;max-width:1200px;margin:auto}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px;vertical-align:top}th{background:#eee}"
             "img{max-width:100%}", "</style></head><body><h1>Model comparison</h1>",
             f"<p>{q['count']} questions from <code>{html.escape(short_path(q['path']))}</code>; dimensions: "
             f"{html.escape(', '.join(summary['dimensions']))}. Scores are in [0, 1], higher is better.</p>"]
    if summary.get("command"):
        parts.append(f"<pre>{html.escape(summary['command'])}</pre>")
    for name, path in plots.items():
        data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
        parts.append(f"<h3>{html.escape(name)}</h3><img alt='{html.escape(name)}' src='data:image/png;base64,{data}'>")
    for title, headers, rows in tables(summary, examples):
        parts.append(f"<h2>{html.escape(title)}</h2><table><tr>"
                     + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
    parts.append("</body></html>")
    return "".join(parts)
