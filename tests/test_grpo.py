"""GRPO end to end: experiments, mu inner iterations, exact resume, reference KL, reward failures, prompt data,
QA evaluation, and a learning test on a verifiable toy task."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import cpu_fabric, pad_collate, read_jsonl, run_experiment, tiny_llama, toy_examples, write_jsonl

import medlab
from medlab.data.errors import DataError
from medlab.engine.loop import Loop, LoopConfig
from medlab.objectives.causal_lm import CausalLM
from medlab.objectives.grpo import GRPOPolicy
from medlab.rl.data import PromptData, collate_prompts

SAMPLE_TRAIN = str(medlab.ASSETS_DIR / "sample" / "qa_mc_train.jsonl")
SAMPLE_VAL = str(medlab.ASSETS_DIR / "sample" / "qa_mc_val.jsonl")
# Small and fast: 2 prompts x 4 completions x 8 tokens per experience, one validation batch.
FAST = ["objective.num_generations=4", "objective.max_new_tokens=8", "data.batch_size=2", "data.val_batch_size=8",
        "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "trainer.progress_bar=false", "logger=none",
        "export.enabled=false"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py: one torch thread for this module


# ---------------------------------------------------------------------------------------------- toy rewards
def latin_fraction(prompts, completions, **_):
    """Verifiable toy task "answer in English": the fraction of the completion's letters that are Latin."""
    out = []
    for c in completions:
        letters = [ch for ch in c if ch.isalpha()]
        out.append(sum(ch.isascii() for ch in letters) / len(letters) if letters else 0.0)
    return out


def flaky(prompts, completions, fail=None, **_):
    """Raises for rows marked fail="raise", returns NaN for fail="nan", else 1.0."""
    out = []
    for f in fail:
        if f == "raise":
            raise RuntimeError("reward backend down")
        out.append(math.nan if f == "nan" else 1.0)
    return out


TOY = f"{__name__}.latin_fraction"


def _toy_rewards() -> list[str]:
    return ["~objective.rewards", f"+objective.rewards={{toy: {{_target_: {TOY}}}}}"]


def _run(tmp_path, experiment, overrides=(), callbacks=None, run_dir=None):
    return run_experiment(experiment, FAST + list(overrides), run_dir or tmp_path / "run", callbacks=callbacks)


def _options(row) -> dict:
    return row["options"] if isinstance(row["options"], dict) else dict(zip("ABCDE", row["options"]))


def _rows(history, key):
    return {h["step"]: h[key] for h in history if key in h}


# ---------------------------------------------------------------------------------------------- experiments
@pytest.mark.parametrize("experiment", ["grpo", "grpo_lora", "grpo_qlora"])
def test_experiments_compose_and_validate(experiment):
    from medlab.config.validate import collect_problems

    cfg = medlab.compose(experiment, run_dir="/tmp/unused")
    assert cfg.objective._target_.endswith("GRPOPolicy") and cfg.data._target_.endswith("PromptData")
    assert cfg.objective.num_generations == 8 and cfg.objective.epsilon == 0.2
    assert collect_problems(cfg) == []


def test_grpo_qlora_runs_end_to_end_and_logs_step_metrics(tmp_path, monkeypatch):
    import medlab.commands.train as R

    seen = {}
    original = R.Loop.fit

    def fit(self, module, *a, **k):
        seen["4bit"] = any(p.dtype == torch.uint8 for p in module.model.parameters())
        return original(self, module, *a, **k)

    monkeypatch.setattr(R.Loop, "fit", fit)
    result = _run(tmp_path, "grpo_qlora", ["trainer.max_steps=2", "trainer.val_every_n_steps=null",
                                           "logger=csv", "export.enabled=true"])
    assert seen["4bit"]
    m = result.metrics
    assert m["status"] == "completed" and m["global_step"] == 2
    for key in ("val/reward", "val/accuracy", "val/format_failure_rate", "val/completion_length"):
        assert key in m and math.isfinite(m[key]), key
    assert float(result) == m["val/reward"]  # monitor: val/reward (max)
    row = next(h for h in result.history if h["step"] == 1 and "train/loss" in h)
    for key in ("reward", "reward_std", "rewards/accuracy/mean", "rewards/format/failures", "frac_reward_zero_std",
                "adv/abs_mean", "kl", "clip_ratio/region_mean", "completions/mean_length",
                "completions/max_length", "completions/truncated_frac", "time/generate_s", "time/update_s",
                "rollout/tokens_per_s"):
        assert f"train/{key}" in row, key
    assert row["train/kl"] == 0.0  # LoRA starts as a zero update: policy == reference (adapters disabled)
    assert row["train/time/generate_s"] > 0 and row["train/time/update_s"] > 0
    header = (result.run_dir / "metrics.csv").read_text().splitlines()[0].split(",")
    assert "train/reward" in header and "val/accuracy" in header
    assert (result.run_dir / "export" / "adapter_config.json").exists()


