"""PPO maths (medlab.rl.ppo_losses) against hand computations.

TRL's experimental PPOTrainer, whose formulas these follow, was removed in TRL v1.13; the venv's TRL 1.16 has
none to compare with, so every value here is worked out by hand in the comments.
"""

from __future__ import annotations

import math

import pytest
import torch

from medlab.rl.ppo_losses import gae, masked_whiten, ppo_policy_loss, ppo_value_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 9.0, 2.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 5.0, 0.5]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 1]])  # row 1: the middle token is an observation (skipped)
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # row 0: d2 = 1 - 0.7 = 0.3; d1 = 0.9 * 0.7 - 0.6 = 0.03; d0 = 0.9 * 0.6 - 0.5 = 0.04
    #        A2 = 0.3; A1 = 0.03 + 0.45 * 0.3 = 0.165; A0 = 0.04 + 0.45 * 0.165 = 0.11425
    # row 1: d2 = 2 - 0.5 = 1.5; (t=1 skipped); d0 = 0.9 * 0.5 - 1.0 = -0.55; A0 = -0.55 + 0.45 * 1.5 = 0.125
    want = torch.tensor([[0.11425, 0.165, 0.3], [0.125, 0.0, 1.5]])
    torch.testing.assert_close(adv, want, atol=1e-6, rtol=0)
    torch.testing.assert_close(ret, torch.tensor([[0.61425, 0.765, 1.0], [1.125, 0.0, 2.0]]), atol=1e-6, rtol=0)


def test_gae_limits():
    g = torch.Generator().manual_seed(0)
    r, v = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    mask = torch.ones(3, 6)
    # lam = 1: A_t = sum_{s >= t} gamma^(s-t) r_s - V_t (Monte-Carlo return minus the value)
    adv, ret = gae(r, v, mask, gamma=0.8, lam=1.0)
    mc = torch.stack([sum(0.8 ** (s - t) * r[:, s] for s in range(t, 6)) for t in range(6)], dim=1)
    torch.testing.assert_close(ret, mc, atol=1e-5, rtol=0)
    # lam = 0: A_t = one-step TD error
    adv0, _ = gae(r, v, mask, gamma=0.8, lam=0.0)
    td = r + 0.8 * torch.cat([v[:, 1:], torch.zeros(3, 1)], dim=1) - v
    torch.testing.assert_close(adv0, td, atol=1e-6, rtol=0)


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, float("nan")], [3.0, 6.0, 100.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 0]])
    vals = torch.tensor([1.0, 2.0, 3.0, 6.0])  # mean 3, Bessel var (4 + 1 + 0 + 9) / 3 = 14 / 3
    out = masked_whiten(x, mask)
    want = (vals - 3.0) / math.sqrt(14 / 3 + 1e-8)
    torch.testing.assert_close(out[mask.bool()], want)
    assert out[0, 2] == 0 and out[1, 2] == 0
    torch.testing.assert_close(masked_whiten(x, mask, shift_mean=False)[mask.bool()], want + 3.0)


def test_policy_loss_hand_computed():
    logps = torch.tensor([[math.log(1.5), math.log(0.5), math.log(1.1), float("nan")]], requires_grad=True)
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, -1.0, 2.0, 5.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = ppo_policy_loss(logps, old, adv, mask, clip=0.2)
    # token 0: r 1.5, A 1: max(-1.5, -1.2) = -1.2 (clipped); token 1: r 0.5, A -1: max(0.5, 0.8) = 0.8 (clipped)
    # token 2: r 1.1, A 2: max(-2.2, -2.2) = -2.2 (inside the range); token 3: masked (NaN never counts)
    assert loss.item() == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert stats["clipfrac"].item() == pytest.approx(2 / 3)
    assert stats["approx_kl"].item() == pytest.approx(0.5 * (math.log(1.5) ** 2 + math.log(0.5) ** 2
                                                             + math.log(1.1) ** 2) / 3)
    loss.backward()
    # clipped tokens get no gradient; token 2: d(-A r)/d logp = -A r / 3 = -2.2 / 3
    torch.testing.assert_close(logps.grad, torch.tensor([[0.0, 0.0, -2.2 / 3, 0.0]]))


def test_value_loss_hand_computed():
    values = torch.tensor([[1.0, 0.0, 0.9]], requires_grad=True)
    old = torch.tensor([[0.5, 0.1, 0.0]])
    ret = torch.tensor([[0.8, 0.5, 2.0]])
    loss, stats = ppo_value_loss(values, old, ret, torch.ones(1, 3), clip=0.2)
    # token 0: V_clip 0.7: max(0.04, 0.01) = 0.04; token 1: V inside [-0.1, 0.3]: 0.25 both
    # token 2: V_clip 0.2: max((0.9 - 2)^2 = 1.21, (0.2 - 2)^2 = 3.24) = 3.24 (clipped)
    assert loss.item() == pytest.approx(0.5 * (0.04 + 0.25 + 3.24) / 3)
    assert stats["vf_clipfrac"].item() == pytest.approx(1 / 3)
    resid, r = torch.tensor([0.3, 0.4, 2.0]), torch.tensor([0.8, 0.5, 2.0])
    assert stats["explained_variance"].item() == pytest.approx(1 - resid.var(unbiased=False) / r.var(unbiased=False))
    loss.backward()
    # token 0: 0.5 / 3 * 2 (V - R) = 0.2 / 3; token 1: 0.5 / 3 * 2 * (0 - 0.5) = -1 / 6; token 2: clipped, 0
    torch.testing.assert_close(values.grad, torch.tensor([[0.2 / 3, -1 / 6, 0.0]]))


def test_arguments_are_checked():
    with pytest.raises(ValueError, match="gamma and lam"):
        gae(torch.zeros(1, 2), torch.zeros(1, 2), torch.ones(1, 2), gamma=1.5)
    with pytest.raises(ValueError, match="one shape"):
        ppo_policy_loss(torch.zeros(1, 2), torch.zeros(1, 3), torch.zeros(1, 2), torch.ones(1, 2))
