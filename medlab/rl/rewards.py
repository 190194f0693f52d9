"""Reward functions for GRPO and their weighted, failure-tolerant combination.

Every reward has the TRL signature ``fn(prompts, completions, **row_fields) -> list[float | None]``: one value
per sample, row fields are lists with one entry per sample (``answer=[...]``), unknown fields are ignored (so
TRL's extra ``trainer_state``/``log_metric`` kwargs pass through). ``None`` means "cannot score this sample"
and is masked by :func:`combine_rewards`. A completion may be a string or a chat message list (its last
message's ``content`` is scored).
"""

from __future__ import annotations

import functools
import importlib
import json
import logging
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from medlab.contracts import UsesRuns
from medlab.rl.reward_model import RewardModelReward
from medlab.rl.timeout import CallTimeout, call_with_timeout

RewardFn = Callable[..., list]
log = logging.getLogger(__name__)
DEFAULT_TIMEOUT_S = 300.0  # one reward call (a batch); a local LLM judge on a CPU needs minutes, a hang is forever

_CJK = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)
_ANSWER_IS = re.compile(r"(?:\banswer\s*(?:is|:|：)|答案\s*(?:是|为|:|：))\s*([^\n]+)", re.IGNORECASE)
_LEAD_LETTER = re.compile(r"\s*(?:[Oo]ption\s+)?\(?([A-E])\)?(?![A-Za-z])")
_LETTER = re.compile(r"(?<![A-Za-z])\(?([B-E]|A(?!\s+[a-z]))\)?(?![A-Za-z])")
_YNM = {"yes": "yes", "no": "no", "maybe": "maybe", "是": "yes", "否": "no", "不是": "no", "可能": "maybe"}
_YNM_WORD = re.compile(r"\b(?:yes|no|maybe)\b|不是|否|可能|是")
_TOOL_CALL = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def _text(completion: Any) -> str:
    """A completion as text: a string, or the ``content`` of the last message of a chat message list."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        return str(completion[-1].get("content") or "")
    raise TypeError(f"completion must be a string or a list of chat messages, got {type(completion).__name__}")


def normalize_tokens(text: str) -> list[str]:
    """SQuAD normalization, CJK-aware: NFKC, lowercase, punctuation -> space, drop English articles, then
    tokens = each CJK character alone + every whitespace-separated run of other characters."""
    text = unicodedata.normalize("NFKC", str(text)).lower()
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return [t for t in _TOKEN.findall(text) if t not in ("a", "an", "the")]


def normalize_answer(text: str) -> str:
    """``" ".join(normalize_tokens(text))`` (so "The  Aspirin." == "aspirin" and "阿司匹林。" == "阿 司 匹 林")."""
    return " ".join(normalize_tokens(text))


def _span(completion: Any) -> tuple[str, bool]:
    """(answer span, whether it was marked explicitly by a tag or an "answer is" phrase)."""
    text = _text(completion)
    tags = _ANSWER_TAG.findall(text)
    if tags:
        return tags[-1].strip(), True
    said = _ANSWER_IS.findall(text)
    return (said[-1].strip(), True) if said else (text.strip(), False)


def extract_answer(completion: Any) -> str:
    """The answer span: the last ``<answer>...</answer>`` content, else the text after the last "answer is" /
    "Answer:" / "答案是" (to the end of that line), else the whole completion (stripped)."""
    return _span(completion)[0]


def _golds(value: Any) -> list[str]:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    return [str(v) for v in value] if isinstance(value, list | tuple) else [str(value)]


def _match(completion: Any, gold: str) -> bool:
    """Compare by the gold's kind. Letter gold ("C", "(C)", "C."): the letter an explicit span starts with
    ("B because...", "(B)", "Option B"), else the last standalone capital A-E of the span ("A" before a
    lowercase word is taken for an article, not an option). yes/no/maybe gold (also 是/否/不是/可能): the span's first such word if explicit, else the last.
    Any other gold: normalized span == normalized gold."""
    span, explicit = _span(completion)
    pick = 0 if explicit else -1
    letter = re.fullmatch(r"\(?([A-Ea-e])[).:]?", gold.strip())  # before normalization drops "a" as an article
    if letter:
        lead = _LEAD_LETTER.match(span) if explicit else None
        letters = [lead.group(1)] if lead else _LETTER.findall(span)
        return bool(letters) and letters[-1] == letter.group(1).upper()
    g = normalize_answer(gold)
    if g.replace(" ", "") in _YNM:
        words = _YNM_WORD.findall(unicodedata.normalize("NFKC", span).lower())
        return bool(words) and _YNM[words[pick]] == _YNM[g.replace(" ", "")]
    return normalize_answer(span) == g


def exact_match(prompts: list, completions: list, answer: list | None = None, **_: Any) -> list[float | None]:
    """1.0 if the extracted answer equals a gold ``answer`` (a string or a list of accepted strings), else 0.0;
    None when the sample has no gold. Matching: see :func:`extract_answer` and :func:`_match`."""
    answer = answer if answer is not None else [None] * len(completions)
    out: list[float | None] = []
    for c, gold in zip(completions, answer, strict=True):
        golds = _golds(gold)
        out.append(float(any(_match(c, g) for g in golds)) if golds else None)
    return out


def f1_score(prediction: str, gold: str) -> float:
    """SQuAD token F1: P = |common| / |pred|, R = |common| / |gold|, F1 = 2PR / (P + R) over multiset tokens of
    :func:`normalize_tokens` (CJK characters are single tokens); 1.0 if both are empty, 0.0 if one is."""
    p, g = normalize_tokens(prediction), normalize_tokens(gold)
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def token_f1(prompts: list, completions: list, answer: list | None = None, **_: Any) -> list[float | None]:
    """max over golds of :func:`f1_score` (extracted answer span, gold); None when the sample has no gold."""
    answer = answer if answer is not None else [None] * len(completions)
    return [max((f1_score(extract_answer(c), g) for g in _golds(gold)), default=None)
            for c, gold in zip(completions, answer, strict=True)]


def _answer_ok(text: str) -> bool:
    """Exactly one <answer>...</answer> with non-blank content, and any <think> closed before it."""
    if text.count("<answer>") != 1 or text.count("</answer>") != 1:
        return False
    m = _ANSWER_TAG.search(text)
    if m is None or not m.group(1).strip():
        return False
    head = text[: m.start()]
    return head.count("<think>") == head.count("</think>") <= 1 and "<think>" not in text[m.start():]


def _tool_call_ok(text: str) -> bool:
    """At least one <tool_call> block, tags balanced, each a JSON object {"name": str, "arguments": object}."""
    blocks = _TOOL_CALL.findall(text)
    if not blocks or text.count("<tool_call>") != len(blocks) or text.count("</tool_call>") != len(blocks):
        return False
    for block in blocks:
        try:
            call = json.loads(block)
        except json.JSONDecodeError:
            return False
        if not (isinstance(call, dict) and isinstance(call.get("name"), str) and isinstance(call.get("arguments"), dict)):
            return False
    return True


def format_reward(prompts: list, completions: list, *, pattern: str | None = None, kind: str = "any",
                  **_: Any) -> list[float]:
    """1.0 if the completion is well formed, else 0.0. With ``pattern``: ``re.fullmatch(pattern, text.strip(),
    re.DOTALL)``. Otherwise ``kind`` = "answer" (one non-empty <answer> tag, <think> closed before it),
    "tool_call" (every <tool_call> block is {"name": str, "arguments": {...}} JSON) or "any" (either)."""
    if kind not in ("any", "answer", "tool_call"):
        raise ValueError(f"kind must be 'any', 'answer' or 'tool_call', got {kind!r}")
    out = []
    for c in completions:
        text = _text(c)
        if pattern is not None:
            ok = re.fullmatch(pattern, text.strip(), re.DOTALL) is not None
        else:
            ok = (kind != "tool_call" and _answer_ok(text)) or (kind != "answer" and _tool_call_ok(text))
        out.append(float(ok))
    return out


format = format_reward  # the reward's public name (shadows the builtin only inside this module)


def length_penalty(prompts: list, completions: list, *, target: int = 512, per_unit: float = 1e-3,
                   max_penalty: float | None = 1.0, unit: str = "chars", tokenizer: Any = None,
                   **_: Any) -> list[float]:
    """penalty = -min(per_unit * max(0, L - target), max_penalty) <= 0, L = length in ``unit``: "chars", or
    "tokens" (``tokenizer.encode`` / a callable returning a list; default :func:`normalize_tokens`-style
    whitespace words + CJK characters)."""
    if unit not in ("chars", "tokens"):
        raise ValueError(f"unit must be 'chars' or 'tokens', got {unit!r}")
    if target < 0 or per_unit < 0:
        raise ValueError(f"target and per_unit must be >= 0, got {target} and {per_unit}")

    def length(text: str) -> int:
        if unit == "chars":
            return len(text)
        if tokenizer is None:
            return len(_TOKEN.findall(text))
        encode = getattr(tokenizer, "encode", tokenizer)
        return len(encode(text))

    out = []
    for c in completions:
        p = per_unit * max(0, length(_text(c)) - target)
        out.append(-(min(p, max_penalty) if max_penalty is not None else p))
    return out


def _passage_match(a: Any, b: Any, min_tokens: int) -> bool:
    if a == b or str(a) == str(b):
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    na, nb = normalize_answer(a), normalize_answer(b)
    short, long_ = sorted((na, nb), key=len)
    return len(short.split()) >= min_tokens and short in long_


def retrieval_relevance(prompts: list, completions: list, retrieved: list | None = None,
                        gold_passages: list | None = None, contexts: list | None = None, *, min_tokens: int = 3,
                        **_: Any) -> list[float | None]:
    """1.0 if any retrieved passage (id or text) matches any gold passage, else 0.0; None without gold.
    Match: equal ids (``a == b`` or ``str(a) == str(b)``), or, for two texts, the shorter normalized text
    (at least ``min_tokens`` tokens, so short ids never match by accident) contained in the longer."""
    gold = gold_passages if gold_passages is not None else contexts
    if retrieved is None or gold is None:
        raise ValueError("retrieval_relevance needs the `retrieved` field and `gold_passages` (or `contexts`)")
    out: list[float | None] = []
    for got, want in zip(retrieved, gold, strict=True):
        want = [want] if isinstance(want, str) else list(want or [])
        got = [got] if isinstance(got, str) else list(got or [])
        out.append(float(any(_passage_match(r, w, min_tokens) for r in got for w in want)) if want else None)
    return out


JUDGE_TEMPLATE = (
    "You are grading an answer to a medical question. Rubric: 10 = correct, complete and safe; 5 = partly "
    "correct or incomplete; 0 = wrong or unsafe.\n\nQuestion:\n{prompt}\n\nReference answer:\n{answer}\n\n"
    "Answer to grade:\n{completion}\n\nReply with one line 'Score: N' where N is an integer from 0 to 10."
)


def parse_score(reply: str, max_score: float = 10.0) -> float | None:
    """The number after the last "score" in ``reply`` (else the first number); None if absent or outside
    [0, max_score]."""
    hits = re.findall(r"score\s*[:=：]?\s*(\d+(?:\.\d+)?)", reply, re.IGNORECASE) or re.findall(r"\d+(?:\.\d+)?", reply)[:1]
    if not hits:
        return None
    value = float(hits[-1])
    return value if 0 <= value <= max_score else None


@functools.lru_cache(maxsize=2)
def _hf_judge(model_path: str, max_new_tokens: int) -> Callable[[str], str]:
    """A greedy-decoding judge from a local HF causal LM directory, loaded once per path."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path).eval()

    def judge(prompt: str) -> str:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.eos_token_id if tokenizer.pad_token_id is None
                                 else tokenizer.pad_token_id)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    return judge


