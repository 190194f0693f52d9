"""Behaviour log-probs from the decode loop (``Rollout.logprobs``) equal a recomputed forward, and the RL objectives
use them instead of a second no-grad policy pass (``objective.old_logprobs: decode``; issue 17, PPO speed)."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_llama

from medlab.rl.decode import KVCacheEngine
from medlab.rl.generation import HFGenerateEngine, sequence_logprobs

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [20, 21, 22, 23]]  # ragged: left padding up to 5 columns


def _lora_model(tok, seed: int = 3):
    from peft import LoraConfig, get_peft_model

    base = tiny_llama(vocab=len(tok), seed=seed)
    base.config.use_cache = False
    with torch.no_grad():  # peaky distributions: rows stop (EOS) at different lengths
        base.model.norm.weight.mul_(4.0)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(seed)
    with torch.no_grad():  # a LoRA that changes the outputs (B starts at 0)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model


def _eos(out) -> int:
    """A token some rows sample and others don't: as EOS, rows end at different lengths, some without EOS."""
    rows = [set(r) for r in out.completion_ids.tolist()]
    for token in out.completion_ids.flatten().bincount().argsort(descending=True).tolist():
        if any(token in r for r in rows) and not all(token in r for r in rows):
            return token
    raise AssertionError("no token separates the rows")


@pytest.mark.parametrize("engine_cls", [KVCacheEngine, HFGenerateEngine], ids=["medlab_kv_cache", "hf_generate"])
@pytest.mark.parametrize("sampling", [{"temperature": 0.7}, {"temperature": 1.3, "top_k": 20, "top_p": 0.9}],
                         ids=["t0.7", "t1.3_topk_topp"])
def test_decode_logprobs_equal_a_recomputed_forward(tok, engine_cls, sampling):
    model = _lora_model(tok)
    model.train()  # the engines decode in eval mode and restore the mode
    kwargs = dict(num_generations=2, max_new_tokens=12, seed=7, **sampling)
    eos = _eos(engine_cls(model, tok).generate(PROMPTS, **kwargs))
    ro = engine_cls(model, tok, eos_token_id=eos).generate(PROMPTS, **kwargs)
    assert model.training
    assert ro.logprobs is not None and ro.logprobs.dtype == torch.float32
    assert ro.logprobs.shape == ro.completion_ids.shape
    assert ro.prompt_mask.eq(0).any() and ro.is_truncated.any() and not ro.is_truncated.all()
    mask = ro.completion_mask.bool()
    assert ro.logprobs[~mask].eq(0).all() and ro.logprobs[mask].lt(0).all()  # 0 after EOS, real log-probs before
    with torch.no_grad():
        recomputed = sequence_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask,
                                       temperature=sampling["temperature"])
    torch.testing.assert_close(ro.logprobs, recomputed, rtol=0, atol=1e-5)
    # the temperature matters (so the check above is not vacuous): T=1 log-probs are clearly different
    with torch.no_grad():
        plain = sequence_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
    assert (plain - recomputed).abs().max() > 1e-2


def test_hf_engine_leaves_logprobs_to_the_objective_above_its_memory_budget(tok):
    model = _lora_model(tok)
    ro = HFGenerateEngine(model, tok, record_logprobs_mib=0.0).generate(PROMPTS, max_new_tokens=6, seed=1)
    assert ro.logprobs is None  # N x steps x vocab fp32 logits would not fit: recompute instead


