"""trainer.cpu_threads: the resolving rule (pure), its config check, and that a run trains with it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import medlab
from medlab.config import ConfigError
from medlab.config.threads import AUTO_MAX_THREADS, cpu_threads_problems, resolve_cpu_threads


@pytest.mark.parametrize("cores,per_node,torch_default,expected", [
    (1, 1, None, 1), (2, 1, None, 1), (4, 1, None, 2), (8, 1, None, 4), (64, 1, None, AUTO_MAX_THREADS),
    (8, 2, None, 2), (2, 2, None, 1), (16, 1, 4, 2),  # torch's default (physical cores) caps the count
])
def test_auto_on_cpu_is_half_the_cores_per_process(cores, per_node, torch_default, expected):
    n, why = resolve_cpu_threads("auto", on_cpu=True, processes_per_node=per_node, env={}, cores=cores,
                                 torch_default=torch_default)
    assert n == expected and why.startswith("auto:")


@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_auto_respects_the_environment(var):
    n, why = resolve_cpu_threads("auto", on_cpu=True, env={var: "3"}, cores=16)
    assert n is None and f"{var}=3" in why


def test_auto_leaves_gpu_runs_alone_and_explicit_values_win():
    assert resolve_cpu_threads("auto", on_cpu=False, env={}, cores=16)[0] is None
    assert resolve_cpu_threads(3, on_cpu=True, env={"OMP_NUM_THREADS": "1"}, cores=2)[0] == 3
    assert resolve_cpu_threads(None, on_cpu=True, env={}, cores=16)[0] is None


@pytest.mark.parametrize("value,ok", [("auto", True), (None, True), (1, True), (12, True), (0, False), (-2, False),
                                      ("two", False), (True, False), (1.5, False)])
def test_config_check(value, ok):
    assert (cpu_threads_problems(value) == []) == ok


def test_invalid_value_is_a_config_error(tmp_path):
    cfg = medlab.compose(None, ["trainer.cpu_threads=0"], run_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="trainer.cpu_threads must be auto, null or an integer >= 1, got 0"):
        medlab.run(cfg)


def test_set_cpu_threads_auto_and_restore(tmp_path, monkeypatch, caplog):
    from medlab.commands.train import _set_cpu_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    original = torch.get_num_threads()
    cfg = medlab.compose(None, [], run_dir=str(tmp_path / "run"))
    cpu = SimpleNamespace(world_size=1, device=torch.device("cpu"))
    try:
        torch.set_num_threads(2)
        expected, _ = resolve_cpu_threads("auto", on_cpu=True, env={}, torch_default=2)
        with caplog.at_level("INFO", logger="medlab"):
            previous = _set_cpu_threads(cfg, cpu)
        assert torch.get_num_threads() == expected
        assert previous == (2 if expected != 2 else None)
        assert f"cpu threads: {expected} (auto:" in caplog.text
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        torch.set_num_threads(2)
        assert _set_cpu_threads(cfg, cpu) is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(original)


def test_run_trains_with_the_configured_threads(tmp_path):
    seen = []

    class Probe:
        def on_train_start(self):
            seen.append(torch.get_num_threads())

    original = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        cfg = medlab.compose(None, ["trainer.cpu_threads=1", "trainer.max_steps=2", "trainer.val_every_n_steps=null",
                                    "trainer.progress_bar=false", "data.limit=16", "export.enabled=false"],
                             run_dir=str(tmp_path / "run"))
        result = medlab.run(cfg, callbacks=[Probe()])
        assert seen == [1] and result.metrics["cpu_threads"] == 1
        assert torch.get_num_threads() == 2  # restored after the run (notebooks keep their own setting)
    finally:
        torch.set_num_threads(original)
