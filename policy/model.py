"""The denoising policy: (weights at t1, t1, t2) -> a Gaussian over weights at t2, exactly permutation-equivariant.

Every unit (a neuron or a conv channel) is a node; every weight tensor links the units of its output group to those of
its input group. Rounds of message passing run the weights over the node states in both directions (a forward and a
backward pass on embeddings), then self-attention mixes all units. Updates are low-rank products of node states, so no
parameter depends on a layer's width, and no hidden unit carries an index: permuting a group's units permutes the
output the same way. Only fixed-order groups (input features, classes) carry position embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from policy.tokenizer import KINDS, Layout


@dataclass
class PolicyConfig:
    dim: int = 64
    """width of unit embeddings"""
    rounds: int = 3
    """message-passing + attention rounds"""
    heads: int = 4
    std_floor: float = 1e-3
    """lower bound of the step's std (in scaled units), so log-probs stay finite"""
    std_init: float = 0.05
    """std of every tensor before training"""
    temperature: float = 1.0
    """multiplies every per-weight std (after the floor); GRPO sets it from `grpo.temperature`"""
    noise: str = "iid"
    """how a sampled step explores: "iid" (independent Gaussian noise on every weight, one std per tensor from the std
    head) or "units" (a Gaussian latent on the state of every hidden and output unit, just before the weight head; the
    weights follow from the latent deterministically, so a draw moves whole rows and columns of the weight matrices
    together, in the directions the head can express)"""
    latent_dim: int = 16
    """k: dimensions of each unit's latent, a fixed k-dimensional subspace of its (dim-wide) state"""
    latent_std: float = 0.1
    """std of each latent dimension in "units" mode (the unit states are layer-normalised: about 1 per dimension)"""
    max_groups: int = 64
    """size of the group-depth embedding table"""
    max_tensors: int = 256
    """size of the tensor embedding table"""


def _mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class TimeEmbedding(nn.Module):
    """Sinusoidal features of (t1, t2) -> one vector per sample."""

    def __init__(self, dim: int, freqs: int = 16):
        super().__init__()
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000.0), freqs)), persistent=False)
        self.net = _mlp(4 * freqs, dim, dim)

    def forward(self, t1: torch.Tensor, t2: torch.Tensor) -> torch.Tensor:
        f = torch.cat([t1[:, None] * self.freqs, t2[:, None] * self.freqs], dim=1)  # (B, 2F)
        return self.net(torch.cat([f.sin(), f.cos()], dim=1))


