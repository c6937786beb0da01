import pytest
import torch

from envs.models import REFERENCE_FAMILIES, build_reference

SHAPES = {"mlp": [16, 8], "cnn": [4, 8], "resnet": [4, 8]}


@pytest.mark.parametrize("family", list(REFERENCE_FAMILIES))
@pytest.mark.parametrize("input_shape, classes", [((1, 8, 8), 10), ((3, 16, 16), 7)])
def test_shapes_come_from_the_task(family, input_shape, classes):
    model = build_reference(family, SHAPES[family], input_shape, classes, blocks_per_stage=2)
    assert model(torch.randn(5, *input_shape)).shape == (5, classes)


@pytest.mark.parametrize("family", list(REFERENCE_FAMILIES))
def test_seeded_init_is_reproducible_and_leaves_global_rng_alone(family):
    torch.manual_seed(7)
    expected_next = torch.rand(1)
    torch.manual_seed(7)
    a = build_reference(family, SHAPES[family], (1, 8, 8), 10, seed=3).state_dict()
    assert torch.equal(torch.rand(1), expected_next)
    b = build_reference(family, SHAPES[family], (1, 8, 8), 10, seed=3).state_dict()
    c = build_reference(family, SHAPES[family], (1, 8, 8), 10, seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point() and a[k].std() > 0)


@pytest.mark.parametrize("family", list(REFERENCE_FAMILIES))
def test_unit_layout_covers_every_state_dict_entry_once(family):
    model = build_reference(family, SHAPES[family], (1, 8, 8), 10, blocks_per_stage=2)
    layout = model.unit_layout()
    sd = model.state_dict()
    keys = [t["key"] for t in layout["tensors"]] + layout["frozen"]
    assert sorted(keys) == sorted(sd)
    sizes = {g["name"]: g["size"] for g in layout["groups"]}
    for t in layout["tensors"]:
        assert sd[t["key"]].shape[0] == sizes[t["out"]], t
        if t["kind"] == "weight":
            assert sd[t["key"]].shape[1] % sizes[t["in"]] == 0, t
