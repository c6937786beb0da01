"""Typed config sections that describe a task and its reference model, and the YAML -> dataclass checker.

They live in `envs` so that the env can be built from an experiment YAML without importing the trainer; the trainer's
experiment config is composed of these sections plus its own.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml


class ConfigError(ValueError):
    """A user-caused config problem; the message is one line naming the key at fault."""


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


@dataclass
class EnvConfig:
    steps: int = 3
    """K: policy steps per episode of the weight-evaluation env"""
    reward: str = "final"
    """final: reward-split accuracy of the final weights; improvement: per-step accuracy gain"""


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


def check_env_sections(task: TaskConfig, reference: ReferenceConfig, env: Optional[EnvConfig] = None) -> None:
    """Registry names are validated when the config loads, not mid-run."""
    from envs.models import REFERENCE_FAMILIES
    from envs.tasks import TASKS

    check_choice("task.name", task.name, TASKS)
    check_choice("reference.family", reference.family, REFERENCE_FAMILIES)
    if env is not None:
        check_choice("env.reward", env.reward, ("final", "improvement"))
        if env.steps < 1:
            raise ConfigError(f"config key env.steps: expected >= 1, got {env.steps}")
    if not reference.widths or min(reference.widths) < 1:
        raise ConfigError(f"config key reference.widths: expected positive widths, got {reference.widths}")


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config sections")
    return data
