"""`python -m trainer.grpo`: improve the imitation policy with GRPO, rewarded by how well the nets it generates do on
the experiment's objective (`env.objective`: plain accuracy, or accuracy at 4-bit weights, at 90% sparsity, on noisy
inputs; see `envs/objectives.py`).

Each iteration is a short chain of named steps: collect_rollouts -> score -> compute_advantages -> update_policy ->
log_metrics (-> checkpoint). Rewards come from the Ray rollout pool; the policy stays tied to the frozen imitation
policy by a closed-form KL. `--resume` continues so that logged numbers match an unstopped run.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from tqdm import tqdm

from envs.models import reference_from_config
from envs.objectives import Objective
from envs.scoring import MAX_LOSS, predict_batch
from envs.tasks import task_from_config
from policy.model import Sampling
from policy.sampling import Step, gaussian_kl, gaussian_log_prob
from rollout.pool import RolloutPool
from trainer import paths
from trainer.algos import clipped_policy_loss, ensemble_example_weights, ensemble_loss, learning_rate, minibatches
from trainer.audit import ensemble_gain, prediction_agreement, split_logits
from trainer.checkpoints import (CheckpointError, load_training_state, policy_file, read_json, save_training_state,
                                 training_state_info)
from trainer.cli import add_run_args, parser, run_main, use_threads
from trainer.config import ConfigError, ExperimentConfig
from trainer.device import worker_gpus
from trainer.estimators import ESTIMATORS, Estimator, Rollouts
from trainer.generator import WeightGenerator, init_states, mean_path_accuracy, sample_accuracy, score_states
from trainer.runlog import RunLogger, check_resumable, check_run_dir, clear_run_dir, first_layer_grid, lock_run_dir


def check_sizes(cfg: ExperimentConfig, weight_generator: WeightGenerator) -> None:
    """Allocate, and free at once, the weights of one iteration's trajectories (B x G nets at every step of the
    schedule): a grpo.group_size or grpo.inits_per_iter the machine cannot hold is a one-line out-of-memory error
    before Ray starts or the run logs anything."""
    tokens = sum(math.prod(shape) for shape in weight_generator.layout.shapes.values())
    floats = cfg.grpo.inits_per_iter * cfg.grpo.group_size * len(weight_generator.schedule) * tokens
    if floats >= 2**61:  # torch.empty cannot even be asked (its size is a signed 64-bit count of bytes)
        raise MemoryError(f"can't allocate memory: you tried to allocate {4 * floats} bytes")
    torch.empty(floats, dtype=torch.float32)


class GRPOTrainer:
    def __init__(self, cfg: ExperimentConfig, init_policy: Path, run_dir: Path, progress: bool = True,
                 pool: Optional[RolloutPool] = None):
        """`pool`: a scoring pool its owner opened and closes (a benchmark running several trainers on one pool);
        without one, `train` opens its own and closes it on return."""
        train_size = len(task_from_config(cfg.task).train)  # the task is cached: loaded once
        if cfg.grpo.fresh_examples > train_size:
            raise ConfigError(f"config key grpo.fresh_examples: expected at most the {train_size} examples of "
                              f"{cfg.task.name}'s train split, got {cfg.grpo.fresh_examples}")
        self.weight_generator = WeightGenerator.load(init_policy, cfg=cfg)
        # GRPO's wall time from imitation on: a GRPO policy as the start brings its own (`grpo_wall_s` in policy.json)
        started = read_json(policy_file(init_policy).with_suffix(".json"))
        self.prior_wall_s = started.get("grpo_wall_s", started["wall_s"]) if "grpo_iterations" in started else 0.0
        self.cfg: ExperimentConfig = self.weight_generator.cfg
        grpo_cfg = self.cfg.grpo
        check_sizes(self.cfg, self.weight_generator)
        self.run_dir, self.progress = run_dir, progress
        self.task = task_from_config(self.cfg.task)
        self.objective = Objective.of(self.cfg.env)
        # what the sampled nets are scored on: the objective, on inputs with GRPO's training noise (grpo.input_noise)
        self.reward_objective = dataclasses.replace(self.objective, input_noise=grpo_cfg.input_noise)
        self.policy = self.weight_generator.policy
        # A generative policy explores in its own latent, at its prior's std unless grpo.latent_std says otherwise:
        # the draws are then nets like SGD's, and GRPO selects among them.
        noise = "units" if self.policy.cfg.generative else grpo_cfg.noise
        self.policy.sampling = Sampling(noise, grpo_cfg.temperature, grpo_cfg.latent_std)
        self.frozen = copy.deepcopy(self.policy).eval().requires_grad_(False)  # the imitation policy, frozen
        self.imitation = dataclasses.replace(self.weight_generator, policy=self.frozen)
        if noise == "units" and grpo_cfg.trainable == "latent":  # trunk and weight head stay the imitation policy's
            self.policy.requires_grad_(False)
            self.policy.latent_mean.requires_grad_(True)
        self.opt = torch.optim.AdamW([p for p in self.policy.parameters() if p.requires_grad], lr=grpo_cfg.lr,
                                     weight_decay=0.0)
        self.rng = {"sample": torch.Generator().manual_seed(self.cfg.seed),
                    "minibatch": torch.Generator().manual_seed(self.cfg.seed + 1)}
        imitate_cfg = self.cfg.imitate
        self.eval_seeds = list(range(imitate_cfg.eval_seed_start, imitate_cfg.eval_seed_start + imitate_cfg.eval_seeds))
        self.iteration, self.elapsed = 0, 0.0
        self.pool: Optional[RolloutPool] = pool
        self.imitation_eval: Optional[dict[str, object]] = None  # the imitation policy's eval numbers, computed once
        self.estimator: Estimator = ESTIMATORS[grpo_cfg.estimator](self)

    @property
    def evaluations(self) -> int:
        """Generated nets scored for the policy gradient so far (B x G per iteration): the x axis of every curve."""
        return self.iteration * self.cfg.grpo.inits_per_iter * self.cfg.grpo.group_size

    # -- the named steps -----------------------------------------------------------------------------------------------

    def collect_rollouts(self) -> Rollouts:
        """B fresh inits (new seeds every iteration, never the held-out or zoo seeds), G sampled trajectories each."""
        grpo_cfg = self.cfg.grpo
        first = grpo_cfg.seed_start + self.iteration * grpo_cfg.inits_per_iter
        seeds = list(range(first, first + grpo_cfg.inits_per_iter))
        init = init_states(self.cfg, self.task, seeds)
        self.policy.eval()
        final, steps = self.weight_generator.rollout(init, grpo_cfg.group_size, self.rng["sample"], grpo_cfg.antithetic, grpo_cfg.explore)
        rollouts = Rollouts(steps, final, seeds, None)
        if self.iteration % grpo_cfg.gain_every == 0 or self.estimator.mean_paths_always:  # the paired gain, at its cadence
            mean_paths = [weight_generator.generate(init, mean_only=True, trajectory=False)[0] for weight_generator in (self.weight_generator, self.imitation)]
            rollouts.paths = {k: torch.cat([p[k] for p in mean_paths]) for k in final}
        self.estimator.collect(rollouts)
        return rollouts

    def reward_examples(self) -> Optional[np.ndarray]:
        """With `grpo.reward_batch: fresh`, this iteration's train-split example indices (`grpo.fresh_examples` of
        them, or as many as the reward split holds, drawn from the seed and the iteration, so a resumed run draws the
        same); None: the reward split."""
        if self.cfg.grpo.reward_batch == "fixed":
            return None
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.iteration)
        n = self.cfg.grpo.fresh_examples or len(self.task.reward)
        return torch.randperm(len(self.task.train), generator=gen)[:n].numpy()

    def score(self, rollouts: Rollouts) -> None:
        """The G samples of every group, and both mean paths from the B inits, on the same reward examples, as the
        objective deploys them (with an objective other than plain, the policy's mean paths also as they are). The
        samples' inputs carry `grpo.input_noise`; the mean paths', for the paired gain, do not (a second call then)."""
        grpo_cfg = self.cfg.grpo
        b, n = grpo_cfg.inits_per_iter, grpo_cfg.inits_per_iter * grpo_cfg.group_size
        grads = self.estimator.sample_grads
        examples = self.reward_examples()
        together = rollouts.paths is not None and self.reward_objective == self.objective  # the mean paths in one call
        nets = {k: torch.cat([rollouts.final[k], rollouts.paths[k]]) for k in rollouts.final} if together else rollouts.final
        weights = self.ensemble_weights(rollouts, examples, 2 * b if together else 0) if grpo_cfg.ensemble > 0 else None
        scores = self.pool.score(nets, examples, grad=grads, objective=self.reward_objective,
                                 noise_seed=self.noise_seed(), example_weights=weights)
        self.estimator.score(rollouts, examples, self.noise_seed())
        if rollouts.paths is not None and not self.objective.plain:
            rollouts.plain = self.pool.score({k: v[:b] for k, v in rollouts.paths.items()}, examples).accuracy.float()
        if grads:
            rollouts.grads = {k: v[:n].to(self.weight_generator.device) for k, v in scores.grad.items()}
        rollouts.accuracy = scores.accuracy[:n].float().view(b, grpo_cfg.group_size)
        rollouts.rewards = rollouts.accuracy if grpo_cfg.reward == "accuracy" else scores.neg_loss()[:n].float().view_as(rollouts.accuracy)
        if rollouts.paths is not None:
            paths = (scores.accuracy[n:] if together else
                     self.pool.score(rollouts.paths, examples, objective=self.objective, noise_seed=self.noise_seed()).accuracy)
            rollouts.gain = (paths[:b] - paths[b:]).float()

    def ensemble_weights(self, rollouts: Rollouts, examples: Optional[np.ndarray], extra: int) -> torch.Tensor:
        """With `grpo.ensemble`: a forward pass of the sampled nets for their per-example losses, and from them the
        per-example weights that mix each net's gradient with its ensemble's (`ensemble_example_weights`): (rows of
        the nets `score` sends, N), the `extra` rows of the mean paths sent with them all ones. Logs the ensembles'
        loss (`rollout/ensemble_loss`)."""
        grpo_cfg = self.cfg.grpo
        b, g = grpo_cfg.inits_per_iter, grpo_cfg.group_size
        loss = self.pool.score(rollouts.final, examples, objective=self.reward_objective, noise_seed=self.noise_seed(),
                               per_example=True).example_loss.clamp(max=MAX_LOSS).view(b, g, -1)
        rollouts.ensemble_loss = ensemble_loss(loss).mean().item()
        weights = ensemble_example_weights(loss, grpo_cfg.ensemble).flatten(0, 1)
        return torch.cat([weights, torch.ones(extra, weights.shape[1])])

    def noise_seed(self) -> int:
        """The seed of this iteration's input noise (objective "noisy"): new every iteration, the same on resume."""
        return self.cfg.seed * 1_000_003 + self.iteration + 1

    def compute_advantages(self, rollouts: Rollouts) -> None:
        self.estimator.advantages(rollouts)

    def step_distributions(self, step: Step, mb: torch.Tensor, groups: torch.Tensor, row_of: torch.Tensor
                           ) -> tuple[tuple[dict, dict], tuple[dict, dict], Optional[dict]]:
        """For one stored step and a minibatch of trajectories `mb`: the current policy's Gaussian (mean, std), the
        frozen imitation policy's, and what was drawn (None for a mean step). Over weights with "iid" noise, over the
        unit latent (at the stored unit states) with "units". A sampled step gives one row per trajectory of `mb`; a
        mean step one row per group, the KL tie alone (`groups`: the groups in `mb`, `row_of`: each one's group)."""
        b, g = self.cfg.grpo.inits_per_iter, self.cfg.grpo.group_size
        units = step.states is not None
        stored = step.states if units else step.x
        shared = len(next(iter(stored.values()))) == b  # B rows: one input per group
        rows = groups if shared else mb if step.sampled else groups * g
        if units:
            h = {k: v[rows] for k, v in stored.items()}
            dist = self.policy.latent(h)
            with torch.no_grad():
                ref = self.frozen.latent(h)
        else:
            x = {k: v[rows] for k, v in stored.items()}
            t1, t2 = (torch.full((len(rows),), t, device=self.weight_generator.device) for t in (step.t1, step.t2))
            dist = self.policy(x, t1, t2)
            with torch.no_grad():
                ref = self.frozen(x, t1, t2)
        if not step.sampled:
            return dist, ref, None
        if shared:  # the policy ran once per group: one row per trajectory again
            dist, ref = (tuple({k: v[row_of] for k, v in d.items()} for d in pair) for pair in (dist, ref))
        drawn = step.latent if units else step.y
        return dist, ref, {k: v[mb] for k, v in drawn.items()}

    def update_policy(self, rollouts: Rollouts) -> dict[str, float]:
        """E epochs over minibatches of trajectories: clipped ratio objective per sampled step + beta * KL to the
        frozen imitation policy, averaged over the K steps (a mean-path step, see `grpo.explore`, adds its KL on one
        row per group); with "pathwise", the reward gradient through the last step in place of the ratio objective."""
        grpo_cfg = self.cfg.grpo
        g = grpo_cfg.group_size
        adv = rollouts.advantages.flatten().to(self.weight_generator.device)
        keep = torch.arange(len(adv))  # indices stay on the CPU (they index tensors on any device)
        if grpo_cfg.drop_zero_spread:
            keep = keep[~rollouts.zero_spread.repeat_interleave(g)]
        n_sampled = sum(step.sampled for step in rollouts.steps)
        stats: dict[str, list[float]] = {k: [] for k in ("policy", "kl", "clipfrac", "approx_kl", "grad_norm")}
        stds: list[float] = []  # the sampled steps' std (tempered): does GRPO shrink its exploration?
        self.policy.train()
        for group in self.opt.param_groups:
            group["lr"] = learning_rate(self.iteration, grpo_cfg.iterations, grpo_cfg.lr, grpo_cfg.cosine)
        first = True
        for _ in range(grpo_cfg.epochs):
            for mb in minibatches(keep, g, grpo_cfg.minibatch_size, grpo_cfg.minibatch, self.rng["minibatch"]):
                pg_loss, kl_loss = 0.0, 0.0
                # Where a group's trajectories share a step's input, the policy runs once per group.
                groups, row_of = torch.unique(mb // g, return_inverse=True)
                for step in rollouts.steps:
                    (mean, std), (ref_mean, ref_std), drawn = self.step_distributions(step, mb, groups, row_of)
                    kl_loss = kl_loss + gaussian_kl(mean, std, ref_mean, ref_std).mean() / len(rollouts.steps)
                    if drawn is None or not self.estimator.ratio_objective:
                        continue
                    log_prob = gaussian_log_prob(drawn, mean, std)
                    if first:  # nothing has changed the policy since these steps were sampled
                        ratio = torch.exp(log_prob - step.log_prob[mb])
                        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4), ratio
                    loss, s = clipped_policy_loss(log_prob, step.log_prob[mb], adv[mb], grpo_cfg.clip_range)
                    pg_loss = pg_loss + loss / n_sampled
                    stds.append(torch.stack([v.mean() for v in std.values()]).mean().item())
                    stats["clipfrac"].append(s["clipfrac"].item())
                    stats["approx_kl"].append(s["approx_kl"].item())
                first = False
                pg_loss = self.estimator.loss(rollouts, mb, groups, pg_loss)
                total = pg_loss + grpo_cfg.beta_kl * kl_loss
                self.opt.zero_grad(set_to_none=True)
                total.backward()
                params = [p for group in self.opt.param_groups for p in group["params"]]
                stats["grad_norm"].append(torch.nn.utils.clip_grad_norm_(params, grpo_cfg.grad_clip).item())
                self.opt.step()
                stats["policy"].append(pg_loss.item())
                stats["kl"].append(kl_loss.item())
        if not all(torch.isfinite(p).all() for p in params):  # nothing non-finite reaches a saved policy
            saved = self.iteration - self.iteration % grpo_cfg.save_every
            raise ConfigError(f"GRPO diverged at iteration {self.iteration + 1}: the policy's parameters are no longer "
                              f"finite; lower grpo.lr ({grpo_cfg.lr}); " +
                              (f"the last saved policy is iteration {saved}'s" if saved else "nothing was saved"))
        extra = {k: float(np.mean(v)) for k, v in self.estimator.stats.items() if v}
        self.estimator.stats.clear()
        return {**{f"losses/{k}": float(np.mean(v)) if v else 0.0 for k, v in stats.items()}, **extra,
                "policy/std_mean": float(np.mean(stds)) if stds else 0.0,
                "charts/learning_rate": self.opt.param_groups[0]["lr"]}

    def evaluate(self, weight_generator: WeightGenerator) -> dict[str, object]:
        """Held-out numbers of one policy: test accuracy of its mean path per eval seed on the objective (and plain,
        for an objective other than plain), and how much nets sampled (as GRPO samples) from one init, and from
        different inits, agree in their test predictions."""
        grpo_cfg = self.cfg.grpo
        accs, final = mean_path_accuracy(weight_generator, self.task, self.eval_seeds, objective=self.objective)
        seeds = self.eval_seeds[:DIVERSITY_INITS]
        gen = torch.Generator().manual_seed(self.cfg.seed)  # its own stream: evaluating never moves training's RNG
        sampled, _ = weight_generator.rollout(init_states(self.cfg, self.task, seeds), DIVERSITY_SAMPLES, gen, False, grpo_cfg.explore)
        pred = predict_batch(reference_from_config(self.cfg.reference, self.task).to(weight_generator.device), sampled,
                             self.task.split("test").to(weight_generator.device), self.cfg.rollout.chunk_size)
        same, across = prediction_agreement(pred, DIVERSITY_SAMPLES)
        out = {"accuracy": accs, "final": final, "same": same, "across": across}
        if len(self.eval_seeds) >= DIVERSITY_INITS:  # what an ensemble of the mean paths from 8 inits gains
            logits = split_logits(self.cfg, self.task, {k: v.cpu() for k, v in final.items()})
            out["ensemble_gain"] = ensemble_gain(logits, self.task.split("test").y, DIVERSITY_INITS)
        if not self.objective.plain:
            out["plain"] = score_states(self.cfg, self.task, final, "test")
        if weight_generator.policy.cfg.generative:  # what `generate` writes: one sample per init, the same noise for both policies
            gen = torch.Generator().manual_seed(self.cfg.seed)
            out["samples"] = sample_accuracy(weight_generator, self.task, self.eval_seeds, gen, objective=self.objective)
        return out

    def log_metrics(self, log: RunLogger, rollouts: Rollouts, losses: dict[str, float]) -> dict[str, float]:
        r = rollouts.rewards
        n = r.numel()
        metrics = {"rollout/reward_mean": r.mean().item(), "rollout/reward_std": r.std().item(),
                   "rollout/reward_max": r.max().item(), "rollout/reward_min": r.min().item(),
                   "rollout/frac_zero_std": rollouts.zero_spread.float().mean().item(),
                   "rollout/accuracy_mean": rollouts.accuracy.mean().item(),
                   **({} if rollouts.gain is None else {"rollout/gain_vs_imitation": rollouts.gain.mean().item()}), **losses,
                   **({} if rollouts.plain is None else {"rollout/plain_accuracy_mean_path": rollouts.plain.mean().item()}),
                   **({} if rollouts.ensemble_loss is None else {"rollout/ensemble_loss": rollouts.ensemble_loss}),
                   "perf/evals_per_s": n / max(rollouts.timing["score"], 1e-9),
                   "perf/evaluations_total": self.evaluations, "perf/iteration": self.iteration,
                   **{f"timing_s/{k}": v for k, v in rollouts.timing.items()}}
        it = self.iteration
        grpo_cfg = self.cfg.grpo
        if it % grpo_cfg.eval_every == 0 or it == grpo_cfg.iterations:
            self.policy.eval()
            if self.imitation_eval is None:
                self.imitation_eval = self.evaluate(self.imitation)
            ev, imitate_cfg = self.evaluate(self.weight_generator), self.imitation_eval
            accs, base = np.asarray(ev["accuracy"]), np.asarray(imitate_cfg["accuracy"])
            metrics.update({"eval/accuracy_mean": float(accs.mean()), "eval/accuracy_median": float(np.median(accs)),
                            "eval/imitation_accuracy_median": float(np.median(base)),
                            "eval/gain_vs_imitation": float((accs - base).mean()),
                            "diversity/agreement_same_init": ev["same"],
                            "diversity/agreement_across_inits": ev["across"],
                            "diversity/imitation_agreement_same_init": imitate_cfg["same"],
                            "diversity/imitation_agreement_across_inits": imitate_cfg["across"]})
            if "ensemble_gain" in ev:
                metrics.update({"diversity/ensemble_gain": ev["ensemble_gain"],
                                "diversity/imitation_ensemble_gain": imitate_cfg["ensemble_gain"]})
            if "plain" in ev:  # what the objective costs in plain accuracy
                metrics.update({"eval/plain_accuracy_median": float(np.median(ev["plain"])),
                                "eval/imitation_plain_accuracy_median": float(np.median(imitate_cfg["plain"]))})
            if "samples" in ev:
                sampled, base = np.asarray(ev["samples"]), np.asarray(imitate_cfg["samples"])
                metrics.update({"eval/sample_accuracy_median": float(np.median(sampled)),
                                "eval/imitation_sample_accuracy_median": float(np.median(base)),
                                "eval/sample_gain_vs_imitation": float((sampled - base).mean())})
            final = ev["final"]
            first = self.weight_generator.layout.tensors[0].key
            log.histogram(self.evaluations, f"generated/{first}", final[first])
            log.writer.add_image("generated/first_layer", first_layer_grid(final[first][0], self.task.input_shape),
                                 self.evaluations)
        log.scalars(self.evaluations, metrics)
        return metrics

    # -- the loop ------------------------------------------------------------------------------------------------------

    def checkpoint(self) -> None:
        self.weight_generator.save(self.run_dir, grpo_iterations=self.iteration, wall_s=self.elapsed,
                                   grpo_wall_s=self.prior_wall_s + self.elapsed)
        save_training_state(self.run_dir / "state.safetensors", self.policy, self.opt, self.rng,
                            {"iteration": self.iteration, "elapsed_s": self.elapsed})

    def resume(self) -> None:
        check_resume(self.cfg, self.run_dir)
        info = load_training_state(self.run_dir / "state.safetensors", self.policy, self.opt, self.rng)
        self.iteration, self.elapsed = info["iteration"], info["elapsed_s"]

    def train(self, until: Optional[int] = None) -> dict[str, float]:
        """Iterations up to `until` (default and at most `grpo.iterations`): a run measured at checkpoints calls this
        repeatedly, and its learning-rate schedule is the one run's (it follows `grpo.iterations`, never `until`)."""
        grpo_cfg = self.cfg.grpo
        stop = grpo_cfg.iterations if until is None else min(until, grpo_cfg.iterations)
        log = RunLogger(self.run_dir, self.cfg, purge_step=self.evaluations + 1 if self.iteration else None)
        own_pool = self.pool is None  # a pool handed in (tests, notebooks) stays open for its owner
        if own_pool:
            self.pool = RolloutPool(self.cfg, gpus_per_worker=worker_gpus(self.cfg))
        metrics: dict[str, float] = {}
        t0 = time.perf_counter() - self.elapsed
        bar = tqdm(total=grpo_cfg.iterations, initial=self.iteration, desc=f"grpo {self.run_dir.name}", disable=not self.progress)
        try:
            while self.iteration < stop:
                timing = {}
                t = time.perf_counter()
                rollouts = self.collect_rollouts()
                timing["collect_rollouts"] = time.perf_counter() - t
                t = time.perf_counter()
                self.score(rollouts)
                timing["score"] = time.perf_counter() - t
                self.compute_advantages(rollouts)
                t = time.perf_counter()
                losses = self.update_policy(rollouts)
                timing["update_policy"] = time.perf_counter() - t
                rollouts.timing = timing
                self.iteration += 1
                metrics = self.log_metrics(log, rollouts, losses)
                self.elapsed = time.perf_counter() - t0
                if self.iteration % grpo_cfg.save_every == 0 or self.iteration == stop:
                    self.checkpoint()
                bar.update(1)
                if "rollout/gain_vs_imitation" in metrics:
                    bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}",
                                    gain=f"{metrics['rollout/gain_vs_imitation'] * 100:+.2f}pts")
        finally:
            bar.close()
            log.close()
            if own_pool:
                self.pool.close()
                self.pool = None
        return metrics


