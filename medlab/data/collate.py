"""Collate tokenized examples into the batch dict of docs/INTERFACES.md.

- `collate_padded`: right-pad to the longest example; labels -100 and attention_mask 0 on pads. Packed CPT
  blocks (which carry `position_ids` and are all full length) get `position_ids` and NO attention_mask:
  transformers only derives the block-diagonal (per-document) mask from `position_ids` when
  `attention_mask` is None, and a mask of all ones would silently let documents attend to each other.
- `collate_padding_free`: concatenate the examples into one `[1, T]` row with `position_ids` restarting
  per example and no attention_mask (same transformers mechanism); the label at each example's first
  position is -100 so no token is predicted from the previous example. Same per-token loss as padded,
  without pad tokens.

`num_label_tokens` counts label positions that contribute after the causal shift: `(labels[:, 1:] != -100)`;
`loss_index` lists them as flat positions of `labels[:, 1:]` (for the chunked loss, see medlab/linear_ce.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from medlab.data.tokenize import IGNORE_INDEX


def collate_padded(examples: Sequence[dict], pad_id: int) -> dict:
    """Right-padded `[B, T]` batch (see module docstring)."""
    lengths = [len(example["input_ids"]) for example in examples]
    width = max(lengths)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, (example, length) in enumerate(zip(examples, lengths)):
        input_ids[row, :length] = torch.as_tensor(example["input_ids"], dtype=torch.long)
        labels[row, :length] = torch.as_tensor(example["labels"], dtype=torch.long)
        attention_mask[row, :length] = 1
    batch = {"input_ids": input_ids, "labels": labels}
    if all("position_ids" in example for example in examples):
        if len(set(lengths)) != 1:
            raise ValueError("packed blocks must all have the same length (they carry position_ids and no mask)")
        batch["position_ids"] = torch.as_tensor(
            [list(example["position_ids"]) for example in examples], dtype=torch.long
        )
    else:
        batch["attention_mask"] = attention_mask
    return _with_counts(batch, examples, sum(lengths))


def collate_padding_free(examples: Sequence[dict]) -> dict:
    """All examples in one `[1, T]` row with per-example `position_ids` (see module docstring)."""
    input_ids, labels, position_ids = [], [], []
    for example in examples:
        example_labels = list(example["labels"])
        example_labels[0] = IGNORE_INDEX
        input_ids += list(example["input_ids"])
        labels += example_labels
        own_positions = example.get("position_ids")
        position_ids += list(range(len(example["input_ids"])) if own_positions is None else own_positions)
    batch = {
        "input_ids": torch.as_tensor([input_ids], dtype=torch.long),
        "labels": torch.as_tensor([labels], dtype=torch.long),
        "position_ids": torch.as_tensor([position_ids], dtype=torch.long),
    }
    return _with_counts(batch, examples, len(input_ids))


def _with_counts(batch: dict, examples: Sequence[dict], num_tokens: int) -> dict:
    batch["ids"] = [int(example["id"]) for example in examples]
    batch["num_tokens"] = int(num_tokens)
    labelled = (batch["labels"][..., 1:] != IGNORE_INDEX).reshape(-1)
    batch["num_label_tokens"] = int(labelled.sum())
    # flat positions (in [B*(T-1)]) whose next token carries a label: the chunked loss selects them on the device
    # with this index instead of a boolean mask, which would be a host sync per micro-batch
    batch["loss_index"] = labelled.nonzero().squeeze(1)
    return batch