def llm_judge(prompts: list, completions: list, *, judge: Callable[[str], str] | None = None,
              model_path: str | None = None, template: str = JUDGE_TEMPLATE, max_new_tokens: int = 16,
              answer: list | None = None, **_: Any) -> list[float | None]:
    """score / 10 from a judge reading ``template`` (fields {prompt}, {completion}, {answer}); None when the
    reply has no score in [0, 10]. ``judge``: a ``str -> str`` callable, or ``model_path``: a local HF model
    directory (lazily loaded once, greedy decoding)."""
    if (judge is None) == (model_path is None):
        raise ValueError("llm_judge needs exactly one of `judge` (a callable) or `model_path` (a local HF model)")
    judge = judge or _hf_judge(str(model_path), max_new_tokens)
    answer = answer if answer is not None else [None] * len(completions)
    out = []
    for p, c, a in zip(prompts, completions, answer, strict=True):
        a = "(none)" if a is None else a
        score = parse_score(judge(template.format(prompt=_text(p), completion=_text(c), answer=a)))
        out.append(None if score is None else score / 10.0)
    return out


REWARDS: dict[str, RewardFn] = {
    "exact_match": exact_match, "token_f1": token_f1, "format": format_reward, "length_penalty": length_penalty,
    "retrieval_relevance": retrieval_relevance, "llm_judge": llm_judge,
    "reward_model": RewardModelReward,  # a class: built once with the entry's options (medlab.rl.reward_model)
}


