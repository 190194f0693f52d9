"""CPT block packing and batch collation.

- Blocks are exactly max_length tokens, documents end with EOS, position_ids restart at each document,
  the last partial block is dropped and counted.
- transformers 5 turns restarting position_ids (with no attention_mask) into a block-diagonal causal
  mask: checked here on a tiny Llama, because the whole packing design depends on it.
- A padding-free batch gives exactly the per-token losses of the padded batch (sdpa and eager, fp32).
"""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from test_data_support import SAMPLE_DIR, tiny_llama, write_jsonl

from medlab.data import CausalLMData, read_records
from medlab.data.collate import collate_padded, collate_padding_free
from medlab.data.packing import pack_blocks

I = -100  # noqa: E741


def test_pack_blocks_by_hand():
    docs = [[11, 12, 13], [21, 22, 23, 24, 25], [31, 32], [41, 42, 43, 44]]
    blocks, counts = pack_blocks(Dataset.from_dict({"input_ids": docs}), block_size=4)
    assert counts == {"documents": 4, "blocks": 3, "partial_block_tokens_dropped": 2}
    assert blocks["input_ids"] == [[11, 12, 13, 21], [22, 23, 24, 25], [31, 32, 41, 42]]
    assert blocks["position_ids"] == [[0, 1, 2, 0], [0, 1, 2, 3], [0, 1, 0, 1]]
    # a document's first token is never predicted from the previous document
    assert blocks["labels"] == [[11, 12, 13, I], [22, 23, 24, 25], [31, 32, I, 42]]


def test_cpt_setup_packs_the_sample_corpus(tokenizer):
    data = CausalLMData(path=str(SAMPLE_DIR / "medical_corpus.txt"), mode="cpt", max_length=128, val_split=0.05)
    counts = data.setup(tokenizer)
    docs = read_records(SAMPLE_DIR / "medical_corpus.txt")["text"]
    total = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) + 1 for t in docs)
    blocks = counts["train/blocks"] + counts["val/blocks"]
    dropped = counts["train/partial_block_tokens_dropped"] + counts["val/partial_block_tokens_dropped"]
    assert blocks * 128 + dropped == total
    assert counts["train/documents"] + counts["val/documents"] == len(docs) and counts["val/documents"] == round(
        0.05 * len(docs)
    )
    assert 0 <= counts["train/partial_block_tokens_dropped"] < 128
    eos = tokenizer.eos_token_id
    for block in data.train_dataset:
        assert len(block["input_ids"]) == len(block["position_ids"]) == 128
        starts = [i for i, p in enumerate(block["position_ids"]) if p == 0]
        assert all(block["input_ids"][i - 1] == eos for i in starts if i > 0)  # every document ends with EOS
    batch = data.collate([data.train_dataset[i] for i in range(3)])
    assert set(batch) == {"input_ids", "labels", "position_ids", "ids", "num_tokens", "num_label_tokens", "loss_index"}
    assert batch["loss_index"].tolist() == (batch["labels"][:, 1:] != -100).reshape(-1).nonzero().squeeze(1).tolist()
    assert len(batch["loss_index"]) == batch["num_label_tokens"]
    assert batch["input_ids"].shape == batch["position_ids"].shape == (3, 128)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_transformers_isolates_documents_by_position_ids(attn):
    """Logits of a document packed after another equal the logits of that document alone.

    transformers only derives the per-document mask when there is no attention_mask AND no KV cache: an
    all-ones attention_mask, or forgetting `use_cache=False` (the config default builds a DynamicCache even
    in a training forward), silently lets documents attend to each other. Hence CPT/padding-free batches
    carry position_ids and no attention_mask, and the objective calls the model with use_cache=False.
    """
    model = tiny_llama(64, attn)
    a, b = torch.randint(2, 64, (1, 7)), torch.randint(2, 64, (1, 9))
    packed = torch.cat([a, b], 1)
    positions = torch.cat([torch.arange(7), torch.arange(9)])[None]
    with torch.no_grad():
        alone = model(input_ids=b, use_cache=False).logits
        isolated = model(input_ids=packed, position_ids=positions, use_cache=False).logits[:, 7:]
        with_mask = model(
            input_ids=packed, position_ids=positions, attention_mask=torch.ones_like(packed), use_cache=False
        )
        with_cache = model(input_ids=packed, position_ids=positions, use_cache=True)
    torch.testing.assert_close(isolated, alone, atol=1e-5, rtol=0)
    assert not torch.allclose(with_mask.logits[:, 7:], alone, atol=1e-3)
    assert not torch.allclose(with_cache.logits[:, 7:], alone, atol=1e-3)


