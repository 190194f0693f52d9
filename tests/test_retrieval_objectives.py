"""BiEncoder and CrossEncoder objectives: pooling, losses against sentence-transformers / torch references,
false-negative masking, learnable temperature, GradCache through the loop, validation metrics, adapters.

Models are tiny random BERT / Llama built in code (dropout off), inputs come from `RetrievalData.collate`
with the project's tokenizer.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import cpu_fabric, read_jsonl, write_jsonl

from medlab.engine.loop import Loop, LoopConfig
from medlab.objectives.bi_encoder import BiEncoder
from medlab.objectives.cross_encoder import CrossEncoder
from medlab.retrieval.data import RetrievalData
from medlab.retrieval.pooling import embed, pool

TEMPERATURE = 0.05


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


def tiny_bert(vocab: int, seed: int = 0, cls_head: bool = False):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, num_labels=1)
    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg) if cls_head else BertModel(cfg)


QUESTIONS = ["what causes fever", "how is asthma treated", "is flu contagious", "what lowers blood pressure",
             "why do joints ache", "how long does a cold last", "what is anemia", "can stress cause headaches",
             "how to treat a burn", "what is a migraine", "why am I tired", "what helps a sore throat"]
ANSWERS = ["an infection", "with inhalers", "yes for days", "exercise and less salt", "arthritis or strain",
           "about a week", "too few red blood cells", "yes tension headaches", "cool water then a dressing",
           "a severe recurring headache", "poor sleep or anemia", "warm drinks and rest"]


def _pairs_file(tmp_path, n=6, negatives=True, duplicate=None):
    rows = []
    for i in range(n):
        row = {"question": QUESTIONS[i], "answer": ANSWERS[i]}
        if negatives:
            row["negatives"] = [ANSWERS[(i + 5) % len(ANSWERS)] + " maybe"]
        rows.append(row)
    if duplicate is not None:  # row duplicate[1] gets row duplicate[0]'s answer: the same document twice
        a, b = duplicate
        rows[b]["answer"] = rows[a]["answer"]
    return write_jsonl(tmp_path / "pairs.jsonl", rows)


def _bi_data(tmp_path, tok, **kw):
    file_kw = {k: kw.pop(k) for k in ("n", "negatives", "duplicate") if k in kw}
    data = RetrievalData(_pairs_file(tmp_path, **file_kw), num_negatives=kw.pop("num_negatives", None),
                         max_length=24, **kw)
    data.setup(tok)
    return data


# ---------------------------------------------------------------------------------------------- pooling

def _hand_pool(hidden, mask, mode):
    out = []
    for h, m in zip(hidden, mask.tolist()):
        idx = [t for t, v in enumerate(m) if v]
        if mode == "mean":
            out.append(sum(h[t] for t in idx) / len(idx))
        else:
            out.append(h[idx[0] if mode == "cls" else idx[-1]])
    return torch.stack(out)


@pytest.mark.parametrize("padding", ["right", "left"])
@pytest.mark.parametrize("mode", ["mean", "cls", "last_token"])
def test_pooling_equals_hand_computation(mode, padding):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 5, 4, generator=g)
    lengths = [3, 5, 1]
    mask = torch.zeros(3, 5, dtype=torch.long)
    for i, n in enumerate(lengths):
        if padding == "right":
            mask[i, :n] = 1
        else:
            mask[i, 5 - n:] = 1
    got = pool(hidden, mask, mode)
    torch.testing.assert_close(got, _hand_pool(hidden, mask, mode), rtol=0, atol=1e-6)
    # padded positions never matter
    noisy = hidden.masked_fill(~mask.bool().unsqueeze(-1), 1e4)
    torch.testing.assert_close(pool(noisy, mask, mode), got, rtol=0, atol=1e-6)
    emb = embed(hidden, mask, mode)
    torch.testing.assert_close(emb, F.normalize(got, dim=-1))
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_pooling_dtype_and_errors():
    hidden = torch.randn(2, 4, 8).to(torch.bfloat16)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    out = pool(hidden, mask, "mean")
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _hand_pool(hidden.float(), mask, "mean"), rtol=1e-2, atol=1e-2)
    assert embed(hidden, mask, "mean").dtype == torch.float32
    with pytest.raises(ValueError, match="pooling"):
        pool(hidden, mask, "max")
    with pytest.raises(ValueError, match="attention_mask"):
        pool(hidden, mask[:, :3], "mean")


# ---------------------------------------------------------------------------------------------- bi-encoder loss

def _st_mnrl():
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    # given precomputed embeddings the loss never calls its model
    return st_losses.MultipleNegativesRankingLoss(model=None, scale=1 / TEMPERATURE)


def _trainable(module):
    return [p for p in module.parameters() if p.requires_grad]


def _max_rel_diff(a, b):
    return max(((x - y).abs().max() / y.abs().max().clamp(min=1)).item() for x, y in zip(a, b))


@pytest.mark.parametrize("num_negatives", [0, 1])
def test_bi_encoder_loss_equals_sentence_transformers_mnrl(tmp_path, tok, num_negatives):
    """training_step's loss and parameter gradients equal ST's MNRL (scale = 1/temperature) on the same embeddings."""
    data = _bi_data(tmp_path, tok, num_negatives=num_negatives)
    batch = data.collate(data.train_dataset)
    module = BiEncoder(tiny_bert(len(tok)), temperature=TEMPERATURE)
    params = _trainable(module)

    ours = module.training_step(batch, 0)["loss"]
    ours_grads = torch.autograd.grad(ours, params, allow_unused=True)

    q, d = module.encode(batch["query"]), module.encode(batch["docs"])
    b = q.shape[0]
    columns = [q, d[:b]] + [d[b:].view(b, num_negatives, -1)[:, k] for k in range(num_negatives)]
    theirs = _st_mnrl().compute_loss_from_embeddings(columns, labels=None)
    theirs_grads = torch.autograd.grad(theirs, params, allow_unused=True)

    assert abs(ours.item() - theirs.item()) < 1e-5
    used = [(a, c) for a, c in zip(ours_grads, theirs_grads) if c is not None]
    assert [a is None for a in ours_grads] == [c is None for c in theirs_grads] and len(used) > 10
    assert _max_rel_diff(*zip(*used)) < 1e-5


def _hand_masked_loss(q, candidates, positive_ids, candidate_ids):
    s = (q.double() @ candidates.double().T / TEMPERATURE).tolist()
    total = 0.0
    for i, row in enumerate(s):
        keep = [j for j in range(len(row)) if j == i or candidate_ids[j] != positive_ids[i]]
        total += -row[i] + math.log(sum(math.exp(row[j]) for j in keep))
    return total / len(s)


def test_duplicate_positive_is_not_penalized(tmp_path, tok):
    """Rows 1 and 4 share one answer: it is masked out of each other's negatives (and equals the hand loss)."""
    data = _bi_data(tmp_path, tok, num_negatives=1, duplicate=(1, 4))
    batch = data.collate(data.train_dataset)
    assert batch["positive_ids"][1] == batch["positive_ids"][4]
    module = BiEncoder(tiny_bert(len(tok)), temperature=TEMPERATURE)
    with torch.no_grad():
        masked = module.training_step(batch, 0)["loss"].item()
        module.mask_false_negatives = False
        unmasked = module.training_step(batch, 0)["loss"].item()
        q, d = module.encode(batch["query"]), module.encode(batch["docs"])
    ids = batch["doc_ids"].tolist()
    assert masked == pytest.approx(_hand_masked_loss(q, d, ids[: len(q)], ids), abs=1e-5)
    assert unmasked == pytest.approx(_hand_masked_loss(q, d, list(range(len(q))), list(range(len(d)))), abs=1e-5)
    # the duplicate has the positive's own score: leaving it in as a negative only adds to the loss
    assert unmasked > masked + 1e-3


