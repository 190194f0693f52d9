"""Rollout generation and per-token log-probabilities for GRPO-style objectives.

Shapes (``N`` = prompts x generations, ``P`` = padded prompt length, ``C`` = padded completion length):

- prompts are **left**-padded (``prompt_ids [N,P]``, ``prompt_mask [N,P]``) so every completion starts at
  column ``P``; completions are **right**-padded (``completion_ids [N,C]``) and ``completion_mask`` is 1 up to and
  including the first EOS, 0 after it.
- prompt ``i``'s ``G`` completions are the consecutive rows ``i*G .. i*G+G-1``.

Position ids under left padding are ``cumsum(mask) - 1`` (clamped at 0), both in ``model.generate`` (transformers
derives them from ``attention_mask``) and in :func:`sequence_logprobs` (computed here), so a padded row sees exactly
the positions of its unpadded self.

Behaviour log-probs: both engines also return ``Rollout.logprobs`` ``[N,C]`` (fp32), the log-probability of every
sampled token under the distribution it was sampled from *before* top-k / top-p filtering -- ``log_softmax(logits /
temperature)`` at that step, exactly the quantity :func:`sequence_logprobs` recomputes (and the loss uses) -- 0
after EOS. The engines run the model in eval mode (no dropout): these are the sampling policy's own log-probs, so
PPO / GRPO take their old (behaviour) log-probs from here instead of a second no-grad forward
(``objective.old_logprobs``). :class:`HFGenerateEngine` gets them from ``generate``'s unprocessed logits, which
``generate`` holds for every step (``N x max_new_tokens x vocab`` fp32): above ``record_logprobs_mib`` (and for
greedy decoding) it leaves ``logprobs`` None and the objectives recompute them.

Randomness: :class:`HFGenerateEngine` samples from torch's **global** RNG (``model.generate`` has no generator
argument), so restoring the RNG state (``torch.set_rng_state`` / ``torch.cuda.set_rng_state``, as resume does)
reproduces the same rollouts. ``seed=`` instead runs on a forked RNG seeded with ``seed`` and leaves the global
state untouched.
"""

from __future__ import annotations

import contextlib
import inspect
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class Rollout:
    """A batch of completions; see the module docstring for the padding conventions."""

    prompt_ids: Tensor  # [N,P] long, left-padded
    prompt_mask: Tensor  # [N,P] long
    completion_ids: Tensor  # [N,C] long, right-padded
    completion_mask: Tensor  # [N,C] long, 1 up to and including the first EOS
    completion_lengths: Tensor  # [N] long, = completion_mask.sum(1)
    texts: list[str]  # decoded completions (special tokens skipped by default)
    is_truncated: Tensor  # [N] bool, no EOS within max_new_tokens
    seconds: float = 0.0  # wall time of generation
    tokens_per_s: float = 0.0  # completion tokens (masked) per second
    logprobs: Tensor | None = None  # [N,C] fp32 behaviour log-probs of the sampled tokens (module docstring)

    @property
    def num_rows(self) -> int:
        return int(self.completion_ids.shape[0])

    def completion_lists(self) -> list[list[int]]:
        """Completion token ids per row, cut after the first EOS (one host transfer)."""
        ids, lengths = self.completion_ids.tolist(), self.completion_lengths.tolist()
        return [row[:n] for row, n in zip(ids, lengths)]

    @classmethod
    def from_token_lists(cls, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], *,
                         eos_token_id: int | Sequence[int], pad_token_id: int, texts: list[str] | None = None,
                         tokenizer: Any = None, seconds: float = 0.0) -> Rollout:
        """Build a rollout from ragged token lists (one prompt per completion; for other engines and stubs)."""
        prompt_ids, prompt_mask = left_pad(prompts, pad_token_id)
        C = max((len(c) for c in completions), default=0)
        completion_ids = torch.full((len(completions), C), pad_token_id, dtype=torch.long)
        for r, c in enumerate(completions):
            completion_ids[r, :len(c)] = torch.tensor(list(c), dtype=torch.long)
        valid = torch.arange(C)[None, :] < torch.tensor([len(c) for c in completions])[:, None]
        mask, truncated = completion_mask_from_ids(completion_ids, eos_token_id, valid=valid)
        if texts is None:
            texts = [] if tokenizer is None else tokenizer.batch_decode(
                [list(c) for c in completions], skip_special_tokens=True)
        lengths = mask.sum(1)
        total = int(lengths.sum())
        return cls(prompt_ids, prompt_mask, completion_ids, mask, lengths, texts, truncated, seconds,
                   total / seconds if seconds > 0 else 0.0)


