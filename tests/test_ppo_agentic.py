"""PPO with tool-calling (agentic) rollouts: the policy's turns train, the tool observations are attended to but
masked out of the policy loss, the value loss, the KL penalty and the rewards-to-go; the old log-probs come from
the decode loop per generated turn (no policy forward), equal to a recomputed forward on the policy's tokens."""

from __future__ import annotations

import pytest
import torch
from test_rl_decode_logprobs import _full_sequence_forwards, _lora_model

import medlab
from medlab.objectives.ppo import PPOPolicy
from medlab.rl.data import PromptData
from medlab.rl.generation import Rollout, sequence_logprobs
from medlab.rl.tools import Tool

pytestmark = pytest.mark.usefixtures("one_thread")

CALL = '<tool_call>{"name": "search", "arguments": {"query": "fever"}}</tool_call>'
KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")


def answer_length(prompts, completions, **_):
    return [min(len(c), 40) / 40 for c in completions]


class FirstTurnSearches:
    """Turn 1 of every rollout calls the tool (scripted tokens, their log-probs from a forward, as if sampled);
    later turns are sampled by the objective's own KV-cache engine (real decode-loop log-probs)."""

    def __init__(self, engine, model, tok):
        self.engine, self.model, self.tok, self.calls = engine, model, tok, 0
        self.eos_token_id = engine.eos_token_id

    def generate(self, prompts, *, num_generations=1, temperature=1.0, **kw):
        self.calls += 1
        if self.calls > 1:
            return self.engine.generate(prompts, num_generations=num_generations, temperature=temperature, **kw)
        rows = [p for p in prompts for _ in range(num_generations)]
        completion = self.tok.encode(CALL, add_special_tokens=False) + [self.tok.eos_token_id]
        ro = Rollout.from_token_lists(rows, [completion] * len(rows), eos_token_id=self.tok.eos_token_id,
                                      pad_token_id=self.tok.pad_token_id, tokenizer=self.tok)
        with torch.no_grad():
            ro.logprobs = sequence_logprobs(self.model, *(getattr(ro, k) for k in KEYS), temperature=temperature)
        return ro


def test_ppo_trains_on_tool_rollouts_with_observations_masked(tok):
    model = _lora_model(tok)
    module = PPOPolicy(model, tok, rewards={"len": {"_target_": f"{__name__}.answer_length"}}, num_generations=2,
                       max_new_tokens=6, max_turns=2, kl_coef=0.1, temperature=0.8, lr=1e-2, weight_decay=0.0)
    module.tools = {"search": Tool("search", lambda args: f"RESULT for {args['query']}: influenza")}
    module.engine = FirstTurnSearches(module.engine, model, tok)
    module.train()
    data = PromptData(str(medlab.ASSETS_DIR / "sample" / "qa_mc_train.jsonl"), limit=2)
    data.setup(tok)
    calls, handle = _full_sequence_forwards(model)
    torch.manual_seed(0)
    windows = module.make_experience(data.collate(data.train_dataset[:2]))
    handle.remove()
    stats = module._exp_stats[-1]
    assert stats["agent/tool_calls"] == 1.0 and module.engine.calls == 2
    mbs = windows[0]
    # after the stub's own forward (its scripted turn's log-probs): the critic and the reference per micro-batch,
    # no policy pass
    assert len(calls) == 1 + 2 * len(mbs)
    for mb in mbs:
        loss_mask, attended = mb["loss_mask"].bool(), mb["completion_mask"].bool()
        assert (attended & ~loss_mask).any(1).all()  # every rollout holds an observation
        with torch.no_grad():
            recomputed = sequence_logprobs(model, *(mb[k] for k in KEYS), temperature=0.8)
        torch.testing.assert_close(mb["old_logps"][loss_mask], recomputed[loss_mask], rtol=0, atol=1e-5)
        assert mb["old_logps"][~loss_mask].eq(0).all()
        assert mb["advantages"][~loss_mask].eq(0).all() and mb["returns"][~loss_mask].eq(0).all()
        assert mb["num_completion_tokens"] == int(loss_mask.sum())
    # one optimizer step on the window: the policy and the critic both get gradients, the loss is finite
    opt = module.configure_optimizers()["optimizer"]
    before = {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}
    total = sum(module.batch_weight(mb) for mb in mbs)
    for mb in mbs:
        loss = module.training_step(mb, 0)["loss"]
        assert torch.isfinite(loss)
        (loss * module.batch_weight(mb) / total).backward()
    opt.step()
    changed = {n for n, p in module.named_parameters() if p.requires_grad and not torch.equal(p.detach(), before[n])}
    assert any(".default." in n for n in changed) and any(".critic." in n for n in changed)
    assert any(n.startswith("critic.value_head") for n in changed)
