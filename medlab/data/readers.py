"""Read local data files into a `datasets.Dataset`, with errors that name the file and line.

Why not `datasets.load_dataset("json", ...)`: its errors do not say which line is broken, it writes a
copy of every file into the HF cache, and it can reach for the hub. Here each file type is read
directly, nested JSON values are stored with the `Json` feature (so every row comes back exactly as
written: arrow would otherwise merge the dict keys of all rows and fill the gaps with None), and
everything fails with a `DataError` a user can act on.

Supported: `.jsonl`, `.json` (a list of records, a dict of columns, or JSON lines), `.csv`, `.parquet`,
`.txt` (one `text` row per non-empty line) and directories written by `Dataset.save_to_disk`.

`read_located` is the lenient reader the data classes use: a line (or record) that cannot be parsed (not
JSON, not an object, not UTF-8, more CSV fields than the header) does not stop the read; it comes back as
a `BadRow` (reason `unparsable`) beside the records that did parse, with each record's 1-based line in the
file (line-oriented files) so later row checks can name the same line. Problems with the whole file
(missing, empty, unreadable parquet, a `.json` document that is not JSON) raise `DataError`.
`read_records` / `read_file` are strict: any unparsable line raises, listing every one of them.
Positions follow `medlab.data.errors` ("line N" = line of the file, "row N" = N-th record; from 1).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import pyarrow as pa

from medlab.data.errors import UNPARSABLE, BadRow, DataError, describe_bad_rows, json_error, located, record_location

FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


@dataclass
class FileRecords:
    """One file read by `read_located`.

    `dataset`: the records that parsed; `numbers`: the 1-based position of each of them in the file, in `unit`s
    (`"line"`: line-oriented files; `"row"`: the N-th record of a .json list; None = records 1, 2, ... as rows);
    `unparsable`: the lines/records that could not be parsed, in file order.
    """

    path: Path
    dataset: datasets.Dataset
    numbers: list[int] | None = None
    unit: str = "line"
    unparsable: list[BadRow] = field(default_factory=list)

    @property
    def lines(self) -> list[int] | None:
        """The 1-based line of each record (line-oriented files), else None."""
        return self.numbers if self.unit == "line" else None

    def where(self, index: int) -> str:
        """``"FILE line N"`` / ``"FILE row N"`` of the record at 0-based `index` of `dataset`."""
        return record_location(self.path, index, self.numbers, self.unit)


def as_path_list(path: str | Path | Iterable[str | Path]) -> list[Path]:
    """`path` as a list of paths (a single path or any iterable of them, e.g. an OmegaConf ListConfig)."""
    if isinstance(path, (str, Path)):
        return [Path(path)]
    paths = [Path(p) for p in path]
    if not paths:
        raise DataError("no data path given (an empty list)")
    return paths


def read_records(
    path: str | Path | Iterable[str | Path], *, split: str | None = None, skip_unparsable: bool = False
) -> datasets.Dataset:
    """Read one file, a saved dataset directory, or a list of them (concatenated in order).

    `split` picks the split of a saved `DatasetDict` directory (default: `train`, or its only split).
    Raises `DataError` for a missing, empty or unparseable file; with `skip_unparsable` the lines that do
    not parse are left out instead (as `data.on_bad_row=skip` does).
    """
    parts = [read_file(p, split=split, skip_unparsable=skip_unparsable) for p in as_path_list(path)]
    if len(parts) == 1:
        return parts[0]
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as err:
        columns = {str(p): ds.column_names for p, ds in zip(as_path_list(path), parts)}
        raise DataError(f"cannot concatenate files with different columns {columns}: {err}") from None


def read_file(path: str | Path, *, split: str | None = None, skip_unparsable: bool = False) -> datasets.Dataset:
    """Read one file or saved-dataset directory (see `read_records`)."""
    result = read_located(path, split=split)
    if result.unparsable and not skip_unparsable:
        raise DataError(describe_bad_rows(result.unparsable))
    if len(result.dataset) == 0:
        raise DataError(f"{result.path}: no record could be parsed")
    return result.dataset


def read_located(path: str | Path, *, split: str | None = None, limit: int | None = None) -> FileRecords:
    """Read one file leniently (see the module docstring); `limit` stops after that many parsed records."""
    path = Path(path)
    check_exists(path)
    if path.is_dir():
        result = FileRecords(path, _read_saved(path, split))
    else:
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"{path}: unsupported file type {path.suffix!r} (supported: {', '.join(FILE_TYPES)})")
        result = reader(path, limit)
    if limit is not None and len(result.dataset) > limit:
        result.dataset = result.dataset.select(range(limit))
        result.numbers = result.numbers[:limit] if result.numbers is not None else None
    if len(result.dataset) == 0 and not result.unparsable:
        raise DataError(f"{path}: contains no records")
    return result


def check_exists(path: Path) -> None:
    """Raise `DataError` unless `path` is a non-empty file or a directory."""
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def peek_records(path: str | Path, n: int = 5) -> list[dict]:
    """The first `n` records of one file, read cheaply (unparsable lines are passed over)."""
    path = Path(path)
    check_exists(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet" and path.is_file():
        return _read_parquet_head(path, n)
    if path.is_dir() or suffix in (".jsonl", ".txt", ".csv"):
        dataset = read_located(path, limit=n).dataset
    else:
        dataset = read_file(path)
    return dataset.select(range(min(n, len(dataset)))).to_list()


def records_to_dataset(records: list[dict]) -> datasets.Dataset:
    """Build a Dataset from python records; nested values (lists, dicts) and mixed-type columns become `Json`."""
    columns: dict[str, None] = {}
    for record in records:
        columns.update(dict.fromkeys(record))  # every key of every row (a key may first appear late)
    data = {column: [record.get(column) for record in records] for column in columns}
    features = datasets.Features(dict(_infer_column(column, values) for column, values in data.items()))
    return datasets.Dataset.from_dict(data, features=features)


def _infer_column(column: str, values: list) -> tuple[str, object]:
    if any(isinstance(v, (list, dict)) for v in values):
        return column, datasets.Json()
    try:
        arrow_type = pa.array(values).type
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return column, datasets.Json()
    if pa.types.is_null(arrow_type):
        arrow_type = pa.string()
    return column, datasets.Features.from_arrow_schema(pa.schema([(column, arrow_type)]))[column]


# ---------------------------------------------------------------------------------------------- text lines


def _lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(1-based line number, the line without its line end, None) or (number, None, why) for a non-UTF-8 line.

    Lines are split as text mode with ``newline=""`` does (on \\n, \\r\\n and \\r); a UTF-8 BOM is dropped.
    """
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        for lineno, line in enumerate(handle, start=1):
            if lineno == 1 and line.startswith("\ufeff"):
                line = line[1:]
            line = line.rstrip("\r\n")
            bad = _not_utf8(line)
            yield (lineno, None, bad) if bad else (lineno, line, None)


