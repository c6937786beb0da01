import math

import pytest
import torch

from trainer import algos
from trainer.algos import clipped_policy_loss, compute_grpo_advantages, control_variate_advantages, minibatches


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


def test_control_variate_estimate_is_unbiased_with_less_variance_than_the_score_function():
    """u ~ N(mu, s^2 I) in R^8, f(u) = -|tanh(M u) - t|^2. Per draw, the gradient of E[f] with respect to mu:
    score function (f(u) - f(mu)) (u - mu) / s^2, and with the control variate A (u - mu) / s^2 + grad f(mu). Both
    means match the exact gradient (a reparameterised estimate from 400k draws) within 4 standard errors; the control
    variate's variance is far smaller."""
    gen = torch.Generator().manual_seed(0)
    d, s, n = 8, 0.3, 40_000
    m = torch.randn(d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
    t, mu = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)

    def f(u):
        return -((torch.tanh(u @ m.T) - t) ** 2).sum(-1)

    exact_u = (mu + s * torch.randn(400_000, d, generator=gen, dtype=torch.float64)).requires_grad_(True)
    exact = torch.autograd.grad(f(exact_u).sum(), exact_u)[0].mean(0)
    at = mu.clone().requires_grad_(True)
    f_mu = f(at)
    slope = torch.autograd.grad(f_mu, at)[0]
    eps = torch.randn(n, d, generator=gen, dtype=torch.float64)
    u = mu + s * eps
    score = (f(u) - f_mu.detach())[:, None] * (u - mu) / s ** 2
    adv = control_variate_advantages(f(u), f_mu.detach().expand(n), slope.expand(n, d), u - mu)
    cv = adv[:, None] * (u - mu) / s ** 2 + slope
    for est in (score, cv):
        se = est.std(0) / math.sqrt(n)
        assert ((est.mean(0) - exact).abs() < 4 * se + 1e-3).all(), (est.mean(0), exact, se)
    assert (cv.var(0).sum() / score.var(0).sum()).item() < 0.1


def test_pathwise_surrogate_by_hand_and_its_gradient_is_the_mean_reward_gradient():
    from trainer.algos import pathwise_surrogate

    grads = {"a": torch.tensor([[1.0, 2.0], [0.5, -1.0]]), "b": torch.tensor([[3.0], [4.0]])}
    nets = {"a": torch.tensor([[2.0, 1.0], [4.0, 2.0]], requires_grad=True), "b": torch.tensor([[1.0], [-1.0]]),
            "frozen": torch.zeros(2, 3)}  # in the nets only: left out
    loss = pathwise_surrogate(grads, nets)
    # net 0: 1*2 + 2*1 + 3*1 = 7; net 1: 0.5*4 - 1*2 + 4*(-1) = -4; minus their mean
    assert loss.item() == pytest.approx(-1.5)
    loss.backward()
    assert torch.equal(nets["a"].grad, -grads["a"] / 2)


def test_group_spread_is_the_mean_squared_distance_to_each_groups_mean_net():
    from trainer.algos import group_spread

    gen = torch.Generator().manual_seed(0)
    nets = {"w": torch.randn(7, 3, 2, generator=gen, dtype=torch.float64),
            "b": torch.randn(7, 4, generator=gen, dtype=torch.float64)}
    group = torch.tensor([4, 4, 1, 1, 1, 9, 4])  # unsorted ids, a group of one
    flat = torch.cat([nets["w"].flatten(1), nets["b"]], 1)
    want = []
    for g in (1, 4, 9):  # the order of group.unique()
        members = flat[group == g]
        want.append(sum(((row - members.mean(0)) ** 2).sum() for row in members) / len(members))
    torch.testing.assert_close(group_spread(nets, group), torch.stack(want))
    assert group_spread(nets, group)[2] == 0


def test_minibatches_by_rows_and_by_whole_groups():
    keep = torch.arange(4 * 6)  # B = 4 groups of G = 6
    rows = minibatches(keep, 6, 8, "rows", torch.Generator().manual_seed(0))
    want = keep[torch.randperm(24, generator=torch.Generator().manual_seed(0))].split(8)  # the order GRPO always used
    assert [r.tolist() for r in rows] == [w.tolist() for w in want]

    grouped = minibatches(keep, 6, 13, "groups", torch.Generator().manual_seed(0))
    assert [len(m) for m in grouped] == [12, 12]  # 13 rounds down to two whole groups a step
    assert sorted(torch.cat(grouped).tolist()) == keep.tolist()  # each trajectory once an epoch
    for m in grouped:  # whole groups, each one's members together and in order
        for g in m.view(-1, 6):
            assert g.tolist() == list(range(g[0].item(), g[0].item() + 6)) and g[0] % 6 == 0
    assert len(minibatches(keep, 6, 2, "groups", torch.Generator())) == 4  # smaller than a group: one group a step

    dropped = torch.cat([keep[:6], keep[12:]])  # drop_zero_spread left group 1 out
    assert sorted(torch.cat(minibatches(dropped, 6, 6, "groups", torch.Generator())).tolist()) == dropped.tolist()


