"""Preference rows -> token ids -> batches (docs/INTERFACES.md, "Preference batches").

- Decoder LLMs (``encoding: chat``): the prompt is rendered **once** with the chat template (generation prompt
  included) and tokenized without special tokens; each completion is the text the template adds after that
  prompt, cut at its last end-of-turn string (EOS appended when the template writes none), tokenized the same
  way. So chosen and rejected carry the identical prompt tokens, there is no second BOS or system prompt before a
  completion, and every completion ends with the end-of-turn/EOS token.
- Encoders (``encoding: pair``, e.g. MiniLM): (prompt text, completion text) as the tokenizer's text pair
  (``[CLS] prompt [SEP] completion [SEP]`` with token types).
- ``pair_sides`` (encoders, for a reward model with ``objective.prior=cosine``): each batch also carries the prompt
  and the completion encoded alone (``query.*`` / ``doc.*`` keys, ``[CLS] text [SEP]``), as a bi-encoder encodes
  them, so the reward can start as their cosine similarity (``medlab.retrieval.prior``).
- Length (`fit`): the prompt is cut from the left first (to ``max_prompt_length``, then as far as needed down to
  ``min_prompt_length`` tokens), then completions from the right keeping their last (end) token; a row where a
  completion keeps no content token is dropped (``dropped/empty_completion``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from medlab.data.errors import DataError
from medlab.data.templates import ChatTemplate
from medlab.data.tokenize import IGNORE_INDEX, end_of_turn_id, require_eos_id

ENCODINGS = ("auto", "chat", "pair")
PADDING_SIDES = ("right", "left")


def resolve_encoding(encoding: str, tokenizer: Any) -> str:
    """``auto``: ``pair`` for a tokenizer with a separator token and no chat template (BERT-family encoders),
    else ``chat``."""
    if encoding != "auto":
        return encoding
    tok = getattr(tokenizer, "tokenizer", tokenizer)
    return "pair" if tok.sep_token is not None and not getattr(tok, "chat_template", None) else "chat"


@dataclass
class PreferenceEncoder:
    """How one data source turns messages into token ids (see the module docstring)."""

    tokenizer: Any
    template: ChatTemplate | None  # None: text pairs
    max_length: int
    max_prompt_length: int | None = None
    min_prompt_length: int = 8
    pair_sides: bool = False

    def __post_init__(self) -> None:
        self.end_id = end_of_turn_id(self.template, self.tokenizer) if self.template else None
        self.eos_id = require_eos_id(self.tokenizer) if self.template else None
        self.layout = None if self.template else pair_layout(self.tokenizer)
        self.specials = 0 if self.template else sum(len(part) for part in self.layout[0])
        if self.pair_sides and self.template is not None:
            raise DataError("data.pair_sides=true encodes the prompt and the completion alone, as a bi-encoder does: "
                            "it needs an encoder tokenizer (encoding=pair, e.g. model=minilm), not a chat template")

    @property
    def pair(self) -> bool:
        return self.template is None

    # ------------------------------------------------------------------------------------ tokens
    def prompt(self, messages: Sequence[dict]) -> tuple[str, list[int]]:
        """(rendered prompt text, its token ids)."""
        if self.pair:
            text = "\n".join(m["content"] for m in messages if m["content"])
        else:
            text = self.template.render(messages, add_generation_prompt=True)
        return text, self._ids(text)

    def completion(self, prompt_messages: Sequence[dict], prompt_text: str, messages: Sequence[dict]) -> list[int]:
        """The completion's token ids (ending with the end-of-turn/EOS token for chat templates)."""
        if self.pair:
            return self._ids("\n".join(m["content"] for m in messages if m["content"]))
        full = self.template.render([*prompt_messages, *messages])
        if not full.startswith(prompt_text):
            raise DataError(f"chat template {self.template.name!r} is not prefix-stable: the prompt rendered with the "
                            "generation prompt is not a prefix of the prompt + completion; use another template")
        turn = full[len(prompt_text):]
        cut = turn.rfind(self.template.end_of_turn) if self.template.end_of_turn else -1
        if cut >= 0:
            ids = self._ids(turn[: cut + len(self.template.end_of_turn)])
            return ids if ids and ids[-1] == self.end_id else ids + [self.end_id]
        return self._ids(turn.rstrip()) + [self.eos_id]

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------------------------ length
    def fit(self, prompt: list[int], completions: Sequence[list[int]]) -> tuple[list[int], list[list[int]], str | None]:
        """(prompt, completions, why dropped or None): prompt cut from the left first, then completions from the
        right keeping their end token (`truncate`)."""
        return truncate(prompt, completions, self.max_length - self.specials, keep_end=not self.pair,
                        max_prompt_length=self.max_prompt_length, min_prompt_length=self.min_prompt_length)

    def sequence(self, prompt: list[int], completion: list[int]) -> tuple[list[int], list[int], list[int] | None]:
        """(input_ids, labels, token_type_ids or None): labels = the completion tokens, -100 elsewhere."""
        if not self.pair:
            return prompt + completion, [IGNORE_INDEX] * len(prompt) + completion, None
        (pre, mid, post), (t_pre, t_a, t_mid, t_b, t_post) = self.layout
        ids = pre + prompt + mid + completion + post
        types = [t_pre] * len(pre) + [t_a] * len(prompt) + [t_mid] * len(mid) + [t_b] * len(completion) + \
            [t_post] * len(post)
        head = len(pre) + len(prompt) + len(mid)  # the first completion token; labels: completion + [SEP]
        labels = [IGNORE_INDEX] * head + ids[head:]
        return ids, labels, types

    def alone(self, ids: list[int]) -> list[int]:
        """One text's ids encoded alone with the tokenizer's single-sequence specials (``[CLS] text [SEP]``),
        cut from the right to ``max_length``."""
        if not hasattr(self, "_single"):
            self._single = single_layout(self.tokenizer)
        before, after = self._single
        return before + list(ids[: max(0, self.max_length - len(before) - len(after))]) + after


