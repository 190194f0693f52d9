"""medlab.rl.rewards: hand-computed cases for every reward, failure masking and loading by ``_target_``."""

from __future__ import annotations

import math

import pytest
import torch

from medlab.rl import rewards as R
from medlab.rl.advantages import group_advantages


def _one(fn, completion, **fields):
    return fn([""], [completion], **{k: [v] for k, v in fields.items()})[0]


@pytest.mark.parametrize(("completion", "gold", "expected"), [
    ("<think>B looks wrong</think><answer>C</answer>", "C", 1.0),
    ("<answer>(C) Aspirin</answer>", "(C)", 1.0),
    ("<answer>A</answer>", "C", 0.0),
    ("<answer>A</answer>", "a", 1.0),
    ("<answer>the aspirin</answer>", "A", 0.0),
    ("The answer is (B), because A is contraindicated.", "B", 1.0),  # explicit span: its first letter
    ("The answer is B because it is safer.", "B", 1.0),
    ("The answer is A because it is safer.", "A", 1.0),
    ("Answer: option c", "C", 0.0),  # lowercase letters are not options
    ("Answer： Option D.", "D", 1.0),
    ("A patient like this needs option D", "D", 1.0),  # last standalone letter; "A patient" is an article
    ("Options B and E fit, but E is better. E", "E", 1.0),
    ("<answer>C", "C", 1.0),  # malformed tag: falls back to the last standalone letter
    ("答案是C。", "C", 1.0),
    ("Based on the trial, the answer is: Yes.", "yes", 1.0),
    ("<answer>maybe</answer>", "Maybe", 1.0),
    ("No, it does not reduce mortality.", "yes", 0.0),
    ("There is no proof, but overall yes", "yes", 1.0),  # implicit: the last yes/no/maybe word
    ("答案：是", "yes", 1.0),
    ("<answer>不是</answer>", "no", 1.0),
    ("<answer>yes</answer>", "是", 1.0),
    ("<answer>The Aspirin!</answer>", "aspirin", 1.0),
    ("Aspirin.", "aspirin", 1.0),
    ("<answer>阿司匹林。</answer>", "阿司匹林", 1.0),
    ("答案：阿司匹林", "阿司匹林", 1.0),
    ("<answer>布洛芬</answer>", "阿司匹林", 0.0),
    ("<answer>acetylsalicylic acid</answer>", ["aspirin", "Acetylsalicylic acid"], 1.0),
])
def test_exact_match(completion, gold, expected):
    assert _one(R.exact_match, completion, answer=gold) == expected


def test_exact_match_without_gold_is_none_and_chat_completions_work():
    assert R.exact_match(["q"], ["<answer>C</answer>"]) == [None]
    msgs = [{"role": "assistant", "content": "<answer>C</answer>"}]
    assert R.exact_match(["q"], [msgs], answer=["C"], trainer_state=object()) == [1.0]


def test_token_f1():
    assert _one(R.token_f1, "<answer>aspirin and heparin</answer>", answer="Aspirin") == pytest.approx(0.5)
    # 4 CJK characters predicted, 7 gold, 4 shared: P = 1, R = 4/7, F1 = 8/11
    assert _one(R.token_f1, "答案：阿司匹林", answer="阿司匹林肠溶片") == pytest.approx(8 / 11)
    assert _one(R.token_f1, "<answer>the heparin</answer>", answer=["aspirin", "heparin"]) == 1.0
    assert _one(R.token_f1, "<answer>!!!</answer>", answer="aspirin") == 0.0
    assert _one(R.token_f1, "x", answer=None) is None


TOOL = '<tool_call>{"name": "search", "arguments": {"q": "aspirin"}}</tool_call>'


@pytest.mark.parametrize(("completion", "kind", "expected"), [
    ("<think>hmm</think><answer>C</answer>", "any", 1.0),
    ("<answer>C</answer>", "answer", 1.0),
    ("<answer>C", "any", 0.0),
    ("<answer>  </answer>", "any", 0.0),
    ("<answer>a</answer><answer>b</answer>", "any", 0.0),
    ("<think>x<answer>C</answer></think>", "any", 0.0),
    ("<answer>C</answer><think>late</think>", "any", 0.0),
    (TOOL, "any", 1.0),
    (TOOL + "\n" + TOOL, "tool_call", 1.0),
    (TOOL, "answer", 0.0),
    ('<tool_call>{"name": "search", "arguments": "q"}</tool_call>', "any", 0.0),
    ('<tool_call>{"name": "search", </tool_call>', "any", 0.0),
    (TOOL + "<tool_call>", "any", 0.0),
])
def test_format(completion, kind, expected):
    assert R.format([""], [completion], kind=kind) == [expected]


def test_format_pattern():
    assert R.format_reward(["", ""], ["Final: C", "C"], pattern=r"Final: [A-E]") == [1.0, 0.0]


def test_length_penalty():
    out = R.length_penalty([""] * 3, ["x" * 5, "x" * 15, "x" * 100], target=10, per_unit=0.1)
    assert out == pytest.approx([0.0, -0.5, -1.0])  # the last is capped at max_penalty=1
    assert R.length_penalty([""], ["x" * 100], target=10, per_unit=0.1, max_penalty=None) == pytest.approx([-9.0])
    words = R.length_penalty([""], ["a b c d 阿司匹林"], target=4, per_unit=0.5, unit="tokens")  # 8 tokens
    assert words == pytest.approx([-1.0])
    split = R.length_penalty([""], ["a b c d e f"], target=4, per_unit=0.25, unit="tokens", tokenizer=str.split)
    assert split == pytest.approx([-0.5])
    assert all(v <= 0 for v in out)