def load_reward(target: str | RewardFn, /, **kwargs: Any) -> RewardFn:
    """A reward function from a short name (:data:`REWARDS`), a dotted path ``"pkg.module.fn"`` (the
    ``_target_`` of a config entry) or a callable; extra ``kwargs`` are bound (they take precedence over
    row fields of the same name)."""
    fn: Any = target
    if isinstance(target, str) and target in REWARDS:
        fn = REWARDS[target]
    elif isinstance(target, str):
        module, _, name = target.rpartition(".")
        if not module:
            raise ValueError(f"unknown reward {target!r}: not one of {', '.join(REWARDS)} nor a dotted path")
        try:
            fn = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"cannot load reward function {target!r}: {e}") from e
    if not callable(fn):
        raise TypeError(f"reward {target!r} is not callable")
    if isinstance(fn, type):  # a reward class (state such as a loaded model): built once with the options
        return fn(**kwargs)
    return _bind(fn, kwargs) if kwargs else fn


def _bind(fn: RewardFn, options: dict[str, Any]) -> RewardFn:
    """``fn`` with config ``options`` bound. Unlike ``functools.partial``, the options win over row fields of
    the same name (a data column called ``kind`` or ``target`` must not replace a reward's setting)."""

    @functools.wraps(fn)
    def bound(prompts: list, completions: list, **fields: Any) -> list:
        return fn(prompts, completions, **{**fields, **options})

    bound.options = dict(options)  # type: ignore[attr-defined]
    return bound


