"""`prepare(settings)`: read -> normalize to the task's rows -> cleaning steps in the configured order -> split ->
write JSONL / parquet + ``prepare_report.json`` (see `medlab.data.prepare`)."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medlab.data.errors import DataError, RowProblem, RowProblems
from medlab.data import registry
from medlab.data.prepare import clean
from medlab.data.prepare import inputs as I
from medlab.data.prepare import tasks as T
from medlab.data.prepare.dedup import NearDuplicates, UnionFind, exact_key

STEPS = ("nfkc", "html", "whitespace", "length", "language", "pii", "exact_dedup", "near_dedup")
LANGUAGES = ("zh", "en")
OUT_TYPES = (".jsonl", ".parquet")
DEDUP_MODES = ("remove", "split_only")
MAX_EXAMPLES = 3
EXAMPLE_CHARS = 200
DEFAULTS: dict[str, Any] = {
    "path": None, "out": None, "task": None, "format": "auto", "fields": {}, "steps": list(STEPS),
    "min_chars": 1, "max_chars": None, "languages": list(LANGUAGES), "language_threshold": 0.5,
    "num_perm": 128, "threshold": 0.8, "dedup_mode": "remove", "val_size": 0, "val_out": None, "seed": 0,
    "progress": True, "keep_fullwidth_cjk": True, "hf_split": "train", "hf_config": None,
    "margin_from_score": False, "margin_scale": 1.0, "max_pairs_per_group": None,
}


def settings_of(settings: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(DEFAULTS)
    out.update({k: v for k, v in dict(settings).items()
                if v is not None or k in ("max_chars", "val_out", "hf_config", "max_pairs_per_group")})
    return out


def problems(settings: Mapping[str, Any]) -> list[str]:
    """Every problem of the settings (and the input paths) at once; empty = fine."""
    s, out = settings_of(settings), []
    paths = []
    if not s["path"]:
        out.append("prepare.path is required: the input file(s) (.jsonl/.json/.csv/.parquet/.txt, a saved dataset "
                   "or hf://NAME)")
    else:
        paths = I.input_list(s["path"])
        out += [f"prepare.path: no such file or directory: {p}" for p in paths if I.missing(p)]
    if not s["out"]:
        out.append("prepare.out is required: the output file (.jsonl or .parquet)")
    elif Path(s["out"]).suffix.lower() not in OUT_TYPES:
        out.append(f"prepare.out={s['out']}: the output must end in {' or '.join(OUT_TYPES)}")
    if s["task"] not in T.TASKS:
        out.append(f"prepare.task={s['task']!r} is not one of {', '.join(T.TASKS)}")
    elif s["format"] not in (None, "auto"):
        why = T.format_problem(s["task"], s["format"])
        if why:
            out.append(why)
    steps = list(s["steps"] or [])
    out += [f"prepare.steps: unknown step {step!r} (known: {', '.join(STEPS)})" for step in steps if step not in STEPS]
    out += [f"prepare.steps: {step!r} is listed twice" for step, n in Counter(steps).items() if n > 1]
    out += [f"prepare.languages: unknown language {x!r} (known: {', '.join(LANGUAGES)})"
            for x in (s["languages"] or []) if x not in LANGUAGES]
    if s["dedup_mode"] not in DEDUP_MODES:
        out.append(f"prepare.dedup_mode={s['dedup_mode']!r} is not one of {', '.join(DEDUP_MODES)}")
    for key, lo, hi in (("threshold", 0.0, 1.0), ("language_threshold", 0.0, 1.0)):
        if not isinstance(s[key], (int, float)) or not lo < float(s[key]) <= hi:
            out.append(f"prepare.{key}={s[key]!r} must be a number in ({lo}, {hi}]")
    mp = s["max_pairs_per_group"]
    if mp is not None and (not isinstance(mp, int) or isinstance(mp, bool) or mp < 1):
        out.append(f"prepare.max_pairs_per_group={mp!r} must be null or an integer >= 1")
    if not isinstance(s["num_perm"], int) or s["num_perm"] < 16:
        out.append(f"prepare.num_perm={s['num_perm']!r} must be an integer >= 16")
    v = s["val_size"]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v < 0 or (isinstance(v, float) and v >= 1):
        out.append(f"prepare.val_size={v!r} must be a fraction in [0, 1) or a row count >= 0")
    if s["max_chars"] is not None and s["max_chars"] < (s["min_chars"] or 0):
        out.append(f"prepare.max_chars={s['max_chars']} is below prepare.min_chars={s['min_chars']}")
    return out


class StepReport:
    def __init__(self, name: str) -> None:
        self.name, self.removed, self.changed, self.examples = name, 0, 0, []
        self.counts: Counter = Counter()

    def remove(self, text: str, why: str = "") -> None:
        self.removed += 1
        if len(self.examples) < MAX_EXAMPLES and self.name != "pii":
            masked, _ = clean.mask_pii(text)  # a removed example never shows personal data
            example = masked[:EXAMPLE_CHARS] + ("..." if len(masked) > EXAMPLE_CHARS else "")
            self.examples.append({"text": example, **({"why": why} if why else {})})

    def as_dict(self) -> dict:
        out = {"step": self.name, "removed": self.removed, "changed": self.changed}
        if self.counts:
            out["counts"] = dict(sorted(self.counts.items()))
        if self.name != "pii":
            out["examples"] = self.examples
        return out


def _progress(rows: Iterator, desc: str, enabled: bool) -> Iterator:
    if not enabled:
        return rows
    from tqdm.auto import tqdm

    return tqdm(rows, desc=desc, unit=" rows", leave=False, mininterval=1.0)


def _read(s: dict, report: StepReport, info: dict) -> Iterator[tuple[int, dict]]:
    """(row id, task row) for every good record of every input; bad ones are counted (``bad_row``). Preference
    judgments are paired per group once their file is read (`_judgment_pairs`)."""
    row_id = 0
    for path in I.input_list(s["path"]):
        records = I.read_input(path, s["hf_split"], s["hf_config"])
        for bad in records.unparsable:
            report.counts[bad.reason] += 1
            report.remove(str(bad.where), bad.message)
        dataset = records.dataset
        rename = T.canonical_names(s["task"], dataset.column_names, s["fields"])
        first = {rename.get(k, k): v for k, v in dataset[0].items()} if len(dataset) else None
        columns = [rename.get(c, c) for c in dataset.column_names]
        fmt = T.choose_format(s["task"], s["format"], columns, first)
        if fmt is None:
            raise DataError(f"{path}: no {s['task']} format fits the columns {dataset.column_names} "
                            f"(set prepare.fields.<canonical>=<column> or prepare.format)")
        info.setdefault("formats", {})[str(path)] = fmt
        info["format"] = fmt
        judged = s["task"] == "preference" and registry.get(fmt).row == "judged"
        pending: list[dict] = []
        for index, record in enumerate(dataset):
            record = {rename.get(k, k): v for k, v in record.items()}
            try:
                row = T.to_row(s["task"], fmt, record)
            except (RowProblem, RowProblems) as problem:
                reasons = [p.reason for p in getattr(problem, "problems", [problem])]
                report.counts.update(reasons)
                report.remove(records.where(index), ", ".join(reasons))
                continue
            info["rows_in"] += 1
            if judged:
                pending.append({**row, "row": index, "source": records.where(index)})
                continue
            if s["task"] == "toolcall":
                report.counts["rows_with_tool_calls" if T.TC.has_calls(row) else "rows_without_tool_calls"] += 1
            yield row_id, {"_fmt": fmt, **row}
            row_id += 1
        if judged:
            for row in _judgment_pairs(pending, s, report):
                yield row_id, {"_fmt": fmt, **row}
                row_id += 1
        info["rows_read"] = info.get("rows_read", 0) + len(dataset) + len(records.unparsable)


def _judgment_pairs(judged: list[dict], s: dict, report: StepReport) -> Iterator[dict]:
    """Every higher-vs-lower pair of documents within a query (`medlab.data.preference_rows.judgment_pairs`), as
    canonical pair rows; the counts (groups, groups without a pair, pairs) go to the read step."""
    from medlab.data.preference_rows import judgment_pairs

    pairs, counts = judgment_pairs(judged, margin_from_score=bool(s["margin_from_score"]),
                                   margin_scale=float(s["margin_scale"]),
                                   max_pairs_per_group=s["max_pairs_per_group"])
    report.counts.update(counts)
    report.counts["pairs_from_judgments"] += len(pairs)
    for pair in pairs:
        try:
            yield T.P.pair_out(pair)
        except (RowProblem, RowProblems) as problem:  # two documents that are the same text
            reasons = [p.reason for p in getattr(problem, "problems", [problem])]
            report.counts.update(reasons)
            report.remove(str(pair.get("source")), ", ".join(reasons))


def _text_step(rows, task: str, fn, report: StepReport):
    for rid, row in rows:
        new = T.map_texts(task, row, fn)
        if new != row:
            report.changed += 1
        yield rid, new


def _pii_step(rows, task: str, report: StepReport):
    for rid, row in rows:
        counts: Counter = Counter()

        def mask(text: str) -> str:
            masked, found = clean.mask_pii(text)
            counts.update(found)
            return masked

        new = T.map_texts(task, row, mask)
        if counts:
            report.changed += 1
            report.counts.update(counts)
        yield rid, new


def _length_step(rows, task: str, s: dict, report: StepReport):
    lo, hi = int(s["min_chars"] or 0), s["max_chars"]
    for rid, row in rows:
        n = len(T.full_text(task, row).strip())
        if n < lo or (hi is not None and n > int(hi)):
            report.counts["too_short" if n < lo else "too_long"] += 1
            report.remove(T.full_text(task, row), f"{n} chars")
            continue
        yield rid, row


def _language_step(rows, task: str, s: dict, report: StepReport):
    keep = set(s["languages"] or LANGUAGES)
    for rid, row in rows:
        text = T.full_text(task, row)
        lang = clean.language_of(text, float(s["language_threshold"]))
        report.counts[lang or "unknown"] += 1
        if lang not in keep:
            report.remove(text, f"language {lang or 'unknown'}")
            continue
        yield rid, row


def _exact_step(rows, task: str, s: dict, report: StepReport, uf: UnionFind):
    seen: dict[bytes, int] = {}
    for rid, row in rows:
        text = T.dedup_text(task, row)
        parts = T.dedup_parts(task, row)
        key = exact_key(text) if len(parts) == 1 else exact_key("\x1f".join(exact_key(p).hex() for p in parts))
        first = seen.setdefault(key, rid)
        if first != rid:
            uf.union(rid, first)
            if s["dedup_mode"] == "remove":
                report.remove(text, "exact duplicate")
                continue
            report.counts["duplicates_kept_together"] += 1
        yield rid, row


def _near_step(rows, task: str, s: dict, report: StepReport, uf: UnionFind):
    """A barrier: every row is indexed, then the rows that joined an earlier row's cluster are dropped (remove)."""
    index = NearDuplicates(num_perm=int(s["num_perm"]), threshold=float(s["threshold"]), uf=uf)
    kept = []
    for rid, row in _progress(rows, "near-dedup", s["progress"]):
        matches = index.add(rid, T.dedup_text(task, row))
        if matches:
            report.counts["rows_in_clusters"] += 1
        kept.append((rid, row, bool(matches)))
    for rid, row, matched in kept:
        if matched and s["dedup_mode"] == "remove" and T.near_removes(task):
            report.remove(T.dedup_text(task, row), "near duplicate")
            continue
        yield rid, row


