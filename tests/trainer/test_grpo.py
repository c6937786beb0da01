"""Tiny-budget GRPO runs on the digits task with a local Ray instance."""

import json
import statistics

import pytest
import ray
import torch

from policy.model import Sampling
from policy.sampling import gaussian_kl
from trainer import grpo
from rollout.pool import RolloutPool
from trainer.checkpoints import load_weights
from trainer.generator import repeat_groups
from trainer.runlog import read_scalars

from tests.settings import DEFAULT, UNITS, grpo_trainer, scored_rollouts



def test_first_update_sees_ratio_one_and_zero_kl(imitation, in_tmp):
    t = grpo_trainer(imitation, in_tmp / "r", 1)
    rollouts = t.collect_rollouts()
    step = rollouts.steps[0]
    assert all(s.sampled for s in rollouts.steps) and all(len(v) == 2 for v in step.x.values())  # the init, once per group
    x = repeat_groups(step.x, 4)
    t.policy.train()
    mean, std = t.policy(x, torch.full((8,), step.t1), torch.full((8,), step.t2))
    ref_mean, ref_std = t.frozen(x, torch.full((8,), step.t1), torch.full((8,), step.t2))
    assert torch.equal(gaussian_kl(mean, std, ref_mean, ref_std), torch.zeros(8))
    from policy.sampling import gaussian_log_prob
    torch.testing.assert_close(gaussian_log_prob(step.y, mean, std), step.log_prob, rtol=0, atol=1e-5)
    for k in mean:  # antithetic: samples 2i, 2i + 1 of a group mirror their noise around the same mean
        torch.testing.assert_close(step.y[k][0::2] + step.y[k][1::2], 2 * mean[k][0::2])
        assert not torch.allclose(step.y[k][0], step.y[k][1])
    assert len(rollouts.seeds) == 2 and min(rollouts.seeds) >= 100000  # fresh seeds, outside zoo and held-out ranges


def test_temperature_tempers_policy_and_reference_and_is_saved(imitation, in_tmp):
    from trainer.generator import WeightGenerator
    imitated = WeightGenerator.load(imitation).policy
    t = grpo_trainer(imitation, in_tmp / "r", 1, "grpo.temperature=0.3")
    x = repeat_groups(t.collect_rollouts().steps[0].x, 4)
    t1, t2 = torch.zeros(8), torch.full((8,), 0.5)
    with torch.no_grad():
        _, std0 = imitated(x, t1, t2)
        for net in (t.policy, t.frozen):
            _, std = net(x, t1, t2)
            for k in std:
                torch.testing.assert_close(std[k], 0.3 * std0[k])
    t.checkpoint()
    saved = WeightGenerator.load(in_tmp / "r/policy.safetensors").policy
    assert saved.sampling == t.policy.sampling and saved.sampling.temperature == 0.3  # generation draws as GRPO did
    assert imitated.sampling == Sampling()


def test_a_policy_saved_before_sampling_had_its_own_section_loads_with_its_draws(imitation, in_tmp):
    """policy.json files written before `sampling` existed hold noise and temperature (and GRPO's latent std) in their
    `policy` section, and policy.noise / policy.temperature in the experiment: they load as the same sampler."""
    import json
    import shutil

    from trainer.generator import WeightGenerator
    old = in_tmp / "old"
    shutil.copytree(imitation.parent, old)
    spec = json.loads((old / "policy.json").read_text())
    del spec["sampling"]
    spec["policy"].update(noise="units", temperature=0.5, latent_std=0.3)
    spec["experiment"]["policy"].update(noise="iid", temperature=1.0)
    (old / "policy.json").write_text(json.dumps(spec))
    loaded = WeightGenerator.load(old / "policy.safetensors").policy
    assert loaded.sampling == Sampling("units", 0.5, 0.3) and loaded.cfg.latent_std == 0.3


@pytest.mark.parametrize("reward,batch,objective,input_noise", [
    ("accuracy", "fixed", "plain", 0.0), ("neg_loss", "fixed", "plain", 0.0), ("accuracy", "fresh", "plain", 0.0),
    ("neg_loss", "fixed", "quantized", 0.0), ("accuracy", "fresh", "pruned", 0.0), ("neg_loss", "fresh", "noisy", 0.0),
    ("neg_loss", "fresh", "plain", 0.3), ("accuracy", "fixed", "noisy", 0.4), ("neg_loss", "fresh37", "plain", 0.0)])
