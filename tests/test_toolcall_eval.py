"""Tool-routing accuracy: the BFCL-style checker on hand-made cases, turn extraction, the validation component of
sft_toolcall (val/tool_routing_acc) and `python -m medlab.evaluate eval.task=toolcall`."""

from __future__ import annotations

import json

import pytest
from helpers import read_jsonl, run_experiment, write_jsonl

import medlab
from medlab.rl.tool_check import check_call, check_turn, normalize_value, summarize, tool_schemas, type_problem
from medlab.rl.tool_routing import answer_and_check, routing_cases

pytestmark = pytest.mark.usefixtures("one_thread")
SAMPLE = medlab.ASSETS_DIR / "sample" / "toolcall.jsonl"
TOOLS = [{"name": "get_dose", "description": "Dose of a drug",
          "parameters": {"type": "object", "required": ["drug", "weight_kg"],
                         "properties": {"drug": {"type": "string"}, "weight_kg": {"type": "number"},
                                        "age": {"type": "integer"}, "route": {"type": "string", "enum": ["oral", "iv"]},
                                        "allergies": {"type": "array", "items": {"type": "string"}}}}},
         {"name": "book", "parameters": {"type": "object", "required": ["department"],
                                         "properties": {"department": {"type": "string"}, "date": {"type": "string"}}}}]
REF = {"name": "get_dose", "arguments": {"drug": "Ibuprofen", "weight_kg": 70}}


def call(name, **args):
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


# ---------------------------------------------------------------------------------------------- the checker
@pytest.mark.parametrize("text, correct, reason", [
    (call("get_dose", drug="Ibuprofen", weight_kg=70), True, ""),
    (call("get_dose", drug=" ibuprofen", weight_kg=70.0), True, ""),            # normalized string, 70 == 70.0
    (call("get_dos", drug="Ibuprofen", weight_kg=70), False, "wrong function"),
    (call("book", department="x"), False, "wrong function"),
    (call("get_dose", drug="Ibuprofen"), False, "missing required parameter 'weight_kg'"),
    (call("get_dose", drug="Ibuprofen", weight_kg=70, unit="kg"), False, "parameter 'unit' is not in the schema"),
    (call("get_dose", drug="Ibuprofen", weight_kg="70"), False, "wrong type: weight_kg: expected number"),
    (call("get_dose", drug="Ibuprofen", weight_kg=True), False, "wrong type: weight_kg: expected number"),
    (call("get_dose", drug="Paracetamol", weight_kg=70), False, "wrong value for 'drug'"),
    (call("get_dose", drug="Ibuprofen", weight_kg=71), False, "wrong value for 'weight_kg'"),
    (call("get_dose", drug="Ibuprofen", weight_kg=70, age=30), False, "unexpected parameter 'age'"),
    (call("get_dose", drug="Ibuprofen", weight_kg=70, route="rectal"), False, "not one of ['oral', 'iv']"),
    ("I think you should take ibuprofen.", False, "no tool call"),
    ('<tool_call>{"name": "get_dose", "arguments": {"drug": </tool_call>', False, "malformed tool call"),
    (call("get_dose", drug="Ibuprofen", weight_kg=70) + call("book", department="x"), False, "2 calls instead of 1"),
])
def test_single_call_cases(text, correct, reason):
    result = check_turn(text, [REF], TOOLS)
    assert result.category == "multiple"  # two tools offered, one call expected
    assert result.correct is correct
    assert reason in result.reason
    assert result.malformed is (reason == "malformed tool call")


def test_no_tool_turn_is_right_only_without_a_call():
    assert check_turn("Take rest and drink water.", [], TOOLS).correct
    wrong = check_turn(call("book", department="x"), [], TOOLS)
    assert not wrong.correct and wrong.category == "no_tool" and "where no tool was needed" in wrong.reason
    broken = check_turn("<tool_call>{oops}</tool_call>", [], TOOLS)
    assert not broken.correct and broken.malformed


