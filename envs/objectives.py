"""What a generated net is judged on: the net as generated ("plain"), or the net as it will be deployed.

An objective is data (`Objective`: a name and its parameters, from the `env` section); what it does is three small
pure functions on stacked weight sets (key -> (G, *shape)) or on inputs:

- `quantize`: per-tensor symmetric uniform quantisation of each weight matrix or kernel to `bits` bits;
- `prune`: global magnitude pruning of the weight matrices and kernels to a `sparsity`, per net;
- `noisy_inputs`: the inputs plus Gaussian noise of std `noise_std`, drawn from a seed.

Only weight matrices and kernels (tensors of two or more dimensions per net) are quantised or pruned. Biases and
BatchNorm parameters and statistics stay in float, as deployed int kernels keep biases at 32 bits and fold BatchNorm.

`score_objective` scores G nets on one objective: the transformed nets on the (maybe noised) split. The env, the
scoring workers and the trainer's held-out evaluations all call it. Its reward gradient (`grad=True`) is taken at the
transformed weights and carried back to the generated ones (`Objective.pullback`): through the quantiser's
straight-through rounding and its max-based scale (LSQ-style), and through pruning as a soft top-k that keeps the
budget of kept weights (`prune_pullback`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Optional

import torch
from torch import nn

from envs.scoring import Scores, Weights, score_batch, stack_weights
from envs.tasks import Split

OBJECTIVES = ("plain", "quantized", "pruned", "noisy")
PARAMETER = {"quantized": "bits", "pruned": "sparsity", "noisy": "noise_std"}
"""each objective's own parameter (an `env` key)"""


