import pytest
import torch

from policy.tokenizer import Tokenizer, fit_scales, permute_units

from tests.settings import FAMILIES, batch_of, make



@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_exact(family):
    _, layout = make(family)
    states = batch_of(family, range(4))
    states = {k: v * 3.7 + 0.1 if v.is_floating_point() else v for k, v in states.items()}  # off the fitted scale
    tok = Tokenizer(layout, fit_scales({k: states[k] for k in layout.shapes}))
    back = tok.decode(tok.encode(states), states)
    assert set(back) == set(states)
    for k in states:
        assert back[k].dtype == states[k].dtype and torch.equal(back[k], states[k]), k


def test_scales_are_powers_of_two_near_the_std():
    scales = fit_scales({"a": torch.randn(1000) * 0.05, "b": torch.zeros(3)})
    assert scales["a"] == 2.0 ** -4 and scales["b"] == 1.0


@pytest.mark.parametrize("family", FAMILIES)
def test_permuting_a_group_keeps_the_function(family):
    """The layout is right iff permuting any hidden group's units leaves the network's outputs unchanged."""
    model, layout = make(family)
    model.eval()
    states = batch_of(family, [0])
    tok = Tokenizer(layout, {k: 1.0 for k in layout.shapes})
    x = torch.randn(5, *FAMILIES[family][1])
    with torch.no_grad():
        if family.startswith("resnet"):  # give BatchNorm non-trivial statistics
            for k in states:
                if k.endswith(("running_mean", "running_var")):
                    states[k] = states[k] + torch.rand_like(states[k])
        model.load_state_dict({k: v[0] for k, v in states.items()})
        expected = model(x)
        for g in layout.groups:
            if g.fixed:
                continue
            perm = torch.randperm(g.size, generator=torch.Generator().manual_seed(1))
            permuted = tok.decode(permute_units(tok.encode(states), layout, g.name, perm), states)
            assert not torch.equal(permuted[layout.tensors[0].key], states[layout.tensors[0].key]) or g.name != layout.tensors[0].out
            model.load_state_dict({k: v[0] for k, v in permuted.items()})
            torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5, msg=lambda m: f"group {g.name}: {m}")
