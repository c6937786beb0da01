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
    # ray.init(address=None) would join the newest cluster that `ray start` left on this machine; "local" is the
    # private instance the config promises.
    local = address in (None, "local")
    kwargs = dict(address="local" if local else address, include_dashboard=False, log_to_driver=True,
                  configure_logging=False)
    if local:
        kwargs["num_cpus"] = num_cpus or os.cpu_count()
    ray.init(**kwargs)
