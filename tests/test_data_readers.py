"""read_records: every supported file type becomes a Dataset; every broken input names the file (and line)."""

from __future__ import annotations

import json

import datasets
import pytest
from test_data_support import write_jsonl

from medlab.data import DataError, read_records
from medlab.data.readers import peek_records

ROWS = [
    {"instruction": "What is asthma?", "input": "", "output": "A chronic airway disease."},
    {"instruction": "Define BMI.", "input": "adult", "output": "Weight / height²."},
]


def test_jsonl(tmp_path):
    ds = read_records(write_jsonl(tmp_path / "a.jsonl", ROWS))
    assert isinstance(ds, datasets.Dataset)
    assert ds.to_list() == ROWS


def test_jsonl_nested_rows_come_back_exactly(tmp_path):
    """Arrow would merge dict keys across rows (adding None) or fail on mixed types; rows must round-trip."""
    rows = [
        {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "x"}], "meta": {"a": 1}},
        {"conversations": [{"from": "human", "value": "yo", "extra": 2}], "meta": {"a": "text", "b": [1]}},
    ]
    assert read_records(write_jsonl(tmp_path / "n.jsonl", rows)).to_list() == rows


def test_json_list_columns_and_json_lines(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(ROWS))
    (tmp_path / "cols.json").write_text(json.dumps({k: [r[k] for r in ROWS] for k in ROWS[0]}))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in ROWS))
    for name in ("list.json", "cols.json", "lines.json"):
        assert read_records(tmp_path / name).to_list() == ROWS, name


def test_csv(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(
        'instruction,input,output\nWhat is asthma?,,A chronic airway disease.\n"Define BMI.",adult,"Weight / height²."\n'
    )
    assert read_records(path).to_list() == ROWS


def test_parquet(tmp_path):
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "a.parquet"))
    assert read_records(tmp_path / "a.parquet").to_list() == ROWS


def test_txt_one_row_per_non_empty_line(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("first document\n\n   \nsecond document\r\n")
    assert read_records(path).to_list() == [{"text": "first document"}, {"text": "second document"}]


def test_saved_dataset_dir_and_split(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(ROWS), "test": datasets.Dataset.from_list(ROWS[:1])}
    ).save_to_disk(str(tmp_path / "dict"))
    assert read_records(tmp_path / "single").to_list() == ROWS
    assert len(read_records(tmp_path / "dict")) == 2
    assert len(read_records(tmp_path / "dict", split="test")) == 1
    with pytest.raises(DataError, match="no split 'validation'"):
        read_records(tmp_path / "dict", split="validation")


def test_list_of_files_is_concatenated(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", ROWS[:1])
    b = write_jsonl(tmp_path / "b.jsonl", ROWS[1:])
    assert read_records([a, b]).to_list() == ROWS


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DataError, match="not found: .*nope.jsonl"):
        read_records(tmp_path / "nope.jsonl")


@pytest.mark.parametrize(
    "name, content", [("e.jsonl", ""), ("e.json", "  \n"), ("e.txt", "\n\n"), ("e.csv", "a,b\n"), ("e.jsonl", "\n\n")]
)
def test_empty_file(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(DataError, match=f"{name}.*(empty|no records|no non-empty)"):
        read_records(tmp_path / name)


def test_bad_jsonl_line_number(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n\n" + '{"instruction": "x", "output": }\n')
    with pytest.raises(DataError, match=r"bad.jsonl: line 3 is not valid JSON"):
        read_records(path)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match="line 2 is a JSON list, expected an object"):
        read_records(path)


def test_bad_json_and_csv_and_parquet(tmp_path):
    (tmp_path / "bad.json").write_text('[{"a": 1},\n {"a": ]')
    (tmp_path / "bad.csv").write_text("a,b\n1,2,3\n")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="bad.json: line 2 is not valid JSON"):
        read_records(tmp_path / "bad.json")
    with pytest.raises(DataError, match="bad.csv: line 2 has more fields"):
        read_records(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="bad.parquet: not a readable parquet"):
        read_records(tmp_path / "bad.parquet")


def test_unsupported_type_and_non_utf8(tmp_path):
    (tmp_path / "a.xml").write_text("<a/>")
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="unsupported file type '.xml'"):
        read_records(tmp_path / "a.xml")
    with pytest.raises(DataError, match="latin.txt: not UTF-8"):
        read_records(tmp_path / "latin.txt")


def test_peek_reads_only_the_first_rows(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\nthis line is broken\n")
    assert peek_records(path, n=2) == ROWS
