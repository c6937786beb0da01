"""Joining Ray: a private local instance by default, or a running cluster (`address: auto` or `host:port`); and how
many torch threads each process of a command may use."""

from __future__ import annotations

import os
import signal
import threading
from typing import Optional

import ray


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
    handler = signal.getsignal(signal.SIGTERM)
    ray.init(**kwargs)
    # Ray's core worker installs a C-level SIGTERM handler that logs and dies at once, skipping `finally` and atexit
    # (so the local instance's processes are left to notice on their own). Give SIGTERM back to the Python handler an
    # entry point set (trainer.cli: unwind, then atexit's ray.shutdown).
    if callable(handler) and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)


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
