"""CausalLMData: the object conf/data/*.yaml instantiates. Cheap validation lists every problem; setup
reads, normalizes, tokenizes once (cached) and returns the counts; the shipped configs work as written."""

from __future__ import annotations

import inspect
import json
import os
import shutil

import pytest
import torch
import yaml
from hydra.utils import instantiate
from omegaconf import OmegaConf
from test_data_support import SAMPLE_DIR, write_jsonl

import medlab
from medlab.data import CausalLMData, DataError
from medlab.data import module as data_module

ALPACA = str(SAMPLE_DIR / "sft_alpaca.jsonl")
CONF_DATA = medlab.CONF_DIR / "data"


def test_validate_is_empty_for_good_settings():
    assert CausalLMData(path=ALPACA).validate() == []
    assert CausalLMData(path=str(SAMPLE_DIR / "medical_corpus.txt"), mode="cpt").validate() == []


def test_validate_lists_every_problem_at_once(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "qa.jsonl").write_text('{"question": "q", "answer": "a"}\n')
    data = CausalLMData(
        path=[str(tmp_path / "missing.jsonl"), str(tmp_path / "empty.jsonl"), str(tmp_path / "qa.jsonl")],
        val_path=str(SAMPLE_DIR / "medical_corpus.txt"),
        template="vicuna",
        truncation="cut",
        on_bad_row="ignore",
        max_length=0,
        val_split=1.5,
        batch_size=0,
    )
    problems = data.validate()
    for needle in (
        "data file not found",
        "empty.jsonl: file is empty",
        "qa.jsonl: cannot detect the format",
        "medical_corpus.txt: mode 'sft' needs chat rows",
        "template='vicuna'",
        "truncation='cut'",
        "on_bad_row='ignore'",
        "max_length",
        "val_split",
        "data.batch_size",
    ):
        assert sum(needle in p for p in problems) == 1, (needle, problems)
    with pytest.raises(DataError, match="invalid data config"):
        data.setup(None)


def test_validate_checks_columns_fields_and_mode(tmp_path):
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "q", "answer": "a"}])
    assert CausalLMData(path=qa, fields={"instruction": "question", "output": "answer"}).validate() == []
    assert (
        "column 'reply'" in CausalLMData(path=qa, fields={"instruction": "question", "output": "reply"}).validate()[0]
    )
    assert "needs a column 'text'" in CausalLMData(path=qa, format="text", mode="cpt").validate()[0]
    assert "mode 'cpt' needs text rows" in CausalLMData(path=ALPACA, mode="cpt").validate()[0]
    assert "mode 'cpt' needs text rows" in CausalLMData(path=ALPACA, format="alpaca", mode="cpt").validate()[0]


@pytest.mark.parametrize("name", ["sft_alpaca.jsonl", "sft_sharegpt.jsonl", "sft_messages.jsonl", "toolcall.jsonl"])
def test_setup_on_each_sample(name, tokenizer):
    data = CausalLMData(path=str(SAMPLE_DIR / name), max_length=512)
    counts = data.setup(tokenizer)
    n = len(data.train_dataset)
    assert counts["train/read"] >= n == counts["train/kept"] > 0 and data.val_dataset is None
    example = data.train_dataset[n - 1]
    assert example["id"] == n - 1 and len(example["input_ids"]) == len(example["labels"]) <= 512
    assert any(label != -100 for label in example["labels"]) and example["labels"][0] == -100


def test_default_sample_config_values(tokenizer):
    data = CausalLMData(path=ALPACA, val_path=str(SAMPLE_DIR / "val_sft_alpaca.jsonl"), max_length=256)
    counts = data.setup(tokenizer)
    assert counts["val/kept"] == len(data.val_dataset) > 0
    assert not any(key.startswith(("train/dropped", "val/dropped", "train/bad_row")) for key in counts)
    loader = torch.utils.data.DataLoader(data.train_dataset, batch_size=4, collate_fn=data.collate)
    batch = next(iter(loader))
    assert batch["ids"] == [0, 1, 2, 3] and batch["input_ids"].shape[0] == 4


def test_val_split_is_fixed_by_seed_and_disjoint(tokenizer):
    def split(seed):
        data = CausalLMData(path=ALPACA, val_split=0.1, seed=seed)
        counts = data.setup(tokenizer)
        return data, counts

    a, counts = split(0)
    b, _ = split(0)
    c, _ = split(1)
    as_key = lambda ds: {tuple(x) for x in ds["input_ids"]}  # noqa: E731
    assert counts["val/kept"] == round(0.1 * counts["train/read"])
    assert as_key(a.val_dataset) == as_key(b.val_dataset) != as_key(c.val_dataset)
    assert not as_key(a.val_dataset) & as_key(a.train_dataset)


def test_normalized_rows_are_the_rows_setup_splits(tokenizer):
    data = CausalLMData(path=ALPACA, val_split=0.1, seed=3, cache_dir=None)
    data.setup(tokenizer)
    val, train, every = data.normalized_rows("val"), data.normalized_rows("train"), data.normalized_rows("all")
    assert len(val) == len(data.val_dataset) and len(train) + len(val) == len(every)
    key = lambda r: json.dumps(r, sort_keys=True, default=str)  # noqa: E731
    assert {key(r) for r in train} | {key(r) for r in val} == {key(r) for r in every}
    assert not {key(r) for r in train} & {key(r) for r in val}
    assert val != CausalLMData(path=ALPACA, val_split=0.1, seed=4).normalized_rows("val")  # the seed's draw
    with pytest.raises(ValueError, match="split must be"):
        data.normalized_rows("test")


