"""Retrieval rows -> training/evaluation examples (pure functions, no tokenizer).

Canonical fields (a data config maps user columns onto them with ``data.fields``):
``query``, ``positive`` (a string, or a list of strings for groups), ``negatives`` (list),
``doc`` + ``label`` and/or ``score`` (triples: one judged query-document pair per row),
``group`` (query id; rows of one query share it), ``image`` (the document's image path),
``query_image`` (the query's image path).

Input formats, detected from the mapped columns:

- ``pairs``:   query, positive[, negatives]          one relevant document per row
- ``groups``:  query, positive: [..][, negatives]   several relevant documents per row
- ``triples``: query, doc, label|score[, group]     judged pairs (graded with ``score``)

Examples produced:

- bi-encoder: ``{query, positive, negatives, image, query_image, row}``, one per (query, positive);
  triples become pairs from their positive rows, with the same query's negative rows as hard negatives.
- cross-encoder pointwise: ``{query, doc, label, grade, group, image, row}``, one per judged pair.
- cross-encoder groups: ``{query, docs: [positive, negatives...], group, row}`` of a fixed size.

Every problem is reported with the file, where in it (``FILE line N`` for line-oriented files such as
``.jsonl``/``.csv``, ``FILE row N`` for records of ``.json`` lists, parquet or saved datasets; both 1-based,
see `medlab.data.errors`) and the field (the source column).

A ``fields`` value of null means "not mapped": the canonical name itself, then the common aliases, are used.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medlab.data.errors import BadRow, record_location

CANONICAL = ("query", "positive", "negatives", "doc", "label", "score", "group", "image", "query_image")
FORMATS = ("pairs", "groups", "triples")
ALIASES = {"query": ("question", "anchor", "sentence1"), "positive": ("pos", "answer", "sentence2"),
           "negatives": ("negative", "neg", "hard_negatives"), "doc": ("document", "passage", "text"),
           "group": ("qid", "query_id"), "score": ("judgment", "relevance")}


def resolve_fields(columns: Sequence[str], fields: Mapping[str, str] | None) -> dict[str, str]:
    """canonical name -> source column: explicit ``fields`` first, then the same name, then common aliases
    (a null ``fields`` value is not a mapping)."""
    fields = dict(fields or {})
    out: dict[str, str] = {}
    for name in CANONICAL:
        if fields.get(name):
            out[name] = fields[name]
        elif name in columns:
            out[name] = name
        else:
            alias = next((a for a in ALIASES.get(name, ()) if a in columns and a not in fields.values()), None)
            if alias:
                out[name] = alias
    # `answer` is the positive for pairs, the doc for triples (rows with a label or score): never both.
    judged = any(k in out for k in ("label", "score"))
    if judged and "positive" in out and not fields.get("positive") and out["positive"] in ALIASES["positive"]:
        out.setdefault("doc", out["positive"])
        del out["positive"]
    if "positive" in out and out.get("doc") in ALIASES["doc"] and not fields.get("doc"):
        del out["doc"]
    # One column cannot be both (e.g. a triples config layered over a pairs one): judgments make it the doc.
    if "positive" in out and out["positive"] == out.get("doc"):
        del out["positive" if judged else "doc"]
    return out


def field_problems(columns: Sequence[str], fields: Mapping[str, str] | None) -> list[str]:
    out = []
    for name, col in (fields or {}).items():
        if name not in CANONICAL:
            out.append(f"data.fields.{name}: unknown field (known: {', '.join(CANONICAL)})")
        elif col and col not in columns:
            out.append(f"data.fields.{name}={col!r}: no such column (columns: {', '.join(columns)})")
    return out


def detect_format(mapped: Mapping[str, str], first_row: Mapping[str, Any] | None = None) -> str | None:
    if "query" not in mapped:
        return None
    if "positive" in mapped:
        value = (first_row or {}).get(mapped["positive"])
        return "groups" if isinstance(value, list) else "pairs"
    if "image" in mapped and "doc" not in mapped:
        return "pairs"  # the document is the image (text -> image retrieval)
    if "doc" in mapped and ("label" in mapped or "score" in mapped):
        return "triples"
    return None


def doc_key(text: str, image: str | None = None) -> int:
    """A stable 63-bit id for a document (its text and image), equal across processes and runs."""
    h = hashlib.blake2b(f"{text}\x00{image or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


class RowErrors:
    """Collects bad rows (where, field, why) so all of them are reported at once, or counted when skipped."""

    def __init__(self) -> None:
        self.bad: list[BadRow] = []
        self.counts: dict[str, int] = defaultdict(int)

    @property
    def items(self) -> list[str]:
        return [str(b) for b in self.bad]

    def add(self, where: str, field: str | None, why: str, reason: str) -> None:
        """One bad row at ``where`` (``"FILE line N"`` / ``"FILE row N"``, see `medlab.data.errors.located`)."""
        self.bad.append(BadRow(where, field, why, reason))
        self.counts[reason] += 1

    def extend(self, bad: Sequence[BadRow]) -> None:
        for b in bad:
            self.add(b.where, b.field, b.message, b.reason)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value).strip() if not isinstance(value, (list, dict)) else None


def _image(value: Any, image_root: str | None) -> str | None:
    if value in (None, ""):
        return None
    p = Path(str(value))
    return str(p if p.is_absolute() or not image_root else Path(image_root) / p)


def normalize_rows(records: Sequence[Mapping[str, Any]], mapped: Mapping[str, str], fmt: str, *, path: str,
                   errors: RowErrors, score_range: Sequence[float] | None = None, label_threshold: float | None = None,
                   image_root: str | None = None, check_images: bool = True,
                   numbers: Sequence[int] | None = None, unit: str = "line") -> list[dict]:
    """Source records -> judged units ``{query, docs: [(text, image, label, grade)], group, query_image, row}``.

    ``label`` is in [0, 1] (1 = relevant); ``grade`` >= 0 is the NDCG gain (``score - score_range[0]``, or the
    label). A score becomes a label by ``score >= label_threshold``. Bad rows are recorded in ``errors``, named
    ``path line N`` / ``path row N`` from ``numbers`` (each record's 1-based position in the file, in ``unit``s:
    ``readers.FileRecords``) or else ``path row N`` (N = index + 1).
    ``row`` of a unit is the record's 0-based index in ``records``.
    """
    out = []
    get = {name: mapped.get(name) for name in CANONICAL}
    lo, hi = (float(score_range[0]), float(score_range[1])) if score_range else (None, None)
    for i, rec in enumerate(records):
        row_errors = len(errors.bad)
        where = record_location(path, i, numbers, unit)
        query = _text(rec.get(get["query"])) if get["query"] else None
        if not query:
            errors.add(where, get["query"] or "query", "empty or missing query text", "empty_query")
            continue
        q_image = _image(rec.get(get["query_image"]), image_root) if get["query_image"] else None
        image = _image(rec.get(get["image"]), image_root) if get["image"] else None
        for name, img in (("query_image", q_image), ("image", image)):
            if img and check_images and not Path(img).is_file():
                errors.add(where, get[name], f"image file not found: {img}", "missing_image")
        docs: list[tuple[str, str | None, float, float]] = []
        if fmt in ("pairs", "groups"):
            pos = rec.get(get["positive"])
            positives = pos if isinstance(pos, list) else [pos]
            positives = [t for t in (_text(p) for p in positives) if t]
            if not positives and not image:
                errors.add(where, get["positive"], "no positive document (empty or missing)", "no_positive")
            docs += [(t, image, 1.0, 1.0) for t in positives] or ([("", image, 1.0, 1.0)] if image else [])
            negs = rec.get(get["negatives"]) if get["negatives"] else None
            if negs is not None and not isinstance(negs, list):
                negs = [negs]
            for t in (_text(n) for n in (negs or [])):
                if t:
                    docs.append((t, None, 0.0, 0.0))
        else:
            doc = _text(rec.get(get["doc"]))
            if not doc and not image:
                errors.add(where, get["doc"], "empty or missing document text", "empty_doc")
            label, grade = _judgment(rec, get, where, errors, lo, hi, label_threshold)
            if label is not None:
                docs.append((doc or "", image, label, grade))
        if len(errors.bad) > row_errors:
            continue
        group = rec.get(get["group"]) if get["group"] else None
        out.append({"query": query, "query_image": q_image, "docs": docs,
                    "group": str(group) if group is not None else query, "row": i})
    return out


def _judgment(rec, get, where, errors, lo, hi, threshold) -> tuple[float | None, float]:
    label = rec.get(get["label"]) if get["label"] else None
    score = rec.get(get["score"]) if get["score"] else None
    if score is not None:
        try:
            score = float(score)
        except (TypeError, ValueError):
            errors.add(where, get["score"], f"score {score!r} is not a number", "bad_score")
            return None, 0.0
        if math.isnan(score):  # an empty cell in a csv/parquet file
            errors.add(where, get["score"], "score is missing (NaN)", "bad_score")
            return None, 0.0
        if lo is not None and not lo <= score <= hi:
            errors.add(where, get["score"], f"score {score} is outside data.score_range [{lo}, {hi}]", "bad_score")
            return None, 0.0
    if label is not None:
        try:
            label = float(label)
        except (TypeError, ValueError):
            label = None
        if label is None or not 0.0 <= label <= 1.0:
            errors.add(where, get["label"], f"label {rec.get(get['label'])!r} is outside [0, 1]", "bad_label")
            return None, 0.0
    elif score is not None and threshold is not None:
        label = 1.0 if score >= threshold else 0.0
    if label is None:
        errors.add(where, get["label"] or get["score"] or "label",
                   "no label (set data.label_threshold to derive it from the score)", "bad_label")
        return None, 0.0
    grade = score - (lo if lo is not None else 0.0) if score is not None else label
    return label, max(grade, 0.0)


def merge_units(units: list[dict]) -> list[dict]:
    """Units of the same ``group`` (query id, or the query text) merged into one, in first-seen order."""
    by_group: dict[str, dict] = {}
    for u in units:
        g = by_group.get(u["group"])
        if g is None:
            by_group[u["group"]] = {**u, "docs": list(u["docs"])}
        else:
            g["docs"].extend(d for d in u["docs"] if d not in g["docs"])
    return list(by_group.values())


def bi_encoder_examples(units: list[dict], num_negatives: int | None) -> tuple[list[dict], dict[str, int]]:
    """One example per (query, positive) with up to ``num_negatives`` of the query's negatives (first ones).

    ``num_negatives``: None = all examples get the smallest negative count found (so batches stack),
    0 = none. Queries whose units hold no positive are counted, not trained on.
    """
    merged = merge_units(units)
    counts = {"no_positive_in_group": 0}
    pairs = []
    for u in merged:
        positives = [d for d in u["docs"] if d[2] >= 0.5]
        negatives = [d for d in u["docs"] if d[2] < 0.5]
        if not positives:
            counts["no_positive_in_group"] += 1
            continue
        for text, image, _, _ in positives:
            pairs.append({"query": u["query"], "query_image": u["query_image"], "positive": text, "image": image,
                          "negatives": [d[0] for d in negatives], "group": u["group"], "row": u["row"]})
    k = num_negatives
    if k is None:
        k = min((len(p["negatives"]) for p in pairs), default=0)
    counts["num_negatives"] = k
    if k:
        short = [p for p in pairs if len(p["negatives"]) < k]
        counts["too_few_negatives"] = len(short)
        pairs = [p for p in pairs if len(p["negatives"]) >= k]
    for p in pairs:
        p["negatives"] = p["negatives"][:k]
    return pairs, counts


def pointwise_examples(units: list[dict]) -> list[dict]:
    """Every judged (query, doc) pair: the cross-encoder's BCE examples and every reranking candidate."""
    out = []
    for u in units:
        for text, image, label, grade in u["docs"]:
            out.append({"query": u["query"], "query_image": u["query_image"], "doc": text, "image": image,
                        "label": label, "grade": grade, "group": u["group"], "row": u["row"]})
    return out


def group_examples(units: list[dict], group_size: int) -> tuple[list[dict], dict[str, int]]:
    """Groups of one positive + ``group_size - 1`` negatives of the same query (negatives used in order,
    cycled when a query has fewer); queries without a positive or without a negative are counted and left out."""
    out, counts = [], {"no_positive_in_group": 0, "groups_without_negatives": 0}
    for u in merge_units(units):
        positives = [d for d in u["docs"] if d[2] >= 0.5]
        negatives = [d for d in u["docs"] if d[2] < 0.5]
        if not positives or not negatives:
            counts["groups_without_negatives" if positives else "no_positive_in_group"] += 1
            continue
        for j, pos in enumerate(positives):
            negs = [negatives[(j * (group_size - 1) + t) % len(negatives)] for t in range(group_size - 1)]
            out.append({"query": u["query"], "query_image": u["query_image"], "docs": [pos[0]] + [n[0] for n in negs],
                        "group": u["group"], "row": u["row"]})
    return out, counts
