"""The objectives (envs/objectives.py): each transform against an independent numpy computation, scoring against
a model evaluated by hand, the straight-through reward gradient, the env's reward and config checks."""

import numpy as np
import pytest
import torch

from envs import WeightEvalEnv
from envs.models import build_reference
from envs.objectives import Objective, noisy_inputs, prune, quantize, score_objective
from envs.scoring import evaluate, score_batch
from envs.spec import ConfigError, EnvConfig, ReferenceConfig, TaskConfig, check_fields
from envs.tasks import Split, task_from_config


def nets(g: int = 3, seed: int = 0) -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    task = task_from_config(TaskConfig())
    model = build_reference("mlp", [32], task.input_shape, task.num_classes, seed=0)
    sds = [build_reference("mlp", [32], task.input_shape, task.num_classes, seed=seed + i).state_dict()
           for i in range(g)]
    return model, {k: torch.stack([sd[k] for sd in sds]) for k in sds[0]}


def quantize_numpy(w: np.ndarray, bits: int) -> np.ndarray:
    levels = 2 ** (bits - 1) - 1
    scale = np.abs(w).max() / levels
    return np.clip(np.round(w / scale), -levels, levels) * scale


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantize_is_per_tensor_symmetric_uniform(bits):
    _, stacked = nets()
    w = next(v for v in stacked.values() if v.dim() == 3)
    q = quantize(w, bits)
    for i in range(len(w)):  # each net's tensor has its own scale
        expected = quantize_numpy(w[i].double().numpy(), bits)
        np.testing.assert_allclose(q[i].double().numpy(), expected, rtol=0, atol=1e-6)
        assert len(torch.unique(q[i])) <= 2 ** bits - 1
        assert q[i].abs().max() == pytest.approx(w[i].abs().max().item(), rel=1e-6)  # the largest weight is a level


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9])
def test_prune_is_global_magnitude_per_net(sparsity):
    _, stacked = nets()
    pruned = prune(stacked, sparsity)
    matrices = [k for k, v in stacked.items() if v.dim() >= 3]
    assert matrices and all(torch.equal(pruned[k], stacked[k]) for k in stacked if k not in matrices)  # biases kept
    for i in range(len(next(iter(stacked.values())))):
        before = np.concatenate([stacked[k][i].flatten().numpy() for k in matrices])
        after = np.concatenate([pruned[k][i].flatten().numpy() for k in matrices])
        drop = round(sparsity * len(before))
        assert (after == 0).sum() == drop  # no weight of a fresh init is exactly 0
        kept = after != 0
        np.testing.assert_array_equal(after[kept], before[kept])
        if drop:  # global, over all matrices together: every dropped weight is no larger than every kept one
            assert np.abs(before[~kept]).max() <= np.abs(before[kept]).min()