@dataclass(frozen=True)
class Objective:
    """An objective and its parameters; `of(env_cfg)` reads them from an experiment's `env` section."""

    name: str = "plain"
    bits: int = 4
    sparsity: float = 0.9
    noise_std: float = 1.0
    input_noise: float = 0.0
    """std of Gaussian noise added to the inputs on top of the objective's own: GRPO's `grpo.input_noise`, a
    regulariser of the reward it trains on (like data augmentation); evaluations never set it"""

    @classmethod
    def of(cls, env_cfg) -> "Objective":
        """The objective `env_cfg` names, with its own parameter read from it (the others keep their defaults, so two
        objectives are equal when what they score is: a noisy-input policy is not another objective at other bits)."""
        own = PARAMETER.get(env_cfg.objective)
        return cls(env_cfg.objective, **({own: getattr(env_cfg, own)} if own else {}))

    @property
    def plain(self) -> bool:
        return self.name == "plain"

    def describe(self) -> str:
        return {"plain": "plain accuracy", "quantized": f"accuracy at {self.bits}-bit weights",
                "pruned": f"accuracy at {self.sparsity:.0%} sparsity",
                "noisy": f"accuracy on inputs + N(0, {self.noise_std}^2) noise"}[self.name]

    def weights(self, stacked: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The deployed form of G stacked nets (key -> (G, *shape))."""
        if self.name == "quantized":
            return {k: quantize(v, self.bits) if transformed(v) else v for k, v in stacked.items()}
        if self.name == "pruned":
            return prune(stacked, self.sparsity)
        return dict(stacked)

    def pullback(self, stacked: Mapping[str, torch.Tensor], deployed: Mapping[str, torch.Tensor],
                 grad: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The reward's gradient at the generated weights `stacked` from its gradient `grad` at their deployed form
        (`weights(stacked)`): through `quantize`'s straight-through rounding and its scale; through pruning as a soft
        top-k (`prune_pullback`); the identity for the others."""
        if self.name == "pruned":
            return prune_pullback(stacked, deployed, grad)
        if self.name != "quantized":
            return dict(grad)
        out = dict(grad)
        for k, g in grad.items():
            if transformed(stacked[k]):
                w = stacked[k].detach().to(g.dtype).requires_grad_(True)
                with torch.enable_grad():
                    out[k] = torch.autograd.grad(quantize(w, self.bits), w, g)[0]
        return out

    @property
    def input_std(self) -> float:
        """The std of the Gaussian noise on the inputs the nets are scored on: the "noisy" objective's and the
        training noise (`input_noise`) together, as one draw (independent Gaussians add in variance)."""
        return math.hypot(self.noise_std if self.name == "noisy" else 0.0, self.input_noise)

    def inputs(self, split: Split, seed: int) -> Split:
        """The split the nets are scored on: with noise of std `input_std` drawn from `seed`, else `split` itself."""
        if self.input_std == 0:
            return split
        return Split(noisy_inputs(split.x, self.input_std, seed), split.y)


def transformed(v: torch.Tensor) -> bool:
    """Whether a stacked entry (G, *shape) is a weight matrix or kernel: quantised and pruned. Biases, BatchNorm
    parameters and statistics (one dimension per net) and integer buffers are left as they are."""
    return v.is_floating_point() and v.dim() >= 3


def quantize(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric uniform quantisation of each of G tensors (G, *shape) to `bits` bits, one scale per tensor:
    w -> round(w / s) * s with s = max|w| / (2^(bits-1) - 1), so the levels are -L..L for L = 2^(bits-1) - 1. An
    all-zero tensor stays zero.

    Differentiable as learned-step-size quantisation (LSQ) reads it: the rounding is passed straight through, and
    the scale is a function of the largest |w|, so d q_i / d w_i = 1 and the largest weight also collects
    sum_i g_i (round(w_i / s) - w_i / s) / L. That second term is what lets a reward shrink an outlier weight to give
    the other weights finer levels: with the scale detached, every weight in the zero bin moves without changing the
    deployed net (docs/HISTORY.md: 4-bit)."""
    levels = 2 ** (bits - 1) - 1
    scale = w.abs().flatten(1).amax(1).clamp_min(torch.finfo(w.dtype).tiny) / levels
    scale = scale.view(-1, *[1] * (w.dim() - 1))
    x = w / scale
    q = torch.round(x.detach()).clamp(-levels, levels)
    surrogate = (x + (q - x).detach()) * scale  # the gradient's path; its value equals q * scale up to rounding
    return (q * scale).detach() + (surrogate - surrogate.detach())


def prune(stacked: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Global magnitude pruning of each of G nets: the round(sparsity x P) smallest-magnitude entries of its P
    weight-matrix and kernel entries (over all such tensors together) set to zero; ties broken by position."""
    keys = [k for k, v in stacked.items() if transformed(v)]
    flat = torch.cat([stacked[k].detach().flatten(1) for k in keys], 1)  # (G, P)
    drop = round(sparsity * flat.shape[1])
    keep = torch.ones_like(flat, dtype=torch.bool)
    if drop:
        keep.scatter_(1, flat.abs().argsort(dim=1, stable=True)[:, :drop], False)
    out, offset = dict(stacked), 0
    for k in keys:
        n = stacked[k][0].numel()
        out[k] = stacked[k] * keep[:, offset:offset + n].view_as(stacked[k])
        offset += n
    return out


def prune_pullback(stacked: Mapping[str, torch.Tensor], deployed: Mapping[str, torch.Tensor],
                   grad: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reward's gradient `grad` at the deployed weights carried through global magnitude pruning, read as a soft
    top-k: per net the mask m_i = sigmoid((|w_i| - theta) / tau), theta the net's threshold (its smallest kept |w|)
    moving so that sum_i m_i, the budget, stays fixed, and tau = theta / 4. The deployed net keeps the hard mask; the
    gradient is g_j 1[w_j kept] + s_j sign(w_j) (g_j w_j - c), with s = m' / tau and c = sum_i s_i g_i w_i / sum_i s_i:
    a weight near the threshold is pushed in when what it would add beats what the weights it would push out give.
    (The gradient masked to the kept weights alone let pruned weights that move with kept ones through the shared
    policy cross the threshold unseen and push others out: on digits the first layer's share of the budget fell from
    6.4% to 1.9% of its weights, and GRPO lost 2.68 pts against imitation.)"""
    keys = [k for k in grad if transformed(stacked[k])]
    if not keys:
        return dict(grad)
    dtype = grad[keys[0]].dtype
    w = torch.cat([stacked[k].detach().flatten(1) for k in keys], 1).to(dtype)  # (G, P)
    g = torch.cat([grad[k].flatten(1) for k in keys], 1)
    kept = torch.cat([(deployed[k] != 0).flatten(1) for k in keys], 1).to(dtype)
    a = w.abs()
    theta = torch.where(kept > 0, a, torch.full_like(a, float("inf"))).min(1, keepdim=True).values
    theta = torch.where(torch.isfinite(theta), theta, torch.zeros_like(theta))
    tau = (theta / 4).clamp_min(torch.finfo(dtype).tiny)
    m = torch.sigmoid((a - theta) / tau)
    s = m * (1 - m) / tau
    gw = g * w
    c = (s * gw).sum(1, keepdim=True) / s.sum(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    flat = g * kept + s * torch.sign(w) * (gw - c)
    out, offset = dict(grad), 0
    for k in keys:
        n = grad[k][0].numel()
        out[k] = flat[:, offset:offset + n].view_as(grad[k])
        offset += n
    return out


def noisy_inputs(x: torch.Tensor, std: float, seed: int) -> torch.Tensor:
    """`x` plus Gaussian noise of std `std`, drawn on the CPU from `seed` (the same on every device and worker)."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed)) * std
    return x + noise.to(x.device, x.dtype)


def score_objective(model: nn.Module, weights: Weights, split: Split, objective: Optional[Objective] = None,
                    noise_seed: int = 0, chunk_size: int = 16, grad: bool = False, per_example: bool = False,
                    example_weights: Optional[torch.Tensor] = None) -> Scores:
    """`envs.scoring.score_batch` of the nets' deployed form on the objective's split (None: plain). With `grad`,
    the reward gradient at the deployed weights, passed straight through the transform; `per_example` and
    `example_weights` as `score_batch` reads them."""
    extra = {"grad": grad, "per_example": per_example, "example_weights": example_weights}
    if objective is None or (objective.plain and objective.input_std == 0):
        return score_batch(model, weights, split, chunk_size, **extra)
    stacked = stack_weights(weights, model.state_dict())
    deployed = objective.weights(stacked)
    scores = score_batch(model, deployed, objective.inputs(split, noise_seed), chunk_size, **extra)
    return replace(scores, grad=objective.pullback(stacked, deployed, scores.grad)) if grad else scores
