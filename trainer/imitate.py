"""`python -m trainer.imitate`: fit the denoising policy to ordered checkpoint pairs (W at t1 -> W at t2) of zoo runs.

Builds the zoo first if it is missing, logs to TensorBoard under artifacts/runs/<name>/, evaluates the mean path on
held-out init seeds, and saves policy.safetensors + policy.json; `--resume` continues bit-identically on CPU.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from envs.scoring import batch_size_of, batched_logits, weight_keys
from envs.tasks import Task, task_from_config
from policy.model import DenoisingPolicy
from policy.sampling import gaussian_log_prob, latent_kl, sample, walk
from policy.tokenizer import Layout, Tokenizer, fit_scales, transfer_scales
from trainer import paths
from trainer.algos import learning_rate
from trainer.checkpoints import load_training_state, save_training_state, training_state_info
from trainer.cli import add_run_args, parser, run_main, use_threads
from trainer.config import ConfigError, ExperimentConfig, ImitateConfig
from trainer.device import resolve_device
from trainer.runlog import RunLogger, check_resumable, check_run_dir, clear_run_dir, lock_run_dir
from trainer.pairs import ZooPairs
from trainer.generator import (WeightGenerator, bn_recompute_inputs, init_states, mean_path_accuracy,
                              reference_layout, sample_accuracy, snap_schedule, walk_grid)
from trainer.zoo import build_zoo, checkpoint_steps, total_steps, zoo_at_width, zoo_variants


def sample_pairs(t: torch.Tensor, sched_idx: list[int], batch: int, schedule_frac: float,
                 gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (run, i, j), each (batch,), with i < j: a `schedule_frac` share are schedule transitions, the rest any
    ordered pair (short and long jumps alike)."""
    runs, n = t.shape
    r = torch.randint(runs, (batch,), generator=gen)
    i = torch.randint(n - 1, (batch,), generator=gen)
    j = i + 1 + (torch.rand(batch, generator=gen) * (n - 1 - i)).long()
    k = torch.randint(len(sched_idx) - 1, (batch,), generator=gen)
    on_schedule = torch.rand(batch, generator=gen) < schedule_frac
    s = torch.tensor(sched_idx)
    i = torch.where(on_schedule, s[k], i)
    j = torch.where(on_schedule, s[k + 1], j)
    return r, i, j


def line_points(wd: "WidthData", batch: int, gen: torch.Generator) -> tuple[dict, dict, torch.Tensor]:
    """A flow policy's imitation data: for `batch` random runs and positions s ~ U[0, 1), the point
    (1 - s) W_0 + s W_1 on the straight line from the run's init to its final weights, and those final weights.
    Returns (points, finals, s)."""
    r = torch.randint(wd.runs, (batch,), generator=gen)
    s = torch.rand(batch, generator=gen)
    points, finals = {}, {}
    for k, v in wd.data.items():
        w0, w1 = v[r, 0], v[r, -1]
        at = s.to(v.device).view(-1, *[1] * (w0.dim() - 1))
        points[k], finals[k] = (1 - at) * w0 + at * w1, w1
    return points, finals, s.to(next(iter(wd.data.values())).device)


@torch.no_grad()
def walk_runs(policy: DenoisingPolicy, data: dict, sched_idx: list[int], grid: list[float],
              chunk: int = 32) -> dict[str, torch.Tensor]:
    """The policy's mean path from every run's init: key -> (runs, len(schedule), *token_shape)."""
    policy.eval()
    schedule = [grid[s] for s in sched_idx]
    runs = next(iter(data.values())).shape[0]
    parts = []
    for lo in range(0, runs, chunk):
        x0 = {k: v[lo:lo + chunk, sched_idx[0]] for k, v in data.items()}
        _, steps = walk(policy, x0, schedule, mean_only=True)
        parts.append({k: torch.stack([x0[k]] + [st.y[k] for st in steps[:-1]], dim=1) for k in data})
    return {k: torch.cat([p[k] for p in parts]) for k in data}


def walk_widths(policy: DenoisingPolicy, widths: list["WidthData"], sched_idx: list[int],
                grid: list[float]) -> list[dict[str, torch.Tensor]]:
    """`walk_runs` on every width of the zoo, each with its own layout."""
    layout, out = policy.layout, []
    for wd in widths:
        policy.layout = wd.layout
        out.append(walk_runs(policy, wd.data, sched_idx, grid))
    policy.layout = layout
    return out


