from dataclasses import replace

import pytest
import torch

from envs.models import build_reference
from policy.model import DenoisingPolicy, PolicyConfig, Sampling
from policy.tokenizer import Layout, Tokenizer, fit_scales, permute_units

from tests.settings import FAMILIES, batch_of, make

SMALL = PolicyConfig(dim=16, rounds=2, heads=2)


def encoded(family, seeds):
    """(layout, token blocks) of default inits of a family's test model, scaled as the zoo would scale them."""
    _, layout = make(family)
    states = batch_of(family, seeds)
    return layout, Tokenizer(layout, fit_scales({k: states[k] for k in layout.shapes})).encode(states)


def perturb(policy):
    """Move every output head off its zero init so the test sees a non-trivial update."""
    torch.manual_seed(3)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("input_state", ["messages", "static"])
@pytest.mark.parametrize("family", FAMILIES)
def test_permuting_hidden_units_permutes_the_prediction(family, input_state):
    layout, x = encoded(family, range(3))
    torch.manual_seed(0)
    centres = [0.0 if t.kind == "weight" else 0.5 + 0.25 * ti for ti, t in enumerate(layout.tensors)]
    policy = DenoisingPolicy(replace(SMALL, input_state=input_state), layout, centres).eval()
    perturb(policy)
    t1, t2 = torch.tensor([0.0, 0.2, 0.5]), torch.tensor([1.0, 0.6, 0.7])
    with torch.no_grad():
        mean, std = policy(x, t1, t2)
        for g in layout.groups:
            if g.fixed:
                continue
            perm = torch.randperm(g.size, generator=torch.Generator().manual_seed(5))
            mean_p, std_p = policy(permute_units(x, layout, g.name, perm), t1, t2)
            expected = permute_units(mean, layout, g.name, perm)
            moved = any(not torch.allclose(expected[k], mean[k]) for k in mean)
            assert moved, g.name  # the permutation is visible in the output...
            for k in mean:  # ...and the prediction followed it exactly (to float tolerance)
                torch.testing.assert_close(mean_p[k], expected[k], rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(std_p[k], std[k])


def test_parameter_count_does_not_grow_with_the_reference_model():
    def count(widths):
        model = build_reference("mlp", widths, (1, 8, 8), 10)
        layout = Layout(model.unit_layout(), {k: v.shape for k, v in model.state_dict().items()})
        return sum(p.numel() for p in DenoisingPolicy(SMALL, layout).parameters())

    assert count([8]) == count([512]) == count([64, 64, 64])


def test_std_is_floored_and_starts_at_std_init():
    _, layout = make("mlp")
    policy = DenoisingPolicy(PolicyConfig(dim=16, rounds=1, heads=2, std_init=0.05, std_floor=1e-3), layout)
    x = Tokenizer(layout, {k: 1.0 for k in layout.shapes}).encode(batch_of("mlp", [0]))
    mean, std = policy(x, torch.zeros(1), torch.ones(1))
    for k in std:
        torch.testing.assert_close(std[k], torch.tensor([0.05]))
    with torch.no_grad():
        policy.tensor_head[-1].bias[1] = -1e4
    _, std = policy(x, torch.zeros(1), torch.ones(1))
    assert all(s.item() == pytest.approx(1e-3) for s in std.values())


def test_temperature_scales_the_std_and_leaves_the_mean():
    _, layout = make("mlp")
    x = Tokenizer(layout, {k: 1.0 for k in layout.shapes}).encode(batch_of("mlp", [0, 1]))
    torch.manual_seed(0)
    policy = DenoisingPolicy(SMALL, layout)
    perturb(policy)
    t1, t2 = torch.zeros(2), torch.ones(2)
    mean, std = policy(x, t1, t2)
    policy.sampling = Sampling(temperature=0.25)
    mean_t, std_t = policy(x, t1, t2)
    for k in mean:
        assert torch.equal(mean_t[k], mean[k])
        torch.testing.assert_close(std_t[k], 0.25 * std[k])


@pytest.mark.parametrize("family", FAMILIES)
def test_a_flow_step_moves_its_share_of_the_way_to_the_predicted_end(family):
    """A flow policy predicts the line's end from (x, t1) alone; a step to t2 takes (t2 - t1) / (1 - t1) of the way
    there, its std scaled alike. Equivariance holds as for any policy."""
    layout, x = encoded(family, range(3))
    torch.manual_seed(0)
    policy = DenoisingPolicy(replace(SMALL, flow=True), layout).eval()
    perturb(policy)
    t1, t2 = torch.tensor([0.0, 0.25, 0.5]), torch.tensor([0.125, 0.5, 1.0])
    with torch.no_grad():
        end, end_std = policy(x, t1, torch.ones(3))
        mean, std = policy(x, t1, t2)
        share = torch.tensor([0.125, 1 / 3, 1.0])
        for k in mean:
            view = share.view(-1, *[1] * (x[k].dim() - 1))
            assert not torch.allclose(end[k], x[k])  # the prediction moves...
            torch.testing.assert_close(mean[k], x[k] + view * (end[k] - x[k]))  # ...and the step takes its share
            torch.testing.assert_close(std[k], share * end_std[k])
        g = next(g for g in layout.groups if not g.fixed)
        perm = torch.randperm(g.size, generator=torch.Generator().manual_seed(5))
        mean_p, _ = policy(permute_units(x, layout, g.name, perm), t1, t2)
        expected = permute_units(mean, layout, g.name, perm)
        for k in mean:
            torch.testing.assert_close(mean_p[k], expected[k], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_unit_latent_draws_permute_with_the_units_and_their_noise(family):
    layout, x = encoded(family, range(2))
    torch.manual_seed(0)
    policy = DenoisingPolicy(PolicyConfig(dim=16, rounds=2, heads=2, latent_dim=4, latent_std=0.3), layout).eval()
    perturb(policy)
    t1, t2 = torch.zeros(2), torch.full((2,), 0.5)
    gen = torch.Generator().manual_seed(1)

    def draw(x, noise):
        h, heads = policy.encode(x, t1, t2)
        mean, std = policy.latent(h)
        u = {g: mean[g] + std[g].view(-1, 1, 1) * noise[g] for g in mean}
        return policy.decode(x, policy.lift(h, u), heads)[0]

    with torch.no_grad():
        noise = {g: torch.randn(2, layout.groups[layout.group_index[g]].size, 4, generator=gen)
                 for g in policy.attend}
        y = draw(x, noise)
        assert any(not torch.allclose(y[k], policy(x, t1, t2)[0][k]) for k in y)  # the latent moves the weights
        for g in layout.groups:
            if g.fixed:
                continue
            perm = torch.randperm(g.size, generator=torch.Generator().manual_seed(5))
            moved = {n: v[:, perm] if n == g.name else v for n, v in noise.items()}
            y_p = draw(permute_units(x, layout, g.name, perm), moved)
            expected = permute_units(y, layout, g.name, perm)
            for k in y:
                torch.testing.assert_close(y_p[k], expected[k], rtol=1e-4, atol=1e-5)


def test_a_zero_latent_mean_leaves_the_mean_path_to_the_trunk():
    _, layout = make("mlp")
    x = Tokenizer(layout, {k: 1.0 for k in layout.shapes}).encode(batch_of("mlp", [0, 1]))
    torch.manual_seed(0)
    policy = DenoisingPolicy(SMALL, layout)
    t1, t2 = torch.zeros(2), torch.ones(2)
    h, heads = policy.encode(x, t1, t2)
    mean, _ = policy(x, t1, t2)
    for k, v in policy.decode(x, h, heads)[0].items():  # the latent head starts at zero: the trunk's states as they are
        assert torch.equal(v, mean[k])
    basis = policy.latent_mean.basis
    torch.testing.assert_close(basis.T @ basis, torch.eye(SMALL.latent_dim))


def unfused_forward(policy, x, t1, t2):
    """The policy's function written out plainly (concatenation, LayerNorm, einsums, one group at a time): the
    oracle for the fused and re-associated forward pass."""
    import math

    from policy.tokenizer import KINDS

    layout, cfg, b = policy.layout, policy.cfg, t1.shape[0]
    temb = policy.time(t1, t2)
    h = {}
    for gi, g in enumerate(layout.groups):
        v = policy.group_emb.weight[gi].expand(b, g.size, -1)
        h[g.name] = (v + policy.position[g.name] if g.fixed else v) + temb[:, None]
    for ti, t in enumerate(layout.tensors):
        if t.kind != "weight":
            code = policy.kind_value[KINDS.index(t.kind)] + policy.unit_value[ti]
            h[t.out] = h[t.out] + (x[t.key] - policy.centre[ti])[..., None] * code
    for rnd in policy.rounds:
        fwd = {g: torch.zeros_like(v) for g, v in h.items()}
        bwd = {g: torch.zeros_like(v) for g, v in h.items()}
        for ti, t in enumerate(layout.tensors):
            if t.kind == "weight":
                w = x[t.key]
                _, o, i, r = w.shape
                u = policy.rest_in[str(r)] + policy.tensor_emb.weight[ti]
                to_out = torch.einsum("boir,bid->bord", w, rnd.fwd_value(h[t.inp]))
                fwd[t.out] = fwd[t.out] + torch.einsum("bord,rd->bod", to_out, u) / math.sqrt(i * r)
                to_in = torch.einsum("boir,bod->bird", w, rnd.bwd_value(h[t.out]))
                bwd[t.inp] = bwd[t.inp] + torch.einsum("bird,rd->bid", to_in, u) / math.sqrt(o * r)
        h = {g: v if g in policy.static else
             v + rnd.node_mlp(rnd.node_norm(torch.cat([v + temb[:, None], fwd[g], bwd[g]], -1))) for g, v in h.items()}
        nodes = torch.cat([h[g] for g in policy.attend], dim=1)
        q = rnd.attn_norm(nodes)
        nodes = nodes + rnd.attn(q, q, q, need_weights=False)[0]
        nodes = nodes + rnd.ff(rnd.ff_norm(nodes))
        h.update(zip(policy.attend, nodes.split([h[g].shape[1] for g in policy.attend], dim=1)))
    h = {g: policy.out_norm(v) for g, v in h.items()}
    for g in policy.attend:  # moved by the unit latent's mean
        h[g] = h[g] + policy.latent_mean(h[g]) @ policy.latent_mean.basis.T
    heads = policy.tensor_head(policy.tensor_emb.weight[: len(layout.tensors)][None] + temb[:, None])
    mean = {}
    for ti, t in enumerate(layout.tensors):
        cur = x[t.key]
        if t.kind == "weight":
            c = policy.rest_out[str(cur.shape[-1])] + policy.tensor_out_emb.weight[ti]
            left = torch.einsum("bod,rd->bord", policy.out_left(h[t.out]), c)
            if cur.shape[-1] > 1:
                per_position = policy.rest_left[str(cur.shape[-1])].view(cfg.dim, cur.shape[-1], cfg.dim)
                left = left + torch.einsum("bod,dre->bore", h[t.out], per_position)
            delta = torch.einsum("bord,bid->boir", left, policy.out_right(h[t.inp])) / math.sqrt(cfg.dim)
        else:
            delta = policy.unit_head(h[t.out])[..., KINDS.index(t.kind)] + h[t.out] @ policy.unit_out[ti]
        mean[t.key] = cur + delta + heads[:, ti, 0].view(-1, *([1] * (cur.dim() - 1))) * (cur - policy.centre[ti])
    return mean


@pytest.mark.parametrize("input_state", ["messages", "static"])
@pytest.mark.parametrize("family", FAMILIES)
def test_forward_and_gradients_match_the_unfused_formulas(family, input_state):
    layout, x = encoded(family, range(3))
    torch.manual_seed(0)
    centres = [0.0 if t.kind == "weight" else 0.5 + 0.25 * ti for ti, t in enumerate(layout.tensors)]
    policy = DenoisingPolicy(replace(SMALL, input_state=input_state), layout, centres).eval()
    perturb(policy)
    policy.double()  # in float64 the two association orders agree to ~1e-12: any real difference stands out
    x = {k: v.double() for k, v in x.items()}
    t1, t2 = torch.tensor([0.0, 0.2, 0.5], dtype=torch.float64), torch.tensor([1.0, 0.6, 0.7], dtype=torch.float64)
    grads = []
    for fn in (lambda: policy(x, t1, t2)[0], lambda: unfused_forward(policy, x, t1, t2)):
        policy.zero_grad()
        mean = fn()
        sum((v * torch.linspace(-1, 1, v.numel(), dtype=v.dtype).view_as(v)).sum() for v in mean.values()).backward()
        grads.append(({k: v.detach() for k, v in mean.items()},
                      {n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None}))
    (mean, grad), (expected, expected_grad) = grads
    for k in mean:
        torch.testing.assert_close(mean[k], expected[k], rtol=1e-10, atol=1e-10)
    assert grad.keys() == expected_grad.keys()
    for n in grad:  # imitation and GRPO train through the same forward pass
        torch.testing.assert_close(grad[n], expected_grad[n], rtol=1e-9, atol=1e-10)


def test_per_unit_tensors_of_one_kind_in_one_group_are_told_apart():
    """A ResNet's residual stream owns the stem's BN and block 0's second BN: at init both scales are 1 everywhere, so
    only the per-tensor codes can give them different updates (the kind alone gives both the same)."""
    layout, x = encoded("resnet", range(2))
    a, b = "bn.weight", "blocks.0.bn2.weight"
    assert {t.out for t in layout.tensors if t.key in (a, b)} == {"s0"} and torch.equal(x[a], x[b])
    policy = DenoisingPolicy(SMALL, layout).eval()
    perturb(policy)
    mean, _ = policy(x, torch.zeros(2), torch.ones(2))
    assert (mean[a] - mean[b]).abs().min() > 1e-4
    with torch.no_grad():
        policy.unit_out.zero_()
        policy.tensor_head[-1].weight.zero_(), policy.tensor_head[-1].bias.zero_()  # no per-tensor gain either
    mean, _ = policy(x, torch.zeros(2), torch.ones(2))
    assert torch.equal(mean[a], mean[b])


def test_centres_are_the_kinds_init_values_in_token_units():
    _, layout = make("resnet")
    tok = Tokenizer(layout, {t.key: 2.0 ** -(ti % 4) for ti, t in enumerate(layout.tensors)})
    for t, c in zip(layout.tensors, tok.centres()):
        assert c == ({"bn_weight": 1.0, "bn_var": 1.0}.get(t.kind, 0.0) / tok.scales[t.key])
    assert sum(c > 0 for c in tok.centres()) == 2 * sum(t.kind == "bn_weight" for t in layout.tensors)


@pytest.mark.parametrize("input_state", ["messages", "static"])
def test_static_input_states_see_no_weights(input_state):
    """With `input_state: static` the input units' states are their embeddings only: two nets with different weights
    (same t1, t2) give the input group the same states; with messages they differ. The hidden states differ in both."""
    layout, x = encoded("mlp", range(2))
    torch.manual_seed(0)
    policy = DenoisingPolicy(replace(SMALL, input_state=input_state), layout).eval()
    perturb(policy)
    with torch.no_grad():
        h, _ = policy.encode(x, torch.zeros(2), torch.ones(2))
    assert not torch.allclose(h["h0"][0], h["h0"][1])
    assert torch.equal(h["in"][0], h["in"][1]) == (input_state == "static")


@pytest.mark.parametrize("family", FAMILIES)
def test_generative_posterior_and_decoder_permute_with_the_units(family):
    """The posterior sees the pair (W at t1, W at t2): permuting a hidden group's units in both permutes its latent
    (mean and std) alike, and decoding permuted latents permutes the weights alike, nonlinear lift included."""
    layout, x1 = encoded(family, range(2))
    _, x2 = encoded(family, range(2, 4))
    torch.manual_seed(0)
    policy = DenoisingPolicy(replace(SMALL, generative=True, posterior_rounds=1, latent_dim=4), layout).eval()
    perturb(policy)
    t1, t2 = torch.zeros(2), torch.full((2,), 0.5)

    def run(a, b):
        h, heads = policy.encode(a, t1, t2)
        q_mean, q_std = policy.posterior(h, b, t1, t2)
        return q_mean, q_std, policy.decode(a, policy.lift(h, q_mean), heads)[0]

    with torch.no_grad():
        q_mean, q_std, y = run(x1, x2)
        for g in layout.groups:
            if g.fixed:
                continue
            perm = torch.randperm(g.size, generator=torch.Generator().manual_seed(5))
            pm, ps, py = run(*(permute_units(x, layout, g.name, perm) for x in (x1, x2)))
            for n in q_mean:
                want = (lambda v: v[:, perm]) if n == g.name else (lambda v: v)
                torch.testing.assert_close(pm[n], want(q_mean[n]), rtol=1e-4, atol=1e-5)
                torch.testing.assert_close(ps[n], want(q_std[n]), rtol=1e-4, atol=1e-5)
            expected = permute_units(y, layout, g.name, perm)
            for k in y:
                torch.testing.assert_close(py[k], expected[k], rtol=1e-4, atol=1e-5)


def test_the_posterior_reads_the_target_and_the_lift_is_nonlinear():
    layout, x1 = encoded("mlp", range(2))
    _, x2 = encoded("mlp", range(2, 4))
    torch.manual_seed(0)
    policy = DenoisingPolicy(replace(SMALL, generative=True, latent_dim=4), layout).eval()
    perturb(policy)
    t1, t2 = torch.zeros(2), torch.ones(2)
    with torch.no_grad():
        h, heads = policy.encode(x1, t1, t2)
        a, _ = policy.posterior(h, x2, t1, t2)
        b, _ = policy.posterior(h, x1, t1, t2)
        assert all(not torch.allclose(a[g], b[g]) for g in a)  # another target, another latent
        g = policy.attend[0]
        u = {n: torch.ones_like(v) for n, v in a.items()}
        lifted = [policy.lift(h, {n: s * v for n, v in u.items()})[g] - h[g] for s in (1.0, 2.0)]
        assert not torch.allclose(lifted[1], 2 * lifted[0], atol=1e-4)  # not linear in the latent


def test_a_generative_flag_leaves_a_regressors_parameters_as_they_were():
    layout, _ = encoded("mlp", range(1))
    torch.manual_seed(0)
    plain = DenoisingPolicy(SMALL, layout).state_dict()
    torch.manual_seed(0)
    gen = DenoisingPolicy(replace(SMALL, generative=True), layout).state_dict()
    assert set(plain) < set(gen)
    for k, v in plain.items():
        assert torch.equal(gen[k], v), k
