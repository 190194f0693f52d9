"""Preference data (`medlab.data.preference.PreferenceData`, kind ``preference``): formats, rendering, truncation,
bad rows, the paired / unpaired batch contract (docs/INTERFACES.md), the shipped sample and data configs."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SAMPLE_DIR, compose, write_jsonl
from hydra.utils import instantiate

from medlab.data.errors import DataError
from medlab.data.preference import PreferenceData
from medlab.data.preference_encode import truncate
from medlab.data.templates import get_template

pytestmark = pytest.mark.usefixtures("one_thread")

Q, GOOD, BAD = "What lowers blood pressure?", "Less salt, exercise and prescribed medicine.", "Nothing helps."


def _data(tmp_path, rows, name="d.jsonl", **kw) -> PreferenceData:
    return PreferenceData(write_jsonl(tmp_path / name, rows), **{"max_length": 128, **kw})


def _decode(tok, ids) -> str:
    return tok.decode(ids, skip_special_tokens=False)


def _pairs(data) -> list[tuple]:
    return [(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in data.train_dataset]


# ---------------------------------------------------------------------------------------------- formats


FORMATS = {
    "canonical": ({"prompt": Q, "chosen": GOOD, "rejected": BAD, "system": "Be careful.", "margin": 1.5}, {}),
    "medicalgpt": ({"question": Q, "response_chosen": GOOD, "response_rejected": BAD}, {}),
    "sharegpt_strings": ({"conversations": [{"from": "human", "value": Q}], "chosen": GOOD, "rejected": BAD}, {}),
    "sharegpt_turns": ({"conversations": [{"from": "system", "value": "Be careful."}, {"from": "human", "value": Q}],
                        "chosen": {"from": "gpt", "value": GOOD}, "rejected": {"from": "gpt", "value": BAD}}, {}),
    "openai": ({"messages": [{"role": "user", "content": Q}], "chosen": [{"role": "assistant", "content": GOOD}],
                "rejected": [{"role": "assistant", "content": BAD}]}, {}),
    "mapped": ({"q": Q, "good": GOOD, "bad": BAD}, {"prompt": "q", "chosen": "good", "rejected": "bad"}),
}


@pytest.mark.parametrize("name", list(FORMATS))
def test_every_pair_format_reads_to_the_same_prompt_and_completions(tmp_path, tok, name):
    row, fields = FORMATS[name]
    data = _data(tmp_path, [row, row], fields=fields)
    assert data.validate() == []
    counts = data.setup(tok)
    assert counts["train/kept"] == 2 and data.paired
    prompt, chosen, rejected = _pairs(data)[0]
    text = _decode(tok, prompt)
    assert text.endswith("<|im_start|>assistant\n") and Q in text
    assert ("Be careful." in text) == ("Be careful." in json.dumps(row))
    assert text.count("Be careful.") <= 1
    assert _decode(tok, chosen) == GOOD + "<|im_end|>" and _decode(tok, rejected) == BAD + "<|im_end|>"
    assert data.train_dataset[0]["margin"] == (1.5 if name == "canonical" else None)


def test_unpaired_rows_read_without_mapping_and_give_kto_batches(tmp_path, tok):
    rows = [{"prompt": Q, "completion": GOOD, "label": True},
            {"prompt": "Is aspirin safe?", "completion": BAD, "label": False},
            {"prompt": "Why?", "completion": "Because.", "label": "false"}]  # a string label is read too
    data = _data(tmp_path, rows)
    assert data.validate() == []
    data.setup(tok)
    assert data.paired is False
    batch = data.collate(data.train_dataset)
    B = 3
    assert batch["label"].dtype == torch.bool and batch["label"].tolist() == [True, False, False]
    for prefix in ("", "kl_"):
        assert batch[f"{prefix}input_ids"].shape[0] == B
        assert batch[f"{prefix}attention_mask"].shape == batch[f"{prefix}input_ids"].shape
        assert batch[f"{prefix}labels"].shape == batch[f"{prefix}input_ids"].shape
    ex = data.train_dataset
    for i in range(B):  # KL row i = prompt i + completion (i+1) mod B
        n = int(batch["kl_attention_mask"][i].sum())
        assert batch["kl_input_ids"][i, :n].tolist() == ex[i]["prompt_ids"] + ex[(i + 1) % B]["completion_ids"]
        labels = batch["kl_labels"][i]
        assert labels[labels != -100].tolist() == ex[(i + 1) % B]["completion_ids"]


def test_pairs_become_unpaired_rows_with_data_unpaired(tmp_path, tok):
    data = _data(tmp_path, [{"prompt": Q, "chosen": GOOD, "rejected": BAD}], unpaired=True)
    counts = data.setup(tok)
    assert counts["train/completions"] == 2 and [e["label"] for e in data.train_dataset] == [True, False]


def test_judgments_give_every_higher_vs_lower_pair_within_a_group_with_score_margins(tmp_path, tok):
    rows = [{"qid": "a", "question": "Q1", "answer": "best", "judgment": 4},
            {"qid": "a", "question": "Q1", "answer": "ok", "judgment": 3},
            {"qid": "a", "question": "Q1", "answer": "tie", "judgment": 3},
            {"qid": "a", "question": "Q1", "answer": "bad", "judgment": 1},
            {"qid": "b", "question": "Q2", "answer": "only", "judgment": 2}]
    data = _data(tmp_path, rows, margin_from_score=True, margin_scale=0.5)
    assert data.validate() == []
    counts = data.setup(tok)
    got = {(_decode(tok, e["chosen_ids"])[:-len("<|im_end|>")], _decode(tok, e["rejected_ids"])[:-len("<|im_end|>")],
            e["margin"]) for e in data.train_dataset}
    # 4 docs of group a with scores 4,3,3,1: 5 ordered pairs (the 3-3 tie gives none); group b has no pair
    assert got == {("best", "ok", 0.5), ("best", "tie", 0.5), ("best", "bad", 1.5), ("ok", "bad", 1.0),
                   ("tie", "bad", 1.0)}
    assert counts["train/judged_groups"] == 2 and counts["train/groups_without_pairs"] == 1
    capped = _data(tmp_path, rows, max_pairs_per_group=2)
    capped.setup(tok)
    assert {_decode(tok, e["rejected_ids"]) for e in capped.train_dataset} == {"bad<|im_end|>"}  # largest gaps


def test_judgment_labels_rank_documents_when_there_is_no_score(tmp_path, tok):
    rows = [{"query": "Q", "doc": "yes", "label": 1}, {"query": "Q", "doc": "no", "label": 0}]
    data = _data(tmp_path, rows)
    data.setup(tok)
    assert [(_decode(tok, e["chosen_ids"]), _decode(tok, e["rejected_ids"])) for e in data.train_dataset] == \
        [("yes<|im_end|>", "no<|im_end|>")]


# ---------------------------------------------------------------------------------------------- rendering


def test_prompt_tokens_are_rendered_once_and_identical_in_chosen_and_rejected_rows(tmp_path, tok):
    row = {"prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                      {"role": "user", "content": Q}], "chosen": GOOD, "rejected": BAD}
    data = _data(tmp_path, [row], system_prompt="You are a doctor.")
    data.setup(tok)
    batch = data.collate(data.train_dataset)
    p = len(data.train_dataset[0]["prompt_ids"])
    assert torch.equal(batch["input_ids"][0, :p], batch["input_ids"][1, :p])
    full = _decode(tok, batch["input_ids"][0][batch["attention_mask"][0].bool()])
    template = get_template("chatml")
    messages = [{"role": "system", "content": "You are a doctor."}, *row["prompt"], {"role": "assistant", "content": GOOD}]
    assert full == template.render(messages).rstrip("\n")  # exactly one system prompt, the whole conversation
    assert full.count("You are a doctor.") == 1
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    for r in range(2):
        labels = batch["labels"][r]
        assert (labels[:p] == -100).all()
        assert labels[labels != -100][-1] == eot  # each completion ends with the end-of-turn token


def test_no_stray_bos_before_a_completion_with_a_tokenizer_that_adds_bos(tmp_path):
    from transformers import AutoTokenizer

    from helpers import TOKENIZER_DIR

    bos_tok = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    bos_tok.add_special_tokens({"bos_token": "<s>"})
    bos_tok.add_bos_token = True  # a llama-style tokenizer that would prepend BOS to every call
    data = _data(tmp_path, [{"prompt": Q, "chosen": GOOD, "rejected": BAD}])
    data.setup(bos_tok)
    _, chosen, rejected = _pairs(data)[0]
    assert bos_tok.bos_token_id not in chosen + rejected


def test_left_padding_is_honoured(tmp_path, tok):
    rows = [{"prompt": Q, "chosen": GOOD, "rejected": BAD}, {"prompt": "Short?", "chosen": "Yes.", "rejected": "No."}]
    right, left = (_data(tmp_path, rows, padding_side=side) for side in ("right", "left"))
    for d in (right, left):
        d.setup(tok)
    a, b = right.collate(right.train_dataset), left.collate(left.train_dataset)
    for i in range(4):
        ra, la = a["attention_mask"][i].bool(), b["attention_mask"][i].bool()
        assert torch.equal(a["input_ids"][i][ra], b["input_ids"][i][la])
        assert torch.equal(a["labels"][i][ra], b["labels"][i][la])
        assert la[-1] and (not la.all() or ra.all())  # left padding: the last position is real
    assert a["margin"].tolist() == [0.0, 0.0]


def test_paired_batch_contract_order_shapes_and_margin(tmp_path, tok):
    rows = [{"prompt": f"Q{i}", "chosen": f"good {i}", "rejected": f"bad {i}", "margin": float(i)} for i in range(3)]
    data = _data(tmp_path, rows)
    data.setup(tok)
    batch = data.collate(data.train_dataset)
    assert batch["input_ids"].shape[0] == 6 and batch["input_ids"].dtype == torch.long
    assert batch["attention_mask"].shape == batch["labels"].shape == batch["input_ids"].shape
    assert batch["margin"].dtype == torch.float32 and batch["margin"].tolist() == [0.0, 1.0, 2.0]
    for i in range(3):
        for row, word in ((i, "good"), (3 + i, "bad")):
            labels = batch["labels"][row]
            assert _decode(tok, labels[labels != -100].tolist()) == f"{word} {i}<|im_end|>"
    assert batch["num_pairs"] == 3 and batch["num_tokens"] == int(batch["attention_mask"].sum())
    assert batch["num_completion_tokens"] == int((batch["labels"] != -100).sum())


def test_encoders_get_text_pairs_with_token_types():
    import tempfile
    from pathlib import Path

    from transformers import BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "lowers", "pressure", "salt", "nothing", "?", "."]
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "vocab.txt").write_text("\n".join(vocab))
        bert = BertTokenizerFast(str(Path(d) / "vocab.txt"))
        bert.backend_tokenizer.enable_padding(length=24)  # as MiniLM's tokenizer.json: every encoding padded
        rows = [{"prompt": "what lowers pressure ?", "chosen": "salt .", "rejected": "nothing ."}]
        data = PreferenceData(write_jsonl(Path(d) / "p.jsonl", rows), max_length=32)
        data.setup(bert)
        assert data.encoder.pair
        batch = data.collate(data.train_dataset)
    assert bert.convert_ids_to_tokens(batch["input_ids"][0].tolist()) == \
        ["[CLS]", "what", "lowers", "pressure", "?", "[SEP]", "salt", ".", "[SEP]"]
    assert batch["token_type_ids"][0].tolist() == [0] * 6 + [1] * 3
    assert batch["labels"][1].tolist() == [-100] * 6 + bert.convert_tokens_to_ids(["nothing", ".", "[SEP]"])


# ---------------------------------------------------------------------------------------------- length


def test_truncate_cuts_the_prompt_from_the_left_first_then_completions_keeping_their_end():
    prompt, comps = list(range(10)), [[100, 101, 102, 99], [200, 99]]
    p, c, why = truncate(prompt, comps, 10, min_prompt_length=3)
    assert p == [4, 5, 6, 7, 8, 9] and c == comps and why is None  # only the prompt's head went
    p, c, why = truncate(prompt, [[100, 101, 102, 103, 104, 105, 106, 107, 99], [200, 99]], 10, min_prompt_length=3)
    assert p == [7, 8, 9] and c == [[100, 101, 102, 103, 104, 105, 99], [200, 99]] and why is None
    p, c, why = truncate(prompt, comps, 4, min_prompt_length=3)  # one token left: only the end token would stay
    assert why == "empty_completion"
    p, c, why = truncate(prompt, comps, 20, max_prompt_length=2)
    assert p == [8, 9] and why is None


def test_rows_left_without_completion_tokens_are_dropped_and_counted(tmp_path, tok):
    long_prompt = "blood pressure " * 40
    rows = [{"prompt": long_prompt, "chosen": GOOD, "rejected": BAD}, {"prompt": Q, "chosen": GOOD, "rejected": BAD}]
    data = _data(tmp_path, rows, max_length=24, min_prompt_length=23)
    counts = data.setup(tok)  # the long prompt keeps 23 of 24 tokens: only the end token of a completion is left
    assert counts["train/dropped/empty_completion"] == 1 and counts["train/kept"] == 1
    ok = _data(tmp_path, rows, max_length=40, min_prompt_length=4)
    counts = ok.setup(tok)
    assert counts["train/kept"] == 2
    for e in ok.train_dataset:
        assert len(e["prompt_ids"]) + max(len(e["chosen_ids"]), len(e["rejected_ids"])) <= 40
        assert _decode(tok, e["chosen_ids"]) == GOOD + "<|im_end|>"  # the completion stays whole
    tail = _decode(tok, ok.train_dataset[0]["prompt_ids"])
    assert tail.endswith("<|im_start|>assistant\n")  # the prompt lost its head, never its end


def test_chosen_equal_to_rejected_is_dropped_and_counted(tmp_path, tok):
    rows = [{"prompt": Q, "chosen": GOOD, "rejected": GOOD}, {"prompt": Q, "chosen": GOOD, "rejected": BAD}]
    data = _data(tmp_path, rows)
    assert data.validate() == []
    counts = data.setup(tok)
    assert counts["train/dropped/same_completion"] == 1 and counts["train/kept"] == 1


# ---------------------------------------------------------------------------------------------- bad rows


def test_bad_rows_are_named_by_file_line_and_field_all_at_once(tmp_path, tok):
    rows = [{"prompt": Q, "chosen": GOOD, "rejected": BAD}, {"prompt": "", "chosen": GOOD, "rejected": BAD},
            {"prompt": Q, "chosen": None, "rejected": 3}, "{not json", {"prompt": Q, "chosen": GOOD, "rejected": ""},
            {"prompt": Q, "chosen": GOOD, "rejected": BAD, "margin": "big"}]
    data = _data(tmp_path, rows)
    problems = "\n".join(data.validate())
    path = tmp_path / "d.jsonl"
    for line, field in ((2, "prompt"), (3, "chosen"), (3, "rejected"), (5, "rejected"), (6, "margin")):
        assert f"{path} line {line}: field '{field}'" in problems, problems
    assert f"{path} line 4" in problems
    with pytest.raises(DataError, match="line 2"):
        data.setup(tok)
    skip = _data(tmp_path, rows, on_bad_row="skip")
    assert skip.validate() == []
    counts = skip.setup(tok)
    assert counts["train/kept"] == 1
    assert counts["train/bad_row/unparsable"] == 1 and counts["train/bad_row/empty_prompt"] == 1
    assert counts["train/bad_row/missing_field"] == 1 and counts["train/bad_row/bad_margin"] == 1


def test_mapped_columns_are_named_in_row_problems(tmp_path):
    data = _data(tmp_path, [{"q": "", "good": GOOD, "bad": BAD}], fields={"prompt": "q", "chosen": "good",
                                                                          "rejected": "bad"})
    assert "field 'prompt' (column 'q')" in "\n".join(data.validate())


def test_file_and_option_problems_are_reported_before_any_row(tmp_path):
    data = _data(tmp_path, [{"x": 1}], fields={"nope": "x"}, padding_side="middle", max_pairs_per_group=0)
    problems = "\n".join(data.validate())
    assert "data.padding_side='middle'" in problems and "data.max_pairs_per_group" in problems
    assert "data.fields.nope: unknown field" in problems and "cannot tell the preference format" in problems
    mixed = PreferenceData([write_jsonl(tmp_path / "a.jsonl", [{"prompt": Q, "chosen": GOOD, "rejected": BAD}]),
                            write_jsonl(tmp_path / "b.jsonl", [{"prompt": Q, "completion": GOOD, "label": True}])])
    assert any("mix unpaired rows" in p for p in mixed.validate())
    forced = _data(tmp_path, [{"prompt": Q, "completion": GOOD, "label": True}], unpaired=False)
    assert any("cannot be paired" in p for p in forced.validate())
    prompt_answered = _data(tmp_path, [{"messages": [{"role": "user", "content": Q}, {"role": "assistant",
                                                                                          "content": GOOD}],
                                        "chosen": GOOD, "rejected": BAD}])
    assert any("ends with an assistant turn" in p for p in prompt_answered.validate())


# ---------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize("name, paired, rows", [("sample_preference", True, 80), ("sample_kto", False, 86)])
def test_shipped_sample_configs_read_the_sample_files(tok, name, paired, rows):
    cfg = compose("reward_model", [f"data={name}"])
    data = instantiate(cfg.data)
    assert data.validate() == [] and data.val_size and data.val_size > 0
    counts = data.setup(tok)
    assert data.paired is paired and counts["train/read"] == rows and counts["train/kept"] == rows
    langs = {json.loads(line)["lang"] for line in (SAMPLE_DIR / f"{'preference' if paired else 'kto'}_train.jsonl")
             .read_text(encoding="utf-8").splitlines()}
    assert langs == {"en", "zh"}


def test_sample_files_are_reproduced_by_their_script(tmp_path):
    from medlab.assets import make_preference_samples

    make_preference_samples.main(tmp_path)
    for name in ("preference_train.jsonl", "preference_val.jsonl", "kto_train.jsonl", "kto_val.jsonl"):
        assert (tmp_path / name).read_bytes() == (SAMPLE_DIR / name).read_bytes(), name


def test_judgment_pairs_from_the_shared_rerank_data_hold_out_whole_questions(tok, shared_data):
    cfg = compose("reward_model", ["data=rerank_preference", "data.max_pairs_per_group=8"])
    data = instantiate(cfg.data)
    assert data.validate() == []
    counts = data.setup(tok)
    assert counts["train/pairs"] > 100 and counts["val/pairs"] > 10
    assert not {e["group"] for e in data.train_dataset} & {e["group"] for e in data.val_dataset}