# ---------------------------------------------------------------------------------------------- mu iterations
class Recorder:
    def __init__(self):
        self.batches, self.optimizer_steps = [], 0

    def on_train_batch_start(self, batch, idx):
        self.batches.append(batch)

    def on_before_optimizer_step(self, optimizer):
        self.optimizer_steps += 1


def test_mu_two_makes_two_optimizer_steps_per_experience_with_the_same_rollouts(tmp_path):
    rec = Recorder()
    result = _run(tmp_path, "grpo", ["objective.num_iterations=2", "trainer.max_steps=null", "trainer.max_epochs=1",
                                     "trainer.limit_train_batches=2", "trainer.ckpt_every_n_steps=1",
                                     "trainer.keep_last_k=10", "trainer.val_every_n_steps=null", *_toy_rewards()],
                  callbacks=[rec])
    assert result.metrics["global_step"] == 4  # 2 loader batches x mu=2 (the loop's step count knows mu)
    assert rec.optimizer_steps == 4 and len(rec.batches) == 4
    b = rec.batches
    assert b[0] is b[1] and b[2] is b[3] and b[1] is not b[2]  # iterations reuse the stored experience
    assert torch.equal(b[0]["completion_ids"], b[1]["completion_ids"])
    assert "old_logps" in b[0] and "ref_logps" in b[0]  # mu > 1 stores old log-probs; beta > 0 the reference
    ratio = _rows(result.history, "train/ratio/mean")
    assert ratio[1] == pytest.approx(1.0, abs=1e-5)  # iteration 1: policy == old policy
    assert abs(ratio[2] - 1.0) > 1e-5  # iteration 2 after an update: the stored old log-probs are used
    kl = _rows(result.history, "train/kl")
    assert kl[1] == 0.0 and kl[4] > 0  # full fine-tune: the frozen copy made at fit start is the reference
    steps = sorted(int(p.name.split("-")[1]) for p in (result.run_dir / "checkpoints").glob("step-*"))
    assert steps == [2, 4]  # ckpt_every_n_steps=1, but checkpoints wait for the experience boundary


class ThreeWindowExperience(CausalLM):
    """A loop-level RL stand-in: each loader batch becomes 3 windows (optimizer steps) of 2 micro-batches."""

    steps_per_experience = 3

    def make_experience(self, batch):
        self.experiences = getattr(self, "experiences", 0) + 1
        half, parts = len(batch["ids"]) // 2, []
        for sl in (slice(0, half), slice(half, None)):
            part = {k: batch[k][sl] for k in ("input_ids", "labels", "attention_mask", "ids")}
            part["num_tokens"] = int(part["attention_mask"].sum())
            part["num_label_tokens"] = int((part["labels"][:, 1:] != -100).sum())
            parts.append(part)
        return [parts] * 3


class StopAt:
    def __init__(self, loop_ref, at_step):
        self.loop_ref, self.at_step = loop_ref, at_step

    def on_before_optimizer_step(self, optimizer):
        loop = self.loop_ref[0]
        if loop.state.global_step + 1 == self.at_step:
            loop._stop_signal = True  # as SIGTERM's handler does


