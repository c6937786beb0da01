"""`python -m trainer.grpo`: improve the imitation policy with GRPO, rewarded by the accuracy of the nets it generates.

Each iteration is a short chain of named steps: collect_rollouts -> score -> compute_advantages -> update_policy ->
log_metrics (-> checkpoint). Rewards are reward-split accuracies from the Ray rollout pool; the policy stays tied to
the frozen imitation policy by a closed-form KL. `--resume` continues so that logged numbers match an unstopped run.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torchvision
from tqdm import tqdm

from envs.tasks import task_from_config
from policy.sampling import Step, gaussian_kl, gaussian_log_prob
from rollout.pool import RolloutPool
from trainer.algos import clipped_policy_loss, compute_grpo_advantages
from trainer.checkpoints import CheckpointError, load_training_state, save_training_state
from trainer.cli import parser, run_main, use_threads
from trainer.config import ExperimentConfig
from trainer.pipeline import WeightGenerator, init_states, mean_path_accuracy
from trainer.runlog import RunLogger, check_run_dir, clear_run_dir


@dataclass
class Rollouts:
    """One iteration's trajectories: B inits x G samples, flattened to N = B * G in group-major order."""

    steps: list[Step]  # K steps: (N, ...) token blocks and old log-probs (N,); (B, ...) inputs where a group shares them
    final: dict[str, torch.Tensor]  # generated state dicts, (N, *shape)
    seeds: list[int]  # the B init seeds
    rewards: Optional[torch.Tensor] = None  # (B, G), what `grpo.reward` says
    accuracy: Optional[torch.Tensor] = None  # (B, G), reward-split accuracy
    advantages: Optional[torch.Tensor] = None  # (B, G)
    zero_spread: Optional[torch.Tensor] = None  # (B,)
    timing: dict[str, float] = field(default_factory=dict)


