"""`CausalLMData`: the data object that `conf/data/*.yaml` instantiates for causal-LM objectives.

    data = CausalLMData(path="sft.jsonl", template="chatml", max_length=1024)
    problems = data.validate()        # no tokenizer: options, and every file read + checked row by row
    counts = data.setup(tokenizer)    # read -> normalize -> tokenize (cached) -> filter/pack
    batch = data.collate([data.train_dataset[i] for i in range(8)])

The pipeline itself lives in small functions (readers, formats, templates, tokenize, packing, collate);
this class only holds the settings and wires them together.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import datasets

from medlab.data import cache
from medlab.data.collate import collate_padded, collate_padding_free
from medlab.data.errors import BadRow, DataError, bad_row_problems, describe_bad_rows
from medlab.data.formats import (
    CHAT_FORMATS,
    FORMATS,
    bad_row_counts,
    detect_format,
    field_mapping_problems,
    format_problems,
    mapped_columns,
    mapped_fields,
    normalize_collect,
)
from medlab.data.packing import pack_blocks
from medlab.data.readers import as_path_list, check_exists, read_located
from medlab.data.split import held_out_count, split_option_problems
from medlab.data.templates import TEMPLATE_NAMES, get_template
from medlab.data.tokenize import MODES, TRUNCATION_POLICIES, require_eos_id, tokenize_dataset

log = logging.getLogger(__name__)


class CausalLMData:
    """Settings + pipeline for SFT (chat rows, assistant-only loss) and CPT (text, packed blocks).

    Args:
        path: data file(s) or saved-dataset dir(s); a list is concatenated.
        val_path: validation file(s); if None and `val_split > 0`, that fraction of the rows is held out
            with a fixed seed (split before tokenization/packing, so no document is in both), at least
            `val_split_min` rows (never more than a quarter of a small file) and at most `val_split_max`
            (null = no cap); see `medlab.data.split`.
        format: `auto` (detect from columns) or one of alpaca, sharegpt, openai, toolcall, text.
        fields: rename user columns to canonical ones, e.g. `{instruction: question, output: answer}`; a null
            value means "not mapped" (the canonical column name is used).
        mode: `sft` (chat rows, train on assistant turns) or `cpt` (text rows, train on everything).
        template: chat template name (chatml, llama3, chatglm3, baichuan2, deepseek) or `tokenizer`.
        system_prompt: system message inserted into rows that have none (None = leave rows as they are).
        max_length: longest SFT example / CPT block length, in tokens.
        truncation: `truncate` (cut, keep EOS) or `drop` for SFT rows longer than max_length.
        on_bad_row: `error` (raise listing the bad rows) or `skip` (drop them, counted). Lines that do not
            parse at all (not JSON, not UTF-8, ...) are bad rows too (reason `unparsable`).
        packing: SFT only: padding-free collation (examples concatenated into one row). CPT is always packed.
        limit: use only the first N rows of the train (and val) data, for smoke tests.
        cache_dir: where tokenized datasets are cached (None = no cache).
    """

    def __init__(
        self,
        path: str | Sequence[str],
        val_path: str | Sequence[str] | None = None,
        val_split: float = 0.0,
        val_split_min: int = 1,
        val_split_max: int | None = None,
        format: str = "auto",
        fields: Mapping[str, str] | None = None,
        mode: str = "sft",
        template: str = "chatml",
        system_prompt: str | None = None,
        max_length: int = 512,
        truncation: str = "truncate",
        on_bad_row: str = "error",
        packing: bool = False,
        batch_size: int = 8,
        val_batch_size: int | None = None,
        num_workers: int = 0,
        limit: int | None = None,
        cache_dir: str | None = None,
        seed: int = 0,
    ):
        self.paths = _paths(path)
        self.val_paths = _paths(val_path) if val_path else []
        self.val_split = val_split
        self.val_split_min, self.val_split_max = val_split_min, val_split_max
        self.format = format
        self.fields = mapped_fields(fields) or None  # null entries = not mapped
        self.mode = mode
        self.template = template
        self.system_prompt = system_prompt
        self.max_length = max_length
        self.truncation = truncation
        self.on_bad_row = on_bad_row
        self.packing = bool(packing)
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size or batch_size
        self.num_workers = num_workers
        self.limit = limit
        self.cache_dir = cache_dir
        self.seed = seed
        self.train_dataset: datasets.Dataset | None = None
        self.val_dataset: datasets.Dataset | None = None
        self.counts: dict[str, int] = {}
        self.pad_id: int | None = None
        self.val_size: int | None = None  # validation rows, known after validate() (0 = no validation)

    # ------------------------------------------------------------------------------------------ checks

    def validate(self) -> list[str]:
        """Every problem found without a tokenizer; [] if none.

        Options, then every file read in full: unparsable lines, columns vs format/fields/mode, and each row
        checked as setup would (with `on_bad_row=error` every bad row is a problem). Sets `val_size`.
        """
        problems = self._option_problems()
        counts: dict[str, int] = {}
        sizes = {}
        for split, paths in (("train", self.paths), ("val", self.val_paths)):
            if not paths:
                continue
            with _no_progress_bars():  # a check, not work to watch
                rows, file_problems, bad = self._load(paths, split, counts)
            problems += file_problems
            if bad and self.on_bad_row != "skip":
                problems += bad_row_problems(bad)
            elif bad and (rows is None or len(rows) == 0):  # on_bad_row=skip dropped everything
                problems.append(_nothing_left(split, counts))
            sizes[split] = len(rows) if rows is not None else None
        if self.val_paths:
            self.val_size = sizes.get("val")
        elif sizes.get("train") is not None:
            self.val_size = self._val_count(sizes["train"])
        return problems

    def _option_problems(self) -> list[str]:
        problems = []
        choices = {
            "mode": (self.mode, MODES),
            "format": (self.format, ("auto", *FORMATS)),
            "template": (self.template, TEMPLATE_NAMES),
            "truncation": (self.truncation, TRUNCATION_POLICIES),
            "on_bad_row": (self.on_bad_row, ("error", "skip")),
        }
        for name, (value, allowed) in choices.items():
            if value not in allowed:
                problems.append(f"data.{name}={value!r} is not one of {', '.join(allowed)}")
        if not (isinstance(self.max_length, int) and self.max_length >= 2):
            problems.append(f"data.max_length must be an integer >= 2, got {self.max_length!r}")
        problems += split_option_problems(self.val_split, self.val_split_min, self.val_split_max)
        for name in ("batch_size", "val_batch_size"):
            if not (isinstance(getattr(self, name), int) and getattr(self, name) >= 1):
                problems.append(f"data.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.limit is not None and not (isinstance(self.limit, int) and self.limit >= 1):
            problems.append(f"data.limit must be a positive integer or null, got {self.limit!r}")
        if self.format in FORMATS and not _mode_accepts(self.mode, self.format):
            problems.append(_mode_mismatch(self.mode, self.format))
        return problems

    def _val_count(self, n_rows: int) -> int:
        if self.val_paths or not isinstance(self.val_split, (int, float)):
            return 0
        return held_out_count(n_rows, float(self.val_split), self.val_split_min, self.val_split_max)

    def _load(
        self, paths: list[Path], split: str, counts: dict[str, int]
    ) -> tuple[datasets.Dataset | None, list[str], list[BadRow]]:
        """Read and normalize the files of one split: (good rows, file problems, bad rows); the caller applies
        `on_bad_row`. File problems: missing/unreadable files, columns that fit no format, fields or mode."""
        parts, problems, bad, remaining = [], [], [], self.limit
        for path in paths:
            if remaining == 0:
                break
            try:
                read = read_located(path, limit=remaining)
            except DataError as err:
                problems.append(str(err))
                continue
            raw = read.dataset
            if remaining is not None:
                remaining -= len(raw)
            bad += read.unparsable
            _add(counts, split, {"read": len(raw), **bad_row_counts(read.unparsable)})
            if len(raw) == 0:
                continue  # nothing parsed: the unparsable lines say why
            file_problems, fmt = self._column_problems(path, raw.column_names)
            if file_problems or not _mode_accepts(self.mode, fmt):
                problems += file_problems  # an explicit format that does not fit the mode is an option problem
                continue
            try:
                rows, fmt, row_bad = normalize_collect(
                    raw,
                    fmt,
                    fields=self.fields,
                    file=str(path),
                    system_prompt=self.system_prompt,
                    numbers=read.numbers,
                    unit=read.unit,
                )
            except DataError as err:
                problems.append(str(err))
                continue
            bad += row_bad
            _add(counts, split, bad_row_counts(row_bad))
            parts.append(rows)
        rows = None
        if parts:
            rows = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        return rows, problems, bad

    def _column_problems(self, path: Path, columns: list[str]) -> tuple[list[str], str]:
        """Problems of a file's columns against fields / format / mode, and the format it resolves to."""
        problems = [f"{path}: {p}" for p in field_mapping_problems(columns, self.fields)]
        columns = mapped_columns(columns, self.fields)
        fmt = detect_format(columns) if self.format == "auto" else self.format
        if fmt is None:
            return problems + [
                f"{path}: cannot detect the format from columns {columns}; set data.format and/or data.fields"
            ], "auto"
        if fmt not in FORMATS:
            return problems, fmt  # reported with the options
        problems += [f"{path}: {p}" for p in format_problems(fmt, columns)]
        if self.format == "auto" and self.mode in MODES and not _mode_accepts(self.mode, fmt):
            problems.append(f"{path}: {_mode_mismatch(self.mode, fmt)}")
        return problems, fmt

    # ------------------------------------------------------------------------------------------ setup

    def setup(self, tokenizer: Any) -> dict[str, int]:
        """Read, normalize, tokenize (or load from cache), filter/pack; returns kept/dropped counts by reason."""
        problems = self._option_problems()
        for path in self.paths + self.val_paths:
            try:
                check_exists(path)
            except DataError as err:
                problems.append(str(err))
        if problems:
            raise DataError("invalid data config:\n  - " + "\n  - ".join(problems))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else require_eos_id(tokenizer)
        entry = self._cache_entry(tokenizer)
        cached = cache.load_entry(entry) if entry is not None else None
        if cached is not None:
            self.train_dataset, self.val_dataset, self.counts = cached
            log.info("data: loaded tokenized data from cache %s", entry)
        else:
            self.train_dataset, self.val_dataset, self.counts = self._build(tokenizer)
            if entry is not None:
                cache.save_entry(entry, self.train_dataset, self.val_dataset, self.counts)
        if self.val_dataset is None:
            log.warning("data: no validation rows (data.val_path is not set and data.val_split=%s holds out none): "
                        "nothing is validated, so a val/ metric stays NaN", self.val_split)
        log.info("data: %s", ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())))
        return dict(self.counts)

    def _build(self, tokenizer: Any) -> tuple[datasets.Dataset, datasets.Dataset | None, dict[str, int]]:
        counts: dict[str, int] = {}
        train_rows = self._rows(self.paths, "train", counts)
        if self.val_paths:
            val_rows = self._rows(self.val_paths, "val", counts)
        else:
            n_val = self._val_count(len(train_rows))
            train_rows, val_rows = _hold_out(train_rows, n_val, self.seed) if n_val else (train_rows, None)
        template = get_template(self.template, tokenizer) if self.mode == "sft" else None
        if template is not None:
            _warn_if_end_of_turn_is_split(template, tokenizer)
        train = self._tokenized(train_rows, "train", tokenizer, template, counts)
        val = self._tokenized(val_rows, "val", tokenizer, template, counts) if val_rows is not None else None
        return train, val, counts

    def _rows(self, paths: list[Path], split: str, counts: dict[str, int]) -> datasets.Dataset:
        rows, problems, bad = self._load(paths, split, counts)
        if problems:
            raise DataError("invalid data:\n  - " + "\n  - ".join(problems))
        if bad and self.on_bad_row != "skip":
            raise DataError(describe_bad_rows(bad))
        if bad:
            _log_dropped(bad)
        if rows is None or len(rows) == 0:
            raise DataError(_nothing_left(split, counts))
        return rows

    def _tokenized(
        self, rows: datasets.Dataset, split: str, tokenizer: Any, template, counts: dict[str, int]
    ) -> datasets.Dataset:
        tokenized, dropped = tokenize_dataset(
            rows, tokenizer, mode=self.mode, template=template, max_length=self.max_length, truncation=self.truncation
        )
        _add(counts, split, dropped)
        if self.mode == "cpt":
            tokenized, packed = pack_blocks(tokenized, self.max_length, allow_short=split == "val")
            _add(counts, split, packed)
        if len(tokenized) == 0:
            raise DataError(f"no {split} examples left after tokenization: {_split_counts(counts, split)}")
        _add(counts, split, {"kept": len(tokenized)})
        return tokenized.add_column("id", list(range(len(tokenized))), feature=datasets.Value("int64"))

    def _cache_entry(self, tokenizer: Any) -> Path | None:
        if self.cache_dir is None:
            return None
        template_source = get_template(self.template, tokenizer).source if self.mode == "sft" else None
        key = cache.cache_key(
            {
                "train": cache.file_fingerprint(self.paths),
                "val": cache.file_fingerprint(self.val_paths),
                "args": {
                    name: getattr(self, name)
                    for name in (
                        "val_split",
                        "val_split_min",
                        "val_split_max",
                        "format",
                        "fields",
                        "mode",
                        "template",
                        "system_prompt",
                        "max_length",
                        "truncation",
                        "on_bad_row",
                        "limit",
                        "seed",
                    )
                },
                "tokenizer": cache.tokenizer_fingerprint(tokenizer),
                "template": template_source,
            }
        )
        return Path(self.cache_dir) / "tokenized" / key

    # ------------------------------------------------------------------------------------------ batches

    def collate(self, examples: Sequence[dict]) -> dict:
        """Batch dict (docs/INTERFACES.md): padded, or padding-free when `packing` is on for SFT."""
        if self.pad_id is None:
            raise RuntimeError("call setup(tokenizer) before collate")
        if self.mode == "sft" and self.packing:
            return collate_padding_free(examples)
        return collate_padded(examples, self.pad_id)


