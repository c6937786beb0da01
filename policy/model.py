"""The denoising policy: (weights at t1, t1, t2) -> a Gaussian over weights at t2, exactly permutation-equivariant.

Every unit (a neuron or a conv channel) is a node; every weight tensor links the units of its output group to those of
its input group. Rounds of message passing run the weights over the node states in both directions (a forward and a
backward pass on embeddings), then self-attention mixes all units. Updates are low-rank products of node states, so no
parameter depends on a layer's width, and no hidden unit carries an index: permuting a group's units permutes the
output the same way. Only fixed-order groups (input features, classes) carry position embeddings.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from policy.tokenizer import KINDS, Layout


@dataclass
class PolicyConfig:
    dim: int = field(default=64, metadata={"min": 1})
    """width of unit embeddings"""
    rounds: int = field(default=3, metadata={"min": 0})
    """message-passing + attention rounds"""
    heads: int = field(default=4, metadata={"min": 1})
    std_floor: float = field(default=1e-3, metadata={"gt": 0, "why": "log-probs must stay finite"})
    """lower bound of the step's std (in scaled units), so log-probs stay finite"""
    std_init: float = field(default=0.05, metadata={"gt": 0})
    """std of every tensor before training"""
    latent_dim: int = field(default=16, metadata={"min": 1})
    """k: dimensions of each unit's latent, a fixed k-dimensional subspace of its (dim-wide) state"""
    latent_std: float = field(default=0.1, metadata={"gt": 0})
    """std of each latent dimension: a generative policy's prior std, a regressor's latent std when it samples in
    "units" mode unless `Sampling.latent_std` says otherwise (the unit states are layer-normalised: about 1 per
    dimension)"""
    generative: bool = False
    """a conditional latent-variable model of SGD's outcomes (imitation fits it by the ELBO): a posterior encoder that
    sees the pair (W at t1, W at t2) infers each unit's latent, a nonlinear per-unit decoder lifts it into the unit's
    state before the weight head, and the prior is N(latent mean, latent_std) given W at t1. Its samples are each like
    one SGD run; with false the policy is a regressor of their average (the latent only explores, in GRPO)"""
    flow: bool = False
    """a flow from the init to SGD's final weights (rectified flow, Liu et al. 2022): the policy predicts the final
    weights from weights on the straight line between an init and its run's final weights, at the line's position t1,
    and a step from t1 to t2 moves the share (t2 - t1) / (1 - t1) of the way to that prediction (an Euler step of the
    flow). Imitation then fits the end from points of every line rather than SGD's outcome from SGD's own checkpoints,
    so a walk of many small steps carries the inits' distribution to that of SGD's nets, each unit moved from where it
    is, instead of writing every net from the average of SGD's outcomes. Time is the line's, not SGD's progress"""
    posterior: bool = True
    """generative policies: build the posterior encoder, which the ELBO fits. Imitation sets it false for a policy it
    fits by the energy score (`imitate.generative_loss`), which needs none"""
    posterior_rounds: int = field(default=2, metadata={"min": 0})
    """message-passing rounds of the posterior encoder's own trunk over W at t2 (generative policies only)"""
    input_state: Literal["messages", "static"] = "messages"
    """how the input group's unit states are formed: "messages" (like every other group's: each round updates them from
    the backward messages along the weights they feed) or "static" (their position, group and time embeddings only: no
    message reaches them and no round updates them, so they cost nothing per round; on a wide input, such as MNIST's
    784 pixels, updating them is most of the policy's work)"""
    max_groups: int = field(default=64, metadata={"min": 1})
    """size of the group-depth embedding table"""
    max_tensors: int = field(default=256, metadata={"min": 1})
    """size of the tensor embedding table"""


