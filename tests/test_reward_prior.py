"""An encoder reward model whose reward starts as the bi-encoder cosine (issue 13's "beat the zero-shot cosine").

``objective.prior=cosine`` + ``data.pair_sides=true``: reward = 20 * cos(E(prompt), E(completion)) + head(prompt,
completion) with the head at zero, so the untrained reward model prefers exactly the answers the zero-shot
bi-encoder prefers, and training learns the correction (the reranker's prior, ``medlab.retrieval.prior``).
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from helpers import compose
from hydra.utils import instantiate

import medlab
from medlab.retrieval.pooling import embed

pytestmark = pytest.mark.usefixtures("one_thread")

PRIOR = ["model=tiny_bert", "data.encoding=pair", "objective.prior=cosine", "data.pair_sides=true", "data.limit=12",
         "objective.warmup_ratio=0.0"]


def _module(tmp_path, extra=()):
    from medlab.commands.train import build_model

    cfg = compose("reward_model", [*PRIOR, *extra], tmp_path / "run")
    torch.manual_seed(0)
    model, tokenizer, _ = build_model(cfg)
    data = instantiate(cfg.data)
    data.setup(tokenizer)
    module = instantiate(cfg.objective, model=model, tokenizer=tokenizer)
    return module, data, tokenizer


def _side(batch, name):
    return {k.split(".", 1)[1]: v for k, v in batch.items() if k.startswith(f"{name}.")}


def _bare_cosines(encoder, batch, scale=20.0):
    """scale * cos of an untouched copy of the encoder's mean-pooled, normalized embeddings of each text alone."""
    with torch.no_grad():
        def e(x):
            return embed(encoder(**x).last_hidden_state, x["attention_mask"], "mean", normalize=True)
        return scale * (e(_side(batch, "query")) * e(_side(batch, "doc"))).sum(-1)


@pytest.mark.parametrize("trainable", [True, False])
def test_the_untrained_reward_is_the_bi_encoder_cosine(tmp_path, trainable):
    module, data, tokenizer = _module(tmp_path, [f"objective.prior_trainable={str(trainable).lower()}"])
    bare = copy.deepcopy(module.model.bert)
    batch = data.collate(data.train_dataset[:6])
    module.eval()
    with torch.no_grad():
        rewards = module.rewards(batch)
    torch.testing.assert_close(rewards, _bare_cosines(bare, batch), rtol=0, atol=1e-5)
    assert module.model.classifier.weight.abs().sum() == 0 and module.model.classifier.bias.abs().sum() == 0
    # the sides are each whole text exactly as the tokenizer encodes it alone: [CLS] prompt [SEP] / [CLS] answer
    # [SEP], not the pieces the joint encoding keeps when it cuts the prompt to fit both into max_length
    e = data.train_dataset[0]
    for name, ids in (("query", e["prompt_side"]), ("doc", e["chosen_side"])):
        side = _side(batch, name)
        row = side["input_ids"][0][side["attention_mask"][0].bool()].tolist()
        assert row == tokenizer(tokenizer.decode(ids))["input_ids"]


def test_the_sides_keep_the_whole_question_when_the_joint_encoding_cuts_it(tmp_path):
    module, data, tokenizer = _module(tmp_path, ["data.max_length=24", "data.min_prompt_length=4"])
    cut = [e for e in data.train_dataset if len(e["prompt_ids"]) < len(e["prompt_side"])]
    assert cut, "max_length=24 should cut some prompts"
    batch = data.collate(cut[:1])
    side = _side(batch, "query")
    row = side["input_ids"][0][side["attention_mask"][0].bool()].tolist()
    assert row == tokenizer(tokenizer.decode(cut[0]["prompt_side"]), truncation=True, max_length=24)["input_ids"]


def test_training_moves_the_head_and_a_frozen_prior_stays_the_zero_shot_cosine(tmp_path):
    module, data, _ = _module(tmp_path, ["objective.prior_trainable=false", "objective.lr=1e-2"])
    frozen = {n: p.detach().clone() for n, p in module.prior.frozen.named_parameters()}
    module.estimated_stepping_batches = 3
    opt = module.configure_optimizers()["optimizer"]
    batch = data.collate(data.train_dataset[:6])
    module.train()
    for step in range(3):
        opt.zero_grad()
        module.training_step(batch, step)["loss"].backward()
        opt.step()
    assert module.model.classifier.weight.abs().sum() > 0
    assert all(torch.equal(p, frozen[n]) for n, p in module.prior.frozen.named_parameters())
    assert not any(p.requires_grad for p in module.prior.frozen.parameters())


def test_config_problems_name_pair_sides_and_chat_models_are_refused(tmp_path):
    from medlab.config import ConfigError, validate_config
    from medlab.data.errors import DataError

    with pytest.raises(ConfigError, match="data.pair_sides=true"):
        validate_config(compose("reward_model", ["model=tiny_bert", "objective.prior=cosine"]))
    with pytest.raises(ConfigError, match="objective.prior='dot'"):
        validate_config(compose("reward_model", ["model=tiny_bert", "objective.prior=dot"]))
    cfg = compose("reward_model", ["data.pair_sides=true", "data.limit=4"], tmp_path / "chat")
    from medlab.commands.train import build_model

    _, tokenizer, _ = build_model(cfg)
    data = instantiate(cfg.data)
    with pytest.raises(DataError, match="encoder tokenizer"):
        data.setup(tokenizer)


def test_a_prior_reward_model_run_scores_the_same_as_a_grpo_reward_and_exports_its_formula(tmp_path):
    from medlab.evaluation import load_run
    from medlab.rl.reward_model import RewardModelReward

    cfg = medlab.compose("reward_model", [*PRIOR, "trainer.progress_bar=false", "logger=csv", "trainer.max_steps=2",
                                          "trainer.val_every_n_steps=2", "trainer.ckpt_every_n_steps=2"],
                         run_dir=str(tmp_path / "run"))
    run_dir = medlab.run(cfg).run_dir
    prior = json.loads((run_dir / "export" / "medlab_reranker.json").read_text())
    assert prior["prior_scale"] == 20.0 and "cos(" in prior["score"]
    reward = RewardModelReward(str(run_dir), checkpoint="latest", load_run=load_run)
    module, encoder, pad = reward._model()
    assert encoder.pair_sides
    prompts, answers = ["what lowers blood pressure", "is flu contagious"], ["less salt", "yes, for days"]
    got = reward(prompts, answers, question=prompts)
    from medlab.data.preference_encode import batch_of

    whole = [(encoder.prompt([{"role": "user", "content": p}])[1], encoder._ids(a)) for p, a in zip(prompts, answers)]
    pairs = [(p, c[0]) for p, c, _ in (encoder.fit(p, [a]) for p, a in whole)]
    with torch.no_grad():
        want = module.eval().rewards(batch_of(encoder, pairs, pad, "right", sides=whole))
    assert got == pytest.approx(want.tolist(), abs=1e-5)
    # python -m medlab.evaluate reads the pairs with the run's sides too
    from medlab.commands.evaluate import main as evaluate

    out = evaluate([f"run_dir={run_dir}", "eval.checkpoint=latest", f"eval.path={cfg.data.val_path}"])
    assert 0.0 <= out["pairwise_accuracy"] <= 1.0 and out["n_pairs"] > 0
