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
from typing import Any, Literal, Optional

import yaml

from envs.errors import ConfigError  # defined apart so that envs.tasks can raise it; importable from here as before
from envs.models import REFERENCE_FAMILIES, InitScheme
from envs.objectives import OBJECTIVES
from envs.tasks import TASKS

# A field's valid values live on the field: a `Literal` type for a fixed set of names, and in its metadata
#   choices: a registry (its keys are the valid names; a new entry needs no edit here),
#   min / gt / max: bounds of a number (of each element, for a list), why: the reason, said in the error,
#   nonempty: a list that must hold at least one value,
#   check: a function that raises ConfigError for an invalid value (a syntax the other rules cannot say).
# `from_dict` checks every value it reads against them; `check_fields` walks a built config the same way.


@dataclass
class TaskConfig:
    name: str = field(default="digits", metadata={"choices": TASKS})
    """task dataset: digits (offline, scikit-learn), mnist, fashion_mnist, cifar10"""
    root: Optional[str] = None
    """data root; falls back to $SYNTHNET_DATA, then ./data"""
    download: bool = False
    """let torchvision download a missing dataset (needs internet)"""
    reward_size: int = field(default=300, metadata={"min": 1})  # the task's train-set size bounds it when it loads
    """examples carved from the training set as the reward split (the RL reward, never trained on)"""
    split_seed: int = field(default=0, metadata={"min": 0})  # numpy refuses negative seeds
    """seed of the train/reward carve (and of digits' train/test split)"""


@dataclass
class ReferenceConfig:
    family: str = field(default="mlp", metadata={"choices": REFERENCE_FAMILIES})
    """reference architecture family: mlp, cnn, resnet"""
    widths: list[int] = field(default_factory=lambda: [32], metadata={"min": 1, "nonempty": True})
    """mlp: hidden widths; cnn: conv channels (one 3x3 conv + 2x2 max-pool each); resnet: stage widths"""
    blocks_per_stage: int = field(default=1, metadata={"min": 1})
    """resnet only: basic blocks per stage"""
    head: Literal["pool", "flatten"] = "pool"
    """resnet only: what feeds the linear classifier: "pool" (global average pooling of the last stage) or "flatten"
    (the last stage's whole feature map, as in the CNN: the classifier's weights then say where in the image each
    channel counts)"""
    init: InitScheme = "pytorch"
    """how a seed's fresh net is initialised: "pytorch" (each layer's default: uniform, scaled by fan-in) or
    "kaiming_normal" (weight matrices and kernels N(0, 2 / fan_in), biases zero; BatchNorm as in PyTorch). A zoo is
    trained from its own scheme's inits; a policy generates from either"""


@dataclass
class EnvConfig:
    reward: Literal["final", "improvement"] = "final"
    """final: reward-split accuracy of the final weights; improvement: per-step accuracy gain"""
    objective: str = field(default="plain", metadata={"choices": OBJECTIVES})
    """what a net is judged on (envs/objectives.py): plain (as generated), quantized (each weight matrix and kernel
    quantised to env.bits bits, one symmetric scale per tensor), pruned (global magnitude pruning of the weight
    matrices and kernels to env.sparsity), noisy (inputs plus Gaussian noise of std env.noise_std)"""
    bits: int = field(default=4, metadata={"min": 2, "max": 16})
    """quantized: bits per weight"""
    sparsity: float = field(default=0.9, metadata={"min": 0.0, "max": 0.999})
    """pruned: the share of weight-matrix and kernel entries set to zero"""
    noise_std: float = field(default=1.0, metadata={"min": 0.0})
    """noisy: std of the Gaussian noise added to the (normalised) inputs, drawn afresh for each scoring round"""


# Keys a config no longer has, and what took their place: a YAML or --set that names one is an error that says so; an
# experiment stored before the removal (policy.json of an older run) loads without it (`drop_removed_keys`).
REMOVED_KEYS = {"env.steps": "an episode has len(generate.schedule) - 1 steps; set generate.schedule instead",
                "policy.noise": "how the policy samples is GRPO's setting: set grpo.noise (saved with the policy)",
                "policy.temperature": "how the policy samples is GRPO's setting: set grpo.temperature (saved with the "
                                      "policy)"}


