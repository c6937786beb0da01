"""Ray side of SynthNet: joining a cluster and the pool of scoring actors."""

from rollout.cluster import init_ray
from rollout.pool import RolloutError, RolloutPool
from rollout.worker import ScoringWorker

__all__ = ["RolloutError", "RolloutPool", "ScoringWorker", "init_ray"]