def test_categories_and_parallel_calls_in_any_order():
    one_tool = TOOLS[:1]
    assert check_turn(call("get_dose", drug="ibuprofen", weight_kg=70), [REF], one_tool).category == "single"
    refs = [REF, {"name": "book", "arguments": {"department": "cardiology"}}]
    swapped = call("book", department="Cardiology") + call("get_dose", drug="Ibuprofen", weight_kg=70)
    result = check_turn(swapped, refs, TOOLS)
    assert result.category == "parallel" and result.correct
    assert not check_turn(call("book", department="Cardiology") + call("book", department="x"), refs, TOOLS).correct


def test_types_values_and_schemas():
    assert type_problem(3, {"type": "integer"}, "n") is None
    assert type_problem(3.5, {"type": "integer"}, "n") and type_problem(False, {"type": "integer"}, "n")
    assert type_problem(["a", 1], {"type": "array", "items": {"type": "string"}}, "xs") == \
        "xs[1]: expected string, got int 1"
    assert type_problem(None, {"type": ["string", "null"]}, "x") is None
    assert normalize_value("General Practice") == normalize_value("general-practice") == "generalpractice"
    assert normalize_value({"a": [1, "B c"]}) == {"a": [1.0, "bc"]}
    # glaive tool lists, OpenAI {"type": "function", "function": ...} and JSON text all give the same schemas
    openai = [{"type": "function", "function": t} for t in TOOLS]
    assert tool_schemas(json.dumps(TOOLS)) == tool_schemas(openai) == {t["name"]: t["parameters"] for t in TOOLS}
    assert check_call({"name": "x", "arguments": {}}, {"name": "x", "arguments": {}}, None) == \
        "'x' is not among the offered tools"
    # arguments given as JSON text in the reference (how chat rows store them)
    assert check_call({"name": "book", "arguments": {"department": "ER"}},
                      {"name": "book", "arguments": '{"department": "er"}'}, TOOLS[1]["parameters"]) is None


def test_summarize_by_hand():
    results = [check_turn(call("get_dose", drug="ibuprofen", weight_kg=70), [REF], TOOLS),   # multiple, right
               check_turn("no call", [REF], TOOLS),                                             # multiple, wrong
               check_turn("<tool_call>{bad", [REF], TOOLS),                                     # multiple, malformed
               check_turn("fine", [], TOOLS)]                                                   # no_tool, right
    m = summarize(results)
    assert m["tool_routing_acc"] == 0.5 and m["tool_routing_malformed_rate"] == 0.25
    assert m["tool_routing_acc/multiple"] == pytest.approx(1 / 3) and m["tool_routing_n/multiple"] == 3
    assert m["tool_routing_acc/no_tool"] == 1.0 and "tool_routing_acc/single" not in m


# ---------------------------------------------------------------------------------------------- turns and answers
def sample_rows(n=3):
    from medlab.data import CausalLMData
    from medlab.rl.tool_routing import chat_rows

    data = CausalLMData(str(SAMPLE), val_split=0.0, limit=n, cache_dir=None)
    return chat_rows(data, "all")


def test_routing_cases_one_per_assistant_turn():
    rows = sample_rows(2)
    cases = routing_cases(rows)
    first = routing_cases(rows, turns="first")
    assert len(first) == 2 and all(c["turn"] == 1 for c in first)
    for c in cases:
        row = rows[c["conversation"]]
        target = row["messages"][c["turn"]]
        assert target["role"] == "assistant" and c["messages"] == row["messages"][: c["turn"]]
        assert [e["name"] for e in c["expected"]] == [t["name"] for t in target.get("tool_calls") or []]
    assert any(c["expected"] for c in cases) and any(not c["expected"] for c in cases)


class _Replay:
    """A generation engine that answers each prompt with a given text (the reference or a wrong one)."""

    def __init__(self, tok, texts):
        self.tok, self.texts, self.prompts = tok, list(texts), []

    def generate(self, prompts, **kw):
        from medlab.rl.generation import Rollout

        self.prompts += prompts
        texts = [self.texts.pop(0) for _ in prompts]
        ids = [self.tok.encode(t, add_special_tokens=False) + [self.tok.eos_token_id] for t in texts]
        return Rollout.from_token_lists(prompts, ids, eos_token_id=self.tok.eos_token_id,
                                        pad_token_id=self.tok.pad_token_id, texts=texts)