def test_loop_counts_steps_per_experience_and_stops_only_at_boundaries(tmp_path):
    module = ThreeWindowExperience(tiny_llama(), lr=1e-3)
    ref = []
    fabric = cpu_fabric(callbacks=[StopAt(ref, 4)])
    loop = Loop(fabric, LoopConfig(max_epochs=2, limit_train_batches=2, log_every_n_steps=1, progress_bar=False,
                                   gradient_clip_val=None, save_final_checkpoint=True, handle_signals=False),
                tmp_path)
    ref.append(loop)
    result = loop.fit(module, toy_examples(16), pad_collate, batch_size=4)
    assert loop.total_steps == 12  # 2 epochs x 2 batches x 3 windows
    # the stop signal arrived at step 4 (mid-experience): the experience finishes, then it checkpoints
    assert result.status == "interrupted" and loop.state.global_step == 6 and loop.state.experience_step == 0
    assert loop.state.micro_step == 12 and module.experiences == 2
    assert result.checkpoint is not None and result.checkpoint.name == "step-00000006"


# ---------------------------------------------------------------------------------------------- resume
class CrashAt:
    def __init__(self, at):
        self.at = at

    def on_train_batch_start(self, batch, idx):
        if idx == self.at:
            raise RuntimeError("simulated crash")


def test_resume_mid_run_reproduces_rewards_and_losses(tmp_path):
    common = ["trainer.max_steps=6", "objective.num_iterations=2", "trainer.ckpt_every_n_steps=3",
              "trainer.keep_last_k=10", "trainer.val_every_n_steps=null", "trainer.save_final_checkpoint=false",
              *_toy_rewards()]
    ref = _run(tmp_path / "ref", "grpo_lora", common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path, "grpo_lora", common, callbacks=[CrashAt(4)])  # micro-batch 4 = step 5, mid-experience
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*"))
    assert ckpts == ["step-00000004"]  # due at 3, written at the experience boundary 4
    torch.manual_seed(1234)  # the new process's RNG differs; resume must restore the sampling RNG
    resumed = _run(tmp_path, "grpo_lora", [*common, "trainer.resume=auto"])
    assert resumed.metrics["global_step"] == 6
    for key in ("train/loss", "train/kl", "train/ratio/mean", "train/reward", "train/completions/mean_length"):
        want, got = _rows(ref.history, key), _rows(resumed.history, key)
        per_step = key in ("train/loss", "train/kl", "train/ratio/mean")
        steps = (5, 6) if per_step else (5,)  # rollout metrics: logged once per experience
        assert [got[s] for s in steps] == [want[s] for s in steps], key  # exact, not approximately
    assert len(set(_rows(ref.history, "train/reward").values())) > 1  # the rewards really vary


# ---------------------------------------------------------------------------------------------- module level
def _prompt_batch(tok, records=None, n=2):
    data = PromptData(SAMPLE_TRAIN, limit=n)
    if records is None:
        data.setup(tok)
        examples = data.train_dataset
    else:
        examples = data.examples_from_rows(data.rows_from_records(records), tok)
    return collate_prompts(examples, tok.pad_token_id)


def _lora_policy(tok, **kw):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(vocab=len(tok), hidden=32), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.1))
    args = {"rewards": {"toy": {"_target_": TOY}}, "num_generations": 4, "max_new_tokens": 8, "beta": 0.1}
    args.update(kw)
    return GRPOPolicy(model, tok, **args)


def test_lora_zero_update_gives_exactly_zero_kl_through_the_objective(tok):
    module = _lora_policy(tok, micro_batch_size=3)  # uneven micro-batches: 8 rows -> 3 + 3 + 2
    module.train()
    torch.manual_seed(0)
    windows = module.make_experience(_prompt_batch(tok))
    assert len(windows) == 1 and [mb["num_sequences"] for mb in windows[0]] == [3, 3, 2]
    for mb in windows[0]:
        out = module.training_step(mb, 0)
        assert out["kl"].item() == 0.0  # exactly: reference = the same model with adapters disabled
        assert torch.isfinite(out["loss"])
        with torch.no_grad():
            torch.testing.assert_close(module._logps(module.model, mb), mb["ref_logps"], rtol=0, atol=0)
    with torch.no_grad():  # a non-zero update moves the policy away from the reference
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.add_(0.5)
    assert module.training_step(windows[0][0], 0)["kl"].item() > 0


