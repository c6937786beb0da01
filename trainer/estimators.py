"""GRPO's policy-gradient estimators (`grpo.estimator`), one class each, registered in `ESTIMATORS`.

An estimator says what the workers must return beside the rewards, how a group's rewards become advantages, and what
the update minimises besides the KL tie. `GRPOTrainer` asks it at each of its named steps and branches on nothing else:

- `score`: GRPO's group-relative score function with the clipped ratio (Shao et al. 2024).
- `pathwise`: the workers' gradient of the differentiable reward backpropagated through the policy's walk (DRaFT,
  Clark et al. 2023); no score function.
- `score_cv`: the score function on the real reward, with the reward's first-order expansion around each group's mean
  latent as a control variate (MuProp, Gu et al. 2016): unbiased for a non-differentiable reward, with less variance.

A new estimator is one subclass and one line in `ESTIMATORS`; the math it needs belongs in `trainer/algos.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from envs.models import reference_from_config
from envs.scoring import batched_logits
from policy.sampling import Step
from trainer.algos import (compute_grpo_advantages, control_variate_advantages, feature_repulsion, group_spread,
                           pathwise_surrogate)
from trainer.audit import first_layer_responses


SPREAD_PROBE = 256  # examples the spread tie (`grpo.beta_spread`) compares a group's nets on
REPEL_TEMPERATURE = 0.05  # of the feature repulsion's soft maximum over cosines (`grpo.repel`)


@dataclass
class Rollouts:
    """One iteration's trajectories: B inits x G samples, flattened to N = B * G in group-major order."""

    steps: list[Step]  # K steps: (N, ...) token blocks and old log-probs (N,); (B, ...) inputs where a group shares them
    final: dict[str, torch.Tensor]  # generated state dicts, (N, *shape)
    seeds: list[int]  # the B init seeds
    paths: Optional[dict[str, torch.Tensor]]  # mean paths from the B inits: the policy's, then the imitation policy's,
    # (2B, *shape); None on iterations `grpo.gain_every` skips
    rewards: Optional[torch.Tensor] = None  # (B, G), what `grpo.reward` says, on the objective
    accuracy: Optional[torch.Tensor] = None  # (B, G), accuracy on the iteration's reward examples, on the objective
    gain: Optional[torch.Tensor] = None  # (B,), accuracy of the policy's mean path minus the imitation policy's
    plain: Optional[torch.Tensor] = None  # (B,), the policy's mean path's plain accuracy (an objective other than plain)
    advantages: Optional[torch.Tensor] = None  # (B, G)
    zero_spread: Optional[torch.Tensor] = None  # (B,)
    grads: Optional[dict[str, torch.Tensor]] = None  # "pathwise": d(reward)/dW of every sampled net, (N, *shape)
    noise: Optional[list[Optional[dict[str, torch.Tensor]]]] = None  # "pathwise": per step, its standard-normal
    # latent draws (None for a step that took the mean)
    mean_reward: Optional[torch.Tensor] = None  # "score_cv": (B,) the reward of each group's mean net (its linearisation
    mean_grads: Optional[dict[str, torch.Tensor]] = None  # point), and d(reward)/dW there, (B, *shape)
    ensemble_loss: Optional[float] = None  # `grpo.ensemble`: the mean cross-entropy of the G ensembles of B nets
    cv_scale: float = 1.0  # "score_cv": the iteration's reward spread, dividing both halves of the estimate
    timing: dict[str, float] = field(default_factory=dict)


