"""``python -m medlab.infer``: answer questions with a trained run, an HF directory or a base model.

    python -m medlab.infer run_dir=RUN infer.question="What lowers a fever in children?"
    python -m medlab.infer run_dir=RUN infer.interactive=true             # chat: /reset clears, /exit quits
    python -m medlab.infer run_dir=RUN infer.input=questions.jsonl infer.output=answers.jsonl
    python -m medlab.infer run_dir=none model=local_hf model.path=DIR infer.question="..."   # an HF directory
    python -m medlab.infer run_dir=none model=smollm2_135m infer.question="..."             # a base model

A Hydra app (``medlab.commands.app``) with its options in ``conf/commands/infer.yaml``. The weights are the run's
best checkpoint (``infer.checkpoint=best|latest|PATH``; adapters included); prompts use the run's chat template
(``data.template``) and system prompt (``data.system_prompt``; ``infer.system_prompt`` replaces it), and the tools
of ``infer.tools`` (a JSON file or list of function schemas) for function-calling runs, whose parsed tool calls
are printed (``tool_call: name({...})``) and written to the output file. Sampling (``infer.temperature``: 0 =
greedy, ``top_p``, ``top_k``, ``max_new_tokens``, ``seed``) comes from the config.

Modes: ``infer.question`` prints one answer (streamed); ``infer.interactive=true`` reads user turns from stdin and
streams each answer, keeping the history (``/reset`` clears it, ``/exit`` or end of input quits);
``infer.input=FILE infer.output=FILE`` answers every row of a .jsonl/.json/.csv/.parquet file in batches of
``infer.batch_size`` (its ``infer.field`` column: a question string, or a list of chat messages) into JSON lines
``{"id", "question", "answer", "tool_calls"}`` with a progress bar on stderr.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, TextIO

from omegaconf import DictConfig, OmegaConf

from medlab.commands.app import require_run_dir, run_command
from medlab.config import ConfigError
from medlab.data.errors import DataError
from medlab.evaluation import choose_checkpoint, load_module
from medlab.evaluation.chat import Chat, Sampling, describe_calls, parse_tool_calls

log = logging.getLogger("medlab")
COMMAND = "infer"
RESET, EXIT = "/reset", "/exit"


def _options(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg.infer, resolve=True) if "infer" in cfg else {}


def option_problems(opts: dict[str, Any]) -> list[str]:
    modes = [m for m, on in (("infer.question", opts.get("question") not in (None, "")),
                             ("infer.interactive", bool(opts.get("interactive"))),
                             ("infer.input", bool(opts.get("input")))) if on]
    out = []
    if len(modes) != 1:
        out.append("say what to answer, exactly one of: infer.question=\"...\" | infer.interactive=true | "
                   f"infer.input=FILE infer.output=FILE (got {', '.join(modes) or 'none'})")
    if opts.get("input") and not opts.get("output"):
        out.append("infer.input needs infer.output=FILE (the JSON lines written)")
    if opts.get("input") and not Path(str(opts["input"])).exists():
        out.append(f"infer.input={opts['input']}: no such file")
    if opts.get("tools") and isinstance(opts["tools"], str) and not Path(opts["tools"]).exists():
        out.append(f"infer.tools={opts['tools']}: no such file (a JSON list of function schemas)")
    if not isinstance(opts.get("batch_size", 8), int) or opts.get("batch_size", 8) < 1:
        out.append(f"infer.batch_size={opts.get('batch_size')!r} must be an integer >= 1")
    return out + sampling_of(opts).problems()


def sampling_of(opts: dict[str, Any]) -> Sampling:
    return Sampling(max_new_tokens=opts.get("max_new_tokens", 256), temperature=opts.get("temperature", 0.0),
                    top_p=opts.get("top_p", 1.0), top_k=opts.get("top_k", 0), seed=opts.get("seed", 0))


def _tools(value: Any) -> Any:
    if not value:
        return None
    if isinstance(value, str):
        try:
            return json.loads(Path(value).read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConfigError([f"infer.tools={value}: not JSON ({e.msg}, line {e.lineno})"]) from None
    return value


def chat_for(cfg: DictConfig, module: Any, opts: dict[str, Any]) -> Chat:
    """The run's chat format: ``data.template`` / ``data.system_prompt`` unless ``infer.*`` sets them."""
    data = cfg.get("data") or {}
    template = opts.get("template") or data.get("template") or "chatml"
    system = opts.get("system_prompt") if opts.get("system_prompt") is not None else data.get("system_prompt")
    return Chat(module.model, module.tokenizer, template=str(template), system_prompt=system,
                tools=_tools(opts.get("tools")), sampling=sampling_of(opts))


def _write_calls(text: str, out: TextIO) -> None:
    for line in describe_calls(text):
        print(f"tool_call: {line}", file=out, flush=True)