RESUMABLE = ("iterations", "eval_every", "save_every", "gain_every")  # GRPO settings a resumed run may change


def check_resume(cfg: ExperimentConfig, run_dir: Path) -> None:
    """Before any work: a resumed run must be the run it continues (same seed and GRPO settings but its length; the
    env's objective is the reward), and unfinished."""
    path = run_dir / "state.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{path}: nothing to resume from")
    check_resumable(run_dir, cfg, {"grpo": RESUMABLE, "env": ()})
    done = training_state_info(path).get("iteration")
    if isinstance(done, int) and done >= cfg.grpo.iterations:
        raise ConfigError(f"{path}: the run finished its {done} iterations; nothing to resume (raise grpo.iterations "
                          f"in a new run with --name to train longer)")
DIVERSITY_INITS, DIVERSITY_SAMPLES = 8, 4  # held-out inits and nets sampled from each for the agreement measure


def main(args, cfg: ExperimentConfig) -> None:
    use_threads(cfg.threads, 1 + cfg.rollout.num_workers, "this driver and its scoring actors")
    init_policy = Path(args.init_policy or paths.imitation_policy(cfg.name))
    if init_policy.is_dir():  # a run folder names its policy
        init_policy = init_policy / "policy.safetensors"
    run_dir = paths.run_dir(args.name) if args.name else paths.grpo_run(cfg.name)
    if not init_policy.is_file():
        raise CheckpointError(f"{init_policy}: no imitation policy (run `python -m trainer.imitate` first, "
                              f"or pass --init-policy)")
    check_run_dir(run_dir, args.resume, args.overwrite)
    if args.resume:
        check_resume(cfg, run_dir)
    trainer = GRPOTrainer(cfg, init_policy, run_dir)  # loads and checks the policy and sizes; writes nothing
    with lock_run_dir(run_dir):  # one run per folder at a time
        if args.resume:
            trainer.resume()
        elif args.overwrite:
            clear_run_dir(run_dir)
        m = trainer.train()
    print(f"policy: {run_dir / 'policy.safetensors'}  reward_mean {m.get('rollout/reward_mean', float('nan')):.4f}  "
          f"held-out test {Objective.of(cfg.env).describe()} median {m.get('eval/accuracy_median', float('nan')):.4f}  "
          f"(python -m trainer.generate --policy {run_dir / 'policy.safetensors'})")


def cli(argv: list[str] | None = None) -> int:
    p = parser("Improve the imitation policy with GRPO (rewards: how the generated nets do on env.objective).")
    p.add_argument("--init-policy", help="policy to start from (default: artifacts/runs/<experiment>-imitate/)")
    add_run_args(p, "grpo")
    return run_main(main, p, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
