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


@pytest.mark.parametrize("family", list(REFERENCE_FAMILIES))
def test_kaiming_normal_init_has_he_statistics_and_zero_biases(family):
    """Every weight matrix and kernel N(0, 2 / fan_in), measured over many seeds; biases 0; BatchNorm untouched."""
    models = [build_reference(family, [64, 64], (1, 8, 8), 10, seed=s, init="kaiming_normal") for s in range(20)]
    default = build_reference(family, [64, 64], (1, 8, 8), 10, seed=0)
    for name, m in models[0].named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            w = torch.stack([dict(x.named_modules())[name].weight for x in models]).detach()
            fan_in = w[0][0].numel()
            assert abs(w.std().item() / (2 / fan_in) ** 0.5 - 1) < 0.05, name
            assert abs(w.mean().item()) < 4 * w.std().item() / w.numel() ** 0.5, name
            if m.bias is not None:
                assert not m.bias.any(), name
                assert dict(default.named_modules())[name].bias.any(), name  # PyTorch's default is not zero
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and not m.bias.any()
    again = build_reference(family, [64, 64], (1, 8, 8), 10, seed=0, init="kaiming_normal").state_dict()
    assert all(torch.equal(v, again[k]) for k, v in models[0].state_dict().items())


def test_unknown_init_scheme_is_refused():
    with pytest.raises(ValueError, match="unknown init scheme 'xavier'"):
        build_reference("mlp", [8], (1, 8, 8), 10, init="xavier")
