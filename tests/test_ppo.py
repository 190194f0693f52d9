"""PPO (objective=ppo): per-token rewards by hand, the critic as a second adapter with gradient isolation from the
policy, a separate value model for full fine-tunes, config validation, exact resume mid-experience, and a toy
learning test against the untrained policy. The loop contract (micro-batch gradients, resume, export) is
tests/test_objective_contract.py's, through the registry entry."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import compose, run_experiment, tiny_llama

import medlab
from medlab.config.validate import collect_problems
from medlab.objectives.ppo import PPOPolicy
from medlab.rl.critic import CRITIC_ADAPTER
from medlab.rl.data import PromptData, collate_prompts
from medlab.rl.generation import sequence_logprobs, token_entropy
from medlab.rl.ppo_losses import ppo_value_loss
from medlab.rl.ppo_rewards import explained_variance, kl_penalty, last_token_index, token_rewards

pytestmark = pytest.mark.usefixtures("one_thread")

SAMPLE_TRAIN = str(medlab.ASSETS_DIR / "sample" / "qa_mc_train.jsonl")
FAST = ["objective.max_new_tokens=8", "data.batch_size=4", "data.val_batch_size=8", "trainer.limit_val_batches=1",
        "trainer.log_every_n_steps=1", "trainer.progress_bar=false", "logger=none", "export.enabled=false"]


def latin_fraction(prompts, completions, **_):
    """The verifiable toy task of tests/test_grpo.py, "answer in English": the Latin fraction of the letters."""
    out = []
    for c in completions:
        letters = [ch for ch in c if ch.isalpha()]
        out.append(sum(ch.isascii() for ch in letters) / len(letters) if letters else 0.0)
    return out


TOY = ["~objective.rewards", f"+objective.rewards={{toy: {{_target_: {__name__}.latin_fraction}}}}"]


def _rows(history, key):
    return {h["step"]: h[key] for h in history if key in h}


# ---------------------------------------------------------------------------------------------- maths by hand
def test_token_rewards_put_the_score_on_the_last_token_and_charge_the_kl_on_every_token():
    logps = torch.tensor([[-1.0, -2.0, -0.5, 9.0], [-0.2, -0.3, 7.0, 7.0]])
    ref = torch.tensor([[-1.5, -1.0, -0.5, float("nan")], [-0.2, -0.9, 3.0, 3.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 1]
    assert last_token_index(torch.zeros(2, 3)).tolist() == [-1, -1]
    k1 = kl_penalty(logps, ref, mask, "k1")
    torch.testing.assert_close(k1, torch.tensor([[0.5, -1.0, 0.0, 0.0], [0.0, 0.6, 0.0, 0.0]]))
    k3 = kl_penalty(logps, ref, mask, "k3")
    lr = [-0.5, 1.0, 0.0, 0.0, -0.6]  # log ref - log pi on the masked tokens; k3 = exp(l) - 1 - l
    want = [math.exp(v) - 1 - v for v in lr]
    torch.testing.assert_close(k3, torch.tensor([[want[0], want[1], want[2], 0.0], [want[3], want[4], 0.0, 0.0]]))
    rewards, kl = token_rewards(torch.tensor([2.0, -1.0]), logps, ref, mask, kl_coef=0.1, estimator="k1")
    torch.testing.assert_close(kl, k1)
    torch.testing.assert_close(rewards, torch.tensor([[-0.05, 0.1, 2.0, 0.0], [0.0, -0.06 - 1.0, 0.0, 0.0]]))
    no_ref, _ = token_rewards(torch.tensor([2.0, -1.0]), logps, None, mask)
    torch.testing.assert_close(no_ref, torch.tensor([[0.0, 0.0, 2.0, 0.0], [0.0, -1.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="finite"):
        token_rewards(torch.tensor([float("nan"), 0.0]), logps, ref, mask)
    with pytest.raises(ValueError, match="k2"):
        kl_penalty(logps, ref, mask, "k2")
    logits = torch.randn(2, 3, 7, generator=torch.Generator().manual_seed(0))  # the logged policy entropy
    torch.testing.assert_close(token_entropy(logits), torch.distributions.Categorical(logits=logits).entropy())
    values, returns = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[1.0, 3.0, 5.0]])
    # Var(R) = 8/3, Var(R - V) = Var([0, 1, 2]) = 2/3 -> 1 - 1/4
    assert explained_variance(values, returns, torch.ones(1, 3)) == pytest.approx(0.75)


# ---------------------------------------------------------------------------------------------- the critic
def _batch(tok, n=2):
    data = PromptData(SAMPLE_TRAIN, limit=n)
    data.setup(tok)
    return collate_prompts(data.train_dataset, tok.pad_token_id)


def _policy(tok, adapter: bool, **kw):
    model = tiny_llama(vocab=len(tok), hidden=32)
    if adapter:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 lora_dropout=0.0))
    args = {"rewards": {"toy": {"_target_": f"{__name__}.latin_fraction"}}, "num_generations": 2,
            "max_new_tokens": 8, "kl_coef": 0.1, "lr": 1e-2, "weight_decay": 0.0}
    args.update(kw)
    return PPOPolicy(model, tok, **args)


def _groups(module):
    """(policy, critic) parameters by name: the critic = its adapter / value model + the value head."""
    critic = {f"critic.{n}" for n, _ in module.critic.named_parameters()}
    critic |= {n for n, _ in module.named_parameters() if f".{CRITIC_ADAPTER}." in n}
    params = {n: p for n, p in module.named_parameters() if p.requires_grad}
    return ({n: p for n, p in params.items() if n not in critic}, {n: p for n, p in params.items() if n in critic})


def _step_changes(module, loss) -> tuple[set, set]:
    """One AdamW step on ``loss`` alone: the names of the (policy, critic) parameters it changed."""
    policy, critic = _groups(module)
    before = {n: p.detach().clone() for n, p in {**policy, **critic}.items()}
    opt = module.configure_optimizers()["optimizer"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    changed = {n for n, p in {**policy, **critic}.items() if not torch.equal(p.detach(), before[n])}
    return changed & set(policy), changed & set(critic)


@pytest.mark.parametrize("adapter", [True, False], ids=["lora_critic_adapter", "full_value_model"])
def test_policy_and_critic_updates_touch_only_their_own_weights(tok, adapter):
    torch.manual_seed(0)
    module = _policy(tok, adapter)
    module.estimated_stepping_batches = 4
    module.on_fit_start()
    module.train()
    if adapter:  # one base: the critic is a second adapter on the policy's model, no copy
        assert module.critic.shares_base and module.critic.backbone is None
        assert set(module.model.peft_config) == {"default", CRITIC_ADAPTER}
    else:  # a separate value model: a copy of the initial decoder, sharing no tensor with the policy
        assert not module.critic.shares_base
        policy_ptrs = {p.data_ptr() for p in module.model.parameters()}
        assert not policy_ptrs & {p.data_ptr() for p in module.critic.parameters()}
    policy, critic = _groups(module)
    assert policy and critic and len(critic) > 2  # adapter / value model weights + the value head
    windows = module.make_experience(_batch(tok))
    # the reference pass (adapters disabled) must not freeze the critic adapter (peft re-freezes inactive ones)
    assert all(p.requires_grad for p in _groups(module)[1].values())
    mb = windows[0][0]
    keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")

    # the value loss alone: the critic (adapter or value model, and head) changes, the policy stays bit-identical
    values = module.critic(*(mb[k] for k in keys))
    vf_loss, _ = ppo_value_loss(values, mb["old_values"], mb["returns"], mb["completion_mask"])
    changed_policy, changed_critic = _step_changes(module, vf_loss)
    assert changed_policy == set() and "critic.value_head.weight" in changed_critic
    assert any(n != "critic.value_head.weight" and n != "critic.value_head.bias" for n in changed_critic)

    # the policy loss alone (vf_coef = 0): the policy changes, the critic stays bit-identical
    module.vf_coef = 0.0
    out = module.training_step(mb, 0)
    changed_policy, changed_critic = _step_changes(module, out["loss"])
    assert changed_policy and changed_critic == set()
    if adapter:  # the critic adapter is active only inside the critic's forward
        assert module.model.active_adapter == "default"
        with torch.no_grad():  # the policy pass sees the policy adapter alone: the logps the loss used
            torch.testing.assert_close(sequence_logprobs(module.model, *(mb[k] for k in keys)),
                                       sequence_logprobs(module.model, *(mb[k] for k in keys)))


def test_experience_shapes_rewards_and_missing_eos_penalty(tok):
    torch.manual_seed(0)
    module = _policy(tok, True, num_ppo_epochs=2, num_mini_batches=2, missing_eos_penalty=1.0, max_new_tokens=3,
                     micro_batch_size=1)
    module.train()
    assert module.steps_per_experience == 4
    windows = module.make_experience(_batch(tok, n=2))  # 2 prompts x 2 completions
    assert len(windows) == 4
    for epoch in (windows[:2], windows[2:]):  # each PPO epoch covers every row exactly once
        rows = sorted(int(r) for w in epoch for mb in w for r in mb["rows"])
        assert rows == [0, 1, 2, 3]
    assert all(len(w) == 2 for w in windows)  # mini-batches of 2 rows, micro-batches of 1 (micro_batch_size)
    stats = module._exp_stats[-1]
    # 3 new tokens: the tiny random model rarely stops; every truncated completion loses 1.0
    assert stats["score"] == pytest.approx(stats["reward"] - stats["eos_missing_frac"], abs=1e-6)
    assert stats["kl"] == 0.0  # a new LoRA adapter is a zero update: policy == reference
    # whitened advantages over the experience's tokens
    mbs = [mb for w in windows[:2] for mb in w]
    adv = torch.cat([mb["advantages"][mb["completion_mask"].bool()] for mb in mbs])
    assert adv.mean().item() == pytest.approx(0.0, abs=1e-5) and adv.std().item() == pytest.approx(1.0, abs=1e-4)


def test_the_critic_adapter_is_dropped_after_training_and_the_policy_is_unchanged(tok):
    module = _policy(tok, True)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        for n, p in module.model.named_parameters():  # a trained-looking policy adapter
            if "lora_B.default" in n:
                p.add_(0.1)
        before = module.model(input_ids=ids).logits
        module.on_fit_end()
        assert set(module.model.peft_config) == {"default"}
        torch.testing.assert_close(module.model(input_ids=ids).logits, before, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("experiment", ["ppo", "ppo_lora", "ppo_qlora"])
def test_experiments_compose_and_validate(experiment):
    cfg = compose(experiment)
    assert cfg.objective._target_ == "medlab.objectives.ppo.PPOPolicy"
    assert collect_problems(cfg) == []


def test_config_validation_reports_every_ppo_problem_at_once(tok):
    cfg = compose("ppo_lora", ["~objective.rewards", "objective.gamma=1.5", "objective.lam=-0.1",
                               "objective.kl_estimator=k2", "objective.num_mini_batches=100", "objective.vf_coef=-1",
                               "objective.missing_eos_penalty=-2", "strategy=fsdp", "strategy.accelerator=cpu",
                               "strategy.devices=2"])
    text = "\n".join(collect_problems(cfg))
    for needle in ("objective.rewards is empty", "objective.gamma must be a number in [0, 1]", "objective.lam",
                   "objective.kl_estimator='k2'", "num_mini_batches=100 is more than the 8 completions",
                   "objective.vf_coef must be a number >= 0", "objective.missing_eos_penalty",
                   "objective=ppo generates with the training model"):
        assert needle in text, (needle, text)
    with pytest.raises(ValueError, match="gamma"):
        _policy(tok, True, gamma=2.0)


# ---------------------------------------------------------------------------------------------- loop level
class CrashAt:
    def __init__(self, at):
        self.at = at

    def on_train_batch_start(self, batch, idx):
        if idx == self.at:
            raise RuntimeError("simulated crash")


def test_resume_mid_experience_reproduces_rollouts_rewards_and_losses(tmp_path):
    """2 optimizer steps per experience (2 mini-batches); the step-1 checkpoint waits for the boundary (step 2); a
    crash inside the second experience resumes from it and reproduces steps 3 and 4 exactly."""
    common = [*FAST, "trainer.max_steps=4", "objective.num_ppo_epochs=1", "objective.num_mini_batches=2",
              "trainer.ckpt_every_n_steps=1", "trainer.keep_last_k=10", "trainer.val_every_n_steps=null",
              "trainer.save_final_checkpoint=false", *TOY]
    ref = run_experiment("ppo_lora", common, tmp_path / "ref")
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_experiment("ppo_lora", common, tmp_path / "run", callbacks=[CrashAt(2)])  # micro-batch 2 = step 3
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step-*")) == ["step-00000002"]
    torch.manual_seed(1234)  # a new process's RNG differs: resume restores the sampling and shuffling RNG
    resumed = run_experiment("ppo_lora", [*common, "trainer.resume=auto"], tmp_path / "run")
    assert resumed.metrics["global_step"] == 4
    for key in ("train/loss", "train/policy/loss", "train/value/loss", "train/policy/ratio", "train/reward",
                "train/kl", "train/value/mean", "train/completions/mean_length"):
        want, got = _rows(ref.history, key), _rows(resumed.history, key)
        steps = (3, 4) if key in ("train/loss", "train/policy/loss", "train/value/loss", "train/policy/ratio") \
            else (3,)  # rollout metrics: once per experience
        assert [got[s] for s in steps] == [want[s] for s in steps], key  # exact, not approximately
    assert _rows(ref.history, "train/kl")[3] != 0.0  # the second experience is off the reference: a real check


def test_a_short_last_batch_is_dropped_not_a_crash_mid_run(tmp_path, caplog):
    """5 prompts in batches of 2 with 2 mini-batches of 1 completion each: every epoch's last batch (1 prompt)
    cannot fill both mini-batches. It used to stop the run with a ValueError at step 5; now it is dropped with a
    warning up front, so each epoch is 2 experiences and 8 steps are 2 whole epochs."""
    common = [*FAST, "data.limit=5", "data.batch_size=2", "objective.num_generations=1", "objective.num_ppo_epochs=1",
              "objective.num_mini_batches=2", "trainer.val_every_n_steps=null", *TOY]
    with caplog.at_level("WARNING", logger="medlab.engine.loop"):
        result = run_experiment("ppo_lora", [*common, "trainer.max_steps=8"], tmp_path / "run")
    assert result.metrics["status"] == "completed" and result.metrics["global_step"] == 8
    assert "the last batch of every epoch would hold 1 prompt(s) per rank, fewer than the 2 PPOPolicy needs" \
        in caplog.text
    assert sorted(_rows(result.history, "train/reward")) == [1, 3, 5, 7]  # 4 experiences of 2 optimizer steps
    with pytest.raises(ValueError, match="needs at least 2 prompts per batch .* has 1 training prompts"):
        run_experiment("ppo_lora", [*common, "data.limit=1", "trainer.max_steps=2"], tmp_path / "one")


def test_ppo_lora_logs_its_metrics_and_exports_the_policy_alone(tmp_path):
    result = run_experiment("ppo_lora", [*FAST, "trainer.max_steps=2", "objective.num_ppo_epochs=1",
                                         "objective.num_mini_batches=2", "trainer.val_every_n_steps=2",
                                         "export.enabled=true"], tmp_path / "run")
    m = result.metrics
    assert m["status"] == "completed" and math.isfinite(m["val/reward"])
    row = next(h for h in result.history if h["step"] == 1 and "train/loss" in h)
    for key in ("reward", "rewards/accuracy/mean", "reward_total", "kl", "score", "value/loss",
                "value/explained_variance", "policy/clipfrac", "value/clipfrac", "policy/approx_kl",
                "policy/entropy", "time/generate_s", "time/update_s", "eos_missing_frac"):
        assert f"train/{key}" in row, key
    assert row["train/policy/entropy"] > 0 and row["train/time/update_s"] > 0
    from safetensors.torch import load_file

    saved = load_file(str(result.run_dir / "checkpoints" / "step-00000002" / "model.safetensors"))
    assert "critic.value_head.weight" in saved and any(f".{CRITIC_ADAPTER}." in k for k in saved)
    export = result.run_dir / "export"
    assert (export / "adapter_config.json").exists() and not (export / CRITIC_ADAPTER).exists()


def test_a_reward_model_run_scores_ppo_completions(tmp_path):
    """The issue's pipeline: a reward model run first, then PPO on its score (the reward on the last token)."""
    rm = medlab.run(medlab.compose("reward_model", ["model=tiny_llama", "trainer.progress_bar=false", "logger=none",
                                                    "trainer.max_steps=2", "trainer.val_every_n_steps=null",
                                                    "data.limit=8", "data.max_length=64", "export.enabled=false"],
                                   run_dir=str(tmp_path / "rm")))
    result = run_experiment("ppo_lora", [*FAST, "trainer.max_steps=2", "objective.num_ppo_epochs=1",
                                         "trainer.val_every_n_steps=null", "~objective.rewards",
                                         f"+objective.rewards={{rm: {{_target_: reward_model, run_dir: {rm.run_dir}, "
                                         "checkpoint: latest}}"], tmp_path / "ppo")
    row = next(h for h in result.history if h["step"] == 1 and "train/reward" in h)
    assert row["train/rewards/rm/failures"] == 0 and row["train/reward_std"] > 0  # a real scalar per completion
    assert row["train/score"] == pytest.approx(row["train/rewards/rm/mean"], abs=1e-6)
    assert row["train/reward_total"] == pytest.approx(row["train/score"], abs=1e-6)  # step 1: policy == reference


