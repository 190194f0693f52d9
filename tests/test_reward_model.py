"""The reward model (`medlab.objectives.reward_model`): loss vs TRL RewardTrainer, the last-token read under any
padding, LoRA training (adapters + head move, base frozen), learning on the sample pairs vs the untrained model,
``python -m medlab.evaluate`` pairwise accuracy and the GRPO ``reward_model`` reward."""

from __future__ import annotations

import json
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch
from helpers import SAMPLE_DIR, compose, read_jsonl
from hydra.utils import instantiate

import medlab
from medlab.objectives.reward_model import RewardModel, sequence_rewards
from medlab.ops.reward import last_token_index, pairwise_reward_loss, positions, right_aligned

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- maths


def _trl_loss(chosen, rejected, margin, center):
    """TRL RewardTrainer.compute_loss on a model whose logits are the given rewards (chosen rows, then rejected)."""
    from trl import RewardTrainer

    logits = torch.cat([chosen, rejected]).unsqueeze(-1)
    model = lambda **_: SimpleNamespace(logits=logits)  # noqa: E731
    trainer = SimpleNamespace(model=SimpleNamespace(training=False),
                              args=SimpleNamespace(center_rewards_coefficient=center),
                              accelerator=SimpleNamespace(gather_for_metrics=lambda x: x, gather=lambda x: x),
                              _metrics={"train": defaultdict(list), "eval": defaultdict(list)},
                              _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros(2 * len(chosen), 3, dtype=torch.long),
              "attention_mask": torch.ones(2 * len(chosen), 3, dtype=torch.long)}
    if margin is not None:
        inputs["margin"] = margin
    return RewardTrainer.compute_loss(trainer, model, inputs)


@pytest.mark.parametrize("with_margin", [False, True])
@pytest.mark.parametrize("center", [None, 0.01, 0.5])
def test_loss_equals_trl_reward_trainer(with_margin, center):
    g = torch.Generator().manual_seed(0)
    chosen, rejected = torch.randn(7, generator=g, dtype=torch.float64) * 3, torch.randn(7, generator=g,
                                                                                          dtype=torch.float64) * 3
    margin = torch.rand(7, generator=g, dtype=torch.float64) * 2 if with_margin else None
    ours = pairwise_reward_loss(chosen, rejected, margin, center)
    assert abs(float(ours) - float(_trl_loss(chosen, rejected, margin, center))) < 1e-6
    by_hand = -torch.log(torch.sigmoid(chosen - rejected - (margin if margin is not None else 0))).mean()
    by_hand = by_hand + (center or 0) * ((chosen + rejected) ** 2).mean()
    assert abs(float(ours) - float(by_hand)) < 1e-9


def test_last_token_index_reads_the_mask_not_the_pad_id():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 4, 4, 2]
    assert positions(torch.tensor([[0, 0, 1, 1, 1]])).tolist() == [[0, 0, 0, 1, 2]]
    ids = torch.tensor([[0, 0, 7, 8, 9]])
    m, i = right_aligned(torch.tensor([[0, 0, 1, 1, 1]]), ids)
    assert m.tolist() == [[1, 1, 1, 0, 0]] and i.tolist() == [[7, 8, 9, 0, 0]]


# ---------------------------------------------------------------------------------------------- the scalar head


def _tiny_scorer(pad_id: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1, pad_token_id=pad_id,
                         attn_implementation="sdpa")
    return LlamaForSequenceClassification(config).eval()


def _padded(seqs, pad, side):
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[i, sl], mask[i, sl] = torch.tensor(s), 1
    return ids, mask


