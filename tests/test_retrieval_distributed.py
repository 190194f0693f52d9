"""Cross-rank negatives under DDP (2 gloo processes on CPU, Fabric's own launcher, as in test_distributed.py).

A 2-process bi-encoder run with 4 rows per rank must compute the loss of one process holding all 8 rows
(every query scores every rank's positives and hard negatives), and after DDP's gradient averaging hold the
single process's full-batch gradients -- both on the plain path (gather_with_grad + DDP's reducer) and on the
GradCache path (``owns_backward``: unsynced chunk backwards, then one manual all-reduce in the loop).

The script below runs the loop three times in the same two processes (plain, GradCache, and plain without
cross-rank negatives), 2 optimizer steps each, and saves every step's gradients (taken in
``on_before_optimizer_step``, i.e. after the all-reduce) and the logged losses; the test runs the
single-process references itself and compares.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import cpu_fabric, write_jsonl
from test_distributed import Tree

from medlab import ROOT_DIR
from medlab.engine.loop import Loop, LoopConfig
from medlab.objectives.bi_encoder import BiEncoder
from medlab.retrieval.data import RetrievalData

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("one_thread")]  # conftest.py: one torch thread

STEPS, PER_RANK, WORLD = 2, 4, 2
MODES = {"plain": {}, "gradcache": {"gradcache_chunk_size": 3}, "local_negatives": {"cross_rank_negatives": False}}

SCRIPT = r'''
"""python script.py DATA MODEL_DIR OUT: Fabric re-executes it for rank 1."""
import json
import sys
from pathlib import Path

import torch
from lightning.fabric import Fabric
from transformers import AutoTokenizer, BertModel

from medlab.engine.loop import Loop, LoopConfig
from medlab.objectives.bi_encoder import BiEncoder
from medlab.retrieval.data import RetrievalData

DATA, MODEL_DIR, OUT = sys.argv[1], sys.argv[2], Path(sys.argv[3])
MODES = json.loads(sys.argv[4])
STEPS, PER_RANK = int(sys.argv[5]), int(sys.argv[6])


class Recording(BiEncoder):
    """Gradients as the optimizer sees them (after DDP's / the manual all-reduce), keyed by optimizer step: the
    loop calls a module hook both directly and as a Fabric callback, so a list would hold each step twice."""

    def on_fit_start(self):
        self.grads = {}

    def on_before_optimizer_step(self, optimizer):
        step = len(self.grads) if not optimizer.state else int(next(iter(optimizer.state.values()))["step"])
        self.grads[step] = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None}


fabric = Fabric(accelerator="cpu", devices=2, strategy="ddp", precision="32-true")
fabric.launch()
tok = AutoTokenizer.from_pretrained(MODEL_DIR)
data = RetrievalData(DATA, num_negatives=1, max_length=24)
data.setup(tok)
out = {}
for mode, kwargs in MODES.items():
    module = Recording(BertModel.from_pretrained(MODEL_DIR), temperature=0.05, learnable_temperature=True,
                       lr=1e-3, warmup_ratio=0.0, **kwargs)
    cfg = LoopConfig(max_steps=STEPS, log_every_n_steps=1, gradient_clip_val=None, progress_bar=False, seed=0,
                     shuffle=False, save_final_checkpoint=False, handle_signals=False)
    loop = Loop(fabric, cfg, OUT / mode)
    loop.fit(module, data.train_dataset, data.collate, batch_size=PER_RANK)
    out[mode] = {"grads": module.grads, "losses": [h["train/loss"] for h in loop.history if "train/loss" in h],
                 "params": {n: p.detach().clone() for n, p in module.named_parameters()}}
torch.save(out, OUT / f"rank{fabric.global_rank}.pt")
'''


class Recording(BiEncoder):  # the same as the script's
    def on_fit_start(self):
        self.grads = {}

    def on_before_optimizer_step(self, optimizer):
        step = len(self.grads) if not optimizer.state else int(next(iter(optimizer.state.values()))["step"])
        self.grads[step] = {n: p.grad.detach().clone() for n, p in self.named_parameters() if p.grad is not None}


def _data_file(tmp_path: Path) -> Path:
    n = STEPS * PER_RANK * WORLD
    rows = [{"question": f"question {i}: what about condition {chr(97 + i)}?",
             "answer": f"answer {i}: condition {chr(97 + i)} is treated with rest",
             "negatives": [f"unrelated text number {i} about {chr(122 - i)}"]} for i in range(n)]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def _model_dir(tmp_path: Path) -> Path:
    """A tiny BERT (with its unused pooler, like any AutoModel BERT) + the project tokenizer, saved once."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(ROOT_DIR / "medlab" / "assets" / "tokenizer")
    cfg = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    path = tmp_path / "model"
    BertModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _single_process(tmp_path: Path, data_path: Path, model_dir: Path) -> dict:
    from transformers import AutoTokenizer, BertModel

    data = RetrievalData(data_path, num_negatives=1, max_length=24)
    data.setup(AutoTokenizer.from_pretrained(model_dir))
    init = BertModel.from_pretrained(model_dir)
    out = {}
    for mode in ("plain", "gradcache"):
        module = Recording(copy.deepcopy(init), temperature=0.05, learnable_temperature=True, lr=1e-3,
                           warmup_ratio=0.0, **MODES[mode])
        cfg = LoopConfig(max_steps=STEPS, log_every_n_steps=1, gradient_clip_val=None, progress_bar=False, seed=0,
                         shuffle=False, save_final_checkpoint=False, handle_signals=False)
        loop = Loop(cpu_fabric(), cfg, tmp_path / f"single_{mode}")
        loop.fit(module, data.train_dataset, data.collate, batch_size=PER_RANK * WORLD)
        out[mode] = {"grads": module.grads, "losses": [h["train/loss"] for h in loop.history if "train/loss" in h],
                     "params": {n: p.detach().clone() for n, p in module.named_parameters()}}
    return out


def _assert_grads_equal(got: dict, want: dict, what: str):
    assert sorted(got) == sorted(want) == list(range(STEPS)), what
    for step in range(STEPS):
        g, w = got[step], want[step]
        assert g.keys() == w.keys() and len(w) > 10, what
        for name in w:
            torch.testing.assert_close(g[name], w[name], rtol=0, atol=1e-5, msg=f"{what}, step {step + 1}: {name}")


def test_ddp_cross_rank_negatives_equal_one_process_with_the_whole_batch(tmp_path):
    data_path, model_dir = _data_file(tmp_path), _model_dir(tmp_path)
    script = tmp_path / "retrieval_ddp.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out"
    out.mkdir()
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    tree = Tree([sys.executable, str(script), str(data_path), str(model_dir), str(out), json.dumps(MODES),
                 str(STEPS), str(PER_RANK)], cwd, tmp_path / "ddp.log")
    try:
        single = _single_process(tmp_path, data_path, model_dir)  # runs while the DDP processes start
        rc, left = tree.wait()
    finally:
        tree.kill()
    assert rc == 0 and not left, tree.output()[-4000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]

    for mode in ("plain", "gradcache"):
        ref = single[mode]
        for r, rank in enumerate(ranks):
            # the logged loss is the global batch's InfoNCE (8 queries x 8 positives + 8 hard negatives)
            assert rank[mode]["losses"] == pytest.approx(ref["losses"], abs=1e-5), (mode, r)
            _assert_grads_equal(rank[mode]["grads"], ref["grads"], f"{mode}, rank {r}")
            for name, p in ref["params"].items():
                torch.testing.assert_close(rank[mode]["params"][name], p, rtol=0, atol=1e-5, msg=f"{mode}: {name}")
        assert "log_scale" in ref["grads"][0]  # the learnable temperature is averaged like any parameter
    # GradCache and plain agree with each other too (same maths, different memory)
    assert single["gradcache"]["losses"] == pytest.approx(single["plain"]["losses"], abs=1e-5)
    # the comparison has teeth: without cross-rank negatives each rank only sees its 4 rows (a smaller loss)
    local = ranks[0]["local_negatives"]["losses"]
    assert local[0] < single["plain"]["losses"][0] - 0.1, (local, single["plain"]["losses"])