class Estimator:
    """The `score` estimator, and the defaults every other one changes."""

    ratio_objective = True  # the clipped ratio objective over the sampled steps is part of the loss
    sample_grads = False  # the workers return d(reward)/dW of every sampled net
    mean_paths_always = False  # the mean paths are scored every iteration, not at `grpo.gain_every`'s cadence

    def __init__(self, trainer: "GRPOTrainer"):  # trainer/grpo.py, which imports this module (so not imported here)
        self.t = trainer
        self.stats: dict[str, list[float]] = {}  # what the update logs beside its losses, averaged per iteration

    def collect(self, rollouts: Rollouts) -> None:
        """Keep what the update needs from the draws (after `collect_rollouts`)."""

    def score(self, rollouts: Rollouts, examples, noise_seed: int) -> None:
        """Score what the estimator needs beyond the samples and the mean paths (after `score`)."""

    def advantages(self, rollouts: Rollouts) -> None:
        rollouts.advantages, rollouts.zero_spread = compute_grpo_advantages(rollouts.rewards, self.t.cfg.grpo.scale_by_std)

    def loss(self, rollouts: Rollouts, mb: torch.Tensor, groups: torch.Tensor, ratio_loss) -> torch.Tensor:
        """The policy-gradient loss of the trajectories `mb` (of groups `groups`), given the ratio objective's."""
        return ratio_loss


