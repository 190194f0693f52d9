"""docs/ADDING.md "Add a data format": its code runs as written (a chat format by one normalizer; preference
pairs as a new data kind: normalizer, collate function and a thin data class on the shared skeleton)."""

from __future__ import annotations

import re

import pytest
from helpers import TOKENIZER_DIR, write_jsonl
from transformers import AutoTokenizer

import medlab
from medlab.contracts import DataSource
from medlab.data import CausalLMData, DataError, registry

SECTION = (medlab.ROOT_DIR / "docs" / "ADDING.md").read_text().split("## Add a data format", 1)[1].split("\n## ")[0]
BLOCKS = re.findall(r"```python\n(.*?)```", SECTION, re.S)


@pytest.fixture
def fresh_registry(monkeypatch):
    """The examples register formats: into a copy of the registry, dropped after the test."""
    registry.names("chat")  # the built-in formats first
    monkeypatch.setattr(registry, "_FORMATS", dict(registry._FORMATS))


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def test_the_section_has_the_two_examples():
    assert len(BLOCKS) == 2 and "prompt_response" in BLOCKS[0] and "class PreferenceData" in BLOCKS[1]


def test_a_chat_format_is_one_registered_normalizer(tmp_path, tokenizer, fresh_registry):
    exec(BLOCKS[0], {})
    path = write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "What is asthma?", "response": "An airway disease."}] * 3)
    data = CausalLMData(path=str(path))
    assert data.validate() == [] and data.setup(tokenizer)["train/kept"] == 3
    assert data.collate([data.train_dataset[0]])["num_label_tokens"] > 0


def test_preference_pairs_are_a_normalizer_a_collate_and_a_thin_data_class(tmp_path, tokenizer, fresh_registry):
    namespace: dict = {}
    exec(BLOCKS[1], namespace)
    PreferenceData = namespace["PreferenceData"]
    good = {"prompt": "Is aspirin an NSAID?", "chosen": "Yes.", "rejected": "No, it is an opioid."}
    path = write_jsonl(tmp_path / "pairs.jsonl", [good] * 4 + [{**good, "chosen": " "}, '{"cut'] + [good] * 2)
    problems = PreferenceData(path).validate()
    assert f"{path} line 5: field 'chosen': missing or empty 'chosen'" in problems
    assert any(p.startswith(f"{path} line 6: not valid JSON") for p in problems)
    with pytest.raises(DataError, match="2 bad row"):
        PreferenceData(path).setup(tokenizer)

    data = PreferenceData(path, on_bad_row="skip", val_split=0.2)
    assert isinstance(data, DataSource) and data.validate() == [] and data.val_size == 1
    counts = data.setup(tokenizer)
    assert counts["train/bad_row/empty_chosen"] == 1 and counts["train/bad_row/unparsable"] == 1
    assert counts["train/pairs"] == 5 and counts["val/pairs"] == 1
    batch = data.collate(data.train_dataset[:2])
    assert batch["input_ids"].shape[0] == 4 and batch["ids"] == [0, 1]
    prompt = data.train_dataset[0]["prompt_length"]
    assert (batch["labels"][:, :prompt] == -100).all() and (batch["labels"][:, prompt] != -100).all()
    mapped = write_jsonl(tmp_path / "mapped.jsonl", [{"q": "Q?", "good": "A.", "bad": "B."}] * 2)
    assert PreferenceData(mapped, fields={"prompt": "q", "chosen": "good", "rejected": "bad"}).validate() == []
    assert [p.split(": ", 1)[1] for p in PreferenceData(mapped).validate()] == [
        f"needs a column {c!r} (map yours with data.fields)" for c in ("prompt", "chosen", "rejected")]
