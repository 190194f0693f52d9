"""Config and data mistakes at the command line: the message alone on stderr and in train.log, exit code 2;
HYDRA_FULL_ERROR=1 / MEDLAB_DEBUG=1 bring the traceback back."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys

import pytest

from medlab.commands.cli import USER_ERROR_EXIT, report_user_error, run_cli, user_errors_exit
from medlab.config import ConfigError
from medlab.data.errors import DataError

QUICK = ["trainer.progress_bar=false", "data.limit=16", "export.enabled=false"]


def _cli(module: str, args: list[str], cwd, **env_extra) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MEDLAB_DEBUG")}
    env.setdefault("OMP_NUM_THREADS", "1")
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def _assert_clean(proc: subprocess.CompletedProcess, message: str) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode == USER_ERROR_EXIT, out[-3000:]
    assert message in proc.stderr, out[-3000:]
    assert "Traceback" not in out and "Error executing job" not in out, out[-3000:]


def test_config_error_prints_the_problems_alone_and_logs_them(tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli("medlab", [*QUICK, "trainer.max_steps=-1", "trainer.cpu_threads=zero", f"hydra.run.dir={run_dir}"],
                tmp_path)
    _assert_clean(proc, "trainer: set trainer.max_steps or trainer.max_epochs to a positive number")
    assert "2 problem(s) in the config" in proc.stderr and "trainer.cpu_threads must be auto" in proc.stderr
    log = (run_dir / "train.log").read_text()
    assert "[ERROR]" in log and "trainer.max_steps or trainer.max_epochs" in log and "trainer.cpu_threads" in log


def test_full_error_env_shows_the_traceback(tmp_path):
    run_dir = tmp_path / "run"
    proc = _cli("medlab", [*QUICK, "trainer.max_steps=-1", f"hydra.run.dir={run_dir}"], tmp_path, HYDRA_FULL_ERROR="1")
    assert proc.returncode == USER_ERROR_EXIT, proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr and "ConfigError" in proc.stderr
    assert "trainer.max_steps or trainer.max_epochs" in proc.stderr
    assert "Traceback" in (run_dir / "train.log").read_text()


def test_data_error_during_setup(tmp_path):
    """Passes validation, fails while tokenizing: every row is longer than max_length and truncation=drop."""
    run_dir = tmp_path / "run"
    proc = _cli("medlab", [*QUICK, "trainer.max_steps=2", "data.truncation=drop", "data.max_length=4",
                           f"hydra.run.dir={run_dir}"], tmp_path)
    _assert_clean(proc, "no train examples left after tokenization")
    assert "no train examples left after tokenization" in (run_dir / "train.log").read_text()


def test_evaluate_reports_a_data_error_without_traceback(tmp_path):
    proc = _cli("medlab.evaluate", ["run_dir=none", "+experiment=biencoder", f"eval.path={tmp_path}/missing.jsonl",
                                    f"eval.out={tmp_path}/eval.json"], tmp_path)
    _assert_clean(proc, "missing.jsonl")
    assert not (tmp_path / "eval.json").exists()


def test_mine_debug_env_shows_the_traceback(tmp_path):
    proc = _cli("medlab.mine", ["run_dir=none", "+experiment=biencoder", f"mine.path={tmp_path}/missing.jsonl",
                                f"mine.out={tmp_path}/out.jsonl"], tmp_path, MEDLAB_DEBUG="1")
    assert proc.returncode == USER_ERROR_EXIT, proc.stderr[-3000:]
    assert "Traceback (most recent call last)" in proc.stderr and "DataError" in proc.stderr
    assert "missing.jsonl" in proc.stderr


# ---------------------------------------------------------------------------------------------- in process


@pytest.fixture
def file_log(tmp_path, monkeypatch):
    """A root file handler (what Hydra's job log is) plus a console handler on stdout."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("MEDLAB_DEBUG", raising=False)
    path = tmp_path / "train.log"
    file_handler = logging.FileHandler(path)
    console = logging.StreamHandler(io.StringIO())
    root = logging.getLogger()
    root.addHandler(file_handler)
    root.addHandler(console)
    try:
        yield path, console.stream
    finally:
        root.removeHandler(file_handler)
        root.removeHandler(console)
        file_handler.close()


def test_report_goes_to_stderr_and_the_log_file_only(file_log, capsys):
    path, console = file_log
    report_user_error(ConfigError(["data.path is required"]))
    err = capsys.readouterr().err
    assert err == "1 problem(s) in the config:\n  - data.path is required\n"
    assert "[ERROR]" not in err
    assert "data.path is required" in path.read_text()
    assert console.getvalue() == ""  # not a second copy on the console


@pytest.mark.parametrize("error", [ConfigError(["bad"]), DataError("bad rows")])
def test_user_errors_exit_with_code_2(file_log, capsys, error):
    with pytest.raises(SystemExit) as exc:
        with user_errors_exit():
            raise error
    assert exc.value.code == USER_ERROR_EXIT
    assert "bad" in capsys.readouterr().err


def test_other_exceptions_keep_their_traceback(file_log):
    def broken():
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_cli(broken)
    assert run_cli(lambda: 7) == 7