def _valid_step(rows, task: str, report: StepReport):
    """Rows that cleaning left invalid (e.g. an empty answer) are dropped, counted by reason."""
    for rid, row in rows:
        fmt = row["_fmt"]
        clean_row = {k: v for k, v in row.items() if k != "_fmt"}
        try:
            T.check_row(task, fmt, clean_row)
        except (RowProblem, RowProblems) as problem:
            reasons = [p.reason for p in getattr(problem, "problems", [problem])]
            report.counts.update(reasons)
            report.remove(T.full_text(task, clean_row), ", ".join(reasons))
            continue
        yield rid, clean_row


def _same_prompt_together(rows, task: str, uf: UnionFind):
    """Rows with the same group text (preference: the pairs of one prompt) join one cluster: one side of the split."""
    first: dict[bytes, int] = {}
    for rid, row in rows:
        text = T.group_text(task, {k: v for k, v in row.items() if k != "_fmt"})
        if text is not None:
            uf.union(rid, first.setdefault(exact_key(text), rid))
        yield rid, row


def split(ids: list[int], uf: UnionFind, val_size: float | int, seed: int) -> set[int]:
    """The ids held out for validation: whole duplicate clusters, shuffled by `seed`, up to `val_size` rows
    (a fraction of the rows, or a count)."""
    if not val_size or not ids:
        return set()
    target = round(val_size * len(ids)) if isinstance(val_size, float) else int(val_size)
    target = min(target, len(ids) - 1)
    clusters: dict[int, list[int]] = {}
    for rid in ids:
        clusters.setdefault(uf.find(rid), []).append(rid)
    order = sorted(clusters)
    random.Random(seed).shuffle(order)
    val: set[int] = set()
    for root in order:
        if len(val) >= target:
            break
        members = clusters[root]
        if len(val) + len(members) > target and len(val) > 0 and len(members) > 1:
            continue  # a big cluster that would overshoot: a later, smaller one fills the gap
        val.update(members)
    return val