@dataclass
class Sampling:
    """How the policy's sampled steps draw. Not a setting of the model nor of an experiment's `policy` section: GRPO
    sets it from `grpo.noise`, `grpo.temperature` and `grpo.latent_std`, and it is saved with the policy (policy.json's
    `sampling`), so that `trainer.generate --samples` draws the way GRPO explored."""

    noise: Literal["iid", "units"] = "iid"
    """"iid" (independent Gaussian noise on every weight, one std per tensor from the std head) or "units" (a Gaussian
    latent on the state of every hidden and output unit, just before the weight head; the weights follow from the
    latent deterministically, so a draw moves whole rows and columns of the weight matrices together). A generative
    policy always draws its latent"""
    temperature: float = field(default=1.0, metadata={"gt": 0})
    """multiplies every per-weight std (after the floor), in "iid" mode"""
    latent_std: Optional[float] = field(default=None, metadata={"gt": 0})
    """the latent's std in "units" mode; None: the policy's own `latent_std`"""


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

    def forward(self, h: dict, edges: list["Edge"], temb: torch.Tensor, attend: list[str],
                static: frozenset = frozenset()) -> dict:
        """`static`: groups whose states this round neither messages nor updates."""
        fwd, bwd = {}, {}
        for e in edges:
            # fwd[out][o] = sum_{i, r} w[o, i, r] * fwd_value(h[inp])[i] * u[r] / sqrt(I R); bwd alike, transposed.
            _accumulate(fwd, e.out, _collapse(_mix(e.to_out, h[e.inp], self.fwd_value), e.u_out))
            if e.inp not in static:
                _accumulate(bwd, e.inp, _collapse(_mix(e.to_in, h[e.out], self.bwd_value), e.u_in))
        out = dict(h)
        for g in out.keys() - set(attend) - static:
            out[g] = h[g] + self.node_update(h[g], temb, fwd.get(g), bwd.get(g))
        # The attended groups take one node update over their concatenation, which attention needs anyway (a group
        # without a message gets zeros there): fewer, larger ops.
        nodes = torch.cat([h[g] for g in attend], dim=1)  # (B, N, d)
        nodes = nodes + self.node_update(nodes, temb, *(_cat_messages(m, attend, h) for m in (fwd, bwd)))
        q = self.attn_norm(nodes)
        nodes = nodes + self.attn(q, q, q, need_weights=False)[0]
        nodes = nodes + self.ff(self.ff_norm(nodes))
        out.update(zip(attend, nodes.split([h[g].shape[1] for g in attend], dim=1)))
        return out

    def node_update(self, v: torch.Tensor, temb: torch.Tensor, fwd: Optional[torch.Tensor],
                    bwd: Optional[torch.Tensor]) -> torch.Tensor:
        """node_mlp(node_norm(cat[v + temb, fwd, bwd])), a missing message counting as zeros.

        A missing block (the input group gets no forward message) is not built: the LayerNorm is folded into the
        first linear layer, and the zero block's normalised value, -mu / sigma on every feature, reaches it as one
        extra column weighted by that block's summed weights. On MNIST the 784 input units are most of the policy's
        work, and this third of their largest matmul was zeros. Same function, to float rounding."""
        norm, lin = self.node_norm, self.node_mlp[0]
        d = v.shape[-1]
        blocks = (v + temb[:, None], fwd, bwd)
        present = [k for k, p in enumerate(blocks) if p is not None]
        missing = 3 - len(present)
        gained = (lin.weight * norm.weight).split(d, dim=1)  # the norm's gain moved into the weights: 3 x (2d, d)
        cols = [gained[k] for k in present] + ([sum(gained[k] for k in range(3) if k not in present).sum(1, keepdim=True)]
                                               if missing else [])
        z = torch.cat([blocks[k] for k in present] + ([v.new_zeros(*v.shape[:-1], 1)] if missing else []), dim=-1)
        mu = z.sum(-1, keepdim=True) / (3 * d)
        z = z - mu  # the extra column now holds -mu
        var = (torch.linalg.vecdot(z, z)[..., None] + (missing * d - bool(missing)) * mu.square()) / (3 * d)
        y = F.linear(z * torch.rsqrt(var + norm.eps), torch.cat(cols, dim=1), lin.bias + lin.weight @ norm.bias)
        return self.node_mlp[2](self.node_mlp[1](y))


