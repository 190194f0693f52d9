"""Format detection and normalization: every supported format becomes the internal schema; bad rows are
reported with file, row and field (on_bad_row=error) or dropped and counted (on_bad_row=skip)."""

from __future__ import annotations

import json

import datasets
import pytest
from test_data_support import SAMPLE_DIR

from medlab.data import DataError, read_records
from medlab.data.formats import detect_format, normalize


def ds(rows):
    from medlab.data.readers import records_to_dataset

    return records_to_dataset(rows)


def m(role, content, tool_calls=None):
    return {"role": role, "content": content, "tool_calls": tool_calls or []}


@pytest.mark.parametrize(
    "columns, expected",
    [
        (["instruction", "input", "output"], "alpaca"),
        (["conversations"], "sharegpt"),
        (["conversations", "tools"], "toolcall"),
        (["messages"], "openai"),
        (["messages", "tools"], "toolcall"),
        (["text", "id"], "text"),
        (["text", "messages"], "openai"),
        (["question", "answer"], None),
    ],
)
def test_detect_format(columns, expected):
    assert detect_format(columns) == expected


def test_alpaca_with_system_and_history():
    rows = [
        {
            "instruction": "Explain",
            "input": "asthma",
            "output": "An airway disease.",
            "system": "Be brief.",
            "history": [["Hi", "Hello!"]],
        }
    ]
    out, fmt, dropped = normalize(ds(rows))
    assert (fmt, dropped) == ("alpaca", {})
    assert out[0] == {
        "messages": [
            m("system", "Be brief."),
            m("user", "Hi"),
            m("assistant", "Hello!"),
            m("user", "Explain\nasthma"),
            m("assistant", "An airway disease."),
        ],
        "tools": None,
        "row": 0,
        "source": "<data> row 1",
    }


def test_sharegpt_and_openai_give_the_same_rows():
    sharegpt = [
        {
            "conversations": [
                {"from": "system", "value": "S"},
                {"from": "human", "value": "Q"},
                {"from": "gpt", "value": "A"},
            ]
        }
    ]
    openai = [
        {
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "Q"},
                {"role": "assistant", "content": "A"},
            ]
        }
    ]
    a, fmt_a, _ = normalize(ds(sharegpt))
    b, fmt_b, _ = normalize(ds(openai))
    assert (fmt_a, fmt_b) == ("sharegpt", "openai")
    assert (
        a.to_list()
        == b.to_list()
        == [
            {
                "messages": [m("system", "S"), m("user", "Q"), m("assistant", "A")],
                "tools": None,
                "row": 0,
                "source": "<data> row 1",
            }
        ]
    )


def test_toolcall_glaive_style():
    row = {
        "conversations": [
            {"from": "human", "value": "BMI for 70 kg, 1.75 m?"},
            {
                "from": "function_call",
                "value": '{"name": "calculate_bmi", "arguments": {"weight_kg": 70, "height_m": 1.75}}',
            },
            {"from": "observation", "value": '{"bmi": 22.9}'},
            {"from": "gpt", "value": "22.9"},
        ],
        "tools": '[{"name": "calculate_bmi", "parameters": {}}]',
    }
    out, fmt, _ = normalize(ds([row]))
    assert fmt == "toolcall"
    assert out[0]["messages"] == [
        m("user", "BMI for 70 kg, 1.75 m?"),
        m("assistant", "", [{"name": "calculate_bmi", "arguments": '{"weight_kg": 70, "height_m": 1.75}'}]),
        m("tool", '{"bmi": 22.9}'),
        m("assistant", "22.9"),
    ]
    assert json.loads(out[0]["tools"]) == [{"name": "calculate_bmi", "parameters": {}}]