def test_retrieval_relevance():
    got = [[1, 2], ["p3"], ["Aspirin reduces the risk of stroke in adults."], ["see 12 here"], [4]]
    gold = [[2], ["p4"], ["aspirin reduces the risk of stroke"], ["12"], []]
    assert R.retrieval_relevance([""] * 5, [""] * 5, retrieved=got, gold_passages=gold) == [1.0, 0.0, 1.0, 0.0, None]
    assert R.retrieval_relevance([""], [""], retrieved=[["doc-1"]], contexts=[["doc-1"]]) == [1.0]
    with pytest.raises(ValueError, match="retrieved"):
        R.retrieval_relevance([""], [""], gold_passages=[["x"]])


def test_llm_judge_with_a_stub_judge():
    seen = []

    def judge(prompt: str) -> str:
        seen.append(prompt)
        return {"c1": "Score: 7", "c2": "I would give it 8/10.", "c3": "great answer", "c4": "Score: 15"}[
            prompt.split("Answer to grade:\n")[1].split("\n")[0]]

    out = R.llm_judge(["q"] * 4, ["c1", "c2", "c3", "c4"], judge=judge, answer=["gold"] * 4)
    assert out == [0.7, 0.8, None, None]
    assert "Question:\nq" in seen[0] and "Reference answer:\ngold" in seen[0]
    with pytest.raises(ValueError, match="exactly one"):
        R.llm_judge(["q"], ["c"])


def test_llm_judge_loads_a_local_hf_model_once(tmp_path):
    transformers = pytest.importorskip("transformers")
    from medlab import ASSETS_DIR

    tok = transformers.AutoTokenizer.from_pretrained(str(ASSETS_DIR / "tokenizer"))
    cfg = transformers.LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=512)
    transformers.AutoModelForCausalLM.from_config(cfg).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    R._hf_judge.cache_clear()
    out = R.llm_judge(["q", "q"], ["a", "b"], model_path=str(tmp_path), max_new_tokens=3)
    assert len(out) == 2 and all(v is None or 0.0 <= v <= 1.0 for v in out)
    assert R._hf_judge.cache_info().misses == 1  # loaded lazily, once


def test_combine_rewards_masks_and_counts_failures():
    def flaky(prompts, completions, **_):
        if any("boom" in c for c in completions):
            raise RuntimeError("boom")
        return [None if c == "none" else 0.5 for c in completions]

    def broken(prompts, completions, **_):
        return []  # wrong length, every time

    completions = ["<answer>C</answer>", "boom", "none", "<answer>B</answer>"]
    fns = {"acc": (R.exact_match, 2.0), "flaky": (flaky, 1.0), "broken": broken}
    total, per_fn, stats = R.combine_rewards(fns, ["q"] * 4, completions, answer=["C", "C", None, "C"])
    nan = math.nan
    torch.testing.assert_close(per_fn["acc"], torch.tensor([1.0, 0.0, nan, 0.0]), equal_nan=True)
    torch.testing.assert_close(per_fn["flaky"], torch.tensor([0.5, nan, nan, 0.5]), equal_nan=True)
    assert torch.isnan(per_fn["broken"]).all()
    # total = sum of the weighted valid values; sample 2 has none -> NaN
    torch.testing.assert_close(total, torch.tensor([2.5, 0.0, nan, 0.5]), equal_nan=True)
    assert {k: int(stats[f"reward/{k}/failures"]) for k in fns} == {"acc": 1, "flaky": 2, "broken": 4}
    assert int(stats["reward/masked"]) == 1
    assert float(stats["reward/acc/mean"]) == pytest.approx(1 / 3)
    adv, adv_stats = group_advantages(total, 4)
    assert adv[2] == 0 and int(adv_stats["masked"]) == 1


def test_load_reward_and_reward_set():
    assert R.load_reward("exact_match") is R.exact_match
    assert R.load_reward("medlab.rl.rewards.token_f1") is R.token_f1
    short = R.load_reward("length_penalty", target=2, per_unit=1.0)
    assert short([""], ["abcd"]) == [-1.0]
    with pytest.raises(ValueError, match="cannot load"):
        R.load_reward("medlab.rl.rewards.nope")
    with pytest.raises(ValueError, match="unknown reward"):
        R.load_reward("nope")
    with pytest.raises(TypeError, match="not callable"):
        R.load_reward("medlab.rl.rewards.REWARDS")

    from omegaconf import OmegaConf

    cfg = OmegaConf.create({
        "acc": {"_target_": "medlab.rl.rewards.exact_match", "weight": 1.0},
        "fmt": {"_target_": "format", "weight": 0.5, "kind": "answer"},
        "len": {"_target_": "length_penalty", "target": 5, "per_unit": 0.1},
    })
    rs = R.RewardSet.from_config(cfg)
    total, per_fn, _ = rs(["q", "q"], ["<answer>C</answer>", "C"], answer=["C", "D"])
    # sample 0: 1 + 0.5 * 1 - min(0.1 * (18 - 5), 1) ; sample 1: 0 + 0.5 * 0 - 0
    torch.testing.assert_close(total, torch.tensor([1.5 - 1.0, 0.0]))
    assert set(per_fn) == {"acc", "fmt", "len"}
    with pytest.raises(ValueError, match="_target_"):
        R.RewardSet.from_config({"x": {"weight": 1.0}})