def _as_value(v: Any) -> float:
    """A reward value as a float; None, NaN, inf and non-numbers become NaN (masked)."""
    if isinstance(v, torch.Tensor) and v.numel() == 1:
        v = v.item()
    if isinstance(v, bool | int | float) and math.isfinite(v):
        return float(v)
    return math.nan


def _call(name: str, fn: RewardFn, prompts: list, completions: list, fields: dict[str, Any],
          timeout_s: float | None = None) -> tuple[list[float], bool]:
    """fn's values with failures as NaN, and whether the call timed out. If the batched call raises or returns
    the wrong number of values, each sample is scored alone (list fields sliced to that sample) so one bad
    sample masks only itself. A call that runs past ``timeout_s`` masks the whole batch (no retries: a hang
    would repeat for every sample)."""
    n = len(completions)
    try:
        values = list(call_with_timeout(fn, timeout_s, prompts, completions, **fields))
        if len(values) == n:
            return [_as_value(v) for v in values], False
        log.warning("reward %r returned %d values for %d samples; scoring samples one by one", name, len(values), n)
    except CallTimeout:
        log.warning("reward %r did not return within %g s; its values for this batch are masked", name, timeout_s)
        return [math.nan] * n, True
    except Exception as e:  # noqa: BLE001 - a reward function must never crash training
        log.warning("reward %r failed on the batch (%r); scoring samples one by one", name, e)
    out = []
    for i in range(n):
        row = {k: v[i : i + 1] if isinstance(v, list) and len(v) == n else v for k, v in fields.items()}
        try:
            values = list(call_with_timeout(fn, timeout_s, prompts[i : i + 1], completions[i : i + 1], **row))
            out.append(_as_value(values[0]) if len(values) == 1 else math.nan)
        except CallTimeout:
            log.warning("reward %r did not return within %g s on one sample; the rest are masked", name, timeout_s)
            return out + [math.nan] * (n - len(out)), True
        except Exception:  # noqa: BLE001
            out.append(math.nan)
    return out, False