def test_toolcall_openai_style_and_text_before_call_is_one_turn():
    rows = [
        {
            "messages": [
                {"role": "user", "content": "BMI?"},
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": "c1", "type": "function", "function": {"name": "bmi", "arguments": '{"w": 1}'}}
                    ],
                },
                {"role": "tool", "content": "1"},
                {"role": "assistant", "content": [{"type": "text", "text": "It is 1."}]},
            ],
            "tools": [{"type": "function", "function": {"name": "bmi"}}],
        },
        {
            "conversations": [
                {"from": "human", "value": "BMI?"},
                {"from": "gpt", "value": "Checking."},
                {
                    "from": "function_call",
                    "value": '[{"name": "bmi", "arguments": {"w": 1}}, {"name": "bmi", "arguments": {"w": 2}}]',
                },
                {"from": "observation", "value": "1"},
                {"from": "gpt", "value": "Done."},
            ],
            "tools": None,
        },
    ]
    first, _, _ = normalize(ds(rows[:1]))
    second, _, _ = normalize(ds(rows[1:]), "toolcall")
    assert first[0]["messages"][1] == m("assistant", "", [{"name": "bmi", "arguments": '{"w": 1}'}])
    assert first[0]["messages"][3]["content"] == "It is 1."
    assert second[0]["messages"][1] == m(
        "assistant", "Checking.", [{"name": "bmi", "arguments": '{"w": 1}'}, {"name": "bmi", "arguments": '{"w": 2}'}]
    )


def test_text_rows():
    out, fmt, _ = normalize(ds([{"text": "Aspirin thins the blood.", "source": "x"}]))
    assert fmt == "text"
    assert out.to_list() == [{"text": "Aspirin thins the blood.", "row": 0, "source": "<data> row 1"}]


def test_field_mapping_renames_user_columns():
    rows = [{"question": "Q?", "answer": "A."}]
    out, fmt, _ = normalize(ds(rows), fields={"instruction": "question", "output": "answer"})
    assert fmt == "alpaca"
    assert out[0]["messages"] == [m("user", "Q?"), m("assistant", "A.")]
    with pytest.raises(DataError, match="column 'nope'"):
        normalize(ds(rows), fields={"instruction": "nope"})
    with pytest.raises(DataError, match="cannot detect the data format"):
        normalize(ds(rows))


def test_explicit_format_needs_its_columns():
    with pytest.raises(DataError, match="format 'toolcall' needs a column 'tools'"):
        normalize(ds([{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}]), "toolcall")


def test_default_system_prompt_only_where_missing():
    rows = [{"instruction": "Q", "output": "A"}, {"instruction": "Q", "output": "A", "system": "Mine."}]
    out, _, _ = normalize(ds(rows), system_prompt="You are a doctor.")
    assert out[0]["messages"][0] == m("system", "You are a doctor.")
    assert out[1]["messages"][0] == m("system", "Mine.")


BAD_ROWS = [
    {"conversations": [{"from": "human", "value": "ok"}, {"from": "gpt", "value": "fine"}]},  # 0 good
    {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "  "}]},  # 1 empty answer
    {
        "conversations": [
            {"from": "human", "value": "q"},
            {"from": "gpt", "value": "a"},
            {"from": "human", "value": "q2"},
        ]
    },  # 2
    {
        "conversations": [
            {"from": "human", "value": "q"},
            {"from": "function_call", "value": "{not json"},
            {"from": "gpt", "value": "a"},
        ]
    },  # 3
    {"conversations": "not a list"},  # 4 wrong type
    {"conversations": [{"from": "human", "value": 5}, {"from": "gpt", "value": "a"}]},  # 5 wrong type
    {"conversations": [{"from": "doctor", "value": "q"}, {"from": "gpt", "value": "a"}]},  # 6 unknown role
    {"conversations": None},  # 7 missing
]


def test_bad_rows_error_lists_row_and_field(tmp_path):
    with pytest.raises(DataError) as err:
        normalize(ds(BAD_ROWS), file="rows.jsonl")
    text = str(err.value)
    assert text.startswith("7 bad row(s)") and "line and row numbers count from 1" in text
    for needle in (  # records without line numbers are rows, the first one is row 1
        "rows.jsonl row 2: field 'messages[1].content': empty assistant content",
        "row 3: field 'messages[2]': the conversation ends with a user turn",
        "row 4: field 'conversations[1].value': function_call is not valid JSON",
        "row 5: field 'conversations'",
        "row 6: field 'conversations[0].value'",
        "row 7: field 'conversations[0].from': unknown role 'doctor'",
        "row 8: field 'conversations': missing",
    ):
        assert needle in text, needle
    assert "row 1:" not in text