@dataclass(frozen=True)
class WeightLink:
    """A weight tensor as an edge between unit groups: its key, its index among the layout's tensors, and its ends."""

    key: str
    index: int
    out: str
    inp: str


@dataclass
class Edge:
    """A weight tensor of one forward pass, laid out for the messages along it (built once, used by every round)."""

    out: str
    inp: str
    to_out: torch.Tensor  # (B, O R, I): w[o, i, r] at row o R + r
    to_in: Optional[torch.Tensor]  # (B, I R, O): w[o, i, r] at row i R + r; None when no message goes to the input
    u_out: torch.Tensor  # (R, d): kernel-position and tensor embedding, / sqrt(I R)
    u_in: torch.Tensor  # (R, d): the same, / sqrt(O R)


def _cat_messages(m: dict, groups: list[str], h: dict) -> Optional[torch.Tensor]:
    """The messages of `groups` concatenated along units, zeros for a group that got none; None if none did."""
    if not any(g in m for g in groups):
        return None
    return torch.cat([m[g] if g in m else torch.zeros_like(h[g]) for g in groups], dim=1)


def _mix(w: torch.Tensor, h: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    """w @ lin(h) for w (B, M, N) and h (B, N, d) -> (B, M, d), associated the cheaper way: when M < N (32 hidden
    units reading 784 inputs) mixing first and projecting after skips the projection of the N states."""
    if w.shape[1] < w.shape[2]:
        return F.linear(w @ h, lin.weight) + w.sum(-1, keepdim=True) * lin.bias
    return w @ lin(h)


def _mix_t(left: torch.Tensor, h: torch.Tensor, lin: nn.Linear) -> torch.Tensor:
    """left @ lin(h)^T for left (B, M, d) and h (B, N, d) -> (B, M, N), associated the cheaper way (see `_mix`)."""
    if left.shape[1] < h.shape[1]:
        return (left @ lin.weight) @ h.transpose(1, 2) + (left @ lin.bias)[..., None]
    return left @ lin(h).transpose(1, 2)


def _collapse(m: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, n R, d) messages per kernel position, weighted by u (R, d) and summed over R -> (B, n, d)."""
    r = u.shape[0]
    if r == 1:
        return m * u[0]
    return (m.view(m.shape[0], -1, r, m.shape[-1]) * u).sum(2)


def _accumulate(acc: dict, group: str, m: torch.Tensor) -> None:
    acc[group] = acc[group] + m if group in acc else m


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

    def __init__(self, cfg: PolicyConfig, layout: Layout, centres: Optional[list[float]] = None):
        """`centres`: per tensor of the layout, the token value its per-unit entries are read and updated relative to
        (`Tokenizer.centres`: BatchNorm's scale and variance start at 1, every other kind at 0); default all 0."""
        super().__init__()
        d = cfg.dim
        self.cfg, self.layout = cfg, layout
        self.sampling = Sampling()  # how sampled steps draw: GRPO sets it, and it is saved with the policy
        assert len(layout.groups) <= cfg.max_groups and len(layout.tensors) <= cfg.max_tensors
        self.position = nn.ParameterDict({g.name: nn.Parameter(0.5 * torch.randn(g.size, d))
                                          for g in layout.groups if g.fixed})
        self.group_emb = nn.Embedding(cfg.max_groups, d)
        self.tensor_emb = nn.Embedding(cfg.max_tensors, d)
        self.kind_value = nn.Parameter(torch.randn(len(KINDS), d))
        rests = sorted({t.token_shape[2] for t in layout.tensors if t.kind == "weight"})
        self.rest_in = nn.ParameterDict({str(r): nn.Parameter(torch.randn(r, d)) for r in rests})
        self.rest_out = nn.ParameterDict({str(r): nn.Parameter(0.1 * torch.randn(r, d)) for r in rests})
        # A conv kernel's positions each get their own left factor (zero at init, added to the shared one): with only
        # the shared factor times a fixed per-position code, the R slices of one update are tied to the same d
        # components, too few for a (out, in, 9) update between two hidden groups.
        self.rest_left = nn.ParameterDict({str(r): nn.Parameter(torch.zeros(d, r * d)) for r in rests if r > 1})
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
        self.static = frozenset([layout.groups[0].name] if cfg.input_state == "static" else [])
        self.links = [WeightLink(t.key, ti, t.out, t.inp) for ti, t in enumerate(layout.tensors) if t.kind == "weight"]
        self.latent_mean = UnitLatent(d, cfg.latent_dim)
        # Per-tensor codes for the per-unit tensors, read in (encode) and written out (decode), zero at init: a group
        # may own several tensors of one kind (a ResNet's residual stream holds the stem's BN and every block's second
        # BN), and the kind alone would give them one input direction and one predicted update.
        self.unit_value = nn.Parameter(torch.zeros(cfg.max_tensors, d))
        self.unit_out = nn.Parameter(torch.zeros(cfg.max_tensors, d))
        self.register_buffer("centre", torch.tensor(centres or [0.0] * len(layout.tensors)), persistent=False)
        if cfg.generative:  # built last: a regressor's parameters, and so its init, are as they always were
            k = cfg.latent_dim
            if cfg.posterior:  # the posterior's trunk over W at t2: a trunk of the same design (its weight head unused)
                self.posterior_trunk = DenoisingPolicy(dataclasses.replace(cfg, generative=False,
                                                                           rounds=cfg.posterior_rounds), layout, centres)
                self.posterior_head = _mlp(2 * d, 2 * d, 2 * k)  # cat[state at t1, state at t2] -> (mean, log std)
            self.lift_mlp = _mlp(d + k, 2 * d, d)  # the nonlinear part of the decoder: which feature a unit becomes
            nn.init.zeros_(self.lift_mlp[-1].weight)
            nn.init.zeros_(self.lift_mlp[-1].bias)

    def forward(self, x: dict[str, torch.Tensor], t1: torch.Tensor, t2: torch.Tensor):
        """The step's Gaussian over weights: its mean is the weight head at the unit latent's mean."""
        h, heads = self.encode(x, t1, t2)
        mean, _ = self.latent(h)
        return self.decode(x, self.lift(h, mean), heads)

    def latent(self, h: dict) -> tuple[dict, dict]:
        """The unit latent of the noised groups (every group but the input's), given the unit states: (mean, std),
        group -> (B, n, k) and (B,)."""
        first = next(iter(h.values()))
        value = self.cfg.latent_std if self.sampling.latent_std is None else self.sampling.latent_std
        std = torch.full((first.shape[0],), value, dtype=first.dtype, device=first.device)
        return {g: self.latent_mean(h[g]) for g in self.attend}, {g: std for g in self.attend}

    def lift(self, h: dict, u: dict) -> dict:
        """Unit states moved by their latent (in the latent's subspace, and for a generative policy through a per-unit
        MLP of state and latent): what the weight head reads."""
        out = {**h, **{g: h[g] + u[g] @ self.latent_mean.basis.T for g in u}}
        if self.cfg.generative:
            out.update({g: out[g] + self.lift_mlp(torch.cat([h[g], u[g]], dim=-1)) for g in u})
        return out

    def posterior(self, h: dict, x2: dict[str, torch.Tensor], t1: torch.Tensor, t2: torch.Tensor) -> tuple[dict, dict]:
        """q(latent | W at t1, W at t2): per unit of every noised group, (mean, std), each (B, n, k). `h`: the unit
        states of W at t1 (`encode`); the pair's units are the same units, so each unit's two states sit side by side
        and permuting units permutes the posterior alike."""
        h2, _ = self.posterior_trunk.encode(x2, t1, t2)
        mean, std = {}, {}
        for g in self.attend:
            m, log_std = self.posterior_head(torch.cat([h[g], h2[g]], dim=-1)).chunk(2, dim=-1)
            mean[g], std[g] = m, F.softplus(log_std) + self.cfg.std_floor
        return mean, std

    def encode(self, x: dict[str, torch.Tensor], t1: torch.Tensor, t2: torch.Tensor) -> tuple[dict, torch.Tensor]:
        """Message passing and attention: (unit states, group -> (B, n, d); per-tensor heads (B, T, 3): the gain on
        the current values, the raw std, and the share of the predicted update the step takes (1, but for a flow)."""
        layout = self.layout
        b = t1.shape[0]
        # A flow policy predicts the end of the line whatever the step: its trunk sees (t1, 1), and the step's share of
        # the way travels beside the per-tensor heads to `decode`.
        temb = self.time(t1, torch.ones_like(t2) if self.cfg.flow else t2)  # (B, d)
        h = {}
        for gi, g in enumerate(layout.groups):
            v = self.group_emb.weight[gi] + self.position[g.name] if g.fixed else self.group_emb.weight[gi][None]
            h[g.name] = (v + temb[:, None]).expand(b, g.size, -1)
        for ti, t in enumerate(layout.tensors):
            if t.kind != "weight":
                code = self.kind_value[KINDS.index(t.kind)] + self.unit_value[ti]
                h[t.out] = h[t.out] + (x[t.key] - self.centre[ti])[..., None] * code
        edges = []
        for t in self.links:
            w = x[t.key]  # (B, O, I, R)
            o, i, r = w.shape[1:]
            u = self.rest_in[str(r)] + self.tensor_emb.weight[t.index]  # (R, d): where in the kernel / which tensor
            to_in = None if t.inp in self.static else w.permute(0, 2, 3, 1).reshape(b, i * r, o)
            edges.append(Edge(t.out, t.inp, w.transpose(2, 3).reshape(b, o * r, i), to_in, u / math.sqrt(i * r),
                              u / math.sqrt(o * r)))
        for rnd in self.rounds:
            h = rnd(h, edges, temb, self.attend, self.static)
        h = {g: self.out_norm(v) for g, v in h.items()}
        heads = self.tensor_head(self.tensor_emb.weight[: len(layout.tensors)][None] + temb[:, None])  # (B, T, 2)
        share = (t2 - t1) / (1 - t1).clamp(min=1e-6) if self.cfg.flow else torch.ones_like(t1)
        return h, torch.cat([heads, share.view(b, 1, 1).expand(b, heads.shape[1], 1)], dim=2)

    def decode(self, x: dict[str, torch.Tensor], h: dict, heads: torch.Tensor) -> tuple[dict, dict]:
        """The weight head: (unit states, tensor heads) -> (mean, std) of the weights at t2."""
        layout, cfg = self.layout, self.cfg
        mean, std = {}, {}
        for ti, t in enumerate(layout.tensors):
            cur = x[t.key]
            if t.kind == "weight":
                b, o, i, r = cur.shape
                c = (self.rest_out[str(r)] + self.tensor_out_emb.weight[ti]) / math.sqrt(cfg.dim)  # (R, d)
                # delta[o, i, r] = sum_d out_left(h[out])[o, d] c[r, d] out_right(h[inp])[i, d] / sqrt(d)
                left = (self.out_left(h[t.out])[:, :, None] * c).reshape(b, o * r, -1)  # (B, O R, d)
                if r > 1:
                    left = left + (h[t.out] @ self.rest_left[str(r)]).view(b, o * r, -1) / math.sqrt(cfg.dim)
                delta = _mix_t(left, h[t.inp], self.out_right).view(b, o, r, i).transpose(2, 3)
            else:
                delta = self.unit_head(h[t.out])[..., KINDS.index(t.kind)] + h[t.out] @ self.unit_out[ti]
            gain, share = (heads[:, ti, c].view(-1, *([1] * (cur.dim() - 1))) for c in (0, 2))
            std[t.key] = self.sampling.temperature * (cfg.std_floor + F.softplus(heads[:, ti, 1] + self.std_bias))
            if cfg.flow:  # the share of the way to the predicted end
                mean[t.key] = cur + share * (delta + gain * (cur - self.centre[ti]))
                std[t.key] = heads[:, ti, 2] * std[t.key]
            else:
                mean[t.key] = cur + delta + gain * (cur - self.centre[ti])
        return mean, std