@runtime_checkable
class GenerationEngine(Protocol):
    """Anything that turns token-id prompts into a :class:`Rollout` (HF generate, a stub, later vLLM)."""

    def generate(self, prompts: list[list[int]], *, num_generations: int = 1, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, do_sample: bool = True,
                 seed: int | None = None) -> Rollout: ...


def left_pad(prompts: Sequence[Sequence[int]], pad_token_id: int, device: Any = None) -> tuple[Tensor, Tensor]:
    """Ragged token lists -> ``(ids [N,P], mask [N,P])`` padded on the left."""
    P = max((len(p) for p in prompts), default=0)
    ids = torch.full((len(prompts), P), pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for r, p in enumerate(prompts):
        if len(p):
            ids[r, P - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[r, P - len(p):] = 1
    return ids.to(device), mask.to(device)


def completion_mask_from_ids(completion_ids: Tensor, eos_token_id: int | Sequence[int],
                             valid: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(mask [N,C] long, is_truncated [N] bool)``: 1 up to and including the first EOS (no host sync).

    ``valid`` (optional bool [N,C]) marks real tokens for rows without EOS (e.g. ragged stub output).
    """
    eos = torch.as_tensor(eos_token_id, device=completion_ids.device).reshape(-1)
    is_eos = torch.isin(completion_ids, eos)
    if valid is not None:
        is_eos &= valid
    C = completion_ids.shape[1]
    has_eos = is_eos.any(1)
    first = torch.where(has_eos, is_eos.int().argmax(1), torch.full_like(has_eos, C, dtype=torch.long))
    mask = torch.arange(C, device=completion_ids.device)[None, :] <= first[:, None]
    if valid is not None:
        mask &= valid
    return mask.long(), ~has_eos


def sampled_logprobs(scores: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """``log_softmax(scores / temperature)[tokens]`` per row (fp32): the log-prob of the token each row sampled at
    one decoding step, under the unfiltered (no top-k / top-p) temperature-scaled distribution, as
    :func:`sequence_logprobs` computes it from a full forward. ``scores [N,V]``, ``tokens [N]``."""
    z = scores.float()
    if temperature != 1.0:
        z = z / temperature
    return z.gather(-1, tokens[:, None]).squeeze(-1) - torch.logsumexp(z, -1)


def _seeded(seed: int | None, device: torch.device) -> contextlib.AbstractContextManager:
    if seed is None:
        return contextlib.nullcontext()
    devices = [device.index or 0] if device.type == "cuda" else []

    @contextlib.contextmanager
    def fork() -> Iterator[None]:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield

    return fork()


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Eval mode inside, the previous train/eval mode restored after (even on error)."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class HFGenerateEngine:
    """Batched ``model.generate`` (KV cache on) over left-padded prompts; works with peft-wrapped models."""

    def __init__(self, model: Any, tokenizer: Any, *, eos_token_id: int | Sequence[int] | None = None,
                 pad_token_id: int | None = None, skip_special_tokens: bool = True,
                 record_logprobs_mib: float = 512.0) -> None:
        self.model = model
        self.record_logprobs_mib = record_logprobs_mib
        self.tokenizer = tokenizer
        self.eos_token_id = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        self.pad_token_id = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = self.eos_token_id if isinstance(self.eos_token_id, int) else self.eos_token_id[0]
        self.skip_special_tokens = skip_special_tokens

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_stop_tokens(self, token_ids: Sequence[int]) -> None:
        """Also end a completion at any of ``token_ids`` (e.g. a chat template's end-of-turn token that is not
        the tokenizer's EOS); the current EOS ids stay."""
        current = [self.eos_token_id] if isinstance(self.eos_token_id, int) else list(self.eos_token_id)
        ids = list(dict.fromkeys(current + [int(t) for t in token_ids if t is not None]))
        self.eos_token_id = ids[0] if len(ids) == 1 else ids

    def prompt_batch(self, prompts: list[list[int]], num_generations: int) -> tuple[Tensor, Tensor]:
        """Left-padded ``(ids, mask)`` on the model's device, each prompt repeated ``num_generations`` times."""
        prompt_ids, prompt_mask = left_pad(prompts, self.pad_token_id, self.device)
        if num_generations > 1:
            prompt_ids = prompt_ids.repeat_interleave(num_generations, 0)
            prompt_mask = prompt_mask.repeat_interleave(num_generations, 0)
        return prompt_ids, prompt_mask

    def generate(self, prompts: list[list[int]], *, num_generations: int = 1, max_new_tokens: int = 64,
                 temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, do_sample: bool = True,
                 seed: int | None = None) -> Rollout:
        """Generate ``num_generations`` completions per prompt (consecutive rows)."""
        device = self.device
        prompt_ids, prompt_mask = self.prompt_batch(prompts, num_generations)
        sampling: dict[str, Any] = {"do_sample": do_sample}
        if do_sample:
            sampling.update(temperature=temperature, top_p=top_p, top_k=top_k)
        eos = self.eos_token_id if isinstance(self.eos_token_id, int) else list(self.eos_token_id)
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", None)
        record = do_sample and bool(vocab) and (  # greedy decoding (validation) needs no behaviour log-probs
            prompt_ids.shape[0] * max_new_tokens * vocab * 4 <= self.record_logprobs_mib * 2**20)
        start = time.perf_counter()
        with eval_mode(self.model), torch.no_grad(), _seeded(seed, device):
            out = self.model.generate(
                input_ids=prompt_ids, attention_mask=prompt_mask, max_new_tokens=max_new_tokens,
                eos_token_id=eos, pad_token_id=self.pad_token_id, use_cache=True,
                return_dict_in_generate=True, output_logits=record, **sampling)
        sequences = out.sequences if hasattr(out, "sequences") else out
        completion_ids = sequences[:, prompt_ids.shape[1]:]
        mask, truncated = completion_mask_from_ids(completion_ids, self.eos_token_id)
        lengths = mask.sum(1)
        logprobs = None
        if record and getattr(out, "logits", None) is not None:  # unprocessed logits, one [N,V] per step
            logprobs = torch.stack([sampled_logprobs(step, completion_ids[:, t], temperature)
                                    for t, step in enumerate(out.logits)], 1) * mask
        rows = [row[:n] for row, n in zip(completion_ids.tolist(), lengths.tolist())]  # the only host transfer
        seconds = time.perf_counter() - start
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=self.skip_special_tokens)
        total = sum(len(r) for r in rows)
        return Rollout(prompt_ids, prompt_mask, completion_ids, mask, lengths, texts, truncated, seconds,
                       total / seconds if seconds > 0 else 0.0, logprobs)


def _accepts_logits_to_keep(model: Any) -> bool:
    """Whether the causal LM under any Fabric/DDP/peft wrappers takes ``logits_to_keep`` (the wrappers pass it on).

    peft is unwrapped with ``get_base_model()`` (the causal LM itself): its ``base_model`` attribute resolves,
    through peft's and transformers' attribute forwarding, to the *decoder* (``LlamaForCausalLM.base_model``), whose
    forward has no ``logits_to_keep`` -- which silently ran the LM head over every prompt position."""
    inner = model
    for _ in range(6):
        if "logits_to_keep" in inspect.signature(inner.forward).parameters:
            return True
        if callable(getattr(inner, "get_base_model", None)):  # peft (also reached through a Fabric wrapper)
            nxt = inner.get_base_model()
        else:
            children = (getattr(inner, a, None) for a in ("module", "_forward_module", "model"))
            nxt = next((c for c in children if isinstance(c, torch.nn.Module) and c is not inner), None)
        if nxt is None or nxt is inner:
            return False
        inner = nxt
    return False


def selective_log_softmax(logits: Tensor, index: Tensor) -> Tensor:
    """``log_softmax(logits)[..., index]`` row by row, without an fp32 ``[N,T,V]`` log-softmax copy."""
    picked = torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1).float()
    lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])
    return picked - lse


