"""Joining Ray: a private local instance by default, or a running cluster (`address: auto` or `host:port`); what the
cluster holds and whether it can place a command's workers; and how many torch threads each process may use."""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Optional

import ray

from envs.spec import ConfigError


class PlacementError(ConfigError):
    """The Ray cluster cannot start the workers a command asks for; the message is one line naming the request and
    what the cluster has."""


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Start (or join) Ray once per process; the dashboard stays off and usage stats are not sent."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # ray.init(address=None) would join the newest cluster that `ray start` left on this machine; "local" is the
    # private instance the config promises.
    local = address in (None, "local")
    kwargs = dict(address="local" if local else address, include_dashboard=False, log_to_driver=True,
                  configure_logging=False)
    if local:
        kwargs["num_cpus"] = num_cpus or os.cpu_count()
        # Ray starts its workers at niceness 15, below the driver. Here the workers do the work (the driver waits on
        # them), so any other process on the machine took the CPU from them: beside two single-threaded jobs on 2
        # cores, a digits ResNet GRPO iteration spent 120-180 s scoring, and 6-8 s once its worker was reniced to 0.
        kwargs["_system_config"] = {"worker_niceness": 0}
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(**kwargs)
    # Ray's core worker installs a C-level SIGTERM handler that logs and dies at once, skipping `finally` and atexit
    # (so the local instance's processes are left to notice on their own). Give SIGTERM back to the Python handler an
    # entry point set (trainer.cli: unwind, then atexit's ray.shutdown).
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
    if not local:  # which cluster the run's workers will run on, before they start
        print(f"ray: joined the cluster at {ray.get_runtime_context().gcs_address}: {describe_cluster()}",
              file=sys.stderr)


def _alive_nodes() -> list[dict]:
    return [n["Resources"] for n in ray.nodes() if n["Alive"]]


def _count(n: float, what: str) -> str:
    return f"{n:g} {what}" + ("" if n == 1 else "s")


def describe_cluster(free: bool = False) -> str:
    """'3 nodes, 4 CPUs, 0 GPUs' (alive nodes, total resources); `free`: with what is not held now, '(1 free)'."""
    nodes = _alive_nodes()
    avail = ray.available_resources() if free else {}
    parts = [_count(len(nodes), "node")]
    for key in ("CPU", "GPU"):
        part = _count(sum(r.get(key, 0.0) for r in nodes), key)
        parts.append(part + (f" ({avail.get(key, 0.0):g} free)" if free else ""))
    return ", ".join(parts)


def describe_request(cpus: float, gpus: float) -> str:
    return f"{_count(cpus, 'CPU')} and {_count(gpus, 'GPU')}"


def check_placeable(what: str, cpus: float, gpus: float) -> None:
    """Fail at once, naming the request, if no alive node has `cpus` CPUs and `gpus` GPUs: Ray would keep such a
    worker pending forever (it waits for an autoscaler to add a node that fits)."""
    if not any(r.get("CPU", 0.0) >= cpus and r.get("GPU", 0.0) >= gpus for r in _alive_nodes()):
        raise PlacementError(f"{what} cannot be placed: each asks for {describe_request(cpus, gpus)}, but no node "
                             f"of the Ray cluster has that much (it has {describe_cluster()}); add such a node or "
                             f"lower rollout.gpus_per_worker")


def cores() -> int:
    """The cores this process may run on (its CPU affinity: a container's or taskset's share, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity API (macOS)
        return os.cpu_count() or 1


def omp_threads() -> Optional[int]:
    """OMP_NUM_THREADS when the environment sets it to a positive count (a user's or a batch scheduler's choice)."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else None


def torch_threads(requested: Optional[int], processes: int = 1) -> int:
    """Torch threads per process: `requested` if set (> 0), else OMP_NUM_THREADS if set, else this process's cores
    shared among the `processes` torch processes the command starts, at least 1. More threads than free cores do not
    just queue: torch's threads spin while they wait, and a second oversubscribed process made a 0.05 s step take
    seconds."""
    if requested:
        return requested
    return omp_threads() or max(1, cores() // max(1, processes))
