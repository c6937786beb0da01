"""Reference models: the networks whose weights are generated (MLP, CNN, small ResNet).

Each family also describes its *unit layout* as plain data: which state-dict tensors hold the incoming weights of which
group of units, and which groups share a permutation (a ResNet's residual stream). The policy reads that description,
never this module.
"""

from __future__ import annotations

import typing
from typing import Literal, Sequence

import torch
from torch import nn
import torch.nn.functional as F


def _weight(key: str, out: str, inp: str) -> dict:
    return {"key": key, "kind": "weight", "out": out, "in": inp}


def _unit(key: str, kind: str, out: str) -> dict:
    return {"key": key, "kind": kind, "out": out}


def _bn(prefix: str, group: str) -> list[dict]:
    return [_unit(f"{prefix}.weight", "bn_weight", group), _unit(f"{prefix}.bias", "bn_bias", group),
            _unit(f"{prefix}.running_mean", "bn_mean", group), _unit(f"{prefix}.running_var", "bn_var", group)]


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU] * len(widths) -> Linear."""

    def __init__(self, widths: Sequence[int], input_shape: Sequence[int], num_classes: int, **_):
        super().__init__()
        dims = [int(torch.tensor(input_shape).prod())] + list(widths) + [num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.input_shape, self.num_classes = tuple(input_shape), num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x

    def unit_layout(self) -> dict:
        n = len(self.layers)
        names = ["in"] + [f"h{i}" for i in range(n - 1)] + ["out"]
        groups = [{"name": "in", "size": self.layers[0].in_features, "fixed": True}]
        groups += [{"name": names[i + 1], "size": l.out_features, "fixed": i == n - 1} for i, l in enumerate(self.layers)]
        tensors = []
        for i in range(n):
            tensors += [_weight(f"layers.{i}.weight", names[i + 1], names[i]), _unit(f"layers.{i}.bias", "bias", names[i + 1])]
        return {"groups": groups, "tensors": tensors, "frozen": []}


class CNN(nn.Module):
    """[Conv3x3 -> ReLU -> MaxPool2x2] * len(widths) -> Flatten -> Linear."""

    def __init__(self, widths: Sequence[int], input_shape: Sequence[int], num_classes: int, **_):
        super().__init__()
        c, h, w = input_shape
        chans = [c] + list(widths)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans[:-1], chans[1:]))
        for _ in widths:
            h, w = h // 2, w // 2
        assert h > 0 and w > 0, f"input {tuple(input_shape)} too small for {len(widths)} pooling stages"
        self.head = nn.Linear(chans[-1] * h * w, num_classes)
        self.input_shape, self.num_classes = tuple(input_shape), num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return self.head(x.flatten(1))

    def unit_layout(self) -> dict:
        names = ["in"] + [f"c{i}" for i in range(len(self.convs))]
        groups = [{"name": "in", "size": self.convs[0].in_channels, "fixed": True}]
        groups += [{"name": names[i + 1], "size": c.out_channels, "fixed": False} for i, c in enumerate(self.convs)]
        groups += [{"name": "out", "size": self.num_classes, "fixed": True}]
        tensors = []
        for i in range(len(self.convs)):
            tensors += [_weight(f"convs.{i}.weight", names[i + 1], names[i]), _unit(f"convs.{i}.bias", "bias", names[i + 1])]
        # The head's input is the flattened (channel, y, x) map: channel c owns a contiguous slice of its columns.
        tensors += [_weight("head.weight", "out", names[-1]), _unit("head.bias", "bias", "out")]
        return {"groups": groups, "tensors": tensors, "frozen": []}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """CIFAR-style ResNet: Conv3x3-BN-ReLU stem, stages of basic blocks (stride 2 between stages), then global average
    pooling (`head="pool"`) or the flattened last feature map (`head="flatten"`), then Linear."""

    def __init__(self, widths: Sequence[int], input_shape: Sequence[int], num_classes: int, blocks_per_stage: int = 1,
                 head: str = "pool", **_):
        super().__init__()
        assert head in ("pool", "flatten"), head
        self.stem = nn.Conv2d(input_shape[0], widths[0], 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(widths[0])
        blocks, cin = [], widths[0]
        for s, w in enumerate(widths):
            for b in range(blocks_per_stage):
                blocks.append(BasicBlock(cin, w, 2 if (s > 0 and b == 0) else 1))
                cin = w
        self.blocks = nn.ModuleList(blocks)
        h, w = input_shape[1:]
        for _ in widths[1:]:  # each later stage halves the map (3x3, stride 2, padding 1)
            h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        self.fc = nn.Linear(cin * (h * w if head == "flatten" else 1), num_classes)
        self.widths, self.blocks_per_stage, self.head = list(widths), blocks_per_stage, head
        self.input_shape, self.num_classes = tuple(input_shape), num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)) if self.head == "pool" else x.flatten(1))

    def unit_layout(self) -> dict:
        # The residual stream of each stage is one group: stem, every conv2 and shortcut write into it.
        groups = [{"name": "in", "size": self.stem.in_channels, "fixed": True}]
        groups += [{"name": f"s{s}", "size": w, "fixed": False} for s, w in enumerate(self.widths)]
        tensors = [_weight("stem.weight", "s0", "in")] + _bn("bn", "s0")
        frozen = ["bn.num_batches_tracked"]
        stream = "s0"
        for i, block in enumerate(self.blocks):
            s = i // self.blocks_per_stage
            inner, out = f"b{i}", f"s{s}"
            groups.append({"name": inner, "size": block.conv1.out_channels, "fixed": False})
            p = f"blocks.{i}"
            tensors += [_weight(f"{p}.conv1.weight", inner, stream)] + _bn(f"{p}.bn1", inner)
            tensors += [_weight(f"{p}.conv2.weight", out, inner)] + _bn(f"{p}.bn2", out)
            frozen += [f"{p}.bn1.num_batches_tracked", f"{p}.bn2.num_batches_tracked"]
            if block.shortcut is not None:
                tensors += [_weight(f"{p}.shortcut.0.weight", out, stream)] + _bn(f"{p}.shortcut.1", out)
                frozen.append(f"{p}.shortcut.1.num_batches_tracked")
            stream = out
        groups.append({"name": "out", "size": self.num_classes, "fixed": True})
        # With head="flatten" the classifier's input is the (channel, y, x) map: channel c owns a contiguous slice.
        tensors += [_weight("fc.weight", "out", stream), _unit("fc.bias", "bias", "out")]
        return {"groups": groups, "tensors": tensors, "frozen": frozen}


REFERENCE_FAMILIES: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": CNN, "resnet": ResNet}
InitScheme = Literal["pytorch", "kaiming_normal"]
INIT_SCHEMES: tuple[str, ...] = typing.get_args(InitScheme)


def kaiming_normal_init(model: nn.Module) -> nn.Module:
    """He et al. (2015) for ReLU nets: every weight matrix and kernel N(0, 2 / fan_in), every bias zero (BatchNorm keeps
    PyTorch's init: scale 1, shift 0); in place, from the global RNG, modules in definition order."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def build_reference(family: str, widths: Sequence[int], input_shape: Sequence[int], num_classes: int,
                    blocks_per_stage: int = 1, seed: int | None = None, head: str = "pool",
                    init: str = "pytorch") -> nn.Module:
    """Build a reference model; with `seed`, its init (`init`: one of INIT_SCHEMES) is drawn from that seed (global RNG
    untouched)."""
    if family not in REFERENCE_FAMILIES:
        raise ValueError(f"unknown reference family {family!r} (valid: {', '.join(REFERENCE_FAMILIES)})")
    if init not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {init!r} (valid: {', '.join(INIT_SCHEMES)})")
    cls = REFERENCE_FAMILIES[family]

    def build() -> nn.Module:
        model = cls(widths, input_shape, num_classes, blocks_per_stage=blocks_per_stage, head=head)
        return kaiming_normal_init(model) if init == "kaiming_normal" else model

    if seed is None:
        return build()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def reference_from_config(cfg, task, seed: int | None = None) -> nn.Module:
    """`cfg` is an `envs.spec.ReferenceConfig`; input shape and class count come from the task."""
    return build_reference(cfg.family, cfg.widths, task.input_shape, task.num_classes, cfg.blocks_per_stage, seed,
                           cfg.head, cfg.init)
