"""Search tools over medlab's own retrieval models (agentic RAG)."""

from __future__ import annotations

import pytest

import medlab
from medlab.rl.search import Passage, SearchIndex, corpus_from_rows, format_hits, observed_ids, search_tool

PASSAGES = [Passage("a", "Influenza causes fever, cough and muscle aches."),
            Passage("b", "Metformin is a first-line medicine for type 2 diabetes."),
            Passage("c", "Angina is chest pain caused by reduced blood flow to the heart."),
            Passage("d", "Asthma narrows the airways and causes wheezing.")]
UNTRAINED = ["+experiment=biencoder", "model=tiny_bert"]


@pytest.fixture(scope="module")
def index():
    from medlab.evaluation import load_run  # injected: medlab.rl does not import the evaluation layer

    return SearchIndex.from_run(None, PASSAGES, load_run=load_run, overrides=UNTRAINED)


def test_exact_passage_text_is_the_top_hit(index):
    for p in PASSAGES:
        hits = index.search([p.text], k=2)[0]
        assert hits[0][0].id == p.id and hits[0][1] == pytest.approx(1.0, abs=1e-5)
        assert len(hits) == 2 and hits[0][1] >= hits[1][1]


def test_tool_formats_ids_and_rejects_bad_arguments(index):
    tool = search_tool(index, "search_text", k=2)
    out = tool.fn({"query": PASSAGES[2].text})
    assert out.splitlines()[0].startswith("[1] (id c) Angina")
    assert observed_ids([{"name": "search_text", "result": out}, {"name": "other", "result": "[1] (id z) x"}])[0] == "c"
    with pytest.raises(ValueError, match="query"):
        tool.fn({"q": "x"})
    assert tool.schema()["function"]["parameters"]["required"] == ["query"]


def test_reranker_reorders_candidates(tmp_path):
    run = medlab.run(medlab.compose("reranker", ["model=tiny_bert", "trainer.max_steps=1", "trainer.progress_bar=false",
                                                 "logger=none", "trainer.val_every_n_steps=null", "data.limit=16"],
                                    run_dir=str(tmp_path / "rr")))
    calls = []

    def loader(run_dir, overrides):  # any (run_dir, overrides) -> (cfg, module, ...) callable
        from medlab.evaluation import load_run

        calls.append(run_dir)
        return load_run(run_dir, overrides, checkpoint="latest")

    idx = SearchIndex.from_run(None, PASSAGES, load_run=loader, overrides=UNTRAINED, reranker_run=str(run.run_dir),
                               rerank_depth=4)
    assert calls == [None, str(run.run_dir)]
    hits = idx.search(["chest pain"], k=4)[0]
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True) and len(hits) == 4
    pairs = idx.reranker_data.encode_pairs(["chest pain"] * 4, [p.text for p, _ in hits], [None] * 4)
    expected = idx.reranker.score(pairs).tolist()
    assert scores == pytest.approx(expected, abs=1e-5)


def test_corpus_from_rows_dedups_and_keeps_gold():
    rows = [{"id": "r1", "contexts": ["x one two three", "y four five six"]},
            {"id": "r2", "contexts": ["x one two three", ""]}, {"id": "r3", "contexts": "z seven"}]
    passages, gold = corpus_from_rows(rows)
    assert [p.id for p in passages] == ["r1-0", "r1-1", "r3-0"]
    assert gold == [["r1-0", "r1-1"], ["r1-0"], ["r3-0"]]
    assert format_hits([]) == "No results."
    assert format_hits([(Passage("q", "w" * 50), 1.0)], max_chars=10) == "[1] (id q) wwwwwww..."
