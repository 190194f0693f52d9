"""Multi-turn tool rollouts: tool-call parsing, the turn loop, and the exact policy-token loss mask."""

from __future__ import annotations

import pytest
import torch

from medlab.rl.generation import Rollout
from medlab.rl.tools import (
    Tool,
    collate_tool_rollouts,
    parse_tool_call,
    parse_tool_calls,
    run_tool_loop,
)

CHAT = [{"role": "system", "content": "You answer medical questions."},
        {"role": "user", "content": "What is aspirin used for?"}]
CALL = '<tool_call>\n{"name": "search_text", "arguments": {"query": "aspirin"}}\n</tool_call>'
OBS = "\n<|im_start|>user\n<tool_response>\n{result}\n</tool_response><|im_end|>\n<|im_start|>assistant\n"


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


class ScriptedPolicy:
    """A GenerationEngine stub: call k returns ``script[k]`` (one text per prompt x generation).

    A text ending in ``...`` is returned without EOS (as if ``max_new_tokens`` ran out).
    """

    def __init__(self, tok, script: list[list[str]]):
        self.tok, self.script, self.calls = tok, list(script), []

    def generate(self, prompts, *, num_generations=1, **kwargs):
        self.calls.append({"prompts": [list(p) for p in prompts], "num_generations": num_generations, **kwargs})
        texts = self.script[len(self.calls) - 1]
        rows = [p for p in prompts for _ in range(num_generations)]
        assert len(texts) == len(rows)
        eos = [self.tok.eos_token_id]
        completions = [self.tok.encode(t, add_special_tokens=False) + ([] if t.endswith("...") else eos)
                       for t in texts]
        return Rollout.from_token_lists(rows, completions, eos_token_id=self.tok.eos_token_id,
                                        pad_token_id=self.tok.pad_token_id, tokenizer=self.tok)


def _search(log: list):
    def search_text(args: dict) -> str:
        log.append(args)
        return f"RESULT for {args['query']}"
    return Tool("search_text", search_text, "Search the medical corpus.",
                {"type": "object", "properties": {"query": {"type": "string"}}})


def _enc(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text, expected", [
    (CALL, {"name": "search_text", "arguments": {"query": "aspirin"}}),
    ('Let me look.<tool_call>  {"name":"search_text","arguments":{"query":"x"}}  </tool_call>',
     {"name": "search_text", "arguments": {"query": "x"}}),
    ('<tool_call>\n```json\n{"name": "search_text", "arguments": {"query": "x",},}\n```\n</tool_call>',
     {"name": "search_text", "arguments": {"query": "x"}}),
    ('<tool_call>{"name": "search_text", "arguments": "{\\"query\\": \\"x\\"}"}</tool_call>',
     {"name": "search_text", "arguments": {"query": "x"}}),
    ('<tool_call>{"name": "now"}', {"name": "now", "arguments": {}}),  # unclosed at the end of the turn
])
def test_parse_tool_call_tolerant(text, expected):
    assert parse_tool_call(text) == (expected, None)


@pytest.mark.parametrize("text", [
    '<tool_call>{"name": "search_text", "arguments": {"query": }</tool_call>',
    "<tool_call>not json at all</tool_call>",
    '<tool_call>["search_text"]</tool_call>',
    '<tool_call>{"arguments": {}}</tool_call>',
    '<tool_call>{"name": "s", "arguments": [1]}</tool_call>',
    "<tool_call></tool_call>",
])
def test_parse_tool_call_malformed_is_an_error_not_an_exception(text):
    call, error = parse_tool_call(text)
    assert call is None and isinstance(error, str) and error


def test_parse_tool_calls_many_and_none():
    assert parse_tool_call("The answer is 42.") == (None, None)
    calls, errors = parse_tool_calls(CALL + "<tool_call>{bad}</tool_call>" + CALL.replace("aspirin", "ibuprofen"))
    assert [c["arguments"]["query"] for c in calls] == ["aspirin", "ibuprofen"] and len(errors) == 1


def test_tool_loop_masks_observations_out_and_generated_tokens_in(tok):
    log: list = []
    answer = "Aspirin relieves pain and prevents clots."
    policy = ScriptedPolicy(tok, [[CALL, "I know: it treats pain."], [answer]])
    tool = _search(log)
    r0, r1 = run_tool_loop(policy, tok, CHAT, {"search_text": tool}, num_generations=2, max_turns=4,
                           max_new_tokens=32, temperature=0.9)
    assert log == [{"query": "aspirin"}]
    assert policy.calls[0]["num_generations"] == 2 and len(policy.calls[0]["prompts"]) == 1
    assert policy.calls[0]["max_new_tokens"] == 32 and policy.calls[0]["temperature"] == 0.9
    prompt = _enc(tok, tok.apply_chat_template(CHAT, tools=[tool.schema()], tokenize=False,
                                               add_generation_prompt=True))
    eos = [tok.eos_token_id]
    gen1, obs, gen2 = _enc(tok, CALL) + eos, _enc(tok, OBS.format(result="RESULT for aspirin")), _enc(tok, answer) + eos
    assert r0.input_ids == prompt + gen1 + obs + gen2
    assert r0.loss_mask == [0] * len(prompt) + [1] * len(gen1) + [0] * len(obs) + [1] * len(gen2)
    assert r0.prompt_length == len(prompt)
    assert policy.calls[1]["prompts"] == [prompt + gen1 + obs]  # only the active rollout, observation included
    # the token sequence is exactly the chat template's rendering of the whole conversation
    full = CHAT + [{"role": "assistant", "content": CALL}, {"role": "tool", "content": "RESULT for aspirin"},
                   {"role": "assistant", "content": answer}]
    rendered = tok.apply_chat_template(full, tools=[tool.schema()], tokenize=False)
    assert tok.decode(r0.input_ids, skip_special_tokens=False) == rendered.removesuffix("\n")
    assert r0.num_turns == 2 and r0.final_text == answer and r0.turns[0] == CALL
    assert r0.tool_calls == [{"turn": 0, "name": "search_text", "arguments": {"query": "aspirin"},
                              "result": "RESULT for aspirin"}]
    assert (r0.num_malformed, r0.num_tool_errors, r0.hit_turn_limit, r0.is_truncated) == (0, 0, False, False)
    assert r1.num_turns == 1 and r1.tool_calls == [] and r1.loss_mask == [0] * len(prompt) + [1] * (
        len(_enc(tok, "I know: it treats pain.")) + 1)

    batch = collate_tool_rollouts([r0, r1], tok.pad_token_id)
    n0, n1 = len(r0.input_ids) - len(prompt), len(r1.input_ids) - len(prompt)
    assert batch["completion_ids"].shape == (2, n0) and batch["prompt_ids"].shape == (2, len(prompt))
    assert batch["completion_mask"].sum(1).tolist() == [n0, n1]
    assert batch["loss_mask"][0].tolist() == r0.loss_mask[len(prompt):]
    assert batch["loss_mask"][1].tolist() == r1.loss_mask[len(prompt):] + [0] * (n0 - n1)


