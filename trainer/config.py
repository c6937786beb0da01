"""Typed experiment configs: one YAML per experiment in `configs/`, loaded into dataclasses.

Every entry point takes `--config PATH` (default: the offline digits experiment) and repeatable
`--set section.key=value`. Unknown keys, wrong types and unknown registry names are one-line `ConfigError`s.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from policy.model import PolicyConfig
from policy.tokenizer import WidthScales
from trainer import paths
from trainer.device import check_device
from envs.spec import (DEFAULT_SCHEDULE, ConfigError, EnvConfig, ReferenceConfig, TaskConfig, check_schedule, from_dict,
                       read_yaml)

__all__ = ["ConfigError", "ExperimentConfig", "load_config", "config_from_dict", "add_config_args"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
DEFAULT_CONFIG = "configs/digits_mlp.yaml"

# Ray actors need seconds to start and load their task; a shorter bound on every ray.get fails every run.
MIN_TIMEOUT_S = 10.0

# A field's valid values live on the field (envs/spec.py says how): `Literal` types for names, metadata for ranges.
# Rules that tie two fields together follow in `config_from_dict`.


@dataclass
class ZooConfig:
    runs: int = field(default=64, metadata={"min": 1})
    """training runs (distinct seeds) in the zoo"""
    seed: int = field(default=1000, metadata={"min": 0})
    """run i trains from seed `seed + i`; evaluation seeds lie outside [seed, seed + runs)"""
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = field(default=0.1, metadata={"gt": 0})
    momentum: float = field(default=0.9, metadata={"min": 0, "max": 1})
    weight_decay: float = field(default=0.0, metadata={"min": 0})
    batch_size: int = field(default=64, metadata={"min": 1})
    epochs: int = field(default=4, metadata={"min": 1})
    cosine: bool = True
    """cosine learning-rate decay to 0 over the run (else constant)"""
    checkpoints: int = field(default=10, metadata={"min": 2, "why": "the init and the last step"})
    """checkpoints per run at log-spaced steps, always including step 0 (the init) and the last step"""
    data_seed: Optional[int] = field(default=None, metadata={"min": 0})
    """null: each run shuffles its minibatches with its own seed; an int: one order shared by all runs, so a run's
    weights depend on its init alone"""
    out: Optional[str] = None
    """zoo folder; default artifacts/checkpoints/<experiment>"""
    widths: list[list[int]] = field(default_factory=list, metadata={"min": 1})
    """[]: every run at reference.widths. A list of reference widths (e.g. [[16], [64]]): a mixed-width zoo, `runs`
    runs at each (seeds seed .. seed + runs - 1 again), each width in its own sub-zoo <zoo>/w16, <zoo>/w64; imitation
    draws every batch from one width. reference.widths must be one of them when imitating (its scales are fitted)"""


@dataclass
class RolloutConfig:
    address: Optional[str] = None
    """None: a private local Ray instance; 'auto': join a running cluster; or 'host:port'"""
    num_workers: int = field(default=2, metadata={"min": 1})
    """Ray actors for scoring; concurrent Ray tasks for the zoo"""
    timeout_s: float = field(default=300.0, metadata={"min": MIN_TIMEOUT_S, "why": "scoring actors take seconds to start and load their task"})
    """bound on every Ray wait: a batch share, a zoo run, the scoring actors' start (scoring actors still unplaced
    after it, e.g. because other jobs hold the cluster's CPUs, fail in one line)"""
    chunk_size: int = field(default=16, metadata={"min": 1})
    """weight sets scored per vmap call (bounds memory)"""
    max_retries: int = field(default=3, metadata={"min": 0})
    """times a lost actor's share is re-run on a restarted actor before giving up"""
    gpus_per_worker: float = field(default=0.0, metadata={"min": 0})
    """GPUs each Ray worker (scoring actor, zoo run) asks for when the experiment's device is CUDA; fractional shares
    put several workers on one GPU (0.25: four). 0: workers run on the CPU. Ignored with device=cpu"""
    precision: Literal["fp32", "bf16"] = "fp32"
    """scoring arithmetic: "fp32", or "bf16" (autocast: matmuls in bfloat16, faster on GPUs; rewards may differ
    slightly from fp32)"""


