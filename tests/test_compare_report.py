"""``python -m medlab.compare``: a 2-model tiny report (tiny_llama base vs a 2-step tiny SFT run) end to end --
answers, scores, statistics, plots, report.md / report.html, the answer cache -- and its user errors."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import medlab
from medlab.config import ConfigError
from medlab.evaluation import runs as runs_module
from medlab.evaluation.compare import compare_models, settings_problems
from medlab.evaluation.compare.stats import mann_whitney_u, wilcoxon_signed_rank

pytestmark = pytest.mark.usefixtures("one_thread")
PNG = b"\x89PNG\r\n\x1a\n"
LIMIT = 4


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("cmp") / "sft"
    overrides = ["trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.progress_bar=false", "logger=none",
                 "export.enabled=false", "data.limit=8"]
    return medlab.run(medlab.compose("sft", overrides, run_dir=str(run_dir))).run_dir


def _settings(run_dir, out, **extra):
    return {"models": ["tiny_llama", str(run_dir)], "labels": ["base", "sft"], "out": str(out), "limit": LIMIT,
            "max_new_tokens": 12, "relevance": {"model": "tiny_bert"}, "bootstrap": {"n_resamples": 200},
            **extra}


@pytest.fixture(scope="module")
def report(sft_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    from medlab.commands.compare import main

    summary = main([f"compare.models=[tiny_llama,{sft_run}]", "compare.labels=[base,sft]", f"compare.out={out}",
                    f"compare.limit={LIMIT}", "compare.max_new_tokens=12", "compare.relevance.model=tiny_bert",
                    "compare.bootstrap.n_resamples=200"])
    return out, summary


def test_report_files_tables_and_plots(report):
    out, summary = report
    assert [m["label"] for m in summary["models"]] == ["base", "sft"]
    assert [m["kind"] for m in summary["models"]] == ["base", "run"]
    assert summary["models"][1]["checkpoint_selected_by"] == "best" and not summary["models"][0]["cached"]
    assert summary["dimensions"] == ["accuracy", "completeness", "relevance", "readability", "safety"]
    for name in ("radar.png", "bars.png", "box.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    md = (out / "report.md").read_text()
    assert "![radar](radar.png)" in md and "## Dimension means [95% bootstrap CI]" in md and "| base |" in md
    assert "python -m medlab.compare" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "src='radar.png'" not in html  # self-contained
    first = html.split("data:image/png;base64,")[1].split("'")[0]
    assert base64.b64decode(first) == (out / "radar.png").read_bytes()
    saved = json.loads((out / "summary.json").read_text())
    assert saved["questions"]["count"] == LIMIT and saved["files"]["report_html"] == "report.html"


def test_scores_and_statistics_follow_from_the_answers(report):
    out, summary = report
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * LIMIT and {r["model"] for r in rows} == {"base", "sft"}
    for r in rows:
        for d in summary["dimensions"]:
            assert 0.0 <= r[d] <= 1.0, (d, r)
        assert "safety_flags" in r and "readability_stats" in r and r["completion_tokens"] <= 12
    means = summary["stats"]["means"]
    for m in ("base", "sft"):
        for d in summary["dimensions"]:
            vals = [r[d] for r in rows if r["model"] == m]
            assert means[m][d]["mean"] == pytest.approx(sum(vals) / len(vals))
            assert means[m][d]["ci_low"] <= means[m][d]["mean"] + 1e-12 <= means[m][d]["ci_high"] + 2e-12
    test = next(t for t in summary["stats"]["tests"] if t["dimension"] == "relevance")
    a = [r["relevance"] for r in rows if r["model"] == "base"]
    b = [r["relevance"] for r in rows if r["model"] == "sft"]
    assert test["mwu"]["pvalue"] == pytest.approx(mann_whitney_u(a, b).pvalue)
    assert test["wilcoxon"]["pvalue"] == pytest.approx(wilcoxon_signed_rank(a, b).pvalue)
    assert test["mwu"]["p_holm"] >= test["mwu"]["pvalue"]


def test_relevance_is_the_bi_encoder_cosine(report):
    out, _ = report
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    module = runs_module.load_run(None, ["+experiment=biencoder", "model=tiny_bert"], device="cpu").module
    r = next(r for r in rows if r["answer"].strip())
    enc = module.tokenizer([r["question"], r["answer"]], padding=True, truncation=True, max_length=256,
                           return_tensors="pt")
    with torch.no_grad():
        q, a = module.encode({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    cos = torch.nn.functional.cosine_similarity(q, a, dim=0).item()
    assert r["relevance_cosine"] == pytest.approx(cos, abs=1e-5)
    assert r["relevance"] == pytest.approx((cos + 1) / 2, abs=1e-5)


def test_a_rerun_reuses_the_cached_answers_and_new_settings_generate_again(report, sft_run, monkeypatch, tmp_path):
    out, first = report
    loaded = []
    real = runs_module.load_module
    monkeypatch.setattr(runs_module, "load_module",
                        lambda cfg, *a, **k: loaded.append(cfg.model.name) or real(cfg, *a, **k))
    again = compare_models(_settings(sft_run, out, relevance={"model": "none"}, plots=False))
    assert [m["cached"] for m in again["models"]] == [True, True] and loaded == []
    assert again["stats"]["means"]["sft"]["accuracy"] == first["stats"]["means"]["sft"]["accuracy"]
    changed = compare_models(_settings(sft_run, out, max_new_tokens=6, relevance={"model": "none"}, plots=False,
                                       dimensions=["accuracy", "safety"]))
    assert [m["cached"] for m in changed["models"]] == [False, False] and loaded == ["tiny_llama", "tiny_llama"]
    assert changed["dimensions"] == ["accuracy", "safety"]
    assert len(list((out / "answers").glob("*.jsonl"))) == 4


def test_settings_problems_are_reported_together(tmp_path):
    no_checkpoint = tmp_path / "run"
    no_checkpoint.mkdir()
    (no_checkpoint / "config_resolved.yaml").write_text("model: {name: tiny_llama}\n")
    specs, problems = settings_problems({"models": ["tiny_llama", "no_such_model", str(tmp_path), str(no_checkpoint)],
                                         "limit": 0,
                                         "dimensions": ["accuracy", "charm"], "labels": ["a"]})
    text = "\n".join(problems)
    assert "'no_such_model' is not a run directory" in text and f"{str(tmp_path)!r} is not a run" in text
    assert "compare.limit=0" in text and "unknown ['charm']" in text and "compare.labels has 1 names for 4" in text
    assert f"compare.models: {no_checkpoint}: no complete checkpoint" in text
    with pytest.raises(ConfigError, match="2 or more models"):
        compare_models({"models": ["tiny_llama"], "out": str(tmp_path)})


def test_missing_matplotlib_is_a_clear_config_error(monkeypatch, tmp_path, sft_run):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'medlab\[report\]'"):
        compare_models(_settings(sft_run, tmp_path))
    assert not (tmp_path / "answers").exists()  # checked before any model loads


def test_cli_prints_user_errors_alone_with_exit_code_2(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "medlab.compare", "compare.models=[tiny_llama]",
                           f"compare.out={tmp_path}"], cwd=medlab.ROOT_DIR, capture_output=True, text=True,
                          timeout=300, env=env)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "compare.models needs 2 or more models" in proc.stderr and "Traceback" not in proc.stderr


def test_llm_judge_scores_are_parsed_mapped_and_tested(report, sft_run, monkeypatch):
    """The judge's replies (here scripted, the answers come from the cache) become judge_* dimensions in [0, 1];
    a reply without a score is None in scores.jsonl, counted as a parse failure and left out of the means."""
    from medlab.evaluation.compare import answers as answers_module

    out, _ = report
    replies = iter(["correctness: 5\ncompleteness: 3\nsafety: 4\nclarity: 2", "I cannot rate this."] * LIMIT)

    def scripted(module, prompts, **kw):
        assert all("REFERENCE ANSWER:" in p and "<|im_start|>assistant" in p for p in prompts)
        return [{"answer": next(replies), "completion_tokens": 1, "truncated": False} for _ in prompts]

    monkeypatch.setattr(answers_module, "generate_answers", scripted)
    summary = compare_models(_settings(sft_run, out, relevance={"model": "none"}, dimensions=["accuracy"],
                                       llm_judge={"model": "tiny_llama"}, plots=True))
    assert summary["dimensions"] == ["accuracy", "judge_correctness", "judge_completeness", "judge_safety",
                                     "judge_clarity"]
    means = summary["stats"]["means"]
    for m in ("base", "sft"):  # every other reply scores, the rest fail
        assert means[m]["judge_correctness"]["mean"] == 1.0 and means[m]["judge_completeness"]["mean"] == 0.5
        assert means[m]["judge_clarity"]["mean"] == 0.25 and means[m]["judge_safety"]["n"] == LIMIT // 2
        assert summary["judge_parse_failures"][m]["judge_safety"] == LIMIT // 2
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    assert sum(r["judge_correctness"] is None for r in rows) == LIMIT and rows[0]["judge_raw"]
    json.loads((out / "summary.json").read_text())  # strict JSON (no NaN)
    assert (out / "bars.png").stat().st_size > 0