def test_answer_and_check_scores_reference_answers_right(tok):
    cases = routing_cases(sample_rows(4))
    perfect = ["".join(call(e["name"], **e["arguments"]) for e in c["expected"]) or "Here is the answer."
               for c in cases]
    engine = _Replay(tok, perfect)
    results, records = answer_and_check(None, tok, "chatml", cases, engine=engine, batch_size=3)
    assert all(r.correct for r in results) and len(records) == len(cases)
    # the prompt is the conversation so far with the tools in the system prompt, then the generation prompt
    prompt = tok.decode(engine.prompts[0])
    assert "<tools>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    wrong = ["no tool today"] * len(cases)
    results, _ = answer_and_check(None, tok, "chatml", cases, engine=_Replay(tok, wrong))
    m = summarize(results)
    assert m["tool_routing_acc/no_tool"] == 1.0 and m.get("tool_routing_acc/multiple", 0.0) == 0.0


# ---------------------------------------------------------------------------------------------- validation + command
def test_sft_toolcall_validation_reports_tool_routing(tmp_path):
    result = run_experiment("sft_toolcall", ["data.limit=40", "trainer.max_steps=2", "trainer.val_every_n_steps=2",
                                             "trainer.ckpt_every_n_steps=null", "trainer.progress_bar=false",
                                             "logger=none", "export.enabled=false",
                                             "objective.tool_routing.max_new_tokens=8"], tmp_path / "run")
    metrics = result.metrics
    assert 0.0 <= metrics["val/tool_routing_acc"] <= 1.0
    assert metrics["val/tool_routing_turns"] >= 2 and "val/tool_routing_malformed_rate" in metrics
    assert any(k.startswith("val/tool_routing_acc/") for k in metrics)
    # off when the experiment does not configure it
    plain = run_experiment("sft_toolcall", ["data.limit=40", "trainer.max_steps=1", "objective.tool_routing=null",
                                            "trainer.ckpt_every_n_steps=null", "trainer.progress_bar=false",
                                            "logger=none", "export.enabled=false"], tmp_path / "plain")
    assert "val/tool_routing_acc" not in plain.metrics and "val/loss" in plain.metrics


def test_evaluate_toolcall_command(tmp_path):
    from medlab.evaluate import main as evaluate_main

    held_out = write_jsonl(tmp_path / "held_out.jsonl", read_jsonl(SAMPLE, 3))
    out = tmp_path / "ev" / "eval_metrics.json"
    metrics = evaluate_main(["run_dir=none", "+experiment=sft_toolcall", "eval.task=toolcall",
                             f"eval.path={held_out}", "eval.max_new_tokens=6", f"eval.out={out}"])
    samples = [json.loads(x) for x in (out.parent / "eval_samples.jsonl").read_text().splitlines()]
    assert metrics["task"] == "toolcall" and metrics["conversations"] == 3
    assert metrics["tool_routing_turns"] == len(samples) >= 3
    assert metrics["tool_routing_acc"] == sum(s["correct"] for s in samples) / len(samples)
    assert {"id", "question", "prediction", "reference", "correct", "category", "malformed"} <= set(samples[0])


def test_decoded_answers_keep_tool_call_tags_the_tokenizer_marks_special(tok):
    """The shipped tokenizer marks <tool_call> special: skipping special tokens would hide every call."""
    from medlab.rl.tool_routing import visible_text

    text = call("get_dose", drug="ibuprofen", weight_kg=70)
    ids = tok.encode(text + "<|im_end|>", add_special_tokens=False)
    assert "<tool_call>" not in tok.decode(ids, skip_special_tokens=True)
    assert visible_text(tok, ids) == text
    assert check_turn(visible_text(tok, ids), [REF], TOOLS).correct
