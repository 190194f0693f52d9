"""What a new user hits with their own data: problems found up front (before any model loads, all at once,
named ``FILE line N`` / ``FILE row N`` counting from 1), unparsable lines skipped and counted with
``data.on_bad_row=skip``, a validation split held out by default, and every documented ``data.fields.*``
key settable as the README shows it (``eval.*`` / ``mine.*``: tests/test_eval_commands.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import datasets
import pytest
from helpers import TOKENIZER_DIR, write_jsonl
from hydra.utils import instantiate
from omegaconf import OmegaConf
from transformers import AutoTokenizer

import medlab
import medlab.commands.train
from medlab.config import ConfigError, collect_problems
from medlab.data import CausalLMData, DataError
from medlab.data.formats import CANONICAL_FIELDS
from medlab.data.preference_rows import CANONICAL as PREFERENCE_FIELDS
from medlab.data.readers import read_located
from medlab.data.split import held_out_count
from medlab.retrieval import rows as R
from medlab.retrieval.data import RetrievalData
from medlab.rl import data as rl_data
from medlab.rl.data import PromptData

README = (medlab.CONF_DIR.parent / "README.md").read_text()
QUICK = ["trainer.progress_bar=false", "export.enabled=false", "trainer.ckpt_every_n_steps=null",
         "trainer.save_final_checkpoint=false"]


def _alpaca(i: int) -> dict:
    return {"instruction": f"What is condition {i}?", "output": f"Condition {i} is a made-up disease number {i}."}


def _no_model(monkeypatch):
    monkeypatch.setattr(medlab.commands.train, "build_model", lambda *a, **k: pytest.fail("the model loaded before the check"))


# ---------------------------------------------------------------------------------------------- up front


def test_a_truncated_line_deep_in_the_file_is_a_config_problem_before_the_model_loads(tmp_path, monkeypatch):
    """The issue's case: line 8 of 12 is cut off; it used to surface only after the model had loaded."""
    lines = [_alpaca(i) for i in range(12)]
    lines[7] = '{"instruction": "a", "output": '
    path = write_jsonl(tmp_path / "sft.jsonl", lines)
    _no_model(monkeypatch)
    with pytest.raises(ConfigError) as err:
        medlab.run(medlab.compose(None, ["data=sft_chat", f"data.path={path}", *QUICK], run_dir=str(tmp_path / "r")))
    msg = str(err.value)
    assert f"{path} line 8: not valid JSON (Expecting value at column 32)" in msg, msg
    assert "line and row numbers count from 1" in msg and "at at" not in msg


def test_every_bad_line_and_row_of_every_file_is_listed_at_once(tmp_path):
    """jsonl (parse error + a row problem after a blank line), csv, a .json list and parquet in one check."""
    a = write_jsonl(tmp_path / "a.jsonl", [_alpaca(0), "", '{"instruction": "x", "output": }', _alpaca(1),
                                            {"instruction": "no answer"}])
    b = tmp_path / "b.csv"
    b.write_text('instruction,output\nq1,a1\nq2,a2,extra\n"multi\nline",\n')
    c = tmp_path / "c.json"
    c.write_text(json.dumps([_alpaca(2), ["not", "an", "object"], {"instruction": 3, "output": "a"}]))
    d = tmp_path / "d.parquet"
    datasets.Dataset.from_list([_alpaca(3), {"instruction": "q", "output": "   "}]).to_parquet(str(d))
    cfg = medlab.compose(None, ["data=sft_chat", f"data.path=[{a},{b},{c}]", f"data.val_path={d}"],
                         run_dir=str(tmp_path / "r"))
    problems = collect_problems(cfg)
    text = "\n".join(problems)
    expected = [
        f"{a} line 3: not valid JSON (Expecting value at column 32)",
        f"{a} line 5: field 'output': missing 'output'",           # the 5th line (4th record: a blank line above)
        f"{b} line 3: 3 fields, more than the 2 of the header",
        f"{b} line 4: field 'messages[1].content': empty assistant content",  # the record starts on line 4
        f"{c} row 2: a JSON list, expected an object",
        f"{c} row 3: field 'instruction': 'instruction' must be a string, got int",
        f"{d} row 2: field 'messages[1].content': empty assistant content",
    ]
    for needle in expected:
        assert sum(needle in p for p in problems) == 1, (needle, text)
    assert any(p.startswith("data: 6 bad row(s) (") and "count from 1" in p for p in problems), text  # train files
    assert any(p.startswith("data: 1 bad row(s) (") for p in problems), text  # the val file


