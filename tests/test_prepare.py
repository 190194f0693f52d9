"""`python -m medlab.prepare` (medlab/data/prepare/): cleaning steps, PII masking, exact and MinHash near-dedup
checked against brute-force Jaccard, the cluster-safe split, the report, settings errors, and that the output
trains through the matching experiment."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from itertools import combinations

import pytest
from helpers import SAMPLE_DIR, read_jsonl, run_experiment, write_jsonl

from medlab.config import ConfigError
from medlab.data.prepare import clean, prepare, split
from medlab.data.prepare.dedup import NearDuplicates, UnionFind, jaccard, shingles

QUIET = {"progress": False}


def _prepare(tmp_path, rows, task, name="in.jsonl", **settings):
    src = write_jsonl(tmp_path / name, rows)
    return prepare({"path": str(src), "out": str(tmp_path / "out" / "out.jsonl"), "task": task, **QUIET,
                    **settings})


def _step(report, name):
    return next(s for s in report["steps"] if s["step"] == name)


# ------------------------------------------------------------------------------------------------ near-dup fixtures
WORDS = [f"w{i}" for i in range(400)]
CJK = [chr(0x4E00 + i * 7) for i in range(600)]


def _fixture_docs(seed=0):
    """40 base documents (30 Latin, 10 CJK) + 60 variants with 1-3 small edits."""
    rng = random.Random(seed)
    docs = []
    for b in range(40):
        cjk = b >= 30
        base = [rng.choice(CJK if cjk else WORDS) for _ in range(80 if cjk else 60)]
        joiner = "" if cjk else " "
        docs.append(joiner.join(base))
        for v in range(1 if b % 3 else 2):
            variant = list(base)
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(len(variant))
                variant[i] = rng.choice(CJK if cjk else WORDS)
            docs.append(joiner.join(variant))
    while len(docs) < 100:
        docs.append(" ".join(rng.choice(WORDS) for _ in range(60)))
    rng.shuffle(docs)
    return docs


def test_near_dedup_recall_and_precision_against_brute_force_jaccard():
    docs = _fixture_docs()
    grams = [shingles(d) for d in docs]
    index = NearDuplicates(num_perm=128, threshold=0.8)
    merged = {}
    for i, d in enumerate(docs):
        for j in index.add(i, d):
            merged[(j, i)] = jaccard(grams[i], grams[j])
    true = {(i, j): jaccard(grams[i], grams[j]) for i, j in combinations(range(len(docs)), 2)}
    high = [p for p, s in true.items() if s >= 0.8]
    assert len(high) >= 15
    found = sum(index.uf.find(i) == index.uf.find(j) for i, j in high)
    assert found / len(high) >= 0.95, (found, len(high))
    assert all(s >= 0.5 for s in merged.values()), merged
    # every cluster member is close to its representative (no chains of unrelated documents)
    for i in range(len(docs)):
        assert true.get((index.uf.find(i), i), 1.0) >= 0.5


def test_near_dedup_removes_all_but_the_first_of_a_cluster(tmp_path):
    docs = _fixture_docs()
    report = _prepare(tmp_path, [{"text": d} for d in docs], "pretrain", steps=["near_dedup"])
    out = [r["text"] for r in read_jsonl(tmp_path / "out" / "out.jsonl")]
    grams = {d: shingles(d) for d in docs}
    removed = [d for d in docs if d not in out]
    assert removed and report["rows_out"] == len(out) == len(docs) - len(removed)
    for d in removed:  # each removed document has a kept near twin, never an unrelated one
        assert max(jaccard(grams[d], grams[k]) for k in out) >= 0.5
    kept_pairs = [jaccard(grams[a], grams[b]) for a, b in combinations(out, 2)]
    assert sum(s >= 0.8 for s in kept_pairs) <= 0.05 * len([d for d in docs]), "duplicates left in"
    assert _step(report, "near_dedup")["removed"] == len(removed)


def test_shingles_are_cjk_aware():
    assert shingles("高血压患者") == {"高血压", "血压患", "压患者"}
    assert shingles("one two three four five six") == {"one two three four five", "two three four five six"}
    assert shingles("short text") == {"short text"}


# ------------------------------------------------------------------------------------------------ exact dedup, split
def test_exact_dedup_on_normalized_text_and_qa_keys(tmp_path):
    rows = [{"text": "Aspirin  thins the blood."}, {"text": "aspirin thins the BLOOD"}, {"text": "Other text."}]
    report = _prepare(tmp_path, rows, "pretrain", steps=["exact_dedup"])
    assert report["rows_out"] == 2 and _step(report, "exact_dedup")["removed"] == 1
    qa = [{"question": "Q1?", "options": ["a", "b"], "answer": "A"},
          {"question": "Q1?", "options": ["a", "b"], "answer": "B"},   # same question, other answer: kept
          {"question": "q1", "options": ["a", "b"], "answer": "a"}]    # same question + answer: removed
    report = _prepare(tmp_path / "qa", qa, "qa", steps=["exact_dedup"])
    assert report["rows_out"] == 2


def test_split_keeps_clusters_on_one_side():
    uf = UnionFind()
    ids = list(range(100))
    for a in range(0, 60, 3):  # 20 clusters of 3
        uf.union(a, a + 1)
        uf.union(a, a + 2)
    for seed in range(5):
        val = split(ids, uf, 0.2, seed)
        assert 15 <= len(val) <= 20
        for i in ids:
            assert (i in val) == (uf.find(i) in val or any(j in val for j in ids if uf.find(j) == uf.find(i)))
            assert all((j in val) == (i in val) for j in ids if uf.find(j) == uf.find(i))
    assert split(ids, uf, 10, 0) and len(split(ids, uf, 10, 0)) <= 10


def test_split_only_mode_keeps_duplicates_together(tmp_path):
    docs = _fixture_docs()
    report = _prepare(tmp_path, [{"text": d} for d in docs], "pretrain", steps=["exact_dedup", "near_dedup"],
                      dedup_mode="split_only", val_size=0.3, seed=3)
    train = {r["text"] for r in read_jsonl(tmp_path / "out" / "out.jsonl")}
    val = {r["text"] for r in read_jsonl(tmp_path / "out" / "out_val.jsonl")}
    assert report["rows_out"] == len(docs) and len(train) + len(val) == len(docs) and val
    grams = {d: shingles(d) for d in docs}
    high = [(a, b) for a, b in combinations(docs, 2) if jaccard(grams[a], grams[b]) >= 0.8]
    crossing = [(a, b) for a, b in high if (a in val) != (b in val)]
    assert len(crossing) <= 0.05 * len(high)  # MinHash recall >= 0.95; the clusters found never cross
    assert all(jaccard(grams[a], grams[b]) < 0.9 for a, b in crossing)


# ------------------------------------------------------------------------------------------------ cleaning steps
PII_ROWS = ["请联系13812345678或邮箱 zhang.san@hospital.cn", "身份证 11010519491231002X, 病历号：8823412",
            "MRN: 12345678, DOB: 03/14/1962, call (555) 123-4567", "出生日期：1975年3月2日 住院"]
PII_VALUES = ["13812345678", "zhang.san@hospital.cn", "11010519491231002X", "8823412", "12345678", "03/14/1962",
              "555) 123-4567", "1975年3月2日"]


def test_pii_patterns_are_masked_and_never_reported(tmp_path):
    rows = [{"text": t} for t in PII_ROWS] + [{"text": "x"}]
    report = _prepare(tmp_path, rows, "pretrain", steps=["length", "pii"], min_chars=2)
    out = (tmp_path / "out" / "out.jsonl").read_text(encoding="utf-8")
    text = json.dumps(report, ensure_ascii=False) + (tmp_path / "out" / "prepare_report.json").read_text("utf-8")
    for value in PII_VALUES:
        assert value not in out and value not in text
    pii = _step(report, "pii")
    assert pii["counts"] == {"DOB": 2, "EMAIL": 1, "ID": 1, "MRN": 2, "PHONE": 2} and pii["changed"] == 4
    assert "examples" not in pii
    assert "[PHONE]" in out and "[ID]" in out and "病历号：[MRN]" in out and "出生日期：[DOB]" in out
    assert not clean.valid_cn_id("110105194912310021")  # a wrong check digit is not an ID
    # removed examples of other steps never show personal data either
    report = _prepare(tmp_path / "b", [{"text": PII_ROWS[0]}, {"text": "ok text"}], "pretrain",
                      steps=["length", "pii"], max_chars=20)
    assert "13812345678" not in json.dumps(report, ensure_ascii=False) and _step(report, "length")["removed"] == 1


def test_text_steps_on_crafted_rows(tmp_path):
    assert clean.nfkc("ＡＢＣ１\u200b\x07x\ufeff") == "ABC1x"
    assert clean.strip_markup("<p>Take&nbsp;2 &amp; rest</p><script>x()</script><br/>ok") .split() == \
        ["Take", "2", "&", "rest", "ok"]
    assert clean.squeeze_whitespace("  a \t b \n\n\n\n c  ") == "a b\n\nc"
    assert clean.language_of("高血压是一种常见病") == "zh" and clean.language_of("Hypertension is common") == "en"
    assert clean.language_of("1234 !!") is None
    rows = [{"text": "<b>Hypertension</b>&nbsp;is   common"}, {"text": "高血压 是 一种 常见病"},
            {"text": "Это русский текст"}, {"text": "ok"}, {"text": "y" * 500}]
    report = _prepare(tmp_path, rows, "pretrain", steps=["nfkc", "html", "whitespace", "length", "language"],
                      min_chars=5, max_chars=100)
    out = [r["text"] for r in read_jsonl(tmp_path / "out" / "out.jsonl")]
    assert out == ["Hypertension is common", "高血压 是 一种 常见病"]
    assert _step(report, "html")["changed"] == 1 and _step(report, "whitespace")["changed"] >= 1
    assert _step(report, "length")["removed"] == 2 and _step(report, "language")["removed"] == 1
    assert len(_step(report, "language")["examples"]) == 1
    zh_only = _prepare(tmp_path / "zh", rows[:2], "pretrain", steps=["language"], languages=["zh"])
    assert zh_only["rows_out"] == 1


def test_each_task_writes_rows_its_data_source_reads(tmp_path):
    from medlab.data.readers import read_file

    sft = _prepare(tmp_path / "s", [{"instruction": "What is <b>BP</b>?", "output": "Blood pressure."}], "sft")
    assert read_jsonl(tmp_path / "s" / "out" / "out.jsonl")[0]["messages"][0] == {"role": "user",
                                                                                  "content": "What is BP?"}
    assert sft["format"] == "alpaca"
    _prepare(tmp_path / "r", [{"query": "q one", "positive": "p one", "negatives": ["n"]},
                              {"query": "q two", "doc": "d", "label": 1}], "retrieval", steps=[])
    assert read_jsonl(tmp_path / "r" / "out" / "out.jsonl")[0] == {"query": "q one", "positive": "p one",
                                                                   "negatives": ["n"]}
    qa = _prepare(tmp_path / "q", [{"Question": "Q?", "choices": ["x", "y"], "label": "y"}], "qa", steps=[],
                  fields={"question": "Question"})
    assert read_jsonl(tmp_path / "q" / "out" / "out.jsonl")[0]["answer"] == "B" and qa["rows_out"] == 1
    src = write_jsonl(tmp_path / "p.jsonl", [{"text": "hello world"}, {"text": "bye"}])
    prepare({"path": str(src), "out": str(tmp_path / "p" / "o.parquet"), "task": "pretrain", **QUIET})
    assert read_file(tmp_path / "p" / "o.parquet")["text"] == ["hello world", "bye"]


def test_rows_left_invalid_by_cleaning_are_dropped(tmp_path):
    report = _prepare(tmp_path, [{"instruction": "Q?", "output": "<br>"}, {"instruction": "Q2?", "output": "A"}],
                      "sft", steps=["html", "whitespace"])
    assert report["rows_out"] == 1 and _step(report, "valid")["removed"] == 1


# ------------------------------------------------------------------------------------------------ errors, command
def test_bad_settings_are_one_config_error_and_exit_2(tmp_path):
    from medlab.commands.prepare import main

    with pytest.raises(ConfigError) as err:
        main([f"prepare.path={tmp_path}/missing.jsonl", f"prepare.out={tmp_path}/o.jsonl", "prepare.task=chat",
              "prepare.steps=[nfkc,shout]", f"hydra.run.dir={tmp_path}/h"])
    text = str(err.value)
    assert "missing.jsonl" in text and "'chat'" in text and "'shout'" in text and "3 problem(s)" in text
    proc = subprocess.run([sys.executable, "-m", "medlab.prepare", "prepare.task=nope",
                           f"hydra.run.dir={tmp_path}/h2"], cwd=tmp_path, capture_output=True, text=True,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}, timeout=300)
    assert proc.returncode == 2 and "prepare.path is required" in proc.stderr and "Traceback" not in proc.stderr


def test_prepared_sft_output_trains(tmp_path):
    from medlab.commands.prepare import main

    out = tmp_path / "prep" / "sft.jsonl"
    report = main([f"prepare.path={SAMPLE_DIR / 'sft_alpaca.jsonl'}", f"prepare.out={out}", "prepare.task=sft",
                   "prepare.val_size=0.1", "prepare.progress=false", f"hydra.run.dir={tmp_path}/h"])
    assert report["val_rows"] > 0 and (tmp_path / "prep" / "prepare_report.json").is_file()
    result = run_experiment("sft", [f"data.path={out}", f"data.val_path={report['val_out']}", "data.limit=16",
                                    "trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.progress_bar=false",
                                    "logger=none", "export.enabled=false"], tmp_path / "run")
    assert result.metrics.get("train/loss") is not None or result.history


def test_prepared_qa_output_trains_grpo(tmp_path):
    out = tmp_path / "prep" / "qa.jsonl"
    prepare({"path": str(SAMPLE_DIR / "qa_mc_train.jsonl"), "out": str(out), "task": "qa", **QUIET})
    result = run_experiment("grpo_lora", [f"data.path={out}", "data.val_path=null", "data.limit=4",
                                          "trainer.max_steps=1", "trainer.val_every_n_steps=null",
                                          "objective.num_generations=2", "objective.max_new_tokens=4",
                                          "data.batch_size=2", "trainer.progress_bar=false", "logger=none",
                                          "export.enabled=false"], tmp_path / "run")
    assert result.history
