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


@pytest.mark.parametrize("family", FAMILIES)
def test_init_norm_rows_keeps_the_function_at_the_inits_scale(family):
    """Weights that feed a BatchNorm, scaled per unit by 1/30 .. 30 (the free scale a walk drifts in), come back to
    their init's row norms with the BatchNorm statistics alongside, and the net computes what it did; a family without
    BatchNorm is returned as it was."""
    from trainer.generator import init_norm_rows

    model, layout = make(family)
    model.eval()
    init, states = batch_of(family, [0, 1]), batch_of(family, [2, 3])
    fed = layout.batchnormed()
    if not family.startswith("resnet"):
        out = init_norm_rows(layout, states, init)
        assert fed == [] and out.keys() == states.keys() and all(torch.equal(v, states[k]) for k, v in out.items())
        return
    # Every conv feeds the BatchNorm after it: stem -> bn, conv1 -> bn1, conv2 -> bn2, shortcut.0 -> shortcut.1.
    assert [w for w, *_ in fed] == [k for k in layout.shapes if k.endswith("weight") and states[k].dim() == 5]
    assert all(mean.rsplit(".", 1)[0] == var.rsplit(".", 1)[0] for _, _, mean, var in fed)
    g = torch.Generator().manual_seed(0)
    for k in states:
        if k.endswith(("running_mean", "running_var")):
            states[k] = states[k] + torch.rand(states[k].shape, generator=g)
    for w, _, mean, var in fed:  # a conv's row scaled by s: the same function once its statistics follow
        s = torch.exp(torch.empty(states[w].shape[:2]).uniform_(-3.4, 3.4, generator=g))
        states[w] = states[w] * s[..., None, None, None]
        states[mean], states[var] = states[mean] * s, states[var] * s ** 2
    out = init_norm_rows(layout, states, init)
    x = torch.randn(5, *FAMILIES[family][1], generator=g)
    for i in range(2):
        for w, *_ in fed:
            torch.testing.assert_close(out[w][i].flatten(1).norm(dim=1), init[w][i].flatten(1).norm(dim=1))
        with torch.no_grad():
            model.load_state_dict({k: v[i] for k, v in states.items()})
            expected = model(x)
            model.load_state_dict({k: v[i] for k, v in out.items()})
            torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-4)
