"""Read local data files into a `datasets.Dataset`, with errors that name the file and line.

Why not `datasets.load_dataset("json", ...)`: its errors do not say which line is broken, it writes a
copy of every file into the HF cache, and it can reach for the hub. Here each file type is read
directly, nested JSON values are stored with the `Json` feature (so every row comes back exactly as
written: arrow would otherwise merge the dict keys of all rows and fill the gaps with None), and
everything fails with a `DataError` a user can act on.

Supported: `.jsonl`, `.json` (a list of records, a dict of columns, or JSON lines), `.csv`, `.parquet`,
`.txt` (one `text` row per non-empty line) and directories written by `Dataset.save_to_disk`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from pathlib import Path

import datasets
import pyarrow as pa

from medlab.data.errors import DataError

FILE_TYPES = (".jsonl", ".json", ".csv", ".parquet", ".txt")


def as_path_list(path: str | Path | Iterable[str | Path]) -> list[Path]:
    """`path` as a list of paths (a single path or any iterable of them, e.g. an OmegaConf ListConfig)."""
    if isinstance(path, (str, Path)):
        return [Path(path)]
    paths = [Path(p) for p in path]
    if not paths:
        raise DataError("no data path given (an empty list)")
    return paths


def read_records(path: str | Path | Iterable[str | Path], *, split: str | None = None) -> datasets.Dataset:
    """Read one file, a saved dataset directory, or a list of them (concatenated in order).

    `split` picks the split of a saved `DatasetDict` directory (default: `train`, or its only split).
    Raises `DataError` for a missing, empty or unparseable file.
    """
    parts = [read_file(p, split=split) for p in as_path_list(path)]
    if len(parts) == 1:
        return parts[0]
    try:
        return datasets.concatenate_datasets(parts)
    except ValueError as err:
        columns = {str(p): ds.column_names for p, ds in zip(as_path_list(path), parts)}
        raise DataError(f"cannot concatenate files with different columns {columns}: {err}") from None


def read_file(path: str | Path, *, split: str | None = None) -> datasets.Dataset:
    """Read one file or saved-dataset directory (see `read_records`)."""
    path = Path(path)
    check_exists(path)
    if path.is_dir():
        dataset = _read_saved(path, split)
    else:
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise DataError(f"{path}: unsupported file type {path.suffix!r} (supported: {', '.join(FILE_TYPES)})")
        dataset = reader(path)
    if len(dataset) == 0:
        raise DataError(f"{path}: contains no records")
    return dataset


def check_exists(path: Path) -> None:
    """Raise `DataError` unless `path` is a non-empty file or a directory."""
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path}: file is empty")


def peek_records(path: str | Path, n: int = 5) -> list[dict]:
    """The first `n` records of one file, read cheaply (for config validation before any tokenizer loads)."""
    path = Path(path)
    check_exists(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        dataset = _read_saved(path, None)
        return dataset.select(range(min(n, len(dataset)))).to_list()
    if suffix == ".jsonl":
        return _first(_iter_jsonl(path), n)
    if suffix == ".txt":
        return _first(({"text": line} for line in _iter_text_lines(path)), n)
    if suffix == ".csv":
        return _first(_iter_csv(path), n)
    if suffix == ".parquet":
        return _read_parquet_head(path, n)
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


def _first(items: Iterator[dict], n: int) -> list[dict]:
    out: list[dict] = []
    if n <= 0:
        return out
    for item in items:
        out.append(item)
        if len(out) >= n:
            break
    return out


def _open_text(path: Path):
    return open(path, encoding="utf-8", newline="")


def _decode_guard(path: Path, fn):
    try:
        return fn()
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _iter_jsonl(path: Path) -> Iterator[dict]:
    with _open_text(path) as handle:
        for lineno, line in enumerate(_decode_lines(path, handle), start=1):
            if line.strip():
                yield _parse_json_line(path, lineno, line)


def _decode_lines(path: Path, handle) -> Iterator[str]:
    try:
        yield from handle
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None


def _parse_json_line(path: Path, lineno: int, line: str) -> dict:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: line {lineno} is not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: line {lineno} is a JSON {type(record).__name__}, expected an object")
    return record


def _read_jsonl(path: Path) -> datasets.Dataset:
    return records_to_dataset(list(_iter_jsonl(path)))


def _read_json(path: Path) -> datasets.Dataset:
    text = _decode_guard(path, lambda: path.read_text(encoding="utf-8"))
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if err.msg == "Extra data":  # JSON lines saved with a .json name
            return _read_jsonl(path)
        raise DataError(f"{path}: line {err.lineno} is not valid JSON ({err.msg} at column {err.colno})") from None
    return records_to_dataset(_json_records(path, data))


def _json_records(path: Path, data) -> list[dict]:
    if isinstance(data, list):
        for index, record in enumerate(data):
            if not isinstance(record, dict):
                raise DataError(f"{path}: record {index} is a JSON {type(record).__name__}, expected an object")
        return data
    if isinstance(data, dict):
        lists = {k: v for k, v in data.items() if isinstance(v, list)}
        if lists and len(lists) == len(data) and len({len(v) for v in lists.values()}) == 1:
            return [dict(zip(lists, row)) for row in zip(*lists.values())]  # a dict of columns
        if len(lists) == 1 and all(isinstance(r, dict) for r in next(iter(lists.values()))):
            return next(iter(lists.values()))  # {"data": [records...]}
    raise DataError(f"{path}: expected a JSON list of records or a dict of equal-length columns")


def _iter_csv(path: Path) -> Iterator[dict]:
    with _open_text(path) as handle:
        reader = csv.DictReader(_decode_lines(path, handle))
        try:
            for record in reader:
                if None in record:
                    raise DataError(f"{path}: line {reader.line_num} has more fields than the header")
                yield record
        except csv.Error as err:
            raise DataError(f"{path}: line {reader.line_num} is not valid CSV ({err})") from None


def _read_csv(path: Path) -> datasets.Dataset:
    records = list(_iter_csv(path))
    if not records:
        raise DataError(f"{path}: contains no records (only a header?)")
    return datasets.Dataset.from_list(records)


def _read_parquet(path: Path) -> datasets.Dataset:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from None
    return datasets.Dataset(table)


def _read_parquet_head(path: Path, n: int) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        batch = next(pq.ParquetFile(path).iter_batches(batch_size=n), None)
    except (pa.ArrowInvalid, OSError) as err:
        raise DataError(f"{path}: not a readable parquet file ({err})") from None
    return [] if batch is None else batch.to_pylist()


def _iter_text_lines(path: Path) -> Iterator[str]:
    with _open_text(path) as handle:
        for line in _decode_lines(path, handle):
            line = line.rstrip("\r\n")
            if line.strip():
                yield line


def _read_txt(path: Path) -> datasets.Dataset:
    lines = list(_iter_text_lines(path))
    if not lines:
        raise DataError(f"{path}: contains no non-empty lines")
    return datasets.Dataset.from_dict({"text": lines})


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
    ".jsonl": _read_jsonl,
    ".json": _read_json,
    ".csv": _read_csv,
    ".parquet": _read_parquet,
    ".txt": _read_txt,
}
