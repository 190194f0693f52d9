"""Tokenize normalized rows into `input_ids` + `labels` with assistant-only loss masks.

One masking mechanism for every chat template, named or the tokenizer's own (no per-template offsets,
no `{% generation %}` markers): for assistant turn i,

    start = len(render(messages[:i], add_generation_prompt=True))   # where the answer begins
    end   = len(render(messages[:i + 1]))                          # where the turn's text ends

and the trained span runs from `start` to the end of the last end-of-turn string inside [start, end)
(so the newline a template writes after `<|im_end|>` is not trained). The full conversation is rendered
and tokenized once with offsets; a token is trained when it overlaps a span. If a span has no
end-of-turn string (a tokenizer template that never closes answers), the EOS token is inserted after it
and trained, so the model always learns to stop.

`cpt` rows are `tokens(text) + [eos]`, all trained. `sft` rows longer than `max_length` are truncated
(last token forced to EOS when it is trained, so a cut answer still ends with EOS) or dropped; rows
left with nothing to train are dropped and counted, because they would give loss 0 and NaN grad norms.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import datasets

from medlab.data.errors import DataError
from medlab.data.templates import ChatTemplate

IGNORE_INDEX = -100
TRUNCATION_POLICIES = ("truncate", "drop")
MODES = ("sft", "cpt")
TOKENIZED_FEATURES = datasets.Features(
    {
        "input_ids": datasets.List(datasets.Value("int32")),
        "labels": datasets.List(datasets.Value("int32")),
        "_status": datasets.Value("string"),
    }
)


def assistant_spans(
    template: ChatTemplate, messages: Sequence[dict], tools: str | None = None
) -> tuple[str, list[tuple[int, int, bool]]]:
    """Render a conversation; return (text, [(start, end, has_end_of_turn)] character spans of assistant turns).

    Raises `DataError` if the template is not prefix-stable (a rendered prefix is not a prefix of the
    whole rendering), because then no character span can be trusted.
    """
    text = template.render(messages, tools)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = template.render(messages[:index], tools, add_generation_prompt=True)
        upto = template.render(messages[: index + 1], tools)
        if not (text.startswith(prompt) and text.startswith(upto) and len(prompt) <= len(upto)):
            raise DataError(
                f"chat template {template.name!r} is not prefix-stable at turn {index}: rendering the conversation "
                f"up to that turn (with the generation prompt) is not a prefix of the full rendering, so the "
                f"assistant span cannot be located. Use another template."
            )
        turn = text[len(prompt) : len(upto)]
        cut = turn.rfind(template.end_of_turn) if template.end_of_turn else -1
        if cut >= 0:
            spans.append((len(prompt), len(prompt) + cut + len(template.end_of_turn), True))
        else:
            spans.append((len(prompt), len(prompt) + len(turn.rstrip()), False))
    return text, spans


def mask_labels(
    input_ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int, bool]], eos_id: int
) -> tuple[list[int], list[int]]:
    """Labels = input_ids for tokens that overlap a span, else -100; EOS inserted after spans without one.

    A token straddling the start of an answer (a generation prompt ending in a space, then " Answer" as one
    token) is trained: it is the first token the model must produce.
    """
    ids, labels = [], []
    pending = list(spans)
    for token_id, (start, end) in zip(input_ids, offsets):
        while pending and start >= pending[0][1]:
            _close_span(ids, labels, pending.pop(0), eos_id)
        inside = bool(pending) and max(end, start + 1) > pending[0][0]  # overlaps the span (start < span end here)
        ids.append(token_id)
        labels.append(token_id if inside else IGNORE_INDEX)
    for span in pending:
        _close_span(ids, labels, span, eos_id)
    return ids, labels


def _close_span(ids: list[int], labels: list[int], span: tuple[int, int, bool], eos_id: int) -> None:
    if not span[2]:  # the template wrote no end-of-turn: train an explicit EOS right after the answer
        ids.append(eos_id)
        labels.append(eos_id)


def tokenize_conversation(
    messages: Sequence[dict], tools: str | None, *, template: ChatTemplate, tokenizer: Any
) -> tuple[list[int], list[int]]:
    """One conversation -> (input_ids, labels) with assistant-only labels (no length policy applied)."""
    text, spans = assistant_spans(template, messages, tools)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return mask_labels(encoded["input_ids"], encoded["offset_mapping"], spans, require_eos_id(tokenizer))


def end_of_turn_id(template: ChatTemplate, tokenizer: Any) -> int:
    """The token id trained as "EOS" for this template: its end-of-turn string if that is one token, else EOS."""
    ids = tokenizer.encode(template.end_of_turn, add_special_tokens=False)
    if len(ids) == 1:
        return ids[0]
    return require_eos_id(tokenizer)


def stop_token_ids(template: ChatTemplate | None, tokenizer: Any) -> tuple[int, ...]:
    """The tokens that end a generated assistant turn in this chat format: the tokenizer's EOS and the template's
    end-of-turn token (``<|eot_id|>`` for llama3 on a tokenizer whose EOS is another token), without repeats."""
    ids = [tokenizer.eos_token_id] + ([end_of_turn_id(template, tokenizer)] if template is not None else [])
    return tuple(dict.fromkeys(i for i in ids if i is not None))


def require_eos_id(tokenizer: Any) -> int:
    """`tokenizer.eos_token_id`, or a `DataError` if the tokenizer has none."""
    if tokenizer.eos_token_id is None:
        raise DataError("the tokenizer has no eos_token; set one (documents and answers must end with EOS)")
    return tokenizer.eos_token_id


def fit_length(
    input_ids: list[int], labels: list[int], max_length: int, truncation: str, eos_id: int
) -> tuple[list[int], list[int], str]:
    """Apply the length policy; returns (ids, labels, status) with status `kept`, `truncated` or `dropped/<reason>`."""
    status = "kept"
    if len(input_ids) > max_length:
        if truncation == "drop":
            return input_ids, labels, "dropped/too_long"
        input_ids, labels, status = input_ids[:max_length], labels[:max_length], "truncated"
        if labels[-1] != IGNORE_INDEX:  # a cut answer still ends with EOS
            input_ids[-1] = labels[-1] = eos_id
    if all(label == IGNORE_INDEX for label in labels[1:]):  # nothing to predict after the causal shift
        return input_ids, labels, "dropped/no_trained_tokens"
    return input_ids, labels, status


def _sources(batch: dict[str, list]) -> list[str]:
    """Where each row came from: "FILE line N" / "FILE row N" (1-based; `source` of normalized rows)."""
    if "source" in batch:
        return list(batch["source"])
    return [f"row {row + 1}" for row in batch["row"]]  # rows built by hand: the 1-based record number


def _spans_of_row(template: ChatTemplate, messages: list[dict], tools: str | None, where: str):
    try:
        return assistant_spans(template, messages, tools)
    except DataError as err:
        raise DataError(f"{where}: {err}") from None
    except Exception as err:  # a tokenizer template may raise anything (jinja errors, raise_exception)
        raise DataError(f"{where}: chat template {template.name!r} failed to render: {err}") from err


def _sft_batch(
    batch: dict[str, list],
    *,
    template: ChatTemplate,
    tokenizer: Any,
    max_length: int,
    truncation: str,
    eot_id: int,
    eos_id: int,
) -> dict:
    sources = _sources(batch)
    rendered = [
        _spans_of_row(template, messages, tools, where)
        for messages, tools, where in zip(batch["messages"], batch["tools"], sources)
    ]
    encoded = tokenizer([text for text, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    out: dict[str, list] = {"input_ids": [], "labels": [], "_status": []}
    for (_, spans), where, token_ids, offsets in zip(
        rendered, sources, encoded["input_ids"], encoded["offset_mapping"]
    ):
        ids, labels = mask_labels(token_ids, offsets, spans, eos_id)
        if all(label != IGNORE_INDEX for label in labels):
            raise DataError(
                f"chat template {template.name!r} masked nothing in {where}: every token would be trained, "
                f"which means the template does not separate prompts from answers (it is broken for this data)"
            )
        ids, labels, status = fit_length(ids, labels, max_length, truncation, eot_id)
        out["input_ids"].append(ids)
        out["labels"].append(labels)
        out["_status"].append(status)
    return out


def _cpt_batch(batch: dict[str, list], *, tokenizer: Any, eos_id: int) -> dict:
    encoded = tokenizer(batch["text"], add_special_tokens=False)["input_ids"]
    ids = [list(tokens) + [eos_id] for tokens in encoded]
    return {"input_ids": ids, "labels": [list(x) for x in ids], "_status": ["kept"] * len(ids)}


def tokenize_dataset(
    dataset: datasets.Dataset,
    tokenizer: Any,
    *,
    mode: str,
    template: ChatTemplate | None = None,
    max_length: int = 512,
    truncation: str = "truncate",
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Tokenize a normalized dataset; returns (dataset of `input_ids`/`labels`, counts by status except `kept`).

    `sft` needs chat rows and a template; `cpt` needs text rows and keeps documents whole (packing cuts them).
    """
    _check_tokenize_args(dataset, tokenizer, mode, template, truncation)
    eos_id = require_eos_id(tokenizer)
    if mode == "sft":
        function, kwargs = (
            _sft_batch,
            {
                "template": template,
                "tokenizer": tokenizer,
                "max_length": max_length,
                "truncation": truncation,
                "eot_id": end_of_turn_id(template, tokenizer),
                "eos_id": eos_id,
            },
        )
    else:
        function, kwargs = _cpt_batch, {"tokenizer": tokenizer, "eos_id": eos_id}
    tokenized = dataset.map(
        function,
        batched=True,
        fn_kwargs=kwargs,
        remove_columns=dataset.column_names,
        features=TOKENIZED_FEATURES,
        keep_in_memory=True,
        new_fingerprint=f"{dataset._fingerprint}-tokenized-{mode}-{max_length}-{truncation}",
        desc=f"Tokenizing ({mode})",
    )
    statuses = Counter(tokenized["_status"])
    counts = {status: n for status, n in statuses.items() if status != "kept"}
    if any(status.startswith("dropped/") for status in statuses):
        tokenized = tokenized.filter(
            lambda batch: [not s.startswith("dropped/") for s in batch],
            input_columns="_status",
            batched=True,
            keep_in_memory=True,
        )
    return tokenized.remove_columns("_status"), counts


def _check_tokenize_args(
    dataset: datasets.Dataset, tokenizer: Any, mode: str, template: ChatTemplate | None, truncation: str
) -> None:
    if mode not in MODES:
        raise DataError(f"mode must be one of {MODES}, got {mode!r}")
    if truncation not in TRUNCATION_POLICIES:
        raise DataError(f"truncation must be one of {TRUNCATION_POLICIES}, got {truncation!r}")
    if not getattr(tokenizer, "is_fast", False):
        raise DataError("label masking needs a fast tokenizer (character offsets); got a slow one")
    if mode == "sft" and "messages" not in dataset.column_names:
        raise DataError(
            "mode 'sft' needs chat rows (alpaca, sharegpt, openai or toolcall data), got text rows; "
            "use mode 'cpt' for plain text"
        )
    if mode == "sft" and template is None:
        raise DataError("mode 'sft' needs a chat template")
    if mode == "cpt" and "text" not in dataset.column_names:
        raise DataError("mode 'cpt' needs text rows (a 'text' column or a .txt file), got chat rows; use mode 'sft'")