def tensor_mse(mean: dict, target: dict) -> torch.Tensor:
    """MSE per tensor, averaged over tensors: every tensor weighs equally, whatever its size."""
    return torch.stack([((mean[k] - target[k]) ** 2).mean() for k in mean]).mean()


def imitation_loss(mean: dict, std: dict, target: dict) -> tuple[torch.Tensor, dict]:
    """Per-tensor MSE of the mean (`tensor_mse`) + Gaussian NLL fitting the std."""
    mse = tensor_mse(mean, target)
    nll = -gaussian_log_prob(target, {k: v.detach() for k, v in mean.items()}, std).mean()
    return mse + nll, {"losses/mse": mse.item(), "losses/nll": nll.item()}


def elbo_loss(policy: DenoisingPolicy, x1: dict, x2: dict, t1: torch.Tensor, t2: torch.Tensor, kl_weight: float,
              free_bits: float, gen: torch.Generator) -> tuple[torch.Tensor, dict, dict]:
    """A generative policy's negative ELBO on pairs, per weight dimension: the posterior infers each unit's latent from
    (W at t1, W at t2), a reparameterised draw of it is decoded, and the decoded Gaussian's NLL of W at t2 (per tensor,
    tensors weighing equally, as the regressor's MSE does) is charged with KL(posterior || prior) in nats per net,
    spread over the net's weight dimensions, with `free_bits` nats per latent dimension free; plus the regressor's MSE
    of the mean path. Returns (loss, logged parts, the decoded std)."""
    h, heads = policy.encode(x1, t1, t2)
    q_mean, q_std = policy.posterior(h, x2, t1, t2)
    p_mean, p_std = policy.latent(h)
    u = sample(q_mean, q_std, gen)
    mean, std = policy.decode(x1, policy.lift(h, u), heads)
    nll = -torch.stack([gaussian_log_prob({k: x2[k]}, {k: mean[k]}, {k: std[k]}) for k in mean]).mean()
    # The mean path (the decoder at the prior's mean) is held to the regressor's target, the average of SGD's
    # outcomes: it stays the mean path a regressor would give, and the samples spread around it.
    centre, _ = policy.decode(x1, policy.lift(h, p_mean), heads)
    mse_centre = tensor_mse(centre, x2)
    kl = latent_kl(q_mean, q_std, p_mean, p_std)  # (B, units, k)
    per_dim = kl.mean(dim=(0, 1))  # nats per latent dimension, averaged over units and the batch
    dims = sum(v[0].numel() for v in x2.values())
    charged = kl.shape[1] * per_dim.clamp(min=free_bits).sum() / dims
    mse = tensor_mse(mean, x2)
    parts = {"losses/nll": nll.item(), "losses/kl_nats_per_net": kl.sum(dim=(1, 2)).mean().item(),
             "losses/mse": mse.item(), "losses/mse_mean_path": mse_centre.item(),
             "losses/kl_active_dims": int((per_dim > free_bits).sum())}
    return nll + kl_weight * charged + mse_centre, parts, std


def tensor_norm(v: dict) -> torch.Tensor:
    """Per net, the Euclidean norm that weighs every tensor equally (the root of the sum over tensors of each one's
    mean square, as `tensor_mse` weighs them): (B,)."""
    return torch.stack([x.flatten(1).pow(2).mean(1) for x in v.values()]).sum(0).clamp(min=1e-12).sqrt()


def energy_loss(policy: DenoisingPolicy, x1: dict, x2: dict, t1: torch.Tensor, t2: torch.Tensor,
                gen: torch.Generator) -> tuple[torch.Tensor, dict, dict]:
    """A generative policy's energy score on pairs (Gneiting & Raftery 2007; engression, Shen & Meinshausen 2023):
    two independent draws A, B of the unit latent from the prior, decoded, and E|A - W2| - |A - B| / 2 in
    `tensor_norm`. A strictly proper score of the whole net's conditional distribution: it is lowest when the draws
    are distributed as SGD's outcomes given W at t1, and it needs no posterior, so nothing can collapse. Plus the
    regressor's loss at the prior's mean (the mean path, and the std head for iid sampling). Returns (loss, logged
    parts, the std)."""
    h, heads = policy.encode(x1, t1, t2)
    p_mean, p_std = policy.latent(h)
    a, b = (policy.decode(x1, policy.lift(h, sample(p_mean, p_std, gen)), heads)[0] for _ in range(2))
    diff = lambda u, v: {k: u[k] - v[k] for k in u}  # noqa: E731
    fit = (tensor_norm(diff(a, x2)) + tensor_norm(diff(b, x2))) / 2
    spread = tensor_norm(diff(a, b))
    centre, std = policy.decode(x1, policy.lift(h, p_mean), heads)
    reg, parts = imitation_loss(centre, std, x2)
    score = (fit - spread / 2).mean()
    parts.update({"losses/energy": score.item(), "losses/energy_fit": fit.mean().item(),
                  "losses/energy_spread": spread.mean().item()})
    return score + reg, parts, std