def drop_removed_keys(data: dict) -> dict:
    """A stored experiment (a mapping) without the REMOVED_KEYS, for loading what an older version saved."""
    for dotted in REMOVED_KEYS:
        section, key = dotted.split(".")
        if isinstance(data.get(section), dict):
            data[section].pop(key, None)
    return data


DEFAULT_SCHEDULE = [0.0, 1.0]  # `generate.schedule`'s default: one step from the init to trained


def check_schedule(schedule: Any, key: str = "generate.schedule") -> list[float]:
    """The progress points of an episode (and of generation): increasing floats from 0.0 to 1.0, K + 1 of them for
    K steps. One fact for the env and the generator: the env's episode length is len(schedule) - 1."""
    if (not isinstance(schedule, list) or len(schedule) < 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in schedule)
            or schedule[0] != 0.0 or schedule[-1] != 1.0 or sorted(set(schedule)) != schedule):
        raise ConfigError(f"config key {key}: expected increasing values from 0.0 to 1.0, got {schedule}")
    return [float(x) for x in schedule]


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
    if origin is Literal:
        check_choice(key, value, typing.get_args(tp))
        return value
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
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = set(fields)
    unknown = sorted(set(data) - names)
    for key in unknown:
        if f"{prefix}{key}" in REMOVED_KEYS:
            raise ConfigError(f"config key {prefix}{key} was removed: {REMOVED_KEYS[prefix + key]}")
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]} (valid: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _check_type(value, tp, prefix + name)
            check_value(fields[name], kwargs[name], prefix + name)
    return cls(**kwargs)


def check_choice(key: str, value: Any, valid: typing.Iterable[Any]) -> None:
    valid = tuple(valid)
    if isinstance(value, (list, dict)) or value not in valid:
        raise ConfigError(f"config key {key}: unknown {key.rsplit('.', 1)[-1]} {value!r} (valid: {', '.join(valid)})")


def _leaves(value: Any) -> list:
    return [x for v in value for x in _leaves(v)] if isinstance(value, list) else [value]


def valid_range(f: dataclasses.Field) -> Optional[str]:
    """The field's valid values in words, as its error says them (None: any value of its type)."""
    meta = f.metadata
    lo, gt, hi = meta.get("min"), meta.get("gt"), meta.get("max")
    if lo is not None and hi is not None:
        words = f"a value in [{lo}, {hi}]"
    elif lo is not None:
        words = f">= {lo}"
    elif gt is not None:
        words = f"> {gt}"
    else:
        return None
    words += f" ({meta['why']})" if "why" in meta else ""
    tp = str(f.type)
    if tp.startswith("list"):
        words = ("a non-empty " if meta.get("nonempty") else "a ") + "list of " * tp.count("list[") + f"values {words}"
    return ("null or " if tp.startswith("Optional") else "") + words


def check_value(f: dataclasses.Field, value: Any, key: str) -> None:
    """Check one value against its field's rules (the type is checked already); NaN and infinities are never in a
    range (a YAML `.nan` passes every comparison-free check and then poisons a run)."""
    meta = f.metadata
    if value is None:
        return
    if "choices" in meta:
        check_choice(key, value, meta["choices"])
    if "check" in meta:
        meta["check"](value)
    words = valid_range(f)
    if words is None:
        return
    lo, gt, hi = meta.get("min"), meta.get("gt"), meta.get("max")
    leaves = _leaves(value)
    ok = (not meta.get("nonempty") or len(leaves) > 0) and all(
        math.isfinite(v) and (lo is None or v >= lo) and (gt is None or v > gt) and (hi is None or v <= hi)
        for v in leaves)
    if not ok:
        raise ConfigError(f"config key {key}: expected {words}, got {value!r}")


def check_fields(cfg: Any, prefix: str = "") -> None:
    """Check every field of a built config (and of its sections) against its rules, as `from_dict` does on reading."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            check_fields(value, f"{prefix}{f.name}.")
        else:
            tp = typing.get_type_hints(type(cfg))[f.name]
            if typing.get_origin(tp) is Literal:
                check_choice(prefix + f.name, value, typing.get_args(tp))
            check_value(f, value, prefix + f.name)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found")
    try:
        data = yaml.safe_load(p.read_text())
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a text file (a YAML config is UTF-8 text)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if data is None:  # an empty (or truncated to nothing) file would run on the code's defaults, under their name
        raise ConfigError(f"{p}: empty (a config holds at least the experiment's name and task)")
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config sections")
    return data