class Pathwise(Estimator):
    ratio_objective = False
    sample_grads = True
    model: Optional[torch.nn.Module] = None  # the reference model the spread tie runs the nets through

    def collect(self, rollouts: Rollouts) -> None:  # the draws as noise, so the update can move their mean under them
        rollouts.noise = [self.standard_noise(step) if step.sampled else None for step in rollouts.steps]

    @torch.no_grad()
    def standard_noise(self, step: Step) -> dict[str, torch.Tensor]:
        """A sampled step's latent draws as standard-normal noise around the policy's latent mean at that step."""
        mean, std = self.t.policy.latent(step.states)
        return {g: (step.latent[g] - mean[g]) / std[g].view(-1, 1, 1) for g in mean}

    def loss(self, rollouts: Rollouts, mb: torch.Tensor, groups: torch.Tensor, ratio_loss) -> torch.Tensor:
        """Minus the reward's first-order change, sum over weights of d(reward)/dW (from the workers) x W, for the
        trajectories `mb`, with W recomputed at the drawn noise under the current policy (reparameterised). Its gradient
        is the reward gradient through the policy (DRaFT, Clark et al. 2023). With `grpo.backprop` "last", W is the last
        step's output from its stored input (DRaFT-1); with "walk", the whole walk is recomputed from the init, every
        sampled step at its stored noise, so the gradient also counts how the parameters moved the earlier steps' outputs
        (with `grpo.trainable` "policy", the part "last" leaves out). With "latent" only the latent's mean learns.
        With `grpo.beta_spread`, plus the spread tie: beta x the squared log ratio of each group's spread of class
        probabilities under the policy and under the frozen imitation policy, both at the drawn noise. With
        `grpo.repel`, plus repel x each first-layer unit's soft maximum cosine with the units of other inits' nets, in
        what they detect on the probe (`features`, `trainer.algos.feature_repulsion`)."""
        t, grpo_cfg = self.t, self.t.cfg.grpo
        w = self.nets(t.policy, rollouts, mb, trunk_grad=grpo_cfg.trainable == "policy")
        loss = pathwise_surrogate({k: v[mb] for k, v in rollouts.grads.items()}, w)
        if grpo_cfg.beta_spread > 0:  # the draws kept as different as the imitation policy's at the same draws
            with torch.no_grad():
                ref = self.nets(t.frozen, rollouts, mb, trunk_grad=False)
            group = mb // grpo_cfg.group_size
            pairs = group.unique(return_counts=True)[1] > 1  # row-shuffled minibatches hold some groups' single rows
            if pairs.any():
                log_ratio = torch.log(group_spread({"out": self.outputs(w)}, group)[pairs] /
                                      group_spread({"out": self.outputs(ref)}, group)[pairs])
                self.stats.setdefault("policy/spread_ratio", []).append(log_ratio.exp().mean().item())
                loss = loss + grpo_cfg.beta_spread * (log_ratio ** 2).mean()
        if grpo_cfg.repel > 0:  # the first hidden layer's units pushed away from other inits' units, in function
            group = mb // grpo_cfg.group_size
            if len(group.unique()) > 1:
                penalty, best = feature_repulsion(self.features(w), group, REPEL_TEMPERATURE)
                self.stats.setdefault("policy/feature_cosine", []).append(best.item())
                loss = loss + grpo_cfg.repel * penalty
        return loss

    def probe(self) -> torch.Tensor:
        """The spread tie's and the repulsion's probe inputs: the first `SPREAD_PROBE` of the iteration's reward
        examples, on the policy's device."""
        t = self.t
        examples = t.reward_examples()
        split = t.task.reward if examples is None else t.task.train
        idx = torch.arange(min(SPREAD_PROBE, len(split))) if examples is None else torch.as_tensor(examples[:SPREAD_PROBE])
        if self.model is None:
            self.model = reference_from_config(t.cfg.reference, t.task).to(t.weight_generator.device).eval()
        return split.x[idx].to(t.weight_generator.device)

    def outputs(self, nets: dict[str, torch.Tensor]) -> torch.Tensor:
        """The nets' class probabilities on the probe (`probe`): (N, probe, classes), differentiable in `nets`.
        Probabilities, not log-probabilities: those differ most in the classes a net rules out, and a tie on them held
        while the nets' predictions became the same."""
        x = self.probe()
        return batched_logits(self.model, nets, x).softmax(-1)

    def features(self, nets: dict[str, torch.Tensor]) -> torch.Tensor:
        """What each unit of the first hidden layer detects: its pre-activation on the probe (`probe`), centred over
        the probe, (N, units, probe x positions), differentiable in `nets`. Function, not weights: weights can move
        apart along directions the data never excites (measured: the repulsion then bought noise, `docs/HISTORY.md`)."""
        x = self.probe()  # builds self.model on first use
        return first_layer_responses(self.model, self.t.weight_generator.layout, nets, x)

    def nets(self, policy, rollouts: Rollouts, mb: torch.Tensor, trunk_grad: bool) -> dict[str, torch.Tensor]:
        """The trajectories `mb` recomputed by `policy` at their drawn noise: the last step from its stored input
        (`grpo.backprop` "last") or the whole walk from the init ("walk"); the decoded nets, with the graph to the
        latent's mean (and to the trunk and weight head with `trunk_grad`)."""
        t, grpo_cfg = self.t, self.t.cfg.grpo
        steps = rollouts.steps if grpo_cfg.backprop == "walk" else rollouts.steps[-1:]
        noise = rollouts.noise[-len(steps):]
        n = len(next(iter(rollouts.grads.values())))  # B x G trajectories; an input a group shares has B rows
        x = {k: v[mb if len(v) == n else mb // grpo_cfg.group_size] for k, v in steps[0].x.items()}
        for step, eps in zip(steps, noise):
            t1, t2 = (torch.full((len(mb),), s, device=t.weight_generator.device) for s in (step.t1, step.t2))
            with torch.set_grad_enabled(trunk_grad):
                h, heads = policy.encode(x, t1, t2)
            mean, std = policy.latent(h)
            u = mean if eps is None else {k: mean[k] + std[k].view(-1, 1, 1) * eps[k][mb] for k in mean}
            x, _ = policy.decode(x, policy.lift(h, u), heads)
        return t.weight_generator.tokenizer.decode(x, {k: rollouts.final[k][mb] for k in t.weight_generator.layout.frozen})


class ScoreCV(Estimator):
    mean_paths_always = True  # each group's mean net is the control variate's linearisation point

    def score(self, rollouts: Rollouts, examples, noise_seed: int) -> None:
        """The groups' mean nets (the last step at the mean latent), with the reward's gradient there."""
        t = self.t
        b = t.cfg.grpo.inits_per_iter
        at_mean = t.pool.score({k: v[:b] for k, v in rollouts.paths.items()}, examples, grad=True,
                               objective=t.reward_objective, noise_seed=noise_seed)
        rollouts.mean_reward = (at_mean.accuracy if t.cfg.grpo.reward == "accuracy" else at_mean.neg_loss()).float()
        rollouts.mean_grads = {k: v.to(t.weight_generator.device) for k, v in at_mean.grad.items()}

    def advantages(self, rollouts: Rollouts) -> None:
        # One positive scale for the whole iteration (the rewards' spread), shared with the pathwise half: the
        # estimate's direction stays unbiased, and its size is the score mode's, not the raw reward's (which left it
        # far below the KL tie's).
        rollouts.cv_scale = float(rollouts.rewards.std()) + 1e-8
        rollouts.advantages = self.control_variate_advantages(rollouts) / rollouts.cv_scale
        rollouts.zero_spread = torch.zeros(len(rollouts.advantages), dtype=torch.bool)

    def mean_nets(self, rollouts: Rollouts, groups: torch.Tensor, grad: bool) -> tuple[dict, dict[str, torch.Tensor]]:
        """The last step of `groups` at their mean latent: (the latent's mean, the decoded nets). With explore "last"
        a group's trajectories share that step's input; `grad`: the latent's mean keeps its graph to the policy."""
        t = self.t
        step = rollouts.steps[-1]
        x = {k: v[groups] for k, v in step.x.items()}
        t1, t2 = (torch.full((len(groups),), s, device=t.weight_generator.device) for s in (step.t1, step.t2))
        with torch.no_grad():  # the trunk is frozen with noise "units": only the latent's mean learns
            h, heads = t.policy.encode(x, t1, t2)
        with torch.set_grad_enabled(grad):
            mean, _ = t.policy.latent(h)
        if not grad:
            mean = {g: m.requires_grad_(True) for g, m in mean.items()}
        with torch.enable_grad():
            y, _ = t.policy.decode(x, t.policy.lift(h, mean), heads)
            w = t.weight_generator.tokenizer.decode(y, {k: rollouts.paths[k][groups] for k in t.weight_generator.layout.frozen})
        return mean, w

    def control_variate_advantages(self, rollouts: Rollouts) -> torch.Tensor:
        """A = f(u) - f(mean) - slope . (u - mean) per trajectory, the slope being the reward's gradient at its group's
        mean net carried back to the latent (one backward for all groups)."""
        b, g = self.t.cfg.grpo.inits_per_iter, self.t.cfg.grpo.group_size
        mean, w = self.mean_nets(rollouts, torch.arange(b), grad=False)
        surrogate = sum((rollouts.mean_grads[k] * w[k]).sum() for k in rollouts.mean_grads if k in w)  # the reward's change
        slope = dict(zip(mean, torch.autograd.grad(surrogate, list(mean.values()))))
        drawn = rollouts.steps[-1].latent
        noise = torch.cat([(drawn[k] - mean[k].detach().repeat_interleave(g, 0)).flatten(1) for k in mean], 1)
        slopes = torch.cat([slope[k].repeat_interleave(g, 0).flatten(1) for k in mean], 1)
        adv = control_variate_advantages(rollouts.rewards.flatten().to(noise.device),
                                         rollouts.mean_reward.repeat_interleave(g).to(noise.device), slopes, noise)
        return adv.view(b, g).cpu()

    def loss(self, rollouts: Rollouts, mb: torch.Tensor, groups: torch.Tensor, ratio_loss) -> torch.Tensor:
        """The ratio objective on the control-variate advantages, plus the control variate's expectation taken
        pathwise: the reward linearised at each group's mean net, as the latent's mean moves; scaled as the log-probs
        are (averaged over latent dimensions)."""
        mean, w = self.mean_nets(rollouts, groups, grad=True)
        dims = sum(m[0].numel() for m in mean.values())
        return ratio_loss + pathwise_surrogate({k: v[groups] for k, v in rollouts.mean_grads.items()}, w) / (dims * rollouts.cv_scale)


ESTIMATORS: dict[str, type[Estimator]] = {"score": Estimator, "pathwise": Pathwise, "score_cv": ScoreCV}