def sft_examples(tokenizer, tmp_path, packing):
    rows = [
        {"instruction": "What is asthma?", "input": "", "output": "A chronic disease of the airways."},
        {"instruction": "高血压有什么症状？", "input": "", "output": "通常没有症状。"},
        {
            "instruction": "Define BMI.",
            "input": "For adults.",
            "output": "Weight in kg divided by height in metres squared.",
        },
    ]
    data = CausalLMData(path=write_jsonl(tmp_path / "sft.jsonl", rows), packing=packing, max_length=128)
    data.setup(tokenizer)
    return data, [data.train_dataset[i] for i in range(len(rows))]


def test_padded_collation(tokenizer, tmp_path):
    data, examples = sft_examples(tokenizer, tmp_path, packing=False)
    batch = data.collate(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert set(batch) == {"input_ids", "labels", "attention_mask", "ids", "num_tokens", "num_label_tokens", "loss_index"}
    assert batch["input_ids"].shape == (3, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, length in enumerate(lengths):
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()
        assert (batch["labels"][row, length:] == I).all()
    assert batch["ids"] == [0, 1, 2] and batch["num_tokens"] == sum(lengths)
    assert batch["num_label_tokens"] == sum(sum(label != I for label in e["labels"][1:]) for e in examples)
    assert all(isinstance(batch[k], int) for k in ("num_tokens", "num_label_tokens"))


def test_padding_free_collation(tokenizer, tmp_path):
    data, examples = sft_examples(tokenizer, tmp_path, packing=True)
    batch = data.collate(examples)
    lengths = [len(e["input_ids"]) for e in examples]
    assert set(batch) == {"input_ids", "labels", "position_ids", "ids", "num_tokens", "num_label_tokens", "loss_index"}
    assert batch["loss_index"].tolist() == (batch["labels"][:, 1:] != -100).reshape(-1).nonzero().squeeze(1).tolist()
    assert len(batch["loss_index"]) == batch["num_label_tokens"]
    assert batch["input_ids"].shape == batch["position_ids"].shape == (1, sum(lengths))
    assert batch["position_ids"][0].tolist() == [p for n in lengths for p in range(n)]
    starts = [sum(lengths[:i]) for i in range(len(lengths))]
    assert all(batch["labels"][0, s] == I for s in starts)
    assert batch["num_tokens"] == sum(lengths)
    assert batch["num_label_tokens"] == sum(sum(label != I for label in e["labels"][1:]) for e in examples)


def per_token_losses(model, batch):
    kwargs = {k: batch[k] for k in ("attention_mask", "position_ids") if k in batch}
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], use_cache=False, **kwargs).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].transpose(1, 2), batch["labels"][:, 1:], ignore_index=I, reduction="none"
    )


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_loss_equals_padded_loss(attn, tokenizer, tmp_path):
    _, examples = sft_examples(tokenizer, tmp_path, packing=False)
    model = tiny_llama(len(tokenizer), attn)
    padded = per_token_losses(model, collate_padded(examples, tokenizer.pad_token_id))
    free = per_token_losses(model, collate_padding_free(examples))[0]
    offset = 0
    for row, example in enumerate(examples):
        n = len(example["input_ids"])
        trained = torch.tensor(example["labels"][1:]) != I
        # padded row `row`, shifted positions 0..n-2  <->  padding-free positions offset..offset+n-2
        torch.testing.assert_close(
            free[offset : offset + n - 1][trained], padded[row, : n - 1][trained], atol=1e-5, rtol=0
        )
        if row:  # the position predicting this example's first token from the previous one is ignored
            assert free[offset - 1] == 0
        offset += n
    assert torch.isclose(free.sum(), padded.sum(), atol=1e-4)
