"""The package's dependency rules, enforced: layers point one way and no package has an import cycle.

The contracts live in pyproject.toml ([tool.importlinter]); a wrong-way import -- also one inside a function --
fails here with the import chain that breaks the rule. docs/ARCHITECTURE.md explains the layer order.
"""

from __future__ import annotations

import os
import subprocess
import sys

import medlab


def test_import_contracts_hold():
    code = "from importlinter.cli import lint_imports_command; lint_imports_command()"
    out = subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=medlab.ROOT_DIR, capture_output=True,
                         text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(medlab.ROOT_DIR)})
    assert out.returncode == 0 and "0 broken" in out.stdout, out.stdout[-4000:] + out.stderr[-2000:]


def test_the_package_top_level_holds_only_entry_points_and_the_lowest_layer():
    """Everything else lives in a package of its layer (commands, evaluation, config, export, objectives, rl,
    retrieval, models, data, engine, ops)."""
    top = sorted(p.name for p in medlab.PACKAGE_DIR.glob("*.py"))
    assert top == ["__init__.py", "__main__.py", "contracts.py", "evaluate.py", "mine.py", "paths.py"], top
    for shim in ("evaluate.py", "mine.py"):  # `python -m medlab.evaluate` / `medlab.mine`: entry points only
        assert len((medlab.PACKAGE_DIR / shim).read_text().splitlines()) <= 12, shim
    # `python -m medlab.infer`: a package holding only its entry point (the command is commands/infer.py)
    infer = medlab.PACKAGE_DIR / "infer"
    assert sorted(p.name for p in infer.glob("*.py")) == ["__init__.py", "__main__.py"]
    assert len((infer / "__main__.py").read_text().splitlines()) <= 12
