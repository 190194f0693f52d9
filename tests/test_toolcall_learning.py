"""Tool-routing accuracy measures learning: a short sft_toolcall run of the tiny model on a tiny synthetic tool-call
set raises ``val/tool_routing_acc`` from the untrained model's 0 (no valid call) to most of the held-out turns."""

from __future__ import annotations

import json

import pytest
from helpers import run_experiment, write_jsonl

pytestmark = pytest.mark.usefixtures("one_thread")

TOOLS = [{"name": "get_dose", "description": "Dose of a drug",
          "parameters": {"type": "object", "required": ["drug"], "properties": {"drug": {"type": "string"}}}},
         {"name": "book", "description": "Book a visit",
          "parameters": {"type": "object", "required": ["department"],
                         "properties": {"department": {"type": "string"}}}}]
REQUESTS = [("Dose of ibuprofen?", "get_dose", {"drug": "ibuprofen"}),
            ("Book cardiology.", "book", {"department": "cardiology"}),
            ("Dose of aspirin?", "get_dose", {"drug": "aspirin"}),
            ("Book dermatology.", "book", {"department": "dermatology"})]


def conversation(question: str, name: str, arguments: dict) -> dict:
    return {"conversations": [{"from": "human", "value": question},
                              {"from": "function_call", "value": json.dumps({"name": name, "arguments": arguments})},
                              {"from": "observation", "value": '{"ok": true}'},
                              {"from": "gpt", "value": "Done."}],
            "tools": json.dumps(TOOLS)}


def evaluate_toolcall(run_dir: str | None, path, out) -> dict:
    from medlab.evaluate import main as evaluate_main

    base = ["run_dir=none", "+experiment=sft_toolcall"] if run_dir is None else [f"run_dir={run_dir}"]
    return evaluate_main([*base, "eval.task=toolcall", f"eval.path={path}", "eval.tool_turns=first",
                          "eval.max_new_tokens=32", f"eval.out={out}"])


def test_tool_routing_accuracy_rises_after_training(tmp_path):
    path = write_jsonl(tmp_path / "tools.jsonl", [conversation(*r) for r in REQUESTS] * 2)
    # the held-out set is the training set: the test is that routing accuracy responds to what the model learned
    # (training format == validation prompt format, generated calls parsed and checked), not generalization
    untrained = evaluate_toolcall(None, path, tmp_path / "untrained" / "eval_metrics.json")
    run = run_experiment("sft_toolcall", [f"data.path={path}", f"+data.val_path={path}", "data.batch_size=4",
                                          "trainer.max_steps=80", "trainer.val_every_n_steps=80", "objective.lr=1e-2",
                                          "trainer.ckpt_every_n_steps=null", "trainer.progress_bar=false",
                                          "logger=none", "export.enabled=false", "objective.tool_routing.turns=first",
                                          "objective.tool_routing.max_new_tokens=32"], tmp_path / "run")
    trained = evaluate_toolcall(str(tmp_path / "run"), path, tmp_path / "trained" / "eval_metrics.json")
    assert untrained["tool_routing_turns"] == trained["tool_routing_turns"] == 8
    assert untrained["tool_routing_acc"] == 0.0
    assert trained["tool_routing_acc"] >= 0.5, trained
    # the routing itself (which tool for which request) is learned on every turn; argument values may lag
    samples = [json.loads(x) for x in (tmp_path / "trained" / "eval_samples.jsonl").read_text().splitlines()]
    assert all([c["name"] for c in s["predicted_calls"]] == [c["name"] for c in s["reference"]] for s in samples)
    assert run.metrics["val/tool_routing_acc"] == trained["tool_routing_acc"]   # validation == the command
    assert trained["tool_routing_malformed_rate"] <= 0.25