@dataclass
class ImitateConfig:
    steps: int = field(default=1500, metadata={"min": 1})
    """optimizer steps on checkpoint pairs"""
    batch_size: int = field(default=16, metadata={"min": 1})
    lr: float = field(default=1e-3, metadata={"gt": 0})
    cosine: bool = True
    """linear warm-up over the first 5% of steps, then cosine decay to 0 (else constant)"""
    weight_decay: float = field(default=0.01, metadata={"min": 0})
    grad_clip: float = field(default=1.0, metadata={"gt": 0})
    schedule_frac: float = field(default=0.5, metadata={"min": 0, "max": 1})
    """fraction of pairs that are transitions of the generation schedule; the rest are any t1 < t2 of a run"""
    walked_frac: float = field(default=0.0, metadata={"min": 0, "max": 1})
    """fraction of pairs starting at a schedule point after the init whose input is the policy's own mean-path state
    from the run's init (refreshed at every save) instead of the zoo checkpoint: later steps learn to repair the
    errors of earlier ones"""
    task_inits: int = field(default=0, metadata={"min": 0})
    """fresh inits per step whose mean-path nets add their task cross-entropy to the loss, differentiated through the
    walk (0: imitation of the zoo alone)"""
    task_examples: int = field(default=256, metadata={"min": 1})
    """task examples per step for that loss"""
    task_split: Literal["train", "reward"] = "train"
    """split the task loss draws from: "train" (the zoo's own data) or "reward" (the RL reward split)"""
    task_weight: float = field(default=1.0, metadata={"min": 0})
    """weight of the task loss next to the imitation loss"""
    task_nets: Literal["final", "every_step"] = "final"
    """which nets of the task loss's walks it scores: "final" (the walk's output) or "every_step" (the net after each
    step as well, on the same examples, averaged: each step is asked for a working net, as SGD's checkpoints are)"""
    kl_weight: float = field(default=1.0, metadata={"min": 0})
    """generative policies: weight of the latent's KL(posterior || prior), in nats per net spread over its weight
    dimensions, next to the per-dimension reconstruction NLL (1: the ELBO, per dimension)"""
    free_bits: float = field(default=0.1, metadata={"min": 0})
    """generative policies: nats per latent dimension (averaged over units and the batch) the KL term does not charge,
    so the posterior cannot collapse onto the prior (Kingma et al. 2016)"""
    generative_loss: Literal["elbo", "energy"] = "elbo"
    """generative policies: "elbo" (the posterior infers each pair's latent, `kl_weight`, `free_bits`) or "energy" (the
    energy score of two draws from the prior, a strictly proper score that needs no posterior)"""
    train_runs: Optional[int] = field(default=None, metadata={"min": 1})
    """use only the first N zoo runs (None: all)"""
    eval_every: int = field(default=250, metadata={"min": 1})
    """steps between held-out evaluations (mean path, test split)"""
    eval_seeds: int = field(default=16, metadata={"min": 1})
    """held-out init seeds evaluated: eval_seed_start .. eval_seed_start + eval_seeds - 1"""
    eval_seed_start: int = field(default=0, metadata={"min": 0})
    """must lie outside the zoo's seed range"""
    save_every: int = field(default=250, metadata={"min": 1})
    """steps between resumable checkpoints"""
    log_every: int = field(default=25, metadata={"min": 1})


