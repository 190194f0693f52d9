"""`python -m medlab.evaluate` / `python -m medlab.mine` as Hydra apps: composition (`--cfg job`, every README
example), errors (exit code 2), the best vs the latest checkpoint, QA evaluation of a run, and the layering
(`medlab.rl` and `medlab.evaluation` never import a command).

The retrieval commands run end to end on tiny trained runs in tests/test_retrieval_cli.py.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import write_jsonl
from omegaconf import OmegaConf

import medlab
from medlab.commands.app import compose_command
from medlab.config import ConfigError
from medlab.engine import checkpoint as ckpt
from medlab.evaluation import given, prompt_data_for, retrieval_data, select_checkpoint

README = (medlab.ROOT_DIR / "README.md").read_text(encoding="utf-8")
SAMPLE = medlab.ASSETS_DIR / "sample"
QA_FILE = SAMPLE / "qa_mc_val.jsonl"
PLACEHOLDER = re.compile(r"<\w+>|/data/|\.\.\.|\bRUN\b|\bFILE\b")
# the README's inline QA fragment (GRPO section), completed with the keys its sentence says it takes
QA_ZERO_SHOT = "run_dir=none +experiment=grpo_qlora model=..."


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


# ---------------------------------------------------------------------------------------------- README examples
def readme_commands() -> list[tuple[str, list[str]]]:
    """``(command, args)`` of every ``python -m medlab.evaluate|mine ...`` the README shows (code blocks and
    inline code; continuation lines joined, comments dropped)."""
    out = []
    for command, args in re.findall(r"python -m medlab\.(evaluate|mine) ((?:[^\n\\`]|\\\n)*)", README):
        args = args.replace("\\\n", " ").split(" #", 1)[0].split()
        if args:
            out.append((command, args))
    return out


def concrete(args: list[str], runs: dict[str, str], files: dict[str, str]) -> list[str]:
    """A README command line with its placeholders replaced: run dirs by kind (``<run>`` of biencoder /
    reranker, ``RUN`` = a QA run), ``/data/NAME`` by ``files[NAME]``, ``FILE`` by the QA file, optional
    ``[...]`` parts resolved (``[eval.limit=N]`` -> ``eval.limit=2``, ``[eval.fields.*]`` dropped)."""
    out = []
    for arg in args:
        if arg.startswith("[") and arg.endswith("]"):
            if "*" in arg:
                continue
            arg = arg[1:-1]
        key, sep, value = arg.partition("=")
        if key == "run_dir" and value != "none":
            value = runs["qa" if value == "RUN" else value.split("/")[2]]
        elif value.startswith("/data/"):
            value = files[value.rsplit("/", 1)[1]]
        elif value == "FILE":
            value = files["qa"]
        elif value == "N":
            value = "2"
        elif key == "model" and value == "...":
            value = "tiny_llama"
        arg = f"{key}={value}" if sep else arg
        assert not PLACEHOLDER.search(arg), arg
        out.append(arg)
    return out


def fake_run(tmp_path: Path, experiment: str, overrides: list[str] = ()) -> str:
    """A directory holding just the ``config_resolved.yaml`` a run of ``experiment`` writes (enough to compose)."""
    run = tmp_path / experiment
    cfg = medlab.compose(experiment, list(overrides), run_dir=str(run))
    run.mkdir(parents=True)
    (run / "config_resolved.yaml").write_text(OmegaConf.to_yaml(OmegaConf.to_container(cfg, resolve=True)))
    return str(run)


def readme_files(tmp_path: Path) -> dict[str, str]:
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"question": f"q{i} fever", "answer": f"a{i} rest"} for i in range(6)])
    judged = write_jsonl(tmp_path / "judged.jsonl", [
        {"question": f"What treats condition {q}?", "answer": f"Treatment {q}-{k}.", "judgment": 4 - k, "qid": f"q{q}"}
        for q in range(4) for k in range(3)])
    return {"test_pairs.jsonl": str(pairs), "pairs.jsonl": str(pairs), "judged.jsonl": str(judged),
            "pairs_hn.jsonl": str(tmp_path / "pairs_hn.jsonl"), "qa": str(QA_FILE)}


def test_every_readme_example_composes_and_its_data_validates(tmp_path):
    commands = readme_commands()
    seen = {(c, next(a for a in args if a.startswith("run_dir="))) for c, args in commands}
    assert ("evaluate", "run_dir=none") in seen and ("mine", "run_dir=outputs/runs/biencoder/<run>") in seen
    assert any("eval.task=qa" in args for _, args in commands) and QA_ZERO_SHOT in README
    commands.append(("evaluate", QA_ZERO_SHOT.split() + ["eval.task=qa", "eval.path=FILE", "[eval.limit=N]"]))
    runs = {"biencoder": fake_run(tmp_path, "biencoder"), "reranker": fake_run(tmp_path, "reranker"),
            "qa": fake_run(tmp_path, "grpo_lora"), "reward_model": fake_run(tmp_path, "reward_model"),
            "dpo": fake_run(tmp_path, "dpo")}
    files = readme_files(tmp_path)
    for command, args in commands:
        argv = concrete(args, runs, files)
        cfg = compose_command(command, argv)
        section = cfg[{"evaluate": "eval", "mine": "mine"}[command]]
        declared = OmegaConf.load(medlab.CONF_DIR / "commands" / f"{command}.yaml")
        for arg in argv:  # every option the README shows is a declared one (Hydra refuses the others anyway)
            key = arg.split("=", 1)[0]
            if key.startswith(("eval.", "mine.")):
                assert OmegaConf.select(declared, key, default="absent") != "absent", (command, key)
        assert cfg.hydra.job.name == command and cfg.hydra.output_subdir is None
        run_dir = next(a.split("=", 1)[1] for a in argv if a.startswith("run_dir="))
        if run_dir != "none":
            assert cfg.hydra.run.dir == str(Path(run_dir).resolve()), argv  # the log goes into the run
            assert cfg.paths.run_dir == str(Path(run_dir).resolve())  # the run's own config is the base
        else:
            assert cfg.hydra.run.dir.startswith(f"outputs/{'eval' if command == 'evaluate' else 'mine'}/")
        options = given(section)
        if command == "mine":  # what mine hands to the data: the file and the field mapping
            options = {k: v for k, v in options.items() if k in ("path", "fields")}
        if options.get("task") == "qa":
            assert prompt_data_for(cfg, options).validate() == [], argv
            continue
        if options.get("task") == "toolcall":  # held-out tool-call conversations (tests/test_toolcall_eval.py)
            from medlab.evaluation import toolcall_data

            assert toolcall_data(cfg, options).validate() == [], argv
            continue
        if Path(run_dir).name in ("reward_model", "dpo"):  # preference pairs (tests/test_reward_model.py, test_dpo.py)
            from medlab.evaluation import preference_data

            assert preference_data(cfg, options).validate() == [], argv
            continue
        task = "rerank" if "reranker" in run_dir else "retrieval"
        data = retrieval_data(cfg, options, task)
        assert data.validate() == [], (argv, data.validate())
        if command == "evaluate" and "reranker" in run_dir:
            assert data.score_range == [1, 4] and data.label_threshold == 3 and data.fields["group"] == "qid"


def test_run_dir_none_composes_the_training_groups_and_experiment():
    cfg = compose_command("evaluate", ["run_dir=none", "+experiment=biencoder", "model=tiny_bert", "eval.path=x",
                                       "eval.score_range=[1,4]", "trainer.monitor=val/mrr@10"])
    assert cfg.name == "biencoder" and cfg.model.name == "tiny_bert"
    assert cfg.objective._target_.endswith("BiEncoder") and cfg.trainer.monitor == "val/mrr@10"
    assert list(cfg.eval.score_range) == [1, 4] and cfg.eval.checkpoint == "best" and cfg.run_dir == "none"
    mine = compose_command("mine", ["run_dir=none", "+experiment=biencoder", "mine.path=x", "mine.out=y"])
    assert mine.mine.k == 5 and mine.hydra.job.name == "mine"
    with pytest.raises(Exception, match="eval.pth"):  # a typo'd option is refused, as in training
        compose_command("evaluate", ["run_dir=none", "eval.pth=x"])


def test_run_mode_takes_the_runs_config_and_plain_overrides_only(tmp_path):
    run = fake_run(tmp_path, "biencoder", ["model=tiny_bert", "data.query_prefix=q: "])
    cfg = compose_command("evaluate", [f"run_dir={run}", "eval.path=x", "data.max_length=32", "+eval.append_eos=true"])
    assert cfg.model.name == "tiny_bert" and cfg.data.query_prefix == "q: " and cfg.data.max_length == 32
    assert cfg.eval.append_eos is True and cfg.hydra.run.dir == str(Path(run).resolve())
    for bad in (["model=minilm"], ["+experiment=biencoder"], ["~data.fields"]):
        with pytest.raises(ConfigError, match="only key=value overrides apply"):
            compose_command("evaluate", [f"run_dir={run}", "eval.path=x", *bad])
    with pytest.raises(Exception, match="model.pathz"):  # a key the run's config does not have
        compose_command("evaluate", [f"run_dir={run}", "eval.path=x", "model.pathz=y"])
    with pytest.raises(ConfigError, match="no such directory"):
        compose_command("mine", [f"run_dir={tmp_path}/nope", "mine.path=x"])
    with pytest.raises(ConfigError, match="not a medlab run directory"):
        compose_command("mine", [f"run_dir={tmp_path}", "mine.path=x"])


# ---------------------------------------------------------------------------------------------- real CLI
def _cli(module: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MEDLAB_DEBUG")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_cfg_job_and_config_errors_exit_2(tmp_path):
    run = fake_run(tmp_path, "biencoder", ["model=tiny_bert"])
    proc = _cli("medlab.evaluate", ["--cfg", "job", f"run_dir={run}", "eval.path=x.jsonl", "model.path=/m"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    shown = OmegaConf.create(proc.stdout)
    assert shown.eval.path == "x.jsonl" and shown.model.path == "/m" and shown.name == "biencoder"
    assert not (Path(run) / ".hydra").exists() and not (tmp_path / "outputs").exists()  # --cfg writes nothing
    for module, args, message in (
        ("medlab.evaluate", [f"run_dir={tmp_path}/missing_run", "eval.path=x"], "missing_run: no such directory"),
        ("medlab.mine", [f"run_dir={run}", "mine.path=x", "mine.out=y"], "no complete checkpoint"),
        ("medlab.evaluate", [f"run_dir={run}"], "eval.path is required"),
    ):
        proc = _cli(module, args, tmp_path)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 2, out[-3000:]
        assert message in proc.stderr and "Traceback" not in out and "Error executing job" not in out, out[-3000:]
    assert "eval.path is required" in (Path(run) / "evaluate.log").read_text()  # the error is in the run's log


# ---------------------------------------------------------------------------------------------- best vs latest
@pytest.fixture(scope="module")
def sft_run(tmp_path_factory):
    """4 steps, validated and checkpointed every step; monitor_mode=max on val/loss makes the best step an early
    one (the loss falls), not the last."""
    run_dir = tmp_path_factory.mktemp("sft") / "run"
    overrides = ["trainer.max_steps=4", "trainer.val_every_n_steps=1", "trainer.ckpt_every_n_steps=1",
                 "trainer.keep_last_k=10", "trainer.monitor_mode=max", "trainer.log_every_n_steps=1",
                 "trainer.progress_bar=false", "logger=none", "export.enabled=false", "data.limit=16"]
    result = medlab.run(medlab.compose("sft", overrides, run_dir=str(run_dir)))
    assert result.metrics["best_step"] not in (None, 4), result.metrics
    return result


def _weights(path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(Path(path) / ckpt.MODEL_FILE))


def test_best_latest_and_explicit_checkpoint_selection(sft_run, tmp_path):
    best_step = sft_run.metrics["best_step"]
    best = select_checkpoint(sft_run.run_dir, "best", monitor="val/loss", monitor_mode="max")
    assert best.selected_by == "best" and best.step == best_step and f"at step {best_step}" in best.note
    latest = select_checkpoint(sft_run.run_dir, "latest")
    assert latest.selected_by == "latest" and latest.step == 4
    named = select_checkpoint(sft_run.run_dir, "step-00000003")
    assert named.selected_by == "path" and named.step == 3
    with pytest.raises(ConfigError, match="step-00000099"):
        select_checkpoint(sft_run.run_dir, "step-00000099")
    # without metrics.json (a run that crashed after its last checkpoint) the checkpoints' loop state says it
    copy = tmp_path / "copy"
    shutil.copytree(sft_run.run_dir, copy)
    (copy / "metrics.json").unlink()
    assert select_checkpoint(copy, "best").step == best_step
    # keep_last_k deleted the best: the latest, and the note says why
    shutil.rmtree(copy / "checkpoints" / ckpt.step_dir_name(best_step))
    fallback = select_checkpoint(copy, "best", monitor="val/loss")
    assert fallback.selected_by == "latest_fallback" and fallback.step == 4
    assert f"step {best_step}" in fallback.note and "keep_last_k" in fallback.note


def test_evaluate_qa_on_a_run_loads_the_best_checkpoint_unless_told(sft_run, tmp_path):
    from medlab.evaluate import main as evaluate_main
    from medlab.evaluation import load_run

    best_step = sft_run.metrics["best_step"]
    # the README's QA line (`run_dir=RUN eval.task=qa eval.path=FILE eval.limit=N`), answers kept short
    args = [f"run_dir={sft_run.run_dir}", "eval.task=qa", f"eval.path={QA_FILE}", "eval.limit=2",
            "eval.max_new_tokens=3"]
    handlers = list(logging.getLogger().handlers)
    metrics = evaluate_main([*args, f"eval.out={tmp_path / 'best.json'}"])
    assert logging.getLogger().handlers == handlers  # Hydra's job logging is closed again: the caller's is back
    logging.getLogger("medlab").warning("a later record")
    assert "a later record" not in (sft_run.run_dir / "evaluate.log").read_text()
    assert metrics["task"] == "qa" and metrics["num_questions"] == 2 and metrics["max_new_tokens"] == 3
    assert metrics["checkpoint_selected_by"] == "best"
    assert metrics["checkpoint"].endswith(ckpt.step_dir_name(best_step))
    assert json.loads((tmp_path / "best.json").read_text())["checkpoint"] == metrics["checkpoint"]
    assert f"[best: best val/loss (max)" in (sft_run.run_dir / "evaluate.log").read_text()
    latest = evaluate_main([*args, "eval.checkpoint=latest", f"eval.out={tmp_path / 'latest.json'}"])
    assert latest["checkpoint_selected_by"] == "latest" and latest["checkpoint"].endswith(ckpt.step_dir_name(4))
    # the module really holds that checkpoint's weights
    cfg, module, choice = load_run(str(sft_run.run_dir))
    saved = _weights(choice.path)
    params = dict(module.named_parameters())
    assert saved and all(torch.equal(params[n].detach().cpu(), t) for n, t in saved.items())
    assert not all(torch.equal(saved[n], t) for n, t in _weights(latest["checkpoint"]).items())


# ---------------------------------------------------------------------------------------------- checkpoints
def test_prune_keeps_protected_steps(tmp_path):
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    root = tmp_path / "checkpoints"
    for step in range(1, 6):
        ckpt.save_checkpoint(root, step, model=model, optimizer=opt, loop_state={"best_step": 2}, keep_last=2,
                             protect=(2,))
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(root)] == [2, 4, 5]
    assert ckpt.read_loop_state(root / "step-00000005") == {"best_step": 2}
    other = torch.nn.Linear(2, 2)
    ckpt.load_trainable(other, root / "step-00000005")
    assert torch.equal(other.weight, model.weight)
