"""`CausalLMData`: the data object that `conf/data/*.yaml` instantiates for causal-LM objectives (kind ``chat``).

    data = CausalLMData(path="sft.jsonl", template="chatml", max_length=1024)
    problems = data.validate()        # no tokenizer: options, and every file read + checked row by row
    counts = data.setup(tokenizer)    # read -> normalize -> tokenize (cached) -> filter/pack
    batch = data.collate([data.train_dataset[i] for i in range(8)])

Reading, bad rows, the validation split and the cache are the skeleton every data source shares
(`medlab.data.source`); the formats are registered normalizers (`medlab.data.formats`). What is this class's
own: chat templates, assistant-only labels, truncation, CPT packing (`templates`, `tokenize`, `packing`) and
the padded / padding-free collate.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import datasets

from medlab.data import cache, registry
from medlab.data import source as S
from medlab.data.collate import collate_padded, collate_padding_free
from medlab.data.errors import DataError, bad_row_counts
from medlab.data.formats import (
    detect_format,
    field_mapping_problems,
    format_problems,
    mapped_columns,
    mapped_fields,
    normalize_collect,
)
from medlab.data.packing import pack_blocks
from medlab.data.readers import FileRecords, as_path_list
from medlab.data.split import held_out_count, split_option_problems
from medlab.data.templates import TEMPLATE_NAMES, get_template
from medlab.data.tokenize import MODES, TRUNCATION_POLICIES, require_eos_id, stop_token_ids, tokenize_dataset

log = logging.getLogger(__name__)
ROW_OF_MODE = {"sft": "messages", "cpt": "text"}  # what a format's rows must hold for each mode
CACHE_ARGS = ("val_split", "val_split_min", "val_split_max", "format", "fields", "mode", "template", "system_prompt",
              "max_length", "truncation", "on_bad_row", "limit", "seed")


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

    kind: ClassVar[str] = "chat"  # medlab.contracts.DataSource
    stop_token_ids: tuple[int, ...] = ()  # set by setup(): EOS + the chat template's end-of-turn token
    group_by_length = False  # chat rows keep random batches

    def __init__(
        self, path: str | Sequence[str], val_path: str | Sequence[str] | None = None, val_split: float = 0.0,
        val_split_min: int = 1, val_split_max: int | None = None, format: str = "auto",
        fields: Mapping[str, str] | None = None, mode: str = "sft", template: str = "chatml",
        system_prompt: str | None = None, max_length: int = 512, truncation: str = "truncate",
        on_bad_row: str = "error", packing: bool = False, batch_size: int = 8, val_batch_size: int | None = None,
        num_workers: int = 0, limit: int | None = None, cache_dir: str | None = None, seed: int = 0,
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
        splits = [(split, lambda paths=paths: S.load_files(paths, self.limit, self._normalize_file))
                  for split, paths in (("train", self.paths), ("val", self.val_paths)) if paths]
        with _no_progress_bars():  # a check, not work to watch
            problems, sizes = S.check_splits(splits, self.on_bad_row, left=_nothing_left_after_skip)
        self.val_size = S.validation_size(sizes, bool(self.val_paths), self._val_count)
        return self._option_problems() + problems

    def _option_problems(self) -> list[str]:
        formats = registry.names("chat")
        problems = S.choice_problems({
            "mode": (self.mode, MODES),
            "format": (self.format, ("auto", *formats)),
            "template": (self.template, TEMPLATE_NAMES),
            "truncation": (self.truncation, TRUNCATION_POLICIES),
            "on_bad_row": (self.on_bad_row, S.ON_BAD_ROW),
        })
        if not (isinstance(self.max_length, int) and self.max_length >= 2):
            problems.append(f"data.max_length must be an integer >= 2, got {self.max_length!r}")
        problems += split_option_problems(self.val_split, self.val_split_min, self.val_split_max)
        problems += S.positive_problems({"batch_size": self.batch_size, "val_batch_size": self.val_batch_size})
        problems += S.positive_problems({"limit": self.limit}, optional=True)
        if self.format in formats and not _mode_accepts(self.mode, self.format):
            problems.append(_mode_mismatch(self.mode, self.format))
        return problems

    def _val_count(self, n_rows: int) -> int:
        if self.val_paths or not isinstance(self.val_split, (int, float)):
            return 0
        return held_out_count(n_rows, float(self.val_split), self.val_split_min, self.val_split_max)

    def _normalize_file(self, read: FileRecords) -> tuple[datasets.Dataset | None, list[str], list]:
        """One file's rows normalized (`medlab.data.formats`): (rows, file problems, bad rows)."""
        problems, fmt = self._column_problems(read.path, read.dataset.column_names)
        if problems or not _mode_accepts(self.mode, fmt):
            return None, problems, []  # an explicit format that does not fit the mode is an option problem
        try:
            rows, _, bad = normalize_collect(read.dataset, fmt, fields=self.fields, file=str(read.path),
                                             system_prompt=self.system_prompt, numbers=read.numbers, unit=read.unit)
        except DataError as err:
            return None, [str(err)], []
        return rows, [], bad

    def _column_problems(self, path: Path, columns: list[str]) -> tuple[list[str], str]:
        """Problems of a file's columns against fields / format / mode, and the format it resolves to."""
        problems = [f"{path}: {p}" for p in field_mapping_problems(columns, self.fields)]
        columns = mapped_columns(columns, self.fields)
        fmt = detect_format(columns) if self.format == "auto" else self.format
        if fmt is None:
            return problems + [
                f"{path}: cannot detect the format from columns {columns}; set data.format and/or data.fields"
            ], "auto"
        if fmt not in registry.names("chat"):
            return problems, fmt  # reported with the options
        problems += [f"{path}: {p}" for p in format_problems(fmt, columns)]
        if self.format == "auto" and self.mode in MODES and not _mode_accepts(self.mode, fmt):
            problems.append(f"{path}: {_mode_mismatch(self.mode, fmt)}")
        return problems, fmt

    # ------------------------------------------------------------------------------------------ setup

    def setup(self, tokenizer: Any) -> dict[str, int]:
        """Read, normalize, tokenize (or load from cache), filter/pack; returns kept/dropped counts by reason."""
        S.raise_config_problems(self._option_problems(), self.paths + self.val_paths)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else require_eos_id(tokenizer)
        self.stop_token_ids = stop_token_ids(get_template(self.template, tokenizer) if self.mode == "sft" else None,
                                             tokenizer)
        entry = self._cache_entry(tokenizer)
        self.train_dataset, self.val_dataset, self.counts, hit = cache.load_or_build(entry, lambda: self._build(tokenizer))
        if hit:
            log.info("data: loaded tokenized data from cache %s", entry)
        if self.val_dataset is None:
            S.warn_no_validation("data", "rows", self.val_split)
        log.info("data: %s", ", ".join(f"{k}={v}" for k, v in sorted(self.counts.items())))
        return dict(self.counts)

    def normalized_rows(self, split: str = "val") -> list[dict]:
        """The normalized rows (before tokenization) of ``split``: ``train`` / ``val`` exactly as :meth:`setup`
        splits them (its ``val_path``, else the same ``val_split`` draw), ``all`` = every row of the ``path``
        files. For evaluations that answer the held-out rows themselves (tool routing)."""
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be train, val or all, got {split!r}")
        if split == "all":
            rows = self._rows(self.paths, "eval", {})
        else:
            train, val = self._split_rows({})
            rows = train if split == "train" else val
        return [] if rows is None else (rows.to_list() if hasattr(rows, "to_list") else list(rows))

    def _split_rows(self, counts: dict[str, int]) -> tuple[datasets.Dataset, datasets.Dataset | None]:
        train_rows = self._rows(self.paths, "train", counts)
        if self.val_paths:
            return train_rows, self._rows(self.val_paths, "val", counts)
        # rows in the drawn order, as `Dataset.train_test_split` gave them (runs reproduce their split)
        return S.split_off(train_rows, self._val_count(len(train_rows)), self.seed, shuffled=True)

    def _build(self, tokenizer: Any) -> tuple[datasets.Dataset, datasets.Dataset | None, dict[str, int]]:
        counts: dict[str, int] = {}
        train_rows, val_rows = self._split_rows(counts)
        template = get_template(self.template, tokenizer) if self.mode == "sft" else None
        if template is not None:
            _warn_if_end_of_turn_is_split(template, tokenizer)
        train = self._tokenized(train_rows, "train", tokenizer, template, counts)
        val = self._tokenized(val_rows, "val", tokenizer, template, counts) if val_rows is not None else None
        return train, val, counts

    def _rows(self, paths: list[Path], split: str, counts: dict[str, int]) -> datasets.Dataset:
        rows = S.take(S.load_files(paths, self.limit, self._normalize_file), split, self.on_bad_row, counts)
        if rows is None or len(rows) == 0:
            raise DataError(_nothing_left(split, counts))
        return rows

    def _tokenized(
        self, rows: datasets.Dataset, split: str, tokenizer: Any, template, counts: dict[str, int]
    ) -> datasets.Dataset:
        tokenized, dropped = tokenize_dataset(
            rows, tokenizer, mode=self.mode, template=template, max_length=self.max_length, truncation=self.truncation
        )
        S.add_counts(counts, split, dropped)
        if self.mode == "cpt":
            tokenized, packed = pack_blocks(tokenized, self.max_length, allow_short=split == "val")
            S.add_counts(counts, split, packed)
        if len(tokenized) == 0:
            raise DataError(f"no {split} examples left after tokenization: {S.split_counts(counts, split)}")
        S.add_counts(counts, split, {"kept": len(tokenized)})
        return tokenized.add_column("id", list(range(len(tokenized))), feature=datasets.Value("int64"))

    def _cache_entry(self, tokenizer: Any) -> Path | None:
        if self.cache_dir is None:
            return None
        template_source = get_template(self.template, tokenizer).source if self.mode == "sft" else None
        return cache.entry_path(self.cache_dir, {
            "train": cache.file_fingerprint(self.paths),
            "val": cache.file_fingerprint(self.val_paths),
            "args": {name: getattr(self, name) for name in CACHE_ARGS},
            "tokenizer": cache.tokenizer_fingerprint(tokenizer),
            "template": template_source,
        })

    # ------------------------------------------------------------------------------------------ batches

    def collate(self, examples: Sequence[dict]) -> dict:
        """Batch dict (docs/INTERFACES.md): padded, or padding-free when `packing` is on for SFT."""
        if self.pad_id is None:
            raise RuntimeError("call setup(tokenizer) before collate")
        if self.mode == "sft" and self.packing:
            return collate_padding_free(examples)
        return collate_padded(examples, self.pad_id)

    def lengths(self) -> list[int]:
        """Tokens per training example (for length-grouped batches)."""
        return [len(ids) for ids in self.train_dataset["input_ids"]]


def _paths(path: str | Sequence[str] | None) -> list[Path]:
    if path is None:
        raise DataError("data.path is required")
    return as_path_list(path if isinstance(path, (str, Path)) else list(path))


def _mode_accepts(mode: str, fmt: str) -> bool:
    if mode not in MODES:
        return True
    return fmt in registry.names("chat") and registry.get(fmt).row == ROW_OF_MODE[mode]


def _mode_mismatch(mode: str, fmt: str) -> str:
    if mode == "sft":
        chat = [name for name in registry.names("chat") if registry.get(name).row == "messages"]
        return (
            f"mode 'sft' needs chat rows ({', '.join(chat)}), but the format is {fmt!r}; use mode 'cpt' for plain text"
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
    return f"no {split} rows left after dropping bad rows: {S.split_counts(counts, split)}"


def _nothing_left_after_skip(split: str, loaded: S.Loaded) -> str | None:
    """validate(): with ``on_bad_row=skip``, a split whose bad rows were all its rows."""
    if not loaded.bad or (loaded.rows is not None and len(loaded.rows) > 0):
        return None
    counts = {f"{split}/read": loaded.read, **{f"{split}/{k}": v for k, v in bad_row_counts(loaded.bad).items()}}
    return _nothing_left(split, counts)
