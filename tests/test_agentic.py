"""Agentic RAG through GRPOPolicy: a scripted policy drives the search tool inside make_experience.

The policy stub calls ``search_text`` on its first turn and answers on its second (one rollout of each group
answers wrongly without searching), so the test can check, end to end: tool calls parsed and executed against
the bi-encoder index, observations masked out of the loss, the passages the policy saw reaching the
retrieval_relevance reward, the accuracy reward, advantages and a finite loss on the policy tokens only.
"""

from __future__ import annotations

import json

import pytest
import torch
from test_rl_tools import ScriptedPolicy

from medlab.assets import __file__ as assets_init
from medlab.objectives.grpo import GRPOPolicy
from medlab.rl.data import PromptData

CALL = '<tool_call>{"name": "search_text", "arguments": {"query": "influenza fever cough"}}</tool_call>'
PASSAGES = ["Influenza causes fever, cough and muscle aches for several days.",
            "Metformin is a first-line medicine for type 2 diabetes.",
            "Angina is chest pain caused by reduced blood flow to the heart."]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from pathlib import Path

    from transformers import AutoTokenizer

    from helpers import tiny_llama

    d = tmp_path_factory.mktemp("agentic")
    corpus = d / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"id": f"p{i}", "text": t}) + "\n" for i, t in enumerate(PASSAGES)))
    qa = d / "qa.jsonl"
    qa.write_text(json.dumps({"question": "Which condition causes fever and cough?", "options": {"A": "angina",
                  "B": "influenza"}, "answer": "B", "contexts": [PASSAGES[0]]}) + "\n")
    tok = AutoTokenizer.from_pretrained(Path(assets_init).parent / "tokenizer")
    data = PromptData(path=str(qa), val_path=None, val_split=0.0)
    data.setup(tok)
    model = tiny_llama(vocab=len(tok))
    model.config.pad_token_id, model.config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    tools = {"search_text": {"corpus": {"path": str(corpus), "field": "text", "id_field": "id"}, "run_dir": None,
                             "overrides": ["+experiment=biencoder", "model=tiny_bert"], "k": 1}}
    rewards = {"accuracy": {"_target_": "exact_match", "weight": 1.0},
               "retrieval_relevance": {"_target_": "retrieval_relevance", "weight": 0.5},
               "tool_format": {"_target_": "medlab.rl.agent.tool_format", "weight": 0.1}}
    module = GRPOPolicy(model, tok, rewards=rewards, num_generations=2, max_new_tokens=48, tools=tools, max_turns=3)
    from medlab.evaluation import load_run

    module.build_tools(load_run)
    return module, data, tok


def test_scripted_agent_through_make_experience(setup):
    module, data, tok = setup
    # turn 1: rollout 0 searches, rollout 1 answers wrongly at once; turn 2: rollout 0 answers correctly
    module.engine = ScriptedPolicy(tok, [[CALL, "<answer>A</answer>"], ["<answer>B</answer>"]])
    windows = module.make_experience(data.collate(data.train_dataset[:1]))
    (mb,) = windows[0]
    assert mb["loss_mask"].shape == mb["completion_mask"].shape
    masked_out = (mb["completion_mask"] - mb["loss_mask"]).sum(1)
    assert masked_out[0] > 0 and masked_out[1] == 0  # rollout 0 holds an observation turn, rollout 1 none
    assert mb["num_completion_tokens"] == int(mb["loss_mask"].sum())
    stats = module._exp_stats[-1]
    assert stats["agent/tool_calls"] == 0.5 and stats["agent/malformed_calls"] == 0.0
    assert stats["rewards/accuracy/mean"] == 0.5
    assert stats["rewards/retrieval_relevance/mean"] == pytest.approx(0.5)  # the top passage is the gold one
    assert mb["advantages"][0] > 0 > mb["advantages"][1]
    loss = module.training_step(mb, 0)["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.model.parameters())


def test_malformed_tool_call_is_counted_and_penalized(setup):
    module, data, tok = setup
    bad = '<tool_call>{"name": "search_text", "arguments": {"query": </tool_call>'
    module.engine = ScriptedPolicy(tok, [[bad, "<answer>B</answer>"], ["<answer>B</answer>"]])
    module.make_experience(data.collate(data.train_dataset[:1]))
    stats = module._exp_stats[-1]
    assert stats["agent/malformed_calls"] == 0.5
    assert stats["rewards/tool_format/mean"] == 0.5  # the malformed rollout loses the format reward


def test_validation_scores_with_the_training_rewards_and_the_agents_passages(setup, caplog):
    """Validation and training share one rollout + scoring path: the passages the agent saw reach
    retrieval_relevance in validation too (before, validation dropped them: that reward failed on every
    validation batch and val/reward silently lost its 0.5-weighted component)."""
    module, data, tok = setup
    batch = data.collate(data.train_dataset[:1])
    module.engine = ScriptedPolicy(tok, [[CALL], ["<answer>B</answer>"]])  # greedy: search, then answer right
    with caplog.at_level("WARNING"):
        out = module.validation_step(batch, 0)
        metrics = module.validation_metrics({f"val/{k}": float(v) for k, v in out.items()})
    # accuracy 1.0 x 1.0 + retrieval_relevance 1.0 x 0.5 (the gold passage was shown) + tool_format 1.0 x 0.1
    assert out["reward"].item() == pytest.approx(1.6)  # the old validation: 1.1 (retrieval_relevance masked)
    assert out["rewards/retrieval_relevance/failure_rate"].item() == 0.0
    assert not any("failed on the batch" in r.getMessage() for r in caplog.records)
    assert out["accuracy"].item() == 1.0 and metrics["val/reward"] == pytest.approx(1.6)
    # the same completions through the training path (sampled; same script) get the same total reward
    module.engine = ScriptedPolicy(tok, [[CALL], ["<answer>B</answer>"]])
    ro, prompts, fields, _ = module.rollouts(batch, 1, sample=True)
    total, per_fn, _ = module.score(prompts, ro.texts, fields)
    assert total.tolist() == pytest.approx([out["reward"].item()])


def test_a_reward_that_fails_in_validation_is_counted_and_named(setup, caplog):
    module, data, tok = setup
    batch = data.collate(data.train_dataset[:1])
    module.engine = ScriptedPolicy(tok, [["<answer>B</answer>"]])  # answers without searching
    fields = dict(batch["fields"])
    del fields["contexts"]  # no gold passages: retrieval_relevance cannot score
    with caplog.at_level("WARNING"):
        out = module.validation_step({**batch, "fields": fields}, 0)
        module.validation_metrics({f"val/{k}": float(v) for k, v in out.items()})
    assert out["rewards/retrieval_relevance/failure_rate"].item() == 1.0
    assert out["rewards/accuracy/failure_rate"].item() == 0.0
    assert any("validation: 'retrieval_relevance' could not score 100%" in r.getMessage() for r in caplog.records)
    assert out["reward"].item() == pytest.approx(1.1)  # the other rewards still count