def combine_rewards(fns: Mapping[str, RewardFn | tuple[RewardFn, float]], prompts: list, completions: list,
                    *, timeouts: Mapping[str, float | None] | None = None, **fields: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Weighted total reward [N] (float32) with per-function masking, as TRL's "sum_then_normalize":

        total_i = sum_{k : r_ik valid} w_k * r_ik        (a masked r_ik contributes nothing)
        total_i = NaN                                    if every r_ik is masked -> advantage 0, see
                                                         :func:`medlab.rl.advantages.group_advantages`

    r_ik is masked (NaN) when function k raised for sample i, returned None/NaN/inf/a non-number, or
    returned the wrong number of values for a batch and also failed alone on that sample, or did not return
    within ``timeouts[name]`` seconds. ``fns`` maps a name to ``fn`` or ``(fn, weight)`` (weight 1.0 by
    default). Returns (total, per_fn name -> [N] with NaN where masked, stats): ``reward/<name>/mean`` (over
    valid values), ``reward/<name>/failures`` (masked count, timeouts included), ``reward/<name>/timeouts``,
    ``reward/total/mean``, ``reward/masked`` (samples with no valid value).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"prompts ({len(prompts)}) and completions ({len(completions)}) differ in length")
    if not fns:
        raise ValueError("combine_rewards needs at least one reward function")
    per_fn: dict[str, torch.Tensor] = {}
    weights: list[float] = []
    stats: dict[str, torch.Tensor] = {}
    for name, entry in fns.items():
        fn, weight = entry if isinstance(entry, tuple) else (entry, 1.0)
        raw, timed_out = _call(name, fn, list(prompts), list(completions), fields, (timeouts or {}).get(name))
        values = torch.tensor(raw, dtype=torch.float32)
        per_fn[name] = values
        weights.append(float(weight))
        stats[f"reward/{name}/mean"] = torch.nanmean(values)
        stats[f"reward/{name}/failures"] = torch.isnan(values).sum()
        stats[f"reward/{name}/timeouts"] = torch.tensor(int(timed_out))
    stacked = torch.stack(list(per_fn.values()), dim=1)  # [N, K]
    total = torch.nansum(stacked * torch.tensor(weights, dtype=torch.float32), dim=1)
    unscorable = torch.isnan(stacked).all(dim=1)
    total[unscorable] = math.nan
    stats["reward/total/mean"] = torch.nanmean(total)
    stats["reward/masked"] = unscorable.sum()
    return total, per_fn, stats


class RewardSet:
    """Named, weighted reward functions; calling it runs :func:`combine_rewards`.

    ``RewardSet.from_config({"acc": {"_target_": "exact_match", "weight": 1.0}, "fmt": {"_target_":
    "format", "weight": 0.2, "kind": "answer"}, "mine": {"_target_": "my_pkg.rewards.fn", "k": 3}})``:
    every other key of an entry is bound to the function (and wins over a row field of the same name), except
    ``weight`` and ``timeout_s`` (seconds one call may take before its values are masked; default
    ``timeout_s`` of the set, :data:`DEFAULT_TIMEOUT_S`; null = no limit).
    """

    def __init__(self, fns: Mapping[str, RewardFn | tuple[RewardFn, float]],
                 timeout_s: float | None = None, timeouts: Mapping[str, float | None] | None = None):
        if not fns:
            raise ValueError("RewardSet needs at least one reward function")
        self.fns = {k: v if isinstance(v, tuple) else (v, 1.0) for k, v in fns.items()}
        timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
        self.timeouts = {k: (timeouts or {}).get(k, timeout_s) for k in self.fns}

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], timeout_s: float | None = None) -> RewardSet:
        fns, timeouts = {}, {}
        default = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
        for name, entry in cfg.items():
            entry = {"_target_": entry} if isinstance(entry, str) else dict(entry)
            if "_target_" not in entry:
                raise ValueError(f"reward {name!r} needs a `_target_` (a name or a dotted path)")
            weight = float(entry.pop("weight", 1.0))
            timeouts[name] = entry.pop("timeout_s", default)
            fns[name] = (load_reward(entry.pop("_target_"), **entry), weight)
        return cls(fns, timeout_s=default, timeouts=timeouts)

    def __call__(self, prompts: list, completions: list, **fields: Any):
        return combine_rewards(self.fns, prompts, completions, timeouts=self.timeouts, **fields)

    def bind_run_loader(self, load_run: Any) -> None:
        """Hand ``load_run`` to the rewards that load trained runs (``medlab.contracts.UsesRuns``: reward_model)."""
        for fn, _ in self.fns.values():
            if isinstance(fn, UsesRuns):
                fn.bind_run_loader(load_run)