def test_noise_is_seeded_and_has_its_std():
    x = torch.zeros(2000, 1, 8, 8)
    a, b, c = noisy_inputs(x, 0.5, 3), noisy_inputs(x, 0.5, 3), noisy_inputs(x, 0.5, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.std().item() == pytest.approx(0.5, rel=0.01)


@pytest.mark.parametrize("objective", [Objective("quantized", bits=3), Objective("pruned", sparsity=0.8),
                                       Objective("noisy", noise_std=0.7)])
def test_scores_equal_a_model_evaluated_by_hand(objective):
    model, stacked = nets()
    split = task_from_config(TaskConfig()).reward
    scores = score_objective(model, stacked, split, objective, noise_seed=5)
    matrices = [k for k, v in stacked.items() if v.dim() >= 3]
    for i in range(len(scores)):
        sd = {k: v[i].clone() for k, v in stacked.items()}
        if objective.name == "quantized":
            sd.update({k: torch.from_numpy(quantize_numpy(sd[k].double().numpy(), 3)).float() for k in matrices})
        if objective.name == "pruned":
            flat = torch.cat([sd[k].flatten() for k in matrices]).abs()
            cut = flat.sort().values[round(0.8 * len(flat)) - 1]
            sd.update({k: torch.where(sd[k].abs() <= cut, 0.0, sd[k]) for k in matrices})
        model.load_state_dict(sd)
        x = split.x
        if objective.name == "noisy":
            x = x + torch.randn(x.shape, generator=torch.Generator().manual_seed(5)) * 0.7
        loss, acc = evaluate(model, Split(x, split.y))
        assert scores.accuracy[i].item() == pytest.approx(acc, abs=1e-9)
        assert scores.loss[i].item() == pytest.approx(loss, rel=1e-5)
    plain = score_objective(model, stacked, split, Objective(), noise_seed=5)
    assert not torch.equal(plain.loss, scores.loss)  # the objective changes the score


def test_training_noise_adds_to_the_objectives_own_in_variance():
    """`input_noise` (GRPO's grpo.input_noise) noises a plain objective's inputs, and joins a noisy objective's own
    as one draw of std hypot(noise_std, input_noise); without it every objective scores as before."""
    model, stacked = nets()
    split = task_from_config(TaskConfig()).reward
    for objective, std in [(Objective(input_noise=0.3), 0.3), (Objective("noisy", noise_std=0.4, input_noise=0.3), 0.5),
                           (Objective("noisy", noise_std=0.7), 0.7), (Objective(), 0.0)]:
        assert objective.input_std == pytest.approx(std, abs=1e-12)
        x = split.x + torch.randn(split.x.shape, generator=torch.Generator().manual_seed(5)) * std
        want = score_batch(model, objective.weights(stacked), Split(x, split.y))
        got = score_objective(model, stacked, split, objective, noise_seed=5)
        torch.testing.assert_close(got.loss, want.loss, rtol=1e-6, atol=1e-7)
        assert torch.equal(got.accuracy, want.accuracy)
    assert score_objective(model, stacked, split, Objective(input_noise=0.3), noise_seed=5).loss[0] != \
        score_objective(model, stacked, split, Objective(), noise_seed=5).loss[0]


def test_reward_gradient_passes_the_rounding_straight_and_reaches_the_scale():
    model, stacked = nets()
    split = task_from_config(TaskConfig()).reward
    objective = Objective("quantized", bits=4)
    got = score_objective(model, stacked, split, objective, grad=True).grad
    at_deployed = score_batch(model, objective.weights(stacked), split, grad=True).grad
    levels = 7
    for k in got:
        if stacked[k].dim() < 3:  # biases are not quantised: their gradient is the deployed net's
            torch.testing.assert_close(got[k], at_deployed[k])
            continue
        for i in range(len(stacked[k])):  # LSQ by hand: straight through the rounding, and the scale max|w| / L
            w, g = stacked[k][i].double().numpy().ravel(), at_deployed[k][i].double().numpy().ravel()
            s = np.abs(w).max() / levels
            expected = g.copy()
            top = np.abs(w).argmax()
            expected[top] += np.sign(w[top]) / levels * (g * (np.clip(np.round(w / s), -levels, levels) - w / s)).sum()
            np.testing.assert_allclose(got[k][i].double().numpy().ravel(), expected, rtol=1e-4, atol=1e-7)
            assert abs(expected[top] - g[top]) > 1e-6  # the scale's term is there: not the plain straight-through


def test_reward_gradient_through_pruning_is_a_soft_top_k_that_keeps_the_budget():
    """Against finite differences of sum_i g_i w_i m_i(w), the mask m_i = sigmoid((|w_i| - theta(w)) / tau) with the
    threshold theta(w) solved (bisection, in numpy) to keep sum_i m_i fixed: the gradient's mask term equals it; kept
    weights far above the threshold get the deployed net's gradient; and a step along the mask term leaves the budget
    unchanged to first order. The workers' path (score_objective) applies it."""
    gen = torch.Generator().manual_seed(0)
    stacked = {"a": torch.randn(2, 6, 5, generator=gen, dtype=torch.float64),
               "b": torch.randn(2, 3, 6, generator=gen, dtype=torch.float64) * 2,
               "bias": torch.randn(2, 6, generator=gen)}
    grad = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in stacked.items()}
    objective = Objective("pruned", sparsity=0.7)
    deployed = objective.weights(stacked)
    got = objective.pullback(stacked, deployed, grad)
    assert torch.equal(got["bias"], grad["bias"])  # not pruned: passed as it is
    sig = lambda z: 1 / (1 + np.exp(-z))
    for i in range(2):
        w = np.concatenate([stacked[k][i].numpy().ravel() for k in "ab"])
        g = np.concatenate([grad[k][i].numpy().ravel() for k in "ab"])
        kept = np.concatenate([(deployed[k][i] != 0).numpy().ravel() for k in "ab"])
        out = np.concatenate([got[k][i].numpy().ravel() for k in "ab"])
        theta0 = np.abs(w[kept]).min()
        tau = theta0 / 4
        budget = sig((np.abs(w) - theta0) / tau).sum()

        def soft(v):  # sum_i g_i v_i m_i(v), theta solved for the budget
            lo, hi = 0.0, 10 * np.abs(v).max()
            for _ in range(200):
                mid = (lo + hi) / 2
                lo, hi = (mid, hi) if sig((np.abs(v) - mid) / tau).sum() > budget else (lo, mid)
            return (g * v * sig((np.abs(v) - lo) / tau)).sum()

        m = sig((np.abs(w) - theta0) / tau)
        mask_term = out - g * kept
        for j in range(len(w)):
            e = np.zeros_like(w)
            e[j] = 1e-6
            fd = (soft(w + e) - soft(w - e)) / 2e-6 - g[j] * m[j]  # the value term's soft part left out
            assert mask_term[j] == pytest.approx(fd, abs=1e-5)
        s = m * (1 - m) / tau
        assert abs((np.sign(w) * mask_term).sum()) < 1e-9 * np.abs(mask_term).sum()  # the budget, to first order
        far = np.abs(w) > 4 * theta0
        np.testing.assert_allclose(out[far & kept], g[far & kept], atol=1e-6)
        assert (np.abs(mask_term) > 1e-3).sum() >= 2 and (s > 0).all()  # weights near the threshold do learn

    model, nets_ = nets()
    split = task_from_config(TaskConfig()).reward
    through = score_objective(model, nets_, split, objective, grad=True).grad
    at_deployed = score_batch(model, objective.weights(nets_), split, grad=True).grad
    expected = objective.pullback(nets_, objective.weights(nets_), at_deployed)
    for k in through:
        torch.testing.assert_close(through[k], expected[k])


