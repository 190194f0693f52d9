"""Rollout generation (left padding, masks, RNG) and per-token log-probs (policy and peft reference)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_llama

from medlab.rl.generation import (
    GenerationEngine,
    HFGenerateEngine,
    Rollout,
    completion_mask_from_ids,
    reference_logprobs,
    sequence_logprobs,
)

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23]]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


def _model(tok, attn: str = "sdpa"):
    model = tiny_llama(vocab=len(tok), attn_implementation=attn)
    model.config.use_cache = False  # as medlab loads it for training
    return model


def test_batched_left_padded_greedy_equals_one_by_one(tok):
    model = _model(tok)
    model.train()
    engine = HFGenerateEngine(model, tok)
    assert isinstance(engine, GenerationEngine)
    batch = engine.generate(PROMPTS, num_generations=2, max_new_tokens=10, do_sample=False)
    assert model.training and model.config.use_cache is False  # mode and config restored
    assert batch.prompt_ids.shape == (6, 7) and batch.prompt_mask[2].tolist() == [0] * 5 + [1, 1]
    assert batch.prompt_ids[2, :5].eq(tok.pad_token_id).all()
    assert len(batch.texts) == 6 and batch.seconds > 0 and batch.tokens_per_s > 0
    for i, prompt in enumerate(PROMPTS):
        single = engine.generate([prompt], max_new_tokens=10, do_sample=False)
        n = int(single.completion_lengths[0])
        for g in range(2):  # prompt i's generations are rows i*G .. i*G+G-1
            row = i * 2 + g
            assert int(batch.completion_lengths[row]) == n
            assert batch.completion_ids[row, :n].tolist() == single.completion_ids[0, :n].tolist()
            assert batch.texts[row] == single.texts[0]


def test_sequence_logprobs_match_generate_and_unpadded_forward(tok):
    model = _model(tok)
    engine = HFGenerateEngine(model, tok)
    first = engine.generate(PROMPTS, max_new_tokens=8, do_sample=False)
    eos = int(first.completion_ids[0, 3])  # a token row 0 emits at step 3: use it as EOS to exercise masks
    engine = HFGenerateEngine(model, tok, eos_token_id=eos)
    ro = engine.generate(PROMPTS, max_new_tokens=8, do_sample=False)
    stop = int((ro.completion_ids[0] == eos).int().argmax())
    assert stop <= 3 and not ro.is_truncated[0] and int(ro.completion_lengths[0]) == stop + 1
    assert ro.completion_mask[0, :stop + 1].eq(1).all() and ro.completion_mask[0, stop + 1:].eq(0).all()
    assert ro.is_truncated.tolist() == (~ro.completion_ids.eq(eos).any(1)).tolist()

    args = (ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
    with torch.no_grad():
        lp = sequence_logprobs(model, *args)
        assert torch.equal(lp, sequence_logprobs(model, *args, batch_size=2))
        hot = sequence_logprobs(model, *args, temperature=0.7)
        gen = model.generate(input_ids=ro.prompt_ids, attention_mask=ro.prompt_mask, max_new_tokens=8,
                             do_sample=False, eos_token_id=eos, pad_token_id=tok.pad_token_id, use_cache=True,
                             output_logits=True, return_dict_in_generate=True)
    assert lp.shape == ro.completion_ids.shape and lp[ro.completion_mask == 0].eq(0).all()
    logits = torch.stack(gen.logits, 1)  # raw logits of each generation step
    ref = logits.log_softmax(-1).gather(-1, ro.completion_ids[..., None])[..., 0] * ro.completion_mask
    torch.testing.assert_close(lp, ref, atol=1e-5, rtol=0)
    ref_hot = (logits / 0.7).log_softmax(-1).gather(-1, ro.completion_ids[..., None])[..., 0] * ro.completion_mask
    torch.testing.assert_close(hot, ref_hot, atol=1e-5, rtol=0)
    for i, prompt in enumerate(PROMPTS):  # unpadded, one row at a time, default position ids
        n = int(ro.completion_lengths[i])
        ids = torch.tensor([prompt + ro.completion_ids[i, :n].tolist()])
        with torch.no_grad():
            row = model(input_ids=ids).logits[0, len(prompt) - 1:-1].log_softmax(-1)
        torch.testing.assert_close(lp[i, :n], row.gather(-1, ids[0, len(prompt):, None])[:, 0], atol=1e-5, rtol=0)


def test_reference_logprobs_peft_zero_init_then_perturbed(tok):
    from peft import LoraConfig, get_peft_model

    base = _model(tok)
    with pytest.raises(ValueError, match="ref_model"):
        reference_logprobs(base, *_rollout_args(tok, base))
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    engine = HFGenerateEngine(model, tok)  # generation through the peft wrapper
    torch.manual_seed(1)
    ro = engine.generate(PROMPTS, num_generations=2, max_new_tokens=6, temperature=1.0)
    args = (ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
    policy = sequence_logprobs(model, *args)
    ref = reference_logprobs(model, *args)
    assert policy.requires_grad and not ref.requires_grad
    assert torch.equal(policy.detach(), ref)  # B = 0: KL exactly zero
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    perturbed = sequence_logprobs(model, *args).detach()
    assert not torch.allclose(perturbed, ref)
    assert torch.equal(reference_logprobs(model, *args), ref)  # adapters disabled -> still the base model
    assert torch.equal(sequence_logprobs(model, *args).detach(), perturbed)  # adapters re-enabled after
    fresh = _model(tok)  # same init seed as the base under the adapters
    assert torch.equal(reference_logprobs(fresh, *args, ref_model=_model(tok)), ref)


def _rollout_args(tok, model):
    ro = HFGenerateEngine(model, tok).generate(PROMPTS[:1], max_new_tokens=3, do_sample=False)
    return ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask


def test_sampling_reproducible_from_global_rng(tok):
    engine = HFGenerateEngine(_model(tok), tok)
    kw = {"num_generations": 3, "max_new_tokens": 12, "temperature": 1.0, "top_p": 1.0, "top_k": 0}
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = engine.generate(PROMPTS, **kw)
    torch.set_rng_state(state)  # what resume does
    b = engine.generate(PROMPTS, **kw)
    assert torch.equal(a.completion_ids, b.completion_ids) and a.texts == b.texts
    torch.manual_seed(7)
    c = engine.generate(PROMPTS, **kw)
    assert not torch.equal(a.completion_ids, c.completion_ids)
    assert not torch.equal(a.completion_ids[0], a.completion_ids[1])  # G samples of one prompt differ
    # seed= runs on a forked RNG: reproducible and leaves the global state alone
    state = torch.get_rng_state()
    d, e = engine.generate(PROMPTS, seed=5, **kw), engine.generate(PROMPTS, seed=5, **kw)
    assert torch.equal(d.completion_ids, e.completion_ids) and torch.equal(torch.get_rng_state(), state)


def test_completion_mask_and_rollout_from_token_lists(tok):
    ids = torch.tensor([[4, 2, 9, 2], [4, 5, 6, 7], [3, 3, 0, 0]])
    mask, truncated = completion_mask_from_ids(ids, [2, 3])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert truncated.tolist() == [False, True, False]
    ro = Rollout.from_token_lists([[9, 8, 7], [6]], [[10, 11, 2], [12]], eos_token_id=2, pad_token_id=0,
                                  tokenizer=tok)
    assert ro.prompt_ids.tolist() == [[9, 8, 7], [0, 0, 6]] and ro.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ro.completion_ids.tolist() == [[10, 11, 2], [12, 0, 0]]
    assert ro.completion_mask.tolist() == [[1, 1, 1], [1, 0, 0]] and ro.completion_lengths.tolist() == [3, 1]
    assert ro.is_truncated.tolist() == [False, True] and ro.completion_lists() == [[10, 11, 2], [12]]
    assert len(ro.texts) == 2
