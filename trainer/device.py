"""The one `device` setting: parsed when the config loads, resolved (and checked against this machine) when an entry
point starts, and what Ray workers (zoo runs, scoring actors) run on."""

from __future__ import annotations

import re

import torch

from envs.spec import ConfigError

DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(name: str) -> None:
    """Syntax only: a config written on a GPU machine must still load on a CPU-only one."""
    if not DEVICE_PATTERN.fullmatch(name):
        raise ConfigError(f"config key device: unknown device {name!r} (valid: auto, cpu, cuda, cuda:N)")


def resolve_device(name: str) -> torch.device:
    """auto -> cuda when torch sees a GPU, else cpu; a CUDA device this machine lacks is a one-line ConfigError.
    On CUDA, float32 matmuls and convolutions may use TF32 (about 10 mantissa bits; the accuracy of the small nets
    scored here does not see it, and it is several times the throughput)."""
    check_device(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"config key device: {name} requested, but torch sees no CUDA device on this machine "
                              f"(torch {torch.__version__}; use device=cpu or auto)")
        if (device.index or 0) >= torch.cuda.device_count():
            raise ConfigError(f"config key device: {name} requested, but this machine has "
                              f"{torch.cuda.device_count()} CUDA device(s)")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return device


def worker_gpus(cfg) -> float:
    """GPUs each Ray worker asks for: `rollout.gpus_per_worker` when the experiment runs on CUDA, else 0 (device=cpu
    keeps every worker on the CPU). A worker that holds a share of a GPU runs on it; Ray shows it only its own."""
    return float(cfg.rollout.gpus_per_worker) if resolve_device(cfg.device).type == "cuda" else 0.0


def worker_device(gpus: float) -> str:
    return "cuda" if gpus > 0 else "cpu"