@pytest.mark.parametrize("peft", [False, True])
def test_the_reward_of_a_sequence_does_not_depend_on_padding_side_even_when_pad_is_eos(peft):
    eos = 2
    model = _tiny_scorer(pad_id=eos)
    if peft:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="SEQ_CLS"))
        with torch.no_grad():  # a non-zero adapter, so it takes part
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 0.5)
    seqs = [[5, 6, 7, eos], [9, 10, eos], [11, 12, 13, 14, 15, 16, eos]]  # completions end with EOS (= pad)
    alone = torch.cat([sequence_rewards(model, *_padded([s], eos, "right")) for s in seqs])
    with torch.no_grad():
        right = sequence_rewards(model, *_padded(seqs, eos, "right"))
        left = sequence_rewards(model, *_padded(seqs, eos, "left"))
    torch.testing.assert_close(right, alone.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(left, alone.detach(), rtol=1e-5, atol=1e-5)
    # the reward is read at the EOS itself: transformers' pad-id search would read the token before it
    other = _tiny_scorer(pad_id=0)
    other.load_state_dict(model.get_base_model().state_dict() if peft else model.state_dict(), strict=False)
    if not peft:
        with torch.no_grad():
            hf = other(*_padded(seqs, 0, "right")).logits.reshape(-1)  # pad != eos: HF finds the same last token
        torch.testing.assert_close(hf, right, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
def test_length_grouped_rewards_and_gradients_equal_one_padded_forward(side):
    """objective.max_padding: the rows run as length groups (several forwards, little padding) with the same rewards
    and the same gradients as one forward over the padded batch."""
    model = _tiny_scorer(pad_id=0)
    seqs = [[5, 6, 7, 2], [9, 10, 2], [11, 12, 13, 14, 15, 16, 2], [3, 4, 5, 6, 7, 8, 2], [17, 2]]
    ids, mask = _padded(seqs, 0, side)
    params = [p for p in model.parameters() if p.requires_grad]
    out = {}
    for key, pad in (("one", None), ("grouped", 0.0)):
        r = sequence_rewards(model, ids, mask, max_padding=pad)
        out[key] = (r.detach(), torch.autograd.grad((r * torch.linspace(-1, 1, len(r))).sum(), params))
    torch.testing.assert_close(out["grouped"][0], out["one"][0], rtol=1e-5, atol=1e-5)
    for a, b in zip(out["grouped"][1], out["one"][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_encoder_rewards_do_not_depend_on_padding_side():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=4, intermediate_size=64,
                                                     num_labels=1)).eval()
    seqs = [[2, 5, 6, 3, 7, 3], [2, 8, 3, 9, 10, 11, 3]]
    with torch.no_grad():
        right = sequence_rewards(model, *_padded(seqs, 0, "right"))
        left = sequence_rewards(model, *_padded(seqs, 0, "left"))
        hf = model(*_padded(seqs, 0, "right")).logits.reshape(-1)
    torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(right, hf, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- LoRA


def test_lora_trains_every_adapter_and_the_head_and_leaves_the_base_untouched(tmp_path, tok):
    from medlab.commands.train import build_model

    cfg = compose("reward_model", ["model=tiny_llama", "adapter=lora", "adapter.dropout=0.0", "data.limit=8",
                                   "objective.lr=1e-2", "objective.warmup_ratio=0.0"], tmp_path / "run")
    torch.manual_seed(0)
    model, tokenizer, _ = build_model(cfg)
    data = instantiate(cfg.data)
    data.setup(tokenizer)
    module = instantiate(cfg.objective, model=model, tokenizer=tokenizer)
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("modules_to_save" in n and "score" in n for n in trainable)
    assert all("lora_" in n or "modules_to_save" in n for n in trainable), sorted(trainable)
    module.estimated_stepping_batches = 3
    opt = module.configure_optimizers()["optimizer"]
    batch = data.collate(data.train_dataset[:4])
    module.train()
    for step in range(3):
        opt.zero_grad()
        module.training_step(batch, step)["loss"].backward()
        opt.step()
    for n, p in module.named_parameters():
        moved = not torch.equal(p, before[n])
        assert moved == (n in trainable), f"{n}: {'moved' if moved else 'did not move'}"


def test_config_problems_name_unpaired_data():
    from medlab.config import ConfigError, validate_config

    cfg = compose("reward_model", ["data=sample_kto"])
    with pytest.raises(ConfigError, match="data.unpaired=true"):
        validate_config(cfg)


# ---------------------------------------------------------------------------------------------- learning


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The reward_model experiment (tiny random-init Llama, full fine-tune) on the sample pairs."""
    run_dir = tmp_path_factory.mktemp("rm") / "run"
    cfg = medlab.compose("reward_model", ["model=tiny_llama", "trainer.progress_bar=false", "logger=csv",
                                          "trainer.max_steps=40", "trainer.val_every_n_steps=20",
                                          "trainer.ckpt_every_n_steps=20", "export.enabled=false"],
                         run_dir=str(run_dir))
    result = medlab.run(cfg)
    return result.run_dir


def _evaluate(run_dir, path, *extra):
    from medlab.commands.evaluate import main

    return main([f"run_dir={run_dir}", f"eval.path={path}", *extra])


def test_training_pairwise_accuracy_reaches_0_9_and_beats_the_untrained_model(trained, tmp_path):
    train = SAMPLE_DIR / "preference_train.jsonl"
    after = _evaluate(trained, train, f"eval.out={tmp_path / 'after.json'}")
    before = _evaluate("none", train, "+experiment=reward_model", "model=tiny_llama",
                       f"eval.out={tmp_path / 'before.json'}", f"hydra.run.dir={tmp_path / 'untrained'}")
    assert after["task"] == "preference" and after["n_pairs"] == 80 and before["n_pairs"] == 80
    assert after["pairwise_accuracy"] >= 0.9, after
    assert after["pairwise_accuracy"] - before["pairwise_accuracy"] >= 0.25, (before, after)
    assert after["mean_margin"] > 0.5 > before["mean_margin"]


def test_evaluate_on_the_validation_file_reproduces_val_accuracy(trained, tmp_path):
    metrics = json.loads((trained / "metrics.json").read_text())
    got = _evaluate(trained, SAMPLE_DIR / "preference_val.jsonl", f"eval.out={tmp_path / 'm.json'}")
    assert got["checkpoint_selected_by"] == "best"
    assert abs(got["pairwise_accuracy"] - metrics[f"best/{metrics['monitor']}"]) < 1e-6
    assert set(got) >= {"pairwise_accuracy", "mean_margin", "n_pairs"}


def test_evaluate_on_judgments_uses_the_eval_field_mapping(trained, tmp_path):
    rows = read_jsonl(SAMPLE_DIR / "rerank_train.jsonl", limit=40)
    path = tmp_path / "j.jsonl"
    path.write_text("".join(json.dumps({"q": r["question"], "a": r["answer"], "g": r["judgment"], "id": r["qid"]},
                                       ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    got = _evaluate(trained, path, "eval.fields.query=q", "eval.fields.doc=a", "eval.fields.score=g",
                    "eval.fields.group=id", f"eval.out={tmp_path / 'm.json'}")
    assert got["n_pairs"] > 10 and 0.0 <= got["pairwise_accuracy"] <= 1.0


# ---------------------------------------------------------------------------------------------- as a GRPO reward


def test_a_reward_model_run_is_a_grpo_reward(trained):
    from medlab.evaluation import load_run
    from medlab.rl.rewards import RewardSet

    rewards = RewardSet.from_config({"rm": {"_target_": "reward_model", "run_dir": str(trained), "batch_size": 4}})
    pairs = read_jsonl(SAMPLE_DIR / "preference_train.jsonl", limit=12)
    questions = [p["prompt"] for p in pairs] * 2
    completions = [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs]
    with pytest.raises(RuntimeError, match="run loader"):
        rewards.fns["rm"][0](["x"], ["y"], question=["q"])
    rewards.bind_run_loader(load_run)
    total, per_fn, _ = rewards(["<rendered policy prompt>"] * 24, completions, question=questions)
    chosen, rejected = total[:12], total[12:]
    assert (chosen > rejected).float().mean() >= 0.8
    # the same scores as the evaluation path (one pair batch per prompt)
    module = load_run(str(trained)).module
    data = instantiate(compose("reward_model", ["model=tiny_llama"]).data)
    data.setup(module.tokenizer)
    first = next(e for e in data.train_dataset if module.tokenizer.decode(e["chosen_ids"]).startswith(pairs[0]["chosen"]))
    with torch.no_grad():
        r = module.rewards(data.collate([first]))
    torch.testing.assert_close(torch.stack([chosen[0], rejected[0]]).float(), r, rtol=1e-4, atol=1e-4)


def test_a_reward_model_reward_refuses_other_runs(tmp_path):
    from medlab.rl.rewards import load_reward

    with pytest.raises(ValueError, match="not a medlab run directory"):
        load_reward("reward_model", run_dir=str(tmp_path))


def test_the_reward_model_is_registered_for_the_contract_suite():
    from medlab.objectives.registry import REGISTRY

    assert REGISTRY["reward_model"].target == f"{RewardModel.__module__}.RewardModel"
    assert REGISTRY["reward_model"].export_head == "score"