def test_rewards_equal_an_independent_evaluation(imitation, in_tmp, reward, batch, objective, input_noise):
    """The samples' rewards on the objective at GRPO's training noise (`grpo.input_noise`, on top of a noisy
    objective's own: one draw of std hypot(0.5, input_noise)); the paired gain's mean paths on the objective alone.
    "fresh37": fresh batches of `grpo.fresh_examples=37`."""
    import math

    from envs.models import reference_from_config
    from envs.objectives import noisy_inputs, prune, quantize
    from envs.scoring import evaluate
    from envs.tasks import Split, task_from_config
    fresh = 37 if batch == "fresh37" else 0
    batch = "fresh" if fresh else batch
    t = grpo_trainer(imitation, in_tmp / "r", 1, f"grpo.reward={reward}", f"grpo.reward_batch={batch}",
                     f"env.objective={objective}", "env.bits=3", "env.sparsity=0.7", "env.noise_std=0.5",
                     f"grpo.input_noise={input_noise}", f"grpo.fresh_examples={fresh}")
    rollouts = t.collect_rollouts()
    t.pool = RolloutPool(t.cfg)
    try:
        t.score(rollouts)
    finally:
        t.pool.close()
    task = task_from_config(t.cfg.task)
    examples = task.split("reward")
    if batch == "fresh":  # as many train-split examples as the reward split (or fresh_examples), drawn anew each iteration
        idx = torch.from_numpy(t.reward_examples())
        assert len(idx) == (fresh or len(examples)) and len(set(idx.tolist())) == len(idx)
        t.iteration += 1
        assert not torch.equal(idx, torch.from_numpy(t.reward_examples()))
        examples = Split(task.train.x[idx], task.train.y[idx])
        t.iteration -= 1

    def noised(std):  # one noise draw per iteration, for every net
        return Split(noisy_inputs(examples.x, std, t.noise_seed()), examples.y) if std else examples

    objective_std = 0.5 if objective == "noisy" else 0.0
    sample_examples, path_examples = noised(math.hypot(objective_std, input_noise)), noised(objective_std)
    model = reference_from_config(t.cfg.reference, task)

    def independent(state, on, deployed=True):
        if deployed and objective == "quantized":
            state = {k: quantize(v[None], 3)[0] if v.dim() >= 2 else v for k, v in state.items()}
        if deployed and objective == "pruned":
            state = {k: v[0] for k, v in prune({k: v[None] for k, v in state.items()}, 0.7).items()}
        model.load_state_dict(state)
        return evaluate(model, on if deployed else examples)

    for i in range(len(rollouts.seeds) * t.cfg.grpo.group_size):
        loss, acc = independent({k: v[i] for k, v in rollouts.final.items()}, sample_examples)
        b, g = divmod(i, t.cfg.grpo.group_size)
        assert rollouts.accuracy[b, g].item() == pytest.approx(acc, abs=1e-6)
        assert rollouts.rewards[b, g].item() == pytest.approx(acc if reward == "accuracy" else -loss, abs=1e-5)
    if input_noise:  # the training noise changes what the samples are scored on
        plain_loss, _ = independent({k: v[0] for k, v in rollouts.final.items()}, path_examples)
        assert rollouts.rewards[0, 0].item() != pytest.approx(-plain_loss, abs=1e-4)
    for b in range(len(rollouts.seeds)):  # the paired gain: the policy's mean path minus the imitation policy's, same inits
        mine = independent({k: v[b] for k, v in rollouts.paths.items()}, path_examples)[1]
        theirs = independent({k: v[len(rollouts.seeds) + b] for k, v in rollouts.paths.items()}, path_examples)[1]
        assert rollouts.gain[b].item() == pytest.approx(mine - theirs, abs=1e-6)
        if objective == "plain":
            assert rollouts.plain is None
        else:  # beside the objective, the policy's mean path as it is
            plain = independent({k: v[b] for k, v in rollouts.paths.items()}, path_examples, deployed=False)[1]
            assert rollouts.plain[b].item() == pytest.approx(plain, abs=1e-6) and plain != mine


