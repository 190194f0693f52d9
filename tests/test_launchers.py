"""conf/hydra/launcher/slurm.yaml composes with hydra-submitit-launcher's schema and renders a valid sbatch script
(no SLURM here: submitit's own sbatch renderer is called with the launcher's settings)."""

from __future__ import annotations

import importlib

import pytest
from hydra import compose, initialize_config_dir

from medlab import CONF_DIR

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")


def _launcher(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose("train", overrides=["hydra/launcher=slurm", *overrides], return_hydra_config=True).hydra.launcher


def test_slurm_launcher_config_composes_and_renders_an_sbatch_script(tmp_path):
    from submitit.slurm.slurm import _make_sbatch_string

    lc = _launcher(["hydra.launcher.partition=gpu", "hydra.launcher.nodes=2", "hydra.launcher.tasks_per_node=4",
                    "hydra.launcher.gpus_per_node=4", "strategy=fsdp", "strategy.num_nodes=2", "strategy.devices=4"])
    module, cls = lc._target_.rsplit(".", 1)
    assert cls == "SlurmLauncher" and hasattr(importlib.import_module(module), cls)
    assert (lc.nodes, lc.tasks_per_node, lc.gpus_per_node, lc.partition) == (2, 4, 4, "gpu")
    assert lc.max_num_timeout >= 1 and lc.signal_delay_s > 0  # requeued after a time-out, signalled before it
    script = _make_sbatch_string(
        command="python -m medlab", folder=tmp_path, job_name="train", partition=lc.partition, time=lc.timeout_min,
        nodes=lc.nodes, ntasks_per_node=lc.tasks_per_node, cpus_per_task=lc.cpus_per_task,
        gpus_per_node=lc.gpus_per_node, mem=f"{lc.mem_gb}GB", signal_delay_s=lc.signal_delay_s,
        setup=["export OMP_NUM_THREADS=8"])
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --partition=gpu", "#SBATCH --time=1440", "#SBATCH --signal=USR2@120"):
        assert line in script, (line, script)


def test_a_typo_in_the_launcher_config_is_refused():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        _launcher(["hydra.launcher.gpus_per_nod=4"])