def test_retrieval_and_prompt_data_are_read_in_full_by_validation(tmp_path):
    pairs = [{"question": f"q{i}", "answer": f"a{i}"} for i in range(9)]
    path = write_jsonl(tmp_path / "pairs.jsonl", [*pairs[:6], "{broken", *pairs[6:], {"question": "q", "answer": ""}])
    problems = RetrievalData(path).validate()
    assert f"{path} line 7: not valid JSON (Expecting property name enclosed in double quotes at column 2)" in problems
    assert f"{path} line 11: field 'answer': no positive document (empty or missing)" in problems
    assert problems[0].startswith("2 bad row(s) (") and "count from 1" in problems[0]
    assert RetrievalData(path, on_bad_row="skip").validate() == []

    qa = [{"question": f"Is {i} even?", "options": ["yes", "no"], "answer": "A"} for i in range(8)]
    path = write_jsonl(tmp_path / "qa.jsonl", [*qa[:6], '{"question": "cut', *qa[6:], {"question": "", "answer": "A"}])
    problems = PromptData(path).validate()
    assert any(p.startswith(f"{path} line 7: not valid JSON (Unterminated string starting at column 14)")
               for p in problems), problems
    assert f"{path} line 10: field 'question': missing or empty question" in problems
    assert PromptData(path, on_bad_row="skip").validate() == []


def test_prompt_data_names_the_mapped_column(tmp_path):
    path = write_jsonl(tmp_path / "qa.jsonl", [{"Q": "ok?", "answer": "A"}, {"Q": " ", "answer": "A"}])
    problems = PromptData(path, fields={"question": "Q"}).validate()
    assert f"{path} line 2: field 'question' (column 'Q'): missing or empty question" in problems


# ---------------------------------------------------------------------------------------------- skip


def test_skip_drops_and_counts_unparsable_lines_in_every_data_source(tmp_path, monkeypatch):
    lines = [_alpaca(i) for i in range(10)] + ['{"instruction": "a", "output": ', "\x00not json", "[1, 2]"]
    path = write_jsonl(tmp_path / "sft.jsonl", lines)
    _no_model(monkeypatch)
    cfg = medlab.compose(None, ["data=sft_chat", f"data.path={path}", "data.on_bad_row=skip"], run_dir=str(tmp_path))
    assert collect_problems(cfg) == []  # skip: nothing to fix up front

    tokenizer = AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))
    data = CausalLMData(path=str(path), on_bad_row="skip", val_split=0.2)
    counts = data.setup(tokenizer)
    assert counts["train/bad_row/unparsable"] == 3 and counts["train/read"] == 10
    assert counts["train/kept"] + counts["val/kept"] == 10
    assert len(read_located(path).unparsable) == 3

    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"question": "q1", "answer": "a1"}, "oops",
                                                    {"question": "q2", "answer": "a2"}])
    counts = RetrievalData(pairs, on_bad_row="skip").setup(None)
    assert counts["train/bad_row/unparsable"] == 1 and counts["train/examples"] == 2
    with pytest.raises(DataError, match=r"pairs.jsonl line 2: not valid JSON"):
        RetrievalData(pairs).setup(None)

    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "ok?", "answer": "yes"}, "oops"])
    prompts = PromptData(qa, on_bad_row="skip")
    counts = prompts.setup(tokenizer)
    assert counts["train/bad_row/unparsable"] == 1 and counts["train/prompts"] == 1
    assert prompts.train_dataset[0]["fields"]["source"] == f"{qa} line 1"


def test_skipped_unparsable_lines_reach_metrics_json(tmp_path):
    lines = [_alpaca(i) for i in range(12)] + ['{"instruction": "a", "output": ']
    path = write_jsonl(tmp_path / "sft.jsonl", lines)
    result = medlab.run(medlab.compose(None, ["data=sft_chat", f"data.path={path}", "data.on_bad_row=skip",
                                              "trainer.max_steps=1", "data.batch_size=4", *QUICK],
                                       run_dir=str(tmp_path / "r")))
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["data/train/bad_row/unparsable"] == 1 and metrics["data/train/read"] == 12


# ---------------------------------------------------------------------------------------------- val split


@pytest.mark.parametrize("n, fraction, lo, hi, expected", [
    (1, 0.05, 8, 500, 0), (2, 0.05, 8, 500, 1), (10, 0.05, 8, 500, 2), (24, 0.05, 8, 500, 6), (40, 0.05, 8, 500, 8),
    (200, 0.05, 8, 500, 10), (100_000, 0.05, 8, 500, 500), (100, 0.0, 8, 500, 0), (10, 0.1, 1, None, 1),
    (10, 0.99, 1, None, 9),
])
def test_held_out_count(n, fraction, lo, hi, expected):
    assert held_out_count(n, fraction, lo, hi) == expected


