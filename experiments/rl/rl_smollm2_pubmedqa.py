#!/usr/bin/env python
"""GRPO or PPO with SmolLM2-135M-Instruct + LoRA on PubMedQA: held-out accuracy and format failures before and after.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/rl/rl_smollm2_pubmedqa.py --steps 12        # GRPO, CPU
    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/rl/rl_smollm2_pubmedqa.py --method ppo \
        --reward-model outputs/experiments/preference_pool_400/minilm_prior_run --steps 20               # PPO, CPU
    .venv/bin/python experiments/rl/rl_smollm2_pubmedqa.py --device cuda [--method ppo ...]               # a GPU

``--method grpo`` runs ``+experiment=grpo_lora``, ``--method ppo`` ``+experiment=ppo_lora`` (the critic a second
LoRA adapter + value head on the same frozen base; ``--G`` defaults to 1 there, ``--batch-size`` to 8), both with
``model=smollm2_135m data=pubmedqa`` and the rewards of ``conf/objective/{grpo,ppo}.yaml`` (``exact_match`` +
``format`` with ``kind=answer``; the format weight is ``--format-weight``), plus, with ``--reward-model RUN``, a
trained reward-model run (``experiments/preference/reward_models.py``) at ``--rm-weight``, on
``../shared/data/qa/pubmedqa_train.jsonl`` with the abstracts in the prompt (``data.contexts_in_prompt``) and
``data.system_prompt`` asking for ``<answer>yes|no|maybe</answer>``. ``--kl`` is GRPO's ``objective.beta`` (k3
KL term in the loss) or PPO's ``objective.kl_coef`` (per-token KL penalty in the reward). Steps are optimizer
steps (PPO: ``--ppo-epochs`` x ``--mini-batches`` per experience).

Reward-model check (``--reward-model``): before training, the reward model scores the three answers
``<answer>yes|no|maybe</answer>`` of every held-out question; the report records how often it ranks the gold
answer above a wrong one and its argmax accuracy, i.e. whether its signal is about this task at all.

Class balance (``--balance``): the training file keeps, of each gold answer, only as many rows as the rarest
answer has (each class permuted with ``--seed``), interleaved yes/no/maybe and read in that order
(``trainer.shuffle=false``), so that answering one class to everything earns exactly a third of the accuracy
reward. The held-out slice is not balanced.

Held-out slice: the rows whose rendered prompt fits ``--max-prompt-tokens`` (longer ones the data drops anyway),
permuted with ``--seed``; the first ``--val-n`` go to ``<out>/data/val.jsonl`` (never trained on), the rest to
``<out>/data/train.jsonl``. The slice is answered greedily, with the same prompt, engine and ``--eval-new-tokens``,
twice: by the untrained model (zero-shot: adapters freshly initialised, B = 0, so the base model) and by the
trained run's last checkpoint, through ``medlab.evaluation.evaluate_qa`` (what ``python -m medlab.evaluate
eval.task=qa`` runs): ``accuracy`` = the rewards' ``exact_match`` (the ``<answer>`` tag, else "answer is"/"Answer:",
else the whole completion; yes/no/maybe gold: the first such word of an explicit span, else the last),
``format_failure_rate`` = completions without exactly one non-empty ``<answer>...</answer>``.

Format bootstrap (``--demo fewshot3``): three short made-up solved examples (``DEMO_TURNS``: one yes, one no, one
maybe, each a context + question and the assistant's ``<answer>X</answer>``) go into every prompt as earlier chat
turns (``data.example_turns``), so training and both evaluations see the same prompt (``evaluate_qa`` renders the
run's data config); the held-out split is still chosen by the prompt length *without* them (the same slice as
``--demo none``), and ``data.max_prompt_length`` grows by the demonstration's tokens.

Writes ``experiments/rl/results/<method>_smollm2_pubmedqa_<tag or device>.{json,md,png}`` (the reward curve from the run's
``metrics.csv`` + before/after bars); the run itself stays under ``--out`` (outputs/, not committed).
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "qa" / "pubmedqa_train.jsonl"
RESULTS = Path(__file__).resolve().parent / "results"
# Made up for the prompt (not PubMedQA rows): the chat turns of --demo fewshot3, in the data's prompt format.
DEMO_TURNS = [
    {"role": "user", "content": "Context:\nIn a pilot study of 24 patients, a breathing exercise programme was "
     "followed by slightly lower anxiety scores, but the difference did not reach significance.\n\nQuestion: "
     "Does the breathing programme reduce anxiety?"},
    {"role": "assistant", "content": "<answer>maybe</answer>"},
    {"role": "user", "content": "Context:\nIn a trial of 400 adults, vitamin X supplements did not change the "
     "length of hospital stay after surgery compared with placebo.\n\nQuestion: Do vitamin X supplements shorten "
     "hospital stay after surgery?"},
    {"role": "assistant", "content": "<answer>no</answer>"},
    {"role": "user", "content": "Context:\nIn a randomized trial of 300 adults, daily brisk walking lowered systolic "
     "blood pressure by 6 mmHg compared with usual activity.\n\nQuestion: Does daily brisk walking lower blood "
     "pressure?"},
    {"role": "assistant", "content": "<answer>yes</answer>"},
]
DEMOS = {"none": None, "fewshot3": DEMO_TURNS}
# per device: the settings a flag does not give
PRESETS = {
    "cpu": {"steps": 12, "G": 4, "batch_size": 2, "max_new_tokens": 32, "eval_new_tokens": 32,
            "max_prompt_tokens": 512, "micro_batch_tokens": 600, "eval_batch_size": 10, "dtype": "float32"},
    "cuda": {"steps": 200, "G": 8, "batch_size": 8, "max_new_tokens": 128, "eval_new_tokens": 128,
             "max_prompt_tokens": 1024, "micro_batch_tokens": 32768, "eval_batch_size": 50, "dtype": "bfloat16"},
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--method", choices=("grpo", "ppo"), default="grpo")
    p.add_argument("--device", choices=sorted(PRESETS), default="cpu")
    p.add_argument("--steps", type=int, help="optimizer steps (trainer.max_steps)")
    p.add_argument("--minutes", type=float, help="training budget: steps = minutes * 60 / --s-per-step "
                   "(measure s/step with a --steps 2 smoke run first); overrides --steps")
    p.add_argument("--s-per-step", type=float, help="seconds per step, for --minutes")
    p.add_argument("--train-minutes", type=float, help="wall-clock cap on training: after M minutes the run is sent "
                   "SIGUSR1 (the loop checkpoints at the step boundary and stops; --steps stays the upper bound)")
    p.add_argument("--val-n", type=int, default=100)
    p.add_argument("--seed", type=int, default=0, help="the held-out slice's permutation")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--G", type=int, help="completions per prompt (objective.num_generations; PPO default 1)")
    p.add_argument("--kl", type=float, help="GRPO: objective.beta (k3 KL to the adapter-free reference in the loss; "
                   "default 0); PPO: objective.kl_coef (per-token KL penalty in the reward; default 0.05)")
    p.add_argument("--batch-size", type=int, help="prompts per experience (PPO default 8)")
    p.add_argument("--ppo-epochs", type=int, default=1, help="PPO: objective.num_ppo_epochs (passes per experience)")
    p.add_argument("--mini-batches", type=int, default=2, help="PPO: objective.num_mini_batches (optimizer steps "
                   "per pass)")
    p.add_argument("--reward-model", type=Path, help="a reward-model run dir (objective=reward_model), added to the "
                   "rewards as 'rm' at --rm-weight and checked on the held-out slice first")
    p.add_argument("--rm-weight", type=float, default=1.0)
    p.add_argument("--balance", action="store_true", help="class-balanced training file read in order "
                   "(see the module docstring)")
    p.add_argument("--max-new-tokens", type=int, help="training completions")
    p.add_argument("--eval-new-tokens", type=int, help="greedy answers of the held-out slice (before and after)")
    p.add_argument("--max-prompt-tokens", type=int, help="data.max_prompt_length (longer prompts are not used)")
    p.add_argument("--micro-batch-tokens", type=int, help="objective.micro_batch_tokens (bounds memory)")
    p.add_argument("--eval-batch-size", type=int)
    p.add_argument("--format-weight", type=float, default=0.5, help="weight of the format reward (accuracy: 1.0)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--demo", choices=sorted(DEMOS), default="none",
                   help="demonstration turns in every prompt (data.example_turns): fewshot3 = DEMO_TURNS")
    p.add_argument("--skip-before", type=Path, help="reuse the before-training metrics of this result JSON "
                   "(same slice and decoding: checked)")
    p.add_argument("--out", type=Path, default=ROOT / "outputs" / "experiments" / "rl_smollm2_pubmedqa")
    p.add_argument("--render", type=Path, help="only rewrite the .md and .png of this result JSON")
    p.add_argument("--tag", default=None, help="result file name suffix (default: the device)")
    a = p.parse_args(argv)
    if a.method == "ppo":
        a.G = 1 if a.G is None else a.G
        a.batch_size = a.batch_size or (8 if a.device == "cpu" else 32)
    if a.kl is None:
        a.kl = 0.05 if a.method == "ppo" else 0.0
    for k, v in PRESETS[a.device].items():
        if getattr(a, k, None) is None:
            setattr(a, k, v)
    if a.minutes is not None:
        if not a.s_per_step:
            p.error("--minutes needs --s-per-step (from a --steps 2 smoke run)")
        a.steps = max(1, int(a.minutes * 60 / a.s_per_step))
    per = a.ppo_epochs * a.mini_batches if a.method == "ppo" else 1
    if a.steps % per:
        p.error(f"--steps {a.steps}: PPO takes {per} optimizer steps per experience (--ppo-epochs x --mini-batches); "
                "give a multiple")
    if a.reward_model is not None and not (a.reward_model / "config_resolved.yaml").is_file():
        p.error(f"--reward-model {a.reward_model}: not a medlab run directory (no config_resolved.yaml); "
                "train one with experiments/preference/reward_models.py")
    return a


def overrides(a, train: Path, val: Path) -> list[str]:
    ov = ["model=smollm2_135m", "data=pubmedqa", f"data.path={train}", "data.val_split=0",
          f"data.max_prompt_length={a.max_prompt_tokens}", f"data.batch_size={a.batch_size}",
          f"objective.num_generations={a.G}", f"objective.max_new_tokens={a.max_new_tokens}",
          f"objective.val_max_new_tokens={a.eval_new_tokens}", f"objective.lr={a.lr}",
          f"objective.temperature={a.temperature}", f"objective.micro_batch_tokens={a.micro_batch_tokens}",
          f"objective.rewards.format.weight={a.format_weight}", f"adapter.r={a.lora_r}", f"adapter.alpha={2 * a.lora_r}",
          f"model.dtype={a.dtype}", f"trainer.max_steps={a.steps}", f"trainer.ckpt_every_n_steps={a.steps}",
          "trainer.val_every_n_steps=null", "trainer.log_every_n_steps=1", "trainer.progress_bar=false",
          "trainer.monitor=train/reward", "trainer.monitor_mode=max", "logger=csv", "export.enabled=false"]
    if a.method == "ppo":
        ov += [f"objective.kl_coef={a.kl}", f"objective.num_ppo_epochs={a.ppo_epochs}",
               f"objective.num_mini_batches={a.mini_batches}"]
    else:
        ov += [f"objective.beta={a.kl}"]
    if a.reward_model is not None:
        ov += [f"+objective.rewards.rm={{_target_:reward_model,run_dir:'{a.reward_model.resolve()}',weight:{a.rm_weight}}}"]
    if a.balance:
        ov += ["trainer.shuffle=false"]
    if a.device == "cuda":
        ov += ["strategy.precision=bf16-mixed"]
    return ov


def with_demo(cfg, a, tokenizer) -> int:
    """Put ``--demo``'s turns into ``cfg.data.example_turns``; ``data.max_prompt_length`` grows by their tokens
    (so the same rows fit). Returns that token count (0 without a demo)."""
    from omegaconf import OmegaConf, open_dict

    from medlab.evaluation import prompt_data_for

    turns = DEMOS[a.demo]
    if not turns:
        return 0
    with open_dict(cfg):
        cfg.data.example_turns = OmegaConf.create(turns)
    pd = prompt_data_for(cfg, {"path": str(DATA)})
    row = {"question": "q"}
    n = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    extra = n(pd.render(row, tokenizer=tokenizer)) - n(without_demo(pd).render(row, tokenizer=tokenizer))
    cfg.data.max_prompt_length = a.max_prompt_tokens + extra
    return extra


def without_demo(pd):
    """A copy of a `PromptData` without its demonstration turns."""
    import copy

    out = copy.copy(pd)
    out.example_turns = None
    return out


def split(cfg, tokenizer, out: Path, val_n: int, seed: int, max_prompt_tokens: int,
          balance: bool = False) -> tuple[Path, Path, dict]:
    """Rows whose prompt (rendered as in training, without demonstration turns) fits ``max_prompt_tokens``,
    permuted with ``seed``: ``val_n`` to val.jsonl, the rest to train.jsonl (the source lines unchanged;
    ``balance``: see :func:`balanced`)."""
    from medlab.evaluation import prompt_data_for

    pd = without_demo(prompt_data_for(cfg, {"path": str(DATA)}))
    pd.max_prompt_length = max_prompt_tokens
    pd.setup(tokenizer)
    fits = {str(e["fields"].get("id")) for e in pd.train_dataset}
    lines = [line for line in DATA.read_text(encoding="utf-8").split("\n") if line.strip()]
    usable = [line for line in lines if str(json.loads(line).get("id")) in fits]
    order = list(range(len(usable)))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:val_n])
    (out / "data").mkdir(parents=True, exist_ok=True)
    train_p, val_p = out / "data" / "train.jsonl", out / "data" / "val.jsonl"
    val_p.write_text("".join(usable[i] + "\n" for i in sorted(val_idx)), encoding="utf-8")
    train_lines = [usable[i] for i in range(len(usable)) if i not in val_idx]
    if balance:
        train_lines = balanced(train_lines, seed)
    train_p.write_text("".join(line + "\n" for line in train_lines), encoding="utf-8")
    gold = [json.loads(usable[i])["answer"] for i in sorted(val_idx)]
    train_gold = [json.loads(line)["answer"] for line in train_lines]
    counts = {"rows": len(lines), "fit_prompt": len(usable), "train": len(train_lines), "val": len(val_idx),
              "train_gold_shares": {k: round(train_gold.count(k) / len(train_gold), 3) for k in sorted(set(train_gold))},
              "val_ids": [json.loads(usable[i]).get("id") for i in sorted(val_idx)],
              "val_gold_shares": {k: gold.count(k) / len(gold) for k in sorted(set(gold))}}
    return train_p, val_p, counts


def balanced(lines: list[str], seed: int) -> list[str]:
    """Each gold answer's rows permuted with ``seed`` and cut to the rarest answer's count, interleaved
    (one of each answer in turn, answers in sorted order)."""
    by: dict[str, list[str]] = {}
    for line in lines:
        by.setdefault(str(json.loads(line)["answer"]), []).append(line)
    n = min(len(v) for v in by.values())
    for k, v in by.items():
        random.Random(seed).shuffle(v)
    return [by[k][i] for i in range(n) for k in sorted(by)]


def rm_check(a, val: Path) -> dict:
    """How the reward model ranks ``<answer>yes|no|maybe</answer>`` on the held-out questions (the rows' gold
    known): pairwise gold > wrong, argmax accuracy and argmax shares, and the mean score gap gold - wrong."""
    from medlab.evaluation import load_run
    from medlab.rl.reward_model import RewardModelReward

    rows = [json.loads(line) for line in val.read_text(encoding="utf-8").splitlines() if line.strip()]
    answers = ("yes", "no", "maybe")
    rm = RewardModelReward(str(a.reward_model), load_run=load_run, device=a.device)
    qs = [r["question"] for r in rows for _ in answers]
    scores = rm(qs, [f"<answer>{x}</answer>" for _ in rows for x in answers], question=qs)
    pairs = right = top_right = 0
    gaps, tops = [], {x: 0 for x in answers}
    for i, r in enumerate(rows):
        s = dict(zip(answers, scores[3 * i: 3 * i + 3]))
        top = max(answers, key=s.get)
        tops[top] += 1
        top_right += top == r["answer"]
        for x in answers:
            if x != r["answer"]:
                pairs += 1
                right += s[r["answer"]] > s[x]
                gaps.append(s[r["answer"]] - s[x])
    return {"run_dir": str(a.reward_model), "pairwise_gold_above_wrong": right / pairs,
            "argmax_accuracy": top_right / len(rows), "argmax_shares": {k: v / len(rows) for k, v in tops.items()},
            "mean_gap_gold_minus_wrong": sum(gaps) / len(gaps),
            "score_range": [min(scores), max(scores)]}


def evaluate(module, cfg, val: Path, a, samples_path: Path) -> dict:
    from medlab.evaluation import evaluate_qa

    t0 = time.perf_counter()
    records: list = []
    m = evaluate_qa(module, cfg, {"path": str(val)}, batch_size=a.eval_batch_size,
                    max_new_tokens=a.eval_new_tokens, samples=records)
    samples_path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    preds = [label(r["prediction"]) for r in records]
    common = max(set(preds), key=preds.count) if preds else ""
    return {"accuracy": m["accuracy"], "format_failure_rate": m["format_failure_rate"],
            "num_questions": m["num_questions"], "mean_completion_tokens": m["mean_completion_tokens"],
            "max_new_tokens": m["max_new_tokens"], "commonest_prediction": [common, preds.count(common) / len(preds)],
            "seconds": round(time.perf_counter() - t0, 1)}


def label(prediction) -> str:
    """The first yes / no / maybe word of an extracted answer ("other" if none): what the model answered."""
    m = re.search(r"\b(yes|no|maybe)\b", str(prediction).lower())
    return m.group(1) if m else "other"


def read_curve(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.csv"
    if not path.exists():
        return []
    keep = ("step", "train/reward", "train/reward_std", "train/rewards/accuracy/mean", "train/rewards/format/mean",
            "train/completion_length", "train/loss", "train/time/generate_s", "train/time/update_s", "train/frac_reward_zero_std",
            "train/rewards/rm/mean", "train/reward_total", "train/kl", "train/value/explained_variance", "train/value/loss")
    rows = []
    with path.open() as f:
        for r in csv.DictReader(f):
            if r.get("train/reward") not in (None, ""):
                rows.append({k: float(r[k]) for k in keep if r.get(k) not in (None, "")})
    return rows


def last_step(run_dir: Path) -> int:
    """The last optimizer step in the run's metrics.csv (PPO logs its rewards once per experience)."""
    path = run_dir / "metrics.csv"
    if not path.exists():
        return 0
    with path.open() as f:
        return max((int(float(r["step"])) for r in csv.DictReader(f) if r.get("step")), default=0)