def test_a_hard_negative_equal_to_the_positive_is_masked(tmp_path, tok):
    path = _pairs_file(tmp_path)
    rows = read_jsonl(path)
    rows[2]["negatives"] = [rows[2]["answer"]]  # mining returned the row's own answer
    write_jsonl(path, rows)
    data = RetrievalData(path, num_negatives=1, max_length=24)
    data.setup(tok)
    batch = data.collate(data.train_dataset)
    module = BiEncoder(tiny_bert(len(tok)), temperature=TEMPERATURE)
    with torch.no_grad():
        masked = module.training_step(batch, 0)["loss"].item()
        q, d = module.encode(batch["query"]), module.encode(batch["docs"])
    ids = batch["doc_ids"].tolist()
    assert ids[len(q) + 2] == ids[2]
    assert masked == pytest.approx(_hand_masked_loss(q, d, ids[: len(q)], ids), abs=1e-5)


@pytest.mark.parametrize("gradcache", [False, True])
def test_learnable_temperature_gets_a_gradient(tmp_path, tok, gradcache):
    data = _bi_data(tmp_path, tok, num_negatives=1)
    batch = data.collate(data.train_dataset)
    module = BiEncoder(tiny_bert(len(tok)), temperature=TEMPERATURE, learnable_temperature=True,
                       gradcache_chunk_size=2 if gradcache else None)
    assert isinstance(module.log_scale, torch.nn.Parameter)
    assert module.temperature.item() == pytest.approx(TEMPERATURE)
    out = module.training_step(batch, 0)
    if not gradcache:
        out["loss"].backward()
    assert module.log_scale.grad is not None and module.log_scale.grad.abs().item() > 0
    opt = module.configure_optimizers()["optimizer"]
    assert any(p is module.log_scale for g in opt.param_groups for p in g["params"])
    # fixed temperature: a buffer, not optimized
    fixed = BiEncoder(tiny_bert(len(tok)), temperature=TEMPERATURE)
    assert "log_scale" not in dict(fixed.named_parameters())