def _paths(path: str | Sequence[str] | None) -> list[Path]:
    if path is None:
        raise DataError("data.path is required")
    return as_path_list(path if isinstance(path, (str, Path)) else list(path))


def _mode_accepts(mode: str, fmt: str) -> bool:
    return (mode == "sft" and fmt in CHAT_FORMATS) or (mode == "cpt" and fmt == "text") or mode not in MODES


def _mode_mismatch(mode: str, fmt: str) -> str:
    if mode == "sft":
        return (
            f"mode 'sft' needs chat rows (alpaca, sharegpt, openai, toolcall), but the format is {fmt!r}; "
            "use mode 'cpt' for plain text"
        )
    return f"mode 'cpt' needs text rows, but the format is {fmt!r}; use mode 'sft' for chat data"


def _warn_if_end_of_turn_is_split(template, tokenizer: Any) -> None:
    if len(tokenizer.encode(template.end_of_turn, add_special_tokens=False)) != 1:
        log.warning(
            "data: template %r ends answers with %r, which this tokenizer splits into several tokens: the model "
            "will not learn a single stop token (pick the template that matches the model, or `tokenizer`)",
            template.name,
            template.end_of_turn,
        )


def _hold_out(rows: datasets.Dataset, n_val: int, seed: int) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split off `n_val` rows (`medlab.data.split.held_out_count`) with a fixed seed."""
    split = rows.train_test_split(test_size=n_val, seed=seed, shuffle=True, keep_in_memory=True)
    return split["train"], split["test"]


def _log_dropped(bad: Sequence[BadRow]) -> None:
    for (file, reason), n in Counter((b.where.rsplit(" ", 2)[0], b.reason) for b in bad).items():
        example = next(b for b in bad if b.reason == reason and b.where.startswith(file))
        log.warning("data: %s: dropped %d bad row(s): %s (e.g. %s)", file, n, reason, example)


@contextlib.contextmanager
def _no_progress_bars():
    disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not disabled:
            datasets.enable_progress_bars()


def _nothing_left(split: str, counts: dict[str, int]) -> str:
    return f"no {split} rows left after dropping bad rows: {_split_counts(counts, split)}"


def _add(counts: dict[str, int], split: str, values: Mapping[str, int]) -> None:
    for key, value in values.items():
        counts[f"{split}/{key}"] = counts.get(f"{split}/{key}", 0) + int(value)


def _split_counts(counts: dict[str, int], split: str) -> dict[str, int]:
    return {k: v for k, v in counts.items() if k.startswith(f"{split}/")}
