"""Fixtures of the rollout tests."""

import pytest
import torch

from envs.models import build_reference
from envs.scoring import score_batch
from envs.tasks import load_task


@pytest.fixture(scope="module")
def batch():
    """7 stacked weight sets of the widths-[8] digits MLP (seeded inits, set i scaled by 1 + i), one of them NaN,
    and their scores computed in-process: what every path must reproduce, in this order."""
    task = load_task("digits")
    sds = [build_reference("mlp", [8], task.input_shape, task.num_classes, seed=s).state_dict() for s in range(7)]
    stacked = {k: torch.stack([sd[k] * (1 + i) for i, sd in enumerate(sds)]) for k in sds[0]}
    stacked["layers.1.weight"][4, 0, 0] = float("nan")
    expected = score_batch(build_reference("mlp", [8], task.input_shape, task.num_classes), stacked, task.reward)
    assert len(set(expected.correct.tolist())) >= 5 and expected.finite.tolist() == [True] * 4 + [False] + [True] * 2
    return stacked, expected
