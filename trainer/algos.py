"""GRPO math as pure functions with shapes in the docstrings, each unit-tested on hand-computed cases."""

from __future__ import annotations

import math

import torch


def compute_grpo_advantages(rewards: torch.Tensor, scale_by_std: bool = True, eps: float = 1e-4
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Group-relative advantages.

    rewards: (B, G), one group of G samples per init. Returns (advantages (B, G), zero_spread (B,) bool):
    A = (r - mean_group) / (std_group + eps), or r - mean_group when `scale_by_std` is off (Dr. GRPO).
    A group whose rewards are all equal has zero advantage and is flagged.
    """
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True, unbiased=False)
    adv = rewards - mean
    if scale_by_std:
        adv = adv / (std + eps)
    zero = std.squeeze(1) == 0
    return torch.where(zero[:, None], torch.zeros_like(adv), adv), zero


def control_variate_advantages(rewards: torch.Tensor, base: torch.Tensor, slope: torch.Tensor, noise: torch.Tensor
                                ) -> torch.Tensor:
    """Score-function advantages with a first-order control variate (MuProp, Gu et al. 2016; LAX/RELAX's
    differentiable surrogate): A = f(u) - c(u), with c(u) = f(mean) + slope . (u - mean) for a draw u around its mean.

    rewards (N,): f(u); base (N,): f at the draw's mean; slope (N, d): the surrogate's gradient at the mean; noise
    (N, d): u - mean. Whatever the slope, E[A grad log p(u)] + slope . d(mean) is an unbiased gradient of E[f(u)]
    (E[c(u)] = f(mean) exactly, c being linear in u); with the slope of the reward's linearisation, A keeps only what
    the first-order part does not explain, and most of the score function's variance goes with it.
    """
    return rewards - base - (slope * noise).sum(-1)


def pathwise_surrogate(grads: dict[str, torch.Tensor], nets: dict[str, torch.Tensor]) -> torch.Tensor:
    """Minus the reward's first-order change, averaged over nets: -mean_n sum_w grads[n, w] * nets[n, w].

    grads: key -> (N, ...) d(reward)/dW of each net, constants (from the workers); nets: key -> (N, ...) the same nets
    recomputed with the graph to the policy (keys absent from `grads` are left out). Its gradient with respect to the
    policy is the mean reward gradient through `nets` (DRaFT); its value is not a reward.
    """
    return -sum((grads[k] * nets[k]).flatten(1).sum(1) for k in grads if k in nets).mean()


def ensemble_example_weights(example_loss: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-example weights on each net's cross-entropy that make its gradient (1 - weight) x its own loss's plus
    weight x B x the loss of the ensemble it belongs to (negative correlation learning, Liu and Yao 1999).

    example_loss: (B, G, N), the cross-entropy -log p_bgn(y_n) of the net from init b, draw g, on example n; the
    ensemble of draw g is its B nets, one per init, averaging their class probabilities. Since
    d(-log mean_b p_b(y)) / d(logits_b) = r_b x d(-log p_b(y)) / d(logits_b) / B with r_b = p_b(y) / sum_b' p_b'(y)
    (net b's share of the ensemble's probability of the right class, its responsibility), the mix is one weighted
    cross-entropy per net: weights 1 + weight x (B r - 1), (B, G, N), averaging 1 over an ensemble's members. A net is
    pushed hardest on the examples it already gets right more than its ensemble does: each net specialises, and the
    ensemble gains. The weights are constants (computed from a forward pass first)."""
    b = example_loss.shape[0]
    share = torch.exp(-example_loss - torch.logsumexp(-example_loss, dim=0, keepdim=True))  # r, stable in log space
    return 1 + weight * (b * share - 1)


def ensemble_loss(example_loss: torch.Tensor) -> torch.Tensor:
    """The cross-entropy of each ensemble (the B nets of a draw, class probabilities averaged), over its examples.
    example_loss: (B, G, N) as in `ensemble_example_weights`. Returns (G,)."""
    b = example_loss.shape[0]
    return (math.log(b) - torch.logsumexp(-example_loss, dim=0)).mean(-1)


def feature_repulsion(features: torch.Tensor, group: torch.Tensor, temperature: float
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """How close each net's hidden features sit to other inits' features, as a penalty to push them apart.

    features: (N, U, F), each of N nets' U units as a vector (say, its responses to a batch of inputs); group: (N,)
    the init each net came from (nets of one init do not repel each other). For every unit, the soft maximum over the
    units of other inits' nets of their cosine, temperature x logsumexp(cos / temperature). Returns (the penalty,
    its mean over units; the hard maximum's mean, a constant for logging). Both are permutation-invariant: they see
    units as a set. Needs nets of at least two inits."""
    n, u, _ = features.shape
    units = torch.nn.functional.normalize(features.reshape(n * u, -1), dim=1)
    cos = units @ units.T
    own = group.repeat_interleave(u)
    cos = cos.masked_fill(own[:, None] == own[None, :], float("-inf"))
    soft = temperature * torch.logsumexp(cos / temperature, dim=1)
    return soft.mean(), cos.detach().max(1).values.mean()


def group_spread(nets: dict[str, torch.Tensor], group: torch.Tensor) -> torch.Tensor:
    """How far apart the nets of each group lie: the mean over a group's members of the squared L2 distance (over every
    tensor of `nets`) to the group's mean net. nets: key -> (N, ...); group: (N,) group ids. Returns (groups,) in the
    order of `group.unique()`; a group of one net has spread 0."""
    ids, inverse = group.unique(return_inverse=True)
    flat = torch.cat([v.flatten(1) for v in nets.values()], 1)
    count = torch.zeros(len(ids), dtype=flat.dtype, device=flat.device).index_add_(0, inverse, torch.ones_like(flat[:, 0]))
    mean = torch.zeros(len(ids), flat.shape[1], dtype=flat.dtype, device=flat.device).index_add_(0, inverse, flat)
    mean = mean / count[:, None]
    sq = ((flat - mean[inverse]) ** 2).sum(1)
    return torch.zeros_like(count).index_add_(0, inverse, sq) / count


def clipped_policy_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                        clip_range: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip objective, negated for minimisation, averaged over samples.

    log_prob, old_log_prob, advantages: (N,), per policy step (log-probs averaged over weight dimensions).
    Returns (loss scalar, stats): ratio = exp(log_prob - old_log_prob);
    loss = -mean(min(ratio * A, clip(ratio, 1 - c, 1 + c) * A)); clipfrac = share of samples where clipping bit;
    approx_kl = mean((ratio - 1) - log ratio) (Schulman's k3 estimator of KL(old || new)).
    """
    log_ratio = log_prob - old_log_prob
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
    loss = -torch.minimum(unclipped, clipped).mean()
    with torch.no_grad():
        stats = {"clipfrac": ((ratio - 1.0).abs() > clip_range).float().mean(),
                 "approx_kl": ((ratio - 1.0) - log_ratio).mean(),
                 "ratio_max": ratio.max()}
    return loss, stats


def learning_rate(step: int, total: int, base: float, cosine: bool) -> float:
    """A pure function of the step, so a resumed run follows the same curve without scheduler state."""
    if not cosine:
        return base
    warm = max(1, total // 20)
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def minibatches(keep: torch.Tensor, group_size: int, size: int, mode: str, gen: torch.Generator) -> list[torch.Tensor]:
    """One epoch's minibatches of the trajectory indices `keep` (whole groups of `group_size` consecutive indices when
    some are dropped): shuffled row by row ("rows"), or as whole groups, `size // group_size` (at least 1) a step."""
    if mode == "rows":
        return list(keep[torch.randperm(len(keep), generator=gen)].split(size))
    groups = keep.view(-1, group_size)
    order = groups[torch.randperm(len(groups), generator=gen)]
    return [chunk.flatten() for chunk in order.split(max(1, size // group_size))]
