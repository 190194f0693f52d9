"""`python -m medlab.evaluate` and `python -m medlab.mine` on tiny trained runs.

The evaluate command must reproduce the run's own final validation metrics on the validation file
(same weights, same corpus, same metric code), score the untrained backbone with ``run_dir=none``,
and mining must write the top-k non-positive documents in rank order. Every README example on a trained
bi-encoder / cross-encoder run runs here end to end (all of them compose in tests/test_eval_commands.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import read_jsonl

import medlab
from medlab.assets import __file__ as assets_init
from medlab.commands.evaluate import main as evaluate_main
from medlab.commands.mine import main as mine_main
from medlab.commands.mine import mine_negatives

SAMPLE = Path(assets_init).parent / "sample"
FAST = ["model=tiny_bert", "trainer.max_steps=3", "trainer.val_every_n_steps=3", "trainer.ckpt_every_n_steps=3",
        "trainer.progress_bar=false", "logger=none", "objective.lr=1e-3", "data.limit=64"]


@pytest.fixture(scope="module")
def bi_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bi") / "run"
    return medlab.run(medlab.compose("biencoder", FAST, run_dir=str(run_dir)))


@pytest.fixture(scope="module")
def cross_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cross") / "run"
    return medlab.run(medlab.compose("reranker", FAST, run_dir=str(run_dir)))


def test_evaluate_reproduces_the_runs_validation_metrics(bi_run, capsys):
    metrics = evaluate_main([f"run_dir={bi_run.run_dir}", f"eval.path={SAMPLE / 'val_retrieval_pairs.jsonl'}"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["ndcg@10"] == pytest.approx(metrics["ndcg@10"])
    saved = json.loads((bi_run.run_dir / "eval_metrics.json").read_text())
    assert saved["weights"].endswith("step-00000003")
    for key in ("ndcg@10", "mrr@10", "recall@10", "accuracy@1"):
        assert metrics[key] == pytest.approx(bi_run.metrics[f"val/{key}"], abs=1e-6), key
    assert metrics["corpus_size"] == bi_run.metrics["val/corpus_size"] == 42


def test_evaluate_zero_shot_uses_the_untrained_backbone(bi_run, tmp_path):
    out = tmp_path / "zs.json"
    metrics = evaluate_main(["run_dir=none", "+experiment=biencoder", "model=tiny_bert", f"hydra.run.dir={tmp_path}",
                             f"eval.path={SAMPLE / 'val_retrieval_pairs.jsonl'}", f"eval.out={out}"])
    assert metrics["weights"] == "untrained backbone" and out.exists() and (tmp_path / "evaluate.log").exists()
    assert metrics["checkpoint"] is None and metrics["checkpoint_selected_by"] == "untrained"
    assert metrics["num_queries"] == 42
    assert metrics["ndcg@10"] != pytest.approx(bi_run.metrics["val/ndcg@10"], abs=1e-9)


def test_evaluate_cross_encoder_reranks_groups(cross_run):
    metrics = evaluate_main([f"run_dir={cross_run.run_dir}", f"eval.path={SAMPLE / 'val_rerank.jsonl'}"])
    assert metrics["task"] == "rerank" and metrics["num_queries"] == 42
    for key in ("ndcg@10", "mrr@10", "accuracy@1"):
        assert metrics[key] == pytest.approx(cross_run.metrics[f"val/{key}"], abs=1e-6), key


def test_evaluate_field_mapping_and_bad_file(bi_run, tmp_path):
    f = tmp_path / "custom.jsonl"
    f.write_text('{"q": "fever and cough", "p": "influenza"}\n{"q": "chest pain", "p": "angina"}\n')
    metrics = evaluate_main([f"run_dir={bi_run.run_dir}", f"eval.path={f}", "eval.fields.query=q",
                             "eval.fields.positive=p", f"eval.out={tmp_path / 'm.json'}"])
    assert metrics["corpus_size"] == 2 and metrics["recall@10"] == 1.0
    from medlab.data.errors import DataError

    with pytest.raises(DataError, match="no such column"):
        evaluate_main([f"run_dir={bi_run.run_dir}", f"eval.path={f}", "eval.fields.query=nope",
                       f"eval.out={tmp_path / 'm2.json'}"])


def test_mine_negatives_pure():
    ranked = [[5, 1, 7, 8, 9], [2, 3, 4]]
    assert mine_negatives(ranked, [{1}, {3}], k=2, skip_top=0) == [[5, 7], [2, 4]]
    assert mine_negatives(ranked, [{1}, {3}], k=2, skip_top=1) == [[7, 8], [4]]


def test_mine_writes_top_k_non_positives(bi_run, tmp_path):
    src = SAMPLE / "val_retrieval_pairs.jsonl"
    out0, out1 = tmp_path / "k2.jsonl", tmp_path / "k1_skip1.jsonl"
    s0 = mine_main([f"run_dir={bi_run.run_dir}", f"mine.path={src}", f"mine.out={out0}", "mine.k=2"])
    mine_main([f"run_dir={bi_run.run_dir}", f"mine.path={src}", f"mine.out={out1}", "mine.k=1", "mine.skip_top=1"])
    rows0, rows1 = read_jsonl(out0), read_jsonl(out1)
    assert s0["rows"] == len(rows0) == 42
    for r0, r1 in zip(rows0, rows1):
        assert len(r0["negatives"]) == 2 and r0["answer"] not in r0["negatives"]
        assert r1["negatives"] == r0["negatives"][1:2]  # skip_top drops the best-ranked non-positive
        assert r0["question"] == r1["question"]
    # the mined file trains directly with hard negatives
    result = medlab.run(medlab.compose("biencoder", FAST + [f"data.path={out0}", "data.num_negatives=2"],
                                       run_dir=str(tmp_path / "hn_run")))
    assert result.metrics["status"] == "completed"


def test_readme_examples_run_end_to_end(bi_run, cross_run, tmp_path, capsys):
    from test_eval_commands import concrete, readme_commands

    runs = {"biencoder": str(bi_run.run_dir), "reranker": str(cross_run.run_dir)}
    files = {"test_pairs.jsonl": str(SAMPLE / "val_retrieval_pairs.jsonl"),
             "pairs.jsonl": str(SAMPLE / "val_retrieval_pairs.jsonl"), "judged.jsonl": str(SAMPLE / "val_rerank.jsonl"),
             "pairs_hn.jsonl": str(tmp_path / "pairs_hn.jsonl")}
    ran = set()
    for command, args in readme_commands():
        kind = next(a for a in args if a.startswith("run_dir=")).split("/")
        if len(kind) < 3 or kind[2] not in runs:
            continue  # run_dir=none (MiniLM: the zero-shot test above uses tiny_bert) / a QA run (test_eval_commands)
        argv = concrete(args, runs, files)
        main = evaluate_main if command == "evaluate" else mine_main
        capsys.readouterr()
        out = main(argv)
        if "--cfg" in argv:
            assert out is None and "eval:" in capsys.readouterr().out
            ran.add("cfg")
            continue
        assert out["checkpoint_selected_by"] == "best" and out["checkpoint"].endswith("step-00000003"), out
        if command == "mine":
            rows = [json.loads(line) for line in Path(files["pairs_hn.jsonl"]).read_text().splitlines()]
            assert out["rows"] == len(rows) == 42 and all(len(r["negatives"]) == 5 for r in rows)
        elif kind[2] == "reranker":
            assert out["task"] == "rerank" and out["num_queries"] == 42 and out["data/train/examples"] > 42
        else:
            assert out["task"] == "retrieval" and out["ndcg@10"] == pytest.approx(bi_run.metrics["val/ndcg@10"])
        ran.add((command, kind[2]))
    assert ran == {"cfg", ("evaluate", "biencoder"), ("evaluate", "reranker"), ("mine", "biencoder")}
