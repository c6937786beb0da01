"""Ray side of SynthNet: joining a cluster and the pool of scoring actors."""

from rollout.cluster import init_ray

__all__ = ["init_ray"]