def test_sft_chat_holds_out_a_split_so_the_objective_is_finite(tmp_path):
    """CLI-equivalent: python -m medlab data=sft_chat data.path=small.jsonl gives a finite val/loss objective."""
    path = write_jsonl(tmp_path / "small.jsonl", [_alpaca(i) for i in range(24)])
    cfg = medlab.compose(None, ["data=sft_chat", f"data.path={path}", "trainer.max_steps=2",
                                "trainer.val_every_n_steps=2", "data.batch_size=4", *QUICK],
                         run_dir=str(tmp_path / "r"))
    result = medlab.run(cfg)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["monitor"] == "val/loss" and math.isfinite(metrics["objective"]) and math.isfinite(float(result))
    assert metrics["data/val/kept"] == 6 and metrics["data/train/kept"] == 18  # max(5%, min(8, a quarter))


@pytest.mark.parametrize("name, overrides", [
    ("sft_chat", []),
    ("pretrain_text", ["objective.mode=cpt"]),
])
def test_user_data_configs_hold_out_validation_rows(name, overrides, tmp_path):
    path = tmp_path / ("data.jsonl" if name == "sft_chat" else "data.txt")
    if name == "sft_chat":
        write_jsonl(path, [_alpaca(i) for i in range(40)])
    else:
        path.write_text("".join(f"Document {i} about a made-up condition.\n" for i in range(40)))
    cfg = medlab.compose(None, [f"data={name}", f"data.path={path}", *overrides], run_dir=str(tmp_path))
    assert collect_problems(cfg) == []
    data = instantiate(cfg.data)
    assert data.validate() == [] and data.val_size == 8


def test_a_short_cpt_validation_split_becomes_one_shorter_block(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("".join(f"Document {i} about a made-up condition and its treatment.\n" for i in range(40)))
    data = CausalLMData(path=str(path), mode="cpt", format="text", max_length=256, val_split=0.01, val_split_min=8)
    counts = data.setup(AutoTokenizer.from_pretrained(str(TOKENIZER_DIR)))
    assert counts["val/short_block"] == 1 and len(data.val_dataset) == 1 and counts["train/blocks"] >= 1


def test_no_validation_rows_with_a_val_monitor_is_said_up_front(tmp_path):
    path = write_jsonl(tmp_path / "small.jsonl", [_alpaca(i) for i in range(6)])
    base = ["data=sft_chat", f"data.path={path}"]
    problems = collect_problems(medlab.compose(None, base + ["data.val_split=0"], run_dir=str(tmp_path)))
    assert any("no validation rows" in p and "trainer.monitor=val/loss" in p and "data.val_split" in p
               for p in problems), problems
    one = write_jsonl(tmp_path / "one.jsonl", [_alpaca(0)])  # too small to hold anything out
    problems = collect_problems(medlab.compose(None, ["data=sft_chat", f"data.path={one}"], run_dir=str(tmp_path)))
    assert any("no validation rows" in p for p in problems), problems
    # monitoring a training metric, or no scheduled validation (a warning then), is fine
    for extra in (["trainer.monitor=train/loss"], ["trainer.val_every_n_steps=null"]):
        assert collect_problems(medlab.compose(None, base + ["data.val_split=0", *extra], run_dir=str(tmp_path))) == []


# ---------------------------------------------------------------------------------------------- fields


@pytest.mark.parametrize("data", ["sft_chat", "pretrain_text"])
def test_every_sft_field_is_settable_and_null_means_not_mapped(data, tmp_path):
    names = CANONICAL_FIELDS if data == "sft_chat" else ("text",)
    for name in names:
        cfg = medlab.compose(None, [f"data={data}", "data.path=x.jsonl", f"data.fields.{name}=my_{name}"],
                             run_dir=str(tmp_path))
        assert cfg.data.fields[name] == f"my_{name}"
    cfg = medlab.compose(None, ["data=sft_chat", "data.path=x", "data.fields={instruction: question, output: answer}"],
                         run_dir=str(tmp_path))
    assert (cfg.data.fields.instruction, cfg.data.fields.output, cfg.data.fields.input) == ("question", "answer", None)
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": "Q?", "answer": "A."}])
    cfg.data.path = str(qa)
    assert instantiate(cfg.data).validate() == []
    alpaca = write_jsonl(tmp_path / "alpaca.jsonl", [_alpaca(0), _alpaca(1)])
    cfg = medlab.compose(None, ["data=sft_chat", f"data.path={alpaca}"], run_dir=str(tmp_path))  # all null
    assert instantiate(cfg.data).validate() == []


@pytest.mark.parametrize("data", ["retrieval", "sample_pairs", "sample_rerank", "sample_images", "medquad_pairs"])
def test_every_retrieval_field_is_settable(data, tmp_path):
    for name in R.CANONICAL:
        cfg = medlab.compose("biencoder", [f"data={data}", "data.path=x.jsonl", f"data.fields.{name}=col"],
                             run_dir=str(tmp_path))
        assert cfg.data.fields[name] == "col"


@pytest.mark.parametrize("data", ["sample_qa", "medqa_usmle", "pubmedqa", "cmmlu_medical"])
def test_every_prompt_field_is_settable(data, tmp_path):
    for name in rl_data.CANONICAL:
        cfg = medlab.compose("grpo_lora", [f"data={data}", f"data.fields.{name}=col"], run_dir=str(tmp_path))
        assert cfg.data.fields[name] == "col"
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"Question": "Is it?", "answer": "yes"},
                                              {"Question": "?", "answer": "no"}])
    cfg = medlab.compose("grpo_lora", ["data=sample_qa", f"data.path={qa}", "data.val_path=null", "data.val_split=0.5",
                                       "data.fields.question=Question"],
                         run_dir=str(tmp_path))
    assert instantiate(cfg.data).validate() == []  # options/answer/contexts null: not mapped