# Seeds of the fresh inits the task loss walks from: far above the zoo, held-out and GRPO seed ranges.
TASK_SEED_BASE = 10**9


def task_loss(weight_generator: WeightGenerator, template: torch.nn.Module, task: Task, split: str, inits: int, examples: int,
              gen: torch.Generator) -> torch.Tensor:
    """Cross-entropy, on a minibatch of `split`, of the nets the policy's mean path makes from `inits` fresh inits,
    differentiable through every step of the walk (the reward-gradient route: DRaFT, Clark et al. 2023). The test
    split stays for reporting."""
    seeds = (TASK_SEED_BASE + torch.randint(10**9, (inits,), generator=gen)).tolist()
    return walk_loss(weight_generator, template, task, split, init_states(weight_generator.cfg, task, seeds), examples,
                     gen, every_step=weight_generator.cfg.imitate.task_nets == "every_step")


def walk_loss(weight_generator: WeightGenerator, template: torch.nn.Module, task: Task, split: str,
              init: dict[str, torch.Tensor], examples: int, gen: torch.Generator,
              every_step: bool = False) -> torch.Tensor:
    """Cross-entropy, on `examples` examples of `split` drawn from `gen`, of the nets the policy writes from the
    batched inits `init` (key -> (B, *shape)), differentiable through every step of the walk. `every_step`: the mean
    over the nets after each step of the walk, on the same examples."""
    # A generative policy is trained on its samples (reparameterised: the latent draws carry the gradient), which are
    # what it generates; a regressor on its mean path.
    final, steps = weight_generator.generate(init, mean_only=not weight_generator.policy.cfg.generative, generator=gen,
                                             grad=True)
    if every_step:
        frozen = {k: v.to(weight_generator.device) for k, v in init.items()}
        nets = [weight_generator.tokenizer.decode(s.y, frozen) for s in steps[:-1]] + [final]
        final = {k: torch.cat([n[k] for n in nets]) for k in final}
    inits = batch_size_of(final)
    # A net with BatchNorm runs in train mode here, normalising by its batch's statistics (what its generated
    # statistics are recomputed from, generate.bn_recompute_batches): torch's batch norm has no gradient for running
    # statistics, and generated ones need not be positive yet. They are updated on copies and learn from imitation.
    stats = {t.key for t in weight_generator.layout.tensors if t.kind in ("bn_mean", "bn_var")}
    params = {k: final[k].detach().clone() if k in stats else final[k] for k in weight_keys(template.state_dict())}
    params.update({k: template.state_dict()[k].repeat(inits) for k in weight_generator.layout.frozen})  # step counters, on copies
    data = task.split(split).to(weight_generator.device)
    idx = torch.randint(len(data), (examples,), generator=gen)
    template.train(bool(stats))
    logits = batched_logits(template, params, data.x[idx])  # (inits, examples, classes)
    template.eval()
    return F.cross_entropy(logits.flatten(0, 1), data.y[idx].repeat(inits))


@dataclass
class WidthData:
    """One width of the zoo as imitation data: its layout, and its runs' checkpoints as token blocks."""

    layout: Layout
    data: dict[str, torch.Tensor]  # key -> (runs, checkpoints, *token_shape)
    t: torch.Tensor  # (runs, checkpoints)
    runs: int


