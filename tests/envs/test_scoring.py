"""Batched (vmap) scoring against an independent load_state_dict loop, non-finite weights, and the flat layout."""

import functools

import pytest
import torch
import torch.nn.functional as F

from envs.models import build_reference
from envs.scoring import (MAX_LOSS, batch_size_of, flat_dim, flatten_state, score_batch, slice_weights, stack_weights,
                           unflatten_state, weight_keys)
from envs.tasks import load_task

ARCHS = {"mlp": ([16], 1), "cnn": ([4, 8], 1), "resnet": ([4, 8], 1)}


@pytest.fixture(scope="module")
def task():
    return load_task("digits")


def make(task, family, seed=0):
    widths, blocks = ARCHS[family]
    return build_reference(family, widths, task.input_shape, task.num_classes, blocks, seed=seed)


@functools.lru_cache(maxsize=None)
def _trained(task, family, n):
    sets = []
    for i in range(n):
        model = make(task, family, seed=i)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        gen = torch.Generator().manual_seed(i)
        model.train()
        for _ in range(8 * i):
            idx = torch.randint(len(task.train), (64,), generator=gen)
            loss = F.cross_entropy(model(task.train.x[idx]), task.train.y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sets.append({k: v.clone() for k, v in model.state_dict().items()})
    return sets


def weight_sets(task, family, n):
    """n weight sets from different seeds, set i trained 8*i SGD steps: accuracies spread, BN running stats move."""
    return [{k: v.clone() for k, v in s.items()} for s in _trained(task, family, n)]


@torch.no_grad()
def loop_scores(model, sets, split):
    """The independent reference: load each set, run the whole split, count correct examples and sum the loss."""
    model.eval()
    correct, loss = [], []
    for state in sets:
        model.load_state_dict(state)
        logits = model(split.x)
        correct.append(int((logits.argmax(1) == split.y).sum()))
        loss.append(float(F.cross_entropy(logits, split.y)))
    return correct, loss


@pytest.mark.parametrize("family", list(ARCHS))
def test_batched_equals_loop_exactly(task, family):
    sets = weight_sets(task, family, 5)
    # chunk 2 of 5 sets and batches of 100 of 449 examples: both remainders are exercised
    scores = score_batch(make(task, family), sets, task.test, chunk_size=2, batch_size=100)
    correct, loss = loop_scores(make(task, family), sets, task.test)
    assert scores.correct.tolist() == correct
    assert len(set(correct)) >= 4 and max(correct) > 0.4 * len(task.test)  # the sets differ, some learnt
    torch.testing.assert_close(scores.loss, torch.tensor(loss, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores.accuracy, torch.tensor(correct, dtype=torch.float64) / len(task.test))
    assert scores.finite.all() and scores.num_invalid == 0 and scores.n == len(task.test)


def test_batchnorm_uses_each_sets_running_stats(task):
    sets = weight_sets(task, "resnet", 3)
    assert not torch.equal(sets[2]["bn.running_var"], torch.ones_like(sets[2]["bn.running_var"]))
    reset = [dict(s, **{k: torch.zeros_like(v) if k.endswith("running_mean") else torch.ones_like(v)
                        for k, v in s.items() if k.endswith(("running_mean", "running_var"))}) for s in sets]
    model = make(task, "resnet")
    own, fresh = score_batch(model, sets, task.test), score_batch(model, reset, task.test)
    assert own.correct.tolist() == loop_scores(make(task, "resnet"), sets, task.test)[0]
    assert own.correct[2] != fresh.correct[2]
    assert model.training  # the mode is restored


def test_non_finite_sets_score_zero_and_are_counted(task):
    sets = weight_sets(task, "mlp", 4)
    sets[1]["layers.0.weight"][3, 5] = float("nan")
    sets[2]["layers.1.bias"][0] = float("-inf")
    scores = score_batch(make(task, "mlp"), sets, task.reward, chunk_size=3)
    assert scores.finite.tolist() == [True, False, False, True] and scores.num_invalid == 2
    assert scores.correct[1:3].tolist() == [0, 0] and scores.accuracy[1:3].tolist() == [0.0, 0.0]
    assert torch.isinf(scores.loss[1:3]).all() and torch.isfinite(scores.loss[[0, 3]]).all()
    assert scores.neg_loss()[1:3].tolist() == [-MAX_LOSS, -MAX_LOSS]  # the worst reward, finite
    assert torch.equal(scores.neg_loss()[[0, 3]], -scores.loss[[0, 3]])
    alone = score_batch(make(task, "mlp"), [sets[0], sets[3]], task.reward)
    assert scores.correct[[0, 3]].tolist() == alone.correct.tolist() and alone.correct[1] > 0


@pytest.mark.parametrize("family", ["mlp", "resnet"])
def test_a_batch_of_only_non_finite_sets_scores_zero_for_each(task, family):
    # No finite set is left to run: every set must still get a score (0, loss +inf), not an error.
    sets = weight_sets(task, family, 3)
    for i, s in enumerate(sets):
        key = next(k for k, v in s.items() if v.is_floating_point())
        s[key].view(-1)[i] = float("nan") if i % 2 else float("inf")
    scores = score_batch(make(task, family), sets, task.reward, chunk_size=2)
    assert scores.finite.tolist() == [False] * 3 and scores.num_invalid == 3 and len(scores) == 3
    assert scores.correct.tolist() == [0, 0, 0] and scores.accuracy.tolist() == [0.0] * 3
    assert torch.isinf(scores.loss).all() and scores.neg_loss().tolist() == [-MAX_LOSS] * 3


def test_overflowing_finite_weights_count_as_wrong(task):
    state = weight_sets(task, "mlp", 2)[1]
    huge = {k: v * 1e30 for k, v in state.items()}  # finite weights, but the logits overflow to inf / nan
    scores = score_batch(make(task, "mlp"), [state, huge], task.reward)
    assert scores.finite.tolist() == [True, True]
    assert scores.correct[0] > 0 and scores.correct[1] == 0


def test_input_forms_agree(task):
    sets = weight_sets(task, "cnn", 3)
    model = make(task, "cnn")
    from_list = score_batch(model, sets, task.reward)
    stacked = stack_weights(sets, model.state_dict())
    flat = torch.stack([flatten_state(s) for s in sets])
    for other in (score_batch(model, stacked, task.reward), score_batch(model, flat, task.reward)):
        assert other.correct.tolist() == from_list.correct.tolist()
        assert torch.equal(other.loss, from_list.loss)


def test_wrong_weights_raise_naming_the_key(task):
    model, state = make(task, "mlp"), make(task, "mlp", seed=1).state_dict()
    with pytest.raises(ValueError, match="layers.1.bias"):
        score_batch(model, [{k: v for k, v in state.items() if k != "layers.1.bias"}], task.reward)
    with pytest.raises(ValueError, match=r"layers.0.weight.*expected \(16, 64\)"):
        score_batch(model, [dict(state, **{"layers.0.weight": torch.zeros(16, 63)})], task.reward)
    with pytest.raises(ValueError, match=r"expected \(\.\.\., 1210\)"):
        score_batch(model, torch.zeros(2, 1209), task.reward)


def test_flat_layout_roundtrip_keeps_integer_buffers_out(task):
    model = weight_sets(task, "resnet", 2)[1]
    ref = make(task, "resnet")
    n_params = sum(p.numel() for p in ref.parameters())
    n_stats = sum(b.numel() for k, b in ref.named_buffers() if "running" in k)
    assert flat_dim(ref.state_dict()) == n_params + n_stats
    assert not any("num_batches_tracked" in k for k in weight_keys(model))
    vec = flatten_state(model)
    assert vec.shape == (n_params + n_stats,) and vec.dtype == torch.float32
    assert torch.equal(vec[:36], model["stem.weight"].flatten())  # state-dict order: the stem comes first
    back = unflatten_state(vec, ref.state_dict())
    ref.load_state_dict(back)  # strict: every key present, integer buffers from the template
    for k, v in model.items():
        assert torch.equal(ref.state_dict()[k], v) or k.endswith("num_batches_tracked")
    batched = unflatten_state(torch.stack([vec, 2 * vec]), ref.state_dict())
    assert batched["fc.weight"].shape == (2, *model["fc.weight"].shape)
    assert torch.equal(batched["fc.weight"][1], 2 * model["fc.weight"])


def test_unflattened_batch_with_shared_integer_buffers(task):
    sets = weight_sets(task, "resnet", 3)
    model = make(task, "resnet")
    batched = unflatten_state(torch.stack([flatten_state(s) for s in sets]), model.state_dict())
    assert batched["bn.num_batches_tracked"].shape == ()  # one copy for the whole batch
    assert batch_size_of(batched) == 3 and batch_size_of(slice_weights(batched, 1, 3)) == 2
    assert score_batch(model, slice_weights(batched, 1, 3), task.reward).correct.tolist() == \
        score_batch(model, sets[1:], task.reward).correct.tolist()
    with pytest.raises(ValueError, match="no weight sets"):
        score_batch(model, slice_weights(batched, 3, 3), task.reward)


def test_auto_batch_size_keeps_activations_in_budget(task, monkeypatch):
    import envs.scoring as scoring

    cnn, mlp = make(task, "cnn"), make(task, "mlp")  # the CNN's largest activation: conv0, 4 x 8 x 8 per example
    monkeypatch.setattr(scoring, "SCORING_ACTIVATION_BUDGET", 3 * 4 * 8 * 8 * 10)
    assert scoring.auto_batch_size(cnn, task.test, sets_per_call=3) == 10
    assert scoring.auto_batch_size(mlp, task.test) == len(task.test)  # 16 hidden units: the whole split fits
    sets = weight_sets(task, "cnn", 5)
    scores = score_batch(cnn, sets, task.test, chunk_size=3)  # 45 calls of <= 10 examples
    assert scores.correct.tolist() == loop_scores(make(task, "cnn"), sets, task.test)[0]


@pytest.mark.parametrize("family", ["mlp", "cnn", "resnet"])
def test_reward_gradients_equal_autograd_on_each_net_in_float64(task, family):
    """score_batch(grad=True): per weight set, d(-mean CE over the split)/dW, computed in vmapped chunks and batches,
    equals plain autograd of one model (in eval mode) on the whole split, in float64, for every parameter; a
    BatchNorm net's running statistics get zeros, as does a non-finite set."""
    split = task.test
    split = type(split)(split.x[:300].double(), split.y[:300])
    models = []
    for s, state in enumerate(weight_sets(task, family, 3)):  # trained: a BN net's running statistics have moved
        models.append(make(task, family, seed=s).double().eval())
        models[-1].load_state_dict(state)
    states = [m.state_dict() for m in models]
    states[1] = {k: v.clone() for k, v in states[1].items()}
    first = weight_keys(states[1])[0]
    states[1][first][0, 0] = float("nan")
    scores = score_batch(models[0], states, split, chunk_size=2, batch_size=128, grad=True)
    for i, m in enumerate(models):
        if i == 1:
            assert all((scores.grad[k][i] == 0).all() for k in scores.grad) and not scores.finite[i]
            continue
        loss = F.cross_entropy(m(split.x), split.y)
        want = torch.autograd.grad(-loss, [p for _, p in m.named_parameters()])
        for (k, _), w in zip(m.named_parameters(), want):
            torch.testing.assert_close(scores.grad[k][i], w, rtol=1e-9, atol=1e-12)
        buffers = [k for k, v in m.named_buffers() if v.is_floating_point()]
        assert bool(buffers) == (family == "resnet") and all((scores.grad[k][i] == 0).all() for k in buffers)
        assert set(scores.grad) == set(weight_keys(states[i]))
        assert scores.loss[i].item() == pytest.approx(loss.item(), rel=1e-9)


def test_weighted_gradients_and_per_example_losses_equal_autograd(task):
    """score_batch(grad=True, example_weights=w): d(-sum_n w_gn CE_gn / N)/dW per set, as plain autograd of each model
    on the whole split in float64, across chunks and batches; per_example: every set's CE on every example (+inf for a
    non-finite set); weights of the wrong shape: a ValueError naming both shapes."""
    split = task.test
    split = type(split)(split.x[:300].double(), split.y[:300])
    models = [make(task, "mlp", seed=s).double().eval() for s in range(3)]
    states = [m.state_dict() for m in models]
    states[1] = {k: v.clone() for k, v in states[1].items()}
    states[1][weight_keys(states[1])[0]][0, 0] = float("nan")
    w = torch.rand(3, len(split), generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    scores = score_batch(models[0], states, split, chunk_size=2, batch_size=128, grad=True, per_example=True,
                         example_weights=w)
    plain = score_batch(models[0], states, split, chunk_size=2, batch_size=128, grad=True)
    assert plain.example_loss is None and torch.isinf(scores.example_loss[1]).all()
    for i in (0, 2):
        m = models[i]
        ce = F.cross_entropy(m(split.x), split.y, reduction="none")
        torch.testing.assert_close(scores.example_loss[i], ce.detach().float())
        want = torch.autograd.grad(-(w[i] * ce).sum() / len(split), [p for _, p in m.named_parameters()])
        for (k, _), g in zip(m.named_parameters(), want):
            torch.testing.assert_close(scores.grad[k][i], g, rtol=1e-9, atol=1e-12)
            assert not torch.allclose(scores.grad[k][i], plain.grad[k][i])  # the weights do change the gradient
        assert scores.loss[i].item() == pytest.approx(ce.mean().item(), rel=1e-9)  # the reward stays the plain loss
    with pytest.raises(ValueError, match=r"example_weights have shape \(3, 299\), expected \(3, 300\)"):
        score_batch(models[0], states, split, grad=True, example_weights=w[:, :299])