@dataclass
class GRPOConfig:
    iterations: int = field(default=40, metadata={"min": 1})
    inits_per_iter: int = field(default=8, metadata={"min": 1})
    """B: fresh inits per iteration"""
    group_size: int = field(default=8, metadata={"min": 2, "why": "a group of one has zero spread, so nothing is learned"})
    """G: trajectories sampled per init (the group the baseline is computed over)"""
    epochs: int = field(default=2, metadata={"min": 1})
    """E: passes over the iteration's trajectories"""
    minibatch_size: int = field(default=16, metadata={"min": 1})
    """trajectories per gradient step"""
    minibatch: Literal["rows", "groups"] = "rows"
    """how an epoch cuts the trajectories into minibatches: "rows" (shuffled one by one) or "groups" (whole groups,
    shuffled: a group's antithetic mirrors and its baseline meet in one gradient step; minibatch_size is then rounded
    to a multiple of group_size, at least one group)"""
    lr: float = field(default=3e-5, metadata={"gt": 0})
    cosine: bool = False
    """linear warm-up over the first 5% of iterations, then cosine decay of the learning rate to 0 (else constant)"""
    clip_range: float = field(default=0.01, metadata={"gt": 0})
    """ratio clip; small because log-probs are averaged over weight dimensions"""
    beta_kl: float = field(default=0.1, metadata={"min": 0})
    """weight of KL(policy || imitation policy)"""
    beta_spread: float = field(default=0.0, metadata={"min": 0})
    """with "pathwise": weight of the spread tie, the squared log ratio of how much a group's sampled nets differ in
    what they predict (the mean squared distance of their class probabilities on 256 of the iteration's examples to
    the group's mean) under the policy and under the imitation policy at the same draws. The KL tie is over the latent and
    leaves the decoder free to make its draws matter less, and the reward gradient makes every sample the same best
    net; the spread tie keeps the draws as different as imitation's. 0: off"""
    ensemble: float = field(default=0.0, metadata={"min": 0, "max": 1})
    """with "pathwise": the share of each net's reward gradient that comes from the loss of an ensemble it belongs to
    (the B nets of one draw index, from the iteration's B inits, class probabilities averaged) in place of its own loss:
    negative correlation learning, so that nets from different inits make different errors and an ensemble of them
    gains (`trainer.algos.ensemble_example_weights`; one more forward pass of the rollouts per iteration). 0: off"""
    repel: float = field(default=0.0, metadata={"min": 0})
    """with "pathwise": weight of the feature repulsion, the mean over the first hidden layer's units of their soft
    maximum cosine (temperature 0.05) with the units of the other inits' nets in the minibatch, each unit seen as its
    centred pre-activations on 256 of the iteration's examples (`trainer.algos.feature_repulsion`; logged as
    `policy/feature_cosine`). The generated nets build their first layer from one dictionary of features; this spreads
    it (MNIST, 0.3: almost as far as SGD's), at a cost per net, and helps ensembles of 16 or more, not of 8
    (docs/HISTORY.md). 0: off"""
    reward: Literal["accuracy", "neg_loss"] = "accuracy"
    """what a generated net earns: "accuracy" on the reward split, or "neg_loss" (minus its mean cross-entropy there,
    capped at envs.scoring.MAX_LOSS): a smooth reward that also ranks nets whose accuracies tie"""
    temperature: float = field(default=1.0, metadata={"gt": 0})
    """the policy's std multiplier with noise "iid" while GRPO samples, scores and updates (stored with the policy it
    saves, its frozen reference tempered alike)"""
    scale_by_std: bool = True
    """divide advantages by the group std (off: Dr. GRPO)"""
    drop_zero_spread: bool = False
    """leave groups whose rewards are all equal out of the update"""
    explore: Literal["all", "first", "last"] = "all"
    """which of the K policy steps sample: "all"; "first" (the later steps take the mean from each sample); "last" (the
    first K - 1 follow the mean path once per init). The update runs the policy once per group on a step whose input
    the group shares and on a step that does not sample (KL only), so with "first" or "last" its cost does not grow
    with group_size"""
    noise: Literal["iid", "units"] = "iid"
    """how sampled steps explore: "iid" (independent Gaussian noise on every weight; the update trains the whole
    policy) or "units" (a Gaussian latent on every hidden and output unit's state before the weight head; the update
    trains the latent's mean, a residual MLP on the unit states, and keeps the imitation policy's trunk and head, so
    the drawn latent alone decides the weights)"""
    latent_std: Optional[float] = field(default=None, metadata={"gt": 0})
    """std of the unit latent with noise "units" (unit states are layer-normalised: about 1 per dimension); null: the
    policy's own (`policy.latent_std`: a generative policy's prior std, a regressor's 0.1 by default)"""
    estimator: Literal["score", "pathwise", "score_cv"] = "score"
    """the policy-gradient estimator: "score" (group-relative score function with the clipped ratio: GRPO) or
    "pathwise" (the workers' gradient of the differentiable reward, minus the mean cross-entropy on the iteration's
    examples, backpropagated through the last step's latent draw; needs noise "units" or a generative policy, and a
    sampled last step) or "score_cv" (the score function, unbiased, with the reward's first-order expansion around
    each group's mean latent as a control variate, MuProp-style: the workers' gradient at the group's mean net gives
    its slope, and its expectation's gradient is taken pathwise; needs noise "units" and explore "last"; advantages
    are not normalised)"""
    trainable: Literal["latent", "policy"] = "latent"
    """what the update trains with noise "units": "latent" (the latent's mean alone, the trunk and weight head stay the
    imitation policy's) or "policy" (every parameter: the reward gradient reaches the trunk and the weight head
    through the last step, as DRaFT fine-tunes a whole diffusion model; needs estimator "pathwise")"""
    backprop: Literal["last", "walk"] = "last"
    """how far back the "pathwise" reward gradient flows: "last" (through the last step, from its stored input: DRaFT-1;
    with trainable "policy" it leaves out how the parameters moved the earlier steps' outputs) or "walk" (through every
    step, the walk recomputed from the init at the stored noise: the exact gradient of the expected reward, at about K
    times the update's cost)"""
    input_noise: float = field(default=0.0, metadata={"min": 0})
    """std of Gaussian noise added to the (normalised) inputs of the examples the sampled nets are scored on, drawn
    afresh every iteration and shared by its nets, on top of the objective's own: a regulariser of the reward, as data
    augmentation is of SGD. Digits (the config's 0.3, 320 iterations): +1.76 pts over imitation against +1.33 without;
    without it the reward gradient fits the 1,048 training examples (train loss 0.03, test loss no better than
    imitation's; docs/HISTORY.md). The paired gain's mean paths and every evaluation are scored without it. 0: off"""
    reward_batch: Literal["fixed", "fresh"] = "fixed"
    """the examples a generated net is scored on: "fixed" (the task's reward split, every iteration) or "fresh" (as
    many examples drawn anew from the train split each iteration, so the reward cannot be learned by heart)"""
    fresh_examples: int = field(default=0, metadata={"min": 0})
    """with reward_batch "fresh": how many train-split examples each iteration draws; 0: as many as the reward split
    holds. The reward gradient's cost is linear in it (MNIST CNN: 1,000)"""
    antithetic: bool = True
    """sample each group as mirrored pairs (noise eps, -eps; needs an even group_size): the curvature part of the
    reward cancels from the policy gradient of the mean"""
    grad_clip: float = field(default=1.0, metadata={"gt": 0})
    gain_every: int = field(default=1, metadata={"min": 1})
    """iterations between the paired gain over the imitation policy (`rollout/gain_vs_imitation`: both mean paths from
    the iteration's B inits, 2B more nets scored, 1/G of the rollouts' scoring); 1: every iteration"""
    eval_every: int = field(default=5, metadata={"min": 1})
    """iterations between held-out evaluations (mean path, test split), weight histograms and images"""
    save_every: int = field(default=5, metadata={"min": 1})
    seed_start: int = field(default=100000, metadata={"min": 0})
    """iteration i draws init seeds seed_start + i * inits_per_iter ...; must avoid zoo and held-out seeds"""