def test_every_data_field_the_readme_names_exists():
    known = set(CANONICAL_FIELDS) | set(R.CANONICAL) | set(rl_data.CANONICAL) | set(PREFERENCE_FIELDS)
    named = set(re.findall(r"data\.fields\.(\w+)", README))
    mapping = re.findall(r"'data\.fields=\{([^}]*)\}'", README)[0]  # {instruction: question, output: answer}
    named |= {pair.split(":")[0].strip() for pair in mapping.split(",")}
    assert named and named <= known, named - known
    for section, names in (("**Your data.**", R.CANONICAL), ("**Prompt data.**", rl_data.CANONICAL)):
        text = README[README.index(section):][:1500]
        assert all(f"`{n}`" in text for n in names), (section, [n for n in names if f"`{n}`" not in text])


def _triples(path: Path, n_questions: int = 12) -> Path:
    rows = [{"question": f"What treats condition {q}?", "answer": f"Treatment {q}-{k} helps with condition {q}.",
             "judgment": 4 - k, "qid": f"q{q}"} for q in range(n_questions) for k in range(3)]
    return write_jsonl(path, rows)


def test_readme_retrieval_mapping_on_triples_sets_up_and_runs(tmp_path):
    """data=retrieval data.fields.doc=answer data.fields.score=judgment data.fields.group=qid (the README's
    triples): composes, validates, sets up, and a short reranker run on it gives a finite objective."""
    path = _triples(tmp_path / "judged.jsonl")
    overrides = ["model=tiny_bert", "data=retrieval", f"data.path={path}", "data.fields.doc=answer",
                 "data.fields.score=judgment", "data.fields.group=qid", "data.score_range=[1,4]",
                 "data.label_threshold=3", "trainer.max_steps=2", "trainer.val_every_n_steps=2", "data.batch_size=8",
                 *QUICK]
    cfg = medlab.compose("reranker", overrides, run_dir=str(tmp_path / "r"))
    assert collect_problems(cfg) == []
    data = instantiate(cfg.data)
    counts = data.setup(None)
    # 36 rows read; the 3 held-out queries' 9 pairs validate pointwise (training: the reranker's lists of 8)
    assert counts["train/rows"] == 36 and counts["val/examples"] == 9, counts
    assert data.validate() == [] and data.val_size == 3  # 12 queries: at least 8, but at most a quarter
    assert {e["group"] for e in data.val_dataset} and not {e["group"] for e in data.val_dataset} & {
        e["group"] for e in data.train_dataset}
    result = medlab.run(cfg)
    assert result.metrics["monitor"] == "val/ndcg@10" and math.isfinite(float(result))

    bi = medlab.compose("biencoder", [o for o in overrides if o != "trainer.max_steps=2"], run_dir=str(tmp_path / "b"))
    assert collect_problems(bi) == []
    examples = instantiate(bi.data)
    examples.setup(None)
    assert all(e["positive"].startswith("Treatment") for e in examples.train_dataset)  # judged >= 3 -> pairs