def test_limit_and_mixed_format_file_list(tokenizer):
    files = [ALPACA, str(SAMPLE_DIR / "sft_sharegpt.jsonl"), str(SAMPLE_DIR / "toolcall.jsonl")]
    data = CausalLMData(path=files, max_length=1024)
    counts = data.setup(tokenizer)
    assert counts["train/kept"] == sum(1 for f in files for _ in open(f))
    limited = CausalLMData(path=files, limit=5)
    assert limited.setup(tokenizer)["train/read"] == 5 and len(limited.train_dataset) == 5


def test_system_prompt_is_rendered(tokenizer):
    data = CausalLMData(path=ALPACA, system_prompt="You are a careful medical assistant.", limit=1)
    data.setup(tokenizer)
    text = tokenizer.decode(data.train_dataset[0]["input_ids"])
    assert text.startswith("<|im_start|>system\nYou are a careful medical assistant.<|im_end|>\n<|im_start|>user\n")


def test_tokenize_once_then_cache_hit(tmp_path, tokenizer, monkeypatch):
    calls = []
    real = data_module.tokenize_dataset
    monkeypatch.setattr(data_module, "tokenize_dataset", lambda *a, **k: calls.append(1) or real(*a, **k))
    path = shutil.copy(ALPACA, tmp_path / "sft.jsonl")

    def setup(**kw):
        data = CausalLMData(path=str(path), val_split=0.1, cache_dir=str(tmp_path / "cache"), **kw)
        return data, data.setup(tokenizer)

    first, counts = setup()
    assert len(calls) == 2  # train + val
    second, cached_counts = setup()
    assert len(calls) == 2, "the second setup must load the cache, not tokenize"
    assert cached_counts == counts
    assert second.train_dataset[:] == first.train_dataset[:] and second.val_dataset[:] == first.val_dataset[:]
    assert not [p for p in (tmp_path / "cache" / "tokenized").iterdir() if p.name.startswith(".tmp-")]

    setup(max_length=128)  # a different argument is a different entry
    assert len(calls) == 4
    os.utime(path, ns=(1, 1))  # the file changed (mtime)
    setup()
    assert len(calls) == 6
    entries = list((tmp_path / "cache" / "tokenized").iterdir())
    assert len(entries) == 3


def test_cache_key_covers_the_tokenizer_chat_template(tmp_path, tokenizer):
    import copy

    other = copy.deepcopy(tokenizer)
    other.chat_template = tokenizer.chat_template.replace("You are a helpful medical assistant.", "Hi.")
    a = CausalLMData(path=ALPACA, template="tokenizer", cache_dir=str(tmp_path))._cache_entry(tokenizer)
    b = CausalLMData(path=ALPACA, template="tokenizer", cache_dir=str(tmp_path))._cache_entry(other)
    assert a != b


def test_collate_before_setup_is_an_error():
    with pytest.raises(RuntimeError, match="setup"):
        CausalLMData(path=ALPACA).collate([])


# ------------------------------------------------------------------------------------------ conf/data


def data_config(name: str, tmp_path, mode: str = "sft"):
    root = OmegaConf.create({"paths": {"cache_dir": str(tmp_path / "cache")}, "objective": {"mode": mode}})
    root.data = OmegaConf.load(CONF_DATA / f"{name}.yaml")
    return root.data


def test_every_data_config_targets_causallmdata_with_known_arguments():
    parameters = set(inspect.signature(CausalLMData).parameters)
    names = sorted(p.stem for p in CONF_DATA.glob("*.yaml"))
    assert {"sample_sft", "sample_pretrain", "sample_toolcall", "sft_chat", "pretrain_text"} <= set(names)
    for name in names:
        raw = yaml.safe_load((CONF_DATA / f"{name}.yaml").read_text())
        if raw.get("_target_") != "medlab.data.CausalLMData":
            continue
        assert set(raw) - {"_target_"} <= parameters, name


@pytest.mark.parametrize("name, mode", [("sample_sft", "sft"), ("sample_toolcall", "sft"), ("sample_pretrain", "cpt")])
def test_sample_configs_instantiate_validate_and_set_up(name, mode, tmp_path, tokenizer):
    data = instantiate(data_config(name, tmp_path, mode))
    assert isinstance(data, CausalLMData) and data.mode == mode
    assert data.validate() == []
    counts = data.setup(tokenizer)
    assert counts["train/kept"] > 0 and counts["val/kept"] > 0
    assert not any("/dropped/" in key or "/bad_row/" in key for key in counts), counts
    batch = data.collate([data.train_dataset[i] for i in range(2)])
    assert batch["num_label_tokens"] > 0


@pytest.mark.parametrize("name", ["sft_chat", "pretrain_text"])
def test_user_data_configs_require_a_path(name, tmp_path):
    cfg = data_config(name, tmp_path)
    assert OmegaConf.is_missing(cfg, "path")
    cfg.path = ALPACA if name == "sft_chat" else str(SAMPLE_DIR / "medical_corpus.txt")
    cfg.mode = "sft" if name == "sft_chat" else "cpt"
    assert instantiate(cfg).validate() == []