def main(argv=None) -> None:
    a = parse_args(argv)
    if a.render:
        report = json.loads(a.render.read_text())
        a.render.with_suffix(".md").write_text(table(report) + "\n")
        plot(report, a.render.with_suffix(".png"))
        print(table(report))
        return
    torch.set_num_threads(1 if a.device == "cpu" else torch.get_num_threads())
    import medlab
    from medlab.evaluation import load_module, load_run

    out = a.out / _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    train, val = out / "data" / "train.jsonl", out / "data" / "val.jsonl"
    cfg = medlab.compose(f"{a.method}_lora", overrides(a, train, val), run_dir=str(out / "run"))
    t_load = time.perf_counter()
    base = load_module(cfg, None, checkpoint=None, device=a.device)
    demo_tokens = with_demo(cfg, a, base.module.tokenizer)
    print(f"demo: {a.demo} (+{demo_tokens} prompt tokens; data.max_prompt_length {cfg.data.max_prompt_length})",
          flush=True)
    train, val, counts = split(cfg, base.module.tokenizer, out, a.val_n, a.seed, a.max_prompt_tokens, a.balance)
    counts["demo_tokens"] = demo_tokens
    print(f"split: {json.dumps({k: v for k, v in counts.items() if k != 'val_ids'})}", flush=True)
    if a.skip_before:
        prev = json.loads(a.skip_before.read_text())
        assert prev["split"]["val_ids"] == counts["val_ids"] and prev["before"]["max_new_tokens"] == a.eval_new_tokens \
            and prev["settings"].get("demo", "none") == a.demo, f"{a.skip_before}: another held-out slice, decoding or demo"
        before = prev["before"]
    else:
        before = evaluate(base.module, cfg, val, a, out / "before_samples.jsonl")
    print(f"before: {json.dumps(before)}", flush=True)
    del base
    check = rm_check(a, val) if a.reward_model is not None else None
    if check:
        print(f"reward-model check: {json.dumps(check)}", flush=True)
    t0 = time.perf_counter()
    timer = None
    if a.train_minutes:  # the loop's own signal handling: checkpoint at the next step boundary, then stop
        import os
        import signal
        import threading

        signal.signal(signal.SIGUSR1, lambda *_: None)  # outside the loop (which installs its own): ignored
        timer = threading.Timer(a.train_minutes * 60, os.kill, (os.getpid(), signal.SIGUSR1))
        timer.daemon = True
        timer.start()
    result = medlab.run(cfg)
    if timer is not None:
        timer.cancel()
    train_s = time.perf_counter() - t0
    run_dir = Path(result.run_dir)
    loaded = load_run(str(run_dir), checkpoint="latest", device=a.device)
    after = evaluate(loaded.module, loaded.cfg, val, a, out / "after_samples.jsonl")
    print(f"after: {json.dumps(after)}", flush=True)
    curve = read_curve(run_dir)
    steps_done = last_step(run_dir) or a.steps
    report = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(a).items()},
              "split": counts, "before": before, "after": after, "curve": curve, "rm_check": check,
              "train_seconds": round(train_s, 1), "steps": steps_done,
              "seconds_per_step": round(train_s / max(steps_done, 1), 1),
              "goal_reached": after["accuracy"] >= before["accuracy"] + 0.10
              and after["format_failure_rate"] <= before["format_failure_rate"],
              "machine": machine(a.device), "command": command(), "run_dir": str(run_dir),
              "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "load_seconds": round(t0 - t_load, 1)}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / f"{a.method}_smollm2_pubmedqa_{a.tag or a.device}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    stem.with_suffix(".md").write_text(table(report) + "\n")
    plot(report, stem.with_suffix(".png"))
    print(table(report))