def sequence_logprobs(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                      completion_mask: Tensor, *, temperature: float = 1.0, batch_size: int | None = None,
                      with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
    """Per-token log-probs ``[N,C]`` (fp32) of ``completion_ids`` under ``model``; 0 where ``completion_mask`` is 0.

    One forward over ``prompt + completion`` with the concatenated attention mask and position ids
    ``cumsum(mask) - 1`` (correct for left-padded prompts). Logits are divided by ``temperature`` (as TRL does) so
    the log-probs match the sampling distribution. ``completion_mask`` is the *attention* mask of the completion
    part (for tool rollouts: 1 on observation tokens too; apply the loss mask afterwards). Gradients flow unless
    the caller wraps this in ``torch.no_grad()``; the model's train/eval mode is left as is. ``with_entropy``: also
    the per-token entropy ``[N,C]`` (no gradient) of the same (temperature-scaled) distributions: ``(logps, entropy)``.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    N, C = completion_ids.shape
    if C == 0:
        empty = torch.zeros(N, 0, device=completion_ids.device)
        return (empty, empty.clone()) if with_entropy else empty
    step = batch_size or N
    keep = {"logits_to_keep": C + 1} if _accepts_logits_to_keep(model) else {}
    chunks, entropies = [], []
    for s in range(0, N, step):
        ids = torch.cat([prompt_ids[s:s + step], completion_ids[s:s + step]], 1)
        mask = torch.cat([prompt_mask[s:s + step], completion_mask[s:s + step]], 1)
        position_ids = (mask.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, use_cache=False,
                       **keep).logits
        logits = logits[:, -C - 1:-1, :]  # position t predicts token t+1
        if temperature != 1.0:
            logits = logits / temperature
        chunks.append(selective_log_softmax(logits, completion_ids[s:s + step]))
        if with_entropy:
            entropies.append(token_entropy(logits.detach()))
    logps = torch.cat(chunks, 0) * completion_mask.to(torch.float32)
    if with_entropy:
        return logps, torch.cat(entropies, 0) * completion_mask.to(torch.float32)
    return logps


def token_entropy(logits: Tensor) -> Tensor:
    """``H = logsumexp(z) - sum softmax(z) z`` per position (fp32), row by row (no fp32 ``[N,T,V]`` copy)."""
    out = []
    for row in logits:
        z = row.float()
        out.append(torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1))
    return torch.stack(out)


def _find_peft(model: Any) -> Any:
    """The PeftModel inside Fabric/DDP wrappers, or None."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return None
    inner, seen = model, 0
    while inner is not None and seen < 4:
        if isinstance(inner, PeftModel):
            return inner
        inner, seen = getattr(inner, "module", None), seen + 1
    return None


def reference_logprobs(model: Any, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                       completion_mask: Tensor, *, ref_model: Any = None, temperature: float = 1.0,
                       batch_size: int | None = None) -> Tensor:
    """Log-probs under the reference policy, without gradients.

    ``ref_model`` if given; else, for a peft model, the same model with its adapters disabled (no second copy);
    otherwise a ``ValueError``. The forward goes through ``model`` itself (wrappers included).
    """
    args = (prompt_ids, prompt_mask, completion_ids, completion_mask)
    with torch.no_grad():
        if ref_model is not None:
            return sequence_logprobs(ref_model, *args, temperature=temperature, batch_size=batch_size)
        peft_model = _find_peft(model)
        if peft_model is None:
            raise ValueError("reference_logprobs needs a peft model (adapters are disabled for the reference) "
                             "or an explicit ref_model")
        with peft_model.disable_adapter():
            return sequence_logprobs(model, *args, temperature=temperature, batch_size=batch_size)