def test_batch_weight_matches_the_loss_aggregation(tok):
    torch.manual_seed(0)
    for aggregation, key in (("token", "num_completion_tokens"), ("sequence", "num_sequences"),
                             ("dr_grpo", "num_sequences")):
        module = _lora_policy(tok, loss_aggregation=aggregation, beta=0.0, micro_batch_size=4)
        mb = module.make_experience(_prompt_batch(tok))[0][0]
        assert module.batch_weight(mb) == mb[key] and "ref_logps" not in mb and "old_logps" not in mb
        assert mb["num_completion_tokens"] == int(mb["completion_mask"].sum())


def test_reward_failures_are_masked_and_counted_never_fatal(tok):
    records = [{"question": "Q1?", "options": ["x", "y"], "answer": "A", "fail": "raise"},
               {"question": "Q2?", "options": ["x", "y"], "answer": "B", "fail": "nan"},
               {"question": "Q3?", "options": ["x", "y"], "answer": "B", "fail": "ok"}]
    module = _lora_policy(tok, beta=0.0, rewards={"flaky": {"_target_": f"{__name__}.flaky"}})
    torch.manual_seed(0)
    windows = module.make_experience(_prompt_batch(tok, records))
    adv = torch.cat([mb["advantages"] for mb in windows[0]])
    assert adv.shape == (12,) and torch.equal(adv, torch.zeros(12))  # masked (and constant) rewards: no signal
    stats = module.step_metrics()
    assert stats["rewards/flaky/failures"] == 8.0  # 4 raised + 4 NaN, of 12 completions
    assert stats["reward_masked"] == 8.0 and stats["reward"] == 1.0
    assert torch.isfinite(module.training_step(windows[0][0], 0)["loss"])


# ---------------------------------------------------------------------------------------------- prompt data
def _write(tmp_path, name, rows):
    return write_jsonl(tmp_path / name, rows)


def test_prompt_rendering_options_answers_and_kept_fields(tmp_path, tok):
    rows = [{"q": "Which one?", "choices": {"a": "fever", "B": "cough"}, "gold": "cough", "subject": "x"},
            {"q": "Which one?", "choices": ["fever", "cough"], "gold": "(B)", "subject": "y"},
            {"q": "Which one?", "choices": ["fever", "cough"], "gold": 1, "subject": "z"}]
    data = PromptData(_write(tmp_path, "qa.jsonl", rows), fields={"question": "q", "options": "choices",
                                                                  "answer": "gold"}, system_prompt="Use <answer>.")
    assert data.validate() == []
    data.setup(tok)
    prompts = {e["prompt"] for e in data.train_dataset}
    assert len(prompts) == 1  # dict (any key case) and list options render identically
    assert prompts.pop() == ("<|im_start|>system\nUse <answer>.<|im_end|>\n<|im_start|>user\nWhich one?\n"
                             "A. fever\nB. cough<|im_end|>\n<|im_start|>assistant\n")
    batch = data.collate(data.train_dataset)
    assert batch["fields"]["answer"] == ["B", "B", "B"] and batch["fields"]["subject"] == ["x", "y", "z"]
    assert batch["input_ids"].shape == (3, len(batch["prompt_ids"][0])) and batch["attention_mask"].all()
    ctx = PromptData(_write(tmp_path, "ctx.jsonl", [{"question": "Is it?", "contexts": ["P1", "P2"], "answer": "yes"}]),
                     contexts_in_prompt=True, system_prompt=None, max_contexts=1)
    ctx.setup(tok)
    assert "Context:\nP1\n\nQuestion: Is it?" in ctx.train_dataset[0]["prompt"]
    assert ctx.train_dataset[0]["fields"]["contexts"] == ["P1", "P2"]  # the rewards see every passage


