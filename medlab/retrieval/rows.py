"""Retrieval rows -> training/evaluation examples (pure functions, no tokenizer).

Canonical fields (a data config maps user columns onto them with ``data.fields``):
``query``, ``positive`` (a string, or a list of strings for groups), ``negatives`` (list),
``doc`` + ``label`` and/or ``score`` (triples: one judged query-document pair per row),
``group`` (query id; rows of one query share it), ``image`` (the document's image path),
``query_image`` (the query's image path), ``rank`` (triples: the document's position in the retriever's list that
produced the candidates, 1 = first; evaluation reports that original order as a baseline).

Input formats, detected from the mapped columns:

- ``pairs``:   query, positive[, negatives]          one relevant document per row
- ``groups``:  query, positive: [..][, negatives]   several relevant documents per row
- ``triples``: query, doc, label|score[, group]     judged pairs (graded with ``score``)

Examples produced:

- bi-encoder: ``{query, positive, negatives, image, query_image, row}``, one per (query, positive);
  triples become pairs from their positive rows, with the same query's negative rows as hard negatives.
- cross-encoder pointwise: ``{query, doc, label, grade, group, image, row, rank}``, one per judged pair.
- cross-encoder groups: ``{query, docs: [positive, negatives...], group, row}`` of a fixed size.
- cross-encoder graded lists: ``{query, docs, labels, grades, group, row}`` of a fixed size (``list_examples``).

The formats are registered normalizers (`medlab.data.registry`, kind ``retrieval``): each turns one record
(canonical names) into a judged unit ``{query, query_image, docs: [(text, image, label, grade)], group}``; the
examples are built from units. Every problem is reported with the file, where in it (``FILE line N`` for line-oriented files such as
``.jsonl``/``.csv``, ``FILE row N`` for records of ``.json`` lists, parquet or saved datasets; both 1-based,
see `medlab.data.errors`) and the field (the source column).

A ``fields`` value of null means "not mapped": the canonical name itself, then the common aliases, are used.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from medlab.data import fields as F
from medlab.data import registry
from medlab.data import source as S
from medlab.data.errors import BadRows, RowProblem, RowProblems, record_location
from medlab.data.registry import Format, register

CANONICAL = ("query", "positive", "negatives", "doc", "label", "score", "group", "image", "query_image", "rank")
ALIASES = {"query": ("question", "anchor", "sentence1"), "positive": ("pos", "answer", "sentence2"),
           "negatives": ("negative", "neg", "hard_negatives"), "doc": ("document", "passage", "text"),
           "group": ("qid", "query_id"), "score": ("judgment", "relevance"), "rank": ("system_rank",)}
RowErrors = BadRows  # the bad-row collector every data source shares (`medlab.data.errors.BadRows`)


def resolve_fields(columns: Sequence[str], fields: Mapping[str, str] | None) -> dict[str, str]:
    """canonical name -> source column: explicit ``fields`` first, then the same name, then common aliases
    (a null ``fields`` value is not a mapping; `medlab.data.fields.resolve`)."""
    fields = dict(fields or {})
    out = F.resolve(columns, fields, CANONICAL, ALIASES)
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
    return F.problems(columns, fields, CANONICAL)


def detect_format(mapped: Mapping[str, str], first_row: Mapping[str, Any] | None = None) -> str | None:
    """The format of a file from its mapped columns (and its first record, source names), or None."""
    first = S.canonical_record(first_row, mapped) if first_row is not None else None
    return registry.detect("retrieval", mapped, first)


def doc_key(text: str, image: str | None = None) -> int:
    """A stable 63-bit id for a document (its text and image), equal across processes and runs."""
    h = hashlib.blake2b(f"{text}\x00{image or ''}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value).strip() if not isinstance(value, (list, dict)) else None


def _image(value: Any, image_root: str | None) -> str | None:
    if value in (None, ""):
        return None
    p = Path(str(value))
    return str(p if p.is_absolute() or not image_root else Path(image_root) / p)


# ---------------------------------------------------------------------------------------------- formats


def _unit(row: Mapping[str, Any], docs, *, image_root: str | None = None, check_images: bool = True,
          **options: Any) -> dict:
    """The part every retrieval format shares: query, images, group; ``docs(row, image, problems, **options)``
    gives the judged documents."""
    query = _text(row.get("query"))
    if not query:
        raise RowProblem("query", "empty_query", "empty or missing query text")
    problems: list[RowProblem] = []
    q_image = _image(row.get("query_image"), image_root)
    image = _image(row.get("image"), image_root)
    for name, img in (("query_image", q_image), ("image", image)):
        if img and check_images and not Path(img).is_file():
            problems.append(RowProblem(name, "missing_image", f"image file not found: {img}"))
    judged = docs(row, image, problems, **options)
    if problems:
        raise RowProblems(problems)
    group = row.get("group")
    return {"query": query, "query_image": q_image, "docs": judged,
            "group": str(group) if group is not None else query, "rank": _rank(row.get("rank"))}


def _rank(value: Any) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RowProblem("rank", "bad_rank", f"rank {value!r} is not a number") from None


def _positive_docs(row, image, problems, **_) -> list[tuple[str, str | None, float, float]]:
    pos = row.get("positive")
    positives = [t for t in (_text(p) for p in (pos if isinstance(pos, list) else [pos])) if t]
    if not positives and not image:
        problems.append(RowProblem("positive", "no_positive", "no positive document (empty or missing)"))
    docs = [(t, image, 1.0, 1.0) for t in positives] or ([("", image, 1.0, 1.0)] if image else [])
    negs = row.get("negatives")
    if negs is not None and not isinstance(negs, list):
        negs = [negs]
    return docs + [(t, None, 0.0, 0.0) for t in (_text(n) for n in (negs or [])) if t]


def _judged_docs(row, image, problems, *, score_range: Sequence[float] | None = None,
                 label_threshold: float | None = None, **_) -> list[tuple[str, str | None, float, float]]:
    doc = _text(row.get("doc"))
    if not doc and not image:
        problems.append(RowProblem("doc", "empty_doc", "empty or missing document text"))
    try:
        label, grade = _judgment(row, score_range, label_threshold)
    except RowProblem as problem:
        problems.append(problem)
        return []
    return [(doc or "", image, label, grade)]


def _judgment(row, score_range, threshold) -> tuple[float, float]:
    lo, hi = (float(score_range[0]), float(score_range[1])) if score_range else (None, None)
    label, score = row.get("label"), row.get("score")
    if score is not None:
        try:
            score = float(score)
        except (TypeError, ValueError):
            raise RowProblem("score", "bad_score", f"score {score!r} is not a number") from None
        if math.isnan(score):  # an empty cell in a csv/parquet file
            raise RowProblem("score", "bad_score", "score is missing (NaN)")
        if lo is not None and not lo <= score <= hi:
            raise RowProblem("score", "bad_score", f"score {score} is outside data.score_range [{lo}, {hi}]")
    if label is not None:
        try:
            label = float(label)
        except (TypeError, ValueError):
            label = None
        if label is None or not 0.0 <= label <= 1.0:
            raise RowProblem("label", "bad_label", f"label {row.get('label')!r} is outside [0, 1]")
    elif score is not None and threshold is not None:
        label = 1.0 if score >= threshold else 0.0
    if label is None:
        field = "label" if "label" in row or "score" not in row else "score"
        raise RowProblem(field, "bad_label", "no label (set data.label_threshold to derive it from the score)")
    grade = score - (lo if lo is not None else 0.0) if score is not None else label
    return label, max(grade, 0.0)


def pairs_unit(row: Mapping[str, Any], **options: Any) -> dict:
    """``pairs`` / ``groups``: query, positive (a text, or a list of texts)[, negatives][, image]."""
    return _unit(row, _positive_docs, **options)


def triples_unit(row: Mapping[str, Any], **options: Any) -> dict:
    """``triples``: query, doc, label and/or score[, group] (one judged pair per row)."""
    return _unit(row, _judged_docs, **options)


def _listed(first: Mapping[str, Any] | None) -> bool:
    return isinstance((first or {}).get("positive"), list)


RETRIEVAL = ("retrieval",)
_REGISTERED = [
    register(Format("pairs", RETRIEVAL, (("query",), ("positive", "image")),
                    lambda c, first=None: "query" in c and ("positive" in c or ("image" in c and "doc" not in c)),
                    pairs_unit, row="judged", order=20)),
    register(Format("groups", RETRIEVAL, (("query",), ("positive",)),
                    lambda c, first=None: "query" in c and "positive" in c and _listed(first), pairs_unit,
                    row="judged", order=10)),
    register(Format("triples", RETRIEVAL, (("query",), ("doc",), ("label", "score")),
                    lambda c, first=None: "query" in c and "doc" in c and bool(c & {"label", "score"}),
                    triples_unit, row="judged", order=30)),
]
FORMATS = tuple(f.name for f in _REGISTERED)


def normalize_rows(records: Sequence[Mapping[str, Any]], mapped: Mapping[str, str], fmt: str, *, path: str,
                   errors: BadRows, score_range: Sequence[float] | None = None, label_threshold: float | None = None,
                   image_root: str | None = None, check_images: bool = True,
                   numbers: Sequence[int] | None = None, unit: str = "line") -> list[dict]:
    """Source records -> judged units ``{query, query_image, docs: [(text, image, label, grade)], group, row}``.

    ``label`` is in [0, 1] (1 = relevant); ``grade`` >= 0 is the NDCG gain (``score - score_range[0]``, or the
    label). A score becomes a label by ``score >= label_threshold``. Bad rows are recorded in ``errors``, named
    ``path line N`` / ``path row N`` from ``numbers`` (each record's 1-based position in the file, in ``unit``s:
    ``readers.FileRecords``) or else ``path row N`` (N = index + 1), and by the source column.
    ``row`` of a unit is the record's 0-based index in ``records``.
    """
    spec = registry.get(fmt)
    options = {"score_range": score_range, "label_threshold": label_threshold, "image_root": image_root,
               "check_images": check_images}
    good, bad = S.normalize_records(
        records, lambda rec: spec.normalize(S.canonical_record(rec, mapped), **options),
        lambda i: record_location(path, i, numbers, unit), lambda field: (mapped.get(field) or field, None))
    errors.extend(bad)
    return [{**u, "row": i} for i, u in good]


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
                        "label": label, "grade": grade, "group": u["group"], "row": u["row"], "rank": u.get("rank")})
    return out


def list_examples(units: list[dict], list_size: int, seed: int = 0) -> tuple[list[dict], dict[str, int]]:
    """Lists of ``list_size`` judged candidates of one query with their labels and grades (graded listwise losses).

    A query's candidates are shuffled (fixed by ``seed`` and the query) and cut into lists; the last, short list is
    filled up with the query's first candidates (a query with fewer candidates repeats some). Lists whose
    candidates all carry the same grade teach a listwise loss nothing and are left out (counted).
    """
    import random

    out, counts = [], {"lists_without_contrast": 0, "queries_single_candidate": 0}
    for u in merge_units(units):
        docs = list(u["docs"])
        if len(docs) < 2:
            counts["queries_single_candidate"] += 1
            continue
        random.Random(f"{seed}:{u['group']}").shuffle(docs)
        n_lists = -(-len(docs) // list_size)
        padded = [docs[i % len(docs)] for i in range(n_lists * list_size)]
        for j in range(n_lists):
            chunk = padded[j * list_size : (j + 1) * list_size]
            if len({d[3] for d in chunk}) < 2:
                counts["lists_without_contrast"] += 1
                continue
            out.append({"query": u["query"], "query_image": u["query_image"], "docs": [d[0] for d in chunk],
                        "labels": [d[2] for d in chunk], "grades": [d[3] for d in chunk], "group": u["group"],
                        "row": u["row"]})
    return out, counts


def soft_labels(examples: list[dict], span: float) -> None:
    """Training labels from the graded judgments, in place: ``label = grade / span`` (``span`` = the score range's
    width, so the top grade is 1 and the lowest 0)."""
    for e in examples:
        if "grade" in e:
            e["label"] = min(max(e["grade"] / span, 0.0), 1.0)
        elif "grades" in e:
            e["labels"] = [min(max(g / span, 0.0), 1.0) for g in e["grades"]]


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