@pytest.mark.parametrize("explore", ["all", "first"])
def test_unit_latent_log_probs_are_exact_and_only_the_latent_mean_learns(imitation, in_tmp, explore):
    t = grpo_trainer(imitation, in_tmp / "r", 1, "grpo.noise=units", "grpo.latent_std=0.2", f"grpo.explore={explore}")
    rollouts = t.collect_rollouts()
    assert [s.sampled for s in rollouts.steps] == ([True, True] if explore == "all" else [True, False])
    for step in rollouts.steps:
        n = len(next(iter(step.states.values())))
        x = repeat_groups(step.x, 4) if len(next(iter(step.x.values()))) == 2 else step.x
        with torch.no_grad():
            h, heads = t.policy.encode(x, torch.full((n,), step.t1), torch.full((n,), step.t2))
            mean, std = t.policy.latent(h)
            y, _ = t.policy.decode(x, t.policy.lift(h, step.latent), heads)
        assert set(step.latent) == {g.name for g in t.policy.layout.groups[1:]}  # hidden and output units
        for g, u in step.latent.items():
            torch.testing.assert_close(step.states[g], h[g])
            assert torch.equal(std[g], torch.full((n,), 0.2))
            assert torch.equal(u, mean[g]) == (not step.sampled)
        for k in y:  # the weights follow from the drawn latent alone
            torch.testing.assert_close(step.y[k], y[k])
        dist = torch.distributions.Normal(torch.cat([mean[g].flatten(1) for g in mean], 1), 0.2)
        exact = dist.log_prob(torch.cat([step.latent[g].flatten(1) for g in mean], 1)).mean(1)
        torch.testing.assert_close(step.log_prob, exact)
    with torch.no_grad():
        kl = gaussian_kl(*t.policy.latent(rollouts.steps[0].states), *t.frozen.latent(rollouts.steps[0].states))
    assert torch.equal(kl, torch.zeros_like(kl))
    rollouts.rewards = torch.arange(8.0).view(2, 4)
    t.compute_advantages(rollouts)
    before = {k: v.clone() for k, v in t.policy.state_dict().items()}
    losses = t.update_policy(rollouts)  # asserts the ratio is 1 before the first gradient step
    assert losses["losses/policy"] != 0 and losses["losses/kl"] > 0
    changed = {k for k, v in t.policy.state_dict().items() if not torch.equal(before[k], v)}
    assert changed and all(k.startswith("latent_mean.") for k in changed), changed


@pytest.mark.parametrize("explore", ["first", "last"])
def test_explore_samples_one_step_and_ties_the_others_by_kl(imitation, in_tmp, explore):
    t = grpo_trainer(imitation, in_tmp / "r", 1, f"grpo.explore={explore}", "grpo.temperature=0.5")
    rollouts = t.collect_rollouts()
    assert [s.sampled for s in rollouts.steps] == ([True, False] if explore == "first" else [False, True])
    rows = [len(next(iter(s.x.values()))) for s in rollouts.steps]
    assert rows == ([2, 8] if explore == "first" else [2, 2])  # "last": the mean path runs once per init
    for prev, step in zip(rollouts.steps, rollouts.steps[1:]):
        assert all(torch.equal(step.x[k], prev.y[k]) for k in step.x)
    for n, step in zip(rows, rollouts.steps):
        with torch.no_grad():
            mean, std = t.policy(step.x, torch.full((n,), step.t1), torch.full((n,), step.t2))
        if step.sampled:
            std_before = torch.stack([v.mean() for v in std.values()]).mean().item()
        assert len(next(iter(step.y.values()))) == (n if not step.sampled else 8)
        assert all(torch.equal(step.y[k], mean[k]) for k in mean) == (not step.sampled)
    rollouts.rewards = torch.arange(8.0).view(2, 4)
    t.compute_advantages(rollouts)
    before = {k: v.clone() for k, v in t.policy.state_dict().items()}
    losses = t.update_policy(rollouts)  # asserts the ratio is 1 before the first gradient step
    assert losses["losses/policy"] != 0 and losses["losses/kl"] > 0
    assert losses["policy/std_mean"] == pytest.approx(std_before, rel=0.05)
    assert any(not torch.equal(before[k], v) for k, v in t.policy.state_dict().items())


