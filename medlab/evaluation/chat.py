"""Talk to a causal LM the way its run trained it: the run's chat template and system prompt, optional tools, the
template's end-of-turn token as a stop, sampling settings from the config, streamed or batched answers.

    chat = Chat(model, tokenizer, template="chatml", system_prompt="You are a careful doctor.")
    answer = chat.reply([{"role": "user", "content": "What lowers a fever?"}], on_text=print_piece)
    answers = chat.reply_batch([[{"role": "user", "content": q}] for q in questions])
    calls, errors = parse_tool_calls(answer)          # function-calling runs: the parsed <tool_call> blocks

Generation is transformers ``generate`` (greedy when ``temperature`` is 0, else sampling with ``temperature``,
``top_p``, ``top_k``; a fixed ``seed`` per call), left-padded in batches; ``on_text`` receives the decoded text
piece by piece as tokens are produced (transformers' ``TextStreamer`` word-boundary buffering).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medlab.data.templates import get_template
from medlab.data.tokenize import stop_token_ids
from medlab.rl.tool_routing import visible_text
from medlab.rl.tools import parse_tool_calls  # noqa: F401  (re-exported for the command)


@dataclass
class Sampling:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0

    def problems(self, prefix: str = "infer") -> list[str]:
        out = []
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            out.append(f"{prefix}.max_new_tokens={self.max_new_tokens!r} must be an integer >= 1")
        if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
            out.append(f"{prefix}.temperature={self.temperature!r} must be >= 0 (0 = greedy)")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            out.append(f"{prefix}.top_p={self.top_p!r} must be in (0, 1]")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            out.append(f"{prefix}.top_k={self.top_k!r} must be an integer >= 0 (0 = off)")
        return out

    def generate_kwargs(self) -> dict[str, Any]:
        if self.temperature == 0:
            return {"do_sample": False}
        return {"do_sample": True, "temperature": float(self.temperature), "top_p": float(self.top_p),
                "top_k": int(self.top_k) or None}


class _Streamer:
    """transformers' streamer protocol (``put`` / ``end``): decoded text to ``on_text`` as it grows, holding back
    an incomplete multi-byte / word piece like ``TextStreamer`` does."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None], skip_prompt: bool = True):
        self.tokenizer, self.on_text, self.skip_prompt = tokenizer, on_text, skip_prompt
        self.tokens: list[int] = []
        self.printed = 0
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if self.skip_prompt and not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens += value.reshape(-1).tolist()
        text = visible_text(self.tokenizer, self.tokens)
        if text.endswith("\ufffd"):  # an unfinished UTF-8 character: wait for the next token
            return
        self.on_text(text[self.printed:])
        self.printed = len(text)

    def end(self) -> None:
        text = visible_text(self.tokenizer, self.tokens)
        if len(text) > self.printed:
            self.on_text(text[self.printed:])
        self.printed = len(text)


class Chat:
    """A model + tokenizer + the run's chat format (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, *, template: str = "chatml", system_prompt: str | None = None,
                 tools: Any = None, sampling: Sampling | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.chat = get_template(template, tokenizer)
        self.system_prompt, self.tools = system_prompt, tools
        self.sampling = sampling or Sampling()
        self.stop = list(stop_token_ids(self.chat, tokenizer)) or [tokenizer.eos_token_id]
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def prompt(self, messages: Sequence[dict]) -> str:
        """The rendered prompt: the system prompt (unless the messages bring one), the messages, the tools, the
        generation prompt."""
        messages = [dict(m) for m in messages]
        if self.system_prompt and not (messages and messages[0]["role"] == "system"):
            messages = [{"role": "system", "content": self.system_prompt}] + messages
        for m in messages:
            m.setdefault("tool_calls", [])
        return self.chat.render(messages, self.tools, add_generation_prompt=True)

    def _ids(self, messages: Sequence[dict]) -> list[int]:
        return self.tokenizer(self.prompt(messages), add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def reply_batch(self, conversations: Sequence[Sequence[dict]], on_text: Callable[[str], None] | None = None
                    ) -> list[str]:
        """One answer per conversation (one ``generate`` call, left-padded); ``on_text`` streams a batch of one."""
        prompts = [self._ids(c) for c in conversations]
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, width - len(p):] = torch.tensor(p)
            mask[r, width - len(p):] = 1
        torch.manual_seed(self.sampling.seed)
        streamer = _Streamer(self.tokenizer, on_text) if on_text is not None and len(prompts) == 1 else None
        was_training = self.model.training
        self.model.eval()
        try:
            out = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                      max_new_tokens=self.sampling.max_new_tokens, eos_token_id=self.stop,
                                      pad_token_id=self.pad, streamer=streamer, **self.sampling.generate_kwargs())
        finally:
            self.model.train(was_training)
        return [visible_text(self.tokenizer, _until_stop(row[width:].tolist(), self.stop)).strip() for row in out]

    def reply(self, messages: Sequence[dict], on_text: Callable[[str], None] | None = None) -> str:
        return self.reply_batch([messages], on_text)[0]


def _until_stop(tokens: list[int], stop: Sequence[int]) -> list[int]:
    for i, t in enumerate(tokens):
        if t in stop:
            return tokens[:i]
    return tokens


def describe_calls(text: str) -> list[str]:
    """``name({json arguments})`` per parsed ``<tool_call>`` block of ``text``, then ``malformed: ...`` lines."""
    calls, errors = parse_tool_calls(text)
    import json

    return ([f"{c['name']}({json.dumps(c['arguments'], ensure_ascii=False)})" for c in calls]
            + [f"malformed: {e}" for e in errors])