def test_tool_rollouts_carry_the_policy_tokens_logprobs(tok):
    """Multi-turn rollouts: every generated turn's log-probs (conditioned on the prompt, earlier turns and the
    observations, as the recompute is) on the loss-mask tokens; observation tokens are 0 and masked."""
    from medlab.rl.generation import Rollout
    from medlab.rl.tools import Tool, collate_tool_rollouts, run_tool_loop

    model = _lora_model(tok)
    engine = KVCacheEngine(model, tok)
    call = '<tool_call>{"name": "search", "arguments": {"query": "x"}}</tool_call>'

    class FirstTurnCallsTheTool:
        """Turn 1: a scripted tool call (its log-probs from a forward, as if sampled); later turns: the engine."""

        eos_token_id = tok.eos_token_id

        def __init__(self):
            self.calls = 0

        def generate(self, prompts, *, num_generations=1, temperature=1.0, **kw):
            self.calls += 1
            if self.calls > 1:
                return engine.generate(prompts, num_generations=num_generations, temperature=temperature, **kw)
            rows = [p for p in prompts for _ in range(num_generations)]
            completion = tok.encode(call, add_special_tokens=False) + [tok.eos_token_id]
            ro = Rollout.from_token_lists(rows, [completion] * len(rows), eos_token_id=tok.eos_token_id,
                                          pad_token_id=tok.pad_token_id, tokenizer=tok)
            with torch.no_grad():
                ro.logprobs = sequence_logprobs(model, ro.prompt_ids, ro.prompt_mask, ro.completion_ids,
                                                ro.completion_mask, temperature=temperature)
            return ro

    policy = FirstTurnCallsTheTool()
    rollouts = run_tool_loop(policy, tok, [[{"role": "user", "content": "q?"}]],
                             {"search": Tool("search", lambda a: "RESULT")}, num_generations=2, max_turns=2,
                             max_new_tokens=8, temperature=0.8, seed=3)
    assert policy.calls == 2 and all(len(r.tool_calls) == 1 for r in rollouts)
    t = collate_tool_rollouts(rollouts, tok.pad_token_id)
    with torch.no_grad():
        recomputed = sequence_logprobs(model, t["prompt_ids"], t["prompt_mask"], t["completion_ids"],
                                       t["completion_mask"], temperature=0.8)
    loss, attended = t["loss_mask"].bool(), t["completion_mask"].bool()
    assert (attended & ~loss).any()  # observation tokens are there
    torch.testing.assert_close(t["logprobs"][loss], recomputed[loss], rtol=0, atol=1e-5)
    assert t["logprobs"][~loss].eq(0).all()


# ------------------------------------------------------------------------ the objectives: no extra policy forward
def _full_sequence_forwards(model) -> tuple[list, object]:
    """Counts the decoder's forwards over whole sequences (no KV cache: log-prob, reference and critic passes);
    the engine's prefill and decode steps run with a cache and are not counted."""
    from medlab.rl.critic import decoder_of

    calls: list = []

    def hook(module, args, kwargs):
        if kwargs.get("past_key_values") is None and kwargs.get("cache") is None:
            calls.append(kwargs["input_ids"].shape)

    return calls, decoder_of(model).register_forward_pre_hook(hook, with_kwargs=True)


def _prompt_batch(tok, n=2):
    import medlab
    from medlab.rl.data import PromptData, collate_prompts

    data = PromptData(str(medlab.ASSETS_DIR / "sample" / "qa_mc_train.jsonl"), limit=n)
    data.setup(tok)
    return collate_prompts(data.train_dataset, tok.pad_token_id)


def _toy(prompts, completions, **_):
    return [float(len(c)) / 10 for c in completions]


@pytest.mark.parametrize("old_logprobs", ["decode", "recompute"])
def test_ppo_experience_spends_no_policy_forward_on_old_logprobs(tok, old_logprobs):
    """Per micro-batch: the critic's pass and the reference's (kl_coef > 0), plus the policy's only under
    ``recompute``; and the old log-probs the windows carry are the same either way (within float tolerance)."""
    from medlab.objectives.ppo import PPOPolicy

    model = _lora_model(tok)
    module = PPOPolicy(model, tok, rewards={"toy": {"_target_": f"{__name__}._toy"}}, num_generations=2,
                       max_new_tokens=6, kl_coef=0.1, temperature=0.7, micro_batch_size=2, lr=1e-3,
                       old_logprobs=old_logprobs)
    module.train()
    calls, handle = _full_sequence_forwards(model)
    torch.manual_seed(0)
    windows = module.make_experience(_prompt_batch(tok))  # 2 prompts x 2 completions: 2 micro-batches
    handle.remove()
    n_micro = len(windows[0])
    assert n_micro == 2
    assert len(calls) == n_micro * (2 if old_logprobs == "decode" else 3)
    if old_logprobs == "decode":  # the stored old log-probs are a forward's, within float tolerance
        with torch.no_grad():
            for mb in windows[0]:
                keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask")
                torch.testing.assert_close(mb["old_logps"], sequence_logprobs(model, *(mb[k] for k in keys),
                                                                              temperature=0.7), rtol=0, atol=1e-5)