def ask_one(chat: Chat, question: str, out: TextIO | None = None, stream: bool = True) -> dict[str, Any]:
    out = out or sys.stdout
    piece = (lambda t: print(t, end="", file=out, flush=True)) if stream else None
    answer = chat.reply([{"role": "user", "content": question}], on_text=piece)
    print("" if stream else answer, file=out, flush=True)
    _write_calls(answer, out)
    return {"question": question, "answer": answer, "tool_calls": parse_tool_calls(answer)[0]}


def interactive(chat: Chat, inp: TextIO | None = None, out: TextIO | None = None, stream: bool = True
                ) -> dict[str, Any]:
    """The terminal chat; returns ``{"turns": answered, "resets": n}``."""
    inp, out = inp or sys.stdin, out or sys.stdout
    print(f"medlab chat: type a message; {RESET} clears the history, {EXIT} (or end of input) quits.", file=out)
    history: list[dict] = []
    turns = resets = 0
    while True:
        print("you> ", end="", file=out, flush=True)
        line = inp.readline()
        if not line:
            print("", file=out)
            break
        text = line.strip()
        if not text:
            continue
        if text == EXIT:
            break
        if text == RESET:
            history, resets = [], resets + 1
            print("(history cleared)", file=out, flush=True)
            continue
        history.append({"role": "user", "content": text})
        print("assistant> ", end="", file=out, flush=True)
        piece = (lambda t: print(t, end="", file=out, flush=True)) if stream else None
        answer = chat.reply(history, on_text=piece)
        print("" if stream else answer, file=out, flush=True)
        _write_calls(answer, out)
        history.append({"role": "assistant", "content": answer})
        turns += 1
    return {"turns": turns, "resets": resets}


def _conversation(value: Any, where: str) -> list[dict]:
    if isinstance(value, str) and value.strip():
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) and "role" in m and "content" in m for m in value):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise DataError(f"{where}: expected a non-empty question string or a list of {{role, content}} messages, "
                    f"got {str(value)[:60]!r}")


def answer_file(chat: Chat, opts: dict[str, Any]) -> dict[str, Any]:
    """Answer every row of ``infer.input`` into ``infer.output`` (JSON lines), in batches."""
    from tqdm.auto import tqdm

    from medlab.data.readers import read_located

    read = read_located(opts["input"], limit=opts.get("limit"))
    field = str(opts.get("field") or "question")
    if field not in read.dataset.column_names:
        raise DataError(f"{opts['input']}: no column {field!r} (infer.field) among {read.dataset.column_names}")
    rows = read.dataset.to_list()
    problems, conversations = [], []
    for i, row in enumerate(rows):
        try:
            conversations.append(_conversation(row[field], f"{read.where(i)} field {field!r}"))
        except DataError as e:
            problems.append(str(e))
    if problems:
        raise DataError(f"{len(problems)} problem(s) in infer.input={opts['input']}:\n" +
                        "\n".join(f"  - {p}" for p in problems))
    out_path = Path(opts["output"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    size = int(opts.get("batch_size") or 8)
    calls = 0
    with out_path.open("w", encoding="utf-8") as f, tqdm(total=len(rows), desc="infer", unit="q",
                                                         file=sys.stderr) as bar:
        for s in range(0, len(rows), size):
            answers = chat.reply_batch(conversations[s:s + size])
            for i, answer in enumerate(answers, start=s):
                parsed = parse_tool_calls(answer)[0]
                calls += bool(parsed)
                record = {"id": rows[i].get("id", i), "question": rows[i][field], "answer": answer}
                if parsed or chat.tools:
                    record["tool_calls"] = parsed
                f.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
            bar.update(len(answers))
    log.info("%d answers -> %s", len(rows), out_path)
    return {"answered": len(rows), "output": str(out_path), "with_tool_calls": calls}


def infer(cfg: DictConfig, run_dir: Any) -> dict[str, Any]:
    """The command's body (see the module docstring)."""
    run_dir = require_run_dir(COMMAND, run_dir)
    opts = _options(cfg)
    problems = option_problems(opts)
    if problems:
        raise ConfigError(problems)
    choice = choose_checkpoint(cfg, run_dir, opts.get("checkpoint"))
    cfg, module, choice = load_module(cfg, run_dir, checkpoint=choice)
    if getattr(type(module), "head", None) != "causal_lm":
        raise ConfigError([f"{type(module).__name__} is not a generative model (head {type(module).head!r}); "
                           "python -m medlab.infer answers with causal LMs (SFT, CPT, GRPO runs, HF directories)"])
    chat = chat_for(cfg, module, opts)
    stream = bool(opts.get("stream", True))
    if opts.get("interactive"):
        return interactive(chat, stream=stream)
    if opts.get("input"):
        result = answer_file(chat, opts)
        print(json.dumps(result), flush=True)
        return result
    return ask_one(chat, str(opts["question"]), stream=stream)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """``python -m medlab.infer *argv`` in-process; raises ConfigError / DataError for the user's mistakes."""
    return run_command(COMMAND, argv, infer)


def cli() -> None:
    from medlab.commands.cli import run_cli

    run_cli(main)


if __name__ == "__main__":
    cli()