def test_quantize_values_are_unchanged_by_its_gradient_path():
    _, stacked = nets()
    w = next(v for v in stacked.values() if v.dim() == 3).double().requires_grad_(True)
    q = quantize(w, 4)
    with torch.no_grad():
        scale = w.abs().flatten(1).amax(1).view(-1, 1, 1) / 7
        assert torch.equal(q.detach(), torch.round(w / scale).clamp(-7, 7) * scale)


def test_env_rewards_the_objective_and_reports_plain_accuracy():
    task, ref = TaskConfig(reward_size=200), ReferenceConfig(widths=[16])
    env = WeightEvalEnv(type("C", (), {"task": task, "reference": ref,
                                       "env": EnvConfig(objective="quantized", bits=2)})())
    plain_env = WeightEvalEnv(type("C", (), {"task": task, "reference": ref, "env": EnvConfig()})())
    obs, _ = env.reset(seed=1)
    _, reward, done, _, info = env.step(obs)
    plain_env.reset(seed=1)
    _, plain_reward, _, _, _ = plain_env.step(obs)
    assert done and info["plain_accuracy"] == plain_reward
    sd = env.state_dict_of(obs)
    model = env.model
    model.load_state_dict({k: quantize(v[None], 2)[0] if v.dim() >= 2 else v for k, v in sd.items()})
    assert reward == pytest.approx(evaluate(model, env.task.reward)[1], abs=1e-9)


@pytest.mark.parametrize("key,value", [("objective", "int4"), ("bits", 1), ("bits", 17), ("sparsity", 1.0),
                                       ("sparsity", -0.1), ("noise_std", -1.0)])
def test_bad_objective_settings_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=f"env.{key}"):
        check_fields(EnvConfig(**{key: value}), "env.")


def test_an_objective_is_its_name_and_its_own_parameter():
    """Two `env` sections name the same objective when its own parameter agrees, whatever the others say: a noisy-input
    policy trained at `env.bits=4` is scored on the objective a `bits: 3` config names, and a 4-bit one is not."""
    noisy = Objective.of(EnvConfig(objective="noisy", bits=4, noise_std=0.5))
    assert noisy == Objective.of(EnvConfig(objective="noisy", bits=3, sparsity=0.5, noise_std=0.5))
    assert noisy != Objective.of(EnvConfig(objective="noisy", noise_std=1.0))
    assert Objective.of(EnvConfig(objective="quantized", bits=4)) != Objective.of(EnvConfig(objective="quantized", bits=3))
    assert Objective.of(EnvConfig(objective="quantized", bits=3)).bits == 3
    assert Objective.of(EnvConfig(objective="plain", bits=3)) == Objective()