def test_smoke_two_iterations_with_local_ray(imitation, in_tmp):
    args = sum((["--set", s] for s in DEFAULT + ["grpo.iterations=2"]), [])
    assert grpo.cli(args) == 0
    # The other mode, on an objective, from the first run's policy: its reward curve with the plain accuracy beside it.
    # The paired gain every other iteration: its curve has the first iteration's point alone.
    assert grpo.cli(args + sum((["--set", s] for s in UNITS + ["env.objective=pruned", "grpo.gain_every=2"]), [])
                    + ["--name", "units", "--init-policy", "artifacts/runs/digits_mlp-grpo"]) == 0
    units = in_tmp / "artifacts/runs/units"
    first, second = (json.loads((in_tmp / f"artifacts/runs/{r}/policy.json").read_text()) for r in ("digits_mlp-grpo", "units"))
    assert first["grpo_wall_s"] == first["wall_s"] > 0  # from imitation: its own time
    assert second["grpo_wall_s"] == pytest.approx(first["wall_s"] + second["wall_s"])  # the chain's GRPO time
    assert [s for s, _ in read_scalars(units, "rollout/gain_vs_imitation")] == [8]
    assert [s for s, _ in read_scalars(units, "rollout/plain_accuracy_mean_path")] == [8]
    assert [s for s, _ in read_scalars(units, "rollout/reward_mean")] == [8, 16]
    for tag in ("eval/plain_accuracy_median", "eval/imitation_plain_accuracy_median"):
        assert [s for s, _ in read_scalars(units, tag)] == [16], tag
    assert read_scalars(units, "eval/accuracy_median") != read_scalars(units, "eval/plain_accuracy_median")
    run = in_tmp / "artifacts/runs/digits_mlp-grpo"
    rewards = read_scalars(run, "rollout/reward_mean")
    assert [s for s, _ in rewards] == [8, 16]  # x axis: evaluations
    assert all(0.0 <= a <= 1.0 for _, a in read_scalars(run, "rollout/accuracy_mean"))
    assert read_scalars(run, "perf/evaluations_total") == [(8, 8.0), (16, 16.0)]
    for tag in ("rollout/frac_zero_std", "rollout/accuracy_mean", "rollout/gain_vs_imitation", "losses/policy",
                "losses/kl", "losses/clipfrac", "losses/approx_kl", "losses/grad_norm", "policy/std_mean",
                "perf/evals_per_s", "timing_s/score"):
        assert [s for s, _ in read_scalars(run, tag)] == [8, 16], tag  # one value per iteration
    for tag in ("eval/accuracy_mean", "eval/accuracy_median", "eval/imitation_accuracy_median",
                "eval/gain_vs_imitation", "diversity/agreement_same_init", "diversity/agreement_across_inits",
                "diversity/imitation_agreement_same_init", "diversity/imitation_agreement_across_inits"):
        assert [s for s, _ in read_scalars(run, tag)] == [16], tag  # eval_every=2
    for tag in ("diversity/agreement_same_init", "diversity/agreement_across_inits"):
        assert 0.0 < read_scalars(run, tag)[0][1] < 1.0, tag  # sampled nets differ
    assert read_scalars(run, "eval/gain_vs_imitation")[0][1] == pytest.approx(
        read_scalars(run, "eval/accuracy_mean")[0][1] - statistics.mean(imitation_accuracies(imitation)), abs=1e-6)
    assert read_scalars(run, "losses/kl")[0][1] >= 0.0
    from trainer import generate
    assert generate.cli(["--policy", str(run / "policy.safetensors"), "--seeds", "0..1", "--out", "gen"]) == 0


def imitation_accuracies(policy) -> list[float]:
    from envs.tasks import task_from_config
    from trainer.generator import WeightGenerator, mean_path_accuracy
    weight_generator = WeightGenerator.load(policy)
    imitate_cfg = weight_generator.cfg.imitate
    return mean_path_accuracy(weight_generator, task_from_config(weight_generator.cfg.task), range(imitate_cfg.eval_seed_start, imitate_cfg.eval_seeds))[0]


@pytest.mark.parametrize("noise", ["iid", "units"])
def test_resume_logs_the_same_numbers(imitation, in_tmp, noise):
    # units also cuts whole groups into minibatches (iid keeps the row-by-row shuffle)
    mode = [f"grpo.noise={noise}", "grpo.reward_batch=fresh", "grpo.minibatch=groups"] if noise == "units" else []
    straight = grpo_trainer(imitation, in_tmp / "straight", 4, *mode)
    straight.train()
    first = grpo_trainer(imitation, in_tmp / "stopped", 2, *mode)
    first.train()
    resumed = grpo_trainer(imitation, in_tmp / "stopped", 4, *mode)
    resumed.resume()
    assert resumed.iteration == 2
    resumed.train()
    for tag in ("rollout/reward_mean", "rollout/reward_max", "rollout/gain_vs_imitation", "losses/policy",
                "eval/accuracy_mean", "diversity/agreement_same_init"):
        a, b = read_scalars(in_tmp / "straight", tag), read_scalars(in_tmp / "stopped", tag)
        assert a == b and a, tag
    sa = load_weights(in_tmp / "straight/policy.safetensors")[0]
    sb = load_weights(in_tmp / "stopped/policy.safetensors")[0]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("mode", [["grpo.noise=iid"], ["grpo.noise=units"],
                                  ["grpo.noise=units", "grpo.estimator=pathwise", "grpo.trainable=policy"]],
                         ids=["iid", "units", "pathwise-policy"])