def zoo_data(cfg: ExperimentConfig, task: Task) -> tuple[Tokenizer, list[WidthData], list[float]]:
    """The tokenizer (scales fitted on the zoo at reference.widths) and every width of the zoo as token blocks (the
    other widths scaled by generate.width_scales), with the zoo's common progress grid."""
    imitate_cfg = cfg.imitate
    base = zoo_at_width(cfg)
    assert base is not None  # checked by train()
    widths, tok, grid = [], None, None
    for v in [base] + [v for v in zoo_variants(cfg) if v.reference.widths != base.reference.widths]:
        template, layout = reference_layout(v, task)
        pairs = ZooPairs(v.zoo_dir, range(imitate_cfg.train_runs or v.zoo.runs), expected=template.state_dict())
        if tok is None:
            tok, grid = Tokenizer(layout, fit_scales({k: pairs.weights[k] for k in layout.shapes})), pairs.grid
        elif pairs.grid != grid:
            raise ConfigError(f"{v.zoo_dir}: checkpoints at other progress values than {base.zoo_dir}'s")
        vtok = Tokenizer(layout, transfer_scales(tok.scales, tok.layout, layout, cfg.generate.width_scales))
        r, c = pairs.t.shape
        data = {k: x.reshape(r, c, *x.shape[1:]) for k, x in vtok.encode(
            {k: pairs.weights[k].flatten(0, 1) for k in layout.shapes}).items()}
        widths.append(WidthData(layout, data, pairs.t, len(pairs.runs)))
    return tok, widths, grid


def pair_loss(policy: DenoisingPolicy, wd: WidthData, walked: Optional[dict], sched_idx: list[int],
              sched_pos: torch.Tensor, imitate_cfg: ImitateConfig, gen: torch.Generator,
              device: torch.device) -> tuple[torch.Tensor, dict, dict]:
    """The imitation loss on a batch of ordered checkpoint pairs of one width (`sample_pairs`), some inputs at schedule
    points replaced by the policy's own walked states (`walked`, or None): the regressor's `imitation_loss`, or a
    generative policy's `elbo_loss`. Returns (loss, logged parts, the step's std)."""
    ri, i, j = sample_pairs(wd.t, sched_idx, imitate_cfg.batch_size, imitate_cfg.schedule_frac, gen)
    x1 = {k: v[ri, i] for k, v in wd.data.items()}
    if walked is not None:  # some inputs at schedule points become the policy's own walked states
        pos = sched_pos[i]
        use = ((torch.rand(len(ri), generator=gen) < imitate_cfg.walked_frac) & (pos >= 1)).to(device)
        for k, v in walked.items():
            x1[k] = torch.where(use.view(-1, *[1] * (v.dim() - 2)), v[ri, pos.clamp(min=0)], x1[k])
    x2 = {k: v[ri, j] for k, v in wd.data.items()}
    t1, t2 = wd.t[ri, i].to(device), wd.t[ri, j].to(device)
    if policy.cfg.generative and imitate_cfg.generative_loss == "energy":
        return energy_loss(policy, x1, x2, t1, t2, gen)
    if policy.cfg.generative:
        return elbo_loss(policy, x1, x2, t1, t2, imitate_cfg.kl_weight, imitate_cfg.free_bits, gen)
    mean, std = policy(x1, t1, t2)
    loss, parts = imitation_loss(mean, std, x2)
    return loss, parts, std


def check_sizes(cfg: ExperimentConfig, layout: Layout) -> None:
    """Allocate, and free at once, what training will hold: the policy's parameters with their gradients and Adam's two
    moments, both sides of a batch of pairs, and the nets the task loss walks. A size the machine cannot hold
    (policy.dim, imitate.batch_size, imitate.task_inits) is then the same one-line out-of-memory error as later, but
    before a zoo is trained for it."""
    with torch.device("meta"):  # counts the parameters without allocating them
        params = sum(p.numel() for p in DenoisingPolicy(cfg.policy, layout).parameters())
    tokens = sum(math.prod(shape) for shape in layout.shapes.values())
    floats = 4 * params + (2 * cfg.imitate.batch_size + cfg.imitate.task_inits) * tokens
    if floats >= 2**61:  # torch.empty cannot even be asked (its size is a signed 64-bit count of bytes)
        raise MemoryError(f"can't allocate memory: you tried to allocate {4 * floats} bytes")
    torch.empty(floats, dtype=torch.float32)


