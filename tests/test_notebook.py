"""The ablation notebook runs end to end (tiny settings through its environment parameters)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "ablation_lora_rank.ipynb"
RANKS = [2, 8]


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(not c.outputs and c.execution_count is None for c in code)
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell holds the parameters"


def test_ablation_notebook_executes(tmp_path, monkeypatch):
    # The kernel inherits this environment (MEDLAB_CACHE_DIR too, from conftest).
    monkeypatch.setenv("MEDLAB_NB_MAX_STEPS", "8")
    monkeypatch.setenv("MEDLAB_NB_RANKS", ",".join(map(str, RANKS)))
    monkeypatch.setenv("MEDLAB_NB_RUN_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("MEDLAB_NB_OVERRIDES", "data.limit=32 export.enabled=false")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # tiny matmuls: threads only contend on a busy CPU

    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    errors = [o for o in outputs if o.output_type == "error"]
    assert not errors, [f"{e.ename}: {e.evalue}" for e in errors]

    # One study dir with a run dir per rank, the table and the figure.
    (study,) = (tmp_path / "runs" / "ablation_lora_rank").iterdir()
    for r in RANKS:
        metrics = json.loads((study / f"r{r}" / "metrics.json").read_text())
        assert metrics["global_step"] == 8 and metrics["status"] == "completed"
    pd = pytest.importorskip("pandas")
    table = pd.read_csv(study / "ablation_lora_rank.csv", index_col="rank")
    assert list(table.index) == RANKS
    assert {"train/loss", "val/loss", "val/ppl", "trainable_params", "train_seconds"} <= set(table.columns)
    assert table["trainable_params"].is_monotonic_increasing  # LoRA size grows with r
    assert (study / "ablation_lora_rank.png").stat().st_size > 0

    # The table is displayed (one row per rank) and the figure is an inline image.
    html = [o for o in outputs if o.output_type == "execute_result" and "text/html" in o.get("data", {})]
    assert html and all(f"<th>{r}</th>" in html[-1]["data"]["text/html"] for r in RANKS)
    assert any("image/png" in o.get("data", {}) for o in outputs if o.output_type == "display_data")
