"""notebooks/compare_runs.ipynb runs end to end: two tiny SFT runs, their comparison report, the plots displayed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "compare_runs.ipynb"


def test_compare_notebook_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDLAB_NB_STEPS", "1,3")
    monkeypatch.setenv("MEDLAB_NB_LIMIT", "3")
    monkeypatch.setenv("MEDLAB_NB_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("MEDLAB_NB_OVERRIDES", "data.limit=8")
    monkeypatch.setenv("MEDLAB_NB_RELEVANCE", "tiny_bert")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]

    (study,) = (tmp_path / "runs" / "compare_runs").iterdir()
    summary = json.loads((study / "report" / "summary.json").read_text())
    assert [m["label"] for m in summary["models"]] == ["sft_1steps", "sft_3steps"]
    assert summary["questions"]["count"] == 3 and (study / "report" / "report.html").stat().st_size > 0
    images = [o for o in outputs if o.output_type == "display_data" and "image/png" in o.get("data", {})]
    assert len(images) == 3  # radar, bars, box
    html = [o["data"]["text/html"] for o in outputs
            if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert any("sft_3steps" in h and "accuracy" in h for h in html)  # the means table