def _not_utf8(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:  # undecodable bytes come back as lone surrogates (surrogateescape)
        return f"not UTF-8 text (an invalid byte at column {err.start + 1}; save the file as UTF-8)"
    return None


def _parse_json_line(text: str) -> tuple[dict | None, str | None]:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"not valid JSON ({json_error(err)})"
    if not isinstance(record, dict):
        return None, f"a JSON {type(record).__name__}, expected an object"
    return record, None


def _jsonl(path: Path, limit: int | None) -> FileRecords:
    records, lines, bad = [], [], []
    for lineno, text, why in _lines(path):
        if limit is not None and len(records) >= limit:
            break
        if text is not None and not text.strip():
            continue
        record, why = _parse_json_line(text) if why is None else (None, why)
        if why is not None:
            bad.append(BadRow(located(path, line=lineno), None, why, UNPARSABLE))
            continue
        records.append(record)
        lines.append(lineno)
    return FileRecords(path, records_to_dataset(records), lines, "line", bad)


def _txt(path: Path, limit: int | None) -> FileRecords:
    texts, lines, bad = [], [], []
    for lineno, text, why in _lines(path):
        if limit is not None and len(texts) >= limit:
            break
        if why is not None:
            bad.append(BadRow(located(path, line=lineno), None, why, UNPARSABLE))
        elif text.strip():
            texts.append(text)
            lines.append(lineno)
    if not texts and not bad:
        raise DataError(f"{path}: contains no non-empty lines")
    return FileRecords(path, datasets.Dataset.from_dict({"text": texts}), lines, "line", bad)


def _json(path: Path, limit: int | None) -> FileRecords:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start}); save the file as UTF-8") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON lines saved with a .json name
            return _jsonl(path, limit)
        raise DataError(
            f"{located(path, line=err.lineno)}: not valid JSON ({json_error(err)}; line numbers count from 1); "
            "a .json file is one JSON document, so nothing of it can be read (one record per line: use .jsonl)"
        ) from None
    records, rows, bad = _json_records(path, data)
    if limit is not None:
        records, rows = records[:limit], rows[:limit] if rows is not None else None
    return FileRecords(path, records_to_dataset(records), rows, "row", bad)


