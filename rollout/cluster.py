"""Joining Ray: a private local instance by default, or a running cluster (`address: auto` or `host:port`)."""

from __future__ import annotations

import os
from typing import Optional

import ray


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None) -> None:
    """Start (or join) Ray once per process; the dashboard stays off and usage stats are not sent."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = dict(address=address, include_dashboard=False, log_to_driver=True, configure_logging=False)
    if address is None:
        kwargs["num_cpus"] = num_cpus or os.cpu_count()
    ray.init(**kwargs)
