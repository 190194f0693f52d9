"""Token-budget micro-batches: the packing function, the budget through GRPOPolicy (update and log-prob passes),
and gradients equal to one pass over the whole experience."""

from __future__ import annotations

import itertools

import pytest
import torch
from helpers import tiny_llama

import medlab
from medlab.objectives.grpo import GRPOPolicy
from medlab.rl.data import PromptData, collate_prompts
from medlab.rl.microbatch import padded_tokens, token_budget_batches

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE_TRAIN = str(medlab.ASSETS_DIR / "sample" / "qa_mc_train.jsonl")
# rewards that vary with the completion's length: non-zero advantages for every group
BUDGET = 400  # padded tokens: two of the sample's ~150-token prompt + completion rows
LENGTH = {"length": {"_target_": "length_penalty", "target": 0, "per_unit": 0.01, "max_penalty": None}}


# ---------------------------------------------------------------------------------------------- packing
def test_packing_by_length_within_the_budget():
    p = [10, 10, 3, 3, 10, 3]
    c = [5, 1, 2, 6, 2, 1]
    batches = token_budget_batches(p, c, max_tokens=32)
    assert sorted(itertools.chain(*batches)) == list(range(6))  # every row exactly once
    # longest first: row 0 (15), then 4 (12), 1 (11): [0, 4] costs 2 x 15 = 30, + row 1 would be 45
    assert batches == [[0, 4], [1, 3], [2, 5]]
    assert [padded_tokens(p, c, b) for b in batches] == [30, 32, 10]
    assert all(padded_tokens(p, c, b) <= 32 for b in batches)


def test_limits_rows_and_oversized_rows_go_alone():
    assert token_budget_batches([4] * 5, [1] * 5, max_rows=2) == [[0, 1], [2, 3], [4]]
    assert token_budget_batches([100, 2, 2], [10, 1, 1], max_tokens=20) == [[0], [1, 2]]  # 110 > 20: alone
    assert token_budget_batches([3, 3], [1, 1]) == [[0, 1]]  # no limits: one pass in row order
    assert token_budget_batches([], []) == []


def test_bad_arguments():
    with pytest.raises(ValueError, match="completion lengths"):
        token_budget_batches([1, 2], [1])
    with pytest.raises(ValueError, match="max_tokens"):
        token_budget_batches([1], [1], max_tokens=0)


# ---------------------------------------------------------------------------------------------- through GRPO
def _policy(tok, model, **kw):
    args = {"rewards": LENGTH, "num_generations": 4, "max_new_tokens": 12, "beta": 0.05, "num_iterations": 2}
    args.update(kw)
    return GRPOPolicy(model, tok, **args)


def _batch(tok, n=3):
    data = PromptData(SAMPLE_TRAIN, limit=n)
    data.setup(tok)
    return collate_prompts(data.train_dataset, tok.pad_token_id)


def _window_grads(module, window) -> dict[str, torch.Tensor]:
    """The loop's accumulation maths: each micro-batch loss x its batch_weight share of the window."""
    module.model.zero_grad(set_to_none=True)
    total = sum(module.batch_weight(mb) for mb in window)
    for mb in window:
        (module.training_step(mb, 0)["loss"] * module.batch_weight(mb) / total).backward()
    return {n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("advantage, aggregation", [("grpo", "token"), ("grpo", "dr_grpo"), ("reinforce_pp", "token"),
                                                    ("rloo", "sequence")])
def test_budgeted_micro_batches_give_the_one_pass_gradients(tok, advantage, aggregation):
    from peft import LoraConfig, get_peft_model

    model = tiny_llama(vocab=len(tok), hidden=32)
    model.config.pad_token_id, model.config.eos_token_id = tok.pad_token_id, tok.eos_token_id
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.0, init_lora_weights=False))  # B != 0: KL != 0
    batch = _batch(tok)
    windows = {}
    for name, budget in (("one", None), ("budget", BUDGET)):
        # old_logprobs=recompute: the old log-probs' own pass too (the default takes them from the decode loop)
        module = _policy(tok, model, micro_batch_tokens=budget, advantage=advantage, loss_aggregation=aggregation,
                         old_logprobs="recompute")
        passes = []
        original = module._logps
        module._logps = lambda m, mb, _o=original: passes.append(
            mb["completion_ids"].shape[0] * (mb["prompt_ids"].shape[1] + mb["completion_ids"].shape[1])) or _o(m, mb)
        torch.manual_seed(0)
        windows[name] = (module, module.make_experience(batch), passes)
    one, budgeted = windows["one"], windows["budget"]
    # 12 completions of ~150 tokens: one pass vs micro-batches of two rows (prompts of different lengths: padding)
    assert len(one[1][0]) == 1 and [mb["num_sequences"] for mb in budgeted[1][0]] == [2] * 6
    for mb in budgeted[1][0]:  # the budget bounds every update micro-batch ...
        assert mb["num_tokens"] <= mb["num_sequences"] * (
            mb["prompt_ids"].shape[1] + mb["completion_ids"].shape[1]) <= BUDGET
    assert len(budgeted[2]) == 12 and all(size <= BUDGET for size in budgeted[2])  # ... and every log-prob pass
    assert one[2] == [12 * (one[1][0][0]["prompt_ids"].shape[1] + one[1][0][0]["completion_ids"].shape[1])] * 2
    whole = one[1][0][0]["advantages"]
    for mb in budgeted[1][0]:  # the same advantages, row by row (per-token ones cut to the micro-batch's width)
        want = whole[mb["rows"]]
        want = want if want.dim() == 1 else want[:, : mb["advantages"].shape[1]]
        torch.testing.assert_close(mb["advantages"], want, rtol=0, atol=1e-5)
    g_one, g_budget = _window_grads(one[0], one[1][0]), _window_grads(budgeted[0], budgeted[1][0])
    assert g_one.keys() == g_budget.keys() and any(g.abs().sum() > 0 for g in g_one.values())
    for n in g_one:
        torch.testing.assert_close(g_budget[n], g_one[n], rtol=1e-4, atol=1e-6, msg=n)


def test_config_names_the_valid_values():
    from medlab.config.validate import collect_problems

    cfg = medlab.compose("grpo", ["objective.micro_batch_tokens=0", "objective.advantage=ppo"], run_dir="/tmp/x")
    problems = "\n".join(collect_problems(cfg))
    assert "objective.micro_batch_tokens must be null or an integer >= 1, got 0" in problems
    assert "objective.advantage='ppo' is not one of grpo, rloo, reinforce_pp" in problems
    cfg = medlab.compose("grpo", ["objective.advantage=rloo", "objective.scale_rewards=group"], run_dir="/tmp/x")
    assert any("objective.scale_rewards='group' is not one of none, batch (objective.advantage=rloo; null = none)" in p
               for p in collect_problems(cfg))
    assert collect_problems(medlab.compose("grpo", ["objective.advantage=reinforce_pp"], run_dir="/tmp/x")) == []