def test_bad_prompt_rows_error_with_file_row_and_field_or_are_counted(tmp_path, tok):
    rows = [{"question": "ok?", "options": ["a", "b"], "answer": "A"},
            {"question": "  ", "options": ["a", "b"], "answer": "A"},
            {"question": "ok?", "options": ["a", "b"], "answer": "C"},
            {"question": "ok?", "options": {"A": "a", "7": "b"}, "answer": "A"}]
    path = _write(tmp_path, "bad.jsonl", rows)
    with pytest.raises(DataError) as err:
        PromptData(path).setup(tok)
    msg = str(err.value)
    assert "3 bad row(s)" in msg and "line and row numbers count from 1" in msg
    assert f"{path} line 2: field 'question'" in msg and "missing or empty question" in msg  # .jsonl: file lines
    assert f"{path} line 3: field 'answer'" in msg and "'C' is not among the options (A, B)" in msg
    assert f"{path} line 4: field 'options'" in msg
    skip = PromptData(path, on_bad_row="skip")
    counts = skip.setup(tok)
    assert len(skip.train_dataset) == 1 and counts["train/bad_row/bad_question"] == 1
    assert counts["train/bad_row/bad_answer"] == 1 and counts["train/bad_row/bad_options"] == 1
    problems = PromptData(path, fields={"question": "nope", "rationale": "x"}).validate()
    assert any("data.fields.question='nope': no such column" in p for p in problems)
    assert any("data.fields.rationale: unknown field" in p for p in problems)


def test_config_validation_catches_grpo_mismatches():
    from medlab.config.validate import collect_problems

    cfg = medlab.compose("grpo_lora", ["data=sample_sft", "objective.rewards.accuracy._target_=nope.missing"],
                         run_dir="/tmp/unused")
    problems = "\n".join(collect_problems(cfg))
    assert "objective GRPOPolicy trains on prompts data" in problems and "objective.rewards:" in problems


def test_shared_qa_data_configs_read_the_real_files(shared_data, tok):
    from hydra.utils import instantiate

    expected = {"medqa_usmle": set("ABCDE"), "cmmlu_medical": set("ABCD"), "pubmedqa": {"yes", "no", "maybe"}}
    for name, answers in expected.items():
        cfg = medlab.compose("grpo_lora", [f"data={name}", "data.limit=40", "data.max_prompt_length=2048"],
                             run_dir="/tmp/unused")
        data = instantiate(cfg.data)
        counts = data.setup(tok)
        assert counts["train/rows"] == 40 and data.val_dataset, name
        got = {e["fields"]["answer"] for e in data.train_dataset + data.val_dataset}
        assert got <= answers and len(got) > 1, (name, got)


# ---------------------------------------------------------------------------------------------- evaluation
class _ScriptedEngine:
    """Answers every prompt with the gold letter for even rows and garbage for odd rows."""

    def __init__(self, tok, answers):
        self.tok, self.answers, self.i = tok, answers, 0

    def generate(self, prompts, **kw):
        from medlab.rl.generation import Rollout

        texts = []
        for _ in prompts:
            texts.append(f"<answer>{self.answers[self.i]}</answer>" if self.i % 2 == 0 else "no idea")
            self.i += 1
        ids = [self.tok.encode(t) + [self.tok.eos_token_id] for t in texts]
        return Rollout.from_token_lists(prompts, ids, eos_token_id=self.tok.eos_token_id,
                                        pad_token_id=self.tok.pad_token_id, texts=texts)


