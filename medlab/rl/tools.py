"""Multi-turn agentic rollouts: the policy calls tools, observations are fed back, only policy tokens train.

Token-in, token-out: a rollout's sequence is built by *appending token ids* (the prompt, each generated turn
exactly as sampled, each observation rendered with the tokenizer's chat template), never by re-tokenizing
decoded text, so the log-probs computed for training are those of the tokens the policy produced.
``loss_mask`` is 1 on generated tokens (including each turn's EOS) and 0 on prompt and observation tokens.
``logprobs`` keeps, per generated token, the engine's behaviour log-prob (``Rollout.logprobs``: conditioned on the
prompt, the earlier turns and the observations, exactly as a forward over the whole sequence conditions it), 0 on
prompt and observation tokens -- so tool rollouts need no old-log-prob recompute either (None when the engine
gives none).

Tool calls use the Qwen/Hermes format ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from medlab.rl.generation import GenerationEngine, left_pad
from medlab.rl.timeout import CallTimeout, call_with_timeout

log = logging.getLogger(__name__)
DEFAULT_TOOL_TIMEOUT_S = 60.0  # a plain callable (not a Tool) gets this limit


@dataclass
class Tool:
    """A named callable ``fn(arguments) -> str``; ``description``/``parameters`` feed the chat template."""

    name: str
    fn: Callable[[dict], str]
    description: str = ""
    parameters: dict | None = None
    timeout_s: float | None = 60.0  # a call still running then becomes an error observation (None: no limit)

    def schema(self) -> dict:
        """HF tool schema (``{"type": "function", "function": {...}}``) for ``apply_chat_template(tools=...)``."""
        return {"type": "function", "function": {"name": self.name, "description": self.description,
                                                 "parameters": self.parameters or {"type": "object",
                                                                                   "properties": {}}}}


_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|$)", re.DOTALL)
_FENCE = re.compile(r"^```[A-Za-z]*\s*(.*?)\s*```$", re.DOTALL)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")


def _parse_body(body: str) -> tuple[dict | None, str | None]:
    body = body.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    try:
        obj = json.loads(_TRAILING_COMMA.sub(r"\1", body))
    except json.JSONDecodeError as e:
        return None, f"invalid JSON in tool call: {e.msg} (line {e.lineno} col {e.colno})"
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None, 'tool call must be a JSON object with a string "name"'
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None, '"arguments" is a string that is not JSON'
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None, '"arguments" must be a JSON object'
    return {"name": obj["name"], "arguments": args}, None


def parse_tool_calls(text: str) -> tuple[list[dict], list[str]]:
    """All ``<tool_call>`` blocks in ``text`` -> ``(calls, errors)``; never raises.

    Tolerates surrounding whitespace, a Markdown code fence inside the block, trailing commas, a missing
    closing tag at the end of the text, and ``arguments`` given as a JSON string.
    """
    calls, errors = [], []
    for match in _CALL.finditer(text):
        call, error = _parse_body(match.group(1))
        if call is not None:
            calls.append(call)
        else:
            errors.append(error or "malformed tool call")
    return calls, errors


def parse_tool_call(text: str) -> tuple[dict | None, str | None]:
    """The first tool call in ``text``: ``(call, None)``, ``(None, error)`` if malformed, ``(None, None)`` if none."""
    match = _CALL.search(text)
    return (None, None) if match is None else _parse_body(match.group(1))


@dataclass
class ToolRollout:
    """One multi-turn rollout: ``input_ids = prompt + turns``; ``loss_mask`` 1 exactly on generated tokens."""

    input_ids: list[int]
    loss_mask: list[int]
    prompt_length: int
    turns: list[str] = field(default_factory=list)  # generated assistant texts (special tokens kept, EOS cut)
    tool_calls: list[dict] = field(default_factory=list)  # {"turn", "name", "arguments", "result"}
    num_malformed: int = 0  # tool-call blocks that failed to parse
    num_tool_errors: int = 0  # unknown tools and tools that raised
    hit_turn_limit: bool = False  # the last allowed turn still called a tool
    is_truncated: bool = False  # a turn ran out of max_new_tokens, or max_total_tokens was reached
    logprobs: list[float] | None = None  # per input_ids token: the engine's log-prob on generated ones, else 0

    @property
    def num_turns(self) -> int:
        return len(self.turns)

    @property
    def final_text(self) -> str:
        """The final answer: the last assistant turn."""
        return self.turns[-1] if self.turns else ""


def _render(tokenizer: Any, messages: list[dict], tools: list[dict] | None, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                         add_generation_prompt=generation_prompt)


def observation_ids(tokenizer: Any, results: Sequence[str], eos_text: str) -> list[int]:
    """Tokens that follow an assistant turn ending in ``eos_text``: the tool results and the next
    assistant header, exactly as the chat template renders them (derived by diffing two renderings)."""
    base = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    before = _render(tokenizer, base, None, False)
    after = _render(tokenizer, base + [{"role": "tool", "content": r} for r in results], None, True)
    end = before.rfind(eos_text)
    cut = end + len(eos_text) if eos_text and end >= 0 else len(before)
    if not after.startswith(before[:cut]):
        raise ValueError("chat template renders earlier turns differently once a tool turn follows")
    return tokenizer.encode(after[cut:], add_special_tokens=False)


def _execute(call: dict, tools: Mapping[str, Tool | Callable[[dict], str]]) -> tuple[str, bool]:
    tool = tools.get(call["name"])
    if tool is None:
        return f"Error: unknown tool {call['name']!r}; available: {sorted(tools)}", False
    fn = tool.fn if isinstance(tool, Tool) else tool
    timeout_s = tool.timeout_s if isinstance(tool, Tool) else DEFAULT_TOOL_TIMEOUT_S
    try:
        return str(call_with_timeout(fn, timeout_s, call["arguments"])), True
    except CallTimeout:
        log.warning("tool %r did not return within %g s; the policy sees an error observation", call["name"], timeout_s)
        return f"Error: tool {call['name']!r} timed out after {timeout_s:g} s", False
    except Exception as e:  # noqa: BLE001 -- a tool failure is an observation for the policy, not a crash
        return f"Error: {type(e).__name__}: {e}", False


def run_tool_loop(policy: GenerationEngine, tokenizer: Any, messages: list[dict] | list[list[dict]],
                  tools: Mapping[str, Tool | Callable[[dict], str]], *, num_generations: int = 1,
                  max_turns: int = 4, max_total_tokens: int | None = None,
                  **generation_kwargs: Any) -> list[ToolRollout]:
    """Run ``num_generations`` multi-turn rollouts per conversation; rows ``i*G .. i*G+G-1`` belong to chat ``i``.

    Each turn generates one assistant turn for all still-active rollouts in one batched ``policy.generate``
    call (``generation_kwargs``: ``max_new_tokens``, ``temperature``, ...). A turn with ``<tool_call>`` blocks
    has every call executed (malformed/unknown/failing calls become ``Error: ...`` observations) and the
    results appended as ``tool`` turns; a turn without calls is the final answer. A rollout stops after
    ``max_turns`` assistant turns (``hit_turn_limit`` if that last turn still called a tool), when a turn hits
    ``max_new_tokens`` without EOS, or when its length reaches ``max_total_tokens`` (both ``is_truncated``).
    """
    chats = [messages] if messages and isinstance(messages[0], dict) else list(messages)
    schemas = [t.schema() for t in tools.values() if isinstance(t, Tool)] or None
    eos = policy.eos_token_id if hasattr(policy, "eos_token_id") else tokenizer.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos)
    rollouts: list[ToolRollout] = []
    for chat in chats:
        prompt = tokenizer.encode(_render(tokenizer, list(chat), schemas, True), add_special_tokens=False)
        rollouts += [ToolRollout(list(prompt), [0] * len(prompt), len(prompt), logprobs=[0.0] * len(prompt))
                     for _ in range(num_generations)]
    active = list(range(len(rollouts)))
    for turn in range(max_turns):
        if max_total_tokens is not None:
            for r in [r for r in active if len(rollouts[r].input_ids) >= max_total_tokens]:
                rollouts[r].is_truncated = True
            active = [r for r in active if len(rollouts[r].input_ids) < max_total_tokens]
        if not active:
            break
        if turn == 0:  # all prompts of a chat are identical: let the engine fan out G generations
            out = policy.generate([rollouts[r].input_ids for r in active[::num_generations]],
                                  num_generations=num_generations, **generation_kwargs)
        else:
            out = policy.generate([rollouts[r].input_ids for r in active], num_generations=1, **generation_kwargs)
        still_active = []
        logprobs = out.logprobs.tolist() if getattr(out, "logprobs", None) is not None else None
        for i, (r, completion) in enumerate(zip(active, out.completion_lists())):
            ro = rollouts[r]
            ro.input_ids += completion
            ro.loss_mask += [1] * len(completion)
            if ro.logprobs is not None:
                ro.logprobs = None if logprobs is None else ro.logprobs + logprobs[i][:len(completion)]
            ended = bool(completion) and completion[-1] in eos_ids
            body = completion[:-1] if ended else completion
            text = tokenizer.decode(body, skip_special_tokens=False)
            ro.turns.append(text)
            if not ended:
                ro.is_truncated = True
                continue
            calls, errors = parse_tool_calls(text)
            if not calls and not errors:
                continue  # final answer
            if turn == max_turns - 1:
                ro.hit_turn_limit = True
                continue
            results = []
            for call in calls:
                result, ok = _execute(call, tools)
                ro.num_tool_errors += not ok
                ro.tool_calls.append({"turn": turn, **call, "result": result})
                results.append(result)
            ro.num_malformed += len(errors)
            results += [f"Error: could not parse tool call: {e}" for e in errors]
            obs = observation_ids(tokenizer, results, tokenizer.decode([completion[-1]], skip_special_tokens=False))
            ro.input_ids += obs
            ro.loss_mask += [0] * len(obs)
            if ro.logprobs is not None:
                ro.logprobs += [0.0] * len(obs)
            still_active.append(r)
        active = still_active
    return rollouts


def collate_tool_rollouts(rollouts: Sequence[ToolRollout], pad_token_id: int,
                          device: Any = None) -> dict[str, Tensor]:
    """Pad rollouts for :func:`medlab.rl.generation.sequence_logprobs` and the loss.

    Returns ``prompt_ids``/``prompt_mask`` ``[N,P]`` (left-padded) and ``completion_ids``/``completion_mask``
    (attention: 1 on every real token, observations included) / ``loss_mask`` (1 on generated tokens) ``[N,C]``
    (right-padded), and ``logprobs`` ``[N,C]`` fp32 (the generated tokens' behaviour log-probs, 0 elsewhere) when
    every rollout has them.
    """
    prompts = [r.input_ids[:r.prompt_length] for r in rollouts]
    prompt_ids, prompt_mask = left_pad(prompts, pad_token_id, device)
    C = max((len(r.input_ids) - r.prompt_length for r in rollouts), default=0)
    completion_ids = torch.full((len(rollouts), C), pad_token_id, dtype=torch.long)
    completion_mask = torch.zeros((len(rollouts), C), dtype=torch.long)
    loss_mask = torch.zeros((len(rollouts), C), dtype=torch.long)
    with_logprobs = bool(rollouts) and all(r.logprobs is not None for r in rollouts)
    logprobs = torch.zeros((len(rollouts), C), dtype=torch.float32)
    for i, r in enumerate(rollouts):
        n = len(r.input_ids) - r.prompt_length
        completion_ids[i, :n] = torch.tensor(r.input_ids[r.prompt_length:], dtype=torch.long)
        completion_mask[i, :n] = 1
        loss_mask[i, :n] = torch.tensor(r.loss_mask[r.prompt_length:], dtype=torch.long)
        if with_logprobs:
            logprobs[i, :n] = torch.tensor(r.logprobs[r.prompt_length:], dtype=torch.float32)
    out = {"prompt_ids": prompt_ids, "prompt_mask": prompt_mask, "completion_ids": completion_ids.to(device),
           "completion_mask": completion_mask.to(device), "loss_mask": loss_mask.to(device)}
    if with_logprobs:
        out["logprobs"] = logprobs.to(device)
    return out
