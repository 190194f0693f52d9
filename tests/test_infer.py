"""`python -m medlab.infer`: one question, a file in batches, the interactive chat through stdin (a subprocess),
streaming, the run's chat format, tool calls, and the user's mistakes as config/data errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from helpers import read_jsonl, write_jsonl

import medlab
from medlab.config import ConfigError
from medlab.data.errors import DataError

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = ["run_dir=none", "model=tiny_llama_base"]  # warm-started on the sample corpus: it writes words


@pytest.fixture(scope="module")
def chat():
    from medlab.commands.infer import chat_for
    from medlab.evaluation import load_run

    cfg, module, _ = load_run(None, ["model=tiny_llama_base", "data.system_prompt=Answer briefly."])
    return chat_for(cfg, module, {"max_new_tokens": 10})


def test_the_prompt_uses_the_run_template_and_system_prompt(chat):
    prompt = chat.prompt([{"role": "user", "content": "Fever?"}])
    assert prompt == ("<|im_start|>system\nAnswer briefly.<|im_end|>\n<|im_start|>user\nFever?<|im_end|>\n"
                      "<|im_start|>assistant\n")


def test_streamed_pieces_make_the_answer(chat):
    pieces = []
    answer = chat.reply([{"role": "user", "content": "What helps a cough?"}], on_text=pieces.append)
    assert answer and "".join(pieces).strip() == answer
    assert len([p for p in pieces if p]) > 1  # token by token, not one print at the end


def test_single_question(capsys):
    from medlab.infer.__main__ import cli  # noqa: F401 - the entry point imports
    from medlab.commands.infer import main

    out = main([*MODEL, "infer.question=What helps a cough?", "infer.max_new_tokens=10",
                "data.system_prompt=Answer briefly."])
    printed = capsys.readouterr().out
    assert out["answer"] and out["answer"] in printed
    from medlab.commands.infer import chat_for
    from medlab.evaluation import load_run

    cfg, module, _ = load_run(None, ["model=tiny_llama_base", "data.system_prompt=Answer briefly."])
    direct = chat_for(cfg, module, {"max_new_tokens": 10}).reply([{"role": "user", "content": "What helps a cough?"}])
    assert out["answer"] == direct


def test_file_mode_answers_every_row_in_batches(tmp_path, chat):
    from medlab.commands.infer import main

    questions = ["What helps a cough?", "Is fever dangerous?", "How much water per day?"]
    rows = [{"id": f"q{i}", "question": q} for i, q in enumerate(questions)]
    rows.append({"id": "m", "question": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                                         {"role": "user", "content": "Is fever dangerous?"}]})
    src = write_jsonl(tmp_path / "q.jsonl", rows)
    dst = tmp_path / "out" / "answers.jsonl"
    result = main([*MODEL, f"infer.input={src}", f"infer.output={dst}", "infer.batch_size=3",
                   "infer.max_new_tokens=10", "data.system_prompt=Answer briefly."])
    got = read_jsonl(dst)
    assert result["answered"] == 4 and [r["id"] for r in got] == ["q0", "q1", "q2", "m"]
    # batched answers (left-padded) equal one-at-a-time greedy answers, the message list included
    for r in got:
        conv = r["question"] if isinstance(r["question"], list) else [{"role": "user", "content": r["question"]}]
        assert r["answer"] == chat.reply(conv), r["id"]


def test_file_mode_names_bad_rows(tmp_path):
    from medlab.commands.infer import main

    src = write_jsonl(tmp_path / "q.jsonl", [{"question": "ok"}, {"question": ""}, {"question": 3}])
    with pytest.raises(DataError) as err:
        main([*MODEL, f"infer.input={src}", f"infer.output={tmp_path / 'a.jsonl'}"])
    assert "2 problem(s)" in str(err.value) and "line 2" in str(err.value) and "line 3" in str(err.value)


def test_mode_and_sampling_mistakes_are_config_errors():
    from medlab.commands.infer import main

    with pytest.raises(ConfigError) as err:
        main([*MODEL, "infer.question=hi", "infer.interactive=true", "infer.temperature=-1", "infer.top_p=0"])
    text = str(err.value)
    assert "exactly one of" in text and "infer.temperature=-1" in text and "infer.top_p=0" in text


class _Scripted:
    """A Chat stand-in: records the conversations it is asked and answers from a script."""

    def __init__(self, answers):
        self.answers, self.seen, self.tools = list(answers), [], None

    def reply(self, messages, on_text=None):
        self.seen.append([dict(m) for m in messages])
        answer = self.answers.pop(0)
        if on_text:
            for word in answer.split(" "):
                on_text(word + " ")
        return answer


def test_interactive_history_reset_and_tool_calls():
    from medlab.commands.infer import interactive

    call = '<tool_call>\n{"name": "get_dose", "arguments": {"drug": "ibuprofen"}}\n</tool_call>'
    bot = _Scripted(["one", call, "three"])
    out = io.StringIO()
    result = interactive(bot, io.StringIO("first\nsecond\n/reset\nthird\n/exit\nnever read\n"), out)
    assert result == {"turns": 3, "resets": 1}
    assert [len(s) for s in bot.seen] == [1, 3, 1]  # history kept, then cleared by /reset
    assert bot.seen[1][1] == {"role": "assistant", "content": "one"}
    text = out.getvalue()
    assert 'tool_call: get_dose({"drug": "ibuprofen"})' in text and "(history cleared)" in text


def test_interactive_chat_through_stdin(tmp_path):
    """The real command in a subprocess: two turns, /reset, a third turn, /exit; tokens streamed to stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(medlab.ROOT_DIR)}
    proc = subprocess.run([sys.executable, "-m", "medlab.infer", *MODEL, "infer.interactive=true",
                           "infer.max_new_tokens=8", f"hydra.run.dir={tmp_path}"],
                          input="What helps a cough?\nAnd a fever?\n/reset\nWhat helps a cough?\n/exit\n",
                          capture_output=True, text=True, timeout=600, cwd=medlab.ROOT_DIR, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if "assistant> " in line]
    answers = [line.split("assistant> ", 1)[1] for line in lines]
    assert len(answers) == 3 and "(history cleared)" in proc.stdout
    assert answers[0].strip() and answers[0] == answers[2]  # after /reset the same question gets the same answer