# ---------------------------------------------------------------------------------------------- learning
@pytest.mark.slow
def test_mean_reward_rises_on_a_verifiable_toy_task(tmp_path):
    """The warm-started tiny Llama + LoRA learns to "answer in English" (tests/test_grpo.py's toy task) with PPO
    (4 prompts x 4 completions per experience, 4 PPO epochs: 10 experiences, ~40 s on 2 CPU cores).

    Baseline: the same run at lr 1e-30, i.e. the untrained policy (and critic) on the same prompts with the same
    sampling seeds. Over the last 4 experiences the trained policy closes at least 40% of the untrained policy's
    gap to the maximum reward (1.0), and its greedy answers to the held-out validation prompts score clearly
    higher than the untrained policy's."""
    common = ["trainer.max_steps=40", "data.batch_size=4", "objective.num_generations=4",
              "objective.num_ppo_epochs=4", "objective.num_mini_batches=1", "objective.max_new_tokens=16",
              "trainer.val_every_n_steps=null", "trainer.seed=1", "trainer.save_final_checkpoint=false",
              "trainer.log_every_n_steps=1", "trainer.progress_bar=false", "logger=none", "export.enabled=false",
              *TOY]
    trained = run_experiment("ppo_lora", common, tmp_path / "trained")
    untrained = run_experiment("ppo_lora", [*common, "objective.lr=1e-30"], tmp_path / "untrained")
    t = [r for _, r in sorted(_rows(trained.history, "train/reward").items())]
    u = [r for _, r in sorted(_rows(untrained.history, "train/reward").items())]
    val_t, val_u = trained.metrics["val/reward"], untrained.metrics["val/reward"]
    print("reward curve", [round(r, 3) for r in t], "untrained", [round(r, 3) for r in u], "val", val_t, val_u)
    assert len(t) == len(u) == 10
    assert t[0] == pytest.approx(u[0], abs=1e-6)  # experience 1: the same policy on the same prompts
    t_last, u_last = sum(t[-4:]) / 4, sum(u[-4:]) / 4
    assert t_last - u_last >= 0.4 * (1.0 - u_last) and t_last > u_last + 0.05, (t_last, u_last)
    assert val_t >= val_u + 0.2, (val_t, val_u)