@dataclass
class GenerateConfig:
    schedule: list[float] = field(default_factory=lambda: list(DEFAULT_SCHEDULE))
    """progress values the policy walks from the init (0) to trained (1); snapped to the zoo's checkpoint grid. The
    weight-evaluation env's episode is the same walk: len(schedule) - 1 steps"""
    width_scales: WidthScales = "fan_in"
    """how the tokenizer's per-tensor scales, fitted on the zoo's reference widths, carry to other hidden widths
    (reference.widths overridden at generate time, or the other widths of a mixed zoo): "fan_in" (weights and biases
    x sqrt(fan-in fitted / fan-in now), as PyTorch's init scales a layer) or "keep" (as fitted)"""
    bn_recompute_batches: int = field(default=0, metadata={"min": 0})
    """0: BatchNorm running statistics are generated like every other tensor; N > 0: they are recomputed after
    generation from N train-split batches (zoo.batch_size examples each) through the generated net. Needs BN"""
    redraw: float = field(default=0.05, metadata={"min": 0, "max": 1})
    """how a draw differs from the mean path: this share of each init tensor's entries (each entry with this
    probability) is replaced by an entry drawn at random from the same tensor, and the mean path walks from there.
    The generator, like SGD, turns a small change of the init into another, equally good net: at 0.05 two draws from
    one MNIST init agree on 0.972 of test predictions, as two SGD runs with different data orders do (0.970). 0: every
    draw is the mean path"""
    best_of: int = field(default=16, metadata={"min": 1})
    """draws per init behind `generate`'s default output: the draw with the lowest loss on the reward split is kept
    (MNIST, 96 held-out inits: +0.2 pts per seed over the mean path; README: Generate)"""


