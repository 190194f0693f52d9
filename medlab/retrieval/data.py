"""`RetrievalData`: what ``conf/data/*.yaml`` instantiates for the bi-encoder and cross-encoder objectives.

    data = RetrievalData(path="pairs.jsonl", task="bi_encoder", fields={"query": "question", "positive": "answer"})
    problems = data.validate()          # no tokenizer: options, every file read and every row checked
    counts = data.setup(tokenizer)      # read -> normalize -> examples; kept/dropped counts
    batch = data.collate(data.train_dataset[:8])

Reading, bad rows and the held-out query groups are the skeleton every data source shares
(`medlab.data.source`); the formats (pairs, groups, triples) are registered normalizers and the examples pure
functions (`medlab.retrieval.rows`). Tokenization happens in `collate` (texts are short, and a tokenizer call
per batch is cheaper than caching token lists).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from medlab.data import registry
from medlab.data import source as S
from medlab.data.errors import BadRows, DataError, bad_row_problems
from medlab.data.readers import FileRecords, as_path_list, read_located
from medlab.data.split import held_out_count, split_option_problems
from medlab.retrieval import rows as R

log = logging.getLogger(__name__)
TASKS = ("bi_encoder", "cross_encoder")


class RetrievalData:
    """Settings + pipeline for retrieval training and evaluation data.

    Args:
        path / val_path: data file(s) (jsonl, json, csv, parquet, saved dataset dir); ``val_split`` holds out a
            fraction of the train *queries* (by ``group``) when there is no ``val_path``: at least
            ``val_split_min`` queries (never more than a quarter of them), at most ``val_split_max`` (null = no cap).
        task: ``bi_encoder`` (pairs with in-batch + hard negatives) or ``cross_encoder`` (scored pairs).
        format: ``auto`` | pairs | groups | triples (see `medlab.retrieval.rows`).
        fields: canonical field -> your column, e.g. ``{query: question, positive: answer}``; null = not mapped
            (the canonical name or a common alias is used).
        query_prefix / doc_prefix: instruction prefixes prepended to every query / document (e.g. ``"query: "``).
        max_length / query_max_length: token limits (documents / queries; the query limit defaults to max_length).
        append_eos: add EOS after each text (decoder embedders pool the last token, which should see the text end).
        num_negatives: hard negatives per bi-encoder example (null = the smallest count present, 0 = none).
        group_size: cross-encoder only: train on groups of 1 positive + (group_size-1) negatives (listwise or
            grouped BCE); null = independent pairs.
        list_size: cross-encoder only: train on lists of ``list_size`` candidates of one query with their grades
            (``objective.loss=listnet``; a query's candidates shuffled and cut into lists, the last one filled up
            from the same query); null = independent pairs.
        pair_sides: cross-encoder only: also encode the query and the document alone (``query.*`` / ``doc.*`` keys of
            the batch's ``pairs``), for ``objective.prior=cosine``.
        graded_labels: cross-encoder only: train BCE on ``grade / (score_range[1] - score_range[0])`` (soft labels
            from the graded judgments) instead of the thresholded label; validation keeps the binary label.
        score_range: ``[lo, hi]`` of a graded ``score`` field (validated; NDCG gain = score - lo).
        label_threshold: a pair is relevant when ``score >= label_threshold`` (when the rows carry no label).
        pair_template: how a decoder cross-encoder sees (query, doc); null = the tokenizer's pair encoding
            ([CLS] q [SEP] d [SEP] for BERT) or ``"Query: {query}\\nDocument: {doc}"`` without a SEP token.
        image_root: directory relative image paths are resolved against (default: the data file's directory).
        on_bad_row: ``error`` (raise, listing every bad row with file, line/row and field) or ``skip`` (drop,
            counted as ``bad_row/<reason>``; lines that do not parse at all are ``bad_row/unparsable``).
        limit / val_limit: first N rows only (smoke tests).
        group_by_length: batch examples of similar length together (less padding; batch order stays random).
    """

    kind: ClassVar[str] = "retrieval"  # medlab.contracts.DataSource
    stop_token_ids: tuple[int, ...] = ()  # nothing is generated from retrieval data

    def __init__(self, path: Any, val_path: Any = None, *, task: str = "bi_encoder", format: str = "auto",
                 fields: Mapping[str, str] | None = None, query_prefix: str = "", doc_prefix: str = "",
                 max_length: int = 128, query_max_length: int | None = None, append_eos: bool = False,
                 num_negatives: int | None = None, group_size: int | None = None, list_size: int | None = None,
                 pair_sides: bool = False, graded_labels: bool = False,
                 score_range: Sequence[float] | None = None, label_threshold: float | None = None,
                 pair_template: str | None = None, image_root: str | None = None, val_split: float = 0.0,
                 val_split_min: int = 1, val_split_max: int | None = None, on_bad_row: str = "error", batch_size: int = 32, val_batch_size: int | None = None,
                 num_workers: int = 0, limit: int | None = None, val_limit: int | None = None, seed: int = 0,
                 group_by_length: bool = False, cache_dir: str | None = None):
        self.paths = as_path_list(path) if path else []
        self.val_paths = as_path_list(val_path) if val_path else []
        self.task, self.format, self.fields = task, format, dict(fields or {})
        self.query_prefix, self.doc_prefix = query_prefix or "", doc_prefix or ""
        self.max_length, self.query_max_length = max_length, query_max_length or max_length
        self.append_eos, self.num_negatives, self.group_size = append_eos, num_negatives, group_size
        self.list_size, self.pair_sides, self.graded_labels = list_size, bool(pair_sides), bool(graded_labels)
        self.score_range = list(score_range) if score_range is not None else None
        self.label_threshold, self.pair_template, self.image_root = label_threshold, pair_template, image_root
        self.val_split, self.on_bad_row, self.seed = val_split, on_bad_row, seed
        self.val_split_min, self.val_split_max = val_split_min, val_split_max
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.limit, self.val_limit = num_workers, limit, val_limit
        self.group_by_length = group_by_length
        self.train_dataset: list[dict] = []
        self.val_dataset: list[dict] | None = None
        self.tokenizer: Any = None
        self.has_images = False
        self.val_size: int | None = None  # validation queries, known after validate() (0 = no validation)

    # ----------------------------------------------------------------------------------- checks
    def validate(self) -> list[str]:
        """Every problem found without a tokenizer: options, then every file read and every row checked as
        setup would (with ``on_bad_row=error`` each bad row is a problem). Sets ``val_size``."""
        problems = self._option_problems()
        if any(p.startswith(("data.task", "data.format")) for p in problems):
            return problems + self._read_problems_only()
        splits = [(split, lambda paths=paths, limit=limit: S.load_files(paths, limit, self._normalize_file))
                  for split, paths, limit in (("train", self.paths, self.limit), ("val", self.val_paths, self.val_limit))
                  if paths]
        found, sizes = S.check_splits(splits, self.on_bad_row, left=self._nothing_left, size=_n_groups)
        self.val_size = S.validation_size(sizes, bool(self.val_paths), self._val_count)
        return problems + found

    def _option_problems(self) -> list[str]:
        problems = S.choice_problems({"task": (self.task, TASKS),
                                      "format": (self.format, ("auto", *registry.names("retrieval"))),
                                      "on_bad_row": (self.on_bad_row, S.ON_BAD_ROW)})
        problems += S.positive_problems({name: getattr(self, name) for name in
                                         ("max_length", "query_max_length", "batch_size", "val_batch_size")})
        problems += S.positive_problems({"limit": self.limit, "val_limit": self.val_limit}, optional=True)
        if self.num_negatives is not None and not (isinstance(self.num_negatives, int) and self.num_negatives >= 0):
            problems.append(f"data.num_negatives must be null or an integer >= 0, got {self.num_negatives!r}")
        if self.group_size is not None and not (isinstance(self.group_size, int) and self.group_size >= 2):
            problems.append(f"data.group_size must be null or an integer >= 2, got {self.group_size!r}")
        if self.group_size is not None and self.task == "bi_encoder":
            problems.append("data.group_size is for the cross-encoder; the bi-encoder uses data.num_negatives")
        if self.list_size is not None and not (isinstance(self.list_size, int) and self.list_size >= 2):
            problems.append(f"data.list_size must be null or an integer >= 2, got {self.list_size!r}")
        if self.list_size is not None and self.group_size is not None:
            problems.append("data.list_size (graded lists) and data.group_size (1 positive + k negatives) exclude "
                            "each other: set one")
        if self.task == "bi_encoder" and (self.list_size is not None or self.pair_sides or self.graded_labels):
            problems.append("data.list_size / data.pair_sides / data.graded_labels are for the cross-encoder")
        if self.graded_labels and self.score_range is None:
            problems.append("data.graded_labels=true needs data.score_range=[lo, hi] (label = grade / (hi - lo))")
        if self.score_range is not None and (len(self.score_range) != 2 or self.score_range[0] >= self.score_range[1]):
            problems.append(f"data.score_range must be [lo, hi] with lo < hi, got {self.score_range}")
        problems += split_option_problems(self.val_split, self.val_split_min, self.val_split_max)
        if not self.paths:
            problems.append("data.path is required (pass data.path=FILE)")
        return problems

    def _read_problems_only(self) -> list[str]:
        """With options that make row checks meaningless (task, format): only whether the files read."""
        out = []
        for path in self.paths + self.val_paths:
            try:
                read = read_located(path)
            except DataError as e:
                out.append(str(e))
                continue
            if read.unparsable and self.on_bad_row != "skip":
                out += bad_row_problems(read.unparsable)
        return out

    def _val_count(self, n_groups: int) -> int:
        if not isinstance(self.val_split, (int, float)):
            return 0
        return held_out_count(n_groups, float(self.val_split), self.val_split_min, self.val_split_max)

    def _nothing_left(self, split: str, loaded: S.Loaded) -> str | None:
        """validate(): train rows that give no example (e.g. no query with a positive)."""
        if split != "train" or loaded.problems:
            return None
        if self._examples(loaded.rows or [], {}, split, train=True, quiet=True):
            return None
        return f"no training examples left from {[str(p) for p in self.paths]} (counts: {{'train/rows': {loaded.read}}})"

    def _file_problems(self, path: Path, columns: list[str], first: dict | None) -> tuple[list[str], dict, str | None]:
        """Problems of one file's columns: (problems, canonical -> column mapping, format)."""
        problems = [f"{path}: {p}" for p in R.field_problems(columns, self.fields)]
        mapped = R.resolve_fields(columns, self.fields)
        fmt = R.detect_format(mapped, first) if self.format == "auto" else self.format
        if fmt is None:
            problems.append(f"{path}: cannot tell the format from columns {columns}: map them with data.fields.query, "
                            "data.fields.positive (pairs/groups) or data.fields.doc + data.fields.label|score (triples)")
        elif fmt == "triples" and "label" not in mapped and self.label_threshold is None:
            problems.append(f"{path}: triples with a score but no label need data.label_threshold")
        return problems, mapped, fmt

    def _normalize_file(self, read: FileRecords) -> tuple[list[dict] | None, list[str], list]:
        """One file's records -> judged units (`medlab.retrieval.rows`): (units, file problems, bad rows)."""
        records = read.dataset.to_list()
        problems, mapped, fmt = self._file_problems(read.path, read.dataset.column_names, records[0])
        if problems:
            return None, problems, []
        errors = BadRows()
        units = R.normalize_rows(records, mapped, fmt, path=str(read.path), errors=errors,
                                 score_range=self.score_range, label_threshold=self.label_threshold,
                                 image_root=self.image_root or str(Path(read.path).parent), numbers=read.numbers,
                                 unit=read.unit)
        return units, [], errors.bad

    # ----------------------------------------------------------------------------------- setup
    def setup(self, tokenizer: Any) -> dict[str, int]:
        """Read and normalize every file; returns kept/dropped counts (logged)."""
        S.raise_config_problems(self._option_problems(), self.paths + self.val_paths)
        self.tokenizer = tokenizer
        counts: dict[str, int] = {}
        units = self._units(self.paths, self.limit, counts, "train")
        val_units = self._units(self.val_paths, self.val_limit, counts, "val") if self.val_paths else None
        if not self.val_paths:  # hold out whole queries
            n_val = self._val_count(len({u["group"] for u in units}))
            units, val_units = S.split_off(units, n_val, self.seed, group=lambda u: u["group"])
        self.train_dataset = self._examples(units, counts, "train", train=True)
        self.val_dataset = self._examples(val_units, counts, "val", train=False) if val_units else None
        if not self.train_dataset:
            raise DataError(f"no training examples left from {[str(p) for p in self.paths]} (counts: {counts})")
        if self.val_dataset is None:
            S.warn_no_validation("retrieval data", "queries", self.val_split)
        self.has_images = any(e.get("image") or e.get("query_image") for e in self.train_dataset + (self.val_dataset or []))
        log.info("retrieval data (%s): %s", self.task, ", ".join(f"{k}={v}" for k, v in counts.items()))
        return counts

    def _units(self, paths: list[Path], limit: int | None, counts: dict, split: str) -> list[dict]:
        loaded = S.load_files(paths, limit, self._normalize_file)
        return S.take(loaded, split, self.on_bad_row, counts, read_key="rows") or []

    def _examples(self, units: list[dict], counts: dict, split: str, train: bool, quiet: bool = False) -> list[dict]:
        if self.task == "bi_encoder":
            examples, c = R.bi_encoder_examples(units, self.num_negatives)
            if not train and c.get("too_few_negatives"):
                # Validation ranks the whole corpus anyway: keep every query, without hard negatives.
                (log.debug if quiet else log.info)(
                    "val: %d queries have fewer than %s hard negatives; validating without hard negatives",
                    c["too_few_negatives"], c["num_negatives"])
                examples, c = R.bi_encoder_examples(units, 0)
        elif train and self.group_size:
            examples, c = R.group_examples(units, self.group_size)
        elif train and self.list_size:
            examples, c = R.list_examples(units, self.list_size, self.seed)
        else:
            examples, c = R.pointwise_examples(units), {}
        if train and self.graded_labels and self.score_range is not None:
            R.soft_labels(examples, float(self.score_range[1]) - float(self.score_range[0]))
        counts.update({f"{split}/{k}": v for k, v in c.items()})
        counts[f"{split}/examples"] = len(examples)
        for i, e in enumerate(examples):
            e["id"] = i
        return examples

    def lengths(self) -> list[int]:
        """A length proxy per training example (characters of its texts), for length-grouped batching."""
        out = []
        for e in self.train_dataset:
            texts = [e["query"]] + ([e["positive"], *e["negatives"]] if "positive" in e
                                    else list(e["docs"]) if "docs" in e else [e["doc"]])
            out.append(sum(len(t or "") for t in texts))
        return out

    # ----------------------------------------------------------------------------------- batches
    def collate(self, examples: Sequence[dict]) -> dict:
        if self.task == "bi_encoder":
            return self._collate_bi(examples)
        if "docs" in examples[0]:
            return self._collate_groups(examples)
        return self._collate_pairs(examples)

    def _collate_bi(self, examples: Sequence[dict]) -> dict:
        qp, dp = self.query_prefix, self.doc_prefix
        queries = [(qp + e["query"], e.get("query_image")) for e in examples]
        docs = [(dp + e["positive"] if e["positive"] else "", e.get("image")) for e in examples]
        docs += [(dp + n, None) for e in examples for n in e["negatives"]]
        q = self.encode(queries, self.query_max_length)
        d = self.encode(docs, self.max_length)
        positive_ids = [R.doc_key(e["positive"], e.get("image")) for e in examples]
        doc_ids = positive_ids + [R.doc_key(n) for e in examples for n in e["negatives"]]
        return {"query": q, "docs": d, "num_negatives": len(examples[0]["negatives"]),
                "positive_ids": torch.tensor(positive_ids), "doc_ids": torch.tensor(doc_ids),
                "groups": [e["group"] for e in examples], "ids": [e["id"] for e in examples],
                "num_tokens": int(q["attention_mask"].sum() + d["attention_mask"].sum())}

    def _collate_pairs(self, examples: Sequence[dict]) -> dict:
        pairs = self.encode_pairs([e["query"] for e in examples], [e["doc"] for e in examples],
                                  [e.get("image") for e in examples])
        out = {"pairs": pairs, "labels": torch.tensor([e["label"] for e in examples], dtype=torch.float32),
                "grades": torch.tensor([e["grade"] for e in examples], dtype=torch.float32), "group_size": 1,
                "groups": [e["group"] for e in examples], "ids": [e["id"] for e in examples],
                "num_tokens": _tokens(pairs)}
        if any(e.get("rank") is not None for e in examples):
            out["ranks"] = [e.get("rank") for e in examples]
        return out

    def _collate_groups(self, examples: Sequence[dict]) -> dict:
        k = len(examples[0]["docs"])
        queries = [e["query"] for e in examples for _ in range(k)]
        pairs = self.encode_pairs(queries, [d for e in examples for d in e["docs"]], [None] * len(queries))
        if "grades" in examples[0]:  # graded lists (list_size)
            labels = torch.tensor([e["labels"] for e in examples], dtype=torch.float32)
            grades = torch.tensor([e["grades"] for e in examples], dtype=torch.float32)
        else:  # 1 positive + k-1 negatives (group_size)
            labels = torch.zeros(len(examples), k)
            labels[:, 0] = 1.0
            grades = labels
        return {"pairs": pairs, "labels": labels.reshape(-1), "grades": grades.reshape(-1), "group_size": k,
                "groups": [e["group"] for e in examples], "ids": [e["id"] for e in examples],
                "num_tokens": _tokens(pairs)}

    # ----------------------------------------------------------------------------------- encoding
    def encode(self, items: Sequence[tuple[str, str | None]], max_length: int) -> dict[str, torch.Tensor]:
        """(text, image) items -> model inputs (right-padded). Images go through the VLM processor."""
        if hasattr(self.tokenizer, "image_processor") or any(img for _, img in items):
            from medlab.models.vlm import multimodal_inputs

            return multimodal_inputs(self.tokenizer, [{"text": t or None, "image": img} for t, img in items],
                                     max_length=max_length)
        return encode_texts(self.tokenizer, [t for t, _ in items], max_length, self.append_eos)

    def encode_pairs(self, queries: Sequence[str], docs: Sequence[str], images: Sequence[str | None]) -> dict:
        tok = _text_tokenizer(self.tokenizer)
        queries = [self.query_prefix + q for q in queries]
        docs = [self.doc_prefix + d for d in docs]
        if any(images):
            raise DataError("image documents are supported by the bi-encoder only (the cross-encoder scores text pairs)")
        if self.pair_template is None and tok.sep_token is not None:
            enc = dict(tok(list(queries), list(docs), truncation="longest_first", max_length=self.max_length,
                           padding=True, return_tensors="pt"))
        else:
            template = self.pair_template or "Query: {query}\nDocument: {doc}"
            texts = [template.format(query=q, doc=d) for q, d in zip(queries, docs)]
            enc = encode_texts(tok, texts, self.max_length, append_eos=True)
        if self.pair_sides:  # each text alone, as the bi-encoder encodes it (objective.prior=cosine)
            enc.update({f"query.{k}": v for k, v in encode_texts(tok, queries, self.query_max_length,
                                                                 self.append_eos).items()})
            enc.update({f"doc.{k}": v for k, v in encode_texts(tok, docs, self.max_length, self.append_eos).items()})
        return enc


def _text_tokenizer(tok: Any) -> Any:
    return getattr(tok, "tokenizer", tok)  # a processor wraps its tokenizer


def encode_texts(tokenizer: Any, texts: Sequence[str], max_length: int, append_eos: bool = False) -> dict:
    """Tokenize, truncate to ``max_length`` (keeping room for EOS when ``append_eos``), right-pad."""
    tok = _text_tokenizer(tokenizer)
    eos = [tok.eos_token_id] if append_eos and tok.eos_token_id is not None else []
    ids = tok(list(texts), truncation=True, max_length=max_length - len(eos), add_special_tokens=True)["input_ids"]
    ids = [x + eos for x in ids]
    width = max(1, max(len(x) for x in ids))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        input_ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return {"input_ids": input_ids, "attention_mask": mask}


def _tokens(pairs: dict) -> int:
    """Tokens a batch puts through the model: the joint encoding and, with pair_sides, each text alone."""
    return int(sum(v.sum() for k, v in pairs.items() if k.endswith("attention_mask")))


def _n_groups(units: list[dict]) -> int:
    return len({u["group"] for u in units})
