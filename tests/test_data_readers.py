"""read_records: every supported file type becomes a Dataset; every broken input names the file and the
1-based line (line-oriented files) or row (records of a .json list / parquet)."""

from __future__ import annotations

import json

import datasets
import pytest
from test_data_support import write_jsonl

from medlab.data import DataError, read_records
from medlab.data.readers import peek_records, read_located

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
    with pytest.raises(DataError) as err:
        read_records(path)
    msg = str(err.value)
    assert f"{path} line 3: not valid JSON (Expecting value at column 32)" in msg, msg
    assert "line and row numbers count from 1" in msg and "on_bad_row=skip" in msg


def test_truncated_jsonl_line_names_its_column(tmp_path):
    """A line cut off mid-record (the issue's example) is named by its own line, not the next one."""
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + '{"instruction": "a", "output": \n')
    with pytest.raises(DataError, match=r"cut.jsonl line 2: not valid JSON \(Expecting value at column 32\)"):
        read_records(path)


def test_json_error_messages_never_say_at_at(tmp_path):
    """Some decoder messages end with "at" ("Invalid control character at"): no "at at column" in ours."""
    path = tmp_path / "ctrl.jsonl"
    path.write_text('{"instruction": "a\tb", "output": "x"}\n{"instruction": "unterminated\n')
    read = read_located(path)
    messages = [b.message for b in read.unparsable]
    assert messages == ["not valid JSON (Invalid control character at column 19)",
                        "not valid JSON (Unterminated string starting at column 17)"], messages
    assert not any("at at" in m for m in messages)


def test_jsonl_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError, match="list.jsonl line 2: a JSON list, expected an object"):
        read_records(path)


def test_read_located_keeps_going_and_knows_every_line(tmp_path):
    """Every unparsable line is collected (not only the first) and each good record keeps its file line."""
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b"\n".join([
            json.dumps(ROWS[0]).encode(),
            b"",                                          # 2: blank, passed over
            b'{"instruction": "cut", "output": ',         # 3: truncated
            "caf\xe9".encode("latin-1"),                  # 4: not UTF-8
            b"[1]",                                       # 5: not an object
            json.dumps(ROWS[1]).encode(),                 # 6
        ]) + b"\n"
    )
    read = read_located(path)
    assert read.dataset.to_list() == ROWS and read.lines == [1, 6]
    assert read.where(1) == f"{path} line 6"
    assert [(b.where, b.reason) for b in read.unparsable] == [
        (f"{path} line 3", "unparsable"), (f"{path} line 4", "unparsable"), (f"{path} line 5", "unparsable")]
    assert "not UTF-8" in read.unparsable[1].message
    with pytest.raises(DataError) as err:
        read_records(path)
    assert "3 bad row(s) (unparsable: 3" in str(err.value)
    assert read_records(path, skip_unparsable=True).to_list() == ROWS
    assert read_located(path, limit=1).dataset.to_list() == ROWS[:1]


def test_bad_json_and_csv_and_parquet(tmp_path):
    (tmp_path / "bad.json").write_text('[{"a": 1},\n {"a": ]')
    (tmp_path / "bad.csv").write_text("a,b\n1,2,3\n")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match=r"bad.json line 2: not valid JSON \(Expecting value at column 8; line numbers"):
        read_records(tmp_path / "bad.json")
    with pytest.raises(DataError, match="bad.csv line 2: 3 fields, more than the 2 of the header"):
        read_records(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="bad.parquet: not a readable parquet"):
        read_records(tmp_path / "bad.parquet")


def test_csv_records_know_their_line_and_json_records_their_row(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text('instruction,output\n"multi\nline",x\n\nq,a,extra\nq2,a2\n')
    read = read_located(path)
    assert read.dataset.to_list() == [{"instruction": "multi\nline", "output": "x"},
                                      {"instruction": "q2", "output": "a2"}]
    assert read.lines == [2, 6]  # the line each record starts on
    assert [b.where for b in read.unparsable] == [f"{path} line 5"]
    (tmp_path / "a.json").write_text(json.dumps([ROWS[0], "oops", ROWS[1]]))
    read = read_located(tmp_path / "a.json")
    assert read.lines is None and read.where(1) == f"{tmp_path / 'a.json'} row 3"  # the 3rd record of the list
    assert [str(b) for b in read.unparsable] == [f"{tmp_path / 'a.json'} row 2: a JSON str, expected an object"]


def test_unsupported_type_and_non_utf8(tmp_path):
    (tmp_path / "a.xml").write_text("<a/>")
    (tmp_path / "latin.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="unsupported file type '.xml'"):
        read_records(tmp_path / "a.xml")
    with pytest.raises(DataError, match="latin.txt line 1: not UTF-8 text"):
        read_records(tmp_path / "latin.txt")


def test_peek_reads_only_the_first_rows(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps(ROWS[1]) + "\nthis line is broken\n")
    assert peek_records(path, n=2) == ROWS