class GRPOTrainer:
    def __init__(self, cfg: ExperimentConfig, init_policy: Path, run_dir: Path, progress: bool = True):
        self.wg = WeightGenerator.load(init_policy, cfg=cfg)
        self.cfg: ExperimentConfig = self.wg.cfg
        gc = self.cfg.grpo
        self.run_dir, self.progress = run_dir, progress
        self.task = task_from_config(self.cfg.task)
        self.policy = self.wg.policy
        self.policy.cfg = dataclasses.replace(self.policy.cfg, temperature=gc.temperature)
        self.reference = copy.deepcopy(self.policy).eval().requires_grad_(False)  # the frozen imitation policy
        self.opt = torch.optim.AdamW(self.policy.parameters(), lr=gc.lr, weight_decay=0.0)
        self.rng = {"sample": torch.Generator().manual_seed(self.cfg.seed),
                    "minibatch": torch.Generator().manual_seed(self.cfg.seed + 1)}
        im = self.cfg.imitate
        self.eval_seeds = list(range(im.eval_seed_start, im.eval_seed_start + im.eval_seeds))
        self.iteration, self.elapsed = 0, 0.0
        self.pool: Optional[RolloutPool] = None

    # -- the named steps -----------------------------------------------------------------------------------------------

    def collect_rollouts(self) -> Rollouts:
        """B fresh inits (new seeds every iteration, never the held-out or zoo seeds), G sampled trajectories each."""
        gc = self.cfg.grpo
        first = gc.seed_start + self.iteration * gc.inits_per_iter
        seeds = list(range(first, first + gc.inits_per_iter))
        init = init_states(self.cfg, self.task, seeds)
        self.policy.eval()
        final, steps = self.wg.rollout(init, gc.group_size, self.rng["sample"], gc.antithetic, gc.explore)
        return Rollouts(steps, final, seeds)

    def score(self, ro: Rollouts) -> None:
        gc = self.cfg.grpo
        scores = self.pool.score(ro.final)
        ro.accuracy = scores.accuracy.float().view(gc.inits_per_iter, gc.group_size)
        ro.rewards = ro.accuracy if gc.reward == "accuracy" else scores.neg_loss().float().view_as(ro.accuracy)

    def compute_advantages(self, ro: Rollouts) -> None:
        ro.advantages, ro.zero_spread = compute_grpo_advantages(ro.rewards, self.cfg.grpo.scale_by_std)

    def update_policy(self, ro: Rollouts) -> dict[str, float]:
        """E epochs over minibatches of trajectories: clipped ratio objective per sampled step + beta * KL to the
        reference, averaged over the K steps (a mean-path step, see `grpo.explore`, adds its KL on one row per group)."""
        gc = self.cfg.grpo
        b, g = gc.inits_per_iter, gc.group_size
        adv = ro.advantages.flatten()
        keep = torch.arange(len(adv))
        if gc.drop_zero_spread:
            keep = keep[~ro.zero_spread.repeat_interleave(g)]
        n_sampled = sum(step.sampled for step in ro.steps)
        stats: dict[str, list[float]] = {k: [] for k in ("policy", "kl", "clipfrac", "approx_kl", "grad_norm")}
        stds: list[float] = []  # the sampled steps' std (tempered): does GRPO shrink its exploration?
        self.policy.train()
        first = True
        for _ in range(gc.epochs):
            order = keep[torch.randperm(len(keep), generator=self.rng["minibatch"])]
            for mb in order.split(gc.minibatch_size):
                pg_loss, kl_loss = 0.0, 0.0
                # Where a group's trajectories share a step's input, the policy runs once per group.
                groups, row_of = torch.unique(mb // g, return_inverse=True)
                for step in ro.steps:
                    shared = len(next(iter(step.x.values()))) == b  # B rows: one input per group
                    # unsampled steps add their KL only, on one trajectory per group
                    rows = groups if shared else mb if step.sampled else groups * g
                    x = {k: v[rows] for k, v in step.x.items()}
                    t1, t2 = torch.full((len(rows),), step.t1), torch.full((len(rows),), step.t2)
                    mean, std = self.policy(x, t1, t2)
                    with torch.no_grad():
                        ref_mean, ref_std = self.reference(x, t1, t2)
                    if step.sampled and shared:
                        mean, std, ref_mean, ref_std = ({k: v[row_of] for k, v in d.items()}
                                                        for d in (mean, std, ref_mean, ref_std))
                    kl_loss = kl_loss + gaussian_kl(mean, std, ref_mean, ref_std).mean() / len(ro.steps)
                    if not step.sampled:
                        continue
                    log_prob = gaussian_log_prob({k: v[mb] for k, v in step.y.items()}, mean, std)
                    if first:  # nothing has changed the policy since these steps were sampled
                        ratio = torch.exp(log_prob - step.log_prob[mb])
                        assert torch.allclose(ratio, torch.ones_like(ratio), atol=1e-4), ratio
                    loss, s = clipped_policy_loss(log_prob, step.log_prob[mb], adv[mb], gc.clip_range)
                    pg_loss = pg_loss + loss / n_sampled
                    stds.append(torch.stack([v.mean() for v in std.values()]).mean().item())
                    stats["clipfrac"].append(s["clipfrac"].item())
                    stats["approx_kl"].append(s["approx_kl"].item())
                first = False
                total = pg_loss + gc.beta_kl * kl_loss
                self.opt.zero_grad(set_to_none=True)
                total.backward()
                stats["grad_norm"].append(torch.nn.utils.clip_grad_norm_(self.policy.parameters(), gc.grad_clip).item())
                self.opt.step()
                stats["policy"].append(pg_loss.item())
                stats["kl"].append(kl_loss.item())
        return {**{f"losses/{k}": float(np.mean(v)) if v else 0.0 for k, v in stats.items()},
                "policy/std_mean": float(np.mean(stds)) if stds else 0.0}

    def log_metrics(self, log: RunLogger, ro: Rollouts, losses: dict[str, float]) -> dict[str, float]:
        r = ro.rewards
        n = r.numel()
        metrics = {"rollout/reward_mean": r.mean().item(), "rollout/reward_std": r.std().item(),
                   "rollout/reward_max": r.max().item(), "rollout/reward_min": r.min().item(),
                   "rollout/frac_zero_std": ro.zero_spread.float().mean().item(),
                   "rollout/accuracy_mean": ro.accuracy.mean().item(), **losses,
                   "perf/evals_per_s": n / max(ro.timing["score"], 1e-9),
                   **{f"timing_s/{k}": v for k, v in ro.timing.items()}}
        it = self.iteration
        gc = self.cfg.grpo
        if it % gc.eval_every == 0 or it == gc.iterations:
            self.policy.eval()
            accs, final = mean_path_accuracy(self.wg, self.task, self.eval_seeds)
            metrics.update({"eval/accuracy_mean": float(np.mean(accs)), "eval/accuracy_median": float(np.median(accs))})
            first = self.wg.layout.tensors[0].key
            log.histogram(it, f"generated/{first}", final[first])
            log.writer.add_image("generated/first_layer", first_layer_grid(final[first][0], self.task.input_shape), it)
        log.scalars(it, metrics)
        return metrics

    # -- the loop ------------------------------------------------------------------------------------------------------

    def checkpoint(self) -> None:
        self.wg.save(self.run_dir, grpo_iterations=self.iteration, wall_s=self.elapsed)
        save_training_state(self.run_dir / "state.safetensors", self.policy, self.opt, self.rng,
                            {"iteration": self.iteration, "elapsed_s": self.elapsed})

    def resume(self) -> None:
        path = self.run_dir / "state.safetensors"
        if not path.is_file():
            raise CheckpointError(f"{path}: nothing to resume from")
        info = load_training_state(path, self.policy, self.opt, self.rng)
        self.iteration, self.elapsed = info["iteration"], info["elapsed_s"]

    def train(self) -> dict[str, float]:
        gc = self.cfg.grpo
        log = RunLogger(self.run_dir, self.cfg, purge_step=self.iteration + 1 if self.iteration else None)
        own_pool = self.pool is None  # a pool handed in (tests, notebooks) stays open for its owner
        if own_pool:
            self.pool = RolloutPool(self.cfg)
        metrics: dict[str, float] = {}
        t0 = time.perf_counter() - self.elapsed
        bar = tqdm(total=gc.iterations, initial=self.iteration, desc=f"grpo {self.run_dir.name}", disable=not self.progress)
        try:
            while self.iteration < gc.iterations:
                timing = {}
                t = time.perf_counter()
                ro = self.collect_rollouts()
                timing["collect_rollouts"] = time.perf_counter() - t
                t = time.perf_counter()
                self.score(ro)
                timing["score"] = time.perf_counter() - t
                self.compute_advantages(ro)
                t = time.perf_counter()
                losses = self.update_policy(ro)
                timing["update_policy"] = time.perf_counter() - t
                ro.timing = timing
                self.iteration += 1
                metrics = self.log_metrics(log, ro, losses)
                self.elapsed = time.perf_counter() - t0
                if self.iteration % gc.save_every == 0 or self.iteration == gc.iterations:
                    self.checkpoint()
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['rollout/reward_mean']:.3f}")
        finally:
            bar.close()
            log.close()
            if own_pool:
                self.pool.close()
                self.pool = None
        return metrics