def test_malformed_unknown_and_failing_tools_become_observations(tok):
    def broken(args: dict) -> str:
        raise RuntimeError("index offline")

    bad_json = '<tool_call>{"name": "search_text", "arguments": {"query": }</tool_call>'
    policy = ScriptedPolicy(tok, [[bad_json], ['<tool_call>{"name": "nope", "arguments": {}}</tool_call>'],
                                  ['<tool_call>{"name": "broken", "arguments": {}}</tool_call>'], ["Done."]])
    (ro,) = run_tool_loop(policy, tok, CHAT, {"broken": broken}, max_turns=5)
    assert ro.num_turns == 4 and ro.final_text == "Done." and not ro.hit_turn_limit
    assert ro.num_malformed == 1 and ro.num_tool_errors == 2
    assert [c["name"] for c in ro.tool_calls] == ["nope", "broken"]
    assert ro.tool_calls[1]["result"] == "Error: RuntimeError: index offline"
    second_prompt = tok.decode(policy.calls[1]["prompts"][0], skip_special_tokens=False)
    assert "<tool_response>\nError: could not parse tool call: invalid JSON" in second_prompt
    generated = [t for t, m in zip(ro.input_ids, ro.loss_mask) if m]
    expected = [t for text in (bad_json, policy.script[1][0], policy.script[2][0], "Done.")
                for t in _enc(tok, text) + [tok.eos_token_id]]
    assert generated == expected


def test_turn_limit_is_enforced_and_truncated_turns_stop(tok):
    log: list = []
    forever = [[CALL, CALL], [CALL, "cut off..."], [CALL]]
    policy = ScriptedPolicy(tok, forever)
    loop, cut = run_tool_loop(policy, tok, CHAT, {"search_text": _search(log)}, num_generations=2, max_turns=3)
    assert len(policy.calls) == 3 and [len(c["prompts"]) for c in policy.calls] == [1, 2, 1]
    assert loop.num_turns == 3 and loop.hit_turn_limit and len(loop.tool_calls) == 2  # last call not executed
    assert loop.loss_mask[-1] == 1 and loop.input_ids[-1] == tok.eos_token_id  # ends on the policy's turn
    assert cut.num_turns == 2 and cut.is_truncated and not cut.hit_turn_limit and cut.final_text == "cut off..."
    assert len(log) == 3


def test_batched_chats_and_max_total_tokens(tok):
    chats = [CHAT, [{"role": "user", "content": "Dose of ibuprofen?"}]]
    policy = ScriptedPolicy(tok, [[CALL, "A.", CALL, CALL], ["B.", "C.", "D."]])
    out = run_tool_loop(policy, tok, chats, {"search_text": _search([])}, num_generations=2, max_turns=3)
    assert [r.final_text for r in out] == ["B.", "A.", "C.", "D."]
    assert len(policy.calls[0]["prompts"]) == 2 and policy.calls[0]["num_generations"] == 2
    assert out[2].input_ids[:out[2].prompt_length] == out[3].input_ids[:out[3].prompt_length]
    assert out[0].prompt_length != out[2].prompt_length

    short = ScriptedPolicy(tok, [[CALL]])
    (ro,) = run_tool_loop(short, tok, CHAT, {"search_text": _search([])}, max_turns=3, max_total_tokens=1)
    assert ro.is_truncated and ro.num_turns == 0 and short.calls == []


def test_tool_loop_with_hf_engine_and_logprobs(tok):
    from helpers import tiny_llama

    from medlab.rl.generation import HFGenerateEngine, sequence_logprobs

    model = tiny_llama(vocab=len(tok))
    engine = HFGenerateEngine(model, tok)
    torch.manual_seed(0)
    out = run_tool_loop(engine, tok, CHAT, {"search_text": _search([])}, num_generations=2, max_turns=2,
                        max_new_tokens=4)
    batch = collate_tool_rollouts(out, tok.pad_token_id)
    with torch.no_grad():
        lp = sequence_logprobs(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                               batch["completion_mask"])
    assert lp.shape == batch["loss_mask"].shape and (lp * batch["loss_mask"]).lt(0).sum() == batch["loss_mask"].sum()
    assert all(r.is_truncated and r.num_turns == 1 and sum(r.loss_mask) == 4 for r in out)