def test_ensemble_example_weights_give_the_mixed_ensemble_gradient():
    """Per-net cross-entropies weighted by `ensemble_example_weights` have, on every net's logits, the gradient of
    (1 - a) x sum_b CE_b + a x B x CE(mean_b softmax_b) summed over the G ensembles (autograd, float64); a = 0 gives
    weights of one; `ensemble_loss` is that ensemble CE, computed here from the averaged probabilities."""
    gen = torch.Generator().manual_seed(0)
    b, g, n, c = 4, 3, 5, 6
    logits = (torch.randn(b, g, n, c, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    y = torch.randint(c, (n,), generator=gen)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 2), y.repeat(b * g), reduction="none").view(b, g, n)
    ens = -torch.log(logits.softmax(-1).mean(0).gather(-1, y.view(1, n, 1).expand(g, n, 1)).squeeze(-1))  # (G, N)
    torch.testing.assert_close(algos.ensemble_loss(ce.detach()), ens.mean(-1).detach())
    assert (algos.ensemble_example_weights(ce.detach(), 0.0) == 1).all()
    for a in (0.3, 1.0):
        want = torch.autograd.grad((1 - a) * ce.sum() + a * b * ens.sum(), logits, retain_graph=True)[0]
        w = algos.ensemble_example_weights(ce.detach(), a)
        torch.testing.assert_close(w.mean(0), torch.ones(g, n, dtype=torch.float64))
        got = torch.autograd.grad((w * ce).sum(), logits, retain_graph=True)[0]
        torch.testing.assert_close(got, want)


def test_feature_repulsion_by_hand_is_scale_and_permutation_invariant_and_ignores_its_own_init():
    """Each unit's soft maximum of its cosine with the units of other inits' nets, on hand-made features: two inits,
    the first with two nets. Scaling a unit or permuting a net's units changes nothing; a net's own units and its
    init's other nets never count; as the temperature falls the penalty tends to the mean hard maximum."""
    s = 2 ** -0.5
    f = torch.tensor([[[1.0, 0.0], [0.0, 1.0]],   # init 0
                      [[1.0, 0.0], [0.0, -1.0]],  # init 0 again: shares a unit with the first net, never repels it
                      [[s, s], [-1.0, 0.0]]],      # init 1
                     dtype=torch.float64)
    group = torch.tensor([0, 0, 1])
    tau = 0.1
    lse = lambda *c: tau * math.log(sum(math.exp(v / tau) for v in c))  # noqa: E731
    want = [lse(s, -1), lse(s, 0),           # net 0's units against init 1's two units
            lse(s, -1), lse(-s, 0),          # net 1's
            lse(s, s, s, -s), lse(-1, 0, -1, 0)]  # init 1's units against all four of init 0's
    penalty, best = algos.feature_repulsion(f, group, tau)
    assert penalty.item() == pytest.approx(sum(want) / 6, rel=1e-12)
    assert best.item() == pytest.approx((s + s + s + 0 + s + 0) / 6, rel=1e-12)
    scaled = f * torch.tensor([3.0, 0.5, 7.0], dtype=torch.float64).view(3, 1, 1)
    permuted = f[:, [1, 0]]
    for other in (scaled, permuted):
        torch.testing.assert_close(algos.feature_repulsion(other, group, tau)[0], penalty)
    cold = algos.feature_repulsion(f, group, 1e-4)[0]
    assert cold.item() == pytest.approx(best.item(), abs=1e-3)


def test_feature_repulsion_gradient_pushes_the_closest_units_apart():
    """A gradient step on the penalty lowers every net's largest cosine with another init's unit."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 4, 6, generator=gen, dtype=torch.float64)
    f = (base + 0.1 * torch.randn(3, 4, 6, generator=gen, dtype=torch.float64)).requires_grad_(True)  # one dictionary
    group = torch.arange(3)
    penalty, best = algos.feature_repulsion(f, group, 0.05)
    penalty.backward()
    with torch.no_grad():
        after = algos.feature_repulsion(f - 0.05 * f.grad / f.grad.norm() * f.norm(), group, 0.05)
    assert after[0] < penalty and after[1] < best