def _fit(tmp_path, module, data, **cfg):
    base = {"max_steps": 3, "log_every_n_steps": 1, "gradient_clip_val": None, "progress_bar": False, "seed": 0,
            "save_final_checkpoint": False, "handle_signals": False}
    base.update(cfg)
    loop = Loop(cpu_fabric(), LoopConfig(**base), tmp_path)
    loop.fit(module, data.train_dataset, data.collate, batch_size=6)
    return loop


@pytest.mark.parametrize("num_negatives", [0, 1])
def test_gradcache_through_the_loop_equals_plain_training(tmp_path, tok, num_negatives):
    """3 optimizer steps with GradCache (chunks of 2, owns_backward loop path) end at the plain run's weights."""
    data = _bi_data(tmp_path, tok, n=12, num_negatives=num_negatives)
    init = tiny_bert(len(tok))
    plain = BiEncoder(copy.deepcopy(init), temperature=TEMPERATURE, lr=1e-3, warmup_ratio=0.0)
    cached = BiEncoder(copy.deepcopy(init), temperature=TEMPERATURE, lr=1e-3, warmup_ratio=0.0,
                       gradcache_chunk_size=2)
    assert cached.owns_backward and not plain.owns_backward
    plain_loop = _fit(tmp_path / "plain", plain, data)
    cached_loop = _fit(tmp_path / "cached", cached, data)
    assert cached_loop.state.global_step == 3
    for (name, a), b in zip(plain.named_parameters(), cached.parameters()):
        if name.endswith("attention.self.key.bias"):
            # softmax is invariant to the key bias: its true gradient is 0, what arrives is rounding noise that
            # Adam scales up to ~lr per step, and GradCache's padding-trimmed chunks round differently
            continue
        torch.testing.assert_close(b, a, rtol=0, atol=1e-5, msg=name)
    moved = max((a - b).abs().max().item() for a, b in zip(plain.parameters(), init.parameters()))
    assert moved > 1e-3  # the runs really trained
    losses = [[h["train/loss"] for h in loop.history if "train/loss" in h] for loop in (plain_loop, cached_loop)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)


def test_bi_encoder_step_changes_every_used_parameter(tmp_path, tok):
    data = _bi_data(tmp_path, tok, num_negatives=1)
    module = BiEncoder(tiny_bert(len(tok)), temperature=TEMPERATURE, lr=1e-3, warmup_ratio=0.0)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = module.configure_optimizers()["optimizer"]
    module.training_step(data.collate(data.train_dataset), 0)["loss"].backward()
    used = {n for n, p in module.named_parameters() if p.grad is not None}
    opt.step()
    # BERT's pooler output is never used (the bi-encoder pools last_hidden_state): frozen, so DDP's reducer
    # does not wait for gradients that never come
    pooler = {n for n, _ in module.named_parameters() if ".pooler." in n}
    assert pooler and all(not p.requires_grad for n, p in module.named_parameters() if n in pooler)
    assert used == {n for n, p in module.named_parameters() if p.requires_grad}
    assert any("encoder.layer.1" in n for n in used) and any("embeddings" in n for n in used)
    for n, p in module.named_parameters():
        if n in used and "word_embeddings" not in n:  # rows of unused tokens have a zero gradient
            assert not torch.equal(p, before[n]), n


# ---------------------------------------------------------------------------------------------- cross-encoder

