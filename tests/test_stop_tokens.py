"""Generation stops where the run's chat format ends a turn: the tokenizer's EOS and the template's end-of-turn
token (``<|eot_id|>`` for llama3 on the shipped ChatML tokenizer), in GRPO rollouts and in QA evaluation."""

from __future__ import annotations

import pytest

import medlab
from medlab.data.templates import get_template
from medlab.data.tokenize import stop_token_ids

SAMPLE = str(medlab.ASSETS_DIR / "sample" / "qa_mc_train.jsonl")


@pytest.mark.parametrize("template", ["chatml", "llama3", "chatglm3", "baichuan2", "deepseek"])
def test_stop_tokens_are_eos_plus_the_templates_end_of_turn(tok, template):
    ids = stop_token_ids(get_template(template, tok), tok)
    assert ids[0] == tok.eos_token_id and len(set(ids)) == len(ids)
    eot = tok.encode(get_template(template, tok).end_of_turn, add_special_tokens=False)
    if len(eot) == 1:
        assert eot[0] in ids


def test_prompt_data_and_grpo_stop_on_the_llama3_end_of_turn(tok):
    from medlab.objectives.grpo import GRPOPolicy
    from medlab.rl.data import PromptData

    data = PromptData(SAMPLE, None, template="llama3", limit=4)
    data.setup(tok)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert eot is not None and eot != tok.eos_token_id
    assert data.stop_token_ids == (tok.eos_token_id, eot)

    from helpers import tiny_llama

    module = GRPOPolicy(tiny_llama(vocab=len(tok)), tok, rewards={"acc": {"_target_": "exact_match"}})
    assert module.engine.eos_token_id == tok.eos_token_id
    module.bind_data(data)
    assert module.engine.eos_token_id == [tok.eos_token_id, eot]
    chatml = PromptData(SAMPLE, None, template="chatml", limit=4)
    chatml.setup(tok)
    assert chatml.stop_token_ids == (tok.eos_token_id,)  # ChatML's <|im_end|> is the shipped tokenizer's EOS
