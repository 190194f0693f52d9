"""Length policy and degenerate rows (RELIABILITY.md item 11): an empty row, an overlong prompt and an
overlong completion are counted drops or truncations with EOS kept, and no kept row has a zero loss."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from test_data_support import tiny_llama, write_jsonl

from medlab.data import CausalLMData, DataError
from medlab.data.templates import get_template
from medlab.data.tokenize import IGNORE_INDEX, fit_length, tokenize_dataset

MAX_LENGTH = 64
LONG = " ".join(["The patient reports intermittent chest pain radiating to the left arm."] * 30)
ROWS = [
    {"instruction": "What is asthma?", "input": "", "output": "A chronic disease of the airways."},
    {"instruction": "", "input": "", "output": ""},  # empty row
    {"instruction": LONG, "input": "", "output": "See a doctor."},  # overlong prompt
    {"instruction": "Describe the case.", "input": "", "output": LONG},  # overlong completion
]


def make(tmp_path, **kw) -> CausalLMData:
    return CausalLMData(path=write_jsonl(tmp_path / "rows.jsonl", ROWS), max_length=MAX_LENGTH, **kw)


def test_degenerate_rows_truncate(tmp_path, tokenizer):
    data = make(tmp_path, on_bad_row="skip", truncation="truncate")
    counts = data.setup(tokenizer)
    assert counts == {
        "train/read": 4,
        "train/bad_row/empty_assistant": 1,
        "train/truncated": 1,  # the overlong completion, kept with EOS
        "train/dropped/no_trained_tokens": 1,  # the overlong prompt: its answer was cut away entirely
        "train/kept": 2,
    }
    short, cut = data.train_dataset[0], data.train_dataset[1]
    eot = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert [label for label in short["labels"] if label != IGNORE_INDEX][-1] == eot  # then chatml's "\n", untrained
    assert len(cut["input_ids"]) == MAX_LENGTH
    assert cut["input_ids"][-1] == eot and cut["labels"][-1] == eot  # a cut answer still ends with EOS
    assert (
        cut["input_ids"][:-1] == tokenizer(_rendered(ROWS[3]), add_special_tokens=False)["input_ids"][: MAX_LENGTH - 1]
    )


def test_degenerate_rows_drop(tmp_path, tokenizer):
    counts = make(tmp_path, on_bad_row="skip", truncation="drop").setup(tokenizer)
    assert counts == {"train/read": 4, "train/bad_row/empty_assistant": 1, "train/dropped/too_long": 2, "train/kept": 1}


def test_empty_row_is_an_error_by_default(tmp_path, tokenizer):
    with pytest.raises(DataError, match="rows.jsonl line 2: field 'messages\\[1\\].content': empty assistant content"):
        make(tmp_path).setup(tokenizer)


def test_kept_rows_give_a_finite_nonzero_loss(tmp_path, tokenizer):
    data = make(tmp_path, on_bad_row="skip")
    data.setup(tokenizer)
    batch = data.collate([data.train_dataset[i] for i in range(len(data.train_dataset))])
    model = tiny_llama(len(tokenizer))
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    per_row = torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=IGNORE_INDEX, reduction="none"
    ).sum(1)
    assert torch.isfinite(per_row).all() and (per_row > 0).all()
    assert batch["num_label_tokens"] == int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) > 0


def test_everything_dropped_is_an_error_with_the_counts(tmp_path, tokenizer):
    data = CausalLMData(path=write_jsonl(tmp_path / "long.jsonl", ROWS[2:3]), max_length=MAX_LENGTH)
    with pytest.raises(DataError, match="no train examples left.*'train/dropped/no_trained_tokens': 1"):
        data.setup(tokenizer)


def test_fit_length_policy():
    ids, labels = [5, 6, 7, 8, 9], [IGNORE_INDEX, IGNORE_INDEX, 7, 8, 9]
    assert fit_length(list(ids), list(labels), 10, "truncate", 2) == (ids, labels, "kept")
    assert fit_length(list(ids), list(labels), 4, "truncate", 2) == (
        [5, 6, 7, 2],
        [IGNORE_INDEX, IGNORE_INDEX, 7, 2],
        "truncated",
    )
    assert fit_length(list(ids), list(labels), 4, "drop", 2)[2] == "dropped/too_long"
    assert fit_length(list(ids), list(labels), 2, "truncate", 2)[2] == "dropped/no_trained_tokens"
    # a cut that ends in the prompt does not force EOS into the prompt
    prompt_end = [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 8, 9]
    assert fit_length([1, 2, 3, 4, 5], [IGNORE_INDEX, 2, IGNORE_INDEX, 4, 5], 3, "truncate", 9) == (
        [1, 2, 3],
        [IGNORE_INDEX, 2, IGNORE_INDEX],
        "truncated",
    )
    assert fit_length([1, 2, 3, 4, 5], prompt_end, 3, "truncate", 9)[2] == "dropped/no_trained_tokens"


def test_cpt_rows_are_tokens_plus_eos_all_trained(tokenizer):
    texts = ["Aspirin thins the blood.", "高血压通常没有症状。"]
    rows = Dataset.from_list([{"text": t, "row": i} for i, t in enumerate(texts)])
    out, counts = tokenize_dataset(rows, tokenizer, mode="cpt")
    assert counts == {}
    for text, example in zip(texts, out):
        assert example["input_ids"] == tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        assert example["labels"] == example["input_ids"]


def test_modes_need_their_row_kind(tokenizer):
    text_rows = Dataset.from_list([{"text": "x", "row": 0}])
    chat_rows = Dataset.from_list(
        [
            {
                "messages": [
                    {"role": "user", "content": "q", "tool_calls": []},
                    {"role": "assistant", "content": "a", "tool_calls": []},
                ],
                "tools": None,
                "row": 0,
            }
        ]
    )
    with pytest.raises(DataError, match="mode 'sft' needs chat rows"):
        tokenize_dataset(text_rows, tokenizer, mode="sft", template=get_template("chatml"))
    with pytest.raises(DataError, match="mode 'cpt' needs text rows"):
        tokenize_dataset(chat_rows, tokenizer, mode="cpt")


def _rendered(row) -> str:
    messages = [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["output"]}]
    return get_template("chatml").render([{**m, "tool_calls": []} for m in messages])
