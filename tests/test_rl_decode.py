"""medlab's KV-cache decode loop (objective.engine=medlab) against transformers' generate on the same RNG state."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from helpers import tiny_llama

from medlab.rl.decode import KVCacheEngine, filter_scores
from medlab.rl.generation import GenerationEngine, HFGenerateEngine

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23]]


@pytest.fixture(scope="module")
def model(tok):
    m = tiny_llama(vocab=len(tok), seed=3)
    m.config.use_cache = False
    with torch.no_grad():  # peaky next-token distributions, so sampled rows also hit EOS at different lengths
        m.model.norm.weight.mul_(6.0)
    return m


def _stop_token(model, tok, kwargs) -> int:
    """A token some rows emit and others don't under these settings: as EOS, rows stop early and late."""
    out = HFGenerateEngine(model, tok).generate(PROMPTS, **kwargs)
    rows = [set(r) for r in out.completion_ids.tolist()]
    counts = out.completion_ids.flatten().bincount()
    for token in counts.argsort(descending=True).tolist():
        if any(token in r for r in rows) and not all(token in r for r in rows):
            return token
    raise AssertionError("no token separates the rows")


@pytest.mark.parametrize("sampling", [{"do_sample": False}, {"temperature": 1.0},
                                      {"temperature": 0.7, "top_k": 20, "top_p": 0.9}])
@pytest.mark.parametrize("check_every", [1, 5])
def test_same_tokens_as_hf_generate(model, tok, sampling, check_every):
    kwargs = dict(num_generations=3, max_new_tokens=14, seed=11, **sampling)
    eos = _stop_token(model, tok, kwargs)
    hf = HFGenerateEngine(model, tok, eos_token_id=eos)
    ours = KVCacheEngine(model, tok, eos_token_id=eos, check_every=check_every)
    assert isinstance(ours, GenerationEngine)
    a, b = hf.generate(PROMPTS, **kwargs), ours.generate(PROMPTS, **kwargs)
    assert a.completion_lengths.tolist() == b.completion_lengths.tolist()
    assert 0 < int(a.completion_lengths.min()) < 14 and a.is_truncated.any()  # early and late stops both occur
    assert b.completion_ids.shape == a.completion_ids.shape
    assert torch.equal(b.completion_ids * b.completion_mask, a.completion_ids * a.completion_mask)
    assert torch.equal(b.completion_mask, a.completion_mask) and torch.equal(b.is_truncated, a.is_truncated)
    assert b.texts == a.texts and torch.equal(b.prompt_ids, a.prompt_ids)


def test_global_rng_is_used_without_seed_and_mode_restored(model, tok):
    model.train()
    engine = KVCacheEngine(model, tok)
    torch.manual_seed(5)
    first = engine.generate(PROMPTS, num_generations=2, max_new_tokens=8)
    torch.manual_seed(5)
    again = engine.generate(PROMPTS, num_generations=2, max_new_tokens=8)
    assert torch.equal(first.completion_ids, again.completion_ids) and model.training


def test_filter_scores_matches_transformers_warpers():
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    ref = TopPLogitsWarper(0.8)(None, TopKLogitsWarper(10)(None, TemperatureLogitsWarper(0.6)(None, scores)))
    torch.testing.assert_close(filter_scores(scores, 0.6, 10, 0.8), ref)
    assert torch.isfinite(filter_scores(scores, top_p=1e-6)).sum(1).tolist() == [1, 1, 1, 1]
    with pytest.raises(ValueError, match="check_every"):
        KVCacheEngine(torch.nn.Linear(1, 1), SimpleNamespace(eos_token_id=1, pad_token_id=0), check_every=0)
