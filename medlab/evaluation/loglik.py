"""Log-likelihood of answer continuations after a prompt, each prompt encoded once.

    scores = option_logliks(model, tokenizer, [(context, [" A", " B", " C"]), ...], batch_size=16)
    # scores[i][k] = OptionScore(loglik=sum log p(continuation k tokens | context), tokens=n, greedy=bool)

Tokenization follows lm-evaluation-harness (``_encode_pair``): trailing whitespace of the context moves to the
continuation; ``context ids = tok(context)``, ``continuation ids = tok(context + continuation)[len(context ids):]``
(the tokenizer's default special tokens, e.g. a Llama BOS). The score of a continuation is the sum of its tokens'
log-probabilities (``greedy``: every token is the argmax), exactly what the harness computes per request; only
the work differs:

1. a batch of prompts is run **once**: the tokens all prompts of the batch share (a few-shot block, a subject's
   description) are encoded once and their KV cache expanded to the batch, then the rest of each prompt
   (right-padded) on top of it; batches (:func:`plan_batches`) gather the prompts that share such a prefix and
   otherwise sort by length, so little padding is computed;
2. only the hidden state of each prompt's last token goes through the LM head (no ``[B, T, V]`` logits), which
   scores every continuation's first token -- a single-token answer (``" A"``, ``" yes"``) needs nothing more;
3. continuations of more tokens are run together on the prompts' cache (selected per continuation), with explicit
   position ids, so no prompt is encoded twice.

Works for any transformers causal LM (peft-wrapped too) whose decoder takes ``past_key_values``; a model without
a separable LM head (``medlab.ops.linear_ce.lm_head_parts``) uses its full logits at the same positions.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medlab.ops.linear_ce import lm_head_parts


@dataclass(frozen=True)
class OptionScore:
    loglik: float
    tokens: int
    greedy: bool


def encode_pair(tokenizer: Any, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """``(context ids, continuation ids)`` as lm-evaluation-harness encodes a loglikelihood request."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation, context = context[-n_spaces:] + continuation, context[:-n_spaces]
    whole = tokenizer(context + continuation)["input_ids"]
    ctx = tokenizer(context)["input_ids"]
    cont = whole[len(ctx):]
    if not ctx or not cont:
        raise ValueError(f"cannot score continuation {continuation!r} after context ending {context[-40:]!r}: "
                         "empty context or continuation after tokenization")
    return ctx, cont


def _common_prefix(seqs: Sequence[Sequence[int]]) -> int:
    first, n = seqs[0], min(len(s) for s in seqs)
    for i in range(n):
        t = first[i]
        if any(s[i] != t for s in seqs):
            return i
    return n


class _Scorer:
    """The model's decoder + head (or the whole model) behind one call: ids -> (last hidden or logits, cache)."""

    def __init__(self, model: Any):
        self.model = model
        parts, _ = lm_head_parts(model)
        self.parts = parts
        module = parts.decoder if parts is not None else model
        forward = getattr(getattr(module, "get_base_model", lambda: module)(), "forward", module.forward)
        # transformers >= 5.2x names the argument ``cache`` (``past_key_values`` is deprecated there)
        self.cache_kw = "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"

    def new_cache(self):
        from transformers import DynamicCache

        config = getattr(self.model, "config", None)
        return DynamicCache(config=config) if config is not None else DynamicCache()

    def run(self, ids, mask, positions, cache):
        """``(last-layer states, cache, states are hidden)``; ``cache`` (a DynamicCache) is extended in place."""
        cache = cache if cache is not None else self.new_cache()
        kwargs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions, self.cache_kw: cache,
                  "use_cache": True}
        if self.parts is not None:
            return self.parts.decoder(**kwargs)[0], cache, True
        return self.model(**kwargs).logits, cache, False

    def logprobs(self, states: torch.Tensor, is_hidden: bool) -> torch.Tensor:
        logits = self.parts.head(states) if is_hidden else states
        return torch.log_softmax(logits.float(), dim=-1)


@torch.inference_mode()
def option_logliks(model: Any, tokenizer: Any, requests: Sequence[tuple[str, Sequence[str]]], *,
                   batch_size: int = 16, progress: Callable[[int], None] | None = None) -> list[list[OptionScore]]:
    """Per request ``(context, continuations)``: one :class:`OptionScore` per continuation (see the module doc).
    ``progress(n)`` is called after each batch with the number of requests done in it."""
    encoded = []
    for context, conts in requests:
        pairs = [encode_pair(tokenizer, context, c) for c in conts]
        encoded.append((pairs[0][0], [p[1] for p in pairs]))
    out: list[list[OptionScore] | None] = [None] * len(encoded)
    scorer = _Scorer(model)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        for idx in plan_batches([p for p, _ in encoded], batch_size):
            scores = _score_batch(scorer, [encoded[i] for i in idx], device, tokenizer)
            for i, sc in zip(idx, scores):
                out[i] = sc
            if progress is not None:
                progress(len(idx))
    finally:
        model.train(was_training)
    return out  # type: ignore[return-value]