def test_a_killed_worker_does_not_stop_training(imitation, in_tmp, mode):
    t = grpo_trainer(imitation, in_tmp / "killed", 3, *mode, "grpo.reward_batch=fresh")
    t.pool = RolloutPool(t.cfg)
    original_score = t.score

    def score_then_kill(rollouts):
        original_score(rollouts)
        if "grpo.estimator=pathwise" in mode:  # the re-run share brings its reward gradients too
            assert all(torch.isfinite(v).all() and v.abs().sum() > 0 for v in rollouts.grads.values())
        if t.iteration == 0:  # kill an actor after the first batch: the next batch must still be scored in full
            ray.kill(t.pool._actors[0])

    t.score = score_then_kill
    t.train()
    assert t.iteration == 3 and t.pool.restarts >= 1
    assert [s for s, _ in read_scalars(in_tmp / "killed", "rollout/reward_mean")] == [8, 16, 24]
    t.pool.close()


@pytest.mark.parametrize("explore,trainable", [("all", "latent"), ("last", "latent"), ("last", "policy")])
def test_pathwise_loss_is_the_reward_gradient_through_the_last_step(imitation, in_tmp, explore, trainable):
    """The pathwise surrogate (the workers' d(reward)/dW dotted with the last step's reparameterised output) has the
    gradient of the true reward, minus the mean cross-entropy of the generated nets on the iteration's examples,
    differentiated on the learner through the last step's latent draw."""
    from envs.models import reference_from_config
    from envs.scoring import batched_logits

    t = grpo_trainer(imitation, in_tmp / "r", 1, *UNITS, "grpo.latent_std=0.2", "grpo.estimator=pathwise",
                     f"grpo.explore={explore}", f"grpo.trainable={trainable}")
    rollouts = scored_rollouts(t)
    mb = torch.tensor([0, 3, 5])
    params = [p for p in t.policy.parameters() if p.requires_grad]
    got = torch.autograd.grad(t.estimator.loss(rollouts, mb, mb // t.cfg.grpo.group_size, 0.0), params)

    step, g = rollouts.steps[-1], t.cfg.grpo.group_size
    x = {k: v[mb // g] if len(v) == 2 else v[mb] for k, v in step.x.items()}
    n = len(mb)
    h, heads = t.policy.encode(x, torch.full((n,), step.t1), torch.full((n,), step.t2))
    mean, std = t.policy.latent(h)
    u = {k: mean[k] + (step.latent[k][mb] - mean[k].detach()) for k in mean}  # the drawn latent, reparameterised
    w = t.weight_generator.tokenizer.decode(t.policy.decode(x, t.policy.lift(h, u), heads)[0])
    for k in w:
        torch.testing.assert_close(w[k].detach(), rollouts.final[k][mb])  # the stored nets, recomputed
    split = t.task.split("train")
    idx = torch.as_tensor(t.reward_examples())
    model = reference_from_config(t.cfg.reference, t.task).eval()
    logits = batched_logits(model, w, split.x[idx])
    reward = -torch.nn.functional.cross_entropy(logits.flatten(0, 1), split.y[idx].repeat(n), reduction="none")
    want = torch.autograd.grad(-reward.view(n, -1).mean(1).mean(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert any(a.abs().sum() > 0 for a in got)
    trunk = [p is t.policy.out_left.weight for p in params]  # the trunk learns only with trainable "policy"
    assert any(trunk) == (trainable == "policy")
    if trainable == "policy":
        assert got[trunk.index(True)].abs().sum() > 0


@pytest.mark.parametrize("input_noise", [0.0, 0.3])
def test_ensemble_reward_gradient_is_the_mixed_ensemble_loss_gradient(imitation, in_tmp, input_noise):
    """grpo.ensemble=a: the workers' gradient for net (b, g) is that of -[(1 - a) CE_bg + a B CE(ensemble g)] / N, the
    ensemble of draw g being the B inits' nets with their class probabilities averaged: autograd of that loss on the
    stored nets, here, on the iteration's examples (with grpo.input_noise, on them noised). The logged ensemble loss
    is that CE, and the rewards stay each net's own loss."""
    from envs.models import reference_from_config
    from envs.objectives import noisy_inputs
    from envs.scoring import batched_logits

    a = 0.4
    t = grpo_trainer(imitation, in_tmp / "r", 1, *UNITS, "grpo.latent_std=0.2", "grpo.estimator=pathwise",
                     "grpo.trainable=policy", f"grpo.ensemble={a}", f"grpo.input_noise={input_noise}")
    rollouts = scored_rollouts(t)
    assert rollouts.paths is not None  # the mean paths' rows (scored with the samples, or apart) carry no weights
    b, g = t.cfg.grpo.inits_per_iter, t.cfg.grpo.group_size
    split = t.task.split("train")
    idx = torch.as_tensor(t.reward_examples())
    x, y = split.x[idx], split.y[idx]
    x = (noisy_inputs(x, input_noise, t.noise_seed()) if input_noise else x).double()
    nets = {k: v.double().requires_grad_(True) for k, v in rollouts.final.items()}
    logits = batched_logits(reference_from_config(t.cfg.reference, t.task).double().eval(), nets, x)  # (B G, N, C)
    ce = torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.repeat(b * g), reduction="none").view(b, g, -1)
    p_true = logits.softmax(-1).gather(-1, y.view(1, -1, 1).expand(b * g, -1, 1)).view(b, g, -1)
    ens = -p_true.mean(0).log()  # (G, N)
    loss = ((1 - a) * ce.sum() + a * b * ens.sum()) / len(y)
    want = torch.autograd.grad(-loss, list(nets.values()))
    for k, w in zip(nets, want):
        torch.testing.assert_close(rollouts.grads[k].double(), w, rtol=1e-3, atol=1e-6)
    assert rollouts.ensemble_loss == pytest.approx(ens.mean().item(), rel=1e-4)
    torch.testing.assert_close(rollouts.rewards.double(), -ce.mean(-1).detach(), rtol=1e-4, atol=1e-5)


def test_repel_adds_the_feature_repulsion_of_the_first_layer_across_inits(imitation, in_tmp):
    """grpo.repel=c adds c x the soft maximum cosine of every first-hidden-layer unit (its centred pre-activations on
    the iteration's first 256 examples) with the units of the other inits' nets in the minibatch, computed here from
    the stored nets; a net's own init's draws do not count, and it logs the hard maximum as policy/feature_cosine. Its
    gradient reaches the policy."""
    c, tau = 0.5, 0.05
    t = grpo_trainer(imitation, in_tmp / "r", 1, *UNITS, "grpo.latent_std=0.2", "grpo.estimator=pathwise",
                     "grpo.trainable=policy", f"grpo.repel={c}")
    rollouts = scored_rollouts(t)
    g = t.cfg.grpo.group_size
    mb = torch.tensor([0, 1, 3, 5])
    loss = t.estimator.loss(rollouts, mb, mb // g, 0.0)
    assert t.estimator.stats["policy/feature_cosine"]
    grad = torch.autograd.grad(loss, t.policy.out_left.weight)[0]
    t.cfg.grpo.repel = 0.0
    plain = t.estimator.loss(rollouts, mb, mb // g, 0.0)
    assert (torch.autograd.grad(plain, t.policy.out_left.weight)[0] - grad).abs().sum() > 0
    examples = torch.as_tensor(t.reward_examples()[:256])  # the probe: the iteration's first 256 examples
    x = t.task.split("train").x[examples].flatten(1).double()
    first, bias = (t.weight_generator.layout.tensors[i].key for i in (0, 1))
    z = torch.einsum("nuf,ef->nue", rollouts.final[first][mb].double(), x) + rollouts.final[bias][mb].double()[..., None]
    z = z - z.mean(2, keepdim=True)  # what each unit detects, centred over the probe
    units = z / z.norm(dim=2, keepdim=True)
    want = []
    for i in range(len(mb)):
        for j in range(units.shape[1]):
            cos = [units[i, j] @ units[k, m] for k in range(len(mb)) if mb[k] // g != mb[i] // g
                   for m in range(units.shape[1])]
            want.append(tau * torch.logsumexp(torch.stack(cos) / tau, 0))
    assert (loss - plain).item() == pytest.approx(c * torch.stack(want).mean().item(), rel=1e-4)


@pytest.mark.parametrize("explore, flow", [("all", False), ("last", False), ("all", True)])
def test_pathwise_walk_is_the_reward_gradient_through_every_step(imitation, in_tmp, explore, flow):
    """With grpo.backprop=walk the surrogate's gradient is the true reward's, differentiated on the learner through the
    whole walk from the init, every sampled step's latent reparameterised around its mean; and it is not the last
    step's alone (the earlier steps' outputs depend on the trained parameters too). A flow policy's walk (each step a
    share of the way to its predicted end) trains the same way."""
    from envs.models import reference_from_config
    from envs.scoring import batched_logits

    if flow:
        from tests.settings import imitate_cli

        assert imitate_cli("--name", "flow", "--set", "policy.flow=true") == 0
        imitation = in_tmp / "artifacts/runs/flow/policy.safetensors"
    t = grpo_trainer(imitation, in_tmp / "r", 1, *UNITS, "grpo.latent_std=0.2", "grpo.estimator=pathwise",
                     f"grpo.explore={explore}", "grpo.trainable=policy", "grpo.backprop=walk")
    assert t.policy.cfg.flow == flow and len(t.weight_generator.schedule) == 3
    rollouts = scored_rollouts(t)
    mb = torch.tensor([0, 3, 5])
    params = [p for p in t.policy.parameters() if p.requires_grad]
    got = torch.autograd.grad(t.estimator.loss(rollouts, mb, mb // t.cfg.grpo.group_size, 0.0), params)

    g, n = t.cfg.grpo.group_size, len(mb)
    x = {k: v[mb // g] for k, v in rollouts.steps[0].x.items()}  # the inits, one per trajectory
    for step in rollouts.steps:
        h, heads = t.policy.encode(x, torch.full((n,), step.t1), torch.full((n,), step.t2))
        mean, _ = t.policy.latent(h)
        if step.sampled:
            drawn = {k: v[mb] for k, v in step.latent.items()}
            mean = {k: mean[k] + (drawn[k] - mean[k].detach()) for k in mean}
        x = t.policy.decode(x, t.policy.lift(h, mean), heads)[0]
    w = t.weight_generator.tokenizer.decode(x)
    for k in w:
        torch.testing.assert_close(w[k].detach(), rollouts.final[k][mb])  # the stored nets, recomputed from the inits
    split = t.task.split("train")
    idx = torch.as_tensor(t.reward_examples())
    logits = batched_logits(reference_from_config(t.cfg.reference, t.task).eval(), w, split.x[idx])
    reward = -torch.nn.functional.cross_entropy(logits.flatten(0, 1), split.y[idx].repeat(n), reduction="none")
    want = torch.autograd.grad(-reward.view(n, -1).mean(1).mean(), params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    t.cfg.grpo.backprop = "last"
    last = torch.autograd.grad(t.estimator.loss(rollouts, mb, mb // t.cfg.grpo.group_size, 0.0), params)
    assert sum((a - b).norm() ** 2 for a, b in zip(got, last)) > 1e-4 * sum(a.norm() ** 2 for a in got)


def test_the_spread_tie_is_zero_at_the_imitation_policy_and_widens_draws_it_has_shrunk(imitation, in_tmp):
    """grpo.beta_spread: at the start (policy = its imitation) the tie adds nothing; once the decoder makes its draws
    matter less (the latent's lift halved, as GRPO's reward gradient tends to), the tie is beta x the squared log ratio
    of how much the groups' nets differ in their class probabilities on the probe examples, and a step along its
    gradient alone makes the draws differ more again."""
    from envs.models import reference_from_config
    from envs.scoring import batched_logits
    from trainer.estimators import SPREAD_PROBE

    t = grpo_trainer(imitation, in_tmp / "r", 1, *UNITS, "grpo.latent_std=0.2", "grpo.estimator=pathwise",
                     "grpo.trainable=policy", "grpo.beta_spread=2.0")
    rollouts = scored_rollouts(t)
    g = t.cfg.grpo.group_size
    mb = torch.arange(2 * g)  # two whole groups
    with_tie = t.estimator.loss(rollouts, mb, mb // g, 0.0)
    t.cfg.grpo.beta_spread = 0.0
    torch.testing.assert_close(with_tie, t.estimator.loss(rollouts, mb, mb // g, 0.0))
    t.cfg.grpo.beta_spread = 2.0
    assert t.estimator.stats["policy/spread_ratio"] == [pytest.approx(1.0)]

    probe = t.task.train.x[torch.as_tensor(t.reward_examples()[:SPREAD_PROBE])]  # the iteration's examples
    model = reference_from_config(t.cfg.reference, t.task).eval()

    def spread(policy, rows):  # an independent computation: each group's mean squared distance to its mean net's
        out = batched_logits(model, t.estimator.nets(policy, rollouts, rows, False), probe).softmax(-1)
        return torch.stack([((out[rows // g == i] - out[rows // g == i].mean(0)) ** 2).sum((1, 2)).mean()
                            for i in (rows // g).unique()])

    rollouts.grads = {k: torch.zeros_like(v) for k, v in rollouts.grads.items()}  # the tie alone
    t.policy.latent_mean.basis.mul_(0.5)  # the draws' lift into the unit states halved
    with torch.no_grad():
        before = spread(t.policy, mb) / spread(t.frozen, mb)
    assert (before < 0.9).all()
    loss = t.estimator.loss(rollouts, mb, mb // g, 0.0)
    torch.testing.assert_close(loss, 2.0 * (before.log() ** 2).mean(), rtol=1e-4, atol=1e-6)
    params = [p for p in t.policy.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    with torch.no_grad():
        norm = float(torch.cat([x.flatten() for x in grads]).norm())
        for p, d in zip(params, grads):
            p -= 0.5 * d / max(norm, 1e-12)
        after = spread(t.policy, mb) / spread(t.frozen, mb)
    assert (after > before).all()
    rows = torch.tensor([0, 1, 2, g])  # a row-shuffled minibatch: group 1's single row has no spread, and is left out
    loss = t.estimator.loss(rollouts, rows, rows // g, 0.0)
    with torch.no_grad():
        ratio = spread(t.policy, rows[:3]) / spread(t.frozen, rows[:3])
    torch.testing.assert_close(loss, 2.0 * ratio.log().pow(2).mean(), rtol=1e-4, atol=1e-6)


def test_pathwise_grpo_trains_and_resumes_bit_identically(imitation, in_tmp):
    extra = [*UNITS, "grpo.estimator=pathwise", "grpo.input_noise=0.3"]  # the digits config's recipe, noise included
    straight = grpo_trainer(imitation, in_tmp / "a", 2, *extra)
    straight.train()
    cut = grpo_trainer(imitation, in_tmp / "b", 2, *extra)
    cut.pool = RolloutPool(cut.cfg)
    try:
        rollouts = cut.collect_rollouts()
        cut.score(rollouts)
        cut.compute_advantages(rollouts)
        cut.update_policy(rollouts)
        cut.iteration += 1
        cut.checkpoint()
    finally:
        cut.pool.close()
        cut.pool = None
    resumed = grpo_trainer(imitation, in_tmp / "b", 2, *extra)
    resumed.resume()
    resumed.train()
    a = load_weights(in_tmp / "a/policy.safetensors")[0]
    b = load_weights(in_tmp / "b/policy.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    imitated = load_weights(imitation)[0]
    assert any(not torch.equal(a[k], imitated[k]) for k in a)  # it moved
    from trainer.algos import learning_rate

    lr = [learning_rate(i, 2, 1e-3, True) for i in range(2)]  # the one run's cosine schedule, logged per iteration
    assert read_scalars(in_tmp / "a", "charts/learning_rate") == [(8, pytest.approx(lr[0])), (16, pytest.approx(lr[1]))]


def test_a_diverged_update_is_a_one_line_error_and_saves_nothing(imitation, in_tmp):
    from trainer.config import ConfigError
    t = grpo_trainer(imitation, in_tmp / "r", 2, "grpo.lr=1e30", "grpo.save_every=1")
    with pytest.raises(ConfigError, match=r"GRPO diverged at iteration 1: the policy's parameters are no longer "
                                          r"finite; lower grpo.lr \(1e\+30\); nothing was saved"):
        t.train()
    assert not (in_tmp / "r/policy.safetensors").exists() and not (in_tmp / "r/state.safetensors").exists()



def test_score_cv_linearises_the_reward_at_each_group_mean_net(imitation, in_tmp):
    """`score_cv`: the control variate's base is the policy's own mean net from the group's init (its last step at the
    mean latent), scored with its gradient; the advantages, f(u) minus the linearised reward, keep little of the
    rewards' spread around that base when the latent's draws are small (a wrong slope would add spread, not remove it);
    training with it moves the latent's mean and resumes bit-identically."""
    extra = [*UNITS, "grpo.estimator=score_cv", "grpo.explore=last", "grpo.latent_std=0.05"]
    t = grpo_trainer(imitation, in_tmp / "r", 1, *extra)
    rollouts = scored_rollouts(t)
    b = len(rollouts.seeds)
    _, w = t.estimator.mean_nets(rollouts, torch.arange(b), grad=False)
    for k in w:
        torch.testing.assert_close(w[k].detach(), rollouts.paths[k][:b], rtol=1e-5, atol=1e-6)  # the mean path's net
    t.compute_advantages(rollouts)
    spread = rollouts.rewards - rollouts.mean_reward[:, None]
    assert rollouts.advantages.shape == spread.shape and not rollouts.zero_spread.any()
    assert rollouts.cv_scale == pytest.approx(rollouts.rewards.std().item(), rel=1e-4)  # one scale for the iteration
    assert ((rollouts.advantages * rollouts.cv_scale) ** 2).mean() < 0.25 * (spread ** 2).mean()

    straight = grpo_trainer(imitation, in_tmp / "a", 2, *extra)
    straight.train()
    resumed = grpo_trainer(imitation, in_tmp / "b", 1, *extra)
    resumed.train()
    resumed = grpo_trainer(imitation, in_tmp / "b", 2, *extra)
    resumed.resume()
    resumed.train()
    a, c = (load_weights(in_tmp / f"{r}/policy.safetensors")[0] for r in "ab")
    assert all(torch.equal(a[k], c[k]) for k in a)
    imitated = load_weights(imitation)[0]
    assert any(not torch.equal(a[k], imitated[k]) for k in a if k.startswith("latent_mean."))