class Round(nn.Module):
    """One round: weight-borne messages between unit groups, a node update, then attention over units."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.fwd_value, self.bwd_value = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.node_norm = nn.LayerNorm(3 * dim)
        self.node_mlp = _mlp(3 * dim, 2 * dim, dim)
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff = _mlp(dim, 2 * dim, dim)

    def forward(self, h: dict, x: dict, layout: Layout, rest_in: dict, tensor_emb: torch.Tensor,
                temb: torch.Tensor, attend: list[str]) -> dict:
        fwd = {g: 0.0 for g in h}
        bwd = {g: 0.0 for g in h}
        for ti, t in enumerate(layout.tensors):
            if t.kind != "weight":
                continue
            w = x[t.key]  # (B, O, I, R)
            _, o, i, r = w.shape
            u = rest_in[str(r)] + tensor_emb[ti]  # (R, d): where in the kernel / which tensor
            to_out = torch.einsum("boir,bid->bord", w, self.fwd_value(h[t.inp]))
            fwd[t.out] = fwd[t.out] + torch.einsum("bord,rd->bod", to_out, u) / math.sqrt(i * r)
            to_in = torch.einsum("boir,bod->bird", w, self.bwd_value(h[t.out]))
            bwd[t.inp] = bwd[t.inp] + torch.einsum("bird,rd->bid", to_in, u) / math.sqrt(o * r)
        h = {g: v + self.node_mlp(self.node_norm(torch.cat(
            [v + temb[:, None], _expand(fwd[g], v), _expand(bwd[g], v)], dim=-1))) for g, v in h.items()}
        nodes = torch.cat([h[g] for g in attend], dim=1)  # (B, N, d)
        q = self.attn_norm(nodes)
        nodes = nodes + self.attn(q, q, q, need_weights=False)[0]
        nodes = nodes + self.ff(self.ff_norm(nodes))
        out, start = dict(h), 0
        for g in attend:
            n = h[g].shape[1]
            out[g] = nodes[:, start:start + n]
            start += n
        return out


def _expand(m, like: torch.Tensor) -> torch.Tensor:
    return m if isinstance(m, torch.Tensor) else torch.zeros_like(like)


class UnitLatent(nn.Module):
    """The mean of a unit's k-dim latent, a function of its state (an MLP, zero at init), and the fixed orthonormal
    basis (dim, k) that lifts a latent into state space. Its own RNG stream keeps the other parameters' init, and so
    every policy trained before it existed, unchanged."""

    def __init__(self, dim: int, k: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = _mlp(dim, 2 * dim, k)
            self.register_buffer("basis", torch.linalg.qr(torch.randn(dim, k))[0])
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., k)
        return self.net(h)


class DenoisingPolicy(nn.Module):
    """forward(x, t1, t2) -> (mean, std): dicts of token blocks; std is one value per tensor and sample (B,)."""

    def __init__(self, cfg: PolicyConfig, layout: Layout):
        super().__init__()
        d = cfg.dim
        self.cfg, self.layout = cfg, layout
        assert len(layout.groups) <= cfg.max_groups and len(layout.tensors) <= cfg.max_tensors
        self.position = nn.ParameterDict({g.name: nn.Parameter(0.5 * torch.randn(g.size, d))
                                          for g in layout.groups if g.fixed})
        self.group_emb = nn.Embedding(cfg.max_groups, d)
        self.tensor_emb = nn.Embedding(cfg.max_tensors, d)
        self.kind_value = nn.Parameter(torch.randn(len(KINDS), d))
        rests = sorted({t.token_shape[2] for t in layout.tensors if t.kind == "weight"})
        self.rest_in = nn.ParameterDict({str(r): nn.Parameter(torch.randn(r, d)) for r in rests})
        self.rest_out = nn.ParameterDict({str(r): nn.Parameter(0.1 * torch.randn(r, d)) for r in rests})
        self.tensor_out_emb = nn.Embedding(cfg.max_tensors, d)
        nn.init.normal_(self.tensor_out_emb.weight, std=0.1)
        self.time = TimeEmbedding(d)
        self.rounds = nn.ModuleList(Round(d, cfg.heads) for _ in range(cfg.rounds))
        self.out_norm = nn.LayerNorm(d)
        self.out_left, self.out_right = nn.Linear(d, d), nn.Linear(d, d)
        self.unit_head = nn.Linear(d, len(KINDS))
        self.tensor_head = _mlp(d, d, 2)  # per tensor: (gain on the current values, raw std)
        for m in (self.unit_head, self.tensor_head[-1]):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)
        # softplus(raw + std_bias) + floor == std_init before training
        self.std_bias = math.log(math.expm1(max(cfg.std_init - cfg.std_floor, 1e-6)))
        self.attend = [g.name for g in layout.groups[1:]]  # the input group is reached through messages only
        self.latent_mean = UnitLatent(d, cfg.latent_dim)

    def forward(self, x: dict[str, torch.Tensor], t1: torch.Tensor, t2: torch.Tensor):
        """The step's Gaussian over weights: its mean is the weight head at the unit latent's mean."""
        h, heads = self.encode(x, t1, t2)
        mean, _ = self.latent(h)
        return self.decode(x, self.lift(h, mean), heads)

    def latent(self, h: dict) -> tuple[dict, dict]:
        """The unit latent of the noised groups (every group but the input's), given the unit states: (mean, std),
        group -> (B, n, k) and (B,)."""
        b = next(iter(h.values())).shape[0]
        std = torch.full((b,), self.cfg.latent_std, dtype=next(iter(h.values())).dtype)
        return {g: self.latent_mean(h[g]) for g in self.attend}, {g: std for g in self.attend}

    def lift(self, h: dict, u: dict) -> dict:
        """Unit states moved by their latent (in the latent's subspace): what the weight head reads."""
        return {**h, **{g: h[g] + u[g] @ self.latent_mean.basis.T for g in u}}

    def encode(self, x: dict[str, torch.Tensor], t1: torch.Tensor, t2: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Message passing and attention: (unit states, group -> (B, n, d); per-tensor head outputs (B, T, 2))."""
        layout, cfg = self.layout, self.cfg
        b = t1.shape[0]
        temb = self.time(t1, t2)  # (B, d)
        h = {}
        for gi, g in enumerate(layout.groups):
            v = self.group_emb.weight[gi].expand(b, g.size, -1)
            if g.fixed:
                v = v + self.position[g.name]
            h[g.name] = v + temb[:, None]
        for t in layout.tensors:
            if t.kind != "weight":
                h[t.out] = h[t.out] + x[t.key][..., None] * self.kind_value[KINDS.index(t.kind)]
        for rnd in self.rounds:
            h = rnd(h, x, layout, self.rest_in, self.tensor_emb.weight, temb, self.attend)
        h = {g: self.out_norm(v) for g, v in h.items()}
        return h, self.tensor_head(self.tensor_emb.weight[: len(layout.tensors)][None] + temb[:, None])

    def decode(self, x: dict[str, torch.Tensor], h: dict, heads: torch.Tensor) -> tuple[dict, dict]:
        """The weight head: (unit states, tensor heads) -> (mean, std) of the weights at t2."""
        layout, cfg = self.layout, self.cfg
        mean, std = {}, {}
        for ti, t in enumerate(layout.tensors):
            cur = x[t.key]
            if t.kind == "weight":
                r = cur.shape[-1]
                c = self.rest_out[str(r)] + self.tensor_out_emb.weight[ti]  # (R, d)
                left = torch.einsum("bod,rd->bord", self.out_left(h[t.out]), c)
                delta = torch.einsum("bord,bid->boir", left, self.out_right(h[t.inp])) / math.sqrt(cfg.dim)
            else:
                delta = self.unit_head(h[t.out])[..., KINDS.index(t.kind)]
            gain = heads[:, ti, 0].view(-1, *([1] * (cur.dim() - 1)))
            mean[t.key] = cur + delta + gain * cur
            std[t.key] = cfg.temperature * (cfg.std_floor + F.softplus(heads[:, ti, 1] + self.std_bias))
        return mean, std