def first_layer_grid(weight: torch.Tensor, input_shape: tuple[int, ...]) -> torch.Tensor:
    """First-layer weights as a grid of images: MLP rows reshaped to the input image, conv kernels as they are."""
    w = weight.detach().float()
    if w.dim() == 2 and w.shape[1] == int(np.prod(input_shape)):
        w = w.view(-1, *input_shape)
    w = w[:, :3] if w.shape[1] in (1, 3) else w[:, :1]
    w = (w - w.min()) / (w.max() - w.min() + 1e-12)
    return torchvision.utils.make_grid(w, nrow=8, padding=1, pad_value=1.0)


def main(args, cfg: ExperimentConfig) -> None:
    use_threads(cfg.threads, 1 + cfg.rollout.num_workers, "this driver and its scoring actors")
    init_policy = Path(args.init_policy or f"artifacts/runs/{cfg.name}-imitate/policy.safetensors")
    run_dir = Path("artifacts/runs") / (args.name or f"{cfg.name}-grpo")
    if not init_policy.is_file():
        raise CheckpointError(f"{init_policy}: no imitation policy (run `python -m trainer.imitate` first, "
                              f"or pass --init-policy)")
    check_run_dir(run_dir, args.resume, args.overwrite)
    trainer = GRPOTrainer(cfg, init_policy, run_dir)
    if args.resume:
        trainer.resume()
    elif args.overwrite:
        clear_run_dir(run_dir)
    m = trainer.train()
    print(f"policy: {run_dir / 'policy.safetensors'}  reward_mean {m.get('rollout/reward_mean', float('nan')):.4f}  "
          f"held-out test accuracy median {m.get('eval/accuracy_median', float('nan')):.4f}  "
          f"(python -m trainer.generate --policy {run_dir / 'policy.safetensors'})")


def cli(argv: list[str] | None = None) -> int:
    p = parser("Improve the imitation policy with GRPO (rewards: reward-split accuracy of generated nets).")
    p.add_argument("--init-policy", help="policy to start from (default: artifacts/runs/<experiment>-imitate/)")
    p.add_argument("--name", help="run name under artifacts/runs/ (default: <experiment>-grpo)")
    p.add_argument("--resume", action="store_true", help="continue from artifacts/runs/<name>/state.safetensors")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run of this name (its TensorBoard events, policy and state)")
    return run_main(main, p, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
