"""medlab's own KV-cache decode loop (``objective.engine=medlab``): HF ``generate`` without its per-token host sync.

``model.generate`` reads ``unfinished_sequences.max() == 0`` on the host after every token (transformers 5 only
defers that read on Apple ``mps``), so on a GPU each new token waits for the device to finish the previous one
and the launch queue drains -- for the small policies GRPO usually trains, generation is launch-bound and that
stall is a large part of a step. This loop keeps everything on the device and looks at "are all rows done?"
once every ``check_every`` tokens (one host sync per check instead of one per token); the few extra tokens a
finished batch may decode before the next check are cut off at the end.

Same model calls and same sampling maths as ``generate`` (prefill with the left-padded prompts, then one token
per step through a ``DynamicCache``; position ids ``cumsum(mask) - 1``; fp32 scores; temperature -> top-k ->
top-p -> softmax -> ``torch.multinomial`` on the global RNG; rows that hit EOS emit ``pad``), so greedy decoding
gives exactly ``generate``'s tokens and sampled decoding draws the same tokens from the same RNG state (tested).

Every step also keeps the sampled token's log-prob under ``log_softmax(logits / temperature)`` (unfiltered, fp32:
:func:`medlab.rl.generation.sampled_logprobs`), returned as ``Rollout.logprobs`` -- PPO's / GRPO's old log-probs
without a second forward over the experience (equal to a recomputed forward within float tolerance: tested).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from medlab.rl.generation import (
    HFGenerateEngine,
    Rollout,
    _seeded,
    completion_mask_from_ids,
    eval_mode,
    sampled_logprobs,
)


def filter_scores(scores: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """fp32 next-token scores after temperature, top-k and top-p (nucleus) filtering; removed tokens get -inf.

    Top-p keeps the smallest set of most likely tokens whose probability reaches ``top_p`` (ties at the
    boundary resolved as transformers' ``TopPLogitsWarper`` does: remove tokens whose ascending cumulative
    probability is <= 1 - top_p, always keeping the most likely one).
    """
    if temperature != 1.0:
        scores = scores / temperature
    if top_k and 0 < top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k)[0][..., -1, None]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=False)
        remove = sorted_scores.softmax(-1).cumsum(-1) <= (1 - top_p)
        remove[..., -1:] = False
        scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
    return scores


class KVCacheEngine(HFGenerateEngine):
    """Batched sampling with a KV cache and no per-token host sync (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, *, check_every: int = 16, **kwargs: Any) -> None:
        super().__init__(model, tokenizer, **kwargs)
        if check_every < 1:
            raise ValueError(f"check_every must be >= 1, got {check_every}")
        self.check_every = check_every

    def generate(self, prompts: list[list[int]], *, num_generations: int = 1, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, do_sample: bool = True,
                 seed: int | None = None) -> Rollout:
        device = self.device
        prompt_ids, prompt_mask = self.prompt_batch(prompts, num_generations)
        start = time.perf_counter()
        with eval_mode(self.model), torch.no_grad(), _seeded(seed, device):
            completion_ids, logprobs = self._decode(prompt_ids, prompt_mask, max_new_tokens, do_sample,
                                                    temperature, top_k, top_p)
        mask, truncated = completion_mask_from_ids(completion_ids, self.eos_token_id)
        lengths = mask.sum(1)
        ids, length_list = completion_ids.tolist(), lengths.tolist()  # the only host transfer
        width = max(length_list, default=0)
        completion_ids, mask = completion_ids[:, :width], mask[:, :width]  # drop columns decoded after every EOS
        logprobs = logprobs[:, :width] * mask
        rows = [row[:n] for row, n in zip(ids, length_list)]
        seconds = time.perf_counter() - start
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=self.skip_special_tokens)
        total = sum(length_list)
        return Rollout(prompt_ids, prompt_mask, completion_ids, mask, lengths, texts, truncated, seconds,
                       total / seconds if seconds > 0 else 0.0, logprobs)

    def _decode(self, ids: Tensor, mask: Tensor, max_new_tokens: int, do_sample: bool, temperature: float,
                top_k: int, top_p: float) -> tuple[Tensor, Tensor]:
        """``(token ids [N,T], their log-probs [N,T] fp32)``, ``T <= max_new_tokens``; rows pad after their EOS."""
        from transformers import DynamicCache

        N = ids.shape[0]
        out_ids = torch.full((N, max_new_tokens), self.pad_token_id, dtype=torch.long, device=ids.device)
        out_lp = torch.zeros((N, max_new_tokens), dtype=torch.float32, device=ids.device)
        if max_new_tokens == 0 or N == 0:
            return out_ids, out_lp
        eos = torch.as_tensor(self.eos_token_id, device=ids.device).reshape(-1)
        config = getattr(self.model, "config", None)
        cache = DynamicCache(config=config) if config is not None else DynamicCache()
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        next_position = positions[:, -1:] + 1
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                            use_cache=True, logits_to_keep=1).logits
        finished = torch.zeros(N, dtype=torch.bool, device=ids.device)
        ones = torch.ones((N, 1), dtype=mask.dtype, device=mask.device)
        for t in range(max_new_tokens):
            scores = logits[:, -1, :].float()
            if do_sample:
                probs = filter_scores(scores, temperature, top_k, top_p).softmax(-1)
                token = torch.multinomial(probs, num_samples=1).squeeze(1)
            else:
                token = scores.argmax(-1)
            token = torch.where(finished, torch.full_like(token, self.pad_token_id), token)
            out_ids[:, t] = token
            out_lp[:, t] = sampled_logprobs(scores, token, temperature)  # after EOS: masked by the caller
            finished |= torch.isin(token, eos)
            if t == max_new_tokens - 1 or ((t + 1) % self.check_every == 0 and bool(finished.all())):
                return out_ids[:, : t + 1], out_lp[:, : t + 1]
            mask = torch.cat([mask, ones], 1)
            logits = self.model(input_ids=token[:, None], attention_mask=mask, position_ids=next_position,
                                past_key_values=cache, use_cache=True).logits
            next_position = next_position + 1
        return out_ids, out_lp
