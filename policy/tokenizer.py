"""State dict <-> unit tokens: each weight tensor becomes a (out units, in units, rest) block between two unit groups.

The unit layout (plain data from the reference model) says which group of units owns the rows and columns of every
tensor; units of one group share a permutation. Values are scaled per tensor by a power of two fitted on the zoo, so
the round trip is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
import typing
from typing import Iterable, Literal, Mapping, Optional

import torch

KINDS = ("weight", "bias", "bn_weight", "bn_bias", "bn_mean", "bn_var")
INIT_VALUE = {"bn_weight": 1.0, "bn_var": 1.0}
"""the value every unit of a kind starts from, where it is not 0: BatchNorm's scale and running variance"""


@dataclass(frozen=True)
class Group:
    name: str
    size: int
    fixed: bool  # order carries meaning (input features, classes): may be embedded by position


@dataclass(frozen=True)
class TensorSpec:
    key: str
    kind: str  # one of KINDS
    out: str  # group owning dim 0
    inp: Optional[str]  # group owning dim 1 (weights only)
    shape: tuple[int, ...]  # state-dict shape, without the batch dim

    @property
    def token_shape(self) -> tuple[int, ...]:
        """(out units,) for per-unit tensors; (out units, in units, rest) for weights."""
        if self.kind != "weight":
            return (self.shape[0],)
        return (self.shape[0], self.in_units, math.prod(self.shape[1:]) // self.in_units)

    in_units: int = 0


class Layout:
    """The unit groups and tensors of one reference architecture, checked against its state-dict shapes."""

    def __init__(self, layout: Mapping, shapes: Mapping[str, Iterable[int]]):
        self.groups = [Group(g["name"], int(g["size"]), bool(g["fixed"])) for g in layout["groups"]]
        self.group_index = {g.name: i for i, g in enumerate(self.groups)}
        sizes = {g.name: g.size for g in self.groups}
        self.tensors = []
        for t in layout["tensors"]:
            shape = tuple(int(s) for s in shapes[t["key"]])
            inp = t.get("in")
            assert t["kind"] in KINDS, t
            assert shape[0] == sizes[t["out"]], (t, shape)
            if inp is not None:
                assert math.prod(shape[1:]) % sizes[inp] == 0, (t, shape)
            self.tensors.append(TensorSpec(t["key"], t["kind"], t["out"], inp, shape, sizes[inp] if inp else 0))
        self.frozen = list(layout.get("frozen", []))
        self.raw = {"groups": [dict(name=g.name, size=g.size, fixed=g.fixed) for g in self.groups],
                    "tensors": [dict(key=t.key, kind=t.kind, out=t.out, **({"in": t.inp} if t.inp else {}))
                                for t in self.tensors],
                    "frozen": self.frozen}
        self.shapes = {t.key: t.shape for t in self.tensors}

    def structure(self) -> dict:
        """The layout without the sizes of its hidden (not fixed) groups: what a width-agnostic policy depends on.
        Two layouts with equal structure differ only in how many units their hidden groups hold."""
        return {**self.raw, "groups": [dict(g, size=None) if not g["fixed"] else g for g in self.raw["groups"]]}

    def layer_of(self, i: int) -> Optional[int]:
        """Index of the layer tensor `i` belongs to: the nearest weight at or before it in the layout writing into the
        same group (a bias or a BatchNorm after its weight); None if there is none."""
        return next((j for j in range(i, -1, -1)
                     if self.tensors[j].kind == "weight" and self.tensors[j].out == self.tensors[i].out), None)

    def batchnormed(self) -> list[tuple[str, list[str], str, str]]:
        """Each BatchNorm's input layer, as (weight key, bias keys, running-mean key, running-variance key): the layer
        the BatchNorm belongs to (`layer_of`), and any bias between them."""
        out = []
        for i, t in enumerate(self.tensors):
            if t.kind != "bn_mean":
                continue
            j = self.layer_of(i)
            var = next(u.key for u in self.tensors[i:] if u.out == t.out and u.kind == "bn_var")
            biases = [u.key for u in self.tensors[j + 1:i] if u.out == t.out and u.kind == "bias"]
            out.append((self.tensors[j].key, biases, t.key, var))
        return out

    def fan_in(self, key: str) -> int:
        """Incoming connections per unit of a weight tensor; for a per-unit tensor, that of the layer it belongs to
        (`layer_of`)."""
        j = self.layer_of(next(i for i, t in enumerate(self.tensors) if t.key == key))
        return 1 if j is None else math.prod(self.tensors[j].shape[1:])

    @property
    def num_values(self) -> int:
        """Dimensions the policy generates (frozen entries excluded)."""
        return sum(math.prod(s) for s in self.shapes.values())


def fit_scales(weights: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-tensor scale: the power of two nearest the values' std over all given checkpoints (any leading dims)."""
    out = {}
    for k, v in weights.items():
        std = v.double().std().item() if v.numel() > 1 else 1.0
        out[k] = float(2.0 ** round(math.log2(std))) if std > 0 and math.isfinite(std) else 1.0
    return out


WidthScales = Literal["fan_in", "keep"]
WIDTH_SCALES: tuple[str, ...] = typing.get_args(WidthScales)


def transfer_scales(scales: Mapping[str, float], fitted: Layout, target: Layout, rule: str) -> dict[str, float]:
    """Per-tensor scales fitted on one width, carried to a layout of the same structure and other hidden widths.

    "keep": the fitted scales as they are. "fan_in": weights and biases x sqrt(fan-in fitted / fan-in target), the
    1/sqrt(fan-in) that PyTorch's default init gives a layer (and that SGD keeps: README, unseen widths), so a wider
    layer's tokens stay near unit size; normalisation parameters (BN) keep theirs, they do not scale with fan-in.
    """
    assert rule in WIDTH_SCALES, rule
    assert fitted.structure() == target.structure(), "layouts differ in more than their hidden widths"
    out = {}
    for t in target.tensors:
        s = float(scales[t.key])
        if rule == "fan_in" and t.kind in ("weight", "bias"):
            s *= math.sqrt(fitted.fan_in(t.key) / target.fan_in(t.key))
        out[t.key] = s
    return out


class Tokenizer:
    """Batched state dicts (key -> (B, *shape)) <-> scaled token blocks (key -> (B, *token_shape))."""

    def __init__(self, layout: Layout, scales: Mapping[str, float]):
        self.layout = layout
        self.scales = {t.key: float(scales[t.key]) for t in layout.tensors}

    def centres(self) -> list[float]:
        """Per tensor, in layout order: its kind's init value in token units (0 for the kinds that start at 0). The
        policy reads and updates a per-unit tensor relative to it: a BatchNorm scale of 1 at scale 1/32 is a token of
        32, which would otherwise swamp the unit states it is added to."""
        return [INIT_VALUE.get(t.kind, 0.0) / self.scales[t.key] for t in self.layout.tensors]

    def encode(self, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for t in self.layout.tensors:
            v = state[t.key]
            assert tuple(v.shape[1:]) == t.shape, f"{t.key}: {tuple(v.shape[1:])} != {t.shape}"
            out[t.key] = v.float().reshape(v.shape[0], *t.token_shape) / self.scales[t.key]
        return out

    def decode(self, tokens: Mapping[str, torch.Tensor],
               frozen: Optional[Mapping[str, torch.Tensor]] = None) -> dict[str, torch.Tensor]:
        """Back to state-dict tensors; `frozen` entries (e.g. BN step counters, batched) are copied through."""
        out = {}
        for t in self.layout.tensors:
            v = tokens[t.key]
            out[t.key] = (v * self.scales[t.key]).reshape(v.shape[0], *t.shape)
        for k in self.layout.frozen:
            assert frozen is not None and k in frozen, f"frozen entry {k} must be given"
            out[k] = frozen[k]
        return out


def permute_units(tokens: Mapping[str, torch.Tensor], layout: Layout, group: str,
                  perm: torch.Tensor) -> dict[str, torch.Tensor]:
    """Permute the units of `group` in batched token blocks: rows of the tensors it owns, columns of those it feeds."""
    out = {}
    for t in layout.tensors:
        v = tokens[t.key]
        if t.out == group:
            v = v[:, perm]
        if t.inp == group:
            v = v[:, :, perm]
        out[t.key] = v
    return out
