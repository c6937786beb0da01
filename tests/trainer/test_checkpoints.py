import pytest
import torch

from envs.models import REFERENCE_FAMILIES, build_reference
from trainer.checkpoints import CheckpointError, load_weights, read_metadata, save_weights

SHAPES = {"mlp": [16, 8], "cnn": [4, 8], "resnet": [4, 8]}


@pytest.mark.parametrize("family", list(REFERENCE_FAMILIES))
def test_state_dict_round_trip_is_exact(family, tmp_path):
    model = build_reference(family, SHAPES[family], (1, 8, 8), 10, seed=0)
    if family == "resnet":  # make BN statistics non-trivial
        model.train()
        model(torch.randn(8, 1, 8, 8))
    sd = model.state_dict()
    path = save_weights(tmp_path / "w.safetensors", sd, {"run": 3, "t": 0.5})
    loaded, meta = load_weights(path, expected=sd)
    assert meta == {"run": "3", "t": "0.5"} and read_metadata(path) == meta
    assert list(loaded) == sorted(sd) or set(loaded) == set(sd)
    for k in sd:
        assert loaded[k].dtype == sd[k].dtype and torch.equal(loaded[k], sd[k]), k
    fresh = build_reference(family, SHAPES[family], (1, 8, 8), 10, seed=1)
    fresh.load_state_dict(loaded)
    assert all(torch.equal(fresh.state_dict()[k], sd[k]) for k in sd)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp file left behind


@pytest.fixture
def saved(tmp_path):
    sd = build_reference("mlp", [8], (1, 8, 8), 10, seed=0).state_dict()
    return save_weights(tmp_path / "w.safetensors", sd), sd


def _one_line(e):
    return "\n" not in str(e.value)


def test_truncated_file_is_one_line_error(saved):
    path, sd = saved
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(CheckpointError) as e:
        load_weights(path, expected=sd)
    assert str(e.value).startswith(f"{path}: not a readable safetensors file") and _one_line(e)


def test_not_safetensors_is_one_line_error(tmp_path):
    path = tmp_path / "x.safetensors"
    path.write_text("hello, not a tensor file")
    with pytest.raises(CheckpointError) as e:
        load_weights(path)
    assert str(path) in str(e.value) and _one_line(e)


def test_shape_mismatch_names_file_and_key(saved, tmp_path):
    path, sd = saved
    wrong = build_reference("mlp", [9], (1, 8, 8), 10, seed=0).state_dict()
    with pytest.raises(CheckpointError) as e:
        load_weights(path, expected=wrong)
    assert str(e.value) == f"{path}: tensor 'layers.0.weight' has shape (8, 64), expected (9, 64)"


def test_missing_and_extra_keys(saved):
    path, sd = saved
    with pytest.raises(CheckpointError, match="missing tensor 'extra'"):
        load_weights(path, expected={**sd, "extra": (1,)})
    with pytest.raises(CheckpointError, match="unexpected tensor 'layers.1.bias'"):
        load_weights(path, expected={k: v for k, v in sd.items() if k != "layers.1.bias"})


def test_non_finite_values_are_rejected(tmp_path):
    sd = build_reference("mlp", [8], (1, 8, 8), 10, seed=0).state_dict()
    sd["layers.0.weight"][0, 0] = float("nan")
    path = save_weights(tmp_path / "nan.safetensors", sd)
    with pytest.raises(CheckpointError, match="tensor 'layers.0.weight' has non-finite values"):
        load_weights(path)
    assert torch.isnan(load_weights(path, allow_nonfinite=True)[0]["layers.0.weight"][0, 0])


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="file not found"):
        load_weights(tmp_path / "none.safetensors")
