"""`PreferenceData` (kind ``preference``): chosen/rejected pairs (reward model, DPO, ORPO) or unpaired
desirable/undesirable completions (KTO), from any of the registered preference formats.

    data = PreferenceData(path="pairs.jsonl", template="chatml", max_length=512)
    problems = data.validate()        # no tokenizer: options, every file read and every row checked
    counts = data.setup(tokenizer)    # read -> normalize -> (pairs from judgments) -> tokenize; kept/dropped counts
    batch = data.collate(data.train_dataset[:8])

Reading, bad rows and the held-out validation prompts are the skeleton every data source shares
(`medlab.data.source`); the formats are `medlab.data.preference_rows`, tokens and batches
`medlab.data.preference_encode` (the batch contract: docs/INTERFACES.md, "Preference batches").
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from medlab.data import fields as F
from medlab.data import registry
from medlab.data import source as S
from medlab.data.errors import DataError, record_location
from medlab.data.preference_encode import (
    ENCODINGS,
    PADDING_SIDES,
    PreferenceEncoder,
    collate_paired,
    collate_unpaired,
    resolve_encoding,
)
from medlab.data.preference_rows import ALIASES, CANONICAL, judgment_pairs, unpair
from medlab.data.readers import FileRecords, as_path_list
from medlab.data.split import held_out_count, split_option_problems
from medlab.data.templates import TEMPLATE_NAMES, get_template
from medlab.data.tokenize import require_eos_id, stop_token_ids

log = logging.getLogger(__name__)
KIND = "preference"


class PreferenceData:
    """Settings + pipeline for preference data.

    Args:
        path / val_path: data file(s) (jsonl, json, csv, parquet, saved dataset dir). Without ``val_path``,
            ``val_split`` holds out that fraction of the *prompts* (``group``: a judgments query id, else the
            prompt), at least ``val_split_min``, at most ``val_split_max`` (null = no cap).
        format: ``auto`` | preference_conversations | preference_pairs | unpaired | judgments.
        fields: canonical field -> your column (``{prompt: question, chosen: good, rejected: bad}``); null = not
            mapped (the canonical name, then common aliases, are used).
        template: chat template (chatml, llama3, ..., ``tokenizer``) for decoder models.
        encoding: ``auto`` | ``chat`` (the chat template) | ``pair`` (encoders: (prompt, completion) text pairs);
            auto = pair for a tokenizer with a separator token and no chat template.
        system_prompt: system message added to prompts that have none (null = leave them).
        max_length: tokens of prompt + completion; ``max_prompt_length`` (null = no own limit) and
            ``min_prompt_length``: how far the prompt is cut from the left before completions are cut.
        unpaired: null = from the format (``unpaired`` rows -> KTO batches); true = unpaired batches (pairs become
            one desirable + one undesirable row); false = paired batches.
        margin_from_score / margin_scale / max_pairs_per_group: pairs from judgments (every higher-vs-lower pair
            of one group): margin = scale * score difference when on; at most N pairs per group (largest gaps first).
        padding_side: ``right`` (default) or ``left``.
        pair_sides: encoders only: batches also carry the prompt and the completion encoded alone (``query.*`` /
            ``doc.*``), for a reward model whose score starts as their cosine (``objective.prior=cosine``).
        on_bad_row: ``error`` (raise listing every bad row) or ``skip`` (drop, counted ``bad_row/<reason>``).
        limit / val_limit: first N records only (smoke tests).
    """

    kind: ClassVar[str] = KIND  # medlab.contracts.DataSource
    stop_token_ids: tuple[int, ...] = ()

    def __init__(self, path: Any, val_path: Any = None, *, format: str = "auto", fields: Mapping[str, str] | None = None,
                 template: str = "chatml", encoding: str = "auto", system_prompt: str | None = None,
                 max_length: int = 512, max_prompt_length: int | None = None, min_prompt_length: int = 8,
                 unpaired: bool | None = None, margin_from_score: bool = False, margin_scale: float = 1.0,
                 max_pairs_per_group: int | None = None, padding_side: str = "right", val_split: float = 0.0,
                 val_split_min: int = 1, val_split_max: int | None = None, on_bad_row: str = "error",
                 batch_size: int = 8, val_batch_size: int | None = None, num_workers: int = 0,
                 limit: int | None = None, val_limit: int | None = None, seed: int = 0, group_by_length: bool = False,
                 pair_sides: bool = False):
        self.paths = as_path_list(path) if path else []
        self.val_paths = as_path_list(val_path) if val_path else []
        self.format, self.fields = format, F.mapped(fields)
        self.template, self.encoding, self.system_prompt = template, encoding, system_prompt
        self.max_length, self.max_prompt_length, self.min_prompt_length = max_length, max_prompt_length, min_prompt_length
        self.unpaired, self.margin_from_score, self.margin_scale = unpaired, margin_from_score, margin_scale
        self.max_pairs_per_group, self.padding_side = max_pairs_per_group, padding_side
        self.val_split, self.val_split_min, self.val_split_max = val_split, val_split_min, val_split_max
        self.on_bad_row, self.seed = on_bad_row, seed
        self.batch_size, self.val_batch_size = batch_size, val_batch_size or batch_size
        self.num_workers, self.limit, self.val_limit = num_workers, limit, val_limit
        self.group_by_length, self.pair_sides = group_by_length, bool(pair_sides)
        self.train_dataset: list[dict] = []
        self.val_dataset: list[dict] | None = None
        self.encoder: PreferenceEncoder | None = None
        self.pad_id: int | None = None
        self.paired: bool | None = None  # known after setup (or validate): paired or unpaired batches
        self.val_size: int | None = None  # validation prompts, known after validate() (0 = no validation)
        self._row_kinds: set[str] = set()

    # ----------------------------------------------------------------------------------- checks
    def validate(self) -> list[str]:
        """Every problem found without a tokenizer (options, files, every row). Sets ``val_size``."""
        problems = self._option_problems()
        self._row_kinds = set()
        splits = [(split, lambda paths=paths, limit=limit: S.load_files(paths, limit, self._normalize_file))
                  for split, paths, limit in (("train", self.paths, self.limit), ("val", self.val_paths, self.val_limit))
                  if paths]
        found, sizes = S.check_splits(splits, self.on_bad_row, size=lambda rows: len({r["group"] for r in rows}))
        self.val_size = S.validation_size(sizes, bool(self.val_paths), self._val_count)
        return problems + found + self._kind_problems()

    def _option_problems(self) -> list[str]:
        problems = S.choice_problems({"format": (self.format, ("auto", *registry.names(KIND))),
                                      "template": (self.template, TEMPLATE_NAMES),
                                      "encoding": (self.encoding, ENCODINGS),
                                      "padding_side": (self.padding_side, PADDING_SIDES),
                                      "on_bad_row": (self.on_bad_row, S.ON_BAD_ROW)})
        if not (isinstance(self.max_length, int) and self.max_length >= 4):
            problems.append(f"data.max_length must be an integer >= 4, got {self.max_length!r}")
        problems += S.positive_problems({"batch_size": self.batch_size, "val_batch_size": self.val_batch_size,
                                         "min_prompt_length": self.min_prompt_length})
        problems += S.positive_problems({"limit": self.limit, "val_limit": self.val_limit,
                                         "max_prompt_length": self.max_prompt_length,
                                         "max_pairs_per_group": self.max_pairs_per_group}, optional=True)
        if self.unpaired not in (None, True, False):
            problems.append(f"data.unpaired must be null, true or false, got {self.unpaired!r}")
        if not isinstance(self.margin_scale, (int, float)) or isinstance(self.margin_scale, bool):
            problems.append(f"data.margin_scale must be a number, got {self.margin_scale!r}")
        problems += split_option_problems(self.val_split, self.val_split_min, self.val_split_max)
        if not self.paths:
            problems.append("data.path is required (pass data.path=FILE)")
        return problems

    def _kind_problems(self) -> list[str]:
        if "unpaired" in self._row_kinds and self._row_kinds - {"unpaired"}:
            return ["the data files mix unpaired rows (prompt, completion, label) with pairs: use one kind"]
        if "unpaired" in self._row_kinds and self.unpaired is False:
            return ["data.unpaired=false, but the rows are unpaired (prompt, completion, label): they cannot be "
                    "paired; use an objective for unpaired data (kto) or paired data"]
        return []

    def _val_count(self, n_groups: int) -> int:
        if self.val_paths or not isinstance(self.val_split, (int, float)):
            return 0
        return held_out_count(n_groups, float(self.val_split), self.val_split_min, self.val_split_max)

    def _normalize_file(self, read: FileRecords) -> tuple[list[dict] | None, list[str], list]:
        """One file's records -> normalized rows: (rows, file problems, bad rows)."""
        path, columns = read.path, read.dataset.column_names
        problems = [f"{path}: {p}" for p in F.problems(columns, self.fields, CANONICAL)]
        mapped = F.resolve(columns, self.fields, CANONICAL, ALIASES)
        records = read.dataset.to_list()
        first = S.canonical_record(records[0], mapped) if records else None
        fmt = registry.detect(KIND, mapped, first) if self.format == "auto" else self.format
        if fmt is None:
            problems.append(f"{path}: cannot tell the preference format from columns {columns}: map them with "
                            "data.fields.prompt + chosen + rejected (pairs), prompt + completion + label (unpaired) "
                            "or prompt + doc + score|label (judgments)")
        elif fmt in registry.names(KIND):
            missing = registry.get(fmt).missing(mapped)
            problems += [f"{path}: format {fmt!r} needs a column for {' or '.join(m)} (map it with data.fields."
                         f"{m[0]})" for m in missing]
        if problems or fmt not in registry.names(KIND):
            return None, problems, []
        spec = registry.get(fmt)
        self._row_kinds.add(spec.row)
        good, bad = S.normalize_records(
            records, lambda rec: spec.normalize(S.canonical_record(rec, mapped), system_prompt=self.system_prompt),
            lambda i: record_location(path, i, read.numbers, read.unit),
            lambda field: (field, mapped.get((field or "").split("[")[0].split(".")[0])))
        rows = [{**row, "row": i, "source": record_location(path, i, read.numbers, read.unit), "_kind": spec.row}
                for i, row in good]
        return rows, [], bad

    # ----------------------------------------------------------------------------------- setup
    def setup(self, tokenizer: Any) -> dict[str, int]:
        """Read, normalize, hold out validation prompts, make pairs, tokenize; returns kept/dropped counts."""
        S.raise_config_problems(self._option_problems(), self.paths + self.val_paths)
        self._row_kinds = set()
        counts: dict[str, int] = {}
        rows = S.take(S.load_files(self.paths, self.limit, self._normalize_file), "train", self.on_bad_row, counts)
        val_rows = (S.take(S.load_files(self.val_paths, self.val_limit, self._normalize_file), "val", self.on_bad_row,
                           counts) if self.val_paths else None)
        problems = self._kind_problems()
        if problems:
            raise DataError("invalid data:\n  - " + "\n  - ".join(problems))
        if not rows:
            raise DataError(f"no training rows in {[str(p) for p in self.paths]} (counts: {counts})")
        if val_rows is None:
            n_val = self._val_count(len({r["group"] for r in rows}))
            rows, val_rows = S.split_off(rows, n_val, self.seed, group=lambda r: r["group"])
        self.paired = not (self.unpaired or (self.unpaired is None and self._row_kinds == {"unpaired"}))
        template = get_template(self.template, tokenizer) if resolve_encoding(self.encoding, tokenizer) == "chat" else None
        self.encoder = PreferenceEncoder(tokenizer, template, self.max_length, self.max_prompt_length,
                                         self.min_prompt_length, self.pair_sides)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else require_eos_id(tokenizer)
        self.stop_token_ids = stop_token_ids(template, tokenizer) if template is not None else ()
        self.train_dataset = self._examples(rows, "train", counts)
        self.val_dataset = self._examples(val_rows, "val", counts) if val_rows else None
        if not self.train_dataset:
            raise DataError(f"no training examples left from {[str(p) for p in self.paths]} (counts: {counts})")
        if self.val_dataset is None:
            S.warn_no_validation("preference data", "prompts", self.val_split)
        log.info("preference data (%s): %s", "paired" if self.paired else "unpaired",
                 ", ".join(f"{k}={v}" for k, v in counts.items()))
        return counts

    def _examples(self, rows: Sequence[dict], split: str, counts: dict[str, int]) -> list[dict]:
        judged = [r for r in rows if r["_kind"] == "judged"]
        pairs = [r for r in rows if r["_kind"] == "pair"]
        if judged:
            made, c = judgment_pairs(judged, margin_from_score=self.margin_from_score,
                                     margin_scale=float(self.margin_scale), max_pairs_per_group=self.max_pairs_per_group)
            pairs += made
            S.add_counts(counts, split, c)
        if self.paired:
            S.add_counts(counts, split, {"pairs": len(pairs)})
            items, encode = pairs, self._encode_pair
        else:
            items = unpair(pairs) + [r for r in rows if r["_kind"] == "unpaired"]
            S.add_counts(counts, split, {"completions": len(items)})
            encode = self._encode_unpaired
        out, dropped, memo = [], {}, {}
        for row in items:
            example, why = encode(row, memo)
            if why:
                dropped[f"dropped/{why}"] = dropped.get(f"dropped/{why}", 0) + 1
                continue
            out.append({**example, "id": len(out)})
        S.add_counts(counts, split, {**dropped, "kept": len(out)})
        if dropped:
            log.warning("preference data (%s): dropped %s", split, dropped)
        return out

    def _prompt(self, row: dict, memo: dict) -> tuple[str, list[int]]:
        key = ("prompt", json.dumps(row["prompt"], ensure_ascii=False))
        if key not in memo:
            memo[key] = self.encoder.prompt(row["prompt"])
        return memo[key]

    def _completion(self, row: dict, prompt_text: str, messages: list[dict], memo: dict) -> list[int]:
        key = (prompt_text, json.dumps(messages, ensure_ascii=False))
        if key not in memo:
            memo[key] = self.encoder.completion(row["prompt"], prompt_text, messages)
        return memo[key]

    def _encode_pair(self, row: dict, memo: dict) -> tuple[dict, str | None]:
        if _texts(row["chosen"]) == _texts(row["rejected"]):
            return {}, "same_completion"
        text, prompt = self._prompt(row, memo)
        chosen = self._completion(row, text, row["chosen"], memo)
        rejected = self._completion(row, text, row["rejected"], memo)
        # pair_sides: each text alone, whole (up to max_length), as the bi-encoder of the cosine prior reads it
        sides = {"prompt_side": prompt, "chosen_side": chosen, "rejected_side": rejected} if self.pair_sides else {}
        prompt, (chosen, rejected), why = self.encoder.fit(prompt, [chosen, rejected])
        if why is None and chosen == rejected:
            why = "same_completion"  # equal once truncated
        return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected, **sides,
                "margin": row.get("margin"), "group": row["group"], "source": row.get("source")}, why

    def _encode_unpaired(self, row: dict, memo: dict) -> tuple[dict, str | None]:
        text, prompt = self._prompt(row, memo)
        prompt, (completion,), why = self.encoder.fit(prompt, [self._completion(row, text, row["completion"], memo)])
        return {"prompt_ids": prompt, "completion_ids": completion, "label": bool(row["label"]),
                "group": row["group"], "source": row.get("source")}, why

    def lengths(self) -> list[int]:
        """Tokens of the longest sequence of each training example (for length-grouped batches)."""
        return [len(e["prompt_ids"]) + max(len(e.get("chosen_ids", e.get("completion_ids", []))),
                                           len(e.get("rejected_ids", []))) for e in self.train_dataset]

    # ----------------------------------------------------------------------------------- batches
    def collate(self, examples: Sequence[dict]) -> dict:
        """The batch contract (docs/INTERFACES.md, "Preference batches"): paired or unpaired."""
        if self.encoder is None:
            raise RuntimeError("call setup(tokenizer) before collate")
        fn = collate_paired if "chosen_ids" in examples[0] else collate_unpaired
        return fn(self.encoder, examples, self.pad_id, self.padding_side)


def _texts(messages: Sequence[dict]) -> list[tuple[str, str]]:
    return [(m["role"], (m["content"] or "").strip(), json.dumps(m.get("tool_calls") or [])) for m in messages]