def _chunks(order: list[int], size: int) -> list[list[int]]:
    return [order[s:s + size] for s in range(0, len(order), size)]


def plan_batches(prompts: Sequence[Sequence[int]], batch_size: int, min_shared: int = 8) -> list[list[int]]:
    """Batches of prompt indices: prompts sharing a prefix of ``min_shared``+ tokens (a subject's description,
    a few-shot block) are batched together, longest first, when the tokens their batches share save more than
    the padding they add; every other prompt is batched by length (longest first: the least padding)."""
    lex = sorted(range(len(prompts)), key=lambda i: list(prompts[i]))
    groups, loose = [], []
    start = 0
    for j in range(1, len(lex) + 1):
        if j == len(lex) or _common_prefix([prompts[lex[j - 1]], prompts[lex[j]]]) < min_shared:
            group = lex[start:j]
            start = j
            if len(group) < 2:
                loose += group
                continue
            chunks = _chunks(sorted(group, key=lambda i: -len(prompts[i])), batch_size)
            saved = sum((len(c) - 1) * min(_common_prefix([prompts[i] for i in c]),
                                           min(len(prompts[i]) for i in c) - 1) for c in chunks)
            padding = sum(len(c) * len(prompts[c[0]]) - sum(len(prompts[i]) for i in c) for c in chunks)
            if saved > padding:
                groups += chunks
            else:
                loose += group
    return groups + _chunks(sorted(loose, key=lambda i: -len(prompts[i])), batch_size)


def _score_batch(scorer: _Scorer, batch: list[tuple[list[int], list[list[int]]]], device, tokenizer) -> list:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    prompts = [p for p, _ in batch]
    B = len(prompts)
    shared = min(_common_prefix(prompts), min(len(p) for p in prompts) - 1)  # >= 1 own token per prompt
    cache = None
    if shared > 0:  # the shared prefix once, its cache expanded to the batch
        ids = torch.tensor([prompts[0][:shared]], device=device)
        _, cache, _ = scorer.run(ids, torch.ones_like(ids), torch.arange(shared, device=device)[None], None)
        cache.batch_repeat_interleave(B)
    rest = [p[shared:] for p in prompts]
    width = max(len(r) for r in rest)
    ids = torch.full((B, width), pad, dtype=torch.long, device=device)
    own = torch.zeros((B, width), dtype=torch.long, device=device)
    for b, r in enumerate(rest):
        ids[b, :len(r)] = torch.tensor(r, device=device)
        own[b, :len(r)] = 1
    mask = torch.cat([torch.ones((B, shared), dtype=torch.long, device=device), own], dim=1)
    positions = (shared + torch.arange(width, device=device))[None].expand(B, width)
    states, cache, is_hidden = scorer.run(ids, mask, positions, cache)
    last = torch.tensor([len(r) - 1 for r in rest], device=device)
    first = scorer.logprobs(states[torch.arange(B, device=device), last], is_hidden)  # [B, V]

    # continuations with more than one token: their tokens but the last, on the prompts' cache
    longer = [(b, k) for b, (_, conts) in enumerate(batch) for k, c in enumerate(conts) if len(c) > 1]
    rest_lp: dict[tuple[int, int], torch.Tensor] = {}
    if longer:
        rows = torch.tensor([b for b, _ in longer], device=device)
        cache.batch_select_indices(rows)
        span = max(len(batch[b][1][k]) - 1 for b, k in longer)
        cids = torch.full((len(longer), span), pad, dtype=torch.long, device=device)
        cmask = torch.zeros((len(longer), span), dtype=torch.long, device=device)
        for r, (b, k) in enumerate(longer):
            c = batch[b][1][k][:-1]
            cids[r, :len(c)] = torch.tensor(c, device=device)
            cmask[r, :len(c)] = 1
        full_mask = torch.cat([mask[rows], cmask], dim=1)
        cpos = (shared + width + torch.arange(span, device=device))[None].expand(len(longer), span)
        # the continuation starts right after each prompt's own last token (its position, not the padded width)
        cpos = cpos - (width - torch.tensor([len(rest[b]) for b, _ in longer], device=device))[:, None]
        cstates, _, _ = scorer.run(cids, full_mask, cpos, cache)
        for r, (b, k) in enumerate(longer):
            n = len(batch[b][1][k]) - 1
            rest_lp[(b, k)] = scorer.logprobs(cstates[r, :n], is_hidden)  # predicts tokens 1..n
    out = []
    for b, (_, conts) in enumerate(batch):
        row = []
        for k, c in enumerate(conts):
            lps = [first[b]] + ([*rest_lp[(b, k)]] if len(c) > 1 else [])
            ll = sum(float(lp[t]) for lp, t in zip(lps, c))
            greedy = all(int(lp.argmax()) == t for lp, t in zip(lps, c))
            row.append(OptionScore(ll, len(c), greedy))
        out.append(row)
    return out