@dataclass
class ExperimentConfig:
    name: str = "digits_mlp"
    """experiment name: names the zoo folder and the runs"""
    seed: int = field(default=0, metadata={"min": 0})
    """the one seeding point of every entry point"""
    threads: Optional[int] = field(default=None, metadata={"min": 0})
    """torch threads per process (the entry point's and each Ray worker's). null or 0: $OMP_NUM_THREADS if set, else
    the cores this process may use shared among the torch processes the command starts (the driver and its Ray
    workers), at least 1. Set it when jobs share a machine: two jobs on 2 cores each want threads: 1 (threads beyond
    the free cores spin instead of waiting)"""
    device: str = field(default="auto", metadata={"check": check_device})
    """where tensors live and compute runs: "auto" (CUDA when torch sees a GPU, else the CPU), "cpu", "cuda" or
    "cuda:N". Checkpoints are device-independent: one saved on a GPU loads on a CPU-only machine and back"""
    task: TaskConfig = field(default_factory=TaskConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    zoo: ZooConfig = field(default_factory=ZooConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    imitate: ImitateConfig = field(default_factory=ImitateConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)

    @property
    def zoo_dir(self) -> Path:
        return Path(self.zoo.out) if self.zoo.out else paths.zoo_dir(self.name)


def apply_override(data: dict, assignment: str) -> None:
    """Apply one `a.b=c` override (the value parsed as YAML) to the raw config mapping."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected section.key=value")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {path}: {k} is not a section")
    node[keys[-1]] = yaml.safe_load(raw) if raw.strip() else None


def resolve_config_path(path: str | Path) -> Path:
    """The path as given, else the file of that name in the installed `configs/` folder."""
    p = Path(path)
    if p.is_file():
        return p
    if (CONFIG_DIR / p.name).is_file():
        return CONFIG_DIR / p.name
    shipped = ", ".join(sorted(x.name for x in CONFIG_DIR.glob("*.yaml")))
    raise ConfigError(f"config file {path} not found (shipped: {shipped})")

def is_folder_name(name: str) -> bool:
    """A single folder name: not empty or blank, no leading or trailing space, not . or .., no path separator or NUL
    (experiment and run names; `name=" "` made a zoo folder `artifacts/checkpoints/ ` that listings hide)."""
    return bool(name) and name == name.strip() and name not in (".", "..") and not any(c in name for c in "/\\\0")


def config_from_dict(data: dict) -> ExperimentConfig:
    cfg = from_dict(ExperimentConfig, data)
    if not is_folder_name(cfg.name):
        raise ConfigError(f"config key name: {cfg.name!r} is not a folder name (it names the zoo and run folders)")
    if cfg.policy.latent_dim > cfg.policy.dim:
        raise ConfigError(f"config key policy.latent_dim: expected at most policy.dim={cfg.policy.dim} (the latent is a "
                          f"subspace of the unit state), got {cfg.policy.latent_dim}")
    if cfg.policy.dim % cfg.policy.heads:
        raise ConfigError(f"config key policy.heads: expected a divisor of policy.dim={cfg.policy.dim} (attention "
                          f"splits the width into heads), got {cfg.policy.heads}")
    if cfg.imitate.train_runs is not None and cfg.imitate.train_runs > cfg.zoo.runs:
        raise ConfigError(f"config key imitate.train_runs: expected null or a value in [1, zoo.runs={cfg.zoo.runs}], "
                          f"got {cfg.imitate.train_runs}")
    check_schedule(cfg.generate.schedule)
    for w in cfg.zoo.widths:  # a mixed zoo varies widths only: one layout structure for one policy
        if len(w) != len(cfg.reference.widths):
            raise ConfigError(f"config key zoo.widths: {w} is not a width list like reference.widths "
                              f"{cfg.reference.widths} (same length, positive)")
    imitate_cfg = cfg.imitate
    if cfg.policy.flow and cfg.policy.generative:
        raise ConfigError("config key policy.flow: a flow policy is fitted to points on lines from inits to finals, "
                          "a generative one by the ELBO on checkpoint pairs: set one of policy.flow and "
                          "policy.generative")
    if cfg.policy.generative and not cfg.policy.posterior and imitate_cfg.generative_loss == "elbo":
        raise ConfigError("config key policy.posterior: false leaves a generative policy no posterior to infer its "
                          "latent with, which imitate.generative_loss=elbo fits (the energy score needs none)")
    if imitate_cfg.generative_loss == "energy" and not cfg.policy.generative:
        raise ConfigError("config key imitate.generative_loss: \"energy\" scores a generative policy's draws; a "
                          "regressor has none: set policy.generative=true, or leave it \"elbo\"")
    if imitate_cfg.task_nets == "every_step" and imitate_cfg.task_inits == 0:
        raise ConfigError("config key imitate.task_nets: every_step says which nets the task loss scores, and there is "
                          "none without imitate.task_inits > 0")
    if cfg.policy.flow and imitate_cfg.walked_frac > 0:
        raise ConfigError("config key imitate.walked_frac: a flow policy learns from points on lines from inits to "
                          "finals, not from its own walked states: set it to 0 with policy.flow")
    if imitate_cfg.eval_seed_start < cfg.zoo.seed + cfg.zoo.runs and cfg.zoo.seed < imitate_cfg.eval_seed_start + imitate_cfg.eval_seeds:
        raise ConfigError(f"config key imitate.eval_seed_start: held-out seeds {imitate_cfg.eval_seed_start}.."
                          f"{imitate_cfg.eval_seed_start + imitate_cfg.eval_seeds - 1} overlap the zoo's seeds {cfg.zoo.seed}.."
                          f"{cfg.zoo.seed + cfg.zoo.runs - 1}")
    grpo_cfg = cfg.grpo
    grpo_seeds = (grpo_cfg.seed_start, grpo_cfg.seed_start + grpo_cfg.iterations * grpo_cfg.inits_per_iter)
    for what, lo, hi in (("the zoo's seeds", cfg.zoo.seed, cfg.zoo.seed + cfg.zoo.runs),
                         ("the held-out evaluation seeds", imitate_cfg.eval_seed_start,
                          imitate_cfg.eval_seed_start + imitate_cfg.eval_seeds)):
        if grpo_seeds[0] < hi and lo < grpo_seeds[1]:
            raise ConfigError(f"config key grpo.seed_start: GRPO init seeds {grpo_seeds[0]}..{grpo_seeds[1] - 1} "
                              f"(grpo.iterations x grpo.inits_per_iter from it) overlap {what} {lo}..{hi - 1}")
    if grpo_cfg.backprop == "walk" and grpo_cfg.estimator != "pathwise":
        raise ConfigError("config key grpo.backprop: walk takes the reward gradient back through every step: it needs "
                          "grpo.estimator=pathwise")
    if grpo_cfg.estimator == "score_cv" and (grpo_cfg.explore != "last" or (grpo_cfg.noise != "units" and not cfg.policy.generative)):
        raise ConfigError("config key grpo.estimator: score_cv linearises the reward around each group's mean latent "
                          "at the last step: it needs grpo.noise=units (or a generative policy) and grpo.explore=last")
    if grpo_cfg.trainable == "policy" and grpo_cfg.estimator != "pathwise":
        raise ConfigError("config key grpo.trainable: policy trains the trunk and head through the reward gradient: it "
                          "needs grpo.estimator=pathwise")
    if grpo_cfg.fresh_examples and grpo_cfg.reward_batch != "fresh":
        raise ConfigError("config key grpo.fresh_examples: it sizes the examples drawn anew each iteration: it needs "
                          "grpo.reward_batch=fresh (\"fixed\" scores on the whole reward split)")
    if grpo_cfg.ensemble > 0 and (grpo_cfg.estimator != "pathwise" or grpo_cfg.inits_per_iter < 2):
        raise ConfigError("config key grpo.ensemble: the ensemble's loss reaches each net through the workers' reward "
                          "gradients over an ensemble of the iteration's inits: it needs grpo.estimator=pathwise and "
                          "grpo.inits_per_iter >= 2")
    if grpo_cfg.repel > 0 and (grpo_cfg.estimator != "pathwise" or grpo_cfg.inits_per_iter < 2):
        raise ConfigError("config key grpo.repel: the repulsion acts between the nets of different inits that the "
                          "pathwise update recomputes: it needs grpo.estimator=pathwise and grpo.inits_per_iter >= 2")
    if grpo_cfg.beta_spread > 0 and grpo_cfg.estimator != "pathwise":
        raise ConfigError("config key grpo.beta_spread: the spread tie acts on the nets the pathwise update recomputes: "
                          "it needs grpo.estimator=pathwise")
    if grpo_cfg.estimator == "pathwise" and (grpo_cfg.explore == "first" or (grpo_cfg.noise != "units" and not cfg.policy.generative)):
        raise ConfigError("config key grpo.estimator: pathwise backpropagates through the last step's unit latent: it "
                          "needs grpo.noise=units (or a generative policy) and grpo.explore all or last")
    if grpo_cfg.antithetic and grpo_cfg.group_size % 2:
        raise ConfigError(f"config key grpo.group_size: antithetic sampling pairs samples, so it must be even "
                          f"(got {grpo_cfg.group_size}; or set grpo.antithetic=false)")
    return cfg


def load_config(path: str | Path = DEFAULT_CONFIG, overrides: list[str] | None = None) -> ExperimentConfig:
    data = read_yaml(resolve_config_path(path))
    for assignment in overrides or []:
        apply_override(data, assignment)
    return config_from_dict(data)


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"experiment YAML (default: {DEFAULT_CONFIG})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value (repeatable)")