@pytest.mark.parametrize("advantage, mu, beta, decode_forwards", [
    ("grpo", 2, 0.0, 0),          # mu > 1: old log-probs from the decode loop, no forward
    ("grpo", 1, 0.0, 0),          # mu = 1: the loss uses the detached current log-probs
    ("rloo", 1, 0.1, 1),          # KL in the reward: the reference pass only (sampling policy from the decode loop)
])
def test_grpo_experience_forwards(tok, advantage, mu, beta, decode_forwards):
    from medlab.objectives.grpo import GRPOPolicy

    counts = {}
    for mode in ("decode", "recompute"):
        model = _lora_model(tok)
        module = GRPOPolicy(model, tok, rewards={"toy": {"_target_": f"{__name__}._toy"}}, num_generations=2,
                            max_new_tokens=6, num_iterations=mu, beta=beta, advantage=advantage, temperature=0.7,
                            lr=1e-3, old_logprobs=mode)
        module.train()
        calls, handle = _full_sequence_forwards(model)
        torch.manual_seed(0)
        windows = module.make_experience(_prompt_batch(tok))
        handle.remove()
        counts[mode] = len(calls) / len(windows[0])  # per micro-batch
    assert counts["decode"] == decode_forwards
    assert counts["recompute"] == decode_forwards + (1 if (mu > 1 or advantage != "grpo") else 0)


def test_log_prob_passes_run_the_lm_head_on_the_completion_positions_only(tok):
    """Through peft (and a Fabric wrapper around it) the forward gets ``logits_to_keep``: the LM head runs on the
    C + 1 last positions, not over the prompt (peft's ``base_model`` attribute resolves to the decoder, which once
    made the check fail silently)."""
    from helpers import cpu_fabric

    from medlab.rl.generation import _accepts_logits_to_keep

    model = _lora_model(tok)
    fabric_model = cpu_fabric().setup_module(model)
    assert _accepts_logits_to_keep(model) and _accepts_logits_to_keep(fabric_model)
    assert _accepts_logits_to_keep(model.get_base_model())
    positions: list[int] = []
    head = model.get_base_model().lm_head
    handle = head.register_forward_hook(lambda m, i, o: positions.append(i[0].shape[0] * i[0].shape[1]))
    ro = KVCacheEngine(model, tok).generate(PROMPTS, max_new_tokens=5, seed=0)
    positions.clear()
    for m in (model, fabric_model):
        sequence_logprobs(m, ro.prompt_ids, ro.prompt_mask, ro.completion_ids, ro.completion_mask)
    handle.remove()
    n, c = ro.completion_ids.shape
    assert positions == [n * (c + 1)] * 2 and ro.prompt_ids.shape[1] > 1


@pytest.mark.parametrize("experiment", ["grpo", "ppo"])
def test_config_validation_names_the_old_logprobs_choices(experiment, tmp_path):
    import medlab
    from medlab.config.validate import collect_problems

    cfg = medlab.compose(experiment, ["objective.old_logprobs=fast"], run_dir=str(tmp_path / "x"))
    assert "objective.old_logprobs='fast' is not one of decode, recompute" in collect_problems(cfg)
    assert collect_problems(medlab.compose(experiment, ["objective.old_logprobs=recompute"],
                                           run_dir=str(tmp_path / "y"))) == []
