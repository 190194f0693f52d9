"""Shared test helpers: tiny models and toy token data built in code (no files, no network), the shipped assets,
config composition and runs, JSON-lines files. Fixtures live in ``conftest.py``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.fabric import Fabric

import medlab

IGNORE = -100
TOKENIZER_DIR = medlab.ASSETS_DIR / "tokenizer"   # committed assets: a missing one fails the tests, never skips
SAMPLE_DIR = medlab.ASSETS_DIR / "sample"
UNUSED_RUN_DIR = "/tmp/medlab-unused-run-dir"     # for configs that are composed and checked, never run


# ---------------------------------------------------------------------------------------------- configs and runs
def config_options(group: str) -> list[str]:
    """The option names of a config group (``conf/<group>/*.yaml``)."""
    return sorted(p.stem for p in (medlab.CONF_DIR / group).glob("*.yaml"))


EXPERIMENTS = config_options("experiment")  # every experiment, so a new file is checked without a test edit


def compose(experiment: str | None = None, overrides=(), run_dir: str | Path = UNUSED_RUN_DIR):
    """``medlab.compose`` with a run dir that nothing writes to (for configs that are only checked)."""
    return medlab.compose(experiment, list(overrides), run_dir=str(run_dir))


def run_experiment(experiment: str | None, overrides, run_dir: str | Path, callbacks=None):
    """Compose + ``medlab.run``: the RunResult (a float with ``.metrics``, ``.history``, ``.run_dir``)."""
    return medlab.run(compose(experiment, overrides, run_dir), callbacks=callbacks)


def objective_family(cfg) -> str:
    """``causal`` (CausalLM), ``grpo`` (GRPOPolicy, PPOPolicy: prompt data, generation) or ``retrieval``
    (bi-/cross-encoders) for a composed config."""
    target = str(cfg.objective._target_)
    if target.endswith(("GRPOPolicy", "PPOPolicy")):
        return "grpo"
    return "causal" if target.endswith("CausalLM") else "retrieval"


# ---------------------------------------------------------------------------------------------- files
def write_jsonl(path: str | Path, rows) -> Path:
    """One JSON object per line (UTF-8, non-ASCII kept); a ``str`` item is written as it is (to plant a broken
    line). Parent directories are created. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def read_jsonl(path: str | Path, limit: int | None = None) -> list[dict]:
    """The rows of a JSON-lines file (the first ``limit`` when given)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:limit]]


# ---------------------------------------------------------------------------------------------- tiny models and data
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
