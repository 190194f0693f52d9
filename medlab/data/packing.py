"""Continued-pretraining packing: documents -> blocks of exactly `block_size` tokens.

Documents (each already ending with EOS) are concatenated in order and cut into full blocks; the last
partial block is dropped (and counted) so every block has the same length and no padding. Each block
carries `position_ids` that restart at 0 at every document start inside it (and at the block start),
and the label of a document's first token is -100, so nothing is predicted across a document boundary.
Given these `position_ids` and no `attention_mask`, transformers (>= 4.5x, `masking_utils.
find_packed_sequence_indices`) builds a block-diagonal causal mask, so attention never crosses documents
either. Vectorised with numpy over the arrow buffers: no python loop over tokens.
"""

from __future__ import annotations

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from medlab.data.errors import DataError
from medlab.data.tokenize import IGNORE_INDEX


def pack_blocks(
    dataset: datasets.Dataset, block_size: int, *, allow_short: bool = False
) -> tuple[datasets.Dataset, dict[str, int]]:
    """Pack tokenized documents (`input_ids`) into blocks; returns (blocks dataset, counts).

    `allow_short` (validation data): when the documents hold fewer tokens than one block, they become one
    shorter block instead of an error, so a small held-out split still validates (counted as `short_block`).
    """
    column = dataset.with_format("arrow")[:]["input_ids"].combine_chunks()
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    tokens = pc.list_flatten(column).to_numpy(zero_copy_only=False).astype(np.int32)
    short = allow_short and 2 <= len(tokens) < block_size
    if short:
        block_size = len(tokens)
    input_ids, position_ids, labels = pack_arrays(tokens, lengths, block_size)
    n_blocks = len(input_ids) // block_size
    if n_blocks == 0:
        raise DataError(
            f"only {len(tokens)} tokens in {len(lengths)} documents: fewer than one block of max_length={block_size}"
        )
    offsets = pa.array(np.arange(0, n_blocks * block_size + 1, block_size, dtype=np.int32))
    table = pa.table(
        {
            name: pa.ListArray.from_arrays(offsets, pa.array(values))
            for name, values in (("input_ids", input_ids), ("labels", labels), ("position_ids", position_ids))
        }
    )
    counts = {
        "documents": int(len(lengths)),
        "blocks": n_blocks,
        "partial_block_tokens_dropped": int(len(tokens) - len(input_ids)),
        **({"short_block": 1} if short else {}),
    }
    return datasets.Dataset(table), counts


def pack_arrays(tokens: np.ndarray, lengths: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flat (input_ids, position_ids, labels) of the full blocks, for tokens of documents with these lengths.

    position = index - index of the latest segment start, where a segment starts at a document start or a
    block start; labels = input_ids except -100 at document starts inside a block.
    """
    kept = (len(tokens) // block_size) * block_size
    index = np.arange(kept)
    doc_start = np.zeros(len(tokens), dtype=bool)
    doc_start[np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)[lengths > 0]] = True
    doc_start = doc_start[:kept]
    block_start = index % block_size == 0
    segment_start = np.maximum.accumulate(np.where(doc_start | block_start, index, 0))
    position_ids = (index - segment_start).astype(np.int32)
    labels = tokens[:kept].copy()
    labels[doc_start & ~block_start] = IGNORE_INDEX
    return tokens[:kept], position_ids, labels
