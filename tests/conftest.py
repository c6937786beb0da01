"""Shared fixtures: tests run offline on the digits task, inside a temporary working directory."""

import os

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Tiny models on a busy 2-core box: extra intra-op threads only spin. Set before torch loads; entry points run
# in-process (and their Ray workers) read it as their `threads` default.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with the working directory in a fresh temp folder (artifacts/ lands there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def ray_local():
    """One private local Ray instance for the whole session."""
    from rollout.cluster import init_ray

    init_ray(None, num_cpus=2)
    yield


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny models on a busy 2-core box: extra intra-op threads only spin (measured 10-100x slower here)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
