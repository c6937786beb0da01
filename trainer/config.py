"""Typed experiment configs: one YAML per experiment in `configs/`, loaded into dataclasses.

Every entry point takes `--config PATH` (default: the offline digits experiment) and repeatable
`--set section.key=value`. Unknown keys, wrong types and unknown registry names are one-line `ConfigError`s.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from envs.spec import ConfigError, EnvConfig, ReferenceConfig, TaskConfig, check_choice, check_env_sections, from_dict, read_yaml

__all__ = ["ConfigError", "ExperimentConfig", "load_config", "config_from_dict", "add_config_args"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "configs/digits_mlp.yaml"


@dataclass
class ZooConfig:
    runs: int = 64
    """training runs (distinct seeds) in the zoo"""
    seed: int = 1000
    """run i trains from seed `seed + i`; evaluation seeds lie outside [seed, seed + runs)"""
    optimizer: str = "sgd"
    """sgd or adam"""
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 64
    epochs: int = 4
    cosine: bool = True
    """cosine learning-rate decay to 0 over the run (else constant)"""
    checkpoints: int = 10
    """checkpoints per run at log-spaced steps, always including step 0 (the init) and the last step"""
    out: Optional[str] = None
    """zoo folder; default artifacts/checkpoints/<experiment>"""


@dataclass
class RolloutConfig:
    address: Optional[str] = None
    """None: a private local Ray instance; 'auto': join a running cluster; or 'host:port'"""
    num_workers: int = 2
    """Ray actors for scoring; concurrent Ray tasks for the zoo"""
    timeout_s: float = 300.0
    """bound on every ray.get"""
    chunk_size: int = 16
    """weight sets scored per vmap call (bounds memory)"""
    max_retries: int = 3
    """times a lost actor's share is re-run on a restarted actor before giving up"""


@dataclass
class ExperimentConfig:
    name: str = "digits_mlp"
    """experiment name: names the zoo folder and the runs"""
    seed: int = 0
    """the one seeding point of every entry point"""
    task: TaskConfig = field(default_factory=TaskConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    zoo: ZooConfig = field(default_factory=ZooConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)

    @property
    def zoo_dir(self) -> Path:
        return Path(self.zoo.out) if self.zoo.out else Path("artifacts/checkpoints") / self.name


def _set(data: dict, assignment: str) -> None:
    """Apply one `a.b=c` override (the value parsed as YAML) to the raw config mapping."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {path}: {k} is not a section")
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None


def resolve_config_path(path: str | Path) -> Path:
    """The path as given, else the file of that name in the installed `configs/` folder."""
    p = Path(path)
    if p.is_file():
        return p
    if (CONFIG_DIR / p.name).is_file():
        return CONFIG_DIR / p.name
    shipped = ", ".join(sorted(x.name for x in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file {path} not found (shipped: {shipped})")


def config_from_dict(data: dict) -> ExperimentConfig:
    cfg = from_dict(ExperimentConfig, data)
    check_env_sections(cfg.task, cfg.reference, cfg.env)
    check_choice("zoo.optimizer", cfg.zoo.optimizer, ("sgd", "adam"))
    return cfg


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: list[str] | None = None) -> ExperimentConfig:
    data = read_yaml(resolve_config_path(path))
    for assignment in overrides or []:
        _set(data, assignment)
    return config_from_dict(data)


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