def train(cfg: ExperimentConfig, name: str, resume: bool = False, progress: bool = True,
          overwrite: bool = False) -> Path:
    if cfg.policy.generative and cfg.imitate.generative_loss == "energy":  # the energy score needs no posterior
        cfg = replace(cfg, policy=replace(cfg.policy, posterior=False))
    imitate_cfg = cfg.imitate
    run_dir = paths.run_dir(name)
    state_path = run_dir / "state.safetensors"
    check_run_dir(run_dir, resume, overwrite)
    if resume:  # before a zoo is built for it: the run to continue must be this one, and unfinished
        check_resumable(run_dir, cfg, RESUMABLE)
        done = training_state_info(state_path).get("step")
        if isinstance(done, int) and done >= imitate_cfg.steps:
            raise ConfigError(f"{state_path}: the run finished its {done} steps; nothing to resume (train longer in "
                              f"a new run with --name and a larger imitate.steps)")
    if not any(v.reference.widths == cfg.reference.widths for v in zoo_variants(cfg)):
        raise ConfigError(f"config key reference.widths: {cfg.reference.widths} is not one of zoo.widths "
                          f"{cfg.zoo.widths}: the policy's scales are fitted on the zoo at reference.widths")
    task = task_from_config(cfg.task)
    template, layout = reference_layout(cfg, task)
    check_sizes(cfg, layout)
    # The zoo's checkpoint grid follows from its recipe: a schedule that collapses on it fails before the zoo is built.
    total = total_steps(cfg, task)
    zoo_grid = [s / total for s in checkpoint_steps(total, cfg.zoo.checkpoints)]
    snap_schedule(cfg.generate.schedule, walk_grid(cfg.policy, zoo_grid))
    zoo_dir = build_zoo(cfg, progress=progress)
    device = resolve_device(cfg.device)
    template.to(device).eval()  # scored as generated nets are (the task loss switches BN nets to train mode)
    tok, widths, grid = zoo_data(cfg, task)
    for wd in widths:
        wd.data = {k: v.to(device) for k, v in wd.data.items()}
    c = len(grid)
    schedule = snap_schedule(cfg.generate.schedule, walk_grid(cfg.policy, grid))
    sched_idx = [grid.index(s) for s in schedule] if not cfg.policy.flow else [0, c - 1]  # a flow learns from lines

    torch.manual_seed(cfg.seed)
    # initialised on the CPU: the same init on every device
    policy = DenoisingPolicy(cfg.policy, layout, tok.centres()).to(device)
    opt = torch.optim.AdamW(policy.parameters(), lr=imitate_cfg.lr, weight_decay=imitate_cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    # the held-out evaluation sees the nets as `generate` makes them: BN statistics recomputed if so configured
    weight_generator = WeightGenerator(cfg, policy, tok, schedule, walk_grid(cfg.policy, grid),
                                       bn_recompute_inputs(cfg, task))
    eval_seeds = list(range(imitate_cfg.eval_seed_start, imitate_cfg.eval_seed_start + imitate_cfg.eval_seeds))
    start, elapsed = 0, 0.0
    lock = lock_run_dir(run_dir)  # released in the `finally` below; taken before --overwrite removes anything
    try:
        if resume:
            info = load_training_state(state_path, policy, opt, {"pairs": gen})
            start, elapsed = info["step"], info["elapsed_s"]
        elif overwrite:
            clear_run_dir(run_dir)
    except BaseException:
        lock.close()
        raise
    log = RunLogger(run_dir, cfg, purge_step=start + 1 if start else None)
    walked = walk_widths(policy, widths, sched_idx, grid) if imitate_cfg.walked_frac > 0 else None
    sched_pos = torch.full((c,), -1, dtype=torch.long)
    sched_pos[torch.tensor(sched_idx)] = torch.arange(len(sched_idx))
    t0 = time.perf_counter() - elapsed
    last_eval = None
    bar = tqdm(range(start, imitate_cfg.steps), initial=start, total=imitate_cfg.steps, desc=f"imitate {name}", disable=not progress)
    try:
        for step in bar:
            policy.train()
            # A batch holds one width (token blocks of different widths do not stack); a single-width zoo draws
            # nothing here, so its runs stay bit-identical to those made before mixed zoos existed.
            w = int(torch.randint(len(widths), (1,), generator=gen)) if len(widths) > 1 else 0
            wd = widths[w]
            policy.layout = wd.layout  # the policy's only width-dependent state: group sizes, read from its layout
            if policy.cfg.flow:  # points on the lines from inits to finals, each with its line's end as the target
                x1, x2, t1 = line_points(wd, imitate_cfg.batch_size, gen)
                mean, std = policy(x1, t1, torch.ones_like(t1))
                loss, parts = imitation_loss(mean, std, x2)
            else:
                loss, parts, std = pair_loss(policy, wd, walked[w] if walked is not None else None, sched_idx,
                                             sched_pos, imitate_cfg, gen, device)
            policy.layout = layout
            if imitate_cfg.task_inits > 0:
                ce = task_loss(weight_generator, template, task, imitate_cfg.task_split, imitate_cfg.task_inits, imitate_cfg.task_examples, gen)
                loss = loss + imitate_cfg.task_weight * ce
                parts["losses/task"] = ce.item()
            for group in opt.param_groups:
                group["lr"] = learning_rate(step, imitate_cfg.steps, imitate_cfg.lr, imitate_cfg.cosine)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), imitate_cfg.grad_clip)
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):  # nothing non-finite reaches a saved policy
                saved = step - step % imitate_cfg.save_every
                raise ConfigError(f"imitation diverged at step {step + 1} (loss {loss.item():.3g}, gradient norm "
                                  f"{grad_norm.item():.3g}): lower imitate.lr ({imitate_cfg.lr}); "
                                  + (f"the last saved state is step {saved}'s" if saved else "nothing was saved"))
            opt.step()
            done = step + 1
            if done % imitate_cfg.log_every == 0 or done == imitate_cfg.steps:
                log.scalars(done, {"losses/imitation": loss.item(), **parts, "losses/grad_norm": grad_norm.item(),
                                   "charts/lr": opt.param_groups[0]["lr"],
                                   "policy/std_mean": torch.stack([s.mean() for s in std.values()]).mean().item()})
                bar.set_postfix(loss=f"{loss.item():.4f}", eval=f"{last_eval:.3f}" if last_eval is not None else "-")
            if done % imitate_cfg.eval_every == 0 or done == imitate_cfg.steps:
                policy.eval()
                accs, _ = mean_path_accuracy(weight_generator, task, eval_seeds)
                last_eval = float(np.mean(accs))
                log.scalars(done, {"eval/accuracy_mean": last_eval, "eval/accuracy_median": float(np.median(accs))})
                if policy.cfg.generative:  # samples, from a fixed stream; `generate` writes the better of the two
                    sampled = sample_accuracy(weight_generator, task, eval_seeds, torch.Generator().manual_seed(cfg.seed))
                    log.scalars(done, {"eval/sample_accuracy_mean": float(np.mean(sampled)),
                                       "eval/sample_accuracy_median": float(np.median(sampled))})
                    weight_generator.default_output = "samples" if np.median(sampled) >= np.median(accs) else "mean"
                    last_eval = float(np.mean(sampled if weight_generator.default_output == "samples" else accs))
            if done % imitate_cfg.save_every == 0 or done == imitate_cfg.steps:
                wall = time.perf_counter() - t0
                weight_generator.save(run_dir, trained_steps=done, wall_s=wall, zoo=str(zoo_dir),
                        zoo_runs=sum(wd.runs for wd in widths), eval_seeds=eval_seeds, eval_test_accuracy_mean=last_eval)
                log.flush()  # the curves up to `done` are on disk before the state a resume starts from
                save_training_state(state_path, policy, opt, {"pairs": gen}, {"step": done, "elapsed_s": wall})
                if walked is not None:  # refreshed from the saved policy, so a resumed run sees the same inputs
                    walked = walk_widths(policy, widths, sched_idx, grid)
    finally:  # also on Ctrl-C or SIGTERM: the curves logged so far reach the disk
        log.close()
        lock.close()
    return run_dir


# What a resumed imitation may change (section -> keys): how long it trains and how often it logs, evaluates and saves,
# and where the zoo and the data live. Every other setting of these sections, and the seed, must be the run's own.
RESUMABLE = {"imitate": ("steps", "eval_every", "save_every", "log_every"), "policy": (), "generate": (),
             "zoo": ("out",), "task": ("root", "download"), "reference": ()}


def main(args, cfg: ExperimentConfig) -> None:
    use_threads(cfg.threads, 1, "training runs in this process alone; a zoo it builds first has its own")
    name = args.name or paths.imitation_run(cfg.name).name
    run_dir = train(cfg, name, resume=args.resume, overwrite=args.overwrite)
    print(f"policy: {run_dir / 'policy.safetensors'}  (TensorBoard: tensorboard --logdir {run_dir.parent})")


def cli(argv: list[str] | None = None) -> int:
    p = parser("Train the denoising policy by imitating zoo checkpoint pairs.")
    add_run_args(p, "imitate")
    return run_main(main, p, argv)


if __name__ == "__main__":
    raise SystemExit(cli())