def machine(device: str) -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    cpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in cpu.splitlines() if line.startswith("Model name")), "?")


def command() -> str:
    return "OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python experiments/rl/rl_smollm2_pubmedqa.py " + " ".join(sys.argv[1:])


def table(r: dict) -> str:
    s, b, f = r["settings"], r["before"], r["after"]
    rows = [f"| held-out slice ({b['num_questions']} PubMedQA questions) | accuracy (exact match) | format-failure rate "
            "| commonest answer | mean completion tokens | eval seconds |", "|---|---|---|---|---|---|"]
    demo = s.get("demo", "none")
    shot = "zero-shot" if demo == "none" else f"untrained, {demo} prompt"
    method = s.get("method", "grpo").upper()
    for name, m in ((f"before ({shot}, greedy)", b), (f"after {r['steps']} {method} steps (greedy)", f)):
        rows.append(f"| {name} | {m['accuracy']:.3f} | {m['format_failure_rate']:.3f} | "
                    f"{m['commonest_prediction'][0]!r} ({m['commonest_prediction'][1]:.2f}) | "
                    f"{m['mean_completion_tokens']:.1f} | {m['seconds']:.0f} |")
    shares = ", ".join(f"{k} {v:.2f}" for k, v in r["split"]["val_gold_shares"].items())
    major, share = max(r["split"]["val_gold_shares"].items(), key=lambda kv: kv[1])
    rows.append(f"| always answering {major!r} (majority class of the slice) | {share:.3f} | - | - | - | - |")
    ppo = method == "PPO"
    rm = f" + reward model {s['rm_weight']}" if s.get("reward_model") else ""
    rows += ["", f"Settings: {method}, {r['steps']} steps x {s['batch_size']} prompts x G {s['G']}"
             + (f" ({s['ppo_epochs']} epoch(s) x {s['mini_batches']} mini-batches per experience)" if ppo else "")
             + f", lr {s['lr']}, KL {'coef (k1, in the reward)' if ppo else 'beta'} "
             f"{s['kl']}, LoRA r {s['lora_r']}, rewards exact_match 1.0 + format {s['format_weight']}{rm}, temperature "
             f"{s['temperature']}, {s['max_new_tokens']} new tokens (train) / {s['eval_new_tokens']} (eval), prompts "
             f"<= {s['max_prompt_tokens']} tokens"
             + (f" + {r['split'].get('demo_tokens')} of demonstration turns ({demo})" if demo != "none" else "")
             + f", micro_batch_tokens {s['micro_batch_tokens']}; "
             f"{r['split']['train']} training questions"
             + (" (class-balanced, in order)" if s.get("balance") else "") + f"; gold shares on the slice: {shares}.",
             f"Training {r['train_seconds']:.0f} s = **{r['seconds_per_step']:.0f} s/step** on {r['machine']} "
             f"({s['device']}); {r['date']}. Goal (accuracy >= zero-shot + 0.10, format failures not higher): "
             f"**{'reached' if r['goal_reached'] else 'not reached'}**"
             + (f", but by answering {f['commonest_prediction'][0]!r} to every question: no better than the "
                "majority class" if f["commonest_prediction"][1] >= 0.95 and f["accuracy"] <= share + 0.005 else "")
             + "."]
    c = r.get("rm_check")
    if c:
        rows += ["", f"Reward-model check on the slice ({c['run_dir']}): gold `<answer>X</answer>` scored above a "
                 f"wrong one in {c['pairwise_gold_above_wrong']:.2f} of the pairs; its argmax answer is right for "
                 f"{c['argmax_accuracy']:.2f} of the questions (shares "
                 + ", ".join(f"{k} {v:.2f}" for k, v in c["argmax_shares"].items())
                 + f"); mean score gap gold - wrong {c['mean_gap_gold_minus_wrong']:+.4f}, scores in "
                 f"[{c['score_range'][0]:.3f}, {c['score_range'][1]:.3f}]."]
    rows += ["", f"`{r['command']}`"]
    return "\n".join(rows)


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    c = r["curve"]
    steps = [x["step"] for x in c]
    for key, label in (("train/reward", "total reward"), ("train/rewards/accuracy/mean", "exact match"),
                       ("train/rewards/format/mean", "format"), ("train/rewards/rm/mean", "reward model")):
        w = r["settings"].get("rm_weight", 1.0) if key.endswith("/rm/mean") else 1.0  # its share of the total
        label = f"{label} x {w:g}" if w != 1.0 else label
        ys = [x.get(key, float("nan")) * w for x in c]
        if c and any(key in x for x in c):
            ax1.plot(steps, ys, marker="o", ms=3, label=label)
    method = r["settings"].get("method", "grpo").upper()
    ax1.set(xlabel="step", ylabel="mean over the step's completions", title=f"{method} training rewards")
    ax1.legend()
    names = ["accuracy", "format failures"]
    b = [r["before"]["accuracy"], r["before"]["format_failure_rate"]]
    f = [r["after"]["accuracy"], r["after"]["format_failure_rate"]]
    x = range(len(names))
    demo = r["settings"].get("demo", "none")
    ax2.bar([i - 0.2 for i in x], b, 0.4, label="before (zero-shot)" if demo == "none" else f"before ({demo})")
    ax2.bar([i + 0.2 for i in x], f, 0.4, label=f"after {r['steps']} steps")
    ax2.set_xticks(list(x), names)
    major, share = max(r["split"]["val_gold_shares"].items(), key=lambda kv: kv[1])
    ax2.axhline(share, color="grey", ls="--", lw=1, label=f"always {major!r}")
    ax2.set(ylim=(0, 1), title=f"held-out slice (n={r['before']['num_questions']}, greedy)")
    ax2.legend()
    fig.suptitle(f"SmolLM2-135M-Instruct + LoRA, {method} on PubMedQA")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


if __name__ == "__main__":
    main()
