"""Typed config sections that describe a task and its reference model, and the YAML -> dataclass checker.

They live in `envs` so that the env can be built from an experiment YAML without importing the trainer; the trainer's
experiment config is composed of these sections plus its own.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml

from envs.errors import ConfigError  # defined apart so that envs.tasks can raise it; importable from here as before
from envs.models import INIT_SCHEMES, REFERENCE_FAMILIES
from envs.objectives import OBJECTIVES
from envs.tasks import TASKS


@dataclass
class TaskConfig:
    name: str = "digits"
    """task dataset: digits (offline, scikit-learn), mnist, fashion_mnist, cifar10"""
    root: Optional[str] = None
    """data root; falls back to $SYNTHNET_DATA, then ./data"""
    download: bool = False
    """let torchvision download a missing dataset (needs internet)"""
    reward_size: int = 300
    """examples carved from the training set as the reward split (the RL reward, never trained on)"""
    split_seed: int = 0
    """seed of the train/reward carve (and of digits' train/test split)"""


@dataclass
class ReferenceConfig:
    family: str = "mlp"
    """reference architecture family: mlp, cnn, resnet"""
    widths: list[int] = field(default_factory=lambda: [32])
    """mlp: hidden widths; cnn: conv channels (one 3x3 conv + 2x2 max-pool each); resnet: stage widths"""
    blocks_per_stage: int = 1
    """resnet only: basic blocks per stage"""
    head: str = "pool"
    """resnet only: what feeds the linear classifier: "pool" (global average pooling of the last stage) or "flatten"
    (the last stage's whole feature map, as in the CNN: the classifier's weights then say where in the image each
    channel counts)"""
    init: str = "pytorch"
    """how a seed's fresh net is initialised: "pytorch" (each layer's default: uniform, scaled by fan-in) or
    "kaiming_normal" (weight matrices and kernels N(0, 2 / fan_in), biases zero; BatchNorm as in PyTorch). A zoo is
    trained from its own scheme's inits; a policy generates from either"""


@dataclass
class EnvConfig:
    steps: int = 3
    """K: policy steps per episode of the weight-evaluation env"""
    reward: str = "final"
    """final: reward-split accuracy of the final weights; improvement: per-step accuracy gain"""
    objective: str = "plain"
    """what a net is judged on (envs/objectives.py): plain (as generated), quantized (each weight matrix and kernel
    quantised to env.bits bits, one symmetric scale per tensor), pruned (global magnitude pruning of the weight
    matrices and kernels to env.sparsity), noisy (inputs plus Gaussian noise of std env.noise_std)"""
    bits: int = 4
    """quantized: bits per weight"""
    sparsity: float = 0.9
    """pruned: the share of weight-matrix and kernel entries set to zero"""
    noise_std: float = 1.0
    """noisy: std of the Gaussian noise added to the (normalised) inputs, drawn afresh for each scoring round"""


INT64 = 2**63


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Return `value` checked against `tp` (an int is accepted as a float), or raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, key)
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key {key}: expected a list, got {value!r}")
        return [_check_type(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if tp in (int, float, str, bool):
        if isinstance(value, bool) != (tp is bool) or not isinstance(value, tp):
            raise ConfigError(f"config key {key}: expected {tp.__name__}, got {value!r}")
        if tp is int and not -INT64 <= value < INT64:  # torch seeds and sizes are 64-bit
            raise ConfigError(f"config key {key}: {value} does not fit in a 64-bit integer")
        return value
    raise AssertionError(f"unsupported config type {tp} for {key}")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass `cls` from a YAML mapping; unknown keys and wrong types raise ConfigError naming the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"config key {prefix.rstrip('.') or '<root>'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (valid: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, tp, prefix + name)
    return cls(**kwargs)


def check_choice(key: str, value: str, valid: typing.Iterable[str]) -> None:
    valid = tuple(valid)
    if value not in valid:
        raise ConfigError(f"config key {key}: unknown {key.rsplit('.', 1)[-1]} {value!r} (valid: {', '.join(valid)})")


# --- valid ranges of numeric fields: one table per config, checked when it loads ----------------------------------

Rule = tuple[Callable[[Any], bool], str]
"""(is the value valid?, the valid range in words, as the error message says it)"""


def at_least(lo: float, why: str = "") -> Rule:
    return (lambda v: v >= lo), f">= {lo}" + (f" ({why})" if why else "")


def above(lo: float, why: str = "") -> Rule:
    return (lambda v: v > lo), f"> {lo}" + (f" ({why})" if why else "")


def within(lo: float, hi: float) -> Rule:
    return (lambda v: lo <= v <= hi), f"a value in [{lo}, {hi}]"


def optional(rule: Rule) -> Rule:
    ok, valid = rule
    return (lambda v: v is None or ok(v)), f"null or {valid}"


def each(rule: Rule) -> Rule:
    ok, valid = rule
    return (lambda v: len(v) > 0 and all(ok(x) for x in v)), f"a non-empty list of values {valid}"


def _lookup(root: Any, key: str) -> Any:
    for part in key.split("."):
        root = root[part] if isinstance(root, Mapping) else getattr(root, part)
    return root


def check_ranges(root: Any, rules: Mapping[str, Rule]) -> None:
    """Check each dotted key of `root` (a config, or a mapping of sections) against its rule; NaN and infinities are
    never valid (a YAML `.nan` passes every comparison-free check and then poisons a run)."""
    for key, (ok, valid) in rules.items():
        value = _lookup(root, key)
        values = value if isinstance(value, list) else [value]
        finite = all(not isinstance(v, float) or math.isfinite(v) for v in values)
        if not finite or not ok(value):
            raise ConfigError(f"config key {key}: expected {valid}, got {value!r}")


ENV_RANGES: dict[str, Rule] = {
    "task.reward_size": at_least(1),  # the upper bound is the task's training-set size, checked when it loads
    "task.split_seed": at_least(0),  # numpy refuses negative seeds
    "reference.widths": each(at_least(1)),
    "reference.blocks_per_stage": at_least(1),
    "env.steps": at_least(1),
    "env.bits": within(2, 16),
    "env.sparsity": within(0.0, 0.999),
    "env.noise_std": at_least(0.0),
}


def check_env_sections(task: TaskConfig, reference: ReferenceConfig, env: Optional[EnvConfig] = None) -> None:
    """Registry names and numeric ranges are validated when the config loads, not mid-run."""
    check_choice("task.name", task.name, TASKS)
    check_choice("reference.family", reference.family, REFERENCE_FAMILIES)
    check_choice("reference.head", reference.head, ("pool", "flatten"))
    check_choice("reference.init", reference.init, INIT_SCHEMES)
    if env is not None:
        check_choice("env.reward", env.reward, ("final", "improvement"))
        check_choice("env.objective", env.objective, OBJECTIVES)
    sections = {"task": task, "reference": reference, "env": env}
    check_ranges(sections, {k: r for k, r in ENV_RANGES.items() if sections[k.split(".")[0]] is not None})


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (a YAML config is UTF-8 text)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config sections")
    return data
