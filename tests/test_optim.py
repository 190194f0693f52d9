"""Learning-rate schedule and optimizer groups against hand computations."""

import math

import pytest
import torch

from medlab.engine.optim import build_adamw, build_scheduler, lr_lambda


def test_warmup_then_cosine_to_min():
    f = lambda s: lr_lambda(s, total_steps=10, warmup_steps=2, kind="cosine", min_lr_ratio=0.1)  # noqa: E731
    assert f(0) == pytest.approx(0.5) and f(1) == pytest.approx(1.0)
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(10) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)


def test_linear_and_constant():
    assert lr_lambda(5, total_steps=10, warmup_steps=0, kind="linear", min_lr_ratio=0.0) == pytest.approx(0.5)
    assert lr_lambda(7, total_steps=10, warmup_steps=0, kind="constant", min_lr_ratio=0.0) == 1.0
    with pytest.raises(ValueError, match="unknown scheduler"):
        lr_lambda(7, total_steps=10, warmup_steps=0, kind="step", min_lr_ratio=0.0)


def test_scheduler_steps_and_state_is_weights_only_safe(tmp_path):
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = build_adamw([("w", p)], lr=1.0)
    sched = build_scheduler(opt, total_steps=4, kind="linear", warmup_ratio=0.25, min_lr_ratio=0.0)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([1.0, 1.0, 2 / 3, 1 / 3])
    torch.save(sched.state_dict(), tmp_path / "s.pt")
    torch.load(tmp_path / "s.pt", weights_only=True)


def test_no_weight_decay_on_biases_and_norms():
    lin, norm = torch.nn.Linear(3, 3), torch.nn.LayerNorm(3)
    params = [("lin.weight", lin.weight), ("lin.bias", lin.bias), ("norm.weight", norm.weight)]
    opt = build_adamw(params, lr=1e-3, weight_decay=0.1)
    decayed = [g for g in opt.param_groups if g["weight_decay"] == 0.1][0]["params"]
    assert len(decayed) == 1 and decayed[0] is lin.weight


def test_no_trainable_parameters_is_a_clear_error():
    p = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_adamw([("w", p)], lr=1e-3)


def test_lr_multipliers_put_matching_params_in_their_own_groups_at_a_scaled_lr():
    body = torch.nn.Linear(3, 3)
    head = torch.nn.Linear(3, 1)
    named = [("encoder.weight", body.weight), ("encoder.bias", body.bias),
             ("classifier.weight", head.weight), ("classifier.bias", head.bias)]
    opt = build_adamw(named, lr=1e-3, weight_decay=0.1, lr_multipliers={"classifier": 50})
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["params"] == [body.weight]  # group 0: base lr
    assert by_param[id(head.weight)]["lr"] == pytest.approx(5e-2) and by_param[id(head.weight)]["weight_decay"] == 0.1
    assert by_param[id(head.bias)]["lr"] == pytest.approx(5e-2) and by_param[id(head.bias)]["weight_decay"] == 0.0
    assert by_param[id(body.bias)]["lr"] == 1e-3
    sched = build_scheduler(opt, total_steps=4, kind="linear")
    opt.step()
    sched.step()  # the schedule scales every group from its own base lr
    assert by_param[id(head.weight)]["lr"] == pytest.approx(5e-2 * 0.75)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.75)
    with pytest.raises(ValueError, match="match no trainable parameter"):
        build_adamw(named, lr=1e-3, lr_multipliers={"clasifier": 50})
    # without multipliers the groups are what they always were: decayed first, then the 1-d ones
    plain = build_adamw(named, lr=1e-3, weight_decay=0.1)
    assert [len(g["params"]) for g in plain.param_groups] == [2, 2] and all(g["lr"] == 1e-3 for g in plain.param_groups)