def write_rows(rows: list[dict], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".parquet":
        from medlab.data.readers import records_to_dataset

        records_to_dataset(rows).to_parquet(str(out))
        return
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(out)


def val_path(s: dict) -> Path:
    if s["val_out"]:
        return Path(s["val_out"])
    out = Path(s["out"])
    return out.with_name(f"{out.stem}_val{out.suffix}")


def prepare(settings: Mapping[str, Any]) -> dict:
    """Run the preparation; returns the report (also written to ``prepare_report.json`` beside the output).
    Raises DataError listing every settings problem (the command turns it into a ConfigError first)."""
    found = problems(settings)
    if found:
        raise DataError(f"{len(found)} problem(s) in the prepare settings:\n" + "\n".join(f"  - {p}" for p in found))
    s, t0 = settings_of(settings), time.perf_counter()
    task = s["task"]
    info: dict[str, Any] = {"rows_in": 0}
    reports = [StepReport("read")]
    uf = UnionFind()
    rows: Iterator = _progress(_read(s, reports[0], info), "read", s["progress"])
    if task == "preference":
        rows = _same_prompt_together(rows, task, uf)
    for name in s["steps"]:
        report = StepReport(name)
        reports.append(report)
        if name in ("nfkc", "html", "whitespace"):
            keep = bool(s["keep_fullwidth_cjk"])
            fn = {"nfkc": lambda text: clean.nfkc(text, keep), "html": clean.strip_markup,
                  "whitespace": clean.squeeze_whitespace}[name]
            rows = _text_step(rows, task, fn, report)
        elif name == "pii":
            rows = _pii_step(rows, task, report)
        elif name == "length":
            rows = _length_step(rows, task, s, report)
        elif name == "language":
            rows = _language_step(rows, task, s, report)
        elif name == "exact_dedup":
            rows = _exact_step(rows, task, s, report, uf)
        else:
            rows = _near_step(rows, task, s, report, uf)
    reports.append(StepReport("valid"))
    kept = list(_valid_step(rows, task, reports[-1]))
    held = split([rid for rid, _ in kept], uf, s["val_size"], int(s["seed"]))
    out = Path(s["out"])
    train = [row for rid, row in kept if rid not in held]
    write_rows(train, out)
    result = {"task": task, "format": info.get("format"), "formats": info.get("formats", {}),
              "inputs": I.input_list(s["path"]), "out": str(out),
              "rows_in": info.get("rows_read", info["rows_in"]), "rows_out": len(kept), "train_rows": len(train),
              "val_rows": len(held), "dedup_mode": s["dedup_mode"],
              "steps": [r.as_dict() for r in reports if r.name != "valid" or r.removed]}
    if held:
        val = [row for rid, row in kept if rid in held]
        write_rows(val, val_path(s))
        result["val_out"] = str(val_path(s))
    result["seconds"] = round(time.perf_counter() - t0, 2)
    report_path = out.parent / "prepare_report.json"
    report_path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    result["report"] = str(report_path)
    return result


def table(result: Mapping[str, Any]) -> str:
    """The report as a printed table: rows in / out, then removed and changed per step."""
    lines = [f"{'step':<14}{'removed':>9}{'changed':>9}  counts", "-" * 60]
    for step in result["steps"]:
        counts = ", ".join(f"{k}={v}" for k, v in step.get("counts", {}).items())
        lines.append(f"{step['step']:<14}{step['removed']:>9}{step['changed']:>9}  {counts}")
    lines.append("-" * 60)
    lines.append(f"rows in {result['rows_in']}, out {result['rows_out']} (train {result['train_rows']}, "
                 f"val {result['val_rows']}) -> {result['out']}")
    return "\n".join(lines)