def test_evaluate_qa_scores_greedy_answers(tok):
    from medlab.evaluation import evaluate_qa, generation_settings

    rows = read_jsonl(SAMPLE_VAL)[:6]
    module = _lora_policy(tok)
    out = evaluate_qa(module, rows, batch_size=4, engine=_ScriptedEngine(tok, [r["answer"] for r in rows]))
    assert out["num_questions"] == 6 and out["accuracy"] == 0.5 and out["format_failure_rate"] == 0.5
    cfg = medlab.compose("grpo_lora", run_dir="/tmp/unused")
    out = evaluate_qa(module, cfg, {"path": SAMPLE_VAL, "limit": 4}, batch_size=3,  # the CLI's call
                      engine=_ScriptedEngine(tok, [r["answer"] for r in rows]))
    assert out["num_questions"] == 4 and out["accuracy"] == 0.5 and out["data/train/prompts"] == 4
    # generation settings come from the run's objective config, never probed on the module
    assert out["max_new_tokens"] == (cfg.objective.val_max_new_tokens or cfg.objective.max_new_tokens)
    assert generation_settings(cfg.objective)["engine"] == cfg.objective.engine
    assert generation_settings(cfg.objective, {"max_new_tokens": 7})["max_new_tokens"] == 7
    assert generation_settings(None) == {"engine": "hf", "check_every": 16, "max_new_tokens": 64}
    real = _lora_policy(tok)  # the untrained tiny model really generates: no tags, no accuracy
    out = evaluate_qa(real, rows, limit=3, max_new_tokens=4)
    assert out["num_questions"] == 3 and out["format_failure_rate"] == 1.0 and out["max_new_tokens"] == 4


# ---------------------------------------------------------------------------------------------- learning
def test_mean_reward_rises_on_a_verifiable_toy_task(tmp_path):
    """The warm-started tiny Llama + LoRA learns to "answer in English" (Latin-letter fraction of the completion;
    the base model writes English and Chinese) within 12 GRPO steps.

    The baseline is the untrained policy on the same prompts with the same sampling seeds: the same run with a
    learning rate of 1e-30 (its adapters stay at their initial values). Where the base policy starts depends on
    the CPU's floating point, so the test asks for a gain relative to it: over the last 4 steps' prompts the
    trained policy closes at least half of the untrained policy's gap to the maximum reward (1.0)."""
    common = ["trainer.max_steps=12", "trainer.val_every_n_steps=null", "objective.num_generations=8",
              "objective.max_new_tokens=16", "trainer.save_final_checkpoint=false", *_toy_rewards()]
    trained = _run(tmp_path, "grpo_lora", common, run_dir=tmp_path / "trained")
    untrained = _run(tmp_path, "grpo_lora", common + ["objective.lr=1e-30"], run_dir=tmp_path / "untrained")
    t = [r for _, r in sorted(_rows(trained.history, "train/reward").items())]
    u = [r for _, r in sorted(_rows(untrained.history, "train/reward").items())]
    print("reward curve", [round(r, 3) for r in t], "untrained", [round(r, 3) for r in u])
    assert len(t) == len(u) == 12
    assert t[0] == pytest.approx(u[0], abs=1e-6)  # step 1: the same policy on the same prompts
    t_last, u_last = sum(t[-4:]) / 4, sum(u[-4:]) / 4
    assert t_last - u_last >= 0.5 * (1.0 - u_last) and t_last > u_last + 0.05, (t_last, u_last)


def test_sample_qa_matches_its_generator_and_holds_out_the_val_conditions(tmp_path):
    from medlab.assets import make_qa_samples, make_sample_data

    make_qa_samples.main(tmp_path)
    for name in ("qa_mc_train.jsonl", "qa_mc_val.jsonl"):
        assert (tmp_path / name).read_bytes() == (medlab.ASSETS_DIR / "sample" / name).read_bytes(), name
    train, val = read_jsonl(SAMPLE_TRAIN), read_jsonl(SAMPLE_VAL)
    held_out = {c.en for c in make_sample_data.held_out_conditions()}
    train_options = {o for r in train for o in _options(r).values()}
    assert not held_out & train_options  # held-out conditions never appear in training, not even as distractors
    for r in train + val:
        opts = _options(r)
        assert len(opts) == 5 and r["answer"] in opts and len(set(opts.values())) == 5
    # gold passages for retrieval_relevance (agentic_rag): the one corpus paragraph about each training answer
    corpus = (medlab.ASSETS_DIR / "sample" / "medical_corpus.txt").read_text(encoding="utf-8").splitlines()
    assert corpus == make_sample_data.build_corpus(make_sample_data.rng_for("corpus"))
    assert all(len(r["contexts"]) == 1 and r["contexts"][0] in corpus for r in train)
    assert all(set(r["contexts"]) <= set(corpus) for r in val)
    assert not any(r["contexts"] for r in val if r["topic"] == "condition")  # held out of the corpus too