def _json_records(path: Path, data) -> tuple[list[dict], list[int] | None, list[BadRow]]:
    """(records, the 1-based record number of each when some were left out, else None, bad records)."""
    if isinstance(data, list):
        records, rows, bad = [], [], []
        for index, record in enumerate(data):
            if isinstance(record, dict):
                records.append(record)
                rows.append(index + 1)
            else:
                why = f"a JSON {type(record).__name__}, expected an object"
                bad.append(BadRow(located(path, row=index + 1), None, why, UNPARSABLE))
        return records, rows if bad else None, bad
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
            return [dict(zip(lists, row)) for row in zip(*lists.values())], None, []  # a dict of columns
        if len(lists) == 1:
            return _json_records(path, next(iter(lists.values())))  # {"data": [records...]}
    raise DataError(f"{path}: expected a JSON list of records or a dict of equal-length columns")


def _csv(path: Path, limit: int | None) -> FileRecords:
    records, lines, bad = [], [], []
    header: list[str] | None = None
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as handle:
        reader = csv.reader(handle)
        while limit is None or len(records) < limit:
            start = reader.line_num + 1  # the line this record starts on
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as err:
                bad.append(BadRow(located(path, line=start), None, f"not valid CSV ({err})", UNPARSABLE))
                if reader.line_num < start:  # nothing consumed: stop rather than loop
                    break
                continue
            if not row:
                continue  # a blank line
            why = next((w for w in map(_not_utf8, row) if w), None)
            if header is None:
                if why:
                    raise DataError(f"{located(path, line=start)}: the CSV header is {why}")
                header = [row[0].removeprefix("\ufeff"), *row[1:]]
                continue
            if why is None and len(row) > len(header):
                why = f"{len(row)} fields, more than the {len(header)} of the header"
            if why is not None:
                bad.append(BadRow(located(path, line=start), None, why, UNPARSABLE))
                continue
            records.append(dict(zip(header, row + [None] * (len(header) - len(row)))))
            lines.append(start)
    if not records and not bad:
        raise DataError(f"{path}: contains no records (only a header?)")
    dataset = datasets.Dataset.from_list(records) if records else datasets.Dataset.from_dict({})
    return FileRecords(path, dataset, lines, "line", bad)


def _parquet(path: Path, limit: int | None) -> FileRecords:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from None
    return FileRecords(path, datasets.Dataset(table))


def _read_parquet_head(path: Path, n: int) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=n), None)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from None
    return [] if batch is None else batch.to_pylist()


def _read_saved(path: Path, split: str | None) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise DataError(f"{path}: a directory, but not one written by Dataset.save_to_disk ({err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        return _pick_split(path, loaded, split)
    if split is not None and loaded.split is not None and str(loaded.split) != split:
        raise DataError(f"{path}: holds split {loaded.split!r}, not {split!r}")
    return loaded


def _pick_split(path: Path, splits: datasets.DatasetDict, split: str | None) -> datasets.Dataset:
    if split is None:
        split = "train" if "train" in splits or len(splits) != 1 else next(iter(splits))
    if split not in splits:
        raise DataError(f"{path}: no split {split!r} (has {sorted(splits)})")
    return splits[split]


_READERS = {
    ".jsonl": _jsonl,
    ".json": _json,
    ".csv": _csv,
    ".parquet": _parquet,
    ".txt": _txt,
}
