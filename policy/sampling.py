"""Gaussian policy math (log-prob, KL, sampling) over dicts of token blocks, averaged over weight dimensions.

Every function takes batched dicts key -> (B, ...) and returns per-sample values (B,). Averaging (never summing) over
dimensions keeps log-probs of nets of any size on one scale, which is what the GRPO clip range is tuned for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

import torch

Tokens = Mapping[str, torch.Tensor]
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _per_sample_mean(parts: list[torch.Tensor]) -> torch.Tensor:
    """Mean over all non-batch dims of several (B, ...) tensors taken together -> (B,)."""
    total = sum(p.flatten(1).sum(1) for p in parts)
    count = sum(p[0].numel() for p in parts)
    return total / count


def _std_like(std: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample (B,) or full std to x's shape."""
    return std.view(-1, *([1] * (x.dim() - 1))) if std.dim() == 1 else std


def gaussian_log_prob(x: Tokens, mean: Tokens, std: Tokens) -> torch.Tensor:
    """log N(x | mean, std) averaged over every dimension of every tensor -> (B,). Where x[k] *is* mean[k] (the mean
    path) the squared term is zero and a per-sample std is not spread over the tensor: one value per sample."""
    total, count = 0.0, 0
    for k in mean:
        s = _std_like(std[k], mean[k])
        n = mean[k][0].numel()
        if x[k] is mean[k]:
            total = total + (-torch.log(s) - LOG_SQRT_2PI).flatten(1).sum(1) * (n // s[0].numel())
        else:
            total = total + (-0.5 * ((x[k] - mean[k]) / s) ** 2 - torch.log(s) - LOG_SQRT_2PI).flatten(1).sum(1)
        count += n
    return total / count


def gaussian_kl(mean_p: Tokens, std_p: Tokens, mean_q: Tokens, std_q: Tokens) -> torch.Tensor:
    """KL(N(mean_p, std_p) || N(mean_q, std_q)) in closed form, averaged over dimensions -> (B,)."""
    parts = []
    for k in mean_p:
        sp, sq = _std_like(std_p[k], mean_p[k]), _std_like(std_q[k], mean_q[k])
        parts.append(torch.log(sq / sp) + (sp ** 2 + (mean_p[k] - mean_q[k]) ** 2) / (2 * sq ** 2) - 0.5)
    return _per_sample_mean(parts)


def latent_kl(mean_q: Tokens, std_q: Tokens, mean_p: Tokens, std_p: Tokens) -> torch.Tensor:
    """KL(q || p) per unit latent dimension, summed over nothing: the groups' (B, n, k) blocks joined along units ->
    (B, N, k). Stds may be full blocks or one value per sample (B,)."""
    parts = []
    for g in mean_q:
        sq, sp = _std_like(std_q[g], mean_q[g]), _std_like(std_p[g], mean_p[g])
        parts.append(torch.log(sp / sq) + (sq ** 2 + (mean_q[g] - mean_p[g]) ** 2) / (2 * sp ** 2) - 0.5)
    return torch.cat(parts, dim=1)


def sample(mean: Tokens, std: Tokens, generator: Optional[torch.Generator] = None,
           antithetic: bool = False) -> dict[str, torch.Tensor]:
    """One draw x = mean + std * eps per dimension.

    The noise is drawn on the CPU (from `generator`, a CPU generator) and moved to the mean's device, so a seed gives
    the same draws on every device.

    antithetic: rows come in mirrored pairs (2i, 2i + 1) with noise eps and -eps (the batch must be even). Each row is
    still a draw from its Gaussian, but in a pair's contribution to a policy gradient the reward's even part in eps
    (the curvature term, which dominates the spread when there are thousands of dimensions) cancels.
    """
    out = {}
    for k, m in mean.items():
        if antithetic:
            assert m.shape[0] % 2 == 0, f"antithetic sampling needs an even batch, got {m.shape[0]}"
            half = torch.randn((m.shape[0] // 2, *m.shape[1:]), generator=generator, dtype=m.dtype)
            eps = torch.stack([half, -half], dim=1).flatten(0, 1).to(m.device)
        else:
            eps = torch.randn(m.shape, generator=generator, dtype=m.dtype).to(m.device)
        out[k] = m + _std_like(std[k], m) * eps
    return out


@dataclass
class Step:
    """One policy step of a trajectory, as GRPO stores it: input, output, and the log-prob of what was drawn.

    With "iid" noise the draw is the output `y` itself. With "units" noise it is the unit latent (`latent`, group ->
    (B, n, k)) drawn around the policy's latent mean at `states` (the unit states the trunk computed from `x`), and
    `y` is the weight head's output at that latent; `states` is kept for every step, sampled or not."""

    x: dict[str, torch.Tensor]  # input token blocks (B, ...)
    y: dict[str, torch.Tensor]  # output token blocks (B, ...)
    t1: float
    t2: float
    log_prob: torch.Tensor  # (B,) averaged over dimensions
    sampled: bool = True  # False: y is the mean (a deterministic step)
    latent: Optional[dict[str, torch.Tensor]] = None  # "units": the drawn latent (B, n, k) per noised group
    states: Optional[dict[str, torch.Tensor]] = None  # "units": the trunk's unit states (B, n, dim) per noised group


def cat_steps(parts: Sequence[Step]) -> Step:
    """One step of a trajectory whose rows were walked in chunks: the chunks' steps joined along the batch."""
    first = parts[0]

    def join(values):
        if values[0] is None:
            return None
        if isinstance(values[0], dict):
            return {k: torch.cat([v[k] for v in values]) for k in values[0]}
        return torch.cat(values)

    return Step(join([p.x for p in parts]), join([p.y for p in parts]), first.t1, first.t2,
                join([p.log_prob for p in parts]), first.sampled, join([p.latent for p in parts]),
                join([p.states for p in parts]))


def draw(policy, x: Mapping[str, torch.Tensor], t1: float, t2: float, mean_only: bool = False,
         generator: Optional[torch.Generator] = None, antithetic: bool = False) -> Step:
    """One step from token blocks x: the policy's Gaussian (over weights, or over the unit latent with
    `policy.sampling.noise == "units"`), its mean when `mean_only`, else a draw; the log-prob is that of what was drawn."""
    first = next(iter(x.values()))
    t1s, t2s = (torch.full((first.shape[0],), float(t), device=first.device) for t in (t1, t2))
    if policy.sampling.noise == "iid" and not policy.cfg.generative:  # a generative policy's randomness is its latent
        mean, std = policy(x, t1s, t2s)
        y = dict(mean) if mean_only else sample(mean, std, generator, antithetic)
        return Step(x, y, float(t1), float(t2), gaussian_log_prob(y, mean, std), not mean_only)
    h, heads = policy.encode(x, t1s, t2s)
    mean, std = policy.latent(h)
    u = dict(mean) if mean_only else sample(mean, std, generator, antithetic)
    y, _ = policy.decode(x, policy.lift(h, u), heads)
    return Step(x, y, float(t1), float(t2), gaussian_log_prob(u, mean, std), not mean_only, latent=u,
                states={g: h[g] for g in u})


def walk(policy, x0: Mapping[str, torch.Tensor], schedule: Sequence[float], mean_only: bool = False,
         generator: Optional[torch.Generator] = None, antithetic: bool = False,
         grad: bool = False) -> tuple[dict[str, torch.Tensor], list[Step]]:
    """Walk the schedule from token blocks x0 (progress schedule[0]); returns the final blocks and every step.
    `antithetic`: see `sample` (every step's noise is mirrored between rows 2i and 2i + 1). `grad`: keep the graph
    through every step (to train on the walked result)."""
    x, steps = dict(x0), []
    with torch.set_grad_enabled(grad):
        for t1, t2 in zip(schedule[:-1], schedule[1:]):
            steps.append(draw(policy, x, t1, t2, mean_only, generator, antithetic))
            x = steps[-1].y
    return x, steps