RERANK = [{"qid": f"g{i // 3}", "query": QUESTIONS[i // 3], "doc": ANSWERS[i % len(ANSWERS)], "label": int(i % 3 == 0)}
          for i in range(12)]


def _ce_data(tmp_path, tok, **kw):
    data = RetrievalData(write_jsonl(tmp_path / "rerank.jsonl", RERANK), task="cross_encoder", max_length=32, **kw)
    data.setup(tok)
    return data


def test_cross_encoder_bce_equals_bce_with_logits(tmp_path, tok):
    data = _ce_data(tmp_path, tok)
    batch = data.collate(data.train_dataset)
    module = CrossEncoder(tiny_bert(len(tok), cls_head=True))
    loss = module.training_step(batch, 0)["loss"]
    logits = module.score(batch["pairs"])
    assert logits.shape == (12,)
    reference = torch.nn.BCEWithLogitsLoss()(logits, batch["labels"])
    assert abs(loss.item() - reference.item()) < 1e-6
    g1 = torch.autograd.grad(loss, _trainable(module))
    g2 = torch.autograd.grad(reference, _trainable(module))
    assert _max_rel_diff(g1, g2) < 1e-6
    # grouped batches with loss=bce: the same BCE over every (query, doc) of the groups
    grouped = _ce_data(tmp_path, tok, group_size=3)
    gbatch = grouped.collate(grouped.train_dataset)
    glogits = module.score(gbatch["pairs"])
    assert module.training_step(gbatch, 0)["loss"].item() == pytest.approx(
        F.binary_cross_entropy_with_logits(glogits, gbatch["labels"]).item(), abs=1e-6)


def test_cross_encoder_listwise_equals_softmax_ce_with_target_0(tmp_path, tok):
    data = _ce_data(tmp_path, tok, group_size=3)
    batch = data.collate(data.train_dataset)
    assert batch["group_size"] == 3 and batch["labels"].view(-1, 3)[:, 0].eq(1).all()
    module = CrossEncoder(tiny_bert(len(tok), cls_head=True), loss="listwise")
    loss = module.training_step(batch, 0)["loss"]
    logits = module.score(batch["pairs"]).view(-1, 3)
    reference = F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long))
    assert abs(loss.item() - reference.item()) < 1e-6
    pointwise = _ce_data(tmp_path, tok)
    with pytest.raises(ValueError, match="group_size"):  # listwise needs groups
        module.training_step(pointwise.collate(pointwise.train_dataset[:3]), 0)
    with pytest.raises(ValueError, match="objective.loss"):
        CrossEncoder(tiny_bert(len(tok), cls_head=True), loss="hinge")


# ---------------------------------------------------------------------------------------------- validation metrics

