"""DPO (medlab.objectives.dpo): the reference policy in each mode, precomputed reference log-probs, LoRA, the
chunked log-prob path against a plain forward, config problems, learning, and the implicit-reward evaluation.

The loss maths against TRL: tests/test_preference_losses.py; the loop guarantees (accumulation, exact resume,
export reload): tests/test_objective_contract.py."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.utils import instantiate

import medlab
from helpers import compose
from medlab.commands import train as runner

pytestmark = pytest.mark.usefixtures("one_thread")

LN2 = torch.tensor(math.log(2), dtype=torch.float32)
TINY = ["trainer.progress_bar=false", "logger=csv", "trainer.log_every_n_steps=1", "model=tiny_llama",
        "data.limit=16", "data.val_limit=8", "data.max_length=96", "trainer.val_every_n_steps=null",
        "trainer.ckpt_every_n_steps=null"]
LORA = ["adapter.dropout=0.0"]


def build(experiment: str, overrides=(), tmp_path=None):
    """(cfg, module, data) built like the runner does, without the loop."""
    from medlab.models.build import build_model

    cfg = compose(experiment, [*TINY, *overrides])
    torch.manual_seed(0)
    model, tokenizer, _ = build_model(cfg)
    data = instantiate(cfg.data)
    data.setup(tokenizer)
    module = instantiate(cfg.objective, model=model, tokenizer=tokenizer)
    module.bind_data(data)
    return cfg, module, data


def first_batch(data, n=4, split="train"):
    dataset = data.train_dataset if split == "train" else data.val_dataset
    return data.collate([dataset[i] for i in range(n)])


def run(experiment, overrides, run_dir, capture=None, monkeypatch=None):
    if capture is not None:
        original = runner.Loop.fit

        def fit(self, module, *args, **kwargs):
            capture["module"] = module
            return original(self, module, *args, **kwargs)

        monkeypatch.setattr(runner.Loop, "fit", fit)
    cfg = medlab.compose(experiment, [*TINY, *overrides], run_dir=str(run_dir))
    return medlab.run(cfg)


def step_values(result, key):
    return {h["step"]: h[key] for h in result.history if key in h}


# ---------------------------------------------------------------------------------------------- reference policy
@pytest.mark.parametrize("experiment,extra", [("dpo", []), ("dpo_lora", LORA)])
def test_step_one_loss_is_exactly_ln2_and_rewards_zero_when_policy_is_its_reference(experiment, extra):
    _, module, data = build(experiment, extra)
    module.on_fit_start()  # full fine-tune: the frozen copy
    assert module.reference.mode == ("frozen_copy" if experiment == "dpo" else "disabled_adapter")
    module.train()
    batch = first_batch(data)
    loss = module.training_step(batch, 0)["loss"]
    assert torch.equal(loss.detach(), LN2)
    metrics = module.step_metrics()
    assert metrics["rewards/chosen"] == 0.0 and metrics["rewards/rejected"] == 0.0
    assert metrics["rewards/margins"] == 0.0 and metrics["rewards/accuracies"] == 0.0
    loss.backward()  # and it still has a gradient (d/dΔ of -log σ(βΔ) at 0 is -β/2)
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in module.model.parameters() if p.requires_grad)


def test_lora_trains_every_adapter_weight_and_leaves_the_base_alone(tmp_path, monkeypatch):
    from medlab.models.build import build_model

    captured = {}
    result = run("dpo_lora", [*LORA, "trainer.max_steps=3", "export.enabled=false", "data.batch_size=4"],
                 tmp_path / "r", captured, monkeypatch)
    assert step_values(result, "train/rewards/margins")[1] == 0.0  # step 1: no adapter update yet
    trained = dict(captured["module"].model.named_parameters())
    fresh, _, _ = build_model(medlab.compose("dpo_lora", [*TINY, *LORA]))
    fresh = dict(fresh.named_parameters())
    lora = [n for n in trained if "lora_" in n]
    assert lora and set(trained) == set(fresh)
    for name, p in trained.items():
        if "lora_" in name:
            assert not torch.equal(p.detach(), fresh[name].detach()), f"{name} did not train"
        else:
            assert torch.equal(p.detach(), fresh[name].detach()), f"base weight {name} changed"


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    """A trained SFT LoRA adapter on the tiny model (its run dir; the adapter is in export/)."""
    out = tmp_path_factory.mktemp("sft")
    cfg = medlab.compose("sft_lora", ["trainer.progress_bar=false", "logger=csv", "model=tiny_llama",
                                      "data.limit=16", "data.max_length=96", "trainer.max_steps=4",
                                      "trainer.val_every_n_steps=null", "adapter.dropout=0.0",
                                      "objective.lr=3e-2"], run_dir=str(out / "run"))
    result = medlab.run(cfg)
    assert (result.run_dir / "export" / "adapter_config.json").is_file()
    return result.run_dir


def test_continuing_an_sft_adapter_its_reference_is_that_adapter_not_the_base(sft_adapter):
    _, module, data = build("dpo_lora", [f"adapter.init_from={sft_adapter}"])
    assert module.reference.mode == "reference_adapter"
    module.train()
    batch = first_batch(data)
    loss = module.training_step(batch, 0)["loss"]
    assert torch.equal(loss.detach(), LN2)  # policy = its reference: exactly ln 2, not less
    assert module.step_metrics()["rewards/margins"] == 0.0
    # the trap: the bare base as reference already "prefers" some answers at step 1
    _, base_ref, _ = build("dpo_lora", [f"adapter.init_from={sft_adapter}", "objective.ref_adapter=null"])
    base_ref.train()
    assert not torch.equal(base_ref.training_step(batch, 0)["loss"].detach(), LN2)
    # only the trained adapter requires grad; the reference adapter is frozen
    names = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert names and all(".default." in n for n in names)


def test_sft_adapter_continuation_through_the_loop(sft_adapter, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    captured = {}
    result = run("dpo_lora", [f"adapter.init_from={sft_adapter}", "trainer.max_steps=3", "data.batch_size=4",
                              "export.enabled=true"], tmp_path / "r", captured, monkeypatch)
    assert abs(step_values(result, "train/loss")[1] - math.log(2)) < 1e-6
    assert step_values(result, "train/rewards/margins")[1] == 0.0
    assert step_values(result, "train/rewards/margins")[3] != 0.0
    sft = load_file(str(sft_adapter / "export" / "adapter_model.safetensors"))
    exported = load_file(str(result.run_dir / "export" / "adapter_model.safetensors"))
    assert set(sft) == set(exported)  # the trained adapter only, same layout as the SFT one
    assert any(not torch.equal(sft[k], exported[k]) for k in sft)
    assert not (result.run_dir / "export" / "reference").exists()


# ---------------------------------------------------------------------------------------------- precompute
@pytest.mark.parametrize("experiment,extra", [("dpo", []), ("dpo_lora", LORA)])
def test_precomputed_reference_logps_equal_the_live_ones(experiment, extra):
    _, module, data = build(experiment, [*extra, "objective.precompute_ref_logps=true"])
    module.on_fit_start()
    module.precompute_reference()
    assert not module.reference._initial_cpu  # the full fine-tune's initial copy is gone after the pass
    module.precompute = False  # live, for comparison
    if experiment == "dpo":
        module.reference._copy.append(module.model)  # nothing trained yet: the initial model is the model
    for split in ("train", "val"):
        dataset = data.train_dataset if split == "train" else data.val_dataset
        # a batch in another order and size than the precompute pass used (shuffling, other padding)
        examples = [dataset[i] for i in (5, 1, 3)]
        batch = data.collate(examples)
        live = module.reference_logps(batch, split)
        cached = module.ref_cache.lookup(split, batch["ids"])
        torch.testing.assert_close(torch.cat([cached[:, 0], cached[:, 1]]), live, rtol=1e-5, atol=1e-5)


def test_precompute_through_the_loop_gives_the_live_losses(tmp_path):
    steps = ["trainer.max_steps=3", "data.batch_size=4", "export.enabled=false", *LORA]
    live = run("dpo_lora", steps, tmp_path / "live")
    pre = run("dpo_lora", [*steps, "objective.precompute_ref_logps=true"], tmp_path / "pre")
    a, b = step_values(live, "train/loss"), step_values(pre, "train/loss")
    assert sorted(a) == [1, 2, 3]
    for s in a:
        assert abs(a[s] - b[s]) < 1e-5, (s, a[s], b[s])


# ---------------------------------------------------------------------------------------------- log-prob path
def test_chunked_sequence_logps_equal_a_plain_forward():
    from medlab.objectives.preference_common import sequence_logps

    _, module, data = build("dpo", ["objective.loss_chunk_size=7"])
    batch = first_batch(data)
    model = module.model
    got, lengths = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["labels"], chunk_size=7)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    mask = targets != -100
    lp = torch.log_softmax(logits, -1).gather(2, targets.clamp(min=0)[..., None]).squeeze(-1)
    torch.testing.assert_close(got, (lp * mask).sum(1), rtol=1e-5, atol=1e-4)
    assert torch.equal(lengths, mask.sum(1))
    n = batch["input_ids"].shape[0] // 2
    assert torch.equal(batch["input_ids"][0, :5], batch["input_ids"][n, :5])  # chosen/rejected share the prompt


def test_length_buckets_bound_the_padding_and_keep_every_row_once():
    from medlab.objectives.preference_common import length_buckets

    lengths = [261, 88, 240, 100, 30, 250, 95, 31]
    groups = length_buckets(lengths, 0.1)
    assert sorted(i for g in groups for i in g) == list(range(8))
    assert groups == [[0, 5, 2], [3, 6, 1], [7, 4]]
    for g in groups:
        assert len(g) * lengths[g[0]] <= 1.1 * sum(lengths[i] for i in g)
    assert length_buckets(lengths, 10.0) == [[0, 5, 2, 3, 6, 1, 7, 4]]  # loose enough: one forward
    assert length_buckets([5, 5, 5], 0.0) == [[0, 1, 2]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_length_grouped_logps_and_gradients_equal_one_padded_forward(side):
    """objective.max_padding regroups the rows by length (several forwards, less padding): the same log-probs, the
    same counts and the same gradients as one forward over the padded batch, whatever the padding side."""
    from medlab.objectives.preference_common import length_buckets, sequence_logps

    _, module, data = build("dpo", [f"data.padding_side={side}"])
    batch = data.collate([data.train_dataset[i] for i in range(6)])
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(length_buckets(lengths, 0.0)) > 1 and max(lengths) == batch["input_ids"].shape[1]
    params = [p for p in module.model.parameters() if p.requires_grad]
    out = {}
    for key, pad in (("one", None), ("grouped", 0.0)):
        lp, n = sequence_logps(module.model, batch["input_ids"], batch["attention_mask"], batch["labels"],
                               chunk_size=5, max_padding=pad)
        grads = torch.autograd.grad((lp * torch.linspace(-1, 1, len(lp))).sum(), params)
        out[key] = (lp.detach(), n, grads)
    torch.testing.assert_close(out["grouped"][0], out["one"][0], rtol=1e-5, atol=2e-4)
    assert torch.equal(out["grouped"][1], out["one"][1])
    for a, b in zip(out["grouped"][2], out["one"][2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------- config
def test_config_problems_are_reported_up_front():
    from medlab.config import ConfigError, validate_config

    cfg = compose("dpo", ["objective.beta=0", "objective.loss_type=[sigmoid,sigmod]",
                          "objective.loss_weights=[1.0]", "objective.label_smoothing=0.7"])
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    text = str(e.value)
    assert "objective.beta must be > 0" in text
    assert "'sigmod'" in text and "valid loss types: sigmoid, hinge, ipo, robust, simpo" in text
    assert "objective.loss_weights has 1 values for 2 loss types" in text
    assert "objective.label_smoothing must be in [0, 0.5)" in text
    cfg = compose("dpo", ["objective.loss_type=simpo", "objective.precompute_ref_logps=true",
                          "adapter.kind=none", "+objective.ref_adapter=/nowhere"])
    problems = get_cls(cfg).config_problems(cfg)
    assert any("SimPO uses no reference" in p for p in problems)
    assert any("ref_adapter" in p and "adapter=lora" in p for p in problems)
    cfg = compose("dpo_lora", ["adapter.init_from=/nowhere/run"])
    with pytest.raises(ConfigError, match="adapter.init_from='/nowhere/run': no adapter_config.json"):
        validate_config(cfg)
    cfg = compose("dpo", ["data=sample_kto"])
    assert any("data.unpaired=true makes unpaired" in p for p in get_cls(cfg).config_problems(cfg))


def get_cls(cfg):
    from hydra.utils import get_class

    return get_class(cfg.objective._target_)


# ---------------------------------------------------------------------------------------------- learning + eval
@pytest.mark.slow  # ~30 s on a busy 2-core CPU
def test_dpo_learns_the_preference_and_the_evaluation_reports_it(tmp_path):
    """Trained: the implicit reward ranks the held-out chosen answers first, far above both the untrained policy
    (accuracy 0, margin 0: it is its own reference) and the untrained model's own log-prob ranking."""
    from medlab.evaluation import load_run
    from medlab.evaluation.dpo_eval import implicit_reward_metrics
    from medlab.objectives.preference_common import sequence_logps

    steps = ["data.limit=48", "data.val_limit=null", "trainer.max_steps=12", "data.batch_size=8",
             "objective.lr=5e-4", "trainer.val_every_n_steps=12", "export.enabled=false"]
    result = run("dpo", steps, tmp_path / "r")
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    loaded = load_run(str(result.run_dir))
    val = instantiate(loaded.cfg.data)
    val.setup(loaded.module.tokenizer)
    loader = [val.collate([val.val_dataset[i] for i in range(s, min(s + 4, len(val.val_dataset)))])
              for s in range(0, len(val.val_dataset), 4)]
    trained = implicit_reward_metrics(loaded, loader)
    untrained = load_run(None, ["+experiment=dpo", *TINY, *steps])
    before = implicit_reward_metrics(untrained, loader)
    assert before["implicit_reward_accuracy"] == 0.0 and before["implicit_reward_margin"] == 0.0
    with torch.no_grad():
        ranks = []
        for b in loader:
            lp, _ = sequence_logps(untrained.module.model, b["input_ids"], b["attention_mask"], b["labels"])
            ranks += (lp[: len(b["ids"])] > lp[len(b["ids"]):]).tolist()
    logprob_baseline = sum(ranks) / len(ranks)
    assert trained["num_pairs"] == len(val.val_dataset) == 14
    assert trained["implicit_reward_accuracy"] >= max(0.75, logprob_baseline + 0.3), (trained, logprob_baseline)
    assert trained["implicit_reward_margin"] > 0.1, trained
    assert abs(trained["implicit_reward_accuracy"] - metrics["val/accuracy"]) < 1e-6


def test_python_m_medlab_evaluate_reports_implicit_rewards_of_a_dpo_run(tmp_path):
    from medlab.evaluate import main as evaluate_main

    result = run("dpo_lora", [*LORA, "data.val_limit=null", "trainer.max_steps=4", "trainer.val_every_n_steps=4",
                              "data.batch_size=4", "export.enabled=false"], tmp_path / "r")
    val_file = medlab.ASSETS_DIR / "sample" / "preference_val.jsonl"
    metrics = evaluate_main([f"run_dir={result.run_dir}", f"eval.path={val_file}", f"eval.out={tmp_path / 'e.json'}"])
    assert metrics["task"] == "preference" and metrics["num_pairs"] == 14
    assert abs(metrics["implicit_reward_accuracy"] - result.metrics["val/accuracy"]) < 1e-6
    assert abs(metrics["implicit_reward_margin"] - result.metrics["val/margin"]) < 1e-5
    assert json.loads((tmp_path / "e.json").read_text())["implicit_reward_accuracy"] == \
        metrics["implicit_reward_accuracy"]
