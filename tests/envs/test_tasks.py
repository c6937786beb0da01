import os
from pathlib import Path

import pytest
import torch

from envs.tasks import TaskDataError, load_task


def test_digits_splits_are_disjoint_and_cover_the_training_set():
    task = load_task("digits", reward_size=300, split_seed=0)
    assert task.input_shape == (1, 8, 8) and task.num_classes == 10
    assert len(task.reward) == 300 and len(task.train) + len(task.reward) + len(task.test) == 1797
    tr, rw = set(task.train_index.tolist()), set(task.reward_index.tolist())
    assert not tr & rw and len(tr | rw) == len(task.train) + 300
    assert task.train.x.dtype == torch.float32 and task.train.y.dtype == torch.int64


def test_reward_split_depends_on_seed():
    a, b = load_task("digits", split_seed=0), load_task("digits", split_seed=1)
    assert not torch.equal(a.reward_index, b.reward_index)


def test_missing_torchvision_files_give_one_line_error(tmp_path):
    with pytest.raises(TaskDataError) as e:
        load_task("mnist", root=str(tmp_path / "nowhere"))
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "nowhere") in msg and "SYNTHNET_DATA" in msg


@pytest.mark.skipif(not (Path(os.environ.get("SYNTHNET_DATA", "")) / "MNIST").is_dir(), reason="needs SYNTHNET_DATA with MNIST")
def test_mnist_loads_from_data_root():
    task = load_task("mnist", reward_size=5000)
    assert task.input_shape == (1, 28, 28) and len(task.test) == 10000 and len(task.train) == 55000
    assert abs(task.train.x.mean().item()) < 0.05  # normalised
