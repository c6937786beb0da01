import math

import pytest
import torch

from trainer.algos import clipped_policy_loss, compute_grpo_advantages


def test_group_relative_advantages_by_hand():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 0.5], [0.2, 0.4, 0.6, 0.8]])
    adv, zero = compute_grpo_advantages(rewards, scale_by_std=True, eps=0.0)
    assert zero.tolist() == [False, True, False]
    torch.testing.assert_close(adv[0], torch.tensor([1.0, -1.0, -1.0, 1.0]))
    assert torch.equal(adv[1], torch.zeros(4))
    std = math.sqrt((0.3 ** 2 + 0.1 ** 2) * 2 / 4)  # population std of 0.2, 0.4, 0.6, 0.8
    torch.testing.assert_close(adv[2], torch.tensor([-0.3, -0.1, 0.1, 0.3]) / std)


def test_dr_grpo_does_not_divide_by_std():
    adv, _ = compute_grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 1.0]]), scale_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([[0.5, -0.5, -0.5, 0.5]]))


def test_eps_keeps_tiny_spreads_finite():
    adv, zero = compute_grpo_advantages(torch.tensor([[0.5, 0.5 + 1e-7]]), eps=1e-4)
    assert torch.isfinite(adv).all() and adv.abs().max() < 1e-3 and not zero.any()


# clipfrac counts ratios outside [1 - c, 1 + c] (CleanRL's convention), whether or not the min picked the clipped term.
@pytest.mark.parametrize("ratio, adv, expected, clipped", [
    (1.2, 1.0, -1.1, True),     # gain capped at 1 + c
    (1.2, -1.0, 1.2, True),     # losses are never capped: min picks the unclipped term
    (0.8, 1.0, -0.8, True),
    (0.8, -1.0, 0.9, True),     # 1 - c bounds the benefit of lowering a bad sample's probability
    (1.05, 2.0, -2.1, False),   # inside the range: plain ratio * A
])
def test_clipped_loss_by_hand(ratio, adv, expected, clipped):
    old = torch.tensor([-1.3])
    loss, stats = clipped_policy_loss(old + math.log(ratio), old, torch.tensor([adv]), clip_range=0.1)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert stats["clipfrac"].item() == float(clipped)
    assert stats["approx_kl"].item() == pytest.approx((ratio - 1) - math.log(ratio), rel=1e-4)


def test_clipped_loss_at_ratio_one_is_minus_mean_advantage_with_its_gradient():
    lp = torch.tensor([-2.0, -1.0, -3.0], requires_grad=True)
    adv = torch.tensor([1.0, -2.0, 0.5])
    loss, stats = clipped_policy_loss(lp, lp.detach(), adv, clip_range=0.01)
    assert loss.item() == pytest.approx(0.5 / 3) and stats["clipfrac"].item() == 0.0
    loss.backward()
    torch.testing.assert_close(lp.grad, -adv / 3)