def single_layout(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after one text (``[CLS]`` / ``[SEP]`` for BERT)."""
    text = tokenizer("medlab", add_special_tokens=False)["input_ids"]
    full = tokenizer("medlab")["input_ids"]
    for i in range(len(full) - len(text) + 1):
        if full[i:i + len(text)] == text:
            return list(full[:i]), list(full[i + len(text):])
    raise DataError(f"cannot find where {type(tokenizer).__name__} puts its special tokens around one text")


def pair_layout(tokenizer: Any) -> tuple[tuple[list[int], list[int], list[int]], tuple[int, ...]]:
    """Where the tokenizer puts its special tokens around a text pair: ``((before A, between, after B), token types
    of (before, A, between, B, after))``, read from its post-processor (``[CLS] A [SEP] B [SEP]`` for BERT)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.post_processor is None:
        raise DataError(f"encoding=pair needs a fast tokenizer with a pair template; {type(tokenizer).__name__} has "
                        "none (use encoding=chat)")
    out = backend.encode("a", "b", add_special_tokens=True)
    real = [i for i, m in enumerate(out.attention_mask) if m]  # a tokenizer may pad every encoding (MiniLM: 128)
    seq, ids, types = ([v[i] for i in real] for v in (out.sequence_ids, out.ids, out.type_ids))
    a_at = [i for i, s in enumerate(seq) if s == 0]
    b_at = [i for i, s in enumerate(seq) if s == 1]
    parts = (ids[: a_at[0]], ids[a_at[-1] + 1: b_at[0]], ids[b_at[-1] + 1:])

    def type_of(lo: int, hi: int, default: int) -> int:
        return types[lo] if hi > lo else default

    t_a, t_b = types[a_at[0]], types[b_at[0]]
    return parts, (type_of(0, a_at[0], t_a), t_a, type_of(a_at[-1] + 1, b_at[0], t_a), t_b,
                   type_of(b_at[-1] + 1, len(ids), t_b))


def truncate(prompt: list[int], completions: Sequence[list[int]], max_length: int, *, keep_end: bool = True,
             max_prompt_length: int | None = None, min_prompt_length: int = 8
             ) -> tuple[list[int], list[list[int]], str | None]:
    """Fit ``prompt + completion`` (each completion) into ``max_length`` tokens.

    1. the prompt keeps its last ``max_prompt_length`` tokens (when set);
    2. if the longest completion still does not fit, the prompt is cut from the left, down to
       ``min_prompt_length`` tokens (or its own length);
    3. completions longer than what is left are cut from the right, keeping their last token when ``keep_end``
       (the end-of-turn/EOS the model must learn to emit).

    Returns ``(prompt, completions, None)``, or ``(..., "empty_completion")`` when a completion would keep no
    content token.
    """
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        prompt = prompt[len(prompt) - max_prompt_length:]
    longest = max(len(c) for c in completions)
    if len(prompt) + longest > max_length:
        keep = max(max_length - longest, min(len(prompt), min_prompt_length), 0)
        prompt = prompt[len(prompt) - keep:] if keep else []
    budget = max_length - len(prompt)
    out = []
    for c in completions:
        if len(c) > budget:
            c = (c[: budget - 1] + c[-1:]) if keep_end and budget >= 1 else c[:max(budget, 0)]
        out.append(c)
    content = [len(c) - (1 if keep_end else 0) for c in out]
    return prompt, out, "empty_completion" if min(content) < 1 else None


# ---------------------------------------------------------------------------------------------- batches


def pad(rows: Sequence[list[int]], value: int, width: int, side: str) -> torch.Tensor:
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        if r:
            if side == "left":
                out[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            else:
                out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out


def batch_of(encoder: PreferenceEncoder, pairs: Sequence[tuple[list[int], list[int]]], pad_id: int, side: str,
             prefix: str = "", sides: Sequence[tuple[list[int], list[int]]] | None = None) -> dict[str, torch.Tensor]:
    """(prompt, completion) token lists -> ``{prefix}input_ids``, ``attention_mask``, ``labels`` [N, T] (plus
    ``token_type_ids`` for text pairs), padded on ``side``. With ``encoder.pair_sides`` also ``query.*`` / ``doc.*``:
    each text alone, from ``sides`` (the untruncated (prompt, completion) ids; default ``pairs``)."""
    seqs = [encoder.sequence(p, c) for p, c in pairs]
    width = max(1, max(len(s[0]) for s in seqs))
    out = {f"{prefix}input_ids": pad([s[0] for s in seqs], pad_id, width, side),
           f"{prefix}attention_mask": pad([[1] * len(s[0]) for s in seqs], 0, width, side),
           f"{prefix}labels": pad([s[1] for s in seqs], IGNORE_INDEX, width, side)}
    if encoder.pair:
        out[f"{prefix}token_type_ids"] = pad([s[2] for s in seqs], 0, width, side)
    if encoder.pair_sides:  # the prompt and the completion alone: query.* / doc.* (objective.prior=cosine)
        sides = pairs if sides is None else sides
        for name, texts in (("query", [p for p, _ in sides]), ("doc", [c for _, c in sides])):
            rows = [encoder.alone(t) for t in texts]
            w = max(1, max(len(r) for r in rows))
            out[f"{prefix}{name}.input_ids"] = pad(rows, pad_id, w, "right")
            out[f"{prefix}{name}.attention_mask"] = pad([[1] * len(r) for r in rows], 0, w, "right")
    return out


def collate_paired(encoder: PreferenceEncoder, examples: Sequence[dict], pad_id: int, side: str = "right") -> dict:
    """Paired batch: rows 0..B-1 = prompt + chosen, B..2B-1 = prompt + rejected (same order); ``margin`` [B]."""
    pairs = [(e["prompt_ids"], e["chosen_ids"]) for e in examples] + \
            [(e["prompt_ids"], e["rejected_ids"]) for e in examples]
    sides = None
    if encoder.pair_sides:
        sides = [(e.get("prompt_side", e["prompt_ids"]), e.get(f"{k}_side", e[f"{k}_ids"]))
                 for k in ("chosen", "rejected") for e in examples]
    batch = batch_of(encoder, pairs, pad_id, side, sides=sides)
    batch["margin"] = torch.tensor([float(e.get("margin") or 0.0) for e in examples], dtype=torch.float32)
    return _extras(batch, examples, "attention_mask")


def collate_unpaired(encoder: PreferenceEncoder, examples: Sequence[dict], pad_id: int, side: str = "right") -> dict:
    """Unpaired (KTO) batch: prompt i + completion i, ``label`` [B] (True = desirable), and the ``kl_*`` rows:
    prompt i + completion (i+1) mod B (mismatched pairs for the reference KL estimate), fitted to max_length."""
    batch = batch_of(encoder, [(e["prompt_ids"], e["completion_ids"]) for e in examples], pad_id, side)
    n = len(examples)
    kl = []
    for i, e in enumerate(examples):
        prompt, (completion,), _ = encoder.fit(e["prompt_ids"], [examples[(i + 1) % n]["completion_ids"]])
        kl.append((prompt, completion))
    batch.update(batch_of(encoder, kl, pad_id, side, prefix="kl_"))
    batch["label"] = torch.tensor([bool(e["label"]) for e in examples], dtype=torch.bool)
    return _extras(batch, examples, "attention_mask")


def _extras(batch: dict, examples: Sequence[dict], mask: str) -> dict:
    batch["ids"] = [e["id"] for e in examples]
    batch["num_pairs"] = len(examples)
    batch["num_tokens"] = int(batch[mask].sum()) + int(batch.get("kl_attention_mask", torch.zeros(())).sum())
    batch["num_completion_tokens"] = int((batch["labels"] != IGNORE_INDEX).sum())
    return batch
