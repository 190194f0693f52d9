"""CUDA paths (marker ``gpu``; skipped without a GPU): bf16 mixed precision, QLoRA with a bf16 compute dtype,
fused AdamW, the retrieval objectives, the VLM embedder and GradCache's CUDA RNG replay.

Run on a GPU machine: ``python -m pytest -m gpu``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import run_experiment

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

BF16 = ["strategy.accelerator=cuda", "strategy.precision=bf16-mixed", "trainer.progress_bar=false", "logger=none"]


def _run(tmp_path, experiment, overrides):
    return run_experiment(experiment, BF16 + list(overrides), tmp_path / "run")


def test_sft_bf16_learns_and_uses_fused_adamw(tmp_path):
    result = _run(tmp_path, "sft", ["trainer.max_steps=30", "trainer.val_every_n_steps=30", "data.limit=128"])
    losses = [h["train/loss"] for h in result.history if "train/loss" in h]
    assert all(x == x for x in losses) and losses[-1] < losses[0] - 0.5
    assert result.metrics["status"] == "completed"
    assert any("train/mfu" in h for h in result.history)  # MFU is reported on CUDA


@pytest.mark.parametrize("experiment", ["sft_qlora", "biencoder_qlora", "reranker_llm_qlora"])
def test_qlora_bf16_compute_on_cuda(tmp_path, experiment):
    result = _run(tmp_path, experiment, ["adapter.compute_dtype=bfloat16", "adapter.gradient_checkpointing=true",
                                         "trainer.max_steps=6", "trainer.val_every_n_steps=6"])
    assert result.metrics["status"] == "completed"
    assert all(v == v for k, v in result.metrics.items() if k.startswith("val/") and isinstance(v, float))


@pytest.mark.parametrize("experiment,extra", [("biencoder", ["model=tiny_bert"]), ("reranker", ["model=tiny_bert"]),
                                              ("biencoder_vlm", [])])
def test_retrieval_bf16_on_cuda(tmp_path, experiment, extra):
    result = _run(tmp_path, experiment, extra + ["trainer.max_steps=8", "trainer.val_every_n_steps=8"])
    assert 0.0 <= result.metrics["val/ndcg@10"] <= 1.0 and result.metrics["status"] == "completed"


def test_gradcache_replays_cuda_dropout(tmp_path):
    """With dropout on, GradCache's per-chunk CUDA RNG replay makes its gradients those of the same chunked
    forward passes: two identical GradCache runs agree exactly, and differ from a plain run only by dropout."""
    from pathlib import Path

    from transformers import AutoTokenizer, BertConfig, BertModel

    from medlab.assets import __file__ as assets_init
    from medlab.objectives.bi_encoder import BiEncoder
    from medlab.retrieval.data import RetrievalData
    from medlab.retrieval.gradcache import cached_info_nce_backward
    from medlab.retrieval.losses import info_nce

    tok = AutoTokenizer.from_pretrained(Path(assets_init).parent / "tokenizer")
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(tok), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=128, hidden_dropout_prob=0.1)).cuda()
    data = RetrievalData(path=str(Path(assets_init).parent / "sample" / "retrieval_pairs.jsonl"),
                         fields={"query": "question", "positive": "answer"}, limit=8, num_negatives=0)
    data.setup(tok)
    batch = data.collate(data.train_dataset[:8])
    q = {k: v.cuda() for k, v in batch["query"].items()}
    d = {k: v.cuda() for k, v in batch["docs"].items()}
    grads = []
    for _ in range(2):
        module = BiEncoder(copy.deepcopy(model)).cuda().train()
        torch.manual_seed(1)
        cached_info_nce_backward(module.encode, module.encode, q, d, chunk_size=2,
                                 loss_fn=lambda a, b: info_nce(a, b, temperature=0.05))
        grads.append([p.grad.clone() for p in module.parameters() if p.grad is not None])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_chunked_loss_bf16_on_cuda_matches_full_logits():
    """objective.loss_impl=chunked under bf16 autocast on CUDA: the full-logits loss and gradients within bf16
    tolerance, and no host sync in the loss (CUDA sync debug mode raises on one)."""
    from medlab.ops import linear_ce
    from medlab.data.collate import collate_padded
    from medlab.objectives.causal_lm import CausalLM
    from tests.helpers import tiny_llama, toy_examples

    batch = collate_padded(toy_examples(8, vocab=512), pad_id=0)
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}
    out = {}
    for impl in ("full", "chunked"):
        module = CausalLM(tiny_llama(vocab=512, hidden=64).cuda(), mode="sft", loss_impl=impl, loss_chunk_size=16)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            if impl == "full":
                loss = module.training_step(batch, 0)["loss"]
            else:  # the loss path alone (transformers' mask code may sync on its own)
                parts = module._head_parts()
                hidden = module._hidden(parts, batch)
                torch.cuda.set_sync_debug_mode("error")
                try:
                    rows, targets = linear_ce.shift_for_next_token(hidden, batch["labels"], batch["loss_index"])
                    loss = linear_ce.linear_cross_entropy(rows, parts.head.weight, targets, None, 16)
                    loss = loss / (targets != -100).sum().clamp(min=1)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
        loss.backward()
        out[impl] = (loss.detach().float(), {n: p.grad.float() for n, p in module.model.named_parameters()})
    torch.testing.assert_close(out["chunked"][0], out["full"][0], rtol=2e-2, atol=2e-2)
    for name, g in out["full"][1].items():
        torch.testing.assert_close(out["chunked"][1][name], g, rtol=5e-2, atol=5e-3, msg=name)


def test_kv_cache_engine_equals_generate_on_cuda():
    from transformers import AutoTokenizer

    from medlab.rl.decode import KVCacheEngine
    from medlab.rl.generation import HFGenerateEngine
    from tests.helpers import tiny_llama
    from tests.test_rl_decode import PROMPTS, TOKENIZER

    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    model = tiny_llama(vocab=len(tok)).cuda()
    kwargs = {"num_generations": 4, "max_new_tokens": 32, "seed": 3, "temperature": 0.8, "top_k": 50}
    a = HFGenerateEngine(model, tok).generate(PROMPTS, **kwargs)
    b = KVCacheEngine(model, tok).generate(PROMPTS, **kwargs)
    assert torch.equal(a.completion_ids * a.completion_mask, b.completion_ids * b.completion_mask)
