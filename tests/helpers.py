"""Shared test fixtures: tiny models and toy token data built in code (no files, no network)."""

from __future__ import annotations

import torch
from lightning.fabric import Fabric

IGNORE = -100


def tiny_llama(vocab: int = 128, hidden: int = 32, layers: int = 2, seed: int = 0, dropout: float = 0.0,
               attn_implementation: str = "sdpa", max_positions: int = 2048):
    """A random-init Llama in fp32, built in code (no files)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      attention_dropout=dropout, pad_token_id=0, eos_token_id=1,
                      attn_implementation=attn_implementation)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float()


def toy_examples(n: int = 24, vocab: int = 128, seed: int = 0) -> list[dict]:
    """Variable-length rows; the first third of each row is 'prompt' (label -100)."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        length = int(torch.randint(6, 20, (1,), generator=g))
        ids = torch.randint(2, vocab, (length,), generator=g).tolist() + [1]
        cut = len(ids) // 3
        rows.append({"input_ids": ids, "labels": [IGNORE] * cut + ids[cut:], "id": i})
    return rows


def pad_collate(examples: list[dict]) -> dict:
    T = max(len(e["input_ids"]) for e in examples)
    ids = torch.zeros(len(examples), T, dtype=torch.long)
    labels = torch.full((len(examples), T), IGNORE)
    mask = torch.zeros(len(examples), T, dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[i, :n] = torch.tensor(e["input_ids"])
        labels[i, :n] = torch.tensor(e["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "ids": [e["id"] for e in examples],
            "num_tokens": int(mask.sum()), "num_label_tokens": int((labels[:, 1:] != IGNORE).sum())}


def cpu_fabric(loggers=None, callbacks=None) -> Fabric:
    return Fabric(accelerator="cpu", devices=1, precision="32-true", loggers=loggers or [], callbacks=callbacks)