def test_bi_encoder_validation_metrics_on_a_hand_made_case():
    """Corpus = 4 one-hot documents; query g0 has two positives (D0, D1), g1 -> D2, g2 -> D3.

    q_g0 ranks D1, D2, D3, D0 (RR 1, recall@1 1/2); q_g1 ranks D0, D2, ... (RR 1/2); q_g2 ranks D3 first.
    """
    module = BiEncoder(torch.nn.Linear(1, 1), eval_ks=(1, 10))
    module.encode = lambda inputs: inputs["emb"]  # embeddings given directly
    eye = torch.eye(4)
    q_g0 = torch.tensor([0.1, 0.8, 0.5, 0.3])
    q_g1 = torch.tensor([0.6, 0.1, 0.4, 0.2])
    q_g2 = torch.tensor([0.1, 0.2, 0.3, 0.9])
    batches = [  # the two examples of g0 in the first batch, the others in the second
        {"query": {"emb": torch.stack([q_g0, q_g0])}, "docs": {"emb": eye[[0, 1]]}, "ids": [0, 1],
         "groups": ["g0", "g0"], "doc_ids": torch.tensor([100, 101]), "positive_ids": torch.tensor([100, 101]),
         "num_negatives": 0},
        {"query": {"emb": torch.stack([q_g1, q_g2])}, "docs": {"emb": eye[[2, 3]]}, "ids": [2, 3],
         "groups": ["g1", "g2"], "doc_ids": torch.tensor([102, 103]), "positive_ids": torch.tensor([102, 103]),
         "num_negatives": 0},
    ]
    module.on_validation_start()
    for i, b in enumerate(batches):
        assert torch.isfinite(module.validation_step(b, i)["loss"])
    m = module.validation_metrics({"val/loss": 1.0})
    ndcg_g0 = (1 + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    expected = {"val/loss": 1.0, "val/recall@1": (0.5 + 0 + 1) / 3, "val/recall@10": 1.0,
                "val/mrr@1": (1 + 0 + 1) / 3, "val/mrr@10": (1 + 0.5 + 1) / 3, "val/accuracy@1": 2 / 3,
                "val/ndcg@1": (1 + 0 + 1) / 3, "val/ndcg@10": (ndcg_g0 + 1 / math.log2(3) + 1) / 3,
                "val/num_queries": 3.0, "val/num_queries_no_relevant": 0.0, "val/corpus_size": 4.0}
    assert m.keys() == expected.keys()
    for k, v in expected.items():
        assert m[k] == pytest.approx(v, abs=1e-9), k
    assert module._val == []  # cleared for the next validation


def test_cross_encoder_rerank_metrics_on_a_hand_made_case():
    """Group A: scores (.9, .1, .5), labels (0, 1, 0), grades (1, 3, 0) -> ranked 0, 2, 1: RR 1/3, acc 0,
    NDCG (exp gain) = (1 + 0 + 7/2) / (7 + 1/log2 3). Group B: the positive first: RR 1, acc 1, NDCG 1."""
    module = CrossEncoder(torch.nn.Linear(1, 1), eval_k=10)
    module.score = lambda pairs: pairs["s"]
    batches = [
        {"pairs": {"s": torch.tensor([0.9, 0.1])}, "labels": torch.tensor([0.0, 1.0]),
         "grades": torch.tensor([1.0, 3.0]), "groups": ["A", "A"], "ids": [0, 1]},
        {"pairs": {"s": torch.tensor([0.5, 0.2, 0.8])}, "labels": torch.tensor([0.0, 0.0, 1.0]),
         "grades": torch.tensor([0.0, 0.0, 2.0]), "groups": ["A", "B", "B"], "ids": [2, 3, 4]},
    ]
    module.on_validation_start()
    losses = [module.validation_step(b, i)["loss"] for i, b in enumerate(batches)]
    assert losses[0].item() == pytest.approx(F.binary_cross_entropy_with_logits(
        torch.tensor([0.9, 0.1]), torch.tensor([0.0, 1.0])).item())
    m = module.validation_metrics({})
    ndcg_a = (1 + 0 + 7 / 2) / (7 + 1 / math.log2(3))
    assert m["val/mrr@10"] == pytest.approx((1 / 3 + 1) / 2)
    assert m["val/accuracy@1"] == pytest.approx(0.5)
    assert m["val/ndcg@10"] == pytest.approx((ndcg_a + 1) / 2)
    assert m["val/num_queries"] == 2 and m["val/num_queries_no_positive"] == 0


# ---------------------------------------------------------------------------------------------- adapters

def _lora(model, task_type):
    from medlab.models.adapters import AdapterSpec

    return AdapterSpec(kind="lora", r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]).apply(
        model, task_type=task_type)


def _step_and_diff(module, batch, steps=2):
    """Changed or not after ``steps`` optimizer steps (LoRA's B starts at 0, so A moves from step 2 on)."""
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    opt = module.configure_optimizers()["optimizer"]
    for _ in range(steps):
        opt.zero_grad()
        module.training_step(batch, 0)["loss"].backward()
        opt.step()
    return {n: not torch.equal(p, before[n]) for n, p in module.named_parameters()}


def test_lora_bi_encoder_trains_only_the_adapter():
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    base = LlamaModel(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    module = BiEncoder(_lora(base, "FEATURE_EXTRACTION"), pooling="last_token", lr=1e-2, warmup_ratio=0.0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (8, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, 5:] = 0
    batch = {"query": {"input_ids": ids[:4], "attention_mask": mask[:4]},
             "docs": {"input_ids": ids[4:], "attention_mask": mask[4:]}, "num_negatives": 0,
             "positive_ids": torch.arange(4), "doc_ids": torch.arange(4), "ids": [0, 1, 2, 3]}
    changed = _step_and_diff(module, batch)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert {n for n, c in changed.items() if c} == {n for n in trainable if "lora_A" in n or "lora_B" in n}


def test_lora_cross_encoder_trains_the_adapter_and_the_score_head():
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    base = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=0, num_labels=1))
    module = CrossEncoder(_lora(base, "SEQ_CLS"), lr=1e-2, warmup_ratio=0.0)
    ids = torch.randint(1, 64, (4, 6), generator=torch.Generator().manual_seed(1))
    ids[1, 4:] = 0  # right padding: the score is read at the last real token
    batch = {"pairs": {"input_ids": ids, "attention_mask": (ids != 0).long()},
             "labels": torch.tensor([1.0, 0.0, 1.0, 0.0]), "group_size": 1, "ids": [0, 1, 2, 3]}
    changed = _step_and_diff(module, batch)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any("score" in n for n in trainable) and all("lora_" in n or "score" in n for n in trainable)
    assert {n for n, c in changed.items() if c} == trainable
