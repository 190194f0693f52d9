"""`python -m medlab.prepare` tasks beyond sft/pretrain/qa/retrieval (issue 15): ``preference`` (pairs, ShareGPT /
OpenAI prompts + chosen/rejected, unpaired KTO rows, graded judgments -> every higher-vs-lower pair), ``toolcall``
(function-calling conversations), ``hf://`` inputs and the CJK-aware NFKC step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SAMPLE_DIR, read_jsonl, run_experiment, write_jsonl

from medlab.data.errors import DataError
from medlab.data.prepare import clean, prepare

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = {"progress": False}
REPO = Path(__file__).resolve().parents[1]


def _prepare(tmp_path, rows, task, name="in.jsonl", **settings):
    src = write_jsonl(tmp_path / name, rows)
    out = tmp_path / "out" / "out.jsonl"
    report = prepare({"path": str(src), "out": str(out), "task": task, **QUIET, **settings})
    return report, read_jsonl(out)


def _step(report, name):
    return next(s for s in report["steps"] if s["step"] == name)


# ------------------------------------------------------------------------------------------------ preference
PAIR = {"prompt": "What lowers blood pressure?", "chosen": "Less salt and regular exercise.",
        "rejected": "Nothing does."}


@pytest.mark.parametrize("row", [
    PAIR,
    {"question": PAIR["prompt"], "response_chosen": PAIR["chosen"], "response_rejected": PAIR["rejected"]},
    {"conversations": [{"from": "human", "value": PAIR["prompt"]}], "chosen": {"from": "gpt", "value": PAIR["chosen"]},
     "rejected": {"from": "gpt", "value": PAIR["rejected"]}},
    {"messages": [{"role": "user", "content": PAIR["prompt"]}],
     "chosen": [{"role": "assistant", "content": PAIR["chosen"]}],
     "rejected": [{"role": "assistant", "content": PAIR["rejected"]}]},
], ids=["pairs", "aliases", "sharegpt", "openai"])
def test_every_pair_input_becomes_the_canonical_pair(tmp_path, row):
    report, out = _prepare(tmp_path, [row], "preference", steps=[])
    assert out == [PAIR] and report["rows_out"] == 1


def test_system_margin_and_multi_turn_prompts_are_kept(tmp_path):
    rows = [{**PAIR, "system": "You are a nurse.", "margin": 2},
            {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Fever?"}],
             "chosen": "Rest and fluids.", "rejected": "Ignore it."}]
    _, out = _prepare(tmp_path, rows, "preference", steps=[])
    assert out[0] == {"prompt": PAIR["prompt"], "system": "You are a nurse.", "chosen": PAIR["chosen"],
                      "rejected": PAIR["rejected"], "margin": 2.0}
    assert out[1]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                                {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Fever?"}]
    assert out[1]["chosen"] == "Rest and fluids." and "system" not in out[1]


def test_preference_output_is_read_by_the_training_format(tmp_path):
    """What `data=preference` reads (format auto-detection and row normalization of medlab.data.preference_rows)
    takes every prepared row as it is, to the same prompt and completions."""
    from medlab.data import registry

    rows = [PAIR, {**PAIR, "system": "S", "margin": 1.5, "prompt": "Other?"},
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}], "chosen": "d", "rejected": "e"}]
    _, out = _prepare(tmp_path, rows, "preference", steps=[])
    columns = set().union(*(r.keys() for r in out))
    assert registry.detect("preference", columns, out[0]) == "preference_pairs"
    norm = [registry.get("preference_pairs").normalize(r) for r in out]
    assert norm[1]["prompt"][0] == {"role": "system", "content": "S", "tool_calls": []} and norm[1]["margin"] == 1.5
    assert [m["content"] for m in norm[2]["prompt"]] == ["a", "b", "c"]
    assert norm[0]["chosen"][0]["content"] == PAIR["chosen"]


def test_exact_dedup_on_prompt_chosen_rejected_and_chosen_equal_rejected_dropped(tmp_path):
    rows = [PAIR, {**PAIR, "chosen": "less salt, and REGULAR exercise"},  # normalized text: an exact duplicate
            {**PAIR, "rejected": "Only pills."},  # same prompt + chosen, other rejected: a different pair
            {**PAIR, "rejected": PAIR["chosen"]},  # chosen == rejected: dropped at reading
            {**PAIR, "rejected": PAIR["chosen"] + "   "}]  # equal once whitespace is squeezed
    report, out = _prepare(tmp_path, rows, "preference", steps=["whitespace", "exact_dedup", "near_dedup"])
    assert [r["rejected"] for r in out] == ["Nothing does.", "Only pills."]
    assert _step(report, "read")["counts"]["chosen_equals_rejected"] == 2
    assert _step(report, "exact_dedup")["removed"] == 1
    assert _step(report, "near_dedup")["removed"] == 0  # near-duplicate prompts cluster, pairs are never removed


def test_pairs_of_one_prompt_stay_on_one_side_of_the_split(tmp_path):
    rows = [{"prompt": f"question {q}", "chosen": f"good {q} {k}", "rejected": f"bad {q} {k}"}
            for q in range(10) for k in range(3)]
    report, train = _prepare(tmp_path, rows, "preference", val_size=0.2, steps=["exact_dedup"])
    val = read_jsonl(report["val_out"])
    assert len(val) == 6 and len(train) == 24
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in val}


def test_judgments_give_every_higher_vs_lower_pair_per_query(tmp_path):
    rows = [{"query": "q1", "doc": "a", "score": 3, "group": "g1"}, {"query": "q1", "doc": "b", "score": 1,
                                                                     "group": "g1"},
            {"query": "q1", "doc": "c", "score": 2, "group": "g1"}, {"query": "q1", "doc": "d", "score": 2,
                                                                     "group": "g1"},
            {"query": "q2", "doc": "x", "label": 1, "group": "g2"}, {"query": "q2", "doc": "y", "label": 0,
                                                                     "group": "g2"},
            {"query": "q3", "doc": "t", "score": 1, "group": "g3"}, {"query": "q3", "doc": "u", "score": 1,
                                                                     "group": "g3"}]
    report, out = _prepare(tmp_path, rows, "preference", steps=[], margin_from_score=True)
    pairs = {(r["prompt"], r["chosen"], r["rejected"]): r.get("margin") for r in out}
    # hand count: q1 scores a3 c2 d2 b1 -> a>c a>d a>b c>b d>b (c=d tie: none); q2 x>y; q3 a tie: none
    assert pairs == {("q1", "a", "c"): 1.0, ("q1", "a", "d"): 1.0, ("q1", "a", "b"): 2.0, ("q1", "c", "b"): 1.0,
                     ("q1", "d", "b"): 1.0, ("q2", "x", "y"): 1.0}
    counts = _step(report, "read")["counts"]
    assert counts["pairs_from_judgments"] == 6 and counts["groups_without_pairs"] == 1 and report["rows_in"] == 8
    _, capped = _prepare(tmp_path / "cap", rows, "preference", steps=[], max_pairs_per_group=1)
    assert {(r["prompt"], r["chosen"], r["rejected"]) for r in capped} == {("q1", "a", "b"), ("q2", "x", "y")}
    assert all("margin" not in r for r in capped)


def test_unpaired_rows_for_kto(tmp_path):
    rows = [{"prompt": "Q1", "completion": "good", "label": True}, {"prompt": "Q1", "completion": "bad", "label": "0"},
            {"prompt": "Q1", "completion": "Good", "label": True},  # exact duplicate of the first
            {"prompt": "Q2", "completion": "x", "label": "maybe"}]
    report, out = _prepare(tmp_path, rows, "preference")
    assert out == [{"prompt": "Q1", "completion": "good", "label": True},
                   {"prompt": "Q1", "completion": "bad", "label": False}]
    assert _step(report, "read")["counts"]["bad_label"] == 1 and _step(report, "exact_dedup")["removed"] == 1
    assert report["format"] == "unpaired"


def test_prepared_preference_file_trains_dpo(tmp_path):
    """The shipped preference sample with aliased columns -> prepare -> ``+experiment=dpo`` on the output as is."""
    if not (REPO / "conf" / "experiment" / "dpo.yaml").is_file():
        pytest.skip("the dpo experiment is not in this checkout")
    rows = [{"question": r["prompt"], "response_chosen": r["chosen"], "response_rejected": r["rejected"]}
            for r in read_jsonl(SAMPLE_DIR / "preference_train.jsonl")]
    src = write_jsonl(tmp_path / "raw.jsonl", rows + rows[:5])  # 5 exact duplicates
    out = tmp_path / "prep" / "pref.jsonl"
    report = prepare({"path": str(src), "out": str(out), "task": "preference", "val_size": 0.1, **QUIET})
    assert report["rows_out"] == len(rows) and report["val_rows"] > 0
    result = run_experiment("dpo", [f"data.path={out}", f"data.val_path={report['val_out']}", "trainer.max_steps=2",
                                    "trainer.val_every_n_steps=2", "trainer.ckpt_every_n_steps=null",
                                    "trainer.progress_bar=false", "logger=none", "export.enabled=false"],
                            tmp_path / "run")
    assert result.history


# ------------------------------------------------------------------------------------------------ toolcall
TOOLS = [{"name": "get_dose", "description": "Dose of a drug",
          "parameters": {"type": "object", "properties": {"drug": {"type": "string"}}}}]


def _glaive(drug="ibuprofen", tool="get_dose", tools=TOOLS):
    return {"conversations": [{"from": "human", "value": f"Dose of {drug}?"},
                              {"from": "function_call", "value": json.dumps({"name": tool, "arguments": {"drug": drug}})},
                              {"from": "observation", "value": '{"dose": "400 mg"}'},
                              {"from": "gpt", "value": "400 mg every 6 hours."}],
            "tools": json.dumps(tools) if tools is not None else None}


def test_toolcall_inputs_become_the_canonical_rows(tmp_path):
    openai = {"messages": [{"role": "user", "content": "Dose of ibuprofen?"},
                           {"role": "assistant", "content": None, "tool_calls": [
                               {"id": "c1", "type": "function",
                                "function": {"name": "get_dose", "arguments": '{"drug": "ibuprofen"}'}}]},
                           {"role": "tool", "content": '{"dose": "400 mg"}'},
                           {"role": "assistant", "content": "400 mg every 6 hours."}],
              "tools": [{"type": "function", "function": TOOLS[0]}]}
    _, glaive_out = _prepare(tmp_path / "g", [_glaive()], "toolcall", steps=[])
    report, openai_out = _prepare(tmp_path / "o", [openai], "toolcall", steps=[])
    expected = [{"role": "user", "content": "Dose of ibuprofen?"},
                {"role": "assistant", "content": "", "tool_calls": [{"name": "get_dose",
                                                                     "arguments": '{"drug": "ibuprofen"}'}]},
                {"role": "tool", "content": '{"dose": "400 mg"}'},
                {"role": "assistant", "content": "400 mg every 6 hours."}]
    assert glaive_out[0]["messages"] == expected == openai_out[0]["messages"]
    assert json.loads(glaive_out[0]["tools"]) == TOOLS and report["format"] == "toolcall"
    assert _step(report, "read")["counts"] == {"rows_with_tool_calls": 1}


def test_toolcall_checks_and_dedup_on_the_calls(tmp_path):
    no_call = {"conversations": [{"from": "human", "value": "Thanks!"}, {"from": "gpt", "value": "You're welcome."}],
               "tools": json.dumps(TOOLS)}
    orphan = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "observation", "value": "{}"},
                                {"from": "gpt", "value": "ok"}], "tools": json.dumps(TOOLS)}
    rows = [_glaive(), _glaive("paracetamol"),  # differ only in the call's arguments: not duplicates
            _glaive("ibuprofen"), _glaive(tool="book_visit"), _glaive(tools=None), orphan, no_call]
    report, out = _prepare(tmp_path, rows, "toolcall", steps=["exact_dedup"])
    args = [r["messages"][1].get("tool_calls", [{}])[0].get("arguments") for r in out]
    assert args == ['{"drug": "ibuprofen"}', '{"drug": "paracetamol"}', None]
    counts = _step(report, "read")["counts"]
    assert counts["undeclared_tool"] == 1 and counts["no_tools"] == 1 and counts["orphan_tool_result"] == 1
    assert counts["rows_with_tool_calls"] == 3 and counts["rows_without_tool_calls"] == 1
    assert _step(report, "exact_dedup")["removed"] == 1
    with pytest.raises(DataError, match="does not give toolcall rows"):
        _prepare(tmp_path / "f", rows, "toolcall", format="alpaca")


def test_prepared_toolcall_file_trains_sft_toolcall(tmp_path):
    rows = read_jsonl(SAMPLE_DIR / "toolcall.jsonl")
    src = write_jsonl(tmp_path / "raw.jsonl", rows)
    out = tmp_path / "prep" / "tools.jsonl"
    report = prepare({"path": str(src), "out": str(out), "task": "toolcall", **QUIET})
    assert report["rows_out"] >= 0.9 * len(rows)
    result = run_experiment("sft_toolcall", [f"data.path={out}", "data.limit=8", "trainer.max_steps=2",
                                             "trainer.val_every_n_steps=null", "trainer.ckpt_every_n_steps=null",
                                             "trainer.progress_bar=false", "logger=none", "export.enabled=false"],
                            tmp_path / "run")
    assert result.history


# ------------------------------------------------------------------------------------------------ hf:// inputs
def test_hf_inputs_load_with_load_dataset(tmp_path):
    data = tmp_path / "ds"
    write_jsonl(data / "train.jsonl", [{"text": "hello world"}, {"text": "second row"}])
    report = prepare({"path": f"hf://{data}", "out": str(tmp_path / "o.jsonl"), "task": "pretrain", **QUIET})
    assert read_jsonl(tmp_path / "o.jsonl") == [{"text": "hello world"}, {"text": "second row"}]
    assert report["inputs"] == [f"hf://{data}"]
    with pytest.raises(DataError, match="hf_split='test'"):
        prepare({"path": f"hf://{data}", "out": str(tmp_path / "o2.jsonl"), "task": "pretrain", "hf_split": "test",
                 **QUIET})


def test_hf_inputs_offline_give_one_clear_error(tmp_path, monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/medqa' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        prepare({"path": "hf://org/medqa", "out": str(tmp_path / "o.jsonl"), "task": "qa", **QUIET})
    text = str(err.value)
    assert "hf://org/medqa" in text and "no network" in text and "save_to_disk" in text


# ------------------------------------------------------------------------------------------------ nfkc
def test_nfkc_keeps_chinese_full_width_punctuation(tmp_path):
    zh = "高血压（HBP）患者：每天盐＜5克，对吗？注意！Ｂ超１次；……"
    assert clean.nfkc(zh) == "高血压（HBP）患者：每天盐＜5克，对吗？注意！B超1次；……"
    assert clean.nfkc(zh, keep_fullwidth_cjk=False) == "高血压(HBP)患者:每天盐<5克,对吗?注意!B超1次;......"
    assert clean.nfkc("Ｈｅｌｌｏ，ｗｏｒｌｄ！") == "Hello,world!"  # no CJK: plain NFKC
    _, out = _prepare(tmp_path, [{"text": zh}], "pretrain", steps=["nfkc"])
    assert out[0]["text"] == clean.nfkc(zh)
    _, ascii_out = _prepare(tmp_path / "a", [{"text": zh}], "pretrain", steps=["nfkc"], keep_fullwidth_cjk=False)
    assert "（" not in ascii_out[0]["text"] and "," in ascii_out[0]["text"]


def test_hf_hub_name_without_network_is_one_clear_error(tmp_path):
    """The real ``datasets.load_dataset`` in offline mode (tests set HF_DATASETS_OFFLINE=1): no traceback, no wait."""
    with pytest.raises(DataError, match=r"hf://someorg/medqa: could not load .*no network"):
        prepare({"path": "hf://someorg/medqa", "out": str(tmp_path / "o.jsonl"), "task": "qa", **QUIET})