def test_bad_rows_name_the_file_line_when_lines_are_known():
    """Rows read from a .jsonl carry their line in the file (blank lines make it differ from the row)."""
    with pytest.raises(DataError) as err:
        normalize(ds(BAD_ROWS[:3]), file="rows.jsonl", numbers=[1, 3, 7])
    text = str(err.value)
    assert "rows.jsonl line 3: field 'messages[1].content'" in text and "rows.jsonl line 7: field" in text
    out, _, _ = normalize(ds(BAD_ROWS[:1]), file="rows.jsonl", numbers=[4])
    assert out[0]["row"] == 0 and out[0]["source"] == "rows.jsonl line 4"


def test_bad_rows_error_lists_at_most_20_with_the_total():
    rows = [{"instruction": "q", "output": ""} for _ in range(25)]
    with pytest.raises(DataError) as err:
        normalize(ds(rows))
    text = str(err.value)
    assert "25 bad row(s) (empty_assistant: 25;" in text and "First 20:" in text
    assert "row 20:" in text and "row 21:" not in text


def test_bad_rows_skip_drops_and_counts():
    out, _, dropped = normalize(ds(BAD_ROWS), on_bad_row="skip")
    assert [r["row"] for r in out] == [0]
    assert dropped == {
        "bad_row/empty_assistant": 1,
        "bad_row/not_ending_with_assistant": 1,
        "bad_row/bad_function_call": 1,
        "bad_row/wrong_type": 2,
        "bad_row/unknown_role": 1,
        "bad_row/missing_field": 1,
    }


def test_alpaca_and_text_row_problems():
    rows = [
        {"instruction": "q", "output": None},
        {"instruction": 3, "output": "a"},
        {"instruction": "q", "output": "a"},
    ]
    _, _, dropped = normalize(ds(rows), on_bad_row="skip")
    assert dropped == {"bad_row/missing_field": 1, "bad_row/wrong_type": 1}
    _, _, dropped = normalize(ds([{"text": " "}, {"text": "ok"}]), on_bad_row="skip")
    assert dropped == {"bad_row/empty_text": 1}


@pytest.mark.parametrize(
    "name, fmt",
    [
        ("sft_alpaca.jsonl", "alpaca"),
        ("sft_sharegpt.jsonl", "sharegpt"),
        ("sft_messages.jsonl", "openai"),
        ("toolcall.jsonl", "toolcall"),
        ("val_sft_alpaca.jsonl", "alpaca"),
        ("medical_corpus.txt", "text"),
    ],
)
def test_shipped_samples_normalize_without_problems(name, fmt):
    path = SAMPLE_DIR / name
    assert path.is_file(), f"the shipped sample {path} is missing"
    raw = read_records(path)
    out, detected, dropped = normalize(raw, file=str(path))
    assert (detected, dropped, len(out)) == (fmt, {}, len(raw))


def test_real_glaive_toolcall_data(shared_data):
    path = shared_data / "toolcall" / "glaive_toolcall_en.json"
    if not path.exists():
        pytest.skip(f"{path} is absent")
    out, fmt, dropped = normalize(read_records(path), file=str(path))
    assert (fmt, dropped, len(out)) == ("toolcall", {}, 300)
    calls = [c for row in out for message in row["messages"] for c in message["tool_calls"]]
    roles = {message["role"] for row in out for message in row["messages"]}
    assert len(calls) == 211 and roles == {"user", "assistant", "tool"}
    assert all(isinstance(json.loads(c["arguments"]), dict) for c in calls)
    assert all(row["messages"][-1]["role"] == "assistant" for row in out)
    with_tools = [row for row in out if row["tools"]]
    assert with_tools and all(isinstance(json.loads(row["tools"]), list) for row in with_tools)


def test_features_are_fixed_for_any_batch_mix():
    """Rows without tool calls and rows with them share one arrow schema (no per-batch inference)."""
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}] * 1001
    rows.append(
        {
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "", "tool_calls": [{"name": "f", "arguments": {}}]},
                {"role": "tool", "content": "r"},
                {"role": "assistant", "content": "a"},
            ]
        }
    )
    out, _, _ = normalize(ds(rows))
    assert isinstance(out.features["messages"], datasets.List)
    assert out[1001]["messages"][1]["tool_calls"] == [{"name": "f", "arguments": "{}"}]
